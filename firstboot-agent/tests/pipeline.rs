//! The whole `run` pipeline against a temp root with the recording fake:
//! each role, golden config.yaml and unit, resume after failure, instance-id
//! changes, and bad input that must leave the node retryable.
//!
//! Regenerate the golden files with `UPDATE_GOLDEN=1 cargo test -p firstboot-agent --test pipeline`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;
use firstboot_agent::rootfs::Root;
use firstboot_agent::run::{run, RunOptions};
use firstboot_agent::state::{RunResult, State, StepStatus};
use firstboot_agent::system::{Call, CommandOutput, FakeSystem};

fn golden(case: &str, name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/golden")
        .join(case)
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
    assert_eq!(
        actual,
        expected,
        "{} differs from the golden file",
        path.display()
    );
}

fn mode(root: &Path, abs: &str) -> u32 {
    std::fs::metadata(root.join(abs.trim_start_matches('/')))
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

struct Case {
    name: &'static str,
    defaults: &'static str,
    user_data: String,
    unit: &'static str,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "server",
            defaults: "  control-plane-taint: true\n  config:\n    write-kubeconfig-mode: \"0644\"\n    disable: [traefik]\n",
            user_data: "#cloud-config\nhostname: srv-1\nk3s:\n  node-label: [zone=a]\n".into(),
            unit: "k3s.service",
        },
        Case {
            name: "ha-first",
            defaults: "  ha: true\n",
            user_data: format!("#cloud-config\nhostname: cp-1\nk3s:\n  token: {TOKEN}\n  config:\n    tls-san: [k8s.example.com]\n"),
            unit: "k3s.service",
        },
        Case {
            name: "ha-join",
            defaults: "  ha: true\n",
            user_data: format!("#cloud-config\nhostname: cp-2\nk3s:\n  server: https://10.0.0.10:6443\n  token: {TOKEN}\n  control-plane-taint: true\n"),
            unit: "k3s.service",
        },
        Case {
            name: "agent",
            defaults: "",
            user_data: "#cloud-config\nhostname: worker-1\nk3s:\n  role: agent\n  server: https://10.0.0.10:6443\n  token: simple-secret\n  node-name: w1\n  node-taint: [dedicated=gpu:NoSchedule]\n".into(),
            unit: "k3s-agent.service",
        },
    ]
}

#[test]
fn every_role_renders_golden_files_and_finishes() {
    for case in cases() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        node_root(r, case.defaults);
        seed(r, &format!("iid-{}", case.name), &case.user_data);
        let sys = fake_for(r);
        let res = run(&Root::new(r), &sys, &RunOptions::default())
            .unwrap_or_else(|e| panic!("{}: {e:#}", case.name));
        assert!(res.finished, "{}", case.name);
        golden(
            case.name,
            "config.yaml",
            &read(r, "/etc/rancher/k3s/config.yaml"),
        );
        golden(
            case.name,
            case.unit,
            &read(r, &format!("/etc/systemd/system/{}", case.unit)),
        );
        assert_eq!(mode(r, "/etc/rancher/k3s/config.yaml"), 0o600);
        let env_file = format!("/etc/systemd/system/{}.env", case.unit);
        assert_eq!(mode(r, &env_file), 0o600, "{}", case.name);
        let env = read(r, &env_file);
        let config = read(r, "/etc/rancher/k3s/config.yaml");
        if case.user_data.contains("token:") {
            assert!(env.starts_with("K3S_TOKEN='"), "{}: {env}", case.name);
            assert!(
                !config.contains("s3cret") && !config.contains("simple-secret"),
                "token leaked into config.yaml"
            );
        }
        assert_eq!(
            sys.systemctl_calls(),
            vec![
                "daemon-reload".to_owned(),
                format!("enable {}", case.unit),
                format!("start --no-block {}", case.unit),
                format!("is-active {}", case.unit),
            ],
            "{}",
            case.name
        );
        assert!(sys.calls().contains(&Call::SetHostname(
            read(r, "/etc/hostname").trim().to_owned()
        )));
        let result: RunResult =
            serde_json::from_str(&read(r, "/var/lib/firstboot-agent/result.json")).unwrap();
        assert!(result.finished && result.errors.is_empty(), "{result:?}");
        assert_eq!(result.topology.as_deref(), Some(case.name));
        assert_eq!(result.k3s_version.as_deref(), Some(VERSION));
        assert_eq!(result.boot_to_done_secs, Some(42.5));
        assert!(r.join("var/lib/firstboot-agent/done").exists());
        assert_eq!(
            std::fs::read(r.join("usr/local/bin/k3s")).unwrap(),
            FAKE_K3S
        );
    }
}

