//! The system for a `--root` that is not `/`: the directory holds a node's
//! files, but the machine the agent runs on is somebody else's (a build
//! host, a CI runner, an admin's laptop with an image mounted). Its host
//! name, systemd, kernel modules, sysctls, mounts and swap must not change.
//!
//! Every action is recorded as `would run: <command>` and succeeds without
//! doing anything — except mounting a cidata volume, which fails, because
//! what follows needs the files the mount would show. Probes that change
//! nothing are real: DNS lookups and TCP connects (through this machine's
//! resolver and network), process liveness and the clock. Files under the
//! root are written as usual; that is the caller's business, not a host
//! effect.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{CommandOutput, FsType, OverlayDirs, RealSystem, System, SystemError};

/// Records actions instead of performing them (see the module docs).
#[derive(Debug)]
pub struct DryRunSystem {
    root: PathBuf,
    actions: RefCell<Vec<String>>,
    probes: RealSystem,
}

impl DryRunSystem {
    /// `root` is the directory `--root` named (for messages).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            actions: RefCell::default(),
            probes: RealSystem,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn record(&self, command: String) {
        tracing::info!(
            "would run: {command} (not done: --root {} is not /)",
            self.root.display()
        );
        self.actions
            .borrow_mut()
            .push(format!("would run: {command}"));
    }
}

impl System for DryRunSystem {
    fn systemctl(&self, args: &[&str]) -> Result<CommandOutput, SystemError> {
        self.record(format!("systemctl {}", args.join(" ")));
        Ok(CommandOutput {
            success: true,
            stdout: String::new(),
            stderr: String::new(),
        })
    }

    fn k3s(&self, binary: &Path, args: &[&str]) -> Result<CommandOutput, SystemError> {
        // The binary under --root is the node's, not this machine's: it is
        // not run, not even for `--version`.
        let shown = binary
            .strip_prefix(&self.root)
            .map(|p| format!("/{}", p.display()))
            .unwrap_or_else(|_| binary.display().to_string());
        self.record(format!("{shown} {}", args.join(" ")));
        Ok(CommandOutput {
            success: true,
            ..CommandOutput::default()
        })
    }

    fn modprobe(&self, module: &str) -> Result<(), SystemError> {
        self.record(format!("modprobe {module}"));
        Ok(())
    }

    fn mount_readonly(&self, device: &Path, target: &Path, fs: FsType) -> Result<(), SystemError> {
        self.record(format!(
            "mount -o ro,nosuid,nodev,noexec -t {} {} {}",
            fs.as_str(),
            device.display(),
            target.display()
        ));
        Err(SystemError::Other {
            action: format!("mounting {}", device.display()),
            message: format!(
                "not done, because --root {} is not / and a mount would change this machine — \
                 to try a seed against a directory, copy meta-data and user-data into \
                 {}/var/lib/cloud/seed/nocloud/",
                self.root.display(),
                self.root.display()
            ),
        })
    }

    fn unmount(&self, target: &Path) -> Result<(), SystemError> {
        self.record(format!("umount {}", target.display()));
        Ok(())
    }

    fn make_root_rshared(&self) -> Result<(), SystemError> {
        self.record("mount --make-rshared /".into());
        Ok(())
    }

    fn write_sysctl(&self, key: &str, value: &str) -> Result<(), SystemError> {
        self.record(format!("sysctl -w {key}={value}"));
        Ok(())
    }

    fn set_hostname(&self, name: &str) -> Result<(), SystemError> {
        self.record(format!("hostname {name}"));
        Ok(())
    }

    fn swapoff_all(&self) -> Result<(), SystemError> {
        self.record("swapoff -a".into());
        Ok(())
    }

    fn command(&self, program: &str, args: &[&str]) -> Result<CommandOutput, SystemError> {
        self.record(
            std::iter::once(program)
                .chain(args.iter().copied())
                .collect::<Vec<_>>()
                .join(" "),
        );
        Ok(CommandOutput {
            success: true,
            stdout: String::new(),
            stderr: String::new(),
        })
    }

    fn mount_overlay(&self, dirs: &OverlayDirs) -> Result<(), SystemError> {
        self.record(format!(
            "mount -t overlay overlay -o {} {}",
            dirs.options(),
            dirs.target.display()
        ));
        Ok(())
    }

    fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, SystemError> {
        self.probes.resolve(host, port)
    }

    fn tcp_connect(&self, addr: SocketAddr, timeout: Duration) -> Result<(), SystemError> {
        self.probes.tcp_connect(addr, timeout)
    }

    fn now(&self) -> Instant {
        self.probes.now()
    }

    fn sleep(&self, duration: Duration) {
        self.probes.sleep(duration);
    }

    fn pid_alive(&self, pid: u32) -> bool {
        self.probes.pid_alive(pid)
    }

    /// Lookups go through this machine's resolver, which reads this
    /// machine's /etc/resolv.conf, not the one under the root.
    fn resolv_conf(&self, _root: &Path) -> (PathBuf, String) {
        (
            PathBuf::from("/etc/resolv.conf"),
            "this machine's /etc/resolv.conf (not the one under --root)".into(),
        )
    }

    fn acts_on_host(&self) -> bool {
        false
    }

    fn would_run(&self) -> Vec<String> {
        self.actions.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_recorded_not_performed() {
        let sys = DryRunSystem::new("/srv/node");
        let before = nix::unistd::gethostname().unwrap();
        sys.set_hostname("dry-run-must-not-apply").unwrap();
        assert_eq!(nix::unistd::gethostname().unwrap(), before);
        sys.systemctl(&["enable", "--now", "k3s.service"]).unwrap();
        sys.modprobe("br_netfilter").unwrap();
        sys.write_sysctl("net.ipv4.ip_forward", "1").unwrap();
        sys.make_root_rshared().unwrap();
        sys.swapoff_all().unwrap();
        assert_eq!(
            sys.would_run(),
            vec![
                "would run: hostname dry-run-must-not-apply",
                "would run: systemctl enable --now k3s.service",
                "would run: modprobe br_netfilter",
                "would run: sysctl -w net.ipv4.ip_forward=1",
                "would run: mount --make-rshared /",
                "would run: swapoff -a",
            ]
        );
        let e = sys
            .mount_readonly(
                Path::new("/srv/node/dev/sr0"),
                Path::new("/srv/node/run/firstboot-agent/cidata"),
                FsType::Iso9660,
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not done") && e.contains("/srv/node/var/lib/cloud/seed/nocloud/"),
            "{e}"
        );
        assert!(!sys.acts_on_host());
    }
}
