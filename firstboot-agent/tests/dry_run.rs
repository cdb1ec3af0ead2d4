//! `firstboot-agent run --root DIR` with DIR other than `/` must not change
//! the machine it runs on: the system is chosen by the real selection
//! function, actions are recorded as "would run: …", and the built binary,
//! run as a subprocess, leaves this machine's host name, sysctls, mounts
//! and services alone.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;
use firstboot_agent::rootfs::Root;
use firstboot_agent::run::{run, RunOptions};
use firstboot_agent::state::{RunResult, StepStatus};
use firstboot_agent::system::{self, Call, FakeSystem, Selected};

/// A node that needs every kind of action: a host name, a module to load,
/// sysctls to set, / to make shared, swap to turn off, K3s to start.
fn busy_node(r: &Path) {
    node_root(r, "");
    write(r, "/proc/modules", "overlay 1 0 - Live 0x0\n");
    write(
        r,
        "/proc/self/mountinfo",
        "22 1 0:21 / / rw - ext4 /dev/vda1 rw\n",
    );
    write(
        r,
        "/proc/swaps",
        "Filename Type Size Used Priority\n/swap.img file 1 0 -2\n",
    );
    seed(r, "iid-dry", "#cloud-config\nhostname: fb-dry-run-node\n");
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn host_sysctl() -> Option<String> {
    std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances").ok()
}

const EXPECTED: [&str; 7] = [
    "would run: hostname fb-dry-run-node",
    "would run: mount --make-rshared /",
    "would run: modprobe br_netfilter",
    "would run: sysctl -w fs.inotify.max_user_instances=8192",
    "would run: swapoff -a",
    "would run: systemctl enable k3s.service",
    "would run: systemctl start --no-block k3s.service",
];

#[test]
fn the_selection_records_for_a_directory_and_a_later_real_run_still_does_everything() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    busy_node(r);
    let name_before = hostname();
    let sysctl_before = host_sysctl();

    let selected = system::select(r).unwrap();
    assert!(
        matches!(selected, Selected::DryRun(_)),
        "a temp dir must not select the real system: {selected:?}"
    );
    let res = run(&Root::new(r), selected.system(), &RunOptions::default()).unwrap();

    assert_eq!(
        hostname(),
        name_before,
        "the host name of this machine changed"
    );
    assert_eq!(
        host_sysctl(),
        sysctl_before,
        "a sysctl of this machine changed"
    );
    assert!(res.dry_run && !res.finished, "{res:?}");
    for want in EXPECTED {
        assert!(
            res.would_run.iter().any(|w| w == want),
            "{want} missing from {:#?}",
            res.would_run
        );
    }
    assert!(res.would_run.iter().all(|w| w.starts_with("would run: ")));
    let start = res.steps.iter().find(|s| s.name == "k3s-start").unwrap();
    assert!(
        start.message.contains("would be enabled and started")
            && start.message.contains("would run: systemctl daemon-reload"),
        "{}",
        start.message
    );
    let ready = res.steps.iter().find(|s| s.name == "k3s-ready").unwrap();
    assert_eq!(ready.status, StepStatus::Skipped);

    // Files under the root are written; the agent's state and done marker
    // are not, so the dry run does not pass for the node's first boot.
    assert_eq!(read(r, "/etc/hostname"), "fb-dry-run-node\n");
    assert!(r.join("etc/rancher/k3s/config.yaml").exists());
    assert!(!r.join("var/lib/firstboot-agent/state.json").exists());
    assert!(!r.join("var/lib/firstboot-agent/done").exists());
    let saved: RunResult =
        serde_json::from_str(&read(r, "/var/lib/firstboot-agent/result.json")).unwrap();
    assert!(saved.dry_run);
    assert_eq!(saved.would_run, res.would_run);

    // The node's real first boot (here: the recording fake) does it all.
    let mut sys = FakeSystem::new();
    sys.files_on_start.push((
        r.join("var/lib/rancher/k3s/server/node-token"),
        "K10xx::server:yy\n".into(),
    ));
    let res = run(&Root::new(r), &sys, &RunOptions::default()).unwrap();
    assert!(res.finished && !res.dry_run && res.would_run.is_empty());
    let calls = sys.calls();
    assert!(calls.contains(&Call::SetHostname("fb-dry-run-node".into())));
    assert!(calls.contains(&Call::MakeRootRshared) && calls.contains(&Call::SwapoffAll));
    assert!(sys
        .systemctl_calls()
        .contains(&"enable k3s.service".to_owned()));
}

