//! Helpers for the real end-to-end LXC test (`e2e_lxc.rs`): a private
//! bridge with a DHCP server on it, a release mirror on the bridge address,
//! and containers made from imgbuild templates the way Proxmox makes them —
//! `pct create`'s extraction and set-up, the LXC config `pct start` writes,
//! and its pre-start set-up before every start (all from the `pve-setup`
//! crate, which follows pve-container's code) — plus a guard that tears all
//! of it down again, also when a test panics.
//!
//! Network rule: everything stays on this machine. The bridge has its own
//! /24 inside 10.0.0.0/8 with the host on .1; no NAT is set up, IPv4
//! forwarding is switched off for packets arriving on the bridge and IPv6 is
//! off on it, so the containers can reach the host and each other only.
//! dnsmasq answers DHCP and DNS on the bridge address alone and forwards no
//! query anywhere.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::common::{self, require_tool, run, text};

/// The K3s version the shipped profiles pin.
pub const K3S_VERSION: &str = "v1.34.3+k3s1";

/// A second release the mirror serves, for `firstboot-agent upgrade`.
pub const K3S_NEXT_VERSION: &str = "v1.34.4+k3s1";

/// PATH inside the containers (lxc-attach runs with a cleared environment).
const GUEST_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Build one shipped profile as an LXC template into `out`, with the
/// shared cache and (when given) `recipe` instead of the profile's own;
/// returns the template's path.
pub fn build_template(profile: &str, recipe: Option<&Path>, out: &Path) -> PathBuf {
    let t = Instant::now();
    let cache = common::cache_dir();
    let profile_path = common::repo_root().join(format!("profiles/{profile}.yaml"));
    let mut args = vec![profile_path.to_str().unwrap()];
    if let Some(r) = recipe {
        args.extend(["--recipe", r.to_str().unwrap()]);
    }
    let o = common::imgbuild(
        &[
            &["build"][..],
            &args,
            &[
                "--output",
                "lxc",
                "--cache-dir",
                cache.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
        ]
        .concat(),
        &[],
    );
    assert!(o.status.success(), "imgbuild build {profile}: {}", text(&o));
    let name = format!("debian-12-k3s-{profile}_1.34.3-k3s1-1_amd64.tar.zst");
    let template = out.join(&name);
    assert!(template.is_file(), "{name} not built: {}", text(&o));
    eprintln!("built {name} in {:.1} s", t.elapsed().as_secs_f64());
    template
}

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

/// How `pct create --net0 …,ip=` configures a node's eth0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv4 {
    /// `ip=<net>.<octet>/24,gw=<host>`.
    Static(u8),
    /// `ip=dhcp`: a lease from the lab's dnsmasq.
    Dhcp,
}

/// One container as a user asks for it with `pct create`.
#[derive(Debug, Clone, Copy)]
pub struct NodeSpec<'a> {
    /// The LXC name (Proxmox uses the vmid; here a name unique to the run).
    pub name: &'a str,
    /// `--hostname`.
    pub hostname: &'a str,
    /// `--unprivileged 1`, pct's default.
    pub unprivileged: bool,
    pub ipv4: Ipv4,
}

