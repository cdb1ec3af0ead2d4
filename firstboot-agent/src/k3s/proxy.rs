//! HTTP proxies, for K3s and for the agent's own downloads.
//!
//! K3s's install.sh puts the proxy variables of the shell that runs it into
//! the unit's env file (`create_env_file`: `^(NO|HTTP|HTTPS)_PROXY` in any
//! case, and `CONTAINERD_*`). The agent has two sources instead of one
//! shell: `k3s.proxy` in the metadata (`http`, `https`, `no-proxy`), and
//! its own process environment (`HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY`,
//! each upper or lower case, and K3s's containerd-only
//! `CONTAINERD_HTTP_PROXY`, `CONTAINERD_HTTPS_PROXY`, `CONTAINERD_NO_PROXY`).
//! A metadata key replaces both spellings of its variable from the
//! environment; everything else is copied as found.
//!
//! Which URL goes through which proxy follows Go's rules
//! (golang.org/x/net/http/httpproxy, which K3s and containerd use), so the
//! agent's downloads take the route K3s will take: `https://` URLs use
//! `HTTPS_PROXY`, `http://` ones `HTTP_PROXY` (upper case first), never
//! for `localhost` or a loopback address, nor for hosts `NO_PROXY` lists
//! (`*`, IP addresses, CIDR ranges, `domain` — itself and its subdomains —
//! `.domain` and `*.domain` — subdomains only — each optionally `:port`).

use std::ffi::OsString;
use std::net::IpAddr;

use crate::message::{check_one_line, quoted};
use crate::metadata::merge::url_host_port;

/// The proxy variables K3s and containerd read (and their lower-case
/// spellings, which Go reads too).
pub const PROXY_VARS: [&str; 3] = ["HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"];
/// K3s's containerd-only variants (docs.k3s.io, "Configuring an HTTP proxy").
pub const CONTAINERD_VARS: [&str; 3] = [
    "CONTAINERD_HTTP_PROXY",
    "CONTAINERD_HTTPS_PROXY",
    "CONTAINERD_NO_PROXY",
];

/// Where environment values come from, for messages.
pub const ENV_SOURCE: &str = "firstboot-agent's environment";
const ENV_ADVICE: &str = "fix it where it is set (a drop-in with Environment= for firstboot-agent.service, systemd's DefaultEnvironment, or the shell), or set k3s.proxy in the metadata instead";

/// Whether the agent copies `name` from its environment.
fn is_copied(name: &str) -> bool {
    PROXY_VARS
        .iter()
        .any(|v| name == *v || name == v.to_ascii_lowercase())
        || CONTAINERD_VARS.contains(&name)
}

/// The proxy variables of the agent's own environment, in a stable order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyEnv {
    vars: Vec<(String, Result<String, ()>)>,
}

impl ProxyEnv {
    /// The copied variables among `vars` (a value that is not UTF-8 is
    /// kept as an error for [`ProxyEnv::check`]).
    pub fn from_vars(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Self {
        let mut out: Vec<(String, Result<String, ()>)> = vars
            .into_iter()
            .filter_map(|(k, v)| {
                let k = k.into_string().ok()?;
                is_copied(&k).then(|| (k, v.into_string().map_err(drop)))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Self { vars: out }
    }

    /// This process's environment.
    pub fn from_process() -> Self {
        Self::from_vars(std::env::vars_os())
    }

    /// For tests and callers that have the pairs already.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Self::from_vars(pairs.iter().map(|(k, v)| (k.into(), v.into())))
    }

    /// No proxy variable at all.
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    /// The variables as found (the valid ones; [`ProxyEnv::check`] has
    /// refused a run with others).
    pub fn pairs(&self) -> std::collections::BTreeMap<String, String> {
        self.vars
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.clone().ok()?)))
            .collect()
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref().ok())
    }

    /// Every value must be fit for the env file: UTF-8, one line, and a
    /// proxy URL or a no-proxy list. `Err((name, message))`.
    pub fn check(&self) -> Result<(), (String, String)> {
        for (name, value) in &self.vars {
            let value = value.as_deref().map_err(|()| {
                (
                    name.clone(),
                    format!("is not valid UTF-8 text — {ENV_ADVICE}"),
                )
            })?;
            let problem = if name.to_ascii_uppercase().ends_with("NO_PROXY") {
                no_proxy_list(&[value.to_owned()]).err()
            } else {
                check_url(value).err()
            };
            if let Some(m) = problem {
                return Err((name.clone(), format!("{m} — {ENV_ADVICE}")));
            }
        }
        Ok(())
    }
}

