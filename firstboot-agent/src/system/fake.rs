//! A recording [`System`] for tests: it performs nothing on the machine,
//! remembers every call, and answers from values the test sets up.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{CommandOutput, FsType, OverlayDirs, System, SystemError};

/// One recorded action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Systemctl(Vec<String>),
    Modprobe(String),
    Mount {
        device: PathBuf,
        target: PathBuf,
        fs: FsType,
    },
    Unmount(PathBuf),
    MakeRootRshared,
    WriteSysctl(String, String),
    SetHostname(String),
    SwapoffAll,
    /// A host program and its arguments, program first.
    Command(Vec<String>),
    MountOverlay(OverlayDirs),
    /// The installed K3s run with these arguments.
    K3s(Vec<String>),
    Resolve(String),
    TcpConnect(SocketAddr),
    Sleep(Duration),
}

/// Recording fake. Configure it through the public fields before use.
#[derive(Debug)]
pub struct FakeSystem {
    calls: RefCell<Vec<Call>>,
    base: Instant,
    elapsed: Cell<Duration>,
    /// Answers for `systemctl` keyed by the joined arguments
    /// (e.g. `"is-active k3s.service"`). Unlisted calls succeed with
    /// `active` on stdout.
    pub systemctl_answers: BTreeMap<String, CommandOutput>,
    /// Answers for `systemctl` given once each, in order, before
    /// [`FakeSystem::systemctl_answers`] (a unit enabled until disabled).
    pub systemctl_queue: RefCell<BTreeMap<String, VecDeque<CommandOutput>>>,
    /// Modules `modprobe` fails for.
    pub missing_modules: BTreeSet<String>,
    /// sysctl keys whose write fails as read-only.
    pub readonly_sysctls: BTreeSet<String>,
    /// Files a mount of the given device makes appear under the target.
    pub volume_files: BTreeMap<PathBuf, Vec<(String, String)>>,
    /// Host names that do not resolve. Everything else resolves to
    /// `resolve_to` (default 127.0.0.1).
    pub unresolvable: BTreeSet<String>,
    pub resolve_to: IpAddr,
    /// Addresses whose TCP connect is refused.
    pub refused: BTreeSet<SocketAddr>,
    /// Refuse every TCP connect.
    pub refuse_all_tcp: bool,
    /// Files written (relative to a real directory) when `systemctl start`
    /// runs, to imitate K3s writing its node token.
    pub files_on_start: Vec<(PathBuf, String)>,
    pub fail_hostname: bool,
    pub fail_swapoff: bool,
    pub fail_rshared: bool,
    /// Pids [`System::pid_alive`] calls dead; every other pid is alive.
    pub dead_pids: BTreeSet<u32>,
    /// Answers for [`System::command`] keyed by the program and its
    /// arguments joined with spaces (`"firewall-cmd --state"`). Unlisted
    /// commands succeed with empty output.
    pub command_answers: BTreeMap<String, CommandOutput>,
    /// Files written (real paths) when a command whose joined line starts
    /// with the key runs, to imitate e.g. `dnf install` placing a policy.
    pub files_on_command: Vec<(String, PathBuf, String)>,
    /// Why an overlay mount fails; `None` mounts it (nothing is mounted).
    pub overlay_error: Option<String>,
    /// Answers for the installed `k3s` keyed by the joined arguments
    /// (e.g. `"kubectl drain n1 …"`). Unlisted calls succeed with no output;
    /// `--version` is answered from [`FakeSystem::k3s_versions`] first.
    pub k3s_answers: BTreeMap<String, CommandOutput>,
    /// `k3s --version` answers by the binary's sha256, as the binary at the
    /// path would print them (`k3s version v1.34.3+k3s1 (abcdef12)`).
    pub k3s_versions: BTreeMap<String, String>,
}

impl Default for FakeSystem {
    fn default() -> Self {
        Self {
            calls: RefCell::default(),
            base: Instant::now(),
            elapsed: Cell::default(),
            systemctl_answers: BTreeMap::new(),
            systemctl_queue: RefCell::default(),
            missing_modules: BTreeSet::new(),
            readonly_sysctls: BTreeSet::new(),
            volume_files: BTreeMap::new(),
            unresolvable: BTreeSet::new(),
            resolve_to: IpAddr::V4(Ipv4Addr::LOCALHOST),
            refused: BTreeSet::new(),
            refuse_all_tcp: false,
            files_on_start: Vec::new(),
            fail_hostname: false,
            fail_swapoff: false,
            fail_rshared: false,
            dead_pids: BTreeSet::new(),
            command_answers: BTreeMap::new(),
            files_on_command: Vec::new(),
            overlay_error: None,
            k3s_answers: BTreeMap::new(),
            k3s_versions: BTreeMap::new(),
        }
    }
}

