//! The ssh-keys step through the whole `run` pipeline, with the recording
//! fake and temp roots: keys from a Proxmox-shaped seed installed with the
//! right modes and owners, the sshd drop-in, re-runs that change nothing,
//! keys pct wrote already, accounts the node does not have, bad keys
//! refused before anything changes, and nodes with cloud-init left alone.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;
use firstboot_agent::rootfs::Root;
use firstboot_agent::run::{run, RunOptions};
use firstboot_agent::ssh::{SSHD_DROPIN, SSHD_DROPIN_TEXT, SSHD_TMPFILES};
use firstboot_agent::state::{RunResult, State, StepStatus};
use firstboot_agent::system::{CommandOutput, FakeSystem};

/// Debian 12's sshd_config, the parts that matter.
const DEBIAN_SSHD_CONFIG: &str = "Include /etc/ssh/sshd_config.d/*.conf\n#PermitRootLogin prohibit-password\n#PasswordAuthentication yes\nKbdInteractiveAuthentication no\nUsePAM yes\n";

/// A node without cloud-init (an LXC template) with sshd, root and `ops`.
fn login_node(r: &Path) {
    node_root(r, "");
    write(
        r,
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\nsshd:x:100:65534::/run/sshd:/usr/sbin/nologin\nops:x:1001:1002:Ops:/home/ops:/bin/bash\n",
    );
    std::fs::create_dir_all(r.join("root")).unwrap();
    std::fs::create_dir_all(r.join("home/ops")).unwrap();
    write(r, "/etc/ssh/sshd_config", DEBIAN_SSHD_CONFIG);
    std::fs::create_dir_all(r.join("etc/ssh/sshd_config.d")).unwrap();
}

/// user-data as Proxmox writes it (qemu-server Cloudinit.pm
/// `cloudinit_userdata`, no ciuser), plus a second account.
fn proxmox_user_data(extra_users: &str) -> String {
    format!(
        "#cloud-config\nhostname: n1\nmanage_etc_hosts: true\nfqdn: n1.lan\nssh_authorized_keys:\n  - {SSH_KEY}\nchpasswd:\n  expire: False\nusers:\n  - default\n{extra_users}package_upgrade: true\n"
    )
}

const OPS: &str = "  - name: ops\n    ssh_authorized_keys:\n      - ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBJ45pw6UbK9ATIK4hGoNep13smYJSnnW1rRNmR8CjGpRGh1d8yvUzjmlthvz++EbzPogbHVlaC1KXP/+GUAphMA= ops\n";

fn meta(r: &Path, abs: &str) -> std::fs::Metadata {
    std::fs::symlink_metadata(r.join(abs.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("{abs}: {e}"))
}

fn step<'a>(res: &'a RunResult, name: &str) -> &'a firstboot_agent::state::StepResult {
    res.steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step {name}: {res:?}"))
}