/// `k3s.proxy` from the metadata, validated by [`check_url`] and
/// [`no_proxy_list`]. `Some("")` is set to nothing: no proxy, whatever the
/// environment says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyMeta {
    pub http: Option<String>,
    pub https: Option<String>,
    /// Comma-separated, as the variable holds it.
    pub no_proxy: Option<String>,
}

/// A proxy URL as K3s (Go) accepts one: `[scheme://][user:password@]host[:port]`
/// with scheme http, https, socks5 or socks5h; one line, no white space or
/// quotes (it is written between single quotes into the env file).
pub fn check_url(value: &str) -> Result<(), String> {
    check_one_line(value)?;
    let shown = quoted(&redacted(value));
    if value.is_empty() {
        return Err("is empty; give a URL such as http://proxy.lan:3128".into());
    }
    if value
        .chars()
        .any(|c| c.is_whitespace() || matches!(c, '\'' | '"' | '\\'))
    {
        return Err(format!(
            "{shown} contains white space, quotes or backslashes; a proxy URL has none"
        ));
    }
    let rest = match value.split_once("://") {
        Some((scheme, rest)) => {
            if !matches!(scheme, "http" | "https" | "socks5" | "socks5h") {
                return Err(format!(
                    "{shown} has the scheme {scheme:?}; K3s reads http://, https://, socks5:// and socks5h:// proxies"
                ));
            }
            rest
        }
        None => value,
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    if host_port.is_empty() || host_port.starts_with(':') {
        return Err(format!(
            "{shown} has no host; give a URL such as http://proxy.lan:3128"
        ));
    }
    Ok(())
}

/// The entries of `no-proxy` (each may itself be comma-separated, as the
/// variable is), joined with commas. Entries are host names, domains
/// (`.lan`, `*.lan`), IP addresses or CIDR ranges, optionally with
/// `:port`, or `*`.
pub fn no_proxy_list(items: &[String]) -> Result<String, String> {
    let mut out = Vec::new();
    for item in items {
        check_one_line(item)?;
        for entry in item.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '\'' | '"' | '\\'))
            {
                return Err(format!(
                    "{} contains white space, quotes or backslashes; no-proxy entries are host names, domains, IP addresses or CIDR ranges",
                    quoted(entry)
                ));
            }
            out.push(entry.to_owned());
        }
    }
    Ok(out.join(","))
}

/// `value` with the password of a `user:password@` part replaced, for
/// messages and logs.
pub fn redacted(value: &str) -> String {
    let (scheme, rest) = match value.split_once("://") {
        Some((s, r)) => (format!("{s}://"), r),
        None => (String::new(), value),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or_default();
            format!("{scheme}{user}:***@{host}{path}")
        }
        None => value.to_owned(),
    }
}

/// One effective setting and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub value: String,
    /// `k3s.proxy.https` or `HTTPS_PROXY in firstboot-agent's environment`.
    pub from: String,
}

/// The proxies of this node: the env file's lines and what the agent's own
/// connections use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxySettings {
    /// `(NAME, value)` for the env file, in the order written.
    pub env: Vec<(String, String)>,
    pub http: Option<Setting>,
    pub https: Option<Setting>,
    pub no_proxy: Option<Setting>,
    /// Names copied from the agent's environment (for result.json; the
    /// values may hold passwords and are never recorded).
    pub from_environment: Vec<String>,
}

impl ProxySettings {
    /// Metadata over environment (see the module docs). `env` must have
    /// passed [`ProxyEnv::check`].
    pub fn combine(meta: &ProxyMeta, env: &ProxyEnv) -> Self {
        let mut out = Self::default();
        for (var, key, meta_value) in [
            ("HTTP_PROXY", "http", &meta.http),
            ("HTTPS_PROXY", "https", &meta.https),
            ("NO_PROXY", "no-proxy", &meta.no_proxy),
        ] {
            let lower = var.to_ascii_lowercase();
            let effective = if let Some(v) = meta_value {
                // An empty value says "no proxy": it hides the environment's too.
                (!v.is_empty()).then(|| {
                    out.env.push((var.to_owned(), v.clone()));
                    Setting {
                        value: v.clone(),
                        from: format!("k3s.proxy.{key}"),
                    }
                })
            } else {
                let mut first = None;
                for name in [var, lower.as_str()] {
                    if let Some(v) = env.get(name) {
                        out.env.push((name.to_owned(), v.to_owned()));
                        out.from_environment.push(name.to_owned());
                        first.get_or_insert(Setting {
                            value: v.to_owned(),
                            from: format!("{name} in {ENV_SOURCE}"),
                        });
                    }
                }
                first
            };
            match key {
                "http" => out.http = effective,
                "https" => out.https = effective,
                _ => out.no_proxy = effective,
            }
        }
        for name in CONTAINERD_VARS {
            if let Some(v) = env.get(name) {
                out.env.push((name.to_owned(), v.to_owned()));
                out.from_environment.push(name.to_owned());
            }
        }
        out
    }

