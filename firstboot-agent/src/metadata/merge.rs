//! Merging metadata over the baked defaults into one validated
//! [`NodeConfig`]: what this node is and how it joins.

use std::collections::BTreeMap;
use std::time::Duration;

use node_spec::{
    AirgapImage, BakedBinary, BakedDefaults, K3sVersion, Role, Sha256Hex, DEFAULTS_PATH,
};
use serde::Serialize;

use super::values::{multi_line_in, node_name_problem, valid_hostname};
pub use super::values::{ServerUrl, Token};
use super::vendor::{self, Origin, Origins, VendorUse};
use super::{Metadata, MetadataError};
use crate::checks::Finding;
use crate::k3s::proxy::{self, ProxyMeta, ProxySettings};
use crate::message::{check_one_line, quoted};

/// The K3s API port servers listen on and joining nodes dial.
pub const K3S_API_PORT: u16 = 6443;

/// The control-plane taint added when `control-plane-taint` is on.
pub const CONTROL_PLANE_TAINT: &str = "node-role.kubernetes.io/control-plane:NoSchedule";

/// Keys in `k3s.config` that have a dedicated `k3s:` field (so the agent can
/// validate them and keep the token out of config.yaml).
const MANAGED_KEYS: [&str; 7] = [
    "server",
    "token",
    "token-file",
    "cluster-init",
    "node-name",
    "node-label",
    "node-taint",
];

/// How this node takes part in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topology {
    /// A single server with the default datastore.
    Server,
    /// First server of an embedded-etcd HA cluster (`cluster-init`).
    HaFirst,
    /// A server joining an existing cluster.
    HaJoin,
    /// An agent (worker) joining a server.
    Agent,
}

impl Topology {
    pub fn as_str(self) -> &'static str {
        match self {
            Topology::Server => "server",
            Topology::HaFirst => "ha-first",
            Topology::HaJoin => "ha-join",
            Topology::Agent => "agent",
        }
    }
}

/// Everything the later steps need, merged and validated.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub profile: String,
    pub instance_id: String,
    pub metadata_source: String,
    pub hostname: Option<String>,
    pub fqdn: Option<String>,
    pub role: Role,
    pub topology: Topology,
    /// The release to install: the metadata's `k3s.version`, else the
    /// image's pin.
    pub version: K3sVersion,
    /// The digest the binary of [`NodeConfig::version`] must have, if one
    /// is pinned (see [`NodeConfig::retarget`]).
    pub pinned_sha256: Option<Sha256Hex>,
    /// Where that digest came from, for messages.
    pub pin_source: String,
    /// The profile lets the agent trust the mirror's checksum file for a
    /// version without a pinned digest.
    pub trust_mirror_checksums: bool,
    /// What the image was built with.
    pub image: ImagePin,
    pub mirror: String,
    /// The baked binary, when it is the release of [`NodeConfig::version`].
    pub baked_binary: Option<BakedBinary>,
    pub airgap_images: Vec<AirgapImage>,
    pub server: Option<ServerUrl>,
    pub token: Option<Token>,
    pub token_file: Option<String>,
    pub node_name: Option<String>,
    pub node_labels: Vec<String>,
    pub node_taints: Vec<String>,
    pub control_plane_taint: bool,
    /// Other config.yaml keys (defaults, then metadata).
    pub extra_config: BTreeMap<String, serde_yaml::Value>,
    /// `k3s.proxy` as the metadata gives it.
    pub proxy_meta: ProxyMeta,
    /// The proxies of this node: `k3s.proxy` over the agent's environment
    /// (merge() sees the metadata only; `run::load_node_config` adds the
    /// environment).
    pub proxy: ProxySettings,
    /// What to do with an active firewalld or ufw.
    pub firewall: node_spec::FirewallPolicy,
    /// Host names that must resolve.
    pub check_names: Vec<String>,
    /// `host:port` endpoints that must accept TCP.
    pub check_endpoints: Vec<(String, u16)>,
    pub network_timeout: Duration,
    pub ready_timeout: Duration,
    /// Notes for the log (ignored user-data parts and such).
    pub notes: Vec<String>,
    /// Which seed file (and line) each setting came from, for errors found
    /// after the merge (token-file checks) and for result.json.
    pub origins: Origins,
    /// How vendor-data took part.
    pub vendor: VendorUse,
    /// cloud-init's log-in settings from the seed, as written.
    pub login: LoginSeed,
    /// What the ssh-keys step does, decided by the metadata step
    /// ([`crate::ssh::plan`]); `None` until then.
    pub ssh: Option<crate::ssh::Plan>,
    /// Warnings about the metadata, raised by the metadata step.
    pub warnings: Vec<Finding>,
}

