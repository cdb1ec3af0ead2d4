//! Hostile and broken inputs against the whole `run` pipeline, through the
//! recording fake and temp roots: token files that are missing or readable
//! by others, control characters in values written into files, serde's type
//! names, OS errors printed once, and temp files left by killed runs.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;
use firstboot_agent::leftovers::{swept_dirs, temp_prefix, AGENT_TEMP, DOWNLOAD_TEMP};
use firstboot_agent::rootfs::Root;
use firstboot_agent::run::{run, RunOptions};
use firstboot_agent::state::{RunResult, State, StepStatus};
use firstboot_agent::system::FakeSystem;

const AGENT_WITH_TOKEN_FILE: &str = "#cloud-config\nk3s:\n  role: agent\n  server: https://10.0.0.10:6443\n  token-file: /etc/k3s-token\n";

/// Run and return the error as main prints it, after checking that the
/// node was left untouched and retryable.
fn refused(r: &Path, sys: &FakeSystem) -> String {
    let e = run_err(r, sys);
    assert!(sys.calls().is_empty(), "{:?}", sys.calls());
    assert!(!r.join("etc/rancher").exists() && !r.join("usr/local/bin/k3s").exists());
    assert!(!r.join("var/lib/firstboot-agent/done").exists());
    let state = State::load(&Root::new(r)).unwrap();
    assert_eq!(state.steps["metadata"].status, StepStatus::Failed);
    let result: RunResult =
        serde_json::from_str(&read(r, "/var/lib/firstboot-agent/result.json")).unwrap();
    assert!(!result.finished);
    assert_eq!(result.errors.len(), 1, "{:?}", result.errors);
    e
}

#[test]
fn missing_token_file_is_an_error_naming_the_file_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "");
    seed(r, "i1", AGENT_WITH_TOKEN_FILE);
    let e = refused(r, &fake_for(r));
    assert!(
        e.contains(
            "/var/lib/cloud/seed/nocloud/user-data:5: k3s.token-file: /etc/k3s-token does not exist on the node"
        ),
        "{e}"
    );
    assert!(
        e.contains("permissions: '0600'") && e.contains("k3s.token"),
        "{e}"
    );
}

#[test]
fn token_file_readable_by_others_is_refused_with_the_chmod() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "");
    seed(r, "i1", AGENT_WITH_TOKEN_FILE);
    write(r, "/etc/k3s-token", format!("{TOKEN}\n"));
    let token = r.join("etc/k3s-token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = refused(r, &fake_for(r));
    assert!(
        e.contains(
            "k3s.token-file: /etc/k3s-token has mode 0644 (group can read, others can read)"
        ) && e.contains("run `chmod 0600 /etc/k3s-token`"),
        "{e}"
    );
    assert!(!e.contains("s3cret"), "token leaked: {e}");

    // After the chmod the same node provisions, and K3s gets the path.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let res = run(&Root::new(r), &fake_for(r), &RunOptions::default()).unwrap();
    assert!(res.finished, "{res:?}");
    assert!(read(r, "/etc/rancher/k3s/config.yaml").contains("token-file: /etc/k3s-token\n"));
}

#[test]
fn control_characters_in_values_written_to_files_are_refused_where_they_are() {
    for (user_data, meta_data, expect) in [
        (
            "#cloud-config\nk3s:\n  node-name: \"w1\\nevil: x\"\n",
            "instance-id: i1\n",
            "/var/lib/cloud/seed/nocloud/user-data:3: k3s.node-name: contains a newline (\\n) at character 3",
        ),
        (
            "#cloud-config\nhostname: \"node\\u001b]0;x\"\n",
            "instance-id: i1\n",
            "/var/lib/cloud/seed/nocloud/user-data: hostname: contains an escape character",
        ),
        (
            "#cloud-config\n",
            "instance-id: i1\nlocal-hostname: \"a\\rb\"\n",
            "/var/lib/cloud/seed/nocloud/meta-data: local-hostname: contains a carriage return",
        ),
        (
            "#cloud-config\nk3s:\n  node-taint: [\"a=b:NoSchedule\\nx\"]\n",
            "instance-id: i1\n",
            "user-data:3: k3s.node-taint: contains a newline",
        ),
        (
            "#cloud-config\nk3s:\n  config:\n    node-ip: \"10.0.0.5\\n\"\n",
            "instance-id: i1\n",
            "user-data:3: k3s.config.node-ip: contains a newline",
        ),
        (
            "#cloud-config\n",
            "instance-id: \"i\\u0085x\"\n",
            "/var/lib/cloud/seed/nocloud/meta-data: instance-id: contains the control character U+0085",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        node_root(r, "");
        write(r, "/var/lib/cloud/seed/nocloud/meta-data", meta_data);
        write(r, "/var/lib/cloud/seed/nocloud/user-data", user_data);
        let e = refused(r, &fake_for(r));
        assert!(e.contains(expect), "{user_data:?} {meta_data:?}:\n{e}");
        assert!(e.contains("remove it"), "no advice: {e}");
    }
}

#[test]
fn yaml_type_errors_use_yaml_words_not_rust_types() {
    for (user_data, expect) in [
        (
            "#cloud-config\nk3s: [1, 2]\n",
            "k3s: invalid type: a list, expected a mapping",
        ),
        (
            "#cloud-config\nk3s:\n  ready-timeout-secs: soon\n",
            "expected a whole number",
        ),
        (
            "#cloud-config\nk3s:\n  cluster-init: 3\n",
            "expected true or false",
        ),
        (
            "#cloud-config\nk3s:\n  role: [server]\n",
            "k3s.role: invalid type: a list",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        node_root(r, "");
        seed(r, "i1", user_data);
        let e = refused(r, &fake_for(r));
        assert!(e.contains(expect), "{user_data:?}: {e}");
        for rust in ["struct", "K3sMeta", "u64", "YAML tag", "Option<", "bool"] {
            assert!(!e.contains(rust), "{user_data:?}: `{rust}` in {e}");
        }
    }
}

#[test]
fn an_os_error_is_reported_once_without_the_error_code() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "");
    seed(r, "i1", "#cloud-config\n");
    // A directory where the agent's state file belongs.
    std::fs::create_dir_all(r.join("var/lib/firstboot-agent/state.json")).unwrap();
    let e = run_err(r, &fake_for(r));
    assert_eq!(
        e,
        format!(
            "reading {}/var/lib/firstboot-agent/state.json: Is a directory — a directory is in the way; move it aside",
            r.display()
        )
    );
}

