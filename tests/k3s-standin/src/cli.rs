//! The command line: `k3s --version`, `k3s server|agent [flags]`,
//! `serve-mirror`, `prepare-mirror`.

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};

use crate::config::{self, Role};
use crate::mirror::{self, Faults};
use crate::node::{self, DialPolicy, Invocation};
use crate::paths::Root;
use crate::{log, notify, version};

pub const HELP: &str = "\
k3s-standin: a stand-in for tests, not K3s. It runs no Kubernetes.

It answers like the K3s binary where imgbuild's tests need it: it reads
/etc/rancher/k3s/config.yaml (+ config.yaml.d/*.yaml), flags and K3S_* env
as K3s does, writes the node token and kubeconfig as a K3s server does,
listens on (server) or dials (agent) port 6443, notifies systemd (READY=1)
and records what it did in /var/lib/rancher/k3s/standin/effective-config.json.

USAGE:
    k3s --version                  k3s version <v> (abcdef12) / go version …
    k3s server [FLAGS]             a stand-in server
    k3s agent  [FLAGS]             a stand-in agent (needs --server, --token)
    k3s-standin prepare-mirror --dir DIR --version V [--version V2 …] [--binary PATH]
        write DIR/<V>/k3s and DIR/<V>/sha256sum-amd64.txt; prints \"<V> <sha256>\"
    k3s-standin serve-mirror --dir DIR [--listen 127.0.0.1:0] [--version V …]
        [--binary PATH] [--corrupt] [--cut-after BYTES] [--fail-first N]
        (prepare the given versions, then) serve DIR over HTTP/1.1; the
        first line on stdout is the base URL; runs until SIGTERM/SIGINT

SERVER/AGENT FLAGS: any K3s flag, as --name value, --name=value or a bare
boolean --name; --config/-c FILE. The stand-in's own:
    --root DIR      (or K3S_STANDIN_ROOT) use DIR as the filesystem root

ENV: K3S_TOKEN K3S_TOKEN_FILE K3S_URL K3S_NODE_NAME K3S_CONFIG_FILE
     K3S_KUBECONFIG_MODE K3S_KUBECONFIG_OUTPUT K3S_AGENT_TOKEN …;
     K3S_STANDIN_VERSION overrides the reported version;
     K3S_STANDIN_DIAL_TIMEOUT seconds an agent dials its server (default 60).
";

const UNSUPPORTED_TOOLS: [&str; 4] = ["kubectl", "crictl", "ctr", "etcd-snapshot"];

/// Block SIGTERM/SIGINT in this thread (and the threads it spawns later),
/// so [`wait_for_signal`] can take them synchronously.
fn block_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    if let Err(e) = set.thread_block() {
        log::warn(&format!("blocking signals: {e}"));
    }
    set
}

fn wait_for_signal(set: &SigSet) -> i32 {
    match set.wait() {
        Ok(sig) => {
            log::info(&format!("Received {}, shutting down", sig.as_str()));
            0
        }
        Err(e) => {
            log::error(&format!("waiting for a signal: {e}"));
            1
        }
    }
}

/// Exit when SIGTERM/SIGINT arrives, whatever the main thread is doing
/// (an agent may still be dialing its server).
fn exit_on_signal(set: SigSet) {
    std::thread::spawn(move || std::process::exit(wait_for_signal(&set)));
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

/// Run with `argv` (including argv[0]); returns the exit code.
pub fn main(argv: Vec<String>) -> i32 {
    let prog = argv
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_owned())
        .unwrap_or_default();
    if UNSUPPORTED_TOOLS.contains(&prog.as_str()) {
        return unsupported(&prog);
    }
    let args = &argv[1.min(argv.len())..];
    match args.first().map(String::as_str) {
        None | Some("--help" | "-h" | "help") => {
            print!("{HELP}");
            0
        }
        Some("--version" | "-v" | "version") => {
            print!("{}", version::version_text(&version::current().0));
            0
        }
        Some("server") => run_node(Role::Server, &args[1..], &argv),
        Some("agent") => run_node(Role::Agent, &args[1..], &argv),
        Some("prepare-mirror") => mirror_cmd(&args[1..], false),
        Some("serve-mirror") => mirror_cmd(&args[1..], true),
        Some(tool) if UNSUPPORTED_TOOLS.contains(&tool) => unsupported(tool),
        Some(other) => {
            log::fatal(&format!("unknown command {other:?} (k3s-standin: a stand-in for tests, not K3s; see --help)"));
            1
        }
    }
}

fn unsupported(tool: &str) -> i32 {
    eprintln!("k3s-standin: `{tool}` is not available: this is a stand-in for tests, not K3s");
    1
}

fn run_node(role: Role, args: &[String], argv: &[String]) -> i32 {
    let cl = match config::parse_command_line(args) {
        Ok(cl) => cl,
        Err(e) => {
            log::fatal(&e);
            return 1;
        }
    };
    if cl.help {
        print!("{HELP}");
        return 0;
    }
    if cl.version {
        print!("{}", version::version_text(&version::current().0));
        return 0;
    }
    let root = cl
        .root
        .clone()
        .or_else(|| env("K3S_STANDIN_ROOT").filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "/".into());
    let mut dial = DialPolicy::default();
    if let Some(s) = env("K3S_STANDIN_DIAL_TIMEOUT") {
        match s.parse::<f64>() {
            Ok(secs) if secs >= 0.0 && secs.is_finite() => {
                dial.timeout = Duration::from_secs_f64(secs)
            }
            _ => log::warn(&format!(
                "ignoring K3S_STANDIN_DIAL_TIMEOUT={s:?}: expected seconds"
            )),
        }
    }
    let inv = Invocation {
        root: Root::new(root),
        role,
        command_line: cl,
        argv: argv.to_vec(),
        dial,
    };
    // Before any other thread exists, so all of them inherit the mask.
    exit_on_signal(block_signals());
    let started = match node::start(&inv, &env) {
        Ok(s) => s,
        Err(node::Fatal(msg)) => {
            log::fatal(&msg);
            return 1;
        }
    };
    log::info(&format!(
        "Recorded the effective configuration in {}",
        started.record_path.display()
    ));
    match notify::notify("READY=1") {
        Ok(Some(sock)) => log::info(&format!("Notified systemd (READY=1 to {sock})")),
        Ok(None) => {}
        Err(e) => log::warn(&format!("notifying systemd: {e}")),
    }
    log::info(&format!("k3s {} is up (k3s-standin)", role.as_str()));
    loop {
        std::thread::park();
    }
}

/// Options of the mirror subcommands.
#[derive(Debug, Default)]
struct MirrorArgs {
    dir: Option<PathBuf>,
    listen: Option<String>,
    versions: Vec<String>,
    binary: Option<PathBuf>,
    faults: Faults,
}

fn parse_mirror_args(args: &[String]) -> Result<MirrorArgs, String> {
    let mut m = MirrorArgs::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (arg.as_str(), None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{what} needs a value"))
        };
        match name {
            "--dir" => m.dir = Some(value(name)?.into()),
            "--listen" => m.listen = Some(value(name)?),
            "--version" => m.versions.push(value(name)?),
            "--binary" => m.binary = Some(value(name)?.into()),
            "--corrupt" => m.faults.corrupt = true,
            "--cut-after" => {
                m.faults.cut_after = Some(
                    value(name)?
                        .parse()
                        .map_err(|_| "--cut-after needs a byte count")?,
                )
            }
            "--fail-first" => {
                m.faults.fail_first = value(name)?
                    .parse()
                    .map_err(|_| "--fail-first needs a count")?
            }
            other => return Err(format!("unknown option {other:?} (see --help)")),
        }
    }
    Ok(m)
}

fn mirror_cmd(args: &[String], serve: bool) -> i32 {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{HELP}");
        return 0;
    }
    let m = match parse_mirror_args(args) {
        Ok(m) => m,
        Err(e) => {
            log::fatal(&e);
            return 2;
        }
    };
    let Some(dir) = m.dir else {
        log::fatal("--dir is required");
        return 2;
    };
    if !serve && m.versions.is_empty() {
        log::fatal("--version is required");
        return 2;
    }
    let binary = match m.binary.map(Ok).unwrap_or_else(std::env::current_exe) {
        Ok(b) => b,
        Err(e) => {
            log::fatal(&format!("finding this executable: {e}"));
            return 1;
        }
    };
    for v in &m.versions {
        match mirror::prepare(&dir, v, &binary) {
            Ok(p) => {
                if !serve {
                    println!("{} {}", p.version, p.sha256);
                }
                log::info(&format!(
                    "Prepared {} (k3s sha256 {})",
                    p.release_dir.display(),
                    p.sha256
                ));
            }
            Err(e) => {
                log::fatal(&format!("preparing {v} in {}: {e}", dir.display()));
                return 1;
            }
        }
    }
    if !serve {
        return 0;
    }
    let signals = block_signals();
    let listen = m.listen.unwrap_or_else(|| "127.0.0.1:0".into());
    let mirror = match mirror::serve(&dir, &listen, m.faults, true) {
        Ok(s) => s,
        Err(e) => {
            log::fatal(&format!("listening on {listen}: {e}"));
            return 1;
        }
    };
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", mirror.base_url());
        let _ = out.flush();
    }
    log::info(&format!(
        "Serving {} at {}",
        dir.display(),
        mirror.base_url()
    ));
    let code = wait_for_signal(&signals);
    drop(mirror);
    code
}