#[test]
fn joining_server_checks_dns_and_tcp_of_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "");
    seed(r, "i1", &format!("#cloud-config\nk3s:\n  role: agent\n  server: https://cp.lan:6443\n  token: {TOKEN}\n  check-names: [registry.lan]\n"));
    let sys = fake_for(r);
    run(&Root::new(r), &sys, &RunOptions::default()).unwrap();
    let calls = sys.calls();
    assert!(calls.contains(&Call::Resolve("cp.lan".into())));
    assert!(calls.contains(&Call::Resolve("registry.lan".into())));
    assert!(calls.contains(&Call::TcpConnect("127.0.0.1:6443".parse().unwrap())));
    // The baked binary is valid, so the mirror need not resolve.
    assert!(
        !calls.contains(&Call::Resolve("github.com".into())),
        "{calls:?}"
    );
}

#[test]
fn unreachable_server_fails_clearly_and_resumes_after_the_fix() {
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
    sys.refuse_all_tcp = true;
    let e = run_err(r, &sys);
    assert!(
        e.contains("step network failed")
            && e.contains("tcp cp.lan:6443")
            && e.contains("6443/tcp"),
        "{e}"
    );
    assert!(
        !r.join("etc/rancher/k3s/config.yaml").exists(),
        "nothing K3s could start on"
    );
    assert!(!r.join("var/lib/firstboot-agent/done").exists());
    assert!(sys.systemctl_calls().is_empty());
    let result: RunResult =
        serde_json::from_str(&read(r, "/var/lib/firstboot-agent/result.json")).unwrap();
    assert!(
        !result.finished && result.errors[0].starts_with("network:"),
        "{result:?}"
    );

    // Next boot: the server is up.
    let sys = fake_for(r);
    let res = run(&Root::new(r), &sys, &RunOptions::default()).unwrap();
    assert!(res.finished);
}

#[test]
fn crash_after_start_resumes_without_restarting_or_reinstalling() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "");
    seed(r, "i1", "#cloud-config\nhostname: s1\n");
    // First run: K3s fails to become ready.
    let mut sys = fake_for(r);
    sys.systemctl_answers.insert(
        "is-active k3s.service".into(),
        CommandOutput {
            success: false,
            stdout: "failed\n".into(),
            stderr: String::new(),
        },
    );
    let e = run_err(r, &sys);
    assert!(
        e.contains("k3s.service failed to start") && e.contains("journalctl -u k3s.service"),
        "{e}"
    );
    let state = State::load(&Root::new(r)).unwrap();
    assert_eq!(state.steps["k3s-ready"].status, StepStatus::Failed);
    assert!(state.k3s.is_some(), "the start is recorded");

    // Second run: tweaks and start are skipped, readiness is waited for.
    let sys = fake_for(r);
    let res = run(&Root::new(r), &sys, &RunOptions::default()).unwrap();
    assert!(res.finished);
    assert_eq!(sys.systemctl_calls(), vec!["is-active k3s.service"]);
    assert!(
        !sys.calls().contains(&Call::MakeRootRshared),
        "tweaks are not repeated"
    );
    let skipped: Vec<&str> = res
        .steps
        .iter()
        .filter(|s| s.status == StepStatus::Skipped)
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        skipped,
        vec!["tweaks", "firewall", "nm-cloud-setup", "k3s-start"]
    );
    assert!(!res.steps.iter().any(|s| s.name == "network"));

    // Third run: finished, nothing to do.
    let sys = fake_for(r);
    run(&Root::new(r), &sys, &RunOptions::default()).unwrap();
    assert!(sys.systemctl_calls().is_empty());
}

