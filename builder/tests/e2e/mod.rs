//! Helpers for the real end-to-end LXC test (`e2e_lxc.rs`): a private
//! bridge, a release mirror on the bridge address, privileged containers
//! created from imgbuild templates the way `pct create` does, and a guard
//! that tears all of it down again — also when a test panics.
//!
//! Network rule: everything stays on this machine. The bridge has its own
//! /24 inside 10.0.0.0/8 with the host on .1; no NAT is set up, IPv4
//! forwarding is switched off for packets arriving on the bridge and IPv6 is
//! off on it, so the containers can reach the host and each other only.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::common::{self, run, text};

/// The K3s version the shipped profiles pin.
pub const K3S_VERSION: &str = "v1.34.3+k3s1";

/// PATH inside the containers (lxc-attach runs with a cleared environment).
const GUEST_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Run a command that must succeed; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&common::run_checked(cmd).stdout).into_owned()
}

fn write_sysctl(path: &str, value: &str) {
    fs::write(path, value).unwrap_or_else(|e| panic!("writing {value} to {path}: {e}"));
}

/// Wait until `f` returns `Some`, polling every `every`, for at most `limit`.
pub fn poll<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(every);
    }
}

/// One privileged container of the lab.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub ip: String,
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub log: PathBuf,
    pub lxcpath: PathBuf,
}

impl Node {
    /// A path inside the container's root file system, seen from the host.
    pub fn path(&self, guest: &str) -> PathBuf {
        self.rootfs.join(guest.trim_start_matches('/'))
    }

    pub fn read(&self, guest: &str) -> Option<String> {
        fs::read_to_string(self.path(guest)).ok()
    }

    pub fn read_json(&self, guest: &str) -> Option<Value> {
        serde_json::from_str(&self.read(guest)?).ok()
    }

