//! Everything the agent does to the live system goes through [`System`]:
//! systemctl, modprobe, mount, sysctl writes, sethostname, swapoff, DNS and TCP
//! probes, and the clock. [`RealSystem`] performs them; [`FakeSystem`] records
//! them for tests and answers from canned values.
//!
//! Files are not part of the trait: every file the agent reads or writes lives
//! under `--root`, so tests point the agent at a temporary directory instead.

mod fake;
mod real;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use fake::{Call, FakeSystem};
pub use real::RealSystem;

/// Why an action on the live system failed. The message names the action.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{action}: {source}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{action}: {message}")]
    Other { action: String, message: String },
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
    /// Resolve a host name with the system resolver.
    fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, SystemError>;
    /// Open (and close) a TCP connection.
    fn tcp_connect(&self, addr: SocketAddr, timeout: Duration) -> Result<(), SystemError>;
    /// Monotonic clock; the fake advances it on [`System::sleep`].
    fn now(&self) -> Instant;
    fn sleep(&self, duration: Duration);
    /// A private directory for short-lived mounts.
    fn scratch_dir(&self, root: &Path) -> PathBuf {
        root.join("run/firstboot-agent")
    }
}