#[test]
fn new_instance_id_never_reinstalls_blindly() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "");
    seed(r, "first", "#cloud-config\nhostname: s1\n");
    run(&Root::new(r), &fake_for(r), &RunOptions::default()).unwrap();
    let config_before = read(r, "/etc/rancher/k3s/config.yaml");
    seed(
        r,
        "clone",
        "#cloud-config\nhostname: other\nk3s:\n  node-label: [x=y]\n",
    );
    let sys = fake_for(r);
    let res = run(&Root::new(r), &sys, &RunOptions::default()).unwrap();
    assert!(
        res.warnings[0].contains("instance-id changed from first to clone"),
        "{:?}",
        res.warnings
    );
    assert_eq!(read(r, "/etc/rancher/k3s/config.yaml"), config_before);
    assert_eq!(
        read(r, "/etc/hostname"),
        "s1\n",
        "a running node is not renamed"
    );
    assert!(sys.systemctl_calls().is_empty());
}

#[test]
fn bad_input_is_reported_with_file_and_line_and_changes_nothing() {
    for (user_data, expect) in [
        ("#cloud-config\nk3s:\n  role: agent\n", "needs `server:"),
        (
            "#cloud-config\nk3s:\n  server: https://a:6443\n  token: K10abc::x\n",
            "user-data:4: k3s.token",
        ),
        ("#cloud-config\nk3s:\n  role: [server]\n", "user-data:3:"),
        (
            "k3s:\n  role: agent\n",
            "user-data:1: user-data does not start with `#cloud-config`",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        node_root(r, "");
        seed(r, "i1", user_data);
        let sys = fake_for(r);
        let e = run_err(r, &sys);
        assert!(
            e.contains("/var/lib/cloud/seed/nocloud/") && e.contains(expect),
            "{user_data:?}: {e}"
        );
        assert!(sys.calls().is_empty(), "{:?}", sys.calls());
        assert!(!r.join("etc/rancher").exists() && !r.join("usr/local/bin").exists());
        let state = State::load(&Root::new(r)).unwrap();
        assert_eq!(state.steps["metadata"].status, StepStatus::Failed);
        assert!(!r.join("var/lib/firstboot-agent/done").exists());
    }
}

#[test]
fn no_wait_queues_the_ready_unit_and_a_later_run_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "");
    seed(r, "i1", "#cloud-config\n");
    let sys = fake_for(r);
    let res = run(
        &Root::new(r),
        &sys,
        &RunOptions {
            no_wait: true,
            ..RunOptions::default()
        },
    )
    .unwrap();
    assert!(!res.finished);
    assert!(sys
        .systemctl_calls()
        .contains(&"start --no-block firstboot-agent-ready.service".to_owned()));
    assert!(read(r, "/etc/systemd/system/firstboot-agent-ready.service")
        .contains("After=firstboot-agent.service k3s.service"));
    assert!(!r.join("var/lib/firstboot-agent/done").exists());
    let res = run(&Root::new(r), &fake_for(r), &RunOptions::default()).unwrap();
    assert!(res.finished && r.join("var/lib/firstboot-agent/done").exists());
}

#[test]
fn server_not_ready_times_out_with_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "");
    seed(r, "i1", "#cloud-config\nk3s:\n  ready-timeout-secs: 10\n");
    let mut sys = FakeSystem::new(); // K3s never writes its token
    sys.refused.insert("127.0.0.1:6443".parse().unwrap());
    let e = run_err(r, &sys);
    assert!(
        e.contains("not ready after 10 s") && e.contains("node-token") && e.contains("API port"),
        "{e}"
    );
    assert!(sys.slept().as_secs() <= 10);
}

