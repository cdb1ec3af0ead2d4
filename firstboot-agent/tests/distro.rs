//! The distribution-aware steps (firewall, SELinux, AppArmor,
//! nm-cloud-setup, snapshotter) through the whole `run` and `check`, with
//! the recording fake, on roots shaped like Debian 12, Ubuntu 24.04 and
//! Rocky 9: the exact commands run, the files written, and failures that
//! leave the node retryable.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use firstboot_agent::checks::Level;
use firstboot_agent::rootfs::Root;
use firstboot_agent::run::{check, run, RunOptions};
use firstboot_agent::state::{State, StepStatus};
use firstboot_agent::system::{Call, CommandOutput, FakeSystem};

const DEBIAN: &str = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n";
const UBUNTU: &str = "PRETTY_NAME=\"Ubuntu 24.04.1 LTS\"\nNAME=\"Ubuntu\"\nVERSION_ID=\"24.04\"\nID=ubuntu\nID_LIKE=debian\n";
const ROCKY: &str = "NAME=\"Rocky Linux\"\nID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\nVERSION_ID=\"9.4\"\nPRETTY_NAME=\"Rocky Linux 9.4 (Blue Onyx)\"\n";

fn program(root: &Path, abs: &str) {
    write(root, abs, "#!/bin/sh\n");
    std::fs::set_permissions(
        root.join(abs.trim_start_matches('/')),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
}

fn no() -> CommandOutput {
    CommandOutput {
        success: false,
        stdout: String::new(),
        stderr: String::new(),
    }
}

fn out(stdout: &str) -> CommandOutput {
    CommandOutput {
        success: true,
        stdout: stdout.into(),
        stderr: String::new(),
    }
}

/// Rocky 9 as GenericCloud boots it: SELinux enforcing, firewalld running
/// (its default zone lists no ports), nm-cloud-setup enabled.
fn rocky(r: &Path, defaults: &str, policy: bool) {
    node_root(r, defaults);
    write(r, "/usr/lib/os-release", ROCKY);
    write(r, "/sys/fs/selinux/enforce", "1");
    write(
        r,
        "/etc/selinux/config",
        "SELINUX=enforcing\nSELINUXTYPE=targeted\n",
    );
    if policy {
        write(r, "/usr/share/selinux/packages/k3s.pp", "policy");
    }
    for p in [
        "/usr/bin/firewall-cmd",
        "/usr/bin/dnf",
        "/usr/sbin/restorecon",
    ] {
        program(r, p);
    }
    write(
        r,
        "/usr/lib/systemd/system/nm-cloud-setup.service",
        "[Unit]\n",
    );
}

fn rocky_fake(r: &Path) -> FakeSystem {
    let sys = fake_for(r);
    // Enabled until the agent disables it; it ran this boot.
    sys.systemctl_queue.borrow_mut().insert(
        "is-enabled --quiet nm-cloud-setup.service".into(),
        [out(""), no()].into(),
    );
    sys
}

fn config(r: &Path) -> serde_yaml::Value {
    let text = read(r, "/etc/rancher/k3s/config.yaml");
    serde_yaml::from_str(&text).unwrap()
}

fn done(r: &Path) -> bool {
    r.join("var/lib/firstboot-agent/done").exists()
}

#[test]
fn rocky_ha_server_opens_firewalld_disables_nm_cloud_setup_and_runs_with_selinux() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    rocky(r, "  ha: true\n", true);
    seed(
        r,
        "iid-rocky",
        &format!("#cloud-config\nhostname: cp-1\nk3s:\n  token: {TOKEN}\n  config:\n    cluster-cidr: 10.50.0.0/16\n"),
    );
    let mut sys = rocky_fake(r);
    // 10250/tcp is open already (e.g. by an earlier admin).
    sys.answer("firewall-cmd --permanent --list-ports", true, "10250/tcp\n");
    let res = run(&Root::new(r), &sys, &RunOptions::default()).unwrap();
    assert!(res.finished, "{res:#?}");
    assert_eq!(
        sys.command_calls(),
        vec![
            "firewall-cmd --permanent --list-ports",
            "firewall-cmd --permanent --zone=trusted --list-sources",
            "firewall-cmd --permanent --add-port=6443/tcp",
            "firewall-cmd --permanent --add-port=2379-2380/tcp",
            "firewall-cmd --permanent --add-port=8472/udp",
            "firewall-cmd --permanent --zone=trusted --add-source=10.50.0.0/16",
            "firewall-cmd --permanent --zone=trusted --add-source=10.43.0.0/16",
            "firewall-cmd --reload",
            "restorecon /usr/local/bin/k3s",
        ]
    );
    let systemctl = sys.systemctl_calls();
    let disable = systemctl
        .iter()
        .position(|c| c == "disable --now nm-cloud-setup.service nm-cloud-setup.timer")
        .unwrap_or_else(|| panic!("nm-cloud-setup not disabled: {systemctl:?}"));
    let start = systemctl
        .iter()
        .position(|c| c == "enable k3s.service")
        .unwrap();
    assert!(disable < start, "disabled after K3s started: {systemctl:?}");
    assert!(systemctl.contains(&"is-active --quiet firewalld.service".to_owned()));
    let c = config(r);
    assert_eq!(c["selinux"], serde_yaml::Value::Bool(true), "{c:?}");
    assert!(c.get("snapshotter").is_none(), "overlayfs works: {c:?}");
    let step = |n: &str| {
        res.steps
            .iter()
            .find(|s| s.name == n)
            .unwrap()
            .message
            .clone()
    };
    assert!(step("distro").starts_with("Rocky Linux 9.4 (Blue Onyx); apparmor: not enabled; selinux: enforcing; k3s-selinux policy present"), "{}", step("distro"));
    assert_eq!(
        step("firewall"),
        "firewalld: opened 6443/tcp, 2379-2380/tcp, 8472/udp, trusted 10.50.0.0/16, trusted 10.43.0.0/16 (permanent, reloaded)"
    );
    assert!(step("snapshotter").starts_with("overlayfs: an overlay mounts under /var/lib (where /var/lib/rancher/k3s/agent/containerd will be)"), "{}", step("snapshotter"));
    assert_eq!(res.snapshotter.as_ref().unwrap().snapshotter, "overlayfs");
    // It ran this boot (the fake says active): the reboot is advised.
    assert!(
        res.warnings.iter().any(|w| w
            .starts_with("nm-cloud-setup: disabled and stopped nm-cloud-setup.service")
            && w.contains("reboot")),
        "{:?}",
        res.warnings
    );
}