    /// Write a file into the container's rootfs, owned by root, like
    /// `pct push … --perms MODE` does.
    pub fn push(&self, guest: &str, content: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let p = self.path(guest);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// `lxc-start -d` with a DEBUG log; returns when the monitor has started.
    pub fn start(&self) -> Instant {
        let started = Instant::now();
        run_ok(
            Command::new("lxc-start")
                .args(["-n", &self.name, "-P"])
                .arg(&self.lxcpath)
                .args(["-d", "-l", "DEBUG", "-o"])
                .arg(&self.log),
        );
        started
    }

    /// Clean shutdown (SIGPWR to systemd), bounded; then wait for STOPPED.
    pub fn stop(&self) {
        run_ok(
            Command::new("lxc-stop")
                .args(["-n", &self.name, "-P"])
                .arg(&self.lxcpath)
                .args(["-t", "60"]),
        );
    }

    pub fn kill(&self) {
        let _ = Command::new("lxc-stop")
            .args(["-n", &self.name, "-P"])
            .arg(&self.lxcpath)
            .arg("-k")
            .output();
    }

    pub fn state(&self) -> String {
        let o = run(Command::new("lxc-info")
            .args(["-n", &self.name, "-P"])
            .arg(&self.lxcpath)
            .args(["-s", "-H"]));
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    }

    /// Run a command inside the container.
    pub fn attach(&self, args: &[&str]) -> Output {
        run(Command::new("lxc-attach")
            .args(["-n", &self.name, "-P"])
            .arg(&self.lxcpath)
            .args(["--clear-env", "-v", GUEST_PATH, "--"])
            .args(args))
    }

    /// Run a command inside the container; it must succeed. Returns stdout.
    pub fn attach_ok(&self, args: &[&str]) -> String {
        let o = self.attach(args);
        assert!(
            o.status.success(),
            "[{}] `{}` failed: {}",
            self.name,
            args.join(" "),
            text(&o)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// stdout of a command inside, trimmed, whatever its exit status.
    pub fn attach_out(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.attach(args).stdout)
            .trim()
            .to_owned()
    }

    /// Wait until systemd inside has finished booting (running or degraded).
    pub fn wait_booted(&self, limit: Duration) -> String {
        poll(
            &format!("systemd in {} to finish booting", self.name),
            limit,
            Duration::from_millis(500),
            || {
                let s = self.attach_out(&["systemctl", "is-system-running"]);
                matches!(s.as_str(), "running" | "degraded" | "maintenance").then_some(s)
            },
        )
    }

    /// The agent's result.json once it was written after `since` and `done`
    /// says it is final (finished, or a run ended with errors).
    pub fn wait_result(
        &self,
        since: SystemTime,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let p = self.path("/var/lib/firstboot-agent/result.json");
        poll(
            &format!("firstboot-agent's result.json in {}", self.name),
            limit,
            Duration::from_millis(250),
            || {
                let m = fs::metadata(&p).ok()?.modified().ok()?;
                if m < since {
                    return None;
                }
                let v: Value = serde_json::from_str(&fs::read_to_string(&p).ok()?).ok()?;
                done(&v).then_some(v)
            },
        )
    }

    /// Everything useful to diagnose a failure, printed to stderr.
    pub fn dump(&self) {
        eprintln!(
            "\n===== diagnostics for container {} ({}) =====",
            self.name,
            self.state()
        );
        if let Ok(log) = fs::read_to_string(&self.log) {
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(80);
            eprintln!(
                "--- {} (last {} of {} lines) ---",
                self.log.display(),
                lines.len() - from,
                lines.len()
            );
            for l in &lines[from..] {
                eprintln!("{l}");
            }
        }
        if self.state() == "RUNNING" {
            for args in [
                &["firstboot-agent", "status"][..],
                &["systemctl", "--failed", "--no-pager"][..],
                // Unit-filtered: with the host's /dev/kmsg bound in, the
                // container's journal also holds the host's kernel log.
                &[
                    "journalctl",
                    "-b",
                    "--no-pager",
                    "-n",
                    "300",
                    "-u",
                    "firstboot-agent.service",
                    "-u",
                    "firstboot-agent-ready.service",
                    "-u",
                    "k3s.service",
                    "-u",
                    "k3s-agent.service",
                    "-u",
                    "systemd-tmpfiles-setup.service",
                ][..],
                &[
                    "journalctl",
                    "-b",
                    "--no-pager",
                    "-n",
                    "60",
                    "-p",
                    "warning",
                    "_TRANSPORT=journal",
                    "+",
                    "_TRANSPORT=stdout",
                ][..],
            ] {
                let o = self.attach(args);
                eprintln!("--- [{}] {} ---\n{}", self.name, args.join(" "), text(&o));
            }
        } else if let Some(r) = self.read("/var/lib/firstboot-agent/result.json") {
            eprintln!("--- result.json ---\n{r}");
        }
    }
}

/// Prefix of the lab's temp directory: `imgbuild-e2e-lxc-<pid>-XXXXXX`.
const TMP_PREFIX: &str = "imgbuild-e2e-lxc-";

/// What must be removed from the host, kept where a signal handler finds
/// it: an interrupted run (Ctrl-C, a CI timeout's SIGTERM) tears down too.
#[derive(Debug, Clone, Default)]
struct Teardown {
    bridge: Option<String>,
    lxcpath: PathBuf,
    nodes: Vec<String>,
    mirror_pid: Option<u32>,
    dir: PathBuf,
}

static PENDING: Mutex<Option<Teardown>> = Mutex::new(None);
static HANDLER: Once = Once::new();

impl Teardown {
    fn run(&self) {
        for n in &self.nodes {
            let _ = Command::new("lxc-stop")
                .args(["-n", n, "-P"])
                .arg(&self.lxcpath)
                .arg("-k")
                .output();
        }
        if let Some(pid) = self.mirror_pid {
            let _ = Command::new("kill").arg(pid.to_string()).output();
        }
        if let Some(b) = &self.bridge {
            let ok = Command::new("ip")
                .args(["link", "del", b])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if !ok {
                eprintln!("lab: could not delete bridge {b}; remove it with `ip link del {b}`");
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn install_signal_handler() {
    HANDLER.call_once(|| {
        let r = ctrlc::set_handler(|| {
            let pending = PENDING.lock().map(|mut p| p.take()).unwrap_or(None);
            if let Some(t) = pending {
                eprintln!("lab: interrupted; removing the containers, the mirror and the bridge");
                t.run();
            }
            std::process::exit(130);
        });
        if let Err(e) = r {
            eprintln!(
                "lab: no signal handler ({e}); an interrupted run may leave the bridge behind"
            );
        }
    });
}

/// Remove what a killed earlier run (SIGKILL: no teardown) left behind: its
/// temp directory names its pid, its bridge is `ibtest<pid>`.
fn cleanup_stale_runs() {
    let tmp = std::env::temp_dir();
    let Ok(rd) = fs::read_dir(&tmp) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(TMP_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue; // still running (another test process)
        }
        let dir = e.path();
        let lxcpath = dir.join("lxc");
        let nodes = fs::read_dir(&lxcpath)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        // The mirror of that run: a process serving from its directory.
        let mirror_dir = dir.join("mirror");
        let mirror_pid = fs::read_dir("/proc").ok().and_then(|rd| {
            rd.flatten().find_map(|p| {
                let pid: u32 = p.file_name().to_str()?.parse().ok()?;
                let cmdline = fs::read(p.path().join("cmdline")).ok()?;
                let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
                (args.iter().any(|a| *a == b"serve-mirror")
                    && args
                        .iter()
                        .any(|a| *a == mirror_dir.as_os_str().as_encoded_bytes()))
                .then_some(pid)
            })
        });
        let bridge = format!("ibtest{}", pid % 10_000_000);
        let has_bridge = Path::new("/sys/class/net").join(&bridge).exists();
        eprintln!(
            "lab: removing what the killed run {pid} left: {}{}",
            dir.display(),
            if has_bridge {
                format!(", bridge {bridge}")
            } else {
                String::new()
            }
        );
        Teardown {
            bridge: has_bridge.then_some(bridge),
            lxcpath,
            nodes,
            mirror_pid,
            dir,
        }
        .run();
    }
}

/// The lab: bridge, mirror and containers, torn down on drop.
#[derive(Debug)]
pub struct Lab {
    pub dir: PathBuf,
    pub lxcpath: PathBuf,
    pub bridge: String,
    /// The first three octets of the lab's /24, e.g. `10.213.57`.
    pub net: String,
    pub mirror_url: String,
    mirror: Option<Child>,
    mirror_stdout: Option<BufReader<ChildStdout>>,
    bridge_created: bool,
    nodes: Vec<Node>,
    tmp: Option<tempfile::TempDir>,
}

impl Lab {
    /// An empty lab in a new temporary directory; nothing on the host yet.
    pub fn new() -> Self {
        cleanup_stale_runs();
        install_signal_handler();
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{TMP_PREFIX}{}-", std::process::id()))
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let lxcpath = dir.join("lxc");
        fs::create_dir_all(&lxcpath).unwrap();
        let pid = std::process::id();
        Lab {
            dir,
            lxcpath,
            bridge: format!("ibtest{}", pid % 10_000_000),
            net: String::new(),
            mirror_url: String::new(),
            mirror: None,
            mirror_stdout: None,
            bridge_created: false,
            nodes: Vec::new(),
            tmp: Some(tmp),
        }
    }

    /// Publish what to remove for the signal handler.
    fn sync(&self) {
        let t = Teardown {
            bridge: self.bridge_created.then(|| self.bridge.clone()),
            lxcpath: self.lxcpath.clone(),
            nodes: self.nodes.iter().map(|n| n.name.clone()).collect(),
            mirror_pid: self.mirror.as_ref().map(Child::id),
            dir: self.dir.clone(),
        };
        if let Ok(mut p) = PENDING.lock() {
            *p = Some(t);
        }
    }

    pub fn host_ip(&self) -> String {
        format!("{}.1", self.net)
    }

    /// Create the bridge with a private /24 of its own; the host is .1.
    pub fn create_bridge(&mut self) {
        let addrs = run_ok(Command::new("ip").args(["-4", "-o", "addr", "show"]))
            + &run_ok(Command::new("ip").args(["-4", "route", "show", "table", "all"]));
        // An unusual /24 in 10.0.0.0/8 that nothing on this host uses yet.
        let start = std::process::id() % 200;
        let third = (0..200)
            .map(|i| 20 + (start + i) % 200)
            .find(|o| !addrs.contains(&format!("10.213.{o}.")))
            .expect("no free 10.213.x.0/24 on this host");
        self.net = format!("10.213.{third}");
        let o = run(Command::new("ip").args(["link", "add", &self.bridge, "type", "bridge"]));
        assert!(
            o.status.success(),
            "creating bridge {}: {} (a stale one from a killed run? `ip link del {}`)",
            self.bridge,
            text(&o),
            self.bridge
        );
        self.bridge_created = true;
        self.sync();
        // Nothing that arrives on the bridge is routed anywhere else.
        write_sysctl(
            &format!("/proc/sys/net/ipv4/conf/{}/forwarding", self.bridge),
            "0",
        );
        write_sysctl(
            &format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", self.bridge),
            "1",
        );
        run_ok(Command::new("ip").args([
            "addr",
            "add",
            &format!("{}/24", self.host_ip()),
            "dev",
            &self.bridge,
        ]));
        run_ok(Command::new("ip").args(["link", "set", &self.bridge, "up"]));
        eprintln!(
            "lab: bridge {} with {}.0/24, host {} (no NAT, no forwarding)",
            self.bridge,
            self.net,
            self.host_ip()
        );
    }

    /// Serve the stand-in release on the bridge address (GitHub layout).
    pub fn start_mirror(&mut self, standin: &Path) {
        let dir = self.dir.join("mirror");
        let log = fs::File::create(self.dir.join("mirror.log")).unwrap();
        let mut child = Command::new(standin)
            .arg("serve-mirror")
            .arg("--dir")
            .arg(&dir)
            .args([
                "--listen",
                &format!("{}:0", self.host_ip()),
                "--version",
                K3S_VERSION,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} serve-mirror: {e}", standin.display()));
        let mut out = BufReader::new(child.stdout.take().unwrap());
        self.mirror = Some(child);
        self.sync();
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        self.mirror_stdout = Some(out);
        let url = line.trim().to_owned();
        assert!(
            url.starts_with(&format!("http://{}:", self.host_ip())),
            "serve-mirror printed {url:?}, not a URL on the bridge; its log:\n{}",
            fs::read_to_string(self.dir.join("mirror.log")).unwrap_or_default()
        );
        eprintln!("lab: mirror at {url}");
        self.mirror_url = url;
    }

    pub fn mirror_log(&self) -> String {
        fs::read_to_string(self.dir.join("mirror.log")).unwrap_or_default()
    }

    /// A privileged container from `template`, extracted with pct's flags,
    /// configured with the template's generated `.lxc.conf` and a veth on the
    /// lab bridge with address `<net>.<host_octet>`.
    pub fn create_node(&mut self, name: &str, template: &Path, host_octet: u8) -> Node {
        let dir = self.lxcpath.join(name);
        let rootfs = dir.join("rootfs");
        let t = Instant::now();
        common::pct_extract(template, &rootfs);
        eprintln!(
            "lab: extracted {} for {name} in {:.1} s",
            template.file_name().unwrap().to_string_lossy(),
            t.elapsed().as_secs_f64()
        );
        let lxc_conf = PathBuf::from(format!("{}.lxc.conf", template.display()));
        assert!(
            lxc_conf.is_file(),
            "{} missing next to the template",
            lxc_conf.display()
        );
        let ip = format!("{}.{host_octet}", self.net);
        let config = format!(
            "# {name}: privileged container for the imgbuild end-to-end test\n\
             lxc.include = {}\n\
             lxc.rootfs.path = dir:{}\n\
             lxc.uts.name = {name}\n\
             lxc.net.0.type = veth\n\
             lxc.net.0.link = {}\n\
             lxc.net.0.name = eth0\n\
             lxc.net.0.flags = up\n\
             lxc.net.0.ipv4.address = {ip}/24\n\
             lxc.net.0.ipv4.gateway = {}\n",
            lxc_conf.display(),
            rootfs.display(),
            self.bridge,
            self.host_ip(),
        );
        fs::write(dir.join("config"), config).unwrap();
        let node = Node {
            name: name.to_owned(),
            ip,
            log: self.dir.join(format!("{name}.log")),
            dir,
            rootfs,
            lxcpath: self.lxcpath.clone(),
        };
        // No DNS server exists here; every URL the nodes use is an IP
        // literal. Point the resolver at the host so nothing leaves the lab.
        node.push(
            "/etc/resolv.conf",
            &format!("nameserver {}\n", self.host_ip()),
            0o644,
        );
        self.nodes.push(node.clone());
        self.sync();
        node
    }

    /// Print every container's diagnostics (log, status, journal).
    pub fn dump_all(&self) {
        for n in &self.nodes {
            n.dump();
        }
        eprintln!("--- mirror log ---\n{}", self.mirror_log());
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Ok(mut p) = PENDING.lock() {
            *p = None;
        }
        if std::thread::panicking() {
            self.dump_all();
        }
        for n in &self.nodes {
            n.kill();
            let _ = Command::new("lxc-destroy")
                .args(["-n", &n.name, "-P"])
                .arg(&self.lxcpath)
                .output();
        }
        if let Some(mut c) = self.mirror.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.mirror_stdout = None;
        if self.bridge_created {
            let o = Command::new("ip")
                .args(["link", "del", &self.bridge])
                .output();
            if !o.map(|o| o.status.success()).unwrap_or(false) {
                eprintln!(
                    "lab: could not delete bridge {}; remove it with `ip link del {}`",
                    self.bridge, self.bridge
                );
            }
        }
        let _ = fs::remove_dir_all(&self.lxcpath);
        if let Some(t) = self.tmp.take() {
            let path = t.path().to_path_buf();
            if let Err(e) = t.close() {
                eprintln!("lab: could not remove {}: {e}", path.display());
            }
        }
    }
}
