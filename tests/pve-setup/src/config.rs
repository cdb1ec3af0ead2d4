//! The container configuration as pct sees it: the `netN` property strings,
//! `features`, raw `lxc.*` keys and the id maps derived from them.

use std::collections::BTreeSet;

/// One `netN` entry of a Proxmox CT config (Config.pm `$netconf_desc`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetConfig {
    pub index: u32,
    pub name: String,
    pub bridge: String,
    /// Empty: pct would generate one (Config.pm `parse_lxc_network`); this
    /// port then uses `pve_mac` seeded from vmid and index.
    pub hwaddr: String,
    /// "dhcp" | "manual" | "192.168.2.21/24"
    pub ip: Option<String>,
    pub gw: Option<String>,
    /// "auto" | "dhcp" | "manual" | "fd00::5/64"
    pub ip6: Option<String>,
    pub gw6: Option<String>,
    pub mtu: Option<u32>,
}

/// What `pct create` is given (and what ends up in `/etc/pve/lxc/<vmid>.conf`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtConfig {
    pub vmid: u32,
    pub hostname: Option<String>,
    pub nets: Vec<NetConfig>,
    pub nameserver: Option<String>,
    pub searchdomain: Option<String>,
    pub unprivileged: bool,
    pub timezone: Option<String>,
    pub ssh_public_keys: Option<String>,
    pub root_password: Option<String>,
    /// "amd64"
    pub arch: String,
    /// pct default 2
    pub tty: u32,
    /// Lines a user appended to /etc/pve/lxc/<vmid>.conf, as (key, value):
    /// e.g. ("features","nesting=1,keyctl=1,fuse=1"),
    /// ("lxc.apparmor.profile","unconfined"), ("swap","0").
    pub extra: Vec<(String, String)>,
}

impl Default for CtConfig {
    /// pct's defaults (Config.pm `$confdesc`), except `unprivileged`, which
    /// the API defaults to 1 on create but the schema to 0.
    fn default() -> Self {
        CtConfig {
            vmid: 0,
            hostname: None,
            nets: Vec::new(),
            nameserver: None,
            searchdomain: None,
            unprivileged: false,
            timezone: None,
            ssh_public_keys: None,
            root_password: None,
            arch: "amd64".to_owned(),
            tty: 2,
            extra: Vec::new(),
        }
    }
}

/// The host pct runs on, as far as the setup code reads it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Host {
    /// The host's /etc/resolv.conf, used when no nameserver is given
    /// (Base.pm `lookup_dns_conf`).
    pub resolv_conf: String,
}

impl Host {
    /// This machine's /etc/resolv.conf.
    pub fn from_system() -> Result<Host, String> {
        let resolv_conf = std::fs::read_to_string("/etc/resolv.conf")
            .map_err(|e| format!("reading the host's /etc/resolv.conf: {e}"))?;
        Ok(Host { resolv_conf })
    }
}

/// The host resolver settings pct caches (PVE::INotify `read_etc_resolv_conf`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct HostResolv {
    pub search: Option<String>,
    /// dns1..dns3
    pub dns: Vec<String>,
}

// PVE::INotify read_etc_resolv_conf: the last `search`/`domain` line's first
// word, and the first three `nameserver` lines holding an IP address.
pub(crate) fn parse_host_resolv(text: &str) -> HostResolv {
    let mut res = HostResolv::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next();
        if (line.starts_with("search") || line.starts_with("domain"))
            && matches!(first, Some("search") | Some("domain"))
        {
            if let Some(w) = words.next() {
                res.search = Some(w.to_owned());
            }
        } else if first == Some("nameserver") {
            if let Some(ns) = words.next() {
                if ns.parse::<std::net::IpAddr>().is_ok() && res.dns.len() < 3 {
                    res.dns.push(ns.to_owned());
                }
            }
        }
    }
    res
}

