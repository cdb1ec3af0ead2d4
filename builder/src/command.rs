//! The one place imgbuild runs external programs (mmdebstrap, gpgv, qemu-img,
//! debugfs, sfdisk, xorriso, …), for every step. Errors carry the command
//! line and the tail of stderr, so a failed tool says what ran and why it
//! stopped without re-running anything by hand. A Ctrl-C reaches each
//! child's whole process group ([`stop_running`] for the second one).

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Every host program imgbuild runs, with the Debian package that provides
/// it: one table for the "not installed" advice of every step.
pub const TOOLS: &[(&str, &str)] = &[
    // Bases.
    ("mmdebstrap", "mmdebstrap"),
    ("gpgv", "gpgv"),
    // Disks.
    ("qemu-img", "qemu-utils"),
    ("debugfs", "e2fsprogs"),
    ("e2fsck", "e2fsprogs"),
    ("mke2fs", "e2fsprogs"),
    ("sfdisk", "fdisk"),
    ("mkfs.fat", "dosfstools"),
    ("mmd", "mtools"),
    ("mcopy", "mtools"),
    ("grub-mkimage", "grub-common"),
    ("tar", "tar"),
    ("losetup", "mount"),
    ("mkfs.xfs", "xfsprogs"),
    ("xfs_repair", "xfsprogs"),
    ("lvm", "lvm2"),
    ("setfiles", "policycoreutils"),
    ("matchpathcon", "selinux-utils"),
    // Seeds.
    ("xorriso", "xorriso"),
    ("mkfs.vfat", "dosfstools"),
    ("mlabel", "mtools"),
];

/// The Debian package of a program in [`TOOLS`].
pub fn package_of(program: &str) -> &'static str {
    TOOLS
        .iter()
        .find(|(n, _)| *n == program)
        .map_or("?", |(_, p)| p)
}