/// cloud-init's log-in settings (`ssh_authorized_keys`, `user`, `users`)
/// as the seed wrote them, with where: [`crate::ssh`] reads them where
/// cloud-init is absent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoginSeed {
    pub ssh_authorized_keys: Option<(serde_yaml::Value, Origin)>,
    pub user: Option<(serde_yaml::Value, Origin)>,
    pub users: Option<(serde_yaml::Value, Origin)>,
}

/// The K3s release, digest and binary the image was built with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePin {
    pub version: K3sVersion,
    pub sha256: Option<Sha256Hex>,
    pub binary: Option<BakedBinary>,
}

impl NodeConfig {
    /// Aim at `version`: its digest is `given` (from `--sha256` or the
    /// metadata's `k3s.sha256`, with where it came from), else the image's
    /// pin when `version` is the image's release, else none. The baked
    /// binary is used only for the image's release.
    pub fn retarget(&mut self, version: K3sVersion, given: Option<(Sha256Hex, String)>) {
        let same = version == self.image.version;
        (self.pinned_sha256, self.pin_source) = match given {
            Some((d, from)) => (Some(d), from),
            None if same && self.image.sha256.is_some() => (
                self.image.sha256.clone(),
                "pinned in the image defaults".to_owned(),
            ),
            None => (None, String::new()),
        };
        self.baked_binary = if same {
            self.image.binary.clone()
        } else {
            None
        };
        self.version = version;
    }

    /// The systemd unit K3s runs as.
    pub fn unit_name(&self) -> &'static str {
        self.role.unit_name()
    }

    /// Whether this node dials an existing server.
    pub fn joins(&self) -> bool {
        self.server.is_some()
    }
}

/// Host (and port) of a mirror URL, when it is a network URL.
pub fn url_host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default_port = match scheme {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
        return Some((h.to_owned(), port.unwrap_or(default_port)));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h.to_owned(), p.parse().ok()?)),
        None => Some((authority.to_owned(), default_port)),
    }
}

