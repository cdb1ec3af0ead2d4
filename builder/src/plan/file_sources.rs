//! `files[].source` names a file on the build host, and whatever it names is
//! copied into every image made from the profile. A profile is shared and
//! reviewed as text, so what it reads from the host is checked when the
//! plan is made (by `validate` as by `build`), not discovered in the image:
//! - it must be a regular file: a directory, a FIFO or `/dev/zero` is never
//!   content, and the host's live state (`/proc`, `/sys`, `/dev`, `/run`)
//!   differs from build to build;
//! - it must not be one of the host's own secrets (its shadow file, SSH host
//!   or user keys, the K3s or Proxmox cluster keys of the node imgbuild runs
//!   on), whether named directly, with `..`, or through a symlink next to
//!   the profile: the check is on the resolved path;
//! - a file the host keeps from other users (not world-readable) is a
//!   warning: it may be a secret, and the image hands it to every node.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::locate::Seg;
use super::schema::Profile;
use super::validate::{parse_mode, Report};
use super::{PlanErrors, PlanWarning};

/// Directories of the host's live state.
const LIVE_STATE: &[&str] = &["/proc", "/sys", "/dev", "/run"];

/// The build host's secrets by resolved path: what it is, if `p` is one.
fn host_secret(p: &str) -> Option<&'static str> {
    let name = p.rsplit('/').next().unwrap_or(p);
    let under = |dir: &str| p.starts_with(dir);
    Some(match p {
        "/etc/shadow" | "/etc/shadow-" | "/etc/gshadow" | "/etc/gshadow-" => "password hashes",
        _ if under("/etc/ssh/") && name.starts_with("ssh_host_") && name.ends_with("_key") => {
            "SSH host key"
        }
        _ if p.contains("/.ssh/") && name.starts_with("id_") && !name.ends_with(".pub") => {
            "SSH private key"
        }
        _ if under("/etc/ssl/private/") => "TLS private key",
        _ if under("/etc/pve/priv/") || (under("/etc/pve/") && name.ends_with(".key")) => {
            "Proxmox cluster key"
        }
        _ if under("/var/lib/rancher/k3s/server/") || p == "/etc/rancher/k3s/k3s.yaml" => {
            "K3s cluster credentials"
        }
        _ => return None,
    })
}

/// Errors and warnings for every `files[].source` of `p`, resolved against
/// the directory of the profile at `path`.
pub(super) fn check(path: &Path, text: &str, p: &Profile) -> Result<Vec<PlanWarning>, PlanErrors> {
    let mut r = Report::new(path, text);
    let dir = crate::parent_dir(path);
    for (i, f) in p.files.iter().enumerate() {
        let Some(src) = &f.source else { continue };
        let at = [Seg::Key("files"), Seg::Index(i), Seg::Key("source")];
        let named = dir.join(src);
        let resolved = match named.canonicalize() {
            Ok(p) => p,
            Err(e) => {
                r.error(
                    &at,
                    format!(
                        "{} cannot be read: {e} — a source is a file on the build host, \
                         relative to the profile ({})",
                        named.display(),
                        dir.display()
                    ),
                );
                continue;
            }
        };
        let shown = resolved.display().to_string();
        let via = if resolved == named {
            String::new()
        } else {
            format!(" ({} resolves to it)", named.display())
        };
        if let Some(live) = LIVE_STATE.iter().find(|d| resolved.starts_with(d)) {
            r.error(
                &at,
                format!(
                    "{shown}{via} is under {live}, the build host's live state, not a file to \
                     bake — copy what you need into a file next to the profile"
                ),
            );
            continue;
        }
        if let Some(what) = host_secret(&shown) {
            r.error(
                &at,
                format!(
                    "{shown}{via} is the build host's {what}: every node made from this image \
                     would carry this machine's secret — leave it out; secrets reach nodes \
                     through metadata at boot"
                ),
            );
            continue;
        }
        let meta = match fs::metadata(&resolved) {
            Ok(m) => m,
            Err(e) => {
                r.error(&at, format!("{shown}{via} cannot be read: {e}"));
                continue;
            }
        };
        if !meta.is_file() {
            let kind = if meta.is_dir() {
                "a directory"
            } else {
                "not a regular file"
            };
            r.error(
                &at,
                format!("{shown}{via} is {kind}; a source is one regular file"),
            );
            continue;
        }
        let host_mode = meta.permissions().mode() & 0o7777;
        if host_mode & 0o004 == 0 {
            let spread = match parse_mode(&f.mode) {
                Some(m) if m & 0o004 != 0 => {
                    format!(", and mode {:04o} lets every user of every node read it", m)
                }
                _ => String::new(),
            };
            r.warn(
                &at,
                format!(
                    "the build host keeps {shown}{via} from other users (mode {host_mode:04o}, \
                     owner uid {}); it is copied into every image made from this profile{spread} \
                     — make sure it holds no secret",
                    meta.uid()
                ),
            );
        }
    }
    r.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_secrets_by_path() {
        for (p, what) in [
            ("/etc/shadow", "password hashes"),
            ("/etc/ssh/ssh_host_ed25519_key", "SSH host key"),
            ("/home/ann/.ssh/id_ed25519", "SSH private key"),
            ("/etc/pve/priv/authkey.key", "Proxmox cluster key"),
            ("/etc/pve/local/pve-ssl.key", "Proxmox cluster key"),
            (
                "/var/lib/rancher/k3s/server/token",
                "K3s cluster credentials",
            ),
        ] {
            assert_eq!(host_secret(p), Some(what), "{p}");
        }
        for p in [
            "/etc/ssh/ssh_host_ed25519_key.pub",
            "/home/ann/.ssh/id_ed25519.pub",
            "/srv/profiles/files/motd",
            "/etc/ssh/sshd_config",
            "/root/imgbuild/profiles/files/motd",
        ] {
            assert_eq!(host_secret(p), None, "{p}");
        }
    }
}