fn am_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn keys_are_installed_with_modes_and_owners_and_passwords_are_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    login_node(r);
    seed(r, "i1", &proxmox_user_data(OPS));
    let mut sys = fake_for(r);
    sys.systemctl_answers
        .insert("is-active ssh.socket".into(), inactive());
    let res = run(&Root::new(r), &sys, &RunOptions::default()).unwrap();
    assert!(res.finished, "{res:?}");

    let root_keys = read(r, "/root/.ssh/authorized_keys");
    assert_eq!(
        root_keys,
        format!("# --- BEGIN firstboot-agent ---\n{SSH_KEY}\n# --- END firstboot-agent ---\n")
    );
    assert!(read(r, "/home/ops/.ssh/authorized_keys").contains(SSH_KEY_2));
    assert!(!read(r, "/home/ops/.ssh/authorized_keys").contains(SSH_KEY));
    for (path, mode, owner) in [
        ("/root/.ssh", 0o700, (0, 0)),
        ("/root/.ssh/authorized_keys", 0o600, (0, 0)),
        ("/home/ops/.ssh", 0o700, (1001, 1002)),
        ("/home/ops/.ssh/authorized_keys", 0o600, (1001, 1002)),
    ] {
        let m = meta(r, path);
        assert_eq!(m.permissions().mode() & 0o7777, mode, "{path}");
        if am_root() {
            assert_eq!((m.uid(), m.gid()), owner, "{path}");
        }
    }
    assert_eq!(read(r, SSHD_DROPIN), SSHD_DROPIN_TEXT);
    assert!(SSHD_DROPIN_TEXT.contains("PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"));
    assert_eq!(meta(r, SSHD_DROPIN).permissions().mode() & 0o777, 0o644);
    assert!(read(r, SSHD_TMPFILES).contains("\nd /run/sshd 0755 root root -\n"));
    // /run is the running system's: not made under a test root.
    assert!(!r.join("run/sshd").exists());
    // Host keys are pct's and sshd's business.
    let ssh_dir: Vec<_> = std::fs::read_dir(r.join("etc/ssh"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !ssh_dir.iter().any(|n| n.starts_with("ssh_host_")),
        "{ssh_dir:?}"
    );
    // The running sshd reloads, without waiting on it.
    let calls = sys.systemctl_calls();
    assert_eq!(
        &calls[..3],
        [
            "is-active ssh.service",
            "is-active ssh.socket",
            "reload-or-restart --no-block ssh.service"
        ],
        "{calls:?}"
    );
    let s = step(&res, "ssh-keys");
    assert_eq!(s.status, StepStatus::Done);
    assert_eq!(
        s.message,
        format!("root: 1 key in /root/.ssh/authorized_keys (written); ops: 1 key in /home/ops/.ssh/authorized_keys (written); password log-in over SSH off ({SSHD_DROPIN} written); ssh.service reloaded")
    );
    assert!(
        !res.warnings.iter().any(|w| w.starts_with("ssh-keys")),
        "{:?}",
        res.warnings
    );
    // Right after the host name, before anything that can fail on the network.
    let names: Vec<&str> = res.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(&names[..3], ["metadata", "hostname", "ssh-keys"]);
}

fn inactive() -> CommandOutput {
    CommandOutput {
        success: false,
        stdout: "inactive\n".into(),
        stderr: String::new(),
    }
}

/// A container pct made from a Debian 12 template runs sshd socket-activated
/// (systemd's first-boot preset enables ssh.socket): sshd cannot reload
/// there — it re-executes and binds its port, which systemd holds — so it
/// is restarted. Where sshd is not running, nothing is asked of it.
#[test]
fn a_socket_activated_sshd_is_restarted_and_a_stopped_one_left() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    login_node(r);
    seed(r, "i1", &proxmox_user_data(""));
    let sys = fake_for(r); // every unit answers "active", ssh.socket too
    let res = run(&Root::new(r), &sys, &RunOptions::default()).unwrap();
    assert_eq!(
        &sys.systemctl_calls()[..3],
        [
            "is-active ssh.service",
            "is-active ssh.socket",
            "restart --no-block ssh.service"
        ]
    );
    assert!(step(&res, "ssh-keys")
        .message
        .ends_with("; ssh.service restarted (its socket is systemd's, so it cannot reload)"));

    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    login_node(r);
    seed(r, "i1", &proxmox_user_data(""));
    let mut sys = fake_for(r);
    for unit in ["ssh.service", "sshd.service"] {
        sys.systemctl_answers
            .insert(format!("is-active {unit}"), inactive());
    }
    let res = run(&Root::new(r), &sys, &RunOptions::default()).unwrap();
    let ssh_calls: Vec<String> = sys
        .systemctl_calls()
        .into_iter()
        .filter(|c| c.contains("ssh"))
        .collect();
    assert_eq!(
        ssh_calls,
        ["is-active ssh.service", "is-active sshd.service"]
    );
    assert!(step(&res, "ssh-keys")
        .message
        .ends_with("; sshd is not running, it reads the drop-in when it starts"));
}

