//! `k3s-killall.sh` and the role's uninstall script, the two scripts K3s's
//! install.sh leaves on every node (`create_killall`, `create_uninstall` in
//! k3s-io/k3s `install.sh`) and that runbooks call (k3s#774, #5455,
//! #8347). The text is install.sh's, adapted where this node differs:
//!
//! * one unit, `k3s.service` or `k3s-agent.service`, and no OpenRC or
//!   k3s-selinux package (the agent installs neither);
//! * `K3S_DATA_DIR` defaults to the `data-dir` of the node's K3s config;
//! * the uninstall script also removes firstboot-agent's own state
//!   (`/var/lib/firstboot-agent`, `firstboot-agent-ready.service`) and
//!   stops the agent's units first, so the node can be provisioned again
//!   by `firstboot-agent run` or the next boot; it keeps the agent, its
//!   unit, the image's defaults and K3s binary and the NoCloud seed;
//! * it keeps what the image or cloud-init put under `/etc/rancher/k3s`
//!   and the data directory before K3s first started (a baked
//!   `registries.yaml`, air-gap archives, manifests), listed in `KEEP`:
//!   provisioning again needs them;
//! * every directory is removed as install.sh removes the data directory
//!   (`clean_mounted_directory`: a mount point is emptied, not removed);
//!   under `/var/lib/kubelet` and `/run/k3s` a directory that is still
//!   mounted — a volume the killall script could not unmount — is left
//!   with what it holds, where install.sh's `rm -rf` deletes the volume's
//!   data (k3s#3264);
//! * only `kubectl`/`crictl`/`ctr` links that point to k3s are removed;
//! * a forced unmount that fails is tried once more without `-f`: LXC's
//!   seccomp policy (`reject_force_umount` in its common.seccomp, which
//!   Proxmox containers get) refuses every `umount -f` in a container;
//! * every file path is prefixed with `ROOT`, empty on the node, so tests
//!   run the scripts against a directory.
//!
//! The killall script follows install.sh as it is since k3s#8527: it does
//! not unmount the data directory, which K3s's own docs suggest putting on
//! separate filesystems.

use std::path::Path;

use node_spec::Role;

use super::config::CONFIG_PATH;
use super::KUBECONFIG;
use crate::leftovers::{AGENT_TEMP, DOWNLOAD_TEMP};
use crate::metadata::NodeConfig;
use crate::rootfs::{FileError, Root};

pub const KILLALL_PATH: &str = "/usr/local/bin/k3s-killall.sh";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/rancher/k3s";
/// The first lines of every script the agent writes.
const MARK: &str = "#!/bin/sh\n# Written by firstboot-agent:";
/// More kept files than this are not listed (an image does not bake that
/// many into K3s's directories; a data directory that full was not made by
/// an image).
pub const MAX_KEPT: usize = 1000;

/// install.sh's name for the role's uninstall script.
pub fn uninstall_path(role: Role) -> &'static str {
    match role {
        Role::Server => "/usr/local/bin/k3s-uninstall.sh",
        Role::Agent => "/usr/local/bin/k3s-agent-uninstall.sh",
    }
}

/// K3s's data directory: `data-dir` from the node's config when it is an
/// absolute path, else K3s's default.
pub fn data_dir(cfg: &NodeConfig) -> String {
    cfg.extra_config
        .get("data-dir")
        .and_then(serde_yaml::Value::as_str)
        .map(|d| d.trim_end_matches('/'))
        .filter(|d| d.starts_with('/') && d.len() > 1)
        .unwrap_or(DEFAULT_DATA_DIR)
        .to_owned()
}

/// `value` as one shell word.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// Whether a path can stand in `KEEP` (one line of a single-quoted word).
fn listable(path: &str) -> bool {
    !path.contains('\'') && crate::message::first_control(path).is_none()
}

/// The files under `/etc/rancher/k3s` and `data_dir` now, other than the
/// agent's own (config.yaml, temp files) and K3s's kubeconfig — before K3s
/// first starts, what the image or cloud-init put there. Sorted node paths,
/// at most [`MAX_KEPT`]; the second value says whether some were left out.
pub fn image_files(root: &Root, data_dir: &str) -> Result<(Vec<String>, bool), FileError> {
    let mut out = Vec::new();
    let mut left_out = false;
    for dir in ["/etc/rancher/k3s", data_dir] {
        walk(root, dir, &mut out, &mut left_out)?;
    }
    out.retain(|p| p != CONFIG_PATH && p != KUBECONFIG);
    out.sort();
    out.dedup();
    Ok((out, left_out))
}