    /// The proxy a request to `url` goes through, by Go's rules (module
    /// docs); `None` for a direct connection.
    pub fn for_url(&self, url: &str) -> Option<&Setting> {
        let scheme = url.split_once("://")?.0;
        let proxy = match scheme {
            "https" => self.https.as_ref(),
            "http" => self.http.as_ref(),
            _ => None,
        }?;
        let (host, port) = url_host_port(url)?;
        let no_proxy = self.no_proxy.as_ref().map_or("", |s| s.value.as_str());
        uses_proxy(&host, port, no_proxy).then_some(proxy)
    }
}

/// Whether a connection to `host:port` goes through the proxy, given a
/// `NO_PROXY` value (Go's `useProxy`).
pub fn uses_proxy(host: &str, port: u16, no_proxy: &str) -> bool {
    let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
    if host.is_empty() {
        return true;
    }
    if host == "localhost" {
        return false;
    }
    let ip = host.parse::<IpAddr>().ok();
    if ip.is_some_and(|ip| ip.is_loopback()) {
        return false;
    }
    let port = port.to_string();
    for entry in no_proxy.split(',') {
        let entry = entry.trim().to_ascii_lowercase();
        if entry.is_empty() {
            continue;
        }
        if entry == "*" {
            return false;
        }
        if let Some((net, bits)) = parse_cidr(&entry) {
            if ip.is_some_and(|ip| in_cidr(ip, net, bits)) {
                return false;
            }
            continue;
        }
        let (phost, pport) = split_host_port(&entry);
        if phost.is_empty() {
            continue;
        }
        let port_ok = pport.is_none_or(|p| p == port);
        if let Ok(pip) = phost.parse::<IpAddr>() {
            if ip == Some(pip) && port_ok {
                return false;
            }
            continue;
        }
        if ip.is_some() {
            continue; // domain entries never match an address
        }
        let phost = phost.strip_prefix('*').unwrap_or(phost);
        let (suffix, match_host) = match phost.strip_prefix('.') {
            Some(_) => (phost.to_owned(), false),
            None => (format!(".{phost}"), true),
        };
        if (host.ends_with(&suffix) || (match_host && host == suffix[1..])) && port_ok {
            return false;
        }
    }
    true
}

/// `host:port`, `[v6]:port` or a bare host (a bare IPv6 address has no
/// port).
fn split_host_port(entry: &str) -> (&str, Option<&str>) {
    if let Some(v6) = entry.strip_prefix('[') {
        return match v6.split_once(']') {
            Some((h, rest)) => (h, rest.strip_prefix(':')),
            None => (entry, None),
        };
    }
    match entry.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
        _ => (entry, None),
    }
}

fn parse_cidr(entry: &str) -> Option<(IpAddr, u32)> {
    let (net, bits) = entry.split_once('/')?;
    let net: IpAddr = net.parse().ok()?;
    let bits: u32 = bits.parse().ok()?;
    let max = if net.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some((net, bits))
}