#[test]
fn a_rerun_changes_nothing_and_keys_already_there_are_not_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    login_node(r);
    // pct create --ssh-public-keys wrote the same key, and the admin one of
    // their own.
    let pct = format!("# --- BEGIN PVE ---\n{SSH_KEY}\n# --- END PVE ---\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMSe6fnXHA+Ez8+8Q/cvxjhSYVRr4DP7GoOk+9nL6cLd by-hand\n");
    write(r, "/root/.ssh/authorized_keys", &pct);
    std::fs::set_permissions(
        r.join("root/.ssh/authorized_keys"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    // A worker whose server is not up yet: the run stops at the network
    // step, after the keys, and is retried.
    seed(
        r,
        "i1",
        &format!(
            "{}k3s:\n  role: agent\n  server: https://cp.lan:6443\n  token: {TOKEN}\n",
            proxmox_user_data(OPS)
        ),
    );
    let mut sys = fake_for(r);
    sys.refuse_all_tcp = true;
    run(&Root::new(r), &sys, &RunOptions::default()).unwrap_err();
    assert_eq!(
        read(r, "/root/.ssh/authorized_keys"),
        pct,
        "pct's key is not added again"
    );
    assert_eq!(
        meta(r, "/root/.ssh/authorized_keys").permissions().mode() & 0o777,
        0o600
    );
    let first = [
        read(r, "/home/ops/.ssh/authorized_keys"),
        read(r, SSHD_DROPIN),
    ];
    let inodes = [
        meta(r, "/home/ops/.ssh/authorized_keys").ino(),
        meta(r, SSHD_DROPIN).ino(),
    ];

    // The retry: the same files, no second reload.
    let sys = fake_for(r);
    let res = run(&Root::new(r), &sys, &RunOptions::default()).unwrap();
    assert!(res.finished);
    assert_eq!(read(r, "/root/.ssh/authorized_keys"), pct);
    assert_eq!(
        [
            read(r, "/home/ops/.ssh/authorized_keys"),
            read(r, SSHD_DROPIN)
        ],
        first
    );
    assert_eq!(
        [
            meta(r, "/home/ops/.ssh/authorized_keys").ino(),
            meta(r, SSHD_DROPIN).ino()
        ],
        inodes,
        "files were rewritten"
    );
    assert!(
        !sys.systemctl_calls()
            .iter()
            .any(|c| c.contains("ssh.service")),
        "{:?}",
        sys.systemctl_calls()
    );
    assert_eq!(
        step(&res, "ssh-keys").message,
        format!("root: 1 key in /root/.ssh/authorized_keys (unchanged, 1 there already); ops: 1 key in /home/ops/.ssh/authorized_keys (unchanged); password log-in over SSH off ({SSHD_DROPIN} unchanged)")
    );

    // A key dropped from the seed leaves the agent's block; pct's stay.
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    login_node(r);
    seed(r, "i2", &format!("#cloud-config\nssh_authorized_keys: [\"{SSH_KEY}\", \"{SSH_KEY_2}\"]\nk3s:\n  network-timeout-secs: 1\n  server: https://cp.lan:6443\n  token: {TOKEN}\n"));
    let mut sys = fake_for(r);
    sys.refuse_all_tcp = true;
    run(&Root::new(r), &sys, &RunOptions::default()).unwrap_err();
    assert!(read(r, "/root/.ssh/authorized_keys").contains(SSH_KEY_2));
    seed(
        r,
        "i2",
        &format!("#cloud-config\nssh_authorized_keys: [\"{SSH_KEY}\"]\n"),
    );
    run(&Root::new(r), &fake_for(r), &RunOptions::default()).unwrap();
    assert_eq!(
        read(r, "/root/.ssh/authorized_keys"),
        format!("# --- BEGIN firstboot-agent ---\n{SSH_KEY}\n# --- END firstboot-agent ---\n")
    );
}

#[test]
fn an_account_the_node_lacks_gets_nothing_and_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    login_node(r);
    // Proxmox with `ciuser admin`: `user: admin`; the template has no admin.
    seed(
        r,
        "i1",
        &format!("#cloud-config\nuser: admin\nssh_authorized_keys:\n  - {SSH_KEY}\nusers:\n  - default\n"),
    );
    let sys = fake_for(r);
    let res = run(&Root::new(r), &sys, &RunOptions::default()).unwrap();
    assert!(res.finished, "a missing account does not stop K3s");
    assert!(
        res.warnings.iter().any(|w| w.starts_with(
            "ssh-keys: user admin (ssh_authorized_keys) does not exist on this node, so its key was not installed"
        ) && w.contains("does not create accounts")),
        "{:?}",
        res.warnings
    );
    assert!(!r.join("home/admin").exists() && !r.join("root/.ssh").exists());
    assert!(
        !r.join(SSHD_DROPIN.trim_start_matches('/')).exists(),
        "no key in place, so passwords stay on"
    );
    assert_eq!(
        step(&res, "ssh-keys").message,
        "no key installed; sshd left as it is"
    );
    // The passwd line the node does have is used, without useradd.
    assert!(sys.systemctl_calls().iter().all(|c| !c.contains("ssh")));
}