/// The `key: value` lines of a Proxmox CT config fragment, in order; comments
/// and blank lines skipped (Config.pm `parse_pct_config`: raw `lxc.*` keys may
/// use `:` or `=` and may have an empty value, other keys need a value).
/// Section headers (`[snapshot]`, `[pve:pending]`) end the current config,
/// as only the main section is what a start uses.
pub fn parse_pve_conf(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') && line.trim_end().ends_with(']') {
            break;
        }
        if let Some(kv) = parse_lxc_line(line).or_else(|| parse_pve_line(line)) {
            out.push(kv);
        } else {
            eprintln!("pve-setup: warning: unable to parse config: {line}");
        }
    }
    out
}

// Config.pm parse_pct_config: ^(lxc\.[a-z0-9_\-\.]+)(:|\s*=)\s*(.*?)\s*$
fn parse_lxc_line(line: &str) -> Option<(String, String)> {
    if !line.starts_with("lxc.") {
        return None;
    }
    let end = line
        .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c)))
        .unwrap_or(line.len());
    let (key, rest) = line.split_at(end);
    let rest = if let Some(r) = rest.strip_prefix(':') {
        r
    } else {
        rest.trim_start().strip_prefix('=')?
    };
    Some((key.to_owned(), rest.trim().to_owned()))
}

// Config.pm parse_pct_config: ^([a-z][a-z_]*\d*):\s*(.+?)\s*$
fn parse_pve_line(line: &str) -> Option<(String, String)> {
    let (key, value) = line.split_once(':')?;
    let mut chars = key.chars();
    if !chars.next()?.is_ascii_lowercase() {
        return None;
    }
    let letters_end = key
        .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
        .unwrap_or(key.len());
    if !key[letters_end..].bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    Some((key.to_owned(), value.to_owned()))
}

impl CtConfig {
    /// A CT config from the text of `/etc/pve/lxc/<vmid>.conf`: the keys this
    /// crate models become fields, everything else goes to `extra`.
    pub fn from_pve_conf(vmid: u32, text: &str) -> Result<CtConfig, String> {
        let mut conf = CtConfig {
            vmid,
            ..CtConfig::default()
        };
        for (key, value) in parse_pve_conf(text) {
            match key.as_str() {
                "hostname" => conf.hostname = Some(value),
                "nameserver" => conf.nameserver = Some(value),
                "searchdomain" => conf.searchdomain = Some(value),
                "timezone" => conf.timezone = Some(value),
                "arch" => conf.arch = value,
                "unprivileged" => {
                    conf.unprivileged = parse_bool(&value)
                        .ok_or_else(|| format!("unprivileged: '{value}' is not a boolean"))?
                }
                "tty" => {
                    conf.tty = value
                        .parse()
                        .map_err(|_| format!("tty: '{value}' is not a number"))?
                }
                k if k.starts_with("net") && k[3..].parse::<u32>().is_ok() => {
                    let index = k[3..].parse::<u32>().unwrap_or_default();
                    conf.nets.push(NetConfig::parse(index, &value)?);
                }
                _ => conf.extra.push((key, value)),
            }
        }
        Ok(conf)
    }