fn in_cidr(ip: IpAddr, net: IpAddr, bits: u32) -> bool {
    let mask = |width: u32| -> u128 {
        if bits == 0 {
            0
        } else {
            (!0u128 << (width - bits)) & (!0u128 >> (128 - width))
        }
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let m = mask(32);
            (u128::from(u32::from(a)) & m) == (u128::from(u32::from(n)) & m)
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let m = mask(128);
            (u128::from(a) & m) == (u128::from(n) & m)
        }
        // An IPv4-mapped IPv6 address is not matched by an IPv4 range (Go
        // neither: it compares the forms it parsed).
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_passwords_never_shown() {
        for good in [
            "http://proxy.lan:3128",
            "https://proxy.lan",
            "socks5://10.0.0.1:1080",
            "proxy.lan:3128",
            "http://user:s3cret@proxy.lan:3128/",
        ] {
            assert!(check_url(good).is_ok(), "{good}");
        }
        let e = check_url("ftp://user:s3cret@proxy.lan").unwrap_err();
        assert!(e.contains("\"ftp\"") && !e.contains("s3cret"), "{e}");
        assert!(e.contains("user:***@proxy.lan"), "{e}");
        assert!(check_url("http://proxy lan").is_err());
        assert!(check_url("http://p'x").is_err());
        assert!(check_url("http://").unwrap_err().contains("no host"));
        assert!(check_url("http://a\nb")
            .unwrap_err()
            .contains("contains a newline"));
        assert_eq!(
            redacted("http://u:p@h:1/x"),
            "http://u:***@h:1/x".to_owned()
        );
        assert_eq!(redacted("h:1"), "h:1");
    }

    #[test]
    fn no_proxy_entries() {
        assert_eq!(
            no_proxy_list(&["127.0.0.0/8, .lan".into(), "k8s.example.com".into()]).unwrap(),
            "127.0.0.0/8,.lan,k8s.example.com"
        );
        assert!(no_proxy_list(&["a b".into()]).is_err());
        assert!(no_proxy_list(&["a\nb".into()]).is_err());
    }

    #[test]
    fn go_rules_for_which_host_uses_the_proxy() {
        let np = "10.0.0.0/8,.corp,example.com,192.168.1.5,[fd00::1]:6443,host.lan:8080,*.wild";
        for (host, port, proxied) in [
            ("localhost", 80, false),
            ("127.0.0.1", 80, false),
            ("::1", 443, false),
            ("10.1.2.3", 6443, false),
            ("11.1.2.3", 6443, true),
            ("a.corp", 443, false),
            ("corp", 443, true),
            ("example.com", 443, false),
            ("www.example.com", 443, false),
            ("badexample.com", 443, true),
            ("192.168.1.5", 443, false),
            ("192.168.1.6", 443, true),
            ("fd00::1", 6443, false),
            ("fd00::1", 443, true),
            ("host.lan", 8080, false),
            ("host.lan", 80, true),
            ("x.wild", 80, false),
            ("wild", 80, true),
            ("github.com", 443, true),
        ] {
            assert_eq!(uses_proxy(host, port, np), proxied, "{host}:{port}");
        }
        assert!(!uses_proxy("github.com", 443, "*"));
        assert!(uses_proxy("github.com", 443, ""));
    }

    #[test]
    fn metadata_replaces_the_environment_variable_by_variable() {
        let env = ProxyEnv::from_pairs(&[
            ("https_proxy", "http://env-lower:3128"),
            ("HTTP_PROXY", "http://env:3128"),
            ("NO_PROXY", ".lan"),
            ("no_proxy", ".lan"),
            ("CONTAINERD_HTTPS_PROXY", "http://ctr:3128"),
            ("PATH", "/bin"),
            ("Http_Proxy", "mixed case is nobody's"),
        ]);
        assert!(env.check().is_ok());
        let meta = ProxyMeta {
            https: Some("http://meta:3128".into()),
            ..ProxyMeta::default()
        };
        let s = ProxySettings::combine(&meta, &env);
        let names: Vec<&str> = s.env.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "HTTP_PROXY",
                "HTTPS_PROXY",
                "NO_PROXY",
                "no_proxy",
                "CONTAINERD_HTTPS_PROXY"
            ]
        );
        assert_eq!(s.https.as_ref().unwrap().value, "http://meta:3128");
        assert_eq!(s.https.as_ref().unwrap().from, "k3s.proxy.https");
        assert_eq!(
            s.http.as_ref().unwrap().from,
            "HTTP_PROXY in firstboot-agent's environment"
        );
        assert_eq!(
            s.for_url("https://github.com/k3s").unwrap().value,
            "http://meta:3128"
        );
        assert_eq!(
            s.for_url("http://mirror.lan/k3s"),
            None,
            "NO_PROXY .lan covers it"
        );
        assert_eq!(s.for_url("file:///srv/k3s"), None);
        assert!(!s.from_environment.contains(&"https_proxy".to_owned()));
    }

    #[test]
    fn bad_environment_values_name_the_variable() {
        let env = ProxyEnv::from_pairs(&[("HTTPS_PROXY", "http://a\nb")]);
        let (name, m) = env.check().unwrap_err();
        assert_eq!(name, "HTTPS_PROXY");
        assert!(m.contains("newline") && m.contains("drop-in"), "{m}");
        use std::os::unix::ffi::OsStringExt;
        let env =
            ProxyEnv::from_vars([(OsString::from("no_proxy"), OsString::from_vec(vec![0xff]))]);
        assert!(env.check().unwrap_err().1.contains("UTF-8"));
    }
}