#[test]
fn bad_keys_are_refused_before_anything_changes() {
    for (user_data, expect) in [
        (
            "#cloud-config\nhostname: n1\nssh_authorized_keys:\n  - ssh-rsa AAAAB3NzaC1yc2E\n".to_owned(),
            "/var/lib/cloud/seed/nocloud/user-data:3: ssh_authorized_keys[0]: \"ssh-rsa AAAAB3NzaC1yc2E\": the key data after ssh-rsa is not base64",
        ),
        (
            format!("#cloud-config\nssh_authorized_keys:\n  - \"{SSH_KEY}\\nssh-ed25519 AAAA\"\n"),
            "user-data:2: ssh_authorized_keys[0]: ",
        ),
        (
            "#cloud-config\nssh_authorized_keys: ssh-ed25519 AAAA\n".to_owned(),
            "user-data:2: ssh_authorized_keys: expected a list of keys",
        ),
        (
            "#cloud-config\nusers:\n  - default\n  - name: ops\n    ssh_authorized_keys: [\"my key\"]\n".to_owned(),
            "user-data:2: users[1].ssh_authorized_keys[0]: \"my key\" starts with \"my\", not a key type sshd knows",
        ),
        (
            "#cloud-config\nssh_authorized_keys: [\"ssh-dss AAAAB3NzaC1kc3M= old\"]\n".to_owned(),
            "is a DSA key, which OpenSSH no longer accepts",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        login_node(r);
        seed(r, "i1", &user_data);
        let sys = fake_for(r);
        let e = run_err(r, &sys);
        assert!(e.contains("step metadata failed") && e.contains(expect), "{user_data:?}:\n{e}");
        assert!(e.contains(" — "), "says what to do: {e}");
        assert!(sys.calls().is_empty(), "{:?}", sys.calls());
        assert!(!r.join("root/.ssh").exists() && !r.join("etc/hostname").exists());
        let state = State::load(&Root::new(r)).unwrap();
        assert_eq!(state.steps["metadata"].status, StepStatus::Failed);
    }
}

#[test]
fn with_cloud_init_installed_keys_and_sshd_are_left_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    login_node(r);
    write(r, "/usr/bin/cloud-init", "#!/usr/bin/python3\n");
    write(
        r,
        "/etc/ssh/sshd_config.d/50-cloud-init.conf",
        "PasswordAuthentication yes\n",
    );
    // Even a key the agent would refuse is cloud-init's to judge.
    seed(
        r,
        "i1",
        &proxmox_user_data("  - name: ops\n    ssh_authorized_keys: [\"not a key\"]\n"),
    );
    let sys = fake_for(r);
    let res = run(&Root::new(r), &sys, &RunOptions::default()).unwrap();
    assert!(res.finished);
    assert_eq!(
        step(&res, "ssh-keys").message,
        "left to cloud-init (/usr/bin/cloud-init is installed): it installs ssh_authorized_keys and configures sshd"
    );
    assert!(!r.join("root/.ssh").exists() && !r.join("home/ops/.ssh").exists());
    assert!(!r.join(SSHD_DROPIN.trim_start_matches('/')).exists());
    assert!(!r.join(SSHD_TMPFILES.trim_start_matches('/')).exists());
    assert!(sys.systemctl_calls().iter().all(|c| !c.contains("ssh")));

    // Switched off, it does nothing: the agent does the keys.
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    login_node(r);
    write(r, "/usr/bin/cloud-init", "#!/usr/bin/python3\n");
    write(r, "/etc/cloud/cloud-init.disabled", "");
    seed(r, "i1", &proxmox_user_data(""));
    let res = run(&Root::new(r), &fake_for(r), &RunOptions::default()).unwrap();
    assert!(step(&res, "ssh-keys").message.starts_with(
        "cloud-init is installed (/usr/bin/cloud-init) but switched off by /etc/cloud/cloud-init.disabled; root: 1 key"
    ), "{}", step(&res, "ssh-keys").message);
    assert!(read(r, "/root/.ssh/authorized_keys").contains(SSH_KEY));
}

