//! A host firewall that is on: firewalld (RHEL, Rocky) or ufw (Ubuntu).
//! K3s's requirements page lists what its nodes must accept (docs.k3s.io,
//! "Requirements", "Inbound Rules for K3s Server Nodes"): 6443/tcp on
//! servers, 2379-2380/tcp between embedded-etcd servers, 8472/udp for
//! flannel's VXLAN or 51820-51821/udp for its WireGuard backend, 10250/tcp
//! for the kubelet; and for firewalld the pod and service networks as
//! trusted sources (`firewall-cmd --permanent --zone=trusted
//! --add-source=10.42.0.0/16`, the same for 10.43.0.0/16, then
//! `firewall-cmd --reload`), for ufw `ufw allow from 10.42.0.0/16 to any`.
//! The same page recommends turning the firewall off instead
//! (`systemctl disable firewalld --now`, `ufw disable`): `k3s.firewall:
//! disable` does that, `leave` changes nothing.

use node_spec::{FirewallPolicy, Role};

use super::{find_program, said};
use crate::checks::Finding;
use crate::metadata::{NodeConfig, Topology};
use crate::rootfs::{FileError, Root};
use crate::system::System;

pub const FIREWALLD_UNIT: &str = "firewalld.service";
/// ufw's own switch: `ufw enable` writes `ENABLED=yes`, and ufw.service
/// applies the rules at boot only then (ufw-init).
pub const UFW_CONF: &str = "/etc/ufw/ufw.conf";

/// One port (or range) K3s needs open, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub first: u16,
    pub last: u16,
    pub proto: &'static str,
    pub why: &'static str,
}

impl Port {
    const fn new(first: u16, last: u16, proto: &'static str, why: &'static str) -> Self {
        Self {
            first,
            last,
            proto,
            why,
        }
    }

    /// `6443/tcp`, `2379-2380/tcp` (firewalld's form).
    pub fn firewalld(&self) -> String {
        if self.first == self.last {
            format!("{}/{}", self.first, self.proto)
        } else {
            format!("{}-{}/{}", self.first, self.last, self.proto)
        }
    }

    /// `2379:2380/tcp` (ufw's form).
    pub fn ufw(&self) -> String {
        self.firewalld().replace('-', ":")
    }
}

/// What this node must accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needs {
    pub ports: Vec<Port>,
    /// The pod and service networks (cluster-cidr, service-cidr).
    pub sources: Vec<String>,
}

fn config_list(cfg: &NodeConfig, key: &str, default: &str) -> Vec<String> {
    let v = cfg
        .extra_config
        .get(key)
        .and_then(serde_yaml::Value::as_str)
        .unwrap_or(default);
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The ports and networks of this role and configuration.
pub fn needs(cfg: &NodeConfig) -> Needs {
    let mut ports = Vec::new();
    if cfg.role == Role::Server {
        ports.push(Port::new(
            6443,
            6443,
            "tcp",
            "K3s supervisor and Kubernetes API",
        ));
        if matches!(cfg.topology, Topology::HaFirst | Topology::HaJoin)
            || cfg
                .extra_config
                .get("cluster-init")
                .and_then(serde_yaml::Value::as_bool)
                == Some(true)
        {
            ports.push(Port::new(2379, 2380, "tcp", "embedded etcd"));
        }
    }
    ports.push(Port::new(10250, 10250, "tcp", "kubelet"));
    let backend = cfg
        .extra_config
        .get("flannel-backend")
        .and_then(serde_yaml::Value::as_str)
        .unwrap_or("vxlan");
    match backend {
        "none" | "host-gw" => {}
        b if b.starts_with("wireguard") => {
            ports.push(Port::new(
                51820,
                51821,
                "udp",
                "flannel WireGuard (IPv4, IPv6)",
            ));
        }
        _ => ports.push(Port::new(8472, 8472, "udp", "flannel VXLAN")),
    }
    let mut sources = config_list(cfg, "cluster-cidr", "10.42.0.0/16");
    sources.extend(config_list(cfg, "service-cidr", "10.43.0.0/16"));
    Needs { ports, sources }
}

/// Which firewall is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Active {
    None,
    Firewalld,
    Ufw,
}

