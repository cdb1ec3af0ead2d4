//! Everything the agent does to the live system goes through [`System`]:
//! systemctl, modprobe, mount, sysctl writes, sethostname, swapoff, the
//! distribution's tools (firewall-cmd, ufw, dnf), DNS and TCP probes,
//! process liveness and the clock. [`RealSystem`] performs them;
//! [`DryRunSystem`] records the actions as "would run: …" and performs only
//! the probes; [`FakeSystem`] records everything for tests and answers from
//! canned values.
//!
//! Which one a command uses is decided by [`select`] from `--root`, never by
//! `cfg!(test)`: only a root that resolves to `/` is the machine the agent
//! runs on. Any other directory is a node's files seen from outside (an
//! image, a test root), and changing this machine for it would be wrong.
//!
//! Files are not part of the trait: every file the agent reads or writes lives
//! under `--root`, so tests point the agent at a temporary directory instead.

mod dry_run;
mod fake;
mod real;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use dry_run::DryRunSystem;
pub use fake::{Call, FakeSystem};
pub use real::RealSystem;

use crate::message::{io_cause, io_text};

/// Why an action on the live system failed. The message names the action
/// and carries the cause (see [`crate::message`]).
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("could not run `{command}`: {}", io_cause(cause))]
    Spawn {
        command: String,
        cause: std::io::Error,
    },
    #[error("{action}: {}", io_text(cause))]
    Io {
        action: String,
        cause: std::io::Error,
    },
    #[error("{action}: {message}")]
    Other { action: String, message: String },
}

impl SystemError {
    /// The message without the action, for callers that name it already.
    pub fn reason(&self) -> String {
        match self {
            SystemError::Command { status, stderr, .. } if stderr.is_empty() => status.clone(),
            SystemError::Command { status, stderr, .. } => format!("{status}: {stderr}"),
            SystemError::Spawn { cause, .. } => io_cause(cause),
            SystemError::Io { cause, .. } => io_text(cause),
            SystemError::Other { message, .. } => message.clone(),
        }
    }
}

/// What a command printed and whether it succeeded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// A filesystem type the agent mounts (metadata volumes only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    Iso9660,
    Vfat,
}

impl FsType {
    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Iso9660 => "iso9660",
            FsType::Vfat => "vfat",
        }
    }
}

/// The directories of an overlay mount (real paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayDirs {
    pub lower: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub target: PathBuf,
}

impl OverlayDirs {
    /// The mount options, as `mount -t overlay -o` takes them.
    pub fn options(&self) -> String {
        format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lower.display(),
            self.upper.display(),
            self.work.display()
        )
    }
}