    /// The last value of a pct key in `extra` (later lines win, as in
    /// `parse_pct_config`).
    pub(crate) fn pve_key(&self, key: &str) -> Option<&str> {
        self.extra
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The raw `lxc.*` entries (`$conf->{lxc}`), without
    /// `lxc.environment.runtime` (which pct keeps as `env`) and without keys
    /// pct refuses (Config.pm `is_valid_lxc_conf_key`; a non-strict load only
    /// warns and drops them).
    pub(crate) fn lxc_entries(&self) -> Vec<(&str, &str)> {
        self.extra
            .iter()
            .filter(|(k, _)| k.starts_with("lxc.") && k != "lxc.environment.runtime")
            .filter(|(k, _)| match lxc_key_validity(k) {
                Ok(()) => true,
                Err(msg) => {
                    eprintln!("pve-setup: warning: vm {} - {k}: {msg}", self.vmid);
                    false
                }
            })
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// `lxc.environment.runtime` values (`$conf->{env}`).
    pub(crate) fn env_entries(&self) -> Vec<&str> {
        self.extra
            .iter()
            .filter(|(k, _)| k == "lxc.environment.runtime")
            .map(|(_, v)| v.as_str())
            .collect()
    }

    // Config.pm has_lxc_entry
    pub(crate) fn has_lxc_entry(&self, key: &str) -> bool {
        self.lxc_entries().iter().any(|(k, _)| *k == key)
    }

    // Config.pm get_tty_count
    pub(crate) fn tty_count(&self) -> u32 {
        self.tty
    }

    // Config.pm has_dev_console: only an explicit `console: 0` removes it.
    pub(crate) fn has_dev_console(&self) -> bool {
        !matches!(self.pve_key("console").map(parse_bool), Some(Some(false)))
    }

    pub(crate) fn net0(&self) -> Option<&NetConfig> {
        self.nets.iter().find(|n| n.index == 0)
    }

    pub(crate) fn features(&self) -> Result<Features, String> {
        Features::parse(self.pve_key("features").unwrap_or(""))
    }
}

// Config.pm $valid_lxc_conf_keys / is_valid_lxc_conf_key. Deprecated keys are
// accepted with a warning by pct; this port accepts them silently.
fn lxc_key_validity(key: &str) -> Result<(), String> {
    const VALID: &[&str] = &[
        "lxc.apparmor.profile",
        "lxc.apparmor.allow_incomplete",
        "lxc.apparmor.allow_nesting",
        "lxc.apparmor.raw",
        "lxc.selinux.context",
        "lxc.include",
        "lxc.arch",
        "lxc.uts.name",
        "lxc.signal.halt",
        "lxc.signal.reboot",
        "lxc.signal.stop",
        "lxc.init.cmd",
        "lxc.init.cwd",
        "lxc.init.uid",
        "lxc.init.gid",
        "lxc.init.groups",
        "lxc.pty.max",
        "lxc.console.logfile",
        "lxc.console.path",
        "lxc.tty.max",
        "lxc.devtty.dir",
        "lxc.hook.autodev",
        "lxc.autodev",
        "lxc.kmsg",
        "lxc.mount.fstab",
        "lxc.mount.entry",
        "lxc.mount.auto",
        "lxc.rootfs.mount",
        "lxc.cap.drop",
        "lxc.cap.keep",
        "lxc.seccomp.profile",
        "lxc.seccomp.notify.proxy",
        "lxc.seccomp.notify.cookie",
        "lxc.idmap",
        "lxc.hook.pre-start",
        "lxc.hook.pre-mount",
        "lxc.hook.mount",
        "lxc.hook.start",
        "lxc.hook.stop",
        "lxc.hook.post-stop",
        "lxc.hook.clone",
        "lxc.hook.destroy",
        "lxc.hook.version",
        "lxc.log.level",
        "lxc.log.file",
        "lxc.start.auto",
        "lxc.start.delay",
        "lxc.start.order",
        "lxc.group",
        "lxc.environment",
        "lxc.environment.runtime",
        "lxc.environment.hooks",
        "lxc.sysctl.fs.mqueue",
        "lxc.sysctl.kernel.msgmax",
        "lxc.sysctl.kernel.msgmnb",
        "lxc.sysctl.kernel.msgmni",
        "lxc.sysctl.kernel.sem",
        "lxc.sysctl.kernel.shmall",
        "lxc.sysctl.kernel.shmmax",
        "lxc.sysctl.kernel.shmmni",
        "lxc.sysctl.kernel.shm_rmid_forced",
    ];
    const DEPRECATED: &[&str] = &[
        "lxc.aa_profile",
        "lxc.aa_allow_incomplete",
        "lxc.console",
        "lxc.devttydir",
        "lxc.haltsignal",
        "lxc.rebootsignal",
        "lxc.stopsignal",
        "lxc.id_map",
        "lxc.init_cmd",
        "lxc.loglevel",
        "lxc.logfile",
        "lxc.mount",
        "lxc.network.type",
        "lxc.network.flags",
        "lxc.network.link",
        "lxc.network.mtu",
        "lxc.network.name",
        "lxc.network.hwaddr",
        "lxc.network.ipv4",
        "lxc.network.ipv4.gateway",
        "lxc.network.ipv6",
        "lxc.network.ipv6.gateway",
        "lxc.network.script.up",
        "lxc.network.script.down",
        "lxc.pts",
        "lxc.se_context",
        "lxc.seccomp",
        "lxc.tty",
        "lxc.utsname",
    ];
    match key {
        "lxc.rootfs.path" => Err("lxc.rootfs.path is auto generated from rootfs".into()),
        "lxc.rootfs.options" => Err("lxc.rootfs.options is not supported, please use mount \
                                     point options in the \"rootfs\" key"
            .into()),
        k if k.starts_with("lxc.limit.") || DEPRECATED.contains(&k) || VALID.contains(&k) => Ok(()),
        k if k.starts_with("lxc.cgroup.")
            || k.starts_with("lxc.cgroup2.")
            || k.starts_with("lxc.prlimit.")
            || k.starts_with("lxc.net.") =>
        {
            Ok(())
        }
        _ => Err("unable to parse config".into()),
    }
}

/// PVE::JSONSchema's boolean parsing.
pub(crate) fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "on" | "yes" | "true" => Some(true),
        "0" | "off" | "no" | "false" => Some(false),
        _ => None,
    }
}