#[test]
fn lxc_unprivileged_gets_kubelet_args_and_kmsg() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "");
    write(r, "/run/systemd/container", "lxc\n");
    write(r, "/proc/self/uid_map", "0 100000 65536\n");
    seed(r, "i1", "#cloud-config\n");
    run(&Root::new(r), &fake_for(r), &RunOptions::default()).unwrap();
    let config = read(r, "/etc/rancher/k3s/config.yaml");
    assert!(
        config.contains("feature-gates=KubeletInUserNamespace=true"),
        "{config}"
    );
    assert!(config.contains("conntrack-max-per-core=0"), "{config}");
    assert_eq!(
        std::fs::read_link(r.join("dev/kmsg")).unwrap(),
        Path::new("/dev/console")
    );
}

#[test]
fn damaged_airgap_archive_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, &format!("  airgap-images:\n  - path: /var/lib/rancher/k3s/agent/images/k3s-airgap-images-amd64.tar.zst\n    sha256: {}\n", "2".repeat(64)));
    write(
        r,
        "/var/lib/rancher/k3s/agent/images/k3s-airgap-images-amd64.tar.zst",
        "corrupt",
    );
    seed(r, "i1", "#cloud-config\n");
    let sys = fake_for(r);
    let e = run_err(r, &sys);
    assert!(
        e.contains("air-gap archive") && e.contains(&"2".repeat(64)),
        "{e}"
    );
    assert!(!r.join("etc/rancher/k3s/config.yaml").exists());
    assert!(sys.systemctl_calls().is_empty());
}

/// In a Proxmox container `pct` owns /etc/hostname and its block in
/// /etc/hosts. Without a name in the metadata both stay as pct wrote them;
/// with one, the agent renames the node, makes the name resolve beside pct's
/// block, warns that `pct start` puts pct's name back, and pins the K3s
/// node name so the node never re-registers under pct's name.
#[test]
fn proxmox_names_are_kept_unless_the_metadata_sets_one() {
    const PVE_HOSTS: &str =
        "127.0.0.1 localhost\n# --- BEGIN PVE ---\n10.1.2.3 pct-name\n# --- END PVE ---\n";
    const PVE_RESOLV: &str = "# --- BEGIN PVE ---\nnameserver 10.1.2.1\n# --- END PVE ---\n";
    let pct_root = |r: &Path| {
        node_root(r, "");
        write(r, "/etc/hostname", "pct-name\n");
        write(r, "/etc/hosts", PVE_HOSTS);
        write(r, "/etc/resolv.conf", PVE_RESOLV);
    };

    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    pct_root(r);
    seed(r, "i1", "#cloud-config\nk3s:\n  node-label: [zone=a]\n");
    let res = run(&Root::new(r), &fake_for(r), &RunOptions::default()).unwrap();
    assert!(res.finished);
    let step = res.steps.iter().find(|s| s.name == "hostname").unwrap();
    assert_eq!(
        step.message,
        "no host name in metadata; kept pct-name (set by Proxmox)"
    );
    assert_eq!(read(r, "/etc/hostname"), "pct-name\n");
    assert_eq!(read(r, "/etc/hosts"), PVE_HOSTS);
    assert_eq!(read(r, "/etc/resolv.conf"), PVE_RESOLV);
    assert!(!read(r, "/etc/rancher/k3s/config.yaml").contains("node-name"));

    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    pct_root(r);
    seed(r, "i1", "#cloud-config\nhostname: meta-name\n");
    let sys = fake_for(r);
    let res = run(&Root::new(r), &sys, &RunOptions::default()).unwrap();
    assert!(res.finished);
    assert_eq!(read(r, "/etc/hostname"), "meta-name\n");
    let hosts = read(r, "/etc/hosts");
    assert!(
        hosts.starts_with(PVE_HOSTS) && hosts.contains("\n127.0.1.1 meta-name\n"),
        "{hosts}"
    );
    assert_eq!(read(r, "/etc/resolv.conf"), PVE_RESOLV);
    assert!(
        res.warnings.iter().any(|w| w
            .starts_with("hostname: the metadata names this node meta-name")
            && w.contains("pct set <vmid> --hostname meta-name")),
        "{:?}",
        res.warnings
    );
    let config = read(r, "/etc/rancher/k3s/config.yaml");
    assert!(config.contains("node-name: meta-name\n"), "{config}");
    assert!(sys.calls().contains(&Call::SetHostname("meta-name".into())));
}
