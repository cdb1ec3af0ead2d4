//! LXC.pm `update_lxc_config`: the LXC config pct writes to
//! /var/lib/lxc/<vmid>/config before every start, for this host.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::cmd::{self, Input};
use crate::config::{pve_mac, CtConfig, Features};

const LXC_CONFIG_PATH: &str = "/usr/share/lxc/config";

/// What `update_lxc_config` reads from the host, gathered up front so the
/// config itself is computed without I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// `lxc-start --version` major (LXC.pm get_lxc_version).
    pub lxc_major: u32,
    /// Which of the candidate include files exist.
    pub existing_includes: BTreeSet<String>,
    /// /usr/share/lxc/config/common.seccomp, the base of rules.seccomp.
    pub common_seccomp: String,
    /// /sys/class/net/<bridge>/mtu of each bridge used.
    pub bridge_mtu: BTreeMap<String, u32>,
    /// cgroup v2 controllers (PVE::CGroup get_cgroup_controllers); None
    /// without a unified hierarchy.
    pub cgroup2_controllers: Option<BTreeSet<String>>,
    /// `uname -r` (the mknod feature needs >= 5.3).
    pub kernel_release: String,
    /// The pve-lxc-syscalld socket the mknod feature points at.
    pub syscalld_socket: String,
}

impl HostFacts {
    /// Read what the config for `conf` (of OS type `ostype`) depends on.
    pub fn probe(conf: &CtConfig, ostype: &str) -> Result<HostFacts, String> {
        let out = cmd::run(&cmd::argv(&["lxc-start", "--version"]), Input::Null)?;
        let lxc_major = out
            .stdout
            .trim()
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| format!("unable to parse lxc version '{}'", out.stdout.trim()))?;
        let mut existing_includes = BTreeSet::new();
        for name in ["common.conf", "userns.conf"] {
            for f in [format!("{ostype}.{name}"), name.to_owned()] {
                let p = format!("{LXC_CONFIG_PATH}/{f}");
                if Path::new(&p).is_file() {
                    existing_includes.insert(p);
                }
            }
        }
        let common_seccomp = std::fs::read_to_string(format!("{LXC_CONFIG_PATH}/common.seccomp"))
            .unwrap_or_default();
        let mut bridge_mtu = BTreeMap::new();
        for n in conf.nets.iter().filter(|n| !n.bridge.is_empty()) {
            // PVE::Network read_bridge_mtu
            let p = format!("/sys/class/net/{}/mtu", n.bridge);
            let mtu = std::fs::read_to_string(&p)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| format!("bridge '{}' does not exist", n.bridge))?;
            bridge_mtu.insert(n.bridge.clone(), mtu);
        }
        let cgroup2_controllers = [
            "/sys/fs/cgroup/cgroup.controllers",
            "/sys/fs/cgroup/unified/cgroup.controllers",
        ]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.split_whitespace().map(str::to_owned).collect());
        let kernel_release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned();
        // LXC.pm make_seccomp_config: the old socket only if the new is absent
        let (old, new) = ("/run/pve/lxc-syscalld.sock", "/run/pve-lxc-syscalld/socket");
        let syscalld_socket = if !Path::new(new).exists()
            && Path::new(old).exists()
            && !Path::new(old).is_symlink()
        {
            old
        } else {
            new
        };
        Ok(HostFacts {
            lxc_major,
            existing_includes,
            common_seccomp,
            bridge_mtu,
            cgroup2_controllers,
            kernel_release,
            syscalld_socket: syscalld_socket.to_owned(),
        })
    }
}

/// The LXC config, and files it refers to that must be written with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LxcConfig {
    pub config: String,
    /// (path, content), e.g. rules.seccomp next to the rootfs.
    pub files: Vec<(PathBuf, String)>,
}