/// Config.pm `$features_desc`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Features {
    pub nesting: bool,
    pub keyctl: bool,
    pub fuse: bool,
    pub mknod: bool,
    pub force_rw_sys: bool,
    pub mount: Option<String>,
}

impl Features {
    // Config.pm parse_features (parse_property_string over $features_desc)
    pub fn parse(text: &str) -> Result<Features, String> {
        let mut f = Features::default();
        for (key, value) in parse_property_string(text)? {
            let flag = || {
                parse_bool(&value)
                    .ok_or_else(|| format!("features: {key}: '{value}' is not a boolean"))
            };
            match key.as_str() {
                "nesting" => f.nesting = flag()?,
                "keyctl" => f.keyctl = flag()?,
                "fuse" => f.fuse = flag()?,
                "mknod" => f.mknod = flag()?,
                "force_rw_sys" => f.force_rw_sys = flag()?,
                "mount" => f.mount = Some(value.clone()),
                _ => return Err(format!("features: unknown property '{key}' in '{text}'")),
            }
        }
        Ok(f)
    }
}

// PVE::JSONSchema parse_property_string, for schemas without a default key.
fn parse_property_string(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("'{part}' in '{text}' is not key=value"))?;
        if !seen.insert(k.to_owned()) {
            return Err(format!("duplicate key '{k}' in '{text}'"));
        }
        out.push((k.to_owned(), v.to_owned()));
    }
    Ok(out)
}

impl NetConfig {
    /// Config.pm `parse_lxc_network`: a `netN` property string such as
    /// `name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:00:01,ip=dhcp,type=veth`.
    /// Properties this port does not model (firewall, tag, rate, ...) are
    /// accepted and dropped; `host-managed` is refused because it changes
    /// what pct writes.
    pub fn parse(index: u32, text: &str) -> Result<NetConfig, String> {
        let mut n = NetConfig {
            index,
            ..NetConfig::default()
        };
        for (k, v) in parse_property_string(text)? {
            match k.as_str() {
                "name" => n.name = v,
                "bridge" => n.bridge = v,
                "hwaddr" => n.hwaddr = v,
                "ip" => n.ip = Some(v),
                "gw" => n.gw = Some(v),
                "ip6" => n.ip6 = Some(v),
                "gw6" => n.gw6 = Some(v),
                "mtu" => {
                    n.mtu = Some(
                        v.parse()
                            .map_err(|_| format!("net{index}: mtu '{v}' is not a number"))?,
                    )
                }
                "type" if v == "veth" => {}
                "firewall" | "tag" | "trunks" | "rate" | "link_down" => {}
                "host-managed" => {
                    return Err(format!(
                        "net{index}: host-managed is not supported by this port of pct"
                    ))
                }
                _ => return Err(format!("net{index}: unknown property '{k}' in '{text}'")),
            }
        }
        if n.name.is_empty() {
            return Err(format!(
                "net{index}: property 'name' is missing in '{text}'"
            ));
        }
        Ok(n)
    }
}