/// One container of the lab.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    /// The static address, or the DHCP lease once [`Node::wait_ipv4`] saw it.
    pub ip: String,
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub log: PathBuf,
    pub lxcpath: PathBuf,
    /// What `pct create` was given; `pct start` applies it again.
    pub ct: pve_setup::CtConfig,
    host: pve_setup::Host,
    /// The container's root as the host sees it (100000 when unprivileged).
    pub root_uid: u32,
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

    /// Write a file into the stopped container's rootfs the way the README
    /// tells Proxmox users to: `pct mount`, then `install -o <root> -g <root>
    /// -m MODE FILE …/rootfs/DIR/`, owned by the container's root (100000 in
    /// an unprivileged one). The directory must exist, as `install` needs.
    pub fn push(&self, guest: &str, content: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let p = self.path(guest);
        assert!(
            p.parent().unwrap().is_dir(),
            "[{}] {} does not exist in the container: the template should ship it",
            self.name,
            Path::new(guest).parent().unwrap().display()
        );
        fs::write(&p, content).unwrap();
        std::os::unix::fs::chown(&p, Some(self.root_uid), Some(self.root_uid)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// `pct start`: pct's pre-start set-up of the rootfs (network files,
    /// host name, hosts, resolv.conf), then `lxc-start -d` with a DEBUG
    /// log; returns when the monitor has started.
    pub fn start(&self) -> Instant {
        pve_setup::pre_start_hook(&self.rootfs, &self.ct, &self.host)
            .unwrap_or_else(|e| panic!("[{}] pct's pre-start set-up: {e}", self.name));
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

    /// Wait until systemd inside has finished booting, and require that it
    /// is `running`: a `degraded` system fails, naming its failed units.
    pub fn wait_running(&self, limit: Duration) {
        let state = poll(
            &format!("systemd in {} to finish booting", self.name),
            limit,
            Duration::from_millis(500),
            || {
                let s = self.attach_out(&["systemctl", "is-system-running"]);
                matches!(
                    s.as_str(),
                    "running" | "degraded" | "maintenance" | "stopping"
                )
                .then_some(s)
            },
        );
        if state != "running" {
            let failed = self.attach_out(&[
                "systemctl",
                "list-units",
                "--failed",
                "--plain",
                "--no-legend",
                "--no-pager",
            ]);
            panic!(
                "[{}] systemctl is-system-running says {state}, not running; failed units:\n{failed}",
                self.name
            );
        }
    }

    /// eth0's IPv4 address (`a.b.c.d`) once it has one.
    pub fn wait_ipv4(&self, limit: Duration) -> String {
        poll(
            &format!("an IPv4 address on eth0 in {}", self.name),
            limit,
            Duration::from_millis(500),
            || {
                let out = self.attach_out(&["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
                parse_ipv4(&out)
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

/// The address in `ip -4 -o addr show` output (`… inet 10.1.2.3/24 brd …`).
pub fn parse_ipv4(out: &str) -> Option<String> {
    let mut words = out.split_whitespace();
    words.find(|w| *w == "inet")?;
    let cidr = words.next()?;
    Some(cidr.split('/').next()?.to_owned())
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
    /// The mirror and dnsmasq.
    pids: Vec<u32>,
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
        for pid in &self.pids {
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
                eprintln!(
                    "lab: interrupted; removing the containers, the mirror, dnsmasq and the bridge"
                );
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
        // The mirror and dnsmasq of that run: processes naming its directory.
        let dir_bytes = dir.as_os_str().as_encoded_bytes().to_vec();
        let pids = fs::read_dir("/proc")
            .map(|rd| {
                rd.flatten()
                    .filter_map(|p| {
                        let pid: u32 = p.file_name().to_str()?.parse().ok()?;
                        let cmdline = fs::read(p.path().join("cmdline")).ok()?;
                        cmdline
                            .split(|b| *b == 0)
                            .any(|a| a.windows(dir_bytes.len()).any(|w| w == dir_bytes))
                            .then_some(pid)
                    })
                    .collect()
            })
            .unwrap_or_default();
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
            pids,
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
    dnsmasq: Option<Child>,
    bridge_created: bool,
    nodes: Vec<Node>,
    tmp: Option<tempfile::TempDir>,
}

/// The DHCP pool dnsmasq hands out: `<net>.100` to `<net>.199`.
pub const DHCP_FIRST: u8 = 100;
pub const DHCP_LAST: u8 = 199;

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
        // An unprivileged container's root (the host's uid 100000) must be
        // able to reach its rootfs; a temp dir is 0700.
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        }
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
            dnsmasq: None,
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
            pids: self
                .mirror
                .iter()
                .chain(self.dnsmasq.iter())
                .map(Child::id)
                .collect(),
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
                "--version",
                K3S_NEXT_VERSION,
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

    /// DHCP and DNS on the bridge address, as a Proxmox user's router or
    /// dnsmasq gives them: leases from the pool, the host as router and name
    /// server; no upstream, so no query leaves the lab.
    pub fn start_dhcp(&mut self) {
        require_tool("dnsmasq", "dnsmasq-base");
        let log = self.dir.join("dnsmasq.log");
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--user=root",
                "--group=root",
                "--bind-interfaces",
                "--except-interface=lo",
            ])
            .arg(format!("--interface={}", self.bridge))
            .arg(format!("--listen-address={}", self.host_ip()))
            .args(["--no-resolv", "--no-hosts", "--no-poll", "--log-dhcp"])
            .arg(format!(
                "--dhcp-range={0}.{DHCP_FIRST},{0}.{DHCP_LAST},255.255.255.0,1h",
                self.net
            ))
            .arg(format!(
                "--dhcp-leasefile={}",
                self.dir.join("dnsmasq.leases").display()
            ))
            .arg(format!("--log-facility={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting dnsmasq: {e}"));
        self.dnsmasq = Some(child);
        self.sync();
        poll(
            "dnsmasq to start",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || {
                let l = fs::read_to_string(&log).unwrap_or_default();
                if let Some(c) = self.dnsmasq.as_mut() {
                    if let Ok(Some(st)) = c.try_wait() {
                        panic!("dnsmasq exited with {st}:\n{l}");
                    }
                }
                l.contains("DHCP, IP range").then_some(())
            },
        );
        eprintln!(
            "lab: dnsmasq on {} (DHCP {}.{DHCP_FIRST}-{DHCP_LAST}, DNS with no upstream)",
            self.bridge, self.net
        );
    }

    /// dnsmasq's lease file: `(mac, ip, hostname)` per lease.
    pub fn leases(&self) -> Vec<(String, String, String)> {
        fs::read_to_string(self.dir.join("dnsmasq.leases"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 4).then(|| (f[1].to_lowercase(), f[2].to_owned(), f[3].to_owned()))
            })
            .collect()
    }

    pub fn dnsmasq_log(&self) -> String {
        fs::read_to_string(self.dir.join("dnsmasq.log")).unwrap_or_default()
    }

    /// A container made from `template` as Proxmox makes it:
    /// `pct create <vmid> <template> --hostname H --net0
    /// name=eth0,bridge=<lab bridge>,hwaddr=<generated>,ip=…[,gw=<host>]
    /// --nameserver <host> --unprivileged 0|1`, then the template's
    /// `.pve-privileged.conf` or `.pve-unprivileged.conf` lines appended to
    /// its config, as the README says. Nothing else: no address from the
    /// LXC side, no file written into the rootfs by hand.
    pub fn create_node(&mut self, spec: NodeSpec<'_>, template: &Path) -> Node {
        let dir = self.lxcpath.join(spec.name);
        let rootfs = dir.join("rootfs");
        let variant = if spec.unprivileged {
            "unprivileged"
        } else {
            "privileged"
        };
        let host_lines_file = PathBuf::from(format!("{}.pve-{variant}.conf", template.display()));
        let host_lines = fs::read_to_string(&host_lines_file)
            .unwrap_or_else(|e| panic!("{}: {e}", host_lines_file.display()));
        // Unique per run and per node: pct names the host side of the veth
        // `veth<vmid>i<n>`, at most 15 characters.
        let vmid = (std::process::id() % 100_000) * 10 + self.nodes.len() as u32;
        let (ip, gw) = match spec.ipv4 {
            Ipv4::Static(octet) => (format!("{}.{octet}/24", self.net), Some(self.host_ip())),
            Ipv4::Dhcp => ("dhcp".to_owned(), None),
        };
        let ct = pve_setup::CtConfig {
            vmid,
            hostname: Some(spec.hostname.to_owned()),
            nets: vec![pve_setup::NetConfig {
                index: 0,
                name: "eth0".into(),
                bridge: self.bridge.clone(),
                hwaddr: pve_setup::pve_mac(u64::from(vmid)),
                ip: Some(ip),
                gw,
                ip6: None,
                gw6: None,
                mtu: None,
            }],
            nameserver: Some(self.host_ip()),
            searchdomain: None,
            unprivileged: spec.unprivileged,
            timezone: None,
            ssh_public_keys: None,
            root_password: None,
            arch: "amd64".into(),
            tty: 2,
            extra: pve_setup::parse_pve_conf(&host_lines),
        };
        let host = pve_setup::Host {
            resolv_conf: fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        };
        let t = Instant::now();
        let distro = pve_setup::create(template, &rootfs, &ct, &host)
            .unwrap_or_else(|e| panic!("pct create {vmid} {}: {e}", template.display()));
        fs::write(dir.join("config"), pve_setup::lxc_config(&ct, &rootfs)).unwrap();
        eprintln!(
            "lab: pct create {vmid} ({}, {variant}, ip={}) as {distro:?} in {:.1} s",
            template.file_name().unwrap().to_string_lossy(),
            ct.nets[0].ip.as_deref().unwrap_or("-"),
            t.elapsed().as_secs_f64()
        );
        let node = Node {
            name: spec.name.to_owned(),
            ip: match spec.ipv4 {
                Ipv4::Static(octet) => format!("{}.{octet}", self.net),
                Ipv4::Dhcp => String::new(),
            },
            log: self.dir.join(format!("{}.log", spec.name)),
            dir,
            rootfs,
            lxcpath: self.lxcpath.clone(),
            ct,
            host,
            root_uid: if spec.unprivileged { 100_000 } else { 0 },
        };
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
        eprintln!("--- dnsmasq log ---\n{}", self.dnsmasq_log());
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
        for mut c in self.mirror.take().into_iter().chain(self.dnsmasq.take()) {
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