// LXC.pm update_lxc_config, computed from the facts. `dir` is the
// container's config directory (pct: /var/lib/lxc/<vmid>, the rootfs's
// parent).
pub fn render(
    conf: &CtConfig,
    ostype: &str,
    rootfs: &Path,
    facts: &HostFacts,
) -> Result<LxcConfig, String> {
    let vmid = conf.vmid;
    let dir = rootfs.parent().unwrap_or(Path::new("/"));
    let mut out: Vec<String> = Vec::new();
    let mut files = Vec::new();

    if facts.lxc_major >= 4 {
        // Absolute cgroup paths, monitor outside, the container's own
        // namespace one level below (pct's layout since LXC 4). Tested with
        // this host's hybrid cgroup v1 layout: lxc-start accepts them.
        out.push("lxc.cgroup.relative = 0".into());
        out.push(format!("lxc.cgroup.dir.monitor = lxc.monitor/{vmid}"));
        out.push(format!("lxc.cgroup.dir.container = lxc/{vmid}"));
        out.push("lxc.cgroup.dir.container.inner = ns".into());
    }
    if conf.arch.is_empty() {
        return Err("missing 'arch' - internal error".into());
    }
    out.push(format!("lxc.arch = {}", conf.arch));

    let custom_idmap = conf.has_lxc_entry("lxc.idmap");
    let unprivileged = conf.unprivileged || custom_idmap;
    let include = |name: &str| {
        let specific = format!("{LXC_CONFIG_PATH}/{ostype}.{name}");
        if facts.existing_includes.contains(&specific) {
            specific
        } else {
            format!("{LXC_CONFIG_PATH}/{name}")
        }
    };
    out.push(format!("lxc.include = {}", include("common.conf")));
    if unprivileged {
        out.push(format!("lxc.include = {}", include("userns.conf")));
    }

    let features = conf.features()?;
    let (seccomp, seccomp_file) = make_seccomp_config(conf, dir, unprivileged, &features, facts)?;
    out.extend(seccomp.lines().map(str::to_owned));
    files.extend(seccomp_file);
    out.extend(
        make_apparmor_config(conf, &features)
            .lines()
            .map(str::to_owned),
    );
    if features.fuse {
        out.push("lxc.apparmor.raw = mount fstype=fuse,".into());
        out.push("lxc.mount.entry = /dev/fuse dev/fuse none bind,create=file 0 0".into());
    }
    if unprivileged && !features.force_rw_sys {
        // sys:rw (userns.conf) does not play well with systemd-networkd
        out.push("lxc.mount.auto = sys:mixed".into());
    }
    // (entrypoint and device passthrough are not modelled by this port)

    // loop device mounts must not stay in the monitor's namespace
    out.push("lxc.monitor.unshare = 1".into());

    let cgv2 = facts.cgroup2_controllers.as_ref();
    if unprivileged && !custom_idmap {
        out.push("lxc.idmap = u 0 100000 65536".into());
        out.push("lxc.idmap = g 0 100000 65536".into());
    }
    if !conf.has_dev_console() {
        out.push("lxc.console.path = none".into());
        if cgv2.is_some() {
            out.push("lxc.cgroup2.devices.deny = c 5:1 rwm".into());
        }
    }
    out.push(format!("lxc.tty.max = {}", conf.tty_count()));
    // some init scripts expect a linux terminal (turnkey)
    out.push("lxc.environment = TERM=linux".into());
    let utsname = conf
        .hostname
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("CT{vmid}"));
    out.push(format!("lxc.uts.name = {utsname}"));

    // Memory and CPU limits go to cgroup v2 only. On a host whose memory
    // controller is on v1 (like a hybrid layout) pct writes no limit at all.
    if cgv2.is_some_and(|c| c.contains("memory")) {
        let memory: u64 = conf
            .pve_key("memory")
            .and_then(|m| m.parse().ok())
            .filter(|m| *m > 0)
            .unwrap_or(512);
        let swap: u64 = conf
            .pve_key("swap")
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        // Config.pm calculate_memory_constraints
        let max = memory * 1024 * 1024;
        let high = if memory >= 16 * 1024 {
            (memory - 128) * 1024 * 1024
        } else {
            memory * 1024 * 1016
        };
        out.push(format!("lxc.cgroup2.memory.max = {max}"));
        out.push(format!("lxc.cgroup2.memory.high = {high}"));
        out.push(format!(
            "lxc.cgroup2.memory.swap.max = {}",
            swap * 1024 * 1024
        ));
    }
    if cgv2.is_some_and(|c| c.contains("cpu")) {
        if let Some(limit) = conf.pve_key("cpulimit").and_then(|c| c.parse::<f64>().ok()) {
            if limit > 0.0 {
                out.push(format!(
                    "lxc.cgroup2.cpu.max = {} 100000",
                    (100000.0 * limit) as u64
                ));
            }
        }
        if let Some(units) = conf.pve_key("cpuunits").and_then(|c| c.parse::<u64>().ok()) {
            // PVE::CGroup clamp_cpu_shares (cgroup v2 range)
            out.push(format!(
                "lxc.cgroup2.cpu.weight = {}",
                units.clamp(1, 10000)
            ));
        }
    }

    out.push(format!("lxc.rootfs.path = {}", rootfs.display()));

    let mut nets: Vec<_> = conf.nets.iter().collect();
    // `sort keys %$conf`: net10 sorts before net2
    nets.sort_by_key(|n| format!("net{}", n.index));
    for n in nets {
        let i = n.index;
        out.push(format!("lxc.net.{i}.type = veth"));
        out.push(format!("lxc.net.{i}.veth.pair = veth{vmid}i{i}"));
        let hwaddr = if n.hwaddr.is_empty() {
            pve_mac((u64::from(vmid) << 8) | u64::from(i))
        } else {
            n.hwaddr.clone()
        };
        out.push(format!("lxc.net.{i}.hwaddr = {hwaddr}"));
        if !n.name.is_empty() {
            out.push(format!("lxc.net.{i}.name = {}", n.name));
        }
        if n.bridge.is_empty() {
            return Err(format!("net{i}: missing bridge configuration"));
        }
        let bridge_mtu = *facts
            .bridge_mtu
            .get(&n.bridge)
            .ok_or_else(|| format!("bridge '{}' does not exist", n.bridge))?;
        let mtu = n.mtu.filter(|m| *m > 0).unwrap_or(bridge_mtu);
        if mtu > bridge_mtu {
            return Err(format!(
                "net{i}: MTU size '{mtu}' is bigger than bridge MTU '{bridge_mtu}'"
            ));
        }
        out.push(format!("lxc.net.{i}.mtu = {mtu}"));
        // pct writes `lxc.net.N.script.up = /usr/share/lxc/lxcnetaddbr`,
        // which plugs the host end into the netN bridge (pve-container's
        // lxcnetaddbr, not installed here); `link` makes LXC do the same.
        out.push(format!("lxc.net.{i}.link = {}", n.bridge));
        // No address and no `flags = up`: pct writes those only for
        // host-managed interfaces; the container's own network stack
        // brings the interface up.
    }

    for env in conf.env_entries() {
        out.push(format!("lxc.environment.runtime = {env}"));
    }
    for (k, v) in conf.lxc_entries() {
        out.push(format!("{k} = {v}"));
    }
    // (`cores` -> cpuset is not modelled by this port)
    let mut config = out.join("\n");
    config.push('\n');
    Ok(LxcConfig { config, files })
}