/// One `lxc.idmap` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdMap {
    pub kind: char,
    pub ct: u32,
    pub host: u32,
    pub len: u32,
}

// LXC.pm parse_id_maps: explicit lxc.idmap entries, else the default map of
// an unprivileged container; returns the map and the host ids of CT root.
pub(crate) fn parse_id_maps(conf: &CtConfig) -> Result<(Vec<IdMap>, u32, u32), String> {
    let mut map = Vec::new();
    let (mut root_uid, mut root_gid) = (0, 0);
    for (k, v) in conf.lxc_entries() {
        if k != "lxc.idmap" {
            continue;
        }
        let parts: Vec<&str> = v.split_whitespace().collect();
        let parsed = match parts.as_slice() {
            [t @ ("u" | "g"), ct, host, len] => {
                match (ct.parse::<u32>(), host.parse::<u32>(), len.parse::<u32>()) {
                    (Ok(ct), Ok(host), Ok(len)) if !v.starts_with(char::is_whitespace) => {
                        Some(IdMap {
                            kind: if *t == "u" { 'u' } else { 'g' },
                            ct,
                            host,
                            len,
                        })
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        let m = parsed.ok_or_else(|| format!("failed to parse idmap: {v}"))?;
        if m.ct == 0 {
            if m.kind == 'u' {
                root_uid = m.host;
            } else {
                root_gid = m.host;
            }
        }
        map.push(m);
    }
    if map.is_empty() && conf.unprivileged {
        map = vec![
            IdMap {
                kind: 'u',
                ct: 0,
                host: 100000,
                len: 65536,
            },
            IdMap {
                kind: 'g',
                ct: 0,
                host: 100000,
                len: 65536,
            },
        ];
        root_uid = 100000;
        root_gid = 100000;
    }
    Ok((map, root_uid, root_gid))
}

// LXC.pm userns_command
pub(crate) fn userns_command(map: &[IdMap]) -> Vec<String> {
    if map.is_empty() {
        return Vec::new();
    }
    let mut cmd = vec!["lxc-usernsexec".to_owned()];
    for m in map {
        cmd.push("-m".to_owned());
        cmd.push(format!("{}:{}:{}:{}", m.kind, m.ct, m.host, m.len));
    }
    cmd.push("--".to_owned());
    cmd
}

/// A MAC address in Proxmox's style, deterministic from `seed`.
///
/// PVE::Tools `random_ether_addr` takes SHA-1 of pid, rand() and time,
/// clears the multicast bit, sets the locally-administered bit and then
/// overwrites the start with the datacenter's `mac_prefix`, which
/// PVE::DataCenterConfig `parse_datacenter_config` defaults to the Proxmox
/// OUI `BC:24:11` (PVE 8). Here the three random octets come from a
/// splitmix64 of `seed` instead.
pub fn pve_mac(seed: u64) -> String {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let b = z.to_be_bytes();
    format!("BC:24:11:{:02X}:{:02X}:{:02X}", b[0], b[1], b[2])
}

/// PVE::Tools `split_list`: NUL-separated if it has a NUL, else split on
/// commas, semicolons and whitespace.
pub(crate) fn split_list(text: &str) -> Vec<String> {
    if text.contains('\0') {
        return text.split('\0').map(str::to_owned).collect();
    }
    text.replace([',', ';'], " ")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Perl truthiness of a string: neither empty nor "0".
pub(crate) fn perl_true(s: &str) -> bool {
    !s.is_empty() && s != "0"
}

/// Perl's numeric value of a string (leading decimal number, else 0); pct
/// compares distro versions such as "17.10" numerically (17.1).
pub(crate) fn perl_num(s: &str) -> f64 {
    let s = s.trim_start();
    let mut end = 0;
    let mut dot = false;
    for (i, c) in s.char_indices() {
        if c.is_ascii_digit() {
            end = i + 1;
        } else if c == '.' && !dot {
            dot = true;
        } else {
            break;
        }
    }
    s[..end].parse().unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn pve_conf_lines() {
        let text = "# a comment\narch: amd64\nfeatures: nesting=1,keyctl=1\n\
                    lxc.apparmor.profile: unconfined\nlxc.cap.drop:\n\
                    lxc.mount.auto = proc:rw sys:rw\nswap: 0\nbogus line\n[snap]\nhostname: x\n";
        assert_eq!(
            parse_pve_conf(text),
            vec![
                ("arch".into(), "amd64".into()),
                ("features".into(), "nesting=1,keyctl=1".into()),
                ("lxc.apparmor.profile".into(), "unconfined".into()),
                ("lxc.cap.drop".into(), "".into()),
                ("lxc.mount.auto".into(), "proc:rw sys:rw".into()),
                ("swap".into(), "0".into()),
            ]
        );
    }

    #[test]
    fn ct_config_from_pve_conf() {
        let c = CtConfig::from_pve_conf(
            901,
            "hostname: k1\nnet0: name=eth0,bridge=vmbr0,hwaddr=BC:24:11:AA:BB:CC,ip=10.0.0.5/24,gw=10.0.0.1,type=veth\n\
             unprivileged: 1\nfeatures: nesting=1\nlxc.idmap: u 0 200000 65536\n",
        )
        .unwrap();
        assert_eq!(c.hostname.as_deref(), Some("k1"));
        assert!(c.unprivileged);
        assert_eq!(c.nets[0].ip.as_deref(), Some("10.0.0.5/24"));
        assert_eq!(c.nets[0].hwaddr, "BC:24:11:AA:BB:CC");
        assert!(c.features().unwrap().nesting);
        let (map, uid, gid) = parse_id_maps(&c).unwrap();
        assert_eq!((map.len(), uid, gid), (1, 200000, 0));
        assert!(NetConfig::parse(0, "bridge=vmbr0").is_err());
        assert!(Features::parse("nesting=1,bogus=1").is_err());
    }

    #[test]
    fn default_idmap_and_userns_command() {
        let c = CtConfig {
            unprivileged: true,
            ..CtConfig::default()
        };
        let (map, uid, gid) = parse_id_maps(&c).unwrap();
        assert_eq!((uid, gid), (100000, 100000));
        assert_eq!(
            userns_command(&map).join(" "),
            "lxc-usernsexec -m u:0:100000:65536 -m g:0:100000:65536 --"
        );
        assert!(userns_command(&parse_id_maps(&CtConfig::default()).unwrap().0).is_empty());
    }

    #[test]
    fn mac_has_proxmox_oui_and_is_stable() {
        let a = pve_mac(901);
        assert!(a.starts_with("BC:24:11:"), "{a}");
        assert_eq!(a.len(), 17);
        assert_eq!(a, pve_mac(901));
        assert_ne!(a, pve_mac(902));
    }

    #[test]
    fn host_resolv() {
        let r = parse_host_resolv(
            "search a.example b.example\nnameserver 10.0.0.1\nnameserver fe80::1\n\
             nameserver bogus\nnameserver 1.1.1.1\nnameserver 8.8.8.8\n",
        );
        assert_eq!(r.search.as_deref(), Some("a.example"));
        assert_eq!(r.dns, vec!["10.0.0.1", "fe80::1", "1.1.1.1"]);
    }

    #[test]
    fn perl_helpers() {
        assert_eq!(perl_num("17.10"), 17.1);
        assert_eq!(perl_num("7"), 7.0);
        assert_eq!(
            split_list("a.com, b.com;c.com"),
            vec!["a.com", "b.com", "c.com"]
        );
        assert!(!perl_true("0") && !perl_true("") && perl_true("x"));
    }
}