#[test]
fn rocky_without_the_selinux_policy_fails_before_k3s_and_stays_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    rocky(r, "", false);
    seed(r, "iid-rocky-nopolicy", "#cloud-config\nhostname: s1\n");
    let sys = rocky_fake(r);
    let e = run_err(r, &sys);
    assert!(
        e.contains("step distro failed: selinux: SELinux is enforcing on Rocky Linux 9.4 (Blue Onyx) and the k3s-selinux policy (/usr/share/selinux/packages/k3s.pp) is missing")
            && e.contains("dnf install -y container-selinux")
            && e.contains("k3s-selinux")
            && e.contains("/usr/local/lib/firstboot-agent/selinux-rpms/"),
        "{e}"
    );
    assert!(!done(r));
    assert!(
        !r.join("usr/local/bin/k3s").exists(),
        "K3s installed anyway"
    );
    assert!(sys.command_calls().is_empty(), "{:?}", sys.command_calls());
    let state = State::load(&Root::new(r)).unwrap();
    assert_eq!(state.steps["distro"].status, StepStatus::Failed);

    // The admin bakes the RPMs (or installs them): the next run installs
    // them from the image and finishes.
    let rpm = "/usr/local/lib/firstboot-agent/selinux-rpms/k3s-selinux-1.6-1.el9.noarch.rpm";
    write(r, rpm, "rpm");
    let mut sys = rocky_fake(r);
    sys.files_on_command.push((
        "dnf install".into(),
        r.join("usr/share/selinux/packages/k3s.pp"),
        "policy".into(),
    ));
    let res = run(&Root::new(r), &sys, &RunOptions::default()).unwrap();
    assert!(res.finished);
    assert_eq!(
        sys.command_calls()[0],
        format!("dnf install -y --disablerepo=* --setopt=install_weak_deps=False {rpm}")
    );
    assert_eq!(config(r)["selinux"], serde_yaml::Value::Bool(true));
}

