//! The node's host name: set from the metadata when it names one, left as
//! it is otherwise.
//!
//! Proxmox owns a container's names: `pct create` and every `pct start`
//! write `/etc/hostname` and a `# --- BEGIN PVE ---` block in `/etc/hosts`
//! (pve-container `src/PVE/LXC/Setup/Base.pm`, `set_hostname` and
//! `update_etc_hosts`). Without a host name in the metadata the agent keeps
//! those files untouched. With one, it writes `/etc/hostname`, makes the
//! name resolve through a block of its own in `/etc/hosts` (pct's block is
//! left alone) and, in a Proxmox container, warns that the next `pct start`
//! puts pct's name back — the K3s node name is pinned to the metadata's so
//! the node does not re-register under another name.

use anyhow::Result;

use crate::checks::Finding;
use crate::rootfs::Root;
use crate::system::System;

/// How pct marks its block in `/etc/hosts` (Base.pm `ct_modify_file`).
const PVE_BLOCK_BEGIN: &str = "# --- BEGIN PVE ---";
const AGENT_BLOCK_BEGIN: &str = "# --- BEGIN firstboot-agent ---";
const AGENT_BLOCK_END: &str = "# --- END firstboot-agent ---";

/// What the host-name step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostnameOutcome {
    pub message: String,
    pub findings: Vec<Finding>,
    /// Proxmox manages this container's names (its block is in `/etc/hosts`).
    pub proxmox_managed: bool,
}

/// Apply the metadata's host name, if any.
pub fn apply(root: &Root, system: &dyn System, hostname: Option<&str>) -> Result<HostnameOutcome> {
    let hosts = root.read_optional("/etc/hosts")?.unwrap_or_default();
    let proxmox_managed = is_proxmox_managed(&hosts);
    let current = root
        .read_optional("/etc/hostname")?
        .unwrap_or_default()
        .trim()
        .to_owned();
    let Some(name) = hostname else {
        let kept = if current.is_empty() {
            "the current one".to_owned()
        } else {
            current
        };
        let by = if proxmox_managed {
            " (set by Proxmox)"
        } else {
            ""
        };
        return Ok(HostnameOutcome {
            message: format!("no host name in metadata; kept {kept}{by}"),
            findings: Vec::new(),
            proxmox_managed,
        });
    };
    let mut findings = Vec::new();
    if current != name {
        root.write_atomic("/etc/hostname", format!("{name}\n").as_bytes(), 0o644)?;
    }
    // pct's block names the container as Proxmox knows it; checked on every
    // run, so a retried run warns again.
    let pct_names = pve_block_names(&hosts);
    if proxmox_managed && !pct_names.iter().any(|n| n == name) {
        let pct_name = pct_names
            .iter()
            .find(|n| !n.starts_with("localhost") && *n != "ip6-localhost")
            .map_or("something else", String::as_str);
        findings.push(Finding::warn(
            "hostname",
            format!(
                "the metadata names this node {name}, but Proxmox calls the container {pct_name} \
                     and writes that name back to /etc/hostname at every `pct start`"
            ),
            format!(
                "set it on the Proxmox host with `pct set <vmid> --hostname {name}`; \
                     the K3s node name stays {name} either way"
            ),
        ));
    }
    if let Some(new_hosts) = hosts_resolving(&hosts, name) {
        root.write_atomic("/etc/hosts", new_hosts.as_bytes(), 0o644)?;
    }
    if let Err(e) = system.set_hostname(name) {
        findings.push(Finding::warn(
            "hostname",
            format!("/etc/hostname says {name}, but {e}"),
            "the name applies from the next boot",
        ));
    }
    Ok(HostnameOutcome {
        message: format!("host name {name}"),
        findings,
        proxmox_managed,
    })
}