pub fn detect(root: &Root, system: &dyn System) -> Result<Active, FileError> {
    if find_program(root, "firewall-cmd").is_some() {
        let o = system.systemctl(&["is-active", "--quiet", FIREWALLD_UNIT]);
        if o.is_ok_and(|o| o.success) {
            return Ok(Active::Firewalld);
        }
    }
    if find_program(root, "ufw").is_some() {
        let on = root.read_optional(UFW_CONF)?.is_some_and(|t| {
            t.lines().any(|l| {
                l.trim().trim_matches('"') == "ENABLED=yes" || l.trim() == "ENABLED=\"yes\""
            })
        });
        if on {
            return Ok(Active::Ufw);
        }
    }
    Ok(Active::None)
}

/// Run a firewall command; its stdout, or why it failed.
fn cmd(system: &dyn System, program: &str, args: &[&str]) -> Result<String, String> {
    let line = format!("{program} {}", args.join(" "));
    match system.command(program, args) {
        Ok(o) if o.success => Ok(o.stdout),
        Ok(o) => Err(format!("`{line}` failed: {}", o.stderr.trim())),
        Err(e) => Err(format!("`{line}`: {e}")),
    }
}

fn fail(detail: String) -> Finding {
    Finding::fail(
        "firewall",
        detail,
        "open the ports K3s needs (docs/agent.md, \"Firewall\"), or set k3s.firewall: disable in the profile or metadata",
    )
}

fn list(needs: &Needs) -> String {
    let ports: Vec<String> = needs
        .ports
        .iter()
        .map(|p| format!("{} ({})", p.firewalld(), p.why))
        .collect();
    format!("{}; trusted {}", ports.join(", "), needs.sources.join(", "))
}

/// Open, disable or leave the active firewall (with `apply == false`, say
/// what `run` would do).
pub fn run(
    root: &Root,
    system: &dyn System,
    cfg: &NodeConfig,
    apply: bool,
) -> Result<Finding, FileError> {
    let active = detect(root, system)?;
    let needs = needs(cfg);
    let name = match active {
        Active::None => {
            return Ok(Finding::pass(
                "firewall",
                "neither firewalld nor ufw is active",
            ))
        }
        Active::Firewalld => "firewalld",
        Active::Ufw => "ufw",
    };
    match cfg.firewall {
        FirewallPolicy::Leave => Ok(Finding::warn(
            "firewall",
            format!("{name} is active and left alone (k3s.firewall: leave)"),
            format!("it must accept {}", list(&needs)),
        )),
        FirewallPolicy::Disable if !apply => Ok(Finding::warn(
            "firewall",
            format!("{name} is active"),
            "`run` turns it off (k3s.firewall: disable)",
        )),
        FirewallPolicy::Disable => {
            let r = match active {
                Active::Firewalld => system
                    .systemctl(&["disable", "--now", FIREWALLD_UNIT])
                    .map_err(|e| e.to_string())
                    .and_then(|o| {
                        if o.success {
                            Ok(String::new())
                        } else {
                            Err(format!(
                                "`systemctl disable --now {FIREWALLD_UNIT}` failed: {}",
                                o.stderr.trim()
                            ))
                        }
                    }),
                _ => cmd(system, "ufw", &["disable"]),
            };
            Ok(match r {
                Ok(_) => Finding::pass(
                    "firewall",
                    said(
                        system,
                        format!("{name} turned off (k3s.firewall: disable)"),
                        format!("{name} would be turned off (dry run)"),
                    ),
                ),
                Err(e) => fail(e),
            })
        }
        FirewallPolicy::Open => match active {
            Active::Firewalld => open_firewalld(system, &needs, apply),
            _ => open_ufw(system, &needs, apply),
        },
    }
}