#[test]
fn a_failed_step_reads_cause_then_fix_once() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "");
    seed(
        r,
        "i1",
        &format!(
            "#cloud-config\nk3s:\n  role: agent\n  server: https://cp.lan:6443\n  token: {TOKEN}\n"
        ),
    );
    let mut sys = fake_for(r);
    sys.unresolvable.insert("cp.lan".into());
    let e = run_err(r, &sys);
    // Which resolver was asked: the nameservers of the node's resolv.conf.
    assert!(
        e.contains(
            "dns cp.lan: cp.lan does not resolve (K3s server): Name or service not known; \
             the resolver asked 10.0.0.1 (nameservers in /etc/resolv.conf) after /etc/hosts — check those nameservers"
        ),
        "{e}"
    );
    assert_eq!(e.matches("Name or service not known").count(), 1, "{e}");
    assert_eq!(e.matches("step network failed").count(), 1, "{e}");
}

fn mtime_ago(path: &Path, ago: Duration) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - ago).unwrap();
}

#[test]
fn stale_temp_files_of_killed_runs_are_swept_and_live_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "");
    seed(r, "i1", "#cloud-config\n");
    let dead = 999_999;
    let dead_download = format!(
        "/usr/local/bin{}",
        format_args!("/{DOWNLOAD_TEMP}{dead}-Xa81zQ")
    );
    let dead_state = format!("/var/lib/firstboot-agent/{AGENT_TEMP}{dead}-p0Qr7s");
    let live_download = format!("/usr/local/bin/{}kL29sd", temp_prefix(DOWNLOAD_TEMP));
    let old_live = format!("/etc/rancher/k3s/{}old123", temp_prefix(AGENT_TEMP));
    let legacy_old = "/etc/systemd/system/.firstboot-agent-aB3dE9";
    let legacy_new = "/etc/systemd/system/.firstboot-agent-zZ9yY8";
    let not_ours = "/usr/local/bin/.k3s.download-notes.txt";
    for p in [
        &dead_download,
        &dead_state,
        &live_download,
        &old_live,
        legacy_old,
        legacy_new,
        not_ours,
    ] {
        write(r, p, "partial");
    }
    mtime_ago(
        &r.join(old_live.trim_start_matches('/')),
        Duration::from_secs(3 * 24 * 3600),
    );
    mtime_ago(
        &r.join(legacy_old.trim_start_matches('/')),
        Duration::from_secs(2 * 24 * 3600),
    );
    let mut sys = fake_for(r);
    sys.dead_pids.insert(dead);
    let res = run(&Root::new(r), &sys, &RunOptions::default()).unwrap();
    assert!(res.finished);
    let gone = |p: &str| !r.join(p.trim_start_matches('/')).exists();
    assert!(
        gone(&dead_download) && gone(&dead_state),
        "dead owner: removed"
    );
    assert!(
        gone(&old_live),
        "older than a day: removed although the pid lives"
    );
    assert!(gone(legacy_old), "old temp file without a pid: removed");
    assert!(!gone(&live_download), "a live process's download is kept");
    assert!(
        !gone(legacy_new),
        "a recent temp file without a pid is kept"
    );
    assert!(
        !gone(not_ours),
        "files not named like ours are never touched"
    );
    let removed = res.removed_temp_files.join("\n");
    assert_eq!(res.removed_temp_files.len(), 4, "{removed}");
    assert!(
        removed.contains(&format!(
            "{dead_download} (made by process {dead}, which is no longer running)"
        )),
        "{removed}"
    );
    let saved: RunResult =
        serde_json::from_str(&read(r, "/var/lib/firstboot-agent/result.json")).unwrap();
    assert_eq!(saved.removed_temp_files, res.removed_temp_files);
}

