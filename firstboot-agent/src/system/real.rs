//! The real system: subprocesses for systemctl/modprobe/swapoff, syscalls
//! (through `nix`) for mount, sethostname; std for DNS and TCP.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::{CommandOutput, FsType, OverlayDirs, System, SystemError};

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
    run_with_status(program, args).map(|(out, _)| out)
}

/// Run a command; its output and how it ended (`exit status 3`).
fn run_with_status(program: &str, args: &[&str]) -> Result<(CommandOutput, String), SystemError> {
    let command = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    tracing::debug!(%command, "running");
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|cause| SystemError::Spawn {
            command: command.clone(),
            cause,
        })?;
    let status = match out.status.code() {
        Some(c) => format!("exit status {c}"),
        None => "killed by a signal".into(),
    };
    Ok((
        CommandOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        status,
    ))
}

fn run_checked(program: &str, args: &[&str]) -> Result<CommandOutput, SystemError> {
    let (out, status) = run_with_status(program, args)?;
    if out.success {
        Ok(out)
    } else {
        Err(SystemError::Command {
            command: std::iter::once(program)
                .chain(args.iter().copied())
                .collect::<Vec<_>>()
                .join(" "),
            status,
            stderr: tail(&out.stderr),
        })
    }
}

impl System for RealSystem {
    fn systemctl(&self, args: &[&str]) -> Result<CommandOutput, SystemError> {
        run("systemctl", args)
    }

    fn k3s(&self, binary: &Path, args: &[&str]) -> Result<CommandOutput, SystemError> {
        run(&binary.to_string_lossy(), args)
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
            cause: e.into(),
        })
    }

    fn unmount(&self, target: &Path) -> Result<(), SystemError> {
        umount2(target, MntFlags::empty()).map_err(|e| SystemError::Io {
            action: format!("unmounting {}", target.display()),
            cause: e.into(),
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
            cause: e.into(),
        })
    }

    fn write_sysctl(&self, key: &str, value: &str) -> Result<(), SystemError> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        let action = format!("setting {key}={value} ({})", path.display());
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|cause| SystemError::Io {
                action: action.clone(),
                cause,
            })?;
        f.write_all(value.as_bytes())
            .map_err(|cause| SystemError::Io { action, cause })
    }

    fn set_hostname(&self, name: &str) -> Result<(), SystemError> {
        nix::unistd::sethostname(name).map_err(|e| SystemError::Io {
            action: format!("setting the hostname to {name}"),
            cause: e.into(),
        })
    }

    fn swapoff_all(&self) -> Result<(), SystemError> {
        run_checked("swapoff", &["-a"]).map(drop)
    }

    fn command(&self, program: &str, args: &[&str]) -> Result<CommandOutput, SystemError> {
        run(program, args)
    }

    fn mount_overlay(&self, dirs: &OverlayDirs) -> Result<(), SystemError> {
        let options = dirs.options();
        mount(
            Some("overlay"),
            &dirs.target,
            Some("overlay"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(|e| SystemError::Io {
            action: format!(
                "mount -t overlay overlay -o {options} {}",
                dirs.target.display()
            ),
            cause: e.into(),
        })
    }

    fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, SystemError> {
        (host, port)
            .to_socket_addrs()
            .map(|it| it.collect())
            .map_err(|cause| SystemError::Io {
                action: format!("resolving {host}"),
                cause,
            })
    }

    fn tcp_connect(&self, addr: SocketAddr, timeout: Duration) -> Result<(), SystemError> {
        TcpStream::connect_timeout(&addr, timeout)
            .map(drop)
            .map_err(|cause| SystemError::Io {
                action: format!("connecting to {addr}"),
                cause,
            })
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }

    fn pid_alive(&self, pid: u32) -> bool {
        pid_alive(pid)
    }
}

/// Signal 0 asks the kernel whether the process exists without touching
/// it; EPERM means it exists but belongs to someone else.
pub(super) fn pid_alive(pid: u32) -> bool {
    use nix::errno::Errno;
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false; // 0 and negative pids name process groups, not a process
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Ok(()) | Err(Errno::EPERM) => true,
        Err(Errno::ESRCH) => false,
        Err(_) => true, // unsure: keep the file
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
        assert!(
            msg.contains("sh -c") && msg.contains("(exit status 3): boom"),
            "{msg}"
        );
        let e = run_checked("/nonexistent/tool", &["x"]).unwrap_err();
        assert_eq!(
            format!("{:#}", anyhow::Error::from(e)),
            "could not run `/nonexistent/tool x`: No such file or directory"
        );
    }

    #[test]
    fn liveness_of_processes() {
        assert!(pid_alive(std::process::id()));
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!pid_alive(pid), "a reaped child is gone");
        assert!(!pid_alive(0));
        assert!(!pid_alive(u32::MAX));
    }
}