/// The names (every field after the address) in pct's block of `/etc/hosts`.
fn pve_block_names(hosts: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut inside = false;
    for line in hosts.lines() {
        let t = line.trim();
        if t.starts_with(PVE_BLOCK_BEGIN) {
            inside = true;
        } else if t.starts_with("# --- END PVE ---") {
            inside = false;
        } else if inside {
            let fields = t.split('#').next().unwrap_or("");
            names.extend(fields.split_whitespace().skip(1).map(str::to_owned));
        }
    }
    names
}

fn is_proxmox_managed(hosts: &str) -> bool {
    hosts
        .lines()
        .any(|l| l.trim_start().starts_with(PVE_BLOCK_BEGIN))
}

/// `hosts` changed so that `name` resolves: an earlier block of the agent's
/// is dropped, and a new one mapping `name` to 127.0.1.1 (as Debian's
/// installer and pct do for a name without an address) is appended unless
/// another line maps it already. `None` when nothing changes.
pub fn hosts_resolving(hosts: &str, name: &str) -> Option<String> {
    let mut kept = String::with_capacity(hosts.len() + 64);
    let mut in_block = false;
    let mut maps_name = false;
    for line in hosts.lines() {
        let t = line.trim();
        if t == AGENT_BLOCK_BEGIN {
            in_block = true;
            continue;
        }
        if in_block {
            in_block = t != AGENT_BLOCK_END;
            continue;
        }
        let fields = t.split('#').next().unwrap_or("");
        maps_name |= fields.split_whitespace().skip(1).any(|n| n == name);
        kept.push_str(line);
        kept.push('\n');
    }
    if !maps_name {
        kept.push_str(&format!(
            "{AGENT_BLOCK_BEGIN}\n127.0.1.1 {name}\n{AGENT_BLOCK_END}\n"
        ));
    }
    (kept != hosts).then_some(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PVE_HOSTS: &str = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n\
        # --- BEGIN PVE ---\n192.168.2.21 k3s-worker-1\n# --- END PVE ---\n";

    #[test]
    fn a_name_already_mapped_changes_nothing() {
        assert_eq!(hosts_resolving(PVE_HOSTS, "k3s-worker-1"), None);
        assert_eq!(hosts_resolving(PVE_HOSTS, "localhost"), None);
    }

    #[test]
    fn a_new_name_gets_a_block_of_its_own_and_pcts_stays() {
        let h = hosts_resolving(PVE_HOSTS, "node-7").unwrap();
        assert!(h.starts_with(PVE_HOSTS), "{h}");
        assert!(h.ends_with(
            "# --- BEGIN firstboot-agent ---\n127.0.1.1 node-7\n# --- END firstboot-agent ---\n"
        ));
        // Idempotent, and a later rename replaces the block.
        assert_eq!(hosts_resolving(&h, "node-7"), None);
        let h2 = hosts_resolving(&h, "node-8").unwrap();
        assert!(
            !h2.contains("node-7") && h2.contains("127.0.1.1 node-8\n"),
            "{h2}"
        );
        // Back to pct's name: the agent's block goes away.
        assert_eq!(hosts_resolving(&h2, "k3s-worker-1").unwrap(), PVE_HOSTS);
    }

    #[test]
    fn comments_and_partial_names_do_not_count() {
        let h = "127.0.0.1 localhost # node-7\n10.0.0.1 node-77\n";
        assert!(hosts_resolving(h, "node-7")
            .unwrap()
            .contains("127.0.1.1 node-7\n"));
        assert!(hosts_resolving("", "n").unwrap().contains("127.0.1.1 n\n"));
    }

    #[test]
    fn proxmox_block_is_recognised() {
        assert_eq!(pve_block_names(PVE_HOSTS), vec!["k3s-worker-1"]);
        assert!(pve_block_names("10.0.0.1 a\n").is_empty());
        assert!(is_proxmox_managed(PVE_HOSTS));
        assert!(!is_proxmox_managed("127.0.0.1 localhost\n"));
    }
}