/// Actions on the live system. Paths given here are real paths on the
/// running system (already joined with `--root` by the caller).
pub trait System {
    /// Run `systemctl ARGS`. A non-zero exit is returned in the output, not as
    /// an error, because `is-active` and friends answer through the exit code.
    fn systemctl(&self, args: &[&str]) -> Result<CommandOutput, SystemError>;
    /// Load a kernel module.
    fn modprobe(&self, module: &str) -> Result<(), SystemError>;
    /// Mount `device` read-only at `target`.
    fn mount_readonly(&self, device: &Path, target: &Path, fs: FsType) -> Result<(), SystemError>;
    /// Unmount `target`.
    fn unmount(&self, target: &Path) -> Result<(), SystemError>;
    /// `mount --make-rshared /`.
    fn make_root_rshared(&self) -> Result<(), SystemError>;
    /// Write a sysctl value under /proc/sys (key in dotted form).
    fn write_sysctl(&self, key: &str, value: &str) -> Result<(), SystemError>;
    /// sethostname(2).
    fn set_hostname(&self, name: &str) -> Result<(), SystemError>;
    /// `swapoff -a`.
    fn swapoff_all(&self) -> Result<(), SystemError>;
    /// Run a host program that acts on or asks the distribution's tools
    /// (`firewall-cmd`, `ufw`, `dnf`, `rpm`). Like [`System::systemctl`], a
    /// non-zero exit is returned in the output, not as an error.
    fn command(&self, program: &str, args: &[&str]) -> Result<CommandOutput, SystemError>;
    /// Mount an overlay of `lower` (with `upper` and `work`) at `target`:
    /// the probe containerd's overlayfs snapshotter makes before it is used.
    fn mount_overlay(&self, dirs: &OverlayDirs) -> Result<(), SystemError>;
    /// Run the installed K3s binary (`binary` is its real path) with `args`:
    /// `--version`, or `kubectl drain|uncordon NODE` on a server. A non-zero
    /// exit is returned in the output, as for [`System::systemctl`].
    fn k3s(&self, binary: &Path, args: &[&str]) -> Result<CommandOutput, SystemError>;
    /// Resolve a host name with the system resolver.
    fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, SystemError>;
    /// Open (and close) a TCP connection.
    fn tcp_connect(&self, addr: SocketAddr, timeout: Duration) -> Result<(), SystemError>;
    /// Monotonic clock; the fake advances it on [`System::sleep`].
    fn now(&self) -> Instant;
    fn sleep(&self, duration: Duration);
    /// Whether a process with this pid exists on this machine (a probe:
    /// signal 0 changes nothing, so every implementation may ask for real).
    fn pid_alive(&self, pid: u32) -> bool {
        real::pid_alive(pid)
    }
    /// A private directory for short-lived mounts.
    fn scratch_dir(&self, root: &Path) -> PathBuf {
        root.join("run/firstboot-agent")
    }
    /// The resolv.conf [`System::resolve`] asks: its real path and how
    /// messages name it.
    fn resolv_conf(&self, root: &Path) -> (PathBuf, String) {
        (root.join("etc/resolv.conf"), "/etc/resolv.conf".into())
    }
    /// Whether actions change this machine. `false` for [`DryRunSystem`],
    /// which records them instead (see [`System::would_run`]).
    fn acts_on_host(&self) -> bool {
        true
    }
    /// The actions recorded instead of performed, each as
    /// `would run: <command>`, in order.
    fn would_run(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The [`System`] a command uses, chosen from `--root` by [`select`].
#[derive(Debug)]
pub enum Selected {
    /// `--root` is `/`: act on this machine.
    Live(RealSystem),
    /// `--root` is any other directory: record, do not act.
    DryRun(DryRunSystem),
}

impl Selected {
    pub fn system(&self) -> &dyn System {
        match self {
            Selected::Live(s) => s,
            Selected::DryRun(s) => s,
        }
    }

    pub fn is_live(&self) -> bool {
        matches!(self, Selected::Live(_))
    }
}

/// Choose the system for `root`: the real one only when `root`, with
/// symlinks and `..` resolved, is `/`; a [`DryRunSystem`] otherwise.
pub fn select(root: &Path) -> Result<Selected, SystemError> {
    let canonical = std::fs::canonicalize(root).map_err(|cause| SystemError::Other {
        action: format!("--root {}", root.display()),
        message: format!(
            "{} — give the directory that holds the node's files (`/` on the node itself)",
            io_text(&cause)
        ),
    })?;
    if !canonical.is_dir() {
        return Err(SystemError::Other {
            action: format!("--root {}", root.display()),
            message: "is not a directory — give the directory that holds the node's files (`/` on the node itself)".into(),
        });
    }
    Ok(if canonical == Path::new("/") {
        Selected::Live(RealSystem)
    } else {
        Selected::DryRun(DryRunSystem::new(canonical))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_slash_selects_the_real_system() {
        assert!(select(Path::new("/")).unwrap().is_live());
        assert!(select(Path::new("/tmp/..")).unwrap().is_live());
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("to-slash");
        std::os::unix::fs::symlink("/", &link).unwrap();
        assert!(select(&link).unwrap().is_live(), "a symlink to / is /");
        let sel = select(dir.path()).unwrap();
        assert!(matches!(sel, Selected::DryRun(_)), "{sel:?}");
        assert!(!sel.system().acts_on_host());
        let e = select(&dir.path().join("missing")).unwrap_err().to_string();
        assert!(
            e.contains("missing: No such file or directory — give the directory"),
            "{e}"
        );
    }
}