fn walk(
    root: &Root,
    dir: &str,
    out: &mut Vec<String>,
    left_out: &mut bool,
) -> Result<(), FileError> {
    let real = root.path(dir);
    let entries = match std::fs::read_dir(&real) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => return Ok(()),
        Err(e) => return Err(FileError::new("listing", &real, e)),
    };
    let mut names: Vec<String> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| FileError::new("listing", &real, e))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    for name in names {
        if name.starts_with(AGENT_TEMP) || name.starts_with(DOWNLOAD_TEMP) {
            continue;
        }
        let node = format!("{}/{name}", dir.trim_end_matches('/'));
        let meta = std::fs::symlink_metadata(Path::new(&real).join(&name))
            .map_err(|e| FileError::new("reading", Path::new(&real).join(&name), e))?;
        if meta.is_dir() {
            walk(root, &node, out, left_out)?;
        } else if !listable(&node) || out.len() >= MAX_KEPT {
            *left_out = true;
        } else {
            out.push(node);
        }
    }
    Ok(())
}

/// `k3s-killall.sh` (install.sh `create_killall`).
pub fn render_killall(role: Role, data_dir: &str) -> String {
    let unit = role.unit_name();
    let data_dir = shell_quote(data_dir);
    format!(
        r#"{MARK} K3s's k3s-killall.sh, as K3s's install.sh writes it
# (create_killall in k3s-io/k3s install.sh), for this node's {unit}.
# Stops K3s, kills the containerd shims and the processes they run, unmounts
# what K3s and the kubelet mounted, deletes the CNI network interfaces,
# namespaces and iptables rules. Cluster data stays; to remove K3s, run the
# uninstall script next to this one.
[ $(id -u) -eq 0 ] || exec sudo --preserve-env=K3S_DATA_DIR "$0" "$@"

# Every file below is under ROOT, which is empty on the node.
ROOT=''
K3S_DATA_DIR=${{K3S_DATA_DIR:-{data_dir}}}

for bin in "${{ROOT}}${{K3S_DATA_DIR}}"/data/**/bin/; do
    [ -d "$bin" ] && export PATH=$PATH:$bin:$bin/aux
done

set -x

for service in "${{ROOT}}"/etc/systemd/system/k3s*.service; do
    [ -s "$service" ] && systemctl stop "$(basename "$service")"
done

for service in "${{ROOT}}"/etc/init.d/k3s*; do
    [ -x "$service" ] && "$service" stop
done

pschildren() {{
    ps -e -o ppid= -o pid= | \
    sed -e 's/^\s*//g; s/\s\s*/\t/g;' | \
    grep -w "^$1" | \
    cut -f2
}}

pstree() {{
    for pid in $@; do
        echo $pid
        for child in $(pschildren $pid); do
            pstree $child
        done
    done
}}

killtree() {{
    kill -9 $(
        {{ set +x; }} 2>/dev/null;
        pstree $@;
        set -x;
    ) 2>/dev/null
}}

remove_interfaces() {{
    # Delete network interface(s) that match 'master cni0'
    ip link show 2>/dev/null | grep 'master cni0' | while read ignore iface ignore; do
        iface=${{iface%%@*}}
        [ -z "$iface" ] || ip link delete $iface
    done

    # Delete cni related interfaces
    ip link delete cni0
    ip link delete flannel.1
    ip link delete flannel-v6.1
    ip link delete kube-ipvs0
    ip link delete flannel-wg
    ip link delete flannel-wg-v6

    # Restart tailscale
    if [ -n "$(command -v tailscale)" ]; then
        tailscale set --advertise-routes=
    fi
}}

getshims() {{
    ps -e -o pid= -o args= | sed -e 's/^ *//; s/\s\s*/\t/;' | grep -w "${{ROOT}}${{K3S_DATA_DIR}}"'/data/[^/]*/bin/containerd-shim' | cut -f1
}}

command -v ps >/dev/null || echo 'k3s-killall.sh: ps is missing (install procps), so the containerd shims and their processes are not killed' >&2
killtree $({{ set +x; }} 2>/dev/null; getshims; set -x)

do_unmount_and_remove() {{
    set +x
    while read -r _ path _; do
        case "$path" in $1*) echo "$path" ;; esac
    done < /proc/self/mounts | sort -r | xargs -r -t -n 1 sh -c '{{ umount -f "$0" 2>/dev/null || umount "$0"; }} && rm -rf "$0"'
    set -x
}}

do_unmount_and_remove "${{ROOT}}/run/k3s"
do_unmount_and_remove "${{ROOT}}/var/lib/kubelet/pods"
do_unmount_and_remove "${{ROOT}}/var/lib/kubelet/plugins"
do_unmount_and_remove "${{ROOT}}/run/netns/cni-"

# Remove CNI namespaces
ip netns show 2>/dev/null | grep cni- | cut -d' ' -f1 | xargs -r -t -n 1 ip netns delete

remove_interfaces

rm -rf "${{ROOT}}/var/lib/cni/"
iptables-save | grep -v KUBE- | grep -v CNI- | grep -iv flannel | iptables-restore
ip6tables-save | grep -v KUBE- | grep -v CNI- | grep -iv flannel | ip6tables-restore
"#
    )
}