// LXC.pm make_seccomp_config: unprivileged containers get a profile that
// also disables keyctl (unless the feature is on), btrfs ioctls and AF_ALG
// sockets, written next to the config as rules.seccomp.
fn make_seccomp_config(
    conf: &CtConfig,
    dir: &Path,
    unprivileged: bool,
    features: &Features,
    facts: &HostFacts,
) -> Result<(String, Option<(PathBuf, String)>), String> {
    if conf.has_lxc_entry("lxc.seccomp.profile") {
        let overridden: Vec<&str> = [("keyctl", features.keyctl), ("mknod", features.mknod)]
            .iter()
            .filter(|(_, on)| *on)
            .map(|(n, _)| *n)
            .collect();
        if !overridden.is_empty() {
            eprintln!(
                "pve-setup: warning: explicitly configured lxc.seccomp.profile overrides the \
                 following settings: {}",
                overridden.join(", ")
            );
        }
        return Ok((String::new(), None));
    }
    // privileged: the default profile from the included common.conf
    if !unprivileged {
        return Ok((String::new(), None));
    }
    let mut rules: BTreeMap<&str, Vec<&str>> = BTreeMap::from([
        ("keyctl", vec!["errno 38"]),
        (
            "ioctl",
            vec!["errno 1 [1,0x9400,SCMP_CMP_MASKED_EQ,0xff00]"],
        ),
        ("socket", vec!["errno 97 [0,38,SCMP_CMP_EQ]"]),
    ]);
    let mut raw = String::new();
    if features.keyctl {
        rules.remove("keyctl");
    }
    if features.mknod {
        let mut parts = facts.kernel_release.split(['.', '-']);
        let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if (major, minor) < (5, 3) {
            return Err(format!(
                "'mknod' feature requested, but kernel too old (found {}, required >= 5.3)",
                facts.kernel_release
            ));
        }
        raw.push_str(&format!(
            "lxc.seccomp.notify.proxy = unix:{}\n",
            facts.syscalld_socket
        ));
        raw.push_str(&format!("lxc.seccomp.notify.cookie = {}\n", conf.vmid));
        rules.insert(
            "mknod",
            vec![
                "notify [1,8192,SCMP_CMP_MASKED_EQ,61440]",
                "notify [1,24576,SCMP_CMP_MASKED_EQ,61440]",
            ],
        );
        rules.insert(
            "mknodat",
            vec![
                "notify [2,8192,SCMP_CMP_MASKED_EQ,61440]",
                "notify [2,24576,SCMP_CMP_MASKED_EQ,61440]",
            ],
        );
    }
    let extra: Vec<String> = rules
        .iter()
        .flat_map(|(sc, rs)| rs.iter().map(move |r| format!("{sc} {r}")))
        .collect();
    let extra = extra.join("\n") + "\n";
    if extra == "\n" {
        return Ok((raw, None));
    }
    if raw.is_empty() && extra == "keyctl errno 38\n" {
        // pve-container's own profile from PVE 6.1; unreachable since pct
        // always adds the ioctl and socket rules.
        return Ok((
            format!("lxc.seccomp.profile = {LXC_CONFIG_PATH}/pve-userns.seccomp\n"),
            None,
        ));
    }
    let rule_file = dir.join("rules.seccomp");
    if facts.common_seccomp.is_empty() {
        return Err(format!(
            "{LXC_CONFIG_PATH}/common.seccomp is missing; it is the base of {}",
            rule_file.display()
        ));
    }
    let data = format!("{}{extra}", facts.common_seccomp);
    raw.push_str(&format!("lxc.seccomp.profile = {}\n", rule_file.display()));
    Ok((raw, Some((rule_file, data))))
}