#[test]
fn ubuntu_with_apparmor_and_no_parser_fails_then_ufw_is_opened_for_an_agent() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "");
    write(r, "/usr/lib/os-release", UBUNTU);
    write(r, "/sys/module/apparmor/parameters/enabled", "Y\n");
    write(r, "/sys/kernel/security/apparmor/profiles", "");
    program(r, "/usr/sbin/ufw");
    // What `ufw enable` leaves in ufw.conf.
    write(
        r,
        "/etc/ufw/ufw.conf",
        "# /etc/ufw/ufw.conf\n#\nENABLED=yes\nLOGLEVEL=low\n",
    );
    seed(
        r,
        "iid-ubuntu",
        "#cloud-config\nhostname: w1\nk3s:\n  role: agent\n  server: https://10.0.0.10:6443\n  token: simple-secret\n",
    );
    let sys = fake_for(r);
    let e = run_err(r, &sys);
    assert!(
        e.contains("step distro failed: apparmor: AppArmor is enabled")
            && e.contains("apparmor_parser")
            && e.contains("k3s#3406")
            && e.contains("apt-get install -y apparmor"),
        "{e}"
    );
    assert!(!done(r) && !r.join("usr/local/bin/k3s").exists());

    program(r, "/usr/sbin/apparmor_parser");
    let sys = fake_for(r);
    let res = run(&Root::new(r), &sys, &RunOptions::default()).unwrap();
    assert!(res.finished);
    assert_eq!(
        sys.command_calls(),
        vec![
            "ufw allow 10250/tcp",
            "ufw allow 8472/udp",
            "ufw allow from 10.42.0.0/16 to any",
            "ufw allow from 10.43.0.0/16 to any",
        ],
        "an agent opens no 6443"
    );
    assert!(config(r).get("selinux").is_none());
}

#[test]
fn wireguard_backend_and_the_disable_and_leave_policies() {
    // firewalld on a server with flannel's WireGuard backend.
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    rocky(
        r,
        "  config:\n    flannel-backend: wireguard-native\n",
        true,
    );
    seed(r, "iid-wg", "#cloud-config\nhostname: s1\n");
    let sys = rocky_fake(r);
    run(&Root::new(r), &sys, &RunOptions::default()).unwrap();
    let calls = sys.command_calls();
    assert!(
        calls.contains(&"firewall-cmd --permanent --add-port=51820-51821/udp".to_owned()),
        "{calls:?}"
    );
    assert!(!calls.iter().any(|c| c.contains("8472")), "{calls:?}");

    // k3s.firewall: disable (from the metadata, over the image's open).
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    rocky(r, "", true);
    seed(
        r,
        "iid-disable",
        "#cloud-config\nhostname: s1\nk3s:\n  firewall: disable\n",
    );
    let sys = rocky_fake(r);
    let res = run(&Root::new(r), &sys, &RunOptions::default()).unwrap();
    assert!(res.finished);
    assert!(sys
        .systemctl_calls()
        .contains(&"disable --now firewalld.service".to_owned()));
    assert!(
        !sys.command_calls()
            .iter()
            .any(|c| c.starts_with("firewall-cmd")),
        "{:?}",
        sys.command_calls()
    );

    // firewall: leave (baked in the image): nothing changed, a warning.
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "  firewall: leave\n");
    write(r, "/usr/lib/os-release", UBUNTU);
    program(r, "/usr/sbin/ufw");
    write(r, "/etc/ufw/ufw.conf", "ENABLED=yes\n");
    seed(r, "iid-leave", "#cloud-config\nhostname: s1\n");
    let sys = fake_for(r);
    let res = run(&Root::new(r), &sys, &RunOptions::default()).unwrap();
    assert!(res.finished);
    assert!(sys.command_calls().is_empty(), "{:?}", sys.command_calls());
    assert!(
        res.warnings.iter().any(|w| w.starts_with("firewall: ufw is active and left alone (k3s.firewall: leave) — it must accept 6443/tcp")),
        "{:?}",
        res.warnings
    );

    // A bad value is refused where it is.
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "");
    seed(r, "iid-bad", "#cloud-config\nk3s:\n  firewall: off\n");
    let e = run_err(r, &fake_for(r));
    assert!(
        e.contains("user-data") && e.contains("firewall") && e.contains("open"),
        "{e}"
    );
}

#[test]
fn a_failing_firewall_command_fails_the_step_and_keeps_the_node_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    rocky(r, "", true);
    seed(r, "iid-fwfail", "#cloud-config\nhostname: s1\n");
    let mut sys = rocky_fake(r);
    sys.command_answers.insert(
        "firewall-cmd --reload".into(),
        CommandOutput {
            success: false,
            stdout: String::new(),
            stderr: "Error: COMMAND_FAILED: 'python-nftables' failed\n".into(),
        },
    );
    let e = run_err(r, &sys);
    assert!(
        e.contains(
            "step firewall failed: firewall: `firewall-cmd --reload` failed: Error: COMMAND_FAILED"
        ) && e.contains("k3s.firewall: disable"),
        "{e}"
    );
    assert!(!done(r) && !r.join("usr/local/bin/k3s").exists());
}