/// The role's uninstall script (install.sh `create_uninstall`, module docs).
pub fn render_uninstall(role: Role, data_dir: &str, keep: &[String]) -> String {
    let unit = role.unit_name();
    let name = unit.trim_end_matches(".service");
    let me = uninstall_path(role);
    let data_dir = shell_quote(data_dir);
    let keep: Vec<&str> = keep
        .iter()
        .map(String::as_str)
        .filter(|p| listable(p))
        .collect();
    let keep = shell_quote(&keep.join("\n"));
    format!(
        r#"{MARK} K3s's uninstall script, as K3s's install.sh
# writes it (create_uninstall in k3s-io/k3s install.sh), for this node's
# {unit} — and firstboot-agent's own state, so that the node can be
# provisioned again: `firstboot-agent run`, or the next boot.
# Kept: firstboot-agent, its unit, the image's defaults and K3s binary, the
# NoCloud seed, and the files the image or cloud-init had put under
# /etc/rancher/k3s and the data directory before K3s first started (KEEP).
set -x
[ $(id -u) -eq 0 ] || exec sudo --preserve-env=K3S_DATA_DIR "$0" "$@"

# Every file below is under ROOT, which is empty on the node.
ROOT=''
K3S_DATA_DIR=${{K3S_DATA_DIR:-{data_dir}}}
KEEP={keep}

# firstboot-agent must not set K3s up again while it is being removed.
if command -v systemctl; then
    systemctl stop firstboot-agent-ready.service firstboot-agent.service
fi

"${{ROOT}}{KILLALL_PATH}"

if command -v systemctl; then
    systemctl disable {name}
    systemctl reset-failed {name}
    systemctl daemon-reload
fi

rm -f "${{ROOT}}/etc/systemd/system/{unit}"
rm -f "${{ROOT}}/etc/systemd/system/{unit}.env"

remove_uninstall() {{
    rm -f "${{ROOT}}{me}"
}}
trap remove_uninstall EXIT

if (ls "${{ROOT}}"/etc/systemd/system/k3s*.service || ls "${{ROOT}}"/etc/init.d/k3s*) >/dev/null 2>&1; then
    set +x; echo 'Additional k3s services installed, skipping uninstall of k3s'; set -x
    exit
fi

for cmd in kubectl crictl ctr; do
    if [ -L "${{ROOT}}/usr/local/bin/$cmd" ] && [ "$(readlink "${{ROOT}}/usr/local/bin/$cmd")" = k3s ]; then
        rm -f "${{ROOT}}/usr/local/bin/$cmd"
    fi
done

NL='
'
# kept PATH: KEEP lists PATH, or a file below it.
kept() {{
    case "$NL$KEEP$NL" in
    *"$NL$1$NL"* | *"$NL$1/"*) return 0 ;;
    esac
    return 1
}}

# remove_tree PATH [keep-mounts]: PATH and everything below it, except what
# KEEP lists, without removing a mount point: a mounted directory is
# emptied and stays (install.sh's clean_mounted_directory), or, with
# keep-mounts, left alone with what it holds (a volume the killall script
# could not unmount keeps its data).
remove_tree() {{
    if ! kept "$1" && ! grep -qF -e " ${{ROOT}}$1 " -e " ${{ROOT}}$1/" /proc/self/mounts; then
        rm -rf "${{ROOT}}$1"
        return 0
    fi
    [ -d "${{ROOT}}$1" ] && [ ! -L "${{ROOT}}$1" ] || return 0
    if [ "$2" = keep-mounts ] && grep -qF " ${{ROOT}}$1 " /proc/self/mounts; then
        set +x; echo "$1 is still mounted: left as it is"; set -x
        return 0
    fi
    for path in "${{ROOT}}$1"/* "${{ROOT}}$1"/.[!.]* "${{ROOT}}$1"/..?*; do
        [ -e "$path" ] || [ -L "$path" ] || continue
        remove_tree "$1/${{path##*/}}" "$2"
    done
    kept "$1" || rmdir "${{ROOT}}$1" 2>/dev/null || true
}}