fn open_firewalld(system: &dyn System, needs: &Needs, apply: bool) -> Result<Finding, FileError> {
    let listed = |args: &[&str]| -> Result<Vec<String>, String> {
        cmd(system, "firewall-cmd", args).map(|o| o.split_whitespace().map(str::to_owned).collect())
    };
    let (ports, sources) = match (
        listed(&["--permanent", "--list-ports"]),
        listed(&["--permanent", "--zone=trusted", "--list-sources"]),
    ) {
        (Ok(p), Ok(s)) => (p, s),
        (Err(e), _) | (_, Err(e)) => return Ok(fail(e)),
    };
    let missing_ports: Vec<String> = needs
        .ports
        .iter()
        .map(Port::firewalld)
        .filter(|p| !ports.contains(p))
        .collect();
    let missing_sources: Vec<&String> = needs
        .sources
        .iter()
        .filter(|s| !sources.contains(s))
        .collect();
    if missing_ports.is_empty() && missing_sources.is_empty() {
        return Ok(Finding::pass(
            "firewall",
            format!("firewalld is active and accepts {}", list(needs)),
        ));
    }
    let missing = missing_ports
        .iter()
        .cloned()
        .chain(missing_sources.iter().map(|s| format!("trusted {s}")))
        .collect::<Vec<_>>()
        .join(", ");
    if !apply {
        return Ok(Finding::warn(
            "firewall",
            format!("firewalld is active and does not accept {missing}"),
            "`run` opens them (k3s.firewall: open, the default)",
        ));
    }
    // Permanent, then --reload: the runtime configuration becomes the
    // permanent one, so the rules hold now and after a reboot.
    for p in &missing_ports {
        if let Err(e) = cmd(
            system,
            "firewall-cmd",
            &["--permanent", &format!("--add-port={p}")],
        ) {
            return Ok(fail(e));
        }
    }
    for s in &missing_sources {
        if let Err(e) = cmd(
            system,
            "firewall-cmd",
            &[
                "--permanent",
                "--zone=trusted",
                &format!("--add-source={s}"),
            ],
        ) {
            return Ok(fail(e));
        }
    }
    if let Err(e) = cmd(system, "firewall-cmd", &["--reload"]) {
        return Ok(fail(e));
    }
    Ok(Finding::pass(
        "firewall",
        said(
            system,
            format!("firewalld: opened {missing} (permanent, reloaded)"),
            format!("firewalld: would open {missing} (dry run)"),
        ),
    ))
}

fn open_ufw(system: &dyn System, needs: &Needs, apply: bool) -> Result<Finding, FileError> {
    let rules: Vec<Vec<String>> = needs
        .ports
        .iter()
        .map(|p| vec!["allow".to_owned(), p.ufw()])
        .chain(needs.sources.iter().map(|s| {
            ["allow", "from", s, "to", "any"]
                .iter()
                .map(|a| (*a).to_owned())
                .collect()
        }))
        .collect();
    let shown = rules
        .iter()
        .map(|r| format!("ufw {}", r.join(" ")))
        .collect::<Vec<_>>()
        .join("; ");
    if !apply {
        return Ok(Finding::warn(
            "firewall",
            "ufw is active".to_owned(),
            format!("`run` runs {shown} (k3s.firewall: open, the default)"),
        ));
    }
    // `ufw allow` skips a rule it has already ("Skipping adding existing rule").
    for r in &rules {
        let args: Vec<&str> = r.iter().map(String::as_str).collect();
        if let Err(e) = cmd(system, "ufw", &args) {
            return Ok(fail(e));
        }
    }
    Ok(Finding::pass(
        "firewall",
        said(
            system,
            format!("ufw: allowed {}", list(needs)),
            format!("ufw: would allow {} (dry run)", list(needs)),
        ),
    ))
}