#[test]
fn debian_on_storage_without_overlayfs_falls_back_to_fuse_overlayfs_or_native() {
    // ZFS before 2.2 under the container's rootfs: the overlay mount fails.
    let zfs = "wrong fs type, bad option, bad superblock on overlay, missing codepage or helper program, or other error";
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "");
    write(r, "/usr/lib/os-release", DEBIAN);
    seed(r, "iid-zfs", "#cloud-config\nhostname: s1\n");
    let mut sys = fake_for(r);
    sys.overlay_error = Some(zfs.into());
    let res = run(&Root::new(r), &sys, &RunOptions::default()).unwrap();
    assert!(res.finished);
    assert_eq!(config(r)["snapshotter"], "native");
    let d = res.snapshotter.clone().unwrap();
    assert_eq!(d.snapshotter, "native");
    assert!(
        d.reason.contains("overlayfs does not work under /var/lib (where /var/lib/rancher/k3s/agent/containerd will be) (wrong fs type") && d.reason.ends_with("no /dev/fuse for fuse-overlayfs"),
        "{}",
        d.reason
    );
    // A later run (the readiness run) does not probe again.
    let mut sys2 = fake_for(r);
    sys2.overlay_error = None;
    run(&Root::new(r), &sys2, &RunOptions::default()).unwrap();
    assert!(!sys2
        .calls()
        .iter()
        .any(|c| matches!(c, Call::MountOverlay(_))));

    // With /dev/fuse and the program: fuse-overlayfs.
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "");
    write(r, "/usr/lib/os-release", DEBIAN);
    write(r, "/dev/fuse", "");
    program(r, "/usr/bin/fuse-overlayfs");
    seed(r, "iid-fuse", "#cloud-config\nhostname: s1\n");
    let mut sys = fake_for(r);
    sys.overlay_error = Some(zfs.into());
    run(&Root::new(r), &sys, &RunOptions::default()).unwrap();
    assert_eq!(config(r)["snapshotter"], "fuse-overlayfs");

    // An explicit snapshotter is kept and nothing is probed.
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "");
    seed(
        r,
        "iid-explicit",
        "#cloud-config\nhostname: s1\nk3s:\n  config:\n    snapshotter: stargz\n",
    );
    let mut sys = fake_for(r);
    sys.overlay_error = Some(zfs.into());
    let res = run(&Root::new(r), &sys, &RunOptions::default()).unwrap();
    assert_eq!(config(r)["snapshotter"], "stargz");
    assert!(!sys
        .calls()
        .iter()
        .any(|c| matches!(c, Call::MountOverlay(_))));
    assert!(res
        .snapshotter
        .unwrap()
        .reason
        .starts_with("set in the configuration"));
}

#[test]
fn check_reports_every_distro_line_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    rocky(r, "", false);
    seed(r, "iid-check", "#cloud-config\nhostname: s1\n");
    let sys = rocky_fake(r);
    let f = check(
        &Root::new(r),
        &sys,
        Duration::from_secs(1),
        &Default::default(),
    );
    let line = |what: &str| {
        f.iter()
            .find(|x| x.what == what)
            .unwrap_or_else(|| panic!("no {what} line: {f:#?}"))
    };
    assert_eq!(line("distribution").detail, "Rocky Linux 9.4 (Blue Onyx)");
    assert_eq!(line("selinux").level, Level::Fail);
    assert_eq!(line("apparmor").level, Level::Pass);
    let fw = line("firewall");
    assert_eq!(fw.level, Level::Warn);
    assert_eq!(fw.detail, "firewalld is active and does not accept 6443/tcp, 10250/tcp, 8472/udp, trusted 10.42.0.0/16, trusted 10.43.0.0/16");
    assert_eq!(line("nm-cloud-setup").level, Level::Warn);
    assert!(line("snapshotter").detail.starts_with("overlayfs"));
    // Only queries: the two list commands and systemctl's is-* questions.
    assert_eq!(
        sys.command_calls(),
        vec![
            "firewall-cmd --permanent --list-ports",
            "firewall-cmd --permanent --zone=trusted --list-sources"
        ]
    );
    assert!(
        sys.systemctl_calls().iter().all(|c| c.starts_with("is-")),
        "{:?}",
        sys.systemctl_calls()
    );
    assert!(!r.join("etc/rancher/k3s").exists());
    assert!(
        !r.join("var/lib/rancher").exists(),
        "the probe left a directory"
    );
}