remove_tree /etc/rancher/k3s
remove_tree /run/k3s keep-mounts
remove_tree /run/flannel
remove_tree "${{K3S_DATA_DIR}}"
remove_tree /var/lib/kubelet keep-mounts
rm -f "${{ROOT}}/usr/local/bin/k3s"
# The binary `firstboot-agent upgrade` replaced, kept for --rollback.
rm -f "${{ROOT}}/usr/local/bin/k3s.previous"

# firstboot-agent's record of this node (state, result, done marker) and
# the unit it wrote: without them it provisions the node again.
rm -f "${{ROOT}}/etc/systemd/system/firstboot-agent-ready.service"
rm -rf "${{ROOT}}/var/lib/firstboot-agent"
if command -v systemctl; then
    systemctl daemon-reload
fi

rm -f "${{ROOT}}{KILLALL_PATH}"
"#
    )
}

/// Write both scripts (0755, atomically, only when their text changed) and
/// remove the other role's uninstall script when the agent wrote it (a run
/// that stopped before the role changed). Returns the paths written.
pub fn write(root: &Root, cfg: &NodeConfig, keep: &[String]) -> Result<Vec<String>, FileError> {
    let dir = data_dir(cfg);
    let mut written = Vec::new();
    let uninstall = uninstall_path(cfg.role);
    for (path, text) in [
        (KILLALL_PATH, render_killall(cfg.role, &dir)),
        (uninstall, render_uninstall(cfg.role, &dir, keep)),
    ] {
        if super::write_if_changed(root, path, &text, 0o755)? {
            written.push(path.to_owned());
        }
    }
    for other in [Role::Server, Role::Agent].map(uninstall_path) {
        if other != uninstall
            && root
                .read_optional(other)?
                .is_some_and(|t| t.starts_with(MARK))
        {
            let real = root.path(other);
            std::fs::remove_file(&real).map_err(|e| FileError::new("removing", &real, e))?;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_install_sh() {
        assert_eq!(
            uninstall_path(Role::Server),
            "/usr/local/bin/k3s-uninstall.sh"
        );
        assert_eq!(
            uninstall_path(Role::Agent),
            "/usr/local/bin/k3s-agent-uninstall.sh"
        );
        let u = render_uninstall(Role::Agent, DEFAULT_DATA_DIR, &[]);
        assert!(u.contains("systemctl disable k3s-agent\n"), "{u}");
        assert!(u.contains("rm -f \"${ROOT}/etc/systemd/system/k3s-agent.service.env\""));
        assert!(u.contains("KEEP=''\n"));
        let k = render_killall(Role::Server, "/srv/it's k3s");
        assert!(
            k.contains("K3S_DATA_DIR=${K3S_DATA_DIR:-'/srv/it'\\''s k3s'}\n"),
            "{k}"
        );
        assert!(k.starts_with(MARK) && u.starts_with(MARK));
    }

    #[test]
    fn keep_lists_one_path_a_line() {
        let u = render_uninstall(
            Role::Server,
            DEFAULT_DATA_DIR,
            &[
                "/etc/rancher/k3s/registries.yaml".into(),
                "/bad'name".into(),
            ],
        );
        assert!(
            u.contains("KEEP='/etc/rancher/k3s/registries.yaml'\n"),
            "{u}"
        );
    }
}
