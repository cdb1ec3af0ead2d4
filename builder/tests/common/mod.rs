//! Helpers shared by the builder's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The static firstboot-agent to bake. Tests never skip silently: a missing
/// binary or tool fails with the command that provides it.
pub fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("IMGBUILD_AGENT") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "IMGBUILD_AGENT={} does not exist; build it with `bash firstboot-agent/build-static.sh`",
            p.display()
        );
        return p;
    }
    let p = repo_root().join("target/x86_64-unknown-linux-gnu/release/firstboot-agent");
    assert!(
        p.is_file(),
        "static firstboot-agent not found at {}; build it with `bash firstboot-agent/build-static.sh` (scripts/test.sh does)",
        p.display()
    );
    p
}

pub fn require_tool(cmd: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{cmd} not found; install it with: apt-get install -y {package}"
    );
}

/// Run `imgbuild` with the given arguments.
pub fn imgbuild(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_imgbuild"));
    c.args(args).env("IMGBUILD_AGENT", agent_binary());
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().expect("running imgbuild")
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Extract a template exactly as Proxmox's `pct create` does.
pub fn pct_extract(template: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    let o = Command::new("tar")
        .arg("xpf")
        .arg(template)
        .args([
            "--zstd",
            "--numeric-owner",
            "--acls",
            "--xattrs",
            "--xattrs-include=user.*",
            "--xattrs-include=security.capability",
            "--sparse",
            "--skip-old-files",
            "--exclude",
            "./dev/*",
            "-C",
        ])
        .arg(dest)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "pct-style extraction failed: {}",
        text(&o)
    );
}

/// `tar tf` of a template, as `pct create` lists it first.
pub fn list(template: &Path) -> Vec<String> {
    let o = Command::new("tar")
        .arg("tf")
        .arg(template)
        .arg("--zstd")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

pub fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The static stand-in K3s (`tests/k3s-standin`), as for the agent: the
/// `K3S_STANDIN` env, else the default static build output. Never skipped.
pub fn standin_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("K3S_STANDIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "K3S_STANDIN={} does not exist; build it with `bash tests/k3s-standin/build-static.sh` (it prints the path)",
            p.display()
        );
        return p;
    }
    let p = repo_root().join("target/x86_64-unknown-linux-gnu/release/k3s-standin");
    assert!(
        p.is_file(),
        "static k3s-standin not found at {}; build it with `bash tests/k3s-standin/build-static.sh` \
         (or point K3S_STANDIN at it)",
        p.display()
    );
    p
}

/// The end-to-end tests create bridges, containers and VMs: they need root.
pub fn require_root(why: &str) {
    let o = Command::new("id")
        .arg("-u")
        .output()
        .expect("running id -u");
    let uid = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    assert_eq!(
        uid, "0",
        "{why} and must run as root (e.g. `sudo -E cargo test -p imgbuild`)"
    );
}

/// The download and bootstrap cache every integration test shares, so each
/// rootfs is bootstrapped once per target directory.
pub fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("imgbuild-cache")
}

/// Lowercase hex sha256 of `bytes`.
#[allow(unused_imports)] // not every test binary hashes
pub use k3s_standin::sha256_hex;

/// Run a command, returning its output (never panics on a non-zero exit).
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// Run a command that must succeed; returns its whole output.
pub fn run_checked(cmd: &mut Command) -> Output {
    let o = run(cmd);
    assert!(o.status.success(), "{cmd:?} failed: {}", text(&o));
    o
}
