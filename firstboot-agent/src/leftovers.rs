//! Temporary files left behind by a killed run.
//!
//! Every temporary file the agent creates carries the creating process's
//! pid: `.firstboot-agent-<pid>-<random>` (atomic writes and link swaps,
//! [`crate::rootfs`]) and `.k3s.download-<pid>-<random>` (the K3s binary
//! being streamed in, [`crate::k3s::binary`]). A run that is killed (power
//! loss, OOM, `systemctl kill`) cannot remove them, so each `run` starts by
//! sweeping the directories the agent writes to: a temp file is removed when
//! the process that made it is gone, or when it is older than a day (the pid
//! may have been reused since). A temp file of a live process is kept.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::rootfs::Root;
use crate::system::System;

/// Prefix of the agent's own temp files (atomic writes, link swaps).
pub const AGENT_TEMP: &str = ".firstboot-agent-";
/// Prefix of a K3s binary being downloaded or copied into place.
pub const DOWNLOAD_TEMP: &str = ".k3s.download-";
const PREFIXES: [&str; 2] = [AGENT_TEMP, DOWNLOAD_TEMP];

/// Older than this, a temp file is stale whoever made it.
pub const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// The directories the agent creates temp files in (the parents of every
/// file it writes), besides the accounts' `~/.ssh` ([`swept_dirs`]). Kept
/// in step with the writers by the pipeline test
/// `temp_files_only_appear_in_swept_directories`.
pub const SWEPT_DIRS: [&str; 13] = [
    "/etc",
    "/etc/rancher/k3s",
    "/etc/systemd/system",
    "/etc/systemd/system/multi-user.target.wants",
    "/etc/sysctl.d",
    "/etc/modules-load.d",
    "/etc/tmpfiles.d",
    "/etc/ssh/sshd_config.d",
    "/root/.ssh",
    "/usr/local/bin",
    "/var/lib/firstboot-agent",
    "/var/lib/rancher/k3s/agent/images",
    "/dev",
];

/// [`SWEPT_DIRS`] and the `~/.ssh` of every account in the node's
/// `/etc/passwd` (the ssh-keys step writes authorized_keys there), as node
/// paths with links resolved inside the root.
pub fn swept_dirs(root: &Root) -> Vec<String> {
    let mut dirs: Vec<String> = SWEPT_DIRS.iter().map(|d| (*d).to_owned()).collect();
    // Best effort, as the sweep is: an unreadable passwd is reported by the
    // ssh-keys step, which needs it.
    let passwd = root
        .read_optional("/etc/passwd")
        .ok()
        .flatten()
        .unwrap_or_default();
    for account in crate::ssh::parse_passwd(&passwd) {
        let home = account.home.trim_end_matches('/');
        if home.is_empty() {
            continue;
        }
        let dir = root.resolve(format!("{home}/.ssh")).display().to_string();
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}

/// The temp-file prefix for this process: `<kind><pid>-`.
pub fn temp_prefix(kind: &str) -> String {
    format!("{kind}{}-", std::process::id())
}

/// Who made a temp file, judged by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// `<prefix><pid>-<rest>`.
    Pid(u32),
    /// `<prefix><6 random characters>`: made by an agent from before pids
    /// were part of the name; judged by age alone.
    Unknown,
}

/// `Some` when `name` is one of the agent's temp files.
pub fn owner_of(name: &str) -> Option<Owner> {
    let rest = PREFIXES.iter().find_map(|p| name.strip_prefix(p))?;
    if let Some((pid, tail)) = rest.split_once('-') {
        if !tail.is_empty() && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) {
            return pid.parse().ok().map(Owner::Pid);
        }
    }
    (rest.len() == 6 && rest.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(Owner::Unknown)
}

/// Why a temp file is stale, or `None` to keep it.
pub fn stale_reason(
    owner: Owner,
    pid_alive: impl Fn(u32) -> bool,
    age: Duration,
) -> Option<String> {
    if age > MAX_AGE {
        let hours = age.as_secs() / 3600;
        return Some(match owner {
            Owner::Pid(pid) => format!("made by process {pid} {hours} h ago"),
            Owner::Unknown => format!("made {hours} h ago"),
        });
    }
    match owner {
        Owner::Pid(pid) if !pid_alive(pid) => {
            Some(format!("made by process {pid}, which is no longer running"))
        }
        _ => None,
    }
}

/// What a sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sweep {
    /// `<node path> (<why>)` of each removed file.
    pub removed: Vec<String>,
    /// Stale files that could not be removed, with the reason.
    pub failed: Vec<String>,
}

/// Remove stale temp files from [`swept_dirs`] under `root`, logging each.
pub fn sweep(root: &Root, system: &dyn System, now: SystemTime) -> Sweep {
    let mut out = Sweep::default();
    for dir in swept_dirs(root) {
        let Ok(entries) = std::fs::read_dir(root.path(&dir)) else {
            continue; // missing or unreadable: nothing of ours to remove there
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(owner) = owner_of(&name) else {
                continue;
            };
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue; // gone already
            };
            if meta.is_dir() {
                continue;
            }
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            let Some(why) = stale_reason(owner, |pid| system.pid_alive(pid), age) else {
                continue;
            };
            let shown = Path::new(&dir).join(&name).display().to_string();
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!("removed stale temporary file {shown} ({why})");
                    out.removed.push(format!("{shown} ({why})"));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    let msg = format!(
                        "could not remove the stale temporary file {shown} ({why}): {} — remove it by hand",
                        crate::message::io_text(&e)
                    );
                    tracing::warn!("{msg}");
                    out.failed.push(msg);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_tell_the_owner() {
        assert_eq!(
            owner_of(".k3s.download-4711-a8Zk2q"),
            Some(Owner::Pid(4711))
        );
        assert_eq!(
            owner_of(".firstboot-agent-12-link-kubectl"),
            Some(Owner::Pid(12))
        );
        assert_eq!(owner_of(".firstboot-agent-Ab12cd"), Some(Owner::Unknown));
        assert_eq!(owner_of(".k3s.download-xY7abc"), Some(Owner::Unknown));
        for not_ours in [
            "k3s",
            ".firstboot-agent-",
            ".firstboot-agent-12-",
            ".firstboot-agent-x1-abc",
            ".firstboot-agent-toolongname",
            ".k3s.download",
            "firstboot-agent-12-abc",
        ] {
            assert_eq!(owner_of(not_ours), None, "{not_ours}");
        }
        let mine = format!("{}abc123", temp_prefix(DOWNLOAD_TEMP));
        assert_eq!(owner_of(&mine), Some(Owner::Pid(std::process::id())));
    }

    #[test]
    fn stale_means_dead_owner_or_older_than_a_day() {
        let alive = |pid: u32| pid == 1;
        let minute = Duration::from_secs(60);
        assert_eq!(stale_reason(Owner::Pid(1), alive, minute), None);
        assert!(stale_reason(Owner::Pid(2), alive, minute)
            .unwrap()
            .contains("process 2, which is no longer running"));
        assert!(stale_reason(Owner::Pid(1), alive, MAX_AGE * 2)
            .unwrap()
            .contains("48 h ago"));
        assert_eq!(stale_reason(Owner::Unknown, alive, minute), None);
        assert!(stale_reason(Owner::Unknown, alive, MAX_AGE + minute).is_some());
    }
}
