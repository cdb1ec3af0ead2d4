//! The real system: subprocesses for systemctl/modprobe/swapoff, syscalls
//! (through `nix`) for mount, sethostname; std for DNS and TCP.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::{CommandOutput, FsType, System, SystemError};

/// The running machine.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealSystem;

/// The last few lines of a command's stderr, enough to say why it failed.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let start = lines.len().saturating_sub(5);
    lines[start..].join(" | ")
}

fn run(program: &str, args: &[&str]) -> Result<CommandOutput, SystemError> {
    let command = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    tracing::debug!(%command, "running");
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| SystemError::Spawn {
            command: command.clone(),
            source,
        })?;
    Ok(CommandOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn run_checked(program: &str, args: &[&str]) -> Result<CommandOutput, SystemError> {
    let out = run(program, args)?;
    if out.success {
        Ok(out)
    } else {
        Err(SystemError::Command {
            command: std::iter::once(program)
                .chain(args.iter().copied())
                .collect::<Vec<_>>()
                .join(" "),
            status: "non-zero exit".into(),
            stderr: tail(&out.stderr),
        })
    }
}

impl System for RealSystem {
    fn systemctl(&self, args: &[&str]) -> Result<CommandOutput, SystemError> {
        run("systemctl", args)
    }

    fn modprobe(&self, module: &str) -> Result<(), SystemError> {
        run_checked("modprobe", &[module]).map(drop)
    }

    fn mount_readonly(&self, device: &Path, target: &Path, fs: FsType) -> Result<(), SystemError> {
        mount(
            Some(device),
            target,
            Some(fs.as_str()),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|e| SystemError::Io {
            action: format!(
                "mounting {} ({}) at {}",
                device.display(),
                fs.as_str(),
                target.display()
            ),
            source: e.into(),
        })
    }

    fn unmount(&self, target: &Path) -> Result<(), SystemError> {
        umount2(target, MntFlags::empty()).map_err(|e| SystemError::Io {
            action: format!("unmounting {}", target.display()),
            source: e.into(),
        })
    }

    fn make_root_rshared(&self) -> Result<(), SystemError> {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| SystemError::Io {
            action: "making / rshared (mount --make-rshared /)".into(),
            source: e.into(),
        })
    }

    fn write_sysctl(&self, key: &str, value: &str) -> Result<(), SystemError> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        let action = format!("setting {key}={value} ({})", path.display());
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|source| SystemError::Io {
                action: action.clone(),
                source,
            })?;
        f.write_all(value.as_bytes())
            .map_err(|source| SystemError::Io { action, source })
    }

    fn set_hostname(&self, name: &str) -> Result<(), SystemError> {
        nix::unistd::sethostname(name).map_err(|e| SystemError::Io {
            action: format!("setting the hostname to {name}"),
            source: e.into(),
        })
    }

    fn swapoff_all(&self) -> Result<(), SystemError> {
        run_checked("swapoff", &["-a"]).map(drop)
    }

    fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, SystemError> {
        (host, port)
            .to_socket_addrs()
            .map(|it| it.collect())
            .map_err(|source| SystemError::Io {
                action: format!("resolving {host}"),
                source,
            })
    }

    fn tcp_connect(&self, addr: SocketAddr, timeout: Duration) -> Result<(), SystemError> {
        TcpStream::connect_timeout(&addr, timeout)
            .map(drop)
            .map_err(|source| SystemError::Io {
                action: format!("connecting to {addr}"),
                source,
            })
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines() {
        let text = (1..=8).map(|i| format!("l{i}\n")).collect::<String>();
        assert_eq!(tail(&text), "l4 | l5 | l6 | l7 | l8");
    }

    #[test]
    fn failing_command_names_itself() {
        let e = run_checked("sh", &["-c", "echo boom >&2; exit 3"]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("sh -c") && msg.contains("boom"), "{msg}");
    }
}