// LXC.pm make_apparmor_config: lxc's generated profile with pct's additions;
// nothing if the user set lxc.apparmor.profile. Without AppArmor in the
// kernel (e.g. this host: no /sys/module/apparmor) LXC ignores these keys.
fn make_apparmor_config(conf: &CtConfig, features: &Features) -> String {
    let mut raw = String::from("lxc.apparmor.profile = generated\n");
    // abi/4.0 mqueue class
    raw.push_str("lxc.apparmor.raw = allow mqueue,\n");
    let mut uses = Vec::new();
    if features.fuse {
        uses.push("features:fuse".to_owned());
    }
    if features.nesting {
        uses.push("features:nesting".to_owned());
        raw.push_str("lxc.apparmor.allow_nesting = 1\n");
        raw.push_str("lxc.apparmor.raw = allow userns,\n");
    } else {
        // keep a container from e.g. chown'ing the host's /sys
        raw.push_str("lxc.apparmor.raw = deny mount -> /proc/,\n");
        raw.push_str("lxc.apparmor.raw = deny mount -> /sys/,\n");
    }
    if let Some(mount) = &features.mount {
        uses.push("features:mount".to_owned());
        for fs in crate::config::split_list(mount) {
            raw.push_str(&format!("lxc.apparmor.raw = mount fstype={fs},\n"));
        }
    }
    if conf.has_lxc_entry("lxc.apparmor.profile") {
        if !uses.is_empty() {
            eprintln!(
                "pve-setup: warning: explicitly configured lxc.apparmor.profile overrides the \
                 following settings: {}",
                uses.join(", ")
            );
        }
        return String::new();
    }
    raw
}