impl FakeSystem {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    /// The argument lists of the calls `pick` selects, each joined with
    /// spaces, in order.
    fn joined(&self, pick: impl Fn(&Call) -> Option<&Vec<String>>) -> Vec<String> {
        self.calls
            .borrow()
            .iter()
            .filter_map(|c| pick(c).map(|a| a.join(" ")))
            .collect()
    }

    /// The `systemctl` argument lists, in order.
    pub fn systemctl_calls(&self) -> Vec<String> {
        self.joined(|c| match c {
            Call::Systemctl(a) => Some(a),
            _ => None,
        })
    }

    /// The [`System::command`] lines (program and arguments), in order.
    pub fn command_calls(&self) -> Vec<String> {
        self.joined(|c| match c {
            Call::Command(a) => Some(a),
            _ => None,
        })
    }

    /// The argument lists the installed `k3s` was run with, in order.
    pub fn k3s_calls(&self) -> Vec<String> {
        self.joined(|c| match c {
            Call::K3s(a) => Some(a),
            _ => None,
        })
    }

    /// Answer `line` (program and arguments) with `stdout` and `success`.
    pub fn answer(&mut self, line: &str, success: bool, stdout: &str) {
        self.command_answers.insert(
            line.to_owned(),
            CommandOutput {
                success,
                stdout: stdout.to_owned(),
                stderr: if success {
                    String::new()
                } else {
                    format!("{line} failed")
                },
            },
        );
    }

    /// Virtual time spent in [`System::sleep`].
    pub fn slept(&self) -> Duration {
        self.elapsed.get()
    }

    fn record(&self, call: Call) {
        self.calls.borrow_mut().push(call);
    }

    fn failure(action: &str, message: &str) -> SystemError {
        SystemError::Other {
            action: action.to_owned(),
            message: message.to_owned(),
        }
    }
}