#[test]
fn no_keys_in_the_seed_changes_nothing_about_ssh() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    login_node(r);
    seed(r, "i1", "#cloud-config\nhostname: n1\n");
    let sys = fake_for(r);
    let res = run(&Root::new(r), &sys, &RunOptions::default()).unwrap();
    assert_eq!(
        step(&res, "ssh-keys").message,
        "no ssh_authorized_keys in the metadata; sshd left as it is"
    );
    assert!(!r.join("root/.ssh").exists());
    assert!(!r.join(SSHD_DROPIN.trim_start_matches('/')).exists());
}

#[test]
fn a_setting_that_overrides_the_drop_in_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    login_node(r);
    write(
        r,
        "/etc/ssh/sshd_config.d/10-local.conf",
        "PasswordAuthentication yes\n",
    );
    seed(r, "i1", &proxmox_user_data(""));
    let res = run(&Root::new(r), &fake_for(r), &RunOptions::default()).unwrap();
    assert!(
        res.warnings.iter().any(|w| w.contains(
            "/etc/ssh/sshd_config.d/10-local.conf:1 sets passwordauthentication yes, and sshd keeps that first value"
        )),
        "{:?}",
        res.warnings
    );
    // Without sshd the keys are still placed, and the drop-in is not.
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    login_node(r);
    std::fs::remove_dir_all(r.join("etc/ssh")).unwrap();
    seed(r, "i1", &proxmox_user_data(""));
    let res = run(&Root::new(r), &fake_for(r), &RunOptions::default()).unwrap();
    assert!(read(r, "/root/.ssh/authorized_keys").contains(SSH_KEY));
    assert!(!r.join("etc/ssh").exists());
    assert!(
        res.warnings
            .iter()
            .any(|w| w.contains("no SSH server is installed")),
        "{:?}",
        res.warnings
    );
}

#[test]
fn links_in_the_way_are_not_written_through() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    login_node(r);
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, r.join("root/.ssh")).unwrap();
    seed(r, "i1", &proxmox_user_data(""));
    let res = run(
        &Root::new(r),
        &FakeSystem::new(),
        &RunOptions {
            no_wait: true,
            ..RunOptions::default()
        },
    )
    .unwrap();
    assert!(
        res.warnings.iter().any(|w| w.contains(
            "/root/.ssh is a symbolic link; firstboot-agent does not write through links"
        )),
        "{:?}",
        res.warnings
    );
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
}