fn string_list(
    value: Option<&serde_yaml::Value>,
    path: &str,
    key: &str,
) -> Result<Vec<String>, MetadataError> {
    let bad = || MetadataError::Invalid {
        path: path.to_owned(),
        line: None,
        key: format!("config.{key}"),
        message: "expected a string or a list of strings".into(),
    };
    match value {
        None | Some(serde_yaml::Value::Null) => Ok(Vec::new()),
        Some(serde_yaml::Value::String(s)) => Ok(vec![s.clone()]),
        Some(serde_yaml::Value::Sequence(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(bad))
            .collect(),
        Some(_) => Err(bad()),
    }
}

/// Merge: baked defaults < metadata (vendor-data < user-data, and
/// meta-data < both for the host name). `user_data_path` names the file in
/// messages; each error names the file the value came from.
pub fn merge(
    defaults: &BakedDefaults,
    md: &Metadata,
    user_data_path: &str,
) -> Result<NodeConfig, MetadataError> {
    let layered = vendor::layer(&md.user, user_data_path, md.vendor.as_ref())?;
    let user = &layered.user;
    let origins = &layered.origins;
    let k = user.k3s.clone().unwrap_or_default();
    let invalid = |key: &str, message: String| {
        let at = origins.of(&format!("k3s.{key}"));
        MetadataError::Invalid {
            path: at.path,
            line: at.line,
            key: format!("k3s.{key}"),
            message,
        }
    };
    // meta-data sits next to user-data in every kind of seed.
    let meta_data_path = user_data_path.strip_suffix("user-data").map_or_else(
        || format!("meta-data of {}", md.source),
        |dir| format!("{dir}meta-data"),
    );
    let one_line = |key: &str, value: &str| check_one_line(value).map_err(|m| invalid(key, m));

    // Every string below ends up in a file (config.yaml, the env file, a
    // unit, /etc/hostname, /etc/hosts, state.json) or on the console: none
    // may carry a newline or another control character.
    check_one_line(&md.meta.instance_id).map_err(|m| MetadataError::Invalid {
        path: meta_data_path.clone(),
        line: None,
        key: "instance-id".into(),
        message: m,
    })?;
    check_one_line(&defaults.profile).map_err(|m| MetadataError::Invalid {
        path: DEFAULTS_PATH.into(),
        line: None,
        key: "profile".into(),
        message: m,
    })?;
    for (key, value) in &defaults.k3s.config {
        if let Some((at, m)) =
            multi_line_in(&serde_yaml::Value::String(key.clone()), "config (a key)")
                .or_else(|| multi_line_in(value, &format!("config.{key}")))
        {
            return Err(MetadataError::Invalid {
                path: DEFAULTS_PATH.into(),
                line: None,
                key: format!("k3s.{at}"),
                message: m,
            });
        }
    }
    for (key, value) in &k.config {
        if let Some((at, m)) =
            multi_line_in(&serde_yaml::Value::String(key.clone()), "config (a key)")
                .or_else(|| multi_line_in(value, &format!("config.{key}")))
        {
            let from = origins.of(&format!("k3s.config.{key}"));
            return Err(MetadataError::Invalid {
                path: from.path,
                line: from.line,
                key: format!("k3s.{at}"),
                message: m,
            });
        }
    }
    for (key, value) in [
        ("server", &k.server),
        ("token-file", &k.token_file),
        ("mirror", &k.mirror),
    ] {
        if let Some(v) = value {
            one_line(key, v)?;
        }
    }
    for (key, values) in [
        ("node-label", &k.node_label),
        ("node-taint", &k.node_taint),
        ("check-names", &k.check_names),
        ("check-endpoints", &k.check_endpoints),
    ] {
        for v in values {
            one_line(key, v)?;
        }
    }
    if let Some(n) = &k.node_name {
        if let Some(m) = node_name_problem(n) {
            return Err(invalid("node-name", m));
        }
    }

    // Secrets never live in the defaults (the same file ships in every image).
    for key in ["token", "agent-token"] {
        if defaults.k3s.config.contains_key(key) {
            return Err(MetadataError::Invalid {
                path: DEFAULTS_PATH.into(),
                line: None,
                key: format!("k3s.config.{key}"),
                message:
                    "a secret must not be baked into the image; pass it in user-data `k3s.token`"
                        .into(),
            });
        }
    }
    for key in MANAGED_KEYS {
        if k.config.contains_key(key) {
            let from = origins.of(&format!("k3s.config.{key}"));
            return Err(MetadataError::Invalid {
                path: from.path,
                line: from.line,
                key: "k3s.config".into(),
                message: format!(
                    "`{key}` has its own field; write `k3s.{key}` instead of `k3s.config.{key}`"
                ),
            });
        }
    }

    // Host name: `hostname`, else the first label of `fqdn` (user-data's,
    // else vendor-data's), else meta-data local-hostname. Errors name the
    // file and key it came from.
    let hostname = user
        .hostname
        .clone()
        .map(|h| (h, origins.of("hostname").path, "hostname"))
        .or_else(|| {
            user.fqdn.as_ref().and_then(|f| {
                f.split('.')
                    .next()
                    .map(|h| (h.to_owned(), origins.of("fqdn").path, "fqdn"))
            })
        })
        .or_else(|| {
            md.meta
                .local_hostname
                .clone()
                .map(|h| (h, meta_data_path.clone(), "local-hostname"))
        });
    if let Some((h, path, key)) = &hostname {
        let problem = check_one_line(h).err().or_else(|| {
            (!valid_hostname(h) || h.len() > 64).then(|| {
                format!(
                    "{} is not a valid host name — use letters, digits and `-` (at most 64 characters)", quoted(h)
                )
            })
        });
        if let Some(message) = problem {
            return Err(MetadataError::Invalid {
                path: path.clone(),
                line: None,
                key: (*key).into(),
                message,
            });
        }
    }
    let hostname = hostname.map(|(h, _, _)| h);

    let role = k.role.unwrap_or(defaults.k3s.role);

    let mut config = defaults.k3s.config.clone();
    let default_server = config.remove("server");
    let default_labels = string_list(
        config.remove("node-label").as_ref(),
        DEFAULTS_PATH,
        "node-label",
    )?;
    let default_taints = string_list(
        config.remove("node-taint").as_ref(),
        DEFAULTS_PATH,
        "node-taint",
    )?;
    let default_cluster_init = config.remove("cluster-init");
    config.remove("node-name");
    for (key, value) in k.config {
        config.insert(key, value);
    }

    let server_raw = k.server.clone().or_else(|| {
        default_server
            .as_ref()
            .and_then(|v| v.as_str().map(str::to_owned))
    });
    let server = server_raw
        .as_deref()
        .map(ServerUrl::parse)
        .transpose()
        .map_err(|m| invalid("server", m))?;

    let token = k
        .token
        .as_deref()
        .map(Token::parse)
        .transpose()
        .map_err(|m| invalid("token", format!("the token {m}")))?;
    if token.is_some() && k.token_file.is_some() {
        return Err(invalid(
            "token-file",
            "set either `token` or `token-file`, not both".into(),
        ));
    }
    if let Some(f) = &k.token_file {
        if !f.starts_with('/') {
            return Err(invalid(
                "token-file",
                format!("{} must be an absolute path on the node", quoted(f)),
            ));
        }
    }
    let has_token = token.is_some() || k.token_file.is_some();

    let cluster_init = k
        .cluster_init
        .or_else(|| {
            default_cluster_init
                .as_ref()
                .and_then(serde_yaml::Value::as_bool)
        })
        .unwrap_or(defaults.k3s.ha && role == Role::Server && server.is_none());

    let topology = match (role, server.is_some(), cluster_init) {
        (Role::Agent, _, true) => {
            return Err(invalid("cluster-init", "`cluster-init` only applies to servers; remove it or set `role: server`".into()))
        }
        (Role::Agent, false, _) => {
            return Err(invalid(
                "server",
                "an agent needs `server: https://<server>:6443` and `token` to join; add both under `k3s:`".into(),
            ))
        }
        (Role::Agent, true, false) => Topology::Agent,
        (Role::Server, true, true) => {
            return Err(invalid(
                "cluster-init",
                "`cluster-init` starts a new cluster and `server` joins an existing one; keep only one".into(),
            ))
        }
        (Role::Server, true, false) => Topology::HaJoin,
        (Role::Server, false, true) => Topology::HaFirst,
        (Role::Server, false, false) => Topology::Server,
    };
    if server.is_some() && !has_token {
        return Err(invalid(
            "token",
            "joining a cluster needs the token: add `token:` (the contents of /var/lib/rancher/k3s/server/node-token on a server) or `token-file:`".into(),
        ));
    }

    let mut node_labels = default_labels;
    node_labels.extend(k.node_label.iter().cloned());
    let mut node_taints = default_taints;
    node_taints.extend(k.node_taint.iter().cloned());
    for l in &node_labels {
        if !l.contains('=') && !l.ends_with('-') {
            return Err(invalid(
                "node-label",
                format!("{} is not `key=value`", quoted(l)),
            ));
        }
    }
    for t in &node_taints {
        if !t.contains(':') {
            return Err(invalid(
                "node-taint",
                format!(
                    "{} is not `key=value:Effect` (e.g. dedicated=gpu:NoSchedule)",
                    quoted(t)
                ),
            ));
        }
    }
    let control_plane_taint = k
        .control_plane_taint
        .unwrap_or(defaults.k3s.control_plane_taint);
    if control_plane_taint && role == Role::Agent && k.control_plane_taint == Some(true) {
        return Err(invalid(
            "control-plane-taint",
            "applies to servers only".into(),
        ));
    }

    let mut check_names = defaults.checks.dns_names.clone();
    check_names.extend(k.check_names.iter().cloned());
    let mut check_endpoints = Vec::new();
    for e in &k.check_endpoints {
        let (h, p) = e
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']).to_owned(), p.parse().ok()?)))
            .ok_or_else(|| {
                invalid(
                    "check-endpoints",
                    format!("{} is not `host:port`", quoted(e)),
                )
            })?;
        check_endpoints.push((h, p));
    }

    let timeout = |meta: Option<u64>, default: u64, key: &str| -> Result<Duration, MetadataError> {
        let secs = meta.unwrap_or(default);
        if secs == 0 || secs > 24 * 3600 {
            return Err(invalid(
                key,
                format!("{secs} is out of range; use 1..=86400 seconds"),
            ));
        }
        Ok(Duration::from_secs(secs))
    };

    let proxy_meta = proxy_meta(k.proxy.as_ref(), &invalid)?;

    let mirror = k
        .mirror
        .clone()
        .unwrap_or_else(|| defaults.k3s.mirror.clone());
    let mirror = mirror.trim_end_matches('/').to_owned();
    if !(mirror.starts_with("https://")
        || mirror.starts_with("http://")
        || mirror.starts_with("file://"))
    {
        return Err(invalid(
            "mirror",
            format!("{} must be an http(s):// or file:// URL", quoted(&mirror)),
        ));
    }

    let given_sha = k.sha256.clone().map(|d| {
        let at = origins.of("k3s.sha256");
        (d, format!("k3s.sha256 in {at}"))
    });
    let mut cfg = NodeConfig {
        profile: defaults.profile.clone(),
        instance_id: md.meta.instance_id.clone(),
        metadata_source: md.source.clone(),
        hostname,
        fqdn: user.fqdn.clone(),
        role,
        topology,
        version: defaults.k3s.version.clone(),
        pinned_sha256: None,
        pin_source: String::new(),
        trust_mirror_checksums: defaults.k3s.trust_mirror_checksums,
        image: ImagePin {
            version: defaults.k3s.version.clone(),
            sha256: defaults.k3s.sha256.clone(),
            binary: defaults.k3s.binary.clone(),
        },
        mirror,
        baked_binary: None,
        airgap_images: defaults.k3s.airgap_images.clone(),
        server,
        token,
        token_file: k.token_file.clone(),
        node_name: k.node_name.clone(),
        node_labels,
        node_taints,
        control_plane_taint: control_plane_taint && role == Role::Server,
        extra_config: config,
        proxy: ProxySettings::combine(&proxy_meta, &proxy::ProxyEnv::default()),
        proxy_meta,
        firewall: k.firewall.unwrap_or(defaults.k3s.firewall),
        check_names,
        check_endpoints,
        network_timeout: timeout(
            k.network_timeout_secs,
            defaults.checks.network_timeout_secs,
            "network-timeout-secs",
        )?,
        ready_timeout: timeout(
            k.ready_timeout_secs,
            defaults.checks.ready_timeout_secs,
            "ready-timeout-secs",
        )?,
        notes: user.ignored.clone(),
        login: LoginSeed {
            ssh_authorized_keys: user
                .ssh_authorized_keys
                .clone()
                .map(|v| (v, origins.of("ssh_authorized_keys"))),
            user: user.user.clone().map(|v| (v, origins.of("user"))),
            users: user.users.clone().map(|v| (v, origins.of("users"))),
        },
        origins: layered.origins.clone(),
        vendor: layered.vendor.clone(),
        ssh: None,
        warnings: Vec::new(),
    };
    let version = k
        .version
        .clone()
        .unwrap_or_else(|| defaults.k3s.version.clone());
    cfg.retarget(version, given_sha);
    Ok(cfg)
}

/// `k3s.proxy`, validated: one line, a proxy URL each, no-proxy entries.
/// An empty value is kept as "no proxy" ([`ProxyMeta`]).
fn proxy_meta(
    keys: Option<&super::userdata::ProxyKeys>,
    invalid: &dyn Fn(&str, String) -> MetadataError,
) -> Result<ProxyMeta, MetadataError> {
    let Some(keys) = keys else {
        return Ok(ProxyMeta::default());
    };
    for (key, value) in [("proxy.http", &keys.http), ("proxy.https", &keys.https)] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            proxy::check_url(v).map_err(|m| invalid(key, m))?;
        }
    }
    let items = match &keys.no_proxy {
        None | Some(serde_yaml::Value::Null) => None,
        Some(serde_yaml::Value::String(s)) => Some(vec![s.clone()]),
        Some(serde_yaml::Value::Sequence(seq)) => Some(
            seq.iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    invalid(
                        "proxy.no-proxy",
                        "expected host names, domains, IP addresses or CIDR ranges as strings".into(),
                    )
                })?,
        ),
        Some(_) => {
            return Err(invalid(
                "proxy.no-proxy",
                "expected a list of host names, domains, IP addresses or CIDR ranges, or one comma-separated string".into(),
            ))
        }
    };
    let no_proxy = items
        .map(|i| proxy::no_proxy_list(&i))
        .transpose()
        .map_err(|m| invalid("proxy.no-proxy", m))?;
    Ok(ProxyMeta {
        http: keys.http.clone(),
        https: keys.https.clone(),
        no_proxy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::userdata::{parse_user_data, MetaData};

    pub(crate) fn defaults(extra: &str) -> BakedDefaults {
        BakedDefaults::from_yaml(&format!(
            "schema: 1\nprofile: test\nk3s:\n  version: v1.34.3+k3s1\n  role: server\n{extra}"
        ))
        .unwrap()
    }

    fn md(user: &str) -> Metadata {
        Metadata {
            source: "test".into(),
            user_data_path: "/ud".into(),
            meta: MetaData {
                instance_id: "iid".into(),
                local_hostname: Some("meta-host".into()),
            },
            user: parse_user_data("/ud", user.as_bytes()).unwrap(),
            vendor: None,
        }
    }

    fn merged(d: &BakedDefaults, user: &str) -> Result<NodeConfig, String> {
        merge(d, &md(user), "/ud").map_err(|e| e.to_string())
    }

    #[test]
    fn a_long_value_is_quoted_short() {
        let d = defaults("");
        let junk = "y".repeat(100_000);
        let e = merged(
            &d,
            &format!("#cloud-config\nk3s:\n  role: agent\n  server: {junk}\n  token: {TOKEN}\n"),
        )
        .unwrap_err();
        assert!(e.len() < 400, "{} bytes: {e}", e.len());
        assert!(
            e.contains("… (100000 characters) is not an https URL"),
            "{e}"
        );
    }

    const TOKEN: &str =
        "K10aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa::server:secret";

    #[test]
    fn topologies() {
        let d = defaults("");
        assert_eq!(merged(&d, "").unwrap().topology, Topology::Server);
        let ha = defaults("  ha: true\n");
        assert_eq!(merged(&ha, "").unwrap().topology, Topology::HaFirst);
        let join =
            format!("#cloud-config\nk3s:\n  server: https://10.0.0.1:6443\n  token: {TOKEN}\n");
        assert_eq!(merged(&ha, &join).unwrap().topology, Topology::HaJoin);
        let agent = "#cloud-config
k3s:
  role: agent
  server: https://s.lan
  token: pw
"
        .to_owned();
        let c = merged(&d, &agent).unwrap();
        assert_eq!(c.topology, Topology::Agent);
        assert_eq!(c.server.unwrap().port, 6443);
        assert_eq!(
            merged(&d, "#cloud-config\nk3s:\n  cluster-init: true\n")
                .unwrap()
                .topology,
            Topology::HaFirst
        );
    }

    #[test]
    fn agent_without_server_or_token() {
        let d = defaults("");
        let e = merged(&d, "#cloud-config\nk3s:\n  role: agent\n").unwrap_err();
        assert!(e.contains("needs `server:") && e.contains("/ud"), "{e}");
        let e = merged(
            &d,
            "#cloud-config\nk3s:\n  role: agent\n  server: https://s:6443\n",
        )
        .unwrap_err();
        assert!(e.contains("needs the token"), "{e}");
    }

    #[test]
    fn token_formats() {
        assert!(Token::parse(TOKEN).is_ok());
        assert!(Token::parse("simple-password").is_ok());
        for bad in [
            "",
            "two words",
            "K10abc::server:x",
            "K10aaaa",
            &TOKEN.replace("::server:secret", "::server:"),
        ] {
            assert!(Token::parse(bad).is_err(), "{bad}");
        }
        let e = merged(
            &defaults(""),
            "#cloud-config\nk3s:\n  server: https://s:6443\n  token: K10zz::a:b\n",
        )
        .unwrap_err();
        assert!(e.starts_with("/ud:4: k3s.token:"), "{e}");
        assert!(!e.contains("K10zz"), "token value leaked: {e}");
        assert_eq!(
            format!("{:?}", Token::parse("pw").unwrap()),
            "Token(<redacted>)"
        );
    }

    #[test]
    fn conflicting_and_bad_values() {
        let d = defaults("");
        let e = merged(&d, &format!("#cloud-config\nk3s:\n  cluster-init: true\n  server: https://a:6443\n  token: {TOKEN}\n")).unwrap_err();
        assert!(e.contains("keep only one"), "{e}");
        let e = merged(
            &d,
            "#cloud-config\nk3s:\n  server: http://a:6443\n  token: x\n",
        )
        .unwrap_err();
        assert!(e.contains("not an https URL"), "{e}");
        let e = merged(&d, "#cloud-config\nk3s:\n  config:\n    token: x\n").unwrap_err();
        assert!(e.contains("k3s.token"), "{e}");
        let e = merged(&d, "#cloud-config\nhostname: bad_name\n").unwrap_err();
        assert!(e.contains("not a valid host name"), "{e}");
        let e = merged(&d, "#cloud-config\nk3s:\n  node-taint: [foo]\n").unwrap_err();
        assert!(e.contains("Effect"), "{e}");
        let secret = defaults("  config:\n    token: abc\n");
        let e = merged(&secret, "").unwrap_err();
        assert!(e.contains(DEFAULTS_PATH), "{e}");
    }

    #[test]
    fn control_characters_are_refused_with_file_and_key() {
        let d = defaults("");
        for (user, expect) in [
            (
                "#cloud-config\nk3s:\n  node-name: \"w1\\nevil: x\"\n",
                "/ud:3: k3s.node-name: contains a newline (\\n) at character 3;",
            ),
            (
                "#cloud-config\nhostname: \"h\\n1\"\n",
                "/ud: hostname: contains a newline",
            ),
            (
                "#cloud-config\nk3s:\n  node-label: [\"a=b\\tc\"]\n",
                "/ud:3: k3s.node-label: contains a tab",
            ),
            (
                "#cloud-config\nk3s:\n  role: agent\n  server: \"https://s:6443\\r\"\n  token: pw\n",
                "/ud:4: k3s.server: contains a carriage return",
            ),
            (
                "#cloud-config\nk3s:\n  config:\n    tls-san: [ok, \"a\\u001b[31m\"]\n",
                "/ud:3: k3s.config.tls-san[1]: contains an escape character",
            ),
            (
                "#cloud-config\nk3s:\n  config:\n    \"bad\\nkey\": 1\n",
                "/ud:3: k3s.config (a key): contains a newline",
            ),
            (
                "#cloud-config\nk3s:\n  token-file: \"/etc/t\\n\"\n",
                "/ud:3: k3s.token-file: contains a newline",
            ),
            (
                "#cloud-config\nk3s:\n  role: agent\n  server: https://s:6443\n  token: \"pw\\nK3S_URL=x\"\n",
                "/ud:5: k3s.token: the token contains a newline",
            ),
        ] {
            let e = merged(&d, user).unwrap_err();
            assert!(e.starts_with(expect), "{user:?}:\n{e}");
            assert!(e.contains(" — ") || e.contains("copy it again"), "{e}");
        }
        let mut m = md("");
        m.meta.instance_id = "i\n1".into();
        let e = merge(&d, &m, "/seed/user-data").unwrap_err().to_string();
        assert!(
            e.starts_with("/seed/meta-data: instance-id: contains a newline"),
            "{e}"
        );
        m.meta.instance_id = "i1".into();
        m.meta.local_hostname = Some("h\u{7}".into());
        let e = merge(&d, &m, "/seed/user-data").unwrap_err().to_string();
        assert!(
            e.starts_with("/seed/meta-data: local-hostname: contains the control character U+0007"),
            "{e}"
        );
        let secret = defaults("  config:\n    node-ip: \"10.0.0.1\\n\"\n");
        let e = merged(&secret, "").unwrap_err();
        assert!(
            e.starts_with(&format!(
                "{DEFAULTS_PATH}: k3s.config.node-ip: contains a newline"
            )),
            "{e}"
        );
    }

    #[test]
    fn node_names_follow_kubernetes_rules() {
        let d = defaults("");
        for good in ["w1", "worker-1.zone-a", "a"] {
            let c = merged(&d, &format!("#cloud-config\nk3s:\n  node-name: {good}\n")).unwrap();
            assert_eq!(c.node_name.as_deref(), Some(good));
        }
        for bad in ["Worker", "w_1", "-w", "w..1", "\"w 1\""] {
            let e = merged(&d, &format!("#cloud-config\nk3s:\n  node-name: {bad}\n")).unwrap_err();
            assert!(
                e.starts_with("/ud:3: k3s.node-name:") && e.contains("e.g. worker-1"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn merge_order() {
        let d = defaults(
            "  control-plane-taint: true\n  config:\n    write-kubeconfig-mode: \"0644\"\n    node-label: [tier=base]\n    disable: [traefik]\n",
        );
        let c = merged(
            &d,
            "#cloud-config\nfqdn: n1.example.com\nk3s:\n  node-label: [zone=a]\n  control-plane-taint: false\n  network-timeout-secs: 20\n  mirror: http://127.0.0.1:8080/rel/\n  config:\n    disable: [servicelb]\n",
        )
        .unwrap();
        assert_eq!(c.hostname.as_deref(), Some("n1"));
        assert_eq!(c.node_labels, vec!["tier=base", "zone=a"]);
        assert!(!c.control_plane_taint);
        assert_eq!(c.network_timeout, Duration::from_secs(20));
        assert_eq!(c.mirror, "http://127.0.0.1:8080/rel");
        assert_eq!(
            c.extra_config["disable"],
            serde_yaml::from_str::<serde_yaml::Value>("[servicelb]").unwrap()
        );
        assert!(c.extra_config.contains_key("write-kubeconfig-mode"));
        // meta-data local-hostname is the fallback.
        assert_eq!(
            merged(&d, "").unwrap().hostname.as_deref(),
            Some("meta-host")
        );
    }

    #[test]
    fn url_hosts() {
        assert_eq!(
            url_host_port("https://github.com/k3s-io/k3s/releases/download"),
            Some(("github.com".into(), 443))
        );
        assert_eq!(
            url_host_port("http://127.0.0.1:8080/x"),
            Some(("127.0.0.1".into(), 8080))
        );
        assert_eq!(url_host_port("http://[::1]:81/"), Some(("::1".into(), 81)));
        assert_eq!(url_host_port("file:///srv"), None);
        assert_eq!(
            ServerUrl::parse("https://[fd00::1]:7443").unwrap().host,
            "fd00::1"
        );
    }
}