impl System for FakeSystem {
    fn systemctl(&self, args: &[&str]) -> Result<CommandOutput, SystemError> {
        self.record(Call::Systemctl(
            args.iter().map(|s| (*s).to_owned()).collect(),
        ));
        if args.first() == Some(&"start") {
            for (path, content) in &self.files_on_start {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|cause| SystemError::Io {
                        action: "fake start".into(),
                        cause,
                    })?;
                }
                std::fs::write(path, content).map_err(|cause| SystemError::Io {
                    action: "fake start".into(),
                    cause,
                })?;
            }
        }
        let key = args.join(" ");
        if let Some(o) = self
            .systemctl_queue
            .borrow_mut()
            .get_mut(&key)
            .and_then(VecDeque::pop_front)
        {
            return Ok(o);
        }
        Ok(self
            .systemctl_answers
            .get(&key)
            .cloned()
            .unwrap_or(CommandOutput {
                success: true,
                stdout: "active\n".into(),
                stderr: String::new(),
            }))
    }

    fn k3s(&self, binary: &Path, args: &[&str]) -> Result<CommandOutput, SystemError> {
        self.record(Call::K3s(args.iter().map(|s| (*s).to_owned()).collect()));
        if args == ["--version"] {
            let bytes = std::fs::read(binary).map_err(|cause| SystemError::Io {
                action: format!("running {}", binary.display()),
                cause,
            })?;
            let sha =
                node_spec::Sha256Hex::from_digest(&<sha2::Sha256 as sha2::Digest>::digest(&bytes));
            if let Some(v) = self.k3s_versions.get(sha.as_str()) {
                return Ok(CommandOutput {
                    success: true,
                    stdout: format!("k3s version {v} (fake)\ngo version go1.24.4\n"),
                    stderr: String::new(),
                });
            }
        }
        Ok(self
            .k3s_answers
            .get(&args.join(" "))
            .cloned()
            .unwrap_or(CommandOutput {
                success: true,
                ..CommandOutput::default()
            }))
    }

    fn modprobe(&self, module: &str) -> Result<(), SystemError> {
        self.record(Call::Modprobe(module.to_owned()));
        if self.missing_modules.contains(module) {
            return Err(Self::failure(
                &format!("modprobe {module}"),
                "Module not found",
            ));
        }
        Ok(())
    }

    fn mount_readonly(&self, device: &Path, target: &Path, fs: FsType) -> Result<(), SystemError> {
        self.record(Call::Mount {
            device: device.to_owned(),
            target: target.to_owned(),
            fs,
        });
        let files = self
            .volume_files
            .get(device)
            .ok_or_else(|| Self::failure("mount", "wrong fs type, bad superblock"))?;
        for (name, content) in files {
            std::fs::write(target.join(name), content).map_err(|cause| SystemError::Io {
                action: "fake mount".into(),
                cause,
            })?;
        }
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<(), SystemError> {
        self.record(Call::Unmount(target.to_owned()));
        // Imitate the mount disappearing.
        if let Ok(entries) = std::fs::read_dir(target) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    fn make_root_rshared(&self) -> Result<(), SystemError> {
        self.record(Call::MakeRootRshared);
        if self.fail_rshared {
            return Err(Self::failure("mount --make-rshared /", "Permission denied"));
        }
        Ok(())
    }

    fn write_sysctl(&self, key: &str, value: &str) -> Result<(), SystemError> {
        self.record(Call::WriteSysctl(key.to_owned(), value.to_owned()));
        if self.readonly_sysctls.contains(key) {
            return Err(Self::failure(
                &format!("setting {key}={value}"),
                "Read-only file system",
            ));
        }
        Ok(())
    }

    fn set_hostname(&self, name: &str) -> Result<(), SystemError> {
        self.record(Call::SetHostname(name.to_owned()));
        if self.fail_hostname {
            return Err(Self::failure("sethostname", "Operation not permitted"));
        }
        Ok(())
    }

    fn swapoff_all(&self) -> Result<(), SystemError> {
        self.record(Call::SwapoffAll);
        if self.fail_swapoff {
            return Err(Self::failure("swapoff -a", "Operation not permitted"));
        }
        Ok(())
    }

    fn command(&self, program: &str, args: &[&str]) -> Result<CommandOutput, SystemError> {
        let mut call = vec![program.to_owned()];
        call.extend(args.iter().map(|a| (*a).to_owned()));
        let line = call.join(" ");
        self.record(Call::Command(call));
        for (prefix, path, content) in &self.files_on_command {
            if line.starts_with(prefix.as_str()) {
                let io = |cause| SystemError::Io {
                    action: format!("fake {line}"),
                    cause,
                };
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(io)?;
                }
                std::fs::write(path, content).map_err(io)?;
            }
        }
        Ok(self
            .command_answers
            .get(&line)
            .cloned()
            .unwrap_or(CommandOutput {
                success: true,
                stdout: String::new(),
                stderr: String::new(),
            }))
    }

    fn mount_overlay(&self, dirs: &OverlayDirs) -> Result<(), SystemError> {
        self.record(Call::MountOverlay(dirs.clone()));
        match &self.overlay_error {
            Some(e) => Err(Self::failure(
                &format!("mount -t overlay overlay -o {}", dirs.options()),
                e,
            )),
            None => Ok(()),
        }
    }

    fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, SystemError> {
        self.record(Call::Resolve(host.to_owned()));
        if self.unresolvable.contains(host) {
            return Err(Self::failure(
                &format!("resolving {host}"),
                "Name or service not known",
            ));
        }
        Ok(vec![SocketAddr::new(self.resolve_to, port)])
    }

    fn tcp_connect(&self, addr: SocketAddr, _timeout: Duration) -> Result<(), SystemError> {
        self.record(Call::TcpConnect(addr));
        if self.refuse_all_tcp || self.refused.contains(&addr) {
            return Err(Self::failure(
                &format!("connecting to {addr}"),
                "Connection refused",
            ));
        }
        Ok(())
    }

    fn now(&self) -> Instant {
        self.base + self.elapsed.get()
    }

    fn sleep(&self, duration: Duration) {
        self.record(Call::Sleep(duration));
        self.elapsed.set(self.elapsed.get() + duration);
    }

    fn pid_alive(&self, pid: u32) -> bool {
        !self.dead_pids.contains(&pid)
    }
}