/// The line of `/` in a mountinfo (its propagation flags included).
fn root_mount(mountinfo: &str) -> Option<String> {
    mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .map(str::to_owned)
}

/// Stand-ins for the tools the agent could spawn: each logs its call. A
/// dry run must spawn none of them.
fn tool_shims(dir: &Path) -> std::path::PathBuf {
    let log = dir.join("spawned.log");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in [
        "systemctl",
        "modprobe",
        "swapoff",
        "mount",
        "umount",
        "sysctl",
        "hostname",
    ] {
        let p = bin.join(tool);
        std::fs::write(
            &p,
            format!("#!/bin/sh\necho \"{tool} $*\" >> '{}'\n", log.display()),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

#[test]
fn the_built_binary_leaves_this_machine_alone() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("node");
    busy_node(&r);
    let shims = tool_shims(dir.path());
    let name_before = hostname();
    let sysctl_before = host_sysctl();
    let mounts_before = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();

    let out = Command::new(env!("CARGO_BIN_EXE_firstboot-agent"))
        .args(["run", "--root"])
        .arg(&r)
        .env(
            "PATH",
            format!(
                "{}:{}",
                shims.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let changed = hostname() != name_before;
    if changed && nix::unistd::geteuid().is_root() {
        // Put the name back before failing, so a regression does not
        // leave the machine renamed.
        let _ = nix::unistd::sethostname(&name_before);
    }
    assert!(!changed, "the host name of this machine changed\n{stderr}");
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        host_sysctl(),
        sysctl_before,
        "a sysctl of this machine changed"
    );
    assert_eq!(
        root_mount(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default()),
        root_mount(&mounts_before),
        "the propagation of / changed"
    );
    assert!(
        !dir.path().join("spawned.log").exists(),
        "the dry run spawned: {}",
        std::fs::read_to_string(dir.path().join("spawned.log")).unwrap_or_default()
    );

    // The summary says it was a dry run and lists what was left out.
    assert!(
        stdout.contains("dry run") && stdout.contains("nothing on this machine was changed"),
        "{stdout}"
    );
    for want in EXPECTED {
        assert!(
            stdout.contains(want),
            "{want} not in the summary:\n{stdout}"
        );
    }
    let result: RunResult =
        serde_json::from_str(&read(&r, "/var/lib/firstboot-agent/result.json")).unwrap();
    assert!(result.dry_run);
    for want in EXPECTED {
        assert!(
            result.would_run.iter().any(|w| w == want),
            "{want}: {result:#?}"
        );
    }
    // Not a terminal: no colour codes in the log.
    assert!(!stderr.contains('\u{1b}'), "ANSI escapes in {stderr:?}");

    // `status` says what the last run was.
    let out = Command::new(env!("CARGO_BIN_EXE_firstboot-agent"))
        .args(["status", "--root"])
        .arg(&r)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("the last run was a dry run"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn the_binary_prints_an_error_once() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "");
    seed(
        r,
        "i1",
        "#cloud-config\nk3s:\n  role: agent\n  server: https://10.0.0.10:6443\n  token-file: /etc/k3s-token\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_firstboot-agent"))
        .args(["run", "--root"])
        .arg(r)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("/etc/k3s-token does not exist").count(),
        1,
        "{stderr}"
    );
    let line = stderr
        .lines()
        .find(|l| l.starts_with("firstboot-agent: error: "))
        .unwrap_or_else(|| panic!("no error line in {stderr}"));
    assert!(
        line.contains(
            "step metadata failed: /var/lib/cloud/seed/nocloud/user-data:5: k3s.token-file:"
        ),
        "{line}"
    );
    assert!(!stderr.contains('\u{1b}'), "ANSI escapes in {stderr:?}");

    // A --root that does not exist is refused before anything runs.
    let out = Command::new(env!("CARGO_BIN_EXE_firstboot-agent"))
        .args(["run", "--root"])
        .arg(r.join("missing"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("No such file or directory — give the directory"),
        "{stderr}"
    );
    assert!(!stderr.contains("os error"), "{stderr}");
}