#[test]
fn stale_check_asks_the_real_process_table() {
    // The real liveness probe (as a dry run uses it): a reaped child's pid
    // is dead, our own pid is alive.
    let dir = tempfile::tempdir().unwrap();
    let root = Root::new(dir.path());
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = format!("/usr/local/bin/{DOWNLOAD_TEMP}{dead}-abc123");
    let live = format!("/usr/local/bin/{}def456", temp_prefix(DOWNLOAD_TEMP));
    write(dir.path(), &stale, "x");
    write(dir.path(), &live, "x");
    let sys = firstboot_agent::system::DryRunSystem::new(dir.path());
    let swept = firstboot_agent::leftovers::sweep(&root, &sys, SystemTime::now());
    assert_eq!(swept.removed.len(), 1, "{swept:?}");
    assert!(!root.exists(&stale) && root.exists(&live));
}

/// Every file the agent writes sits in a directory the sweep looks at, so
/// a temp file left next to any of them is found by a later run.
#[test]
fn temp_files_only_appear_in_swept_directories() {
    fn files(dir: &Path, out: &mut Vec<(std::path::PathBuf, Option<SystemTime>)>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let m = e.path().symlink_metadata().unwrap();
            if m.is_dir() {
                files(&e.path(), out);
            } else {
                out.push((e.path(), m.modified().ok()));
            }
        }
    }
    for lxc in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        node_root(
            r,
            &format!("  airgap-images:\n  - path: /usr/local/lib/firstboot-agent/images.tar\n    sha256: {}\n", sha256_hex(b"img")),
        );
        write(r, "/usr/local/lib/firstboot-agent/images.tar", "img");
        write(r, "/etc/fstab", "/swap.img none swap sw 0 0\n");
        if lxc {
            write(r, "/run/systemd/container", "lxc\n");
        }
        // Keys for root and for an account with a home of its own.
        write(
            r,
            "/etc/passwd",
            "root:x:0:0:root:/root:/bin/bash\nops:x:1001:1001::/home/ops:/bin/sh\n",
        );
        std::fs::create_dir_all(r.join("home/ops")).unwrap();
        write(
            r,
            "/etc/ssh/sshd_config",
            "Include /etc/ssh/sshd_config.d/*.conf\n",
        );
        seed(
            r,
            "i1",
            &format!("#cloud-config\nhostname: n1\nssh_authorized_keys: [\"{SSH_KEY}\"]\nusers:\n  - default\n  - name: ops\n    ssh_authorized_keys: [\"{SSH_KEY}\"]\nk3s:\n  node-label: [a=b]\n"),
        );
        let mut before = Vec::new();
        files(r, &mut before);
        std::thread::sleep(Duration::from_millis(20));
        run(
            &Root::new(r),
            &fake_for(r),
            &RunOptions {
                no_wait: true,
                ..RunOptions::default()
            },
        )
        .unwrap();
        let mut after = Vec::new();
        files(r, &mut after);
        for (path, mtime) in after {
            if before.contains(&(path.clone(), mtime)) {
                continue;
            }
            let node_dir = Path::new("/").join(path.parent().unwrap().strip_prefix(r).unwrap());
            if node_dir == Path::new("/var/lib/rancher/k3s/server") {
                continue; // the fake K3s's node token
            }
            assert!(
                swept_dirs(&Root::new(r))
                    .iter()
                    .any(|d| Path::new(d) == node_dir),
                "{} was written in {}, which the sweep does not look at",
                path.display(),
                node_dir.display()
            );
        }
    }
}

/// A seed path from the kernel command line is a path on the node: `..`
/// stops at the node's root, so with `--root` it cannot reach a seed (or
/// anything else) on the machine running the agent.
#[test]
fn a_seed_path_with_dotdot_stays_inside_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("node");
    node_root(&r, "");
    let outside = dir.path().join("evil");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("meta-data"), "instance-id: evil\n").unwrap();
    std::fs::write(outside.join("user-data"), "#cloud-config\nhostname: evil\n").unwrap();
    write(&r, "/proc/cmdline", "quiet ds=nocloud;s=/../../evil/\n");
    let e = refused(&r, &fake_for(&r));
    assert!(e.contains("/../../evil/ (kernel command line)"), "{e}");
    assert_ne!(
        std::fs::read_to_string(r.join("etc/hostname"))
            .unwrap_or_default()
            .trim(),
        "evil"
    );

    // The same path names the node's own /evil, which is read.
    write(&r, "/evil/meta-data", "instance-id: mine\n");
    write(&r, "/evil/user-data", "#cloud-config\n");
    let md = firstboot_agent::metadata::load(&Root::new(&r), &fake_for(&r)).unwrap();
    assert_eq!(md.meta.instance_id, "mine");
}