/// `PATH` plus the sbin directories a non-root `PATH` often lacks
/// (e2fsprogs, sfdisk and mkfs.vfat live there).
pub fn tool_search_path() -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for extra in ["/usr/local/sbin", "/usr/sbin", "/sbin"] {
        if !dirs.iter().any(|d| d == std::path::Path::new(extra)) {
            dirs.push(extra.into());
        }
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// Lines of stderr kept for an error message.
const STDERR_TAIL_LINES: usize = 20;
/// How long a cancelled child gets to clean up after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);
/// The first wait for a child's exit; it doubles up to [`POLL`], so a quick
/// tool (most of debugfs, qemu-img info) costs milliseconds, not a full poll.
const FIRST_POLL: Duration = Duration::from_millis(1);

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    // Causes are `#[source]`s, printed by the error chain (`{:#}`), not
    // repeated in the message.
    #[error("cannot run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}); last lines of its stderr:\n{stderr_tail}")]
    Failed {
        command: String,
        status: ExitStatus,
        stderr_tail: String,
    },
    #[error("waiting for `{command}`")]
    Wait {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` was interrupted")]
    Interrupted { command: String },
}

/// An executable regular file named `name` in one of the `path_var` dirs.
pub fn find_in_path(name: &str, path_var: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path_var)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Run `cmd` to completion and return its output; a non-zero exit is an error.
///
/// stdin is always `/dev/null`: the tools run here must never wait for input
/// (mmdebstrap, for one, reads sources from a non-terminal stdin). When
/// `cancel` becomes true the child's process group gets SIGTERM, then SIGKILL
/// after a grace period, and the result is [`CommandError::Interrupted`].
///
/// The child runs in its own process group, so a terminal's Ctrl-C does not
/// reach it directly: the caller must install a handler that sets `cancel`
/// (as `imgbuild` does), or an interrupted build leaves the child running.
pub fn run_command(cmd: &mut Command, cancel: &AtomicBool) -> Result<Output, CommandError> {
    run_command_inner(cmd, Stdio::null(), cancel, |_| {})
}

/// [`run_command`] with `stdin` as the child's standard input (a script
/// file for `sfdisk`, say) instead of `/dev/null`.
pub fn run_command_stdin(
    cmd: &mut Command,
    stdin: Stdio,
    cancel: &AtomicBool,
) -> Result<Output, CommandError> {
    run_command_inner(cmd, stdin, cancel, |_| {})
}

/// [`run_command`], also handing each stderr line to `on_line` as it arrives
/// (for a progress spinner) and to the debug log.
pub(crate) fn run_command_observed(
    cmd: &mut Command,
    cancel: &AtomicBool,
    on_line: impl Fn(&str) + Send + 'static,
) -> Result<Output, CommandError> {
    run_command_inner(cmd, Stdio::null(), cancel, on_line)
}

fn run_command_inner(
    cmd: &mut Command,
    stdin: Stdio,
    cancel: &AtomicBool,
    on_line: impl Fn(&str) + Send + 'static,
) -> Result<Output, CommandError> {
    let command = display_command(cmd);
    tracing::debug!(%command, "running");
    cmd.stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a cancel reaches every process it
        // starts (see `terminate`). A terminal's Ctrl-C then reaches only
        // us: the caller's handler sets `cancel` and we pass it on.
        .process_group(0);
    let mut child = cmd.spawn().map_err(|source| CommandError::Spawn {
        command: command.clone(),
        source,
    })?;
    let _running = Running::register(child.id());

    // Drain both pipes on threads: a child blocked on a full pipe never exits.
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out_reader = thread::spawn(move || -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        if let Some(mut s) = stdout {
            s.read_to_end(&mut buf)?;
        }
        Ok(buf)
    });
    let err_reader = thread::spawn(move || -> io::Result<Vec<u8>> {
        let mut all = Vec::new();
        if let Some(s) = stderr {
            let mut r = BufReader::new(s);
            let mut line = Vec::new();
            while r.read_until(b'\n', &mut line)? > 0 {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end();
                tracing::debug!(target: "imgbuild::command", "{text}");
                on_line(text);
                all.extend_from_slice(&line);
                line.clear();
            }
        }
        Ok(all)
    });

    let mut poll = FIRST_POLL;
    let status = loop {
        // Cancel first: a cancelled build reports the interrupt even when
        // the child happened to finish in the meantime.
        if cancel.load(Ordering::SeqCst) {
            terminate(&mut child, &command);
            // The reader threads end when the pipes close; a grandchild that
            // still holds them must not keep us from reporting the interrupt.
            return Err(CommandError::Interrupted { command });
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(source) => return Err(CommandError::Wait { command, source }),
        }
        thread::sleep(poll);
        poll = (poll * 2).min(POLL);
    };

    let join =
        |h: thread::JoinHandle<io::Result<Vec<u8>>>, what: &str| -> Result<Vec<u8>, CommandError> {
            match h.join() {
                Ok(r) => r.map_err(|source| CommandError::Wait {
                    command: command.clone(),
                    source,
                }),
                Err(_) => Err(CommandError::Wait {
                    command: command.clone(),
                    source: io::Error::other(format!("the {what} reader thread panicked")),
                }),
            }
        };
    let stdout = join(out_reader, "stdout")?;
    let stderr = join(err_reader, "stderr")?;

    if !status.success() {
        return Err(CommandError::Failed {
            command,
            status,
            stderr_tail: tail_lines(&stderr, STDERR_TAIL_LINES),
        });
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// SIGTERM to the child's whole process group first, so tools like
/// mmdebstrap run their cleanup: its main process ignores signals and waits
/// for a worker, which removes the chroot temp directory and exits — the
/// worker only sees a signal sent to the group. SIGKILL to the group if that
/// does not end it in time. std only offers SIGKILL to one pid and this crate
/// allows no `unsafe`, so signals are sent with kill(1).
fn terminate(child: &mut Child, command: &str) {
    // The child leads its own group (see `process_group(0)` above).
    let group = format!("-{}", child.id());
    if signal_group("-TERM", &group, command) {
        let deadline = Instant::now() + TERM_GRACE;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) => {
                    // Stragglers the leader did not wait for, if any.
                    signal_group("-KILL", &group, command);
                    return;
                }
                Ok(None) => thread::sleep(POLL),
                Err(e) => {
                    tracing::warn!(%command, "waiting after SIGTERM: {e}");
                    break;
                }
            }
        }
        tracing::warn!(%command, "still running {TERM_GRACE:?} after SIGTERM; killing it");
    }
    if !signal_group("-KILL", &group, command) {
        if let Err(e) = child.kill() {
            // InvalidInput means it already exited, which is what we wanted.
            if e.kind() != io::ErrorKind::InvalidInput {
                tracing::warn!(%command, "SIGKILL failed: {e}");
            }
        }
    }
    if let Err(e) = child.wait() {
        tracing::warn!(%command, "reaping after SIGKILL: {e}");
    }
}

/// How long [`stop_running`] waits for the groups it sent SIGTERM before
/// SIGKILL: a second Ctrl-C means "now", not after a 30 s clean-up.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// The process groups of the programs running now. The second Ctrl-C exits
/// without unwinding, and each child leads its own group (so the terminal's
/// SIGINT never reached it): without this list they would run on orphaned,
/// an mmdebstrap still downloading and writing after imgbuild is gone.
static RUNNING: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Keeps a child's group in [`RUNNING`] while it runs.
struct Running(u32);

impl Running {
    fn register(pgid: u32) -> Running {
        running().push(pgid);
        Running(pgid)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        running().retain(|&g| g != self.0);
    }
}

fn running() -> MutexGuard<'static, Vec<u32>> {
    RUNNING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Stops every program still running, for an exit that cannot wait for
/// them (the second Ctrl-C): SIGTERM to each group so tools like mmdebstrap
/// start their own clean-up, SIGKILL after [`STOP_GRACE`] to whatever is
/// left. Returns how many groups were running.
pub fn stop_running() -> usize {
    let groups: Vec<String> = running().iter().map(|g| format!("-{g}")).collect();
    let what = "stopping on a second Ctrl-C";
    let mut alive: Vec<&String> = groups
        .iter()
        .filter(|g| signal_group("-TERM", g, what))
        .collect();
    let deadline = Instant::now() + STOP_GRACE;
    while !alive.is_empty() && Instant::now() < deadline {
        thread::sleep(POLL);
        alive.retain(|g| signal_group("-0", g, what));
    }
    for g in alive {
        signal_group("-KILL", g, what);
    }
    groups.len()
}

/// `kill <signal> -- <-pgid>`; true when some process received it. False
/// also when the group is already gone, which needs no report.
fn signal_group(signal: &str, group: &str, command: &str) -> bool {
    match Command::new("kill")
        .args([signal, "--", group])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) => s.success(),
        Err(e) => {
            tracing::warn!(%command, "cannot run kill(1): {e}");
            false
        }
    }
}

/// The last `n` lines of `bytes`, lossily decoded.
fn tail_lines(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut tail: VecDeque<&str> = VecDeque::with_capacity(n);
    for line in text.lines() {
        if tail.len() == n {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    if tail.is_empty() {
        return "  (stderr was empty)".into();
    }
    tail.iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The command as a user could paste it into a shell.
pub(crate) fn display_command(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| shell_quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_run_has_its_package() {
        let run = crate::output::disk::tools::DISK_TOOLS.iter().chain(&[
            "xorriso",
            "mkfs.vfat",
            "mlabel",
            "mcopy",
            "mmdebstrap",
            "gpgv",
        ]);
        for program in run {
            assert_ne!(package_of(program), "?", "{program} is not in TOOLS");
        }
        assert_eq!(package_of("sfdisk"), "fdisk");
    }

    #[test]
    fn find_in_path_wants_an_executable_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("plain"), "x").unwrap();
        std::fs::create_dir(dir.path().join("adir")).unwrap();
        std::fs::write(dir.path().join("tool"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            dir.path().join("tool"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let p = std::env::join_paths(["/nonexistent".as_ref(), dir.path()]).unwrap();
        assert_eq!(find_in_path("tool", &p), Some(dir.path().join("tool")));
        assert_eq!(find_in_path("plain", &p), None);
        assert_eq!(find_in_path("adir", &p), None);
    }
    use std::sync::Arc;

    #[test]
    fn success_returns_output() {
        let cancel = AtomicBool::new(false);
        let out = run_command(
            Command::new("sh").args(["-c", "echo out; echo err >&2"]),
            &cancel,
        )
        .unwrap();
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    }

    #[test]
    fn failure_names_the_command_and_the_stderr_tail() {
        let cancel = AtomicBool::new(false);
        let script = "for i in $(seq 1 30); do echo line$i >&2; done; exit 3";
        let err = run_command(Command::new("sh").args(["-c", script]), &cancel).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("sh -c 'for i in"), "{msg}");
        assert!(msg.contains("exit status: 3"), "{msg}");
        assert!(msg.contains("line30") && msg.contains("line11"), "{msg}");
        assert!(!msg.contains("line10\n"), "only the last 20 lines: {msg}");
    }

    #[test]
    fn stdin_is_null() {
        let cancel = AtomicBool::new(false);
        // `cat` would block forever on an inherited terminal or pipe.
        let out = run_command(&mut Command::new("cat"), &cancel).unwrap();
        assert!(out.stdout.is_empty());
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let cancel = AtomicBool::new(false);
        let err = run_command(&mut Command::new("/nonexistent/tool"), &cancel).unwrap_err();
        assert!(matches!(err, CommandError::Spawn { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/tool"), "{err}");
    }

    #[test]
    fn cancel_stops_the_child_quickly() {
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        let setter = thread::spawn(move || {
            thread::sleep(Duration::from_millis(300));
            flag.store(true, Ordering::SeqCst);
        });
        let started = Instant::now();
        let err = run_command(Command::new("sleep").arg("30"), &cancel).unwrap_err();
        setter.join().unwrap();
        assert!(matches!(err, CommandError::Interrupted { .. }), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    /// True once `pid` is gone or a zombie (its reaper may be slow).
    fn dead(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit(") ")
                .next()
                .is_some_and(|rest| rest.starts_with('Z')),
        }
    }

    #[test]
    fn cancel_reaches_grandchildren() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > '{}'; wait", pidfile.display());
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        let pid_path = pidfile.clone();
        let setter = thread::spawn(move || {
            // Cancel only once the grandchild exists.
            while !pid_path.exists() {
                thread::sleep(Duration::from_millis(20));
            }
            flag.store(true, Ordering::SeqCst);
        });
        let err = run_command(Command::new("sh").args(["-c", &script]), &cancel).unwrap_err();
        setter.join().unwrap();
        assert!(matches!(err, CommandError::Interrupted { .. }), "{err}");
        let pid = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .to_string();
        let deadline = Instant::now() + Duration::from_secs(3);
        while !dead(&pid) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        assert!(dead(&pid), "grandchild sleep {pid} survived the cancel");
    }

    #[test]
    fn quoting_round_trips_through_a_shell() {
        let mut cmd = Command::new("printf");
        cmd.args(["%s|", "a b", "it's", "", "--include=x,y"]);
        let line = display_command(&cmd);
        assert_eq!(line, r"printf '%s|' 'a b' 'it'\''s' '' --include=x,y");
        let cancel = AtomicBool::new(false);
        let out = run_command(Command::new("sh").args(["-c", &line]), &cancel).unwrap();
        assert_eq!(out.stdout, b"a b|it's||--include=x,y|");
    }
}
