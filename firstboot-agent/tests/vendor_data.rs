//! vendor-data through the whole `run` pipeline, with the recording fake
//! and temp roots: layered under user-data (user-data wins key by key,
//! lists replaced), switched off by `vendor_data: {enabled: false}`, read
//! from a cidata volume as Proxmox writes one, a token in it kept as
//! secret as one in user-data, and bad vendor-data refused naming the file.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use firstboot_agent::rootfs::Root;
use firstboot_agent::run::{run, RunOptions};
use firstboot_agent::state::{RunResult, State, StepStatus};

const VD: &str = "/var/lib/cloud/seed/nocloud/vendor-data";
const UD: &str = "/var/lib/cloud/seed/nocloud/user-data";

fn result(r: &std::path::Path) -> RunResult {
    serde_json::from_str(&read(r, "/var/lib/firstboot-agent/result.json")).unwrap()
}

fn yaml(text: &str) -> serde_yaml::Value {
    serde_yaml::from_str(text).unwrap()
}

#[test]
fn vendor_data_is_layered_under_user_data() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "  config:\n    node-label: [pool=default]\n");
    // What a Proxmox user puts in `cicustom vendor=local:snippets/k3s.yaml`:
    // the cluster settings shared by every worker; Proxmox's own user-data
    // still names the node.
    seed_with_vendor(
        r,
        "i1",
        "#cloud-config\nhostname: worker-7\nmanage_etc_hosts: true\nfqdn: worker-7.lan\nk3s:\n  node-label: [zone=a]\n  config:\n    disable: [traefik]\n",
        &format!(
            "#cloud-config\nhostname: from-vendor\nk3s:\n  role: agent\n  server: https://10.0.0.10:6443\n  token: {TOKEN}\n  node-label: [zone=v, tier=v]\n  config:\n    disable: [servicelb]\n    node-ip: 10.0.0.7\n"
        ),
    );
    let sys = fake_for(r);
    let res = run(&Root::new(r), &sys, &RunOptions::default()).unwrap();
    assert!(res.finished, "{res:?}");
    assert_eq!(res.role.as_deref(), Some("agent"));
    assert_eq!(res.topology.as_deref(), Some("agent"));
    assert_eq!(
        read(r, "/etc/hostname"),
        "worker-7\n",
        "user-data's hostname wins"
    );

    let config = yaml(&read(r, "/etc/rancher/k3s/config.yaml"));
    assert_eq!(config["server"], yaml("https://10.0.0.10:6443"));
    // Lists are replaced, not appended: user-data's labels, not vendor-data's
    // (the image's defaults are added as always).
    assert_eq!(config["node-label"], yaml("[pool=default, zone=a]"));
    // k3s.config merged key by key.
    assert_eq!(config["disable"], yaml("[traefik]"));
    assert_eq!(config["node-ip"], yaml("10.0.0.7"));
    // The token from vendor-data: in the 0600 env file only.
    let env = "/etc/systemd/system/k3s-agent.service.env";
    assert_eq!(read(r, env), format!("K3S_TOKEN='{TOKEN}'\n"));
    let mode = std::fs::metadata(r.join(env.trim_start_matches('/')))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!read(r, "/etc/rancher/k3s/config.yaml").contains("s3cret"));

    // result.json says what came from where.
    let saved = result(r);
    assert_eq!(
        saved.vendor_data.as_deref(),
        Some(format!("{VD} merged under user-data").as_str())
    );
    let from = &saved.k3s_settings_from;
    assert_eq!(from["k3s.role"], format!("{VD}:4"));
    assert_eq!(from["k3s.server"], format!("{VD}:5"));
    assert_eq!(from["k3s.token"], format!("{VD}:6"));
    assert_eq!(from["k3s.node-label"], format!("{UD}:6"));
    assert_eq!(from["k3s.config.disable"], format!("{UD}:7"));
    assert_eq!(from["k3s.config.node-ip"], format!("{VD}:8"));
    assert!(
        !read(r, "/var/lib/firstboot-agent/result.json").contains("s3cret"),
        "the token is not in result.json"
    );
    let meta = res.steps.iter().find(|s| s.name == "metadata").unwrap();
    assert!(
        meta.message
            .ends_with(&format!("; vendor-data: {VD} merged under user-data")),
        "{}",
        meta.message
    );
}

#[test]
fn vendor_data_switched_off_in_user_data_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "");
    // Broken, and still harmless: cloud-init would not read it either.
    seed_with_vendor(
        r,
        "i1",
        "#cloud-config\nhostname: s1\nvendor_data: {enabled: false}\n",
        "#cloud-config\nk3s: [\nrole: agent\n",
    );
    let res = run(&Root::new(r), &fake_for(r), &RunOptions::default()).unwrap();
    assert!(res.finished);
    assert_eq!(res.role.as_deref(), Some("server"));
    assert_eq!(
        result(r).vendor_data.as_deref(),
        Some(format!("{VD} not read: vendor_data is switched off at {UD}:3").as_str())
    );
    assert!(result(r).k3s_settings_from.is_empty());

    // The same vendor-data, switched on: refused, naming the file.
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "");
    seed_with_vendor(
        r,
        "i1",
        "#cloud-config\nhostname: s1\nvendor_data: {enabled: true}\n",
        "#cloud-config\nk3s: [\nrole: agent\n",
    );
    let e = run_err(r, &fake_for(r));
    assert!(e.contains(&format!("{VD}:")), "{e}");
}

#[test]
fn an_empty_vendor_data_file_as_proxmox_writes_it_is_fine() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "");
    seed_with_vendor(r, "i1", "#cloud-config\nhostname: s1\n", "");
    let res = run(&Root::new(r), &fake_for(r), &RunOptions::default()).unwrap();
    assert!(res.finished);
    assert_eq!(
        result(r).vendor_data.as_deref(),
        Some(format!("{VD} is empty").as_str())
    );
    // And without the file, nothing is said about it.
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "");
    seed(r, "i1", "#cloud-config\n");
    run(&Root::new(r), &fake_for(r), &RunOptions::default()).unwrap();
    assert_eq!(result(r).vendor_data, None);
    assert!(!read(r, "/var/lib/firstboot-agent/result.json").contains("vendor-data"));
}

#[test]
fn bad_vendor_data_is_refused_naming_the_file_and_changes_nothing() {
    for (vendor_data, expect) in [
        (
            "#cloud-config\nk3s:\n  role: worker\n".to_owned(),
            format!("{VD}:3:"),
        ),
        (
            "k3s:\n  role: agent\n".to_owned(),
            format!("{VD}:1: vendor-data does not start with `#cloud-config`"),
        ),
        (
            "#cloud-boothook\necho\n".to_owned(),
            format!("{VD}:1: vendor-data type `#cloud-boothook` is not supported"),
        ),
        (
            "#cloud-config\nk3s:\n  role: agent\n  server: https://a:6443\n  token: K10abc::x\n"
                .to_owned(),
            format!("{VD}:5: k3s.token: the token starts with K10"),
        ),
        (
            "#cloud-config\nk3s:\n  config:\n    token: x\n".to_owned(),
            format!("{VD}:3: k3s.config: `token` has its own field"),
        ),
        (
            "#cloud-config\nk3s:\n  node-name: \"w\\n1\"\n".to_owned(),
            format!("{VD}:3: k3s.node-name: contains a newline"),
        ),
        (
            "#cloud-config\nhostname: bad_name\n".to_owned(),
            format!("{VD}: hostname: \"bad_name\" is not a valid host name"),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        node_root(r, "");
        seed_with_vendor(r, "i1", "#cloud-config\n", &vendor_data);
        let sys = fake_for(r);
        let e = run_err(r, &sys);
        assert!(
            e.contains(&expect),
            "{vendor_data:?}:\n{e}\nexpected {expect}"
        );
        assert!(!e.contains("K10abc"), "token leaked: {e}");
        assert!(sys.calls().is_empty(), "{:?}", sys.calls());
        assert!(!r.join("etc/rancher").exists() && !r.join("etc/hostname").exists());
        let state = State::load(&Root::new(r)).unwrap();
        assert_eq!(state.steps["metadata"].status, StepStatus::Failed);
    }
}

#[test]
fn a_token_file_named_in_vendor_data_follows_the_same_rules() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "");
    write(r, "/etc/k3s-token", format!("{TOKEN}\n"));
    let token = r.join("etc/k3s-token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    seed_with_vendor(
        r,
        "i1",
        "#cloud-config\nhostname: w1\n",
        "#cloud-config\nk3s:\n  role: agent\n  server: https://10.0.0.10:6443\n  token-file: /etc/k3s-token\n",
    );
    let e = run_err(r, &fake_for(r));
    assert!(
        e.contains(&format!(
            "{VD}:5: k3s.token-file: /etc/k3s-token has mode 0644 (group can read, others can read)"
        )) && e.contains("chmod 0600 /etc/k3s-token"),
        "{e}"
    );
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let res = run(&Root::new(r), &fake_for(r), &RunOptions::default()).unwrap();
    assert!(res.finished);
    assert!(read(r, "/etc/rancher/k3s/config.yaml").contains("token-file: /etc/k3s-token"));
}

#[test]
fn vendor_data_on_a_cidata_volume_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "");
    std::fs::create_dir_all(r.join("root")).unwrap();
    // A Proxmox cloud-init drive: user-data from the VM's settings, the
    // vendor-data snippet, network-config, meta-data with a sha1 id.
    std::fs::create_dir_all(r.join("sys/class/block/sr0")).unwrap();
    let mut head = vec![0u8; 17 * 2048];
    head[16 * 2048] = 1;
    head[16 * 2048 + 1..16 * 2048 + 6].copy_from_slice(b"CD001");
    let mut label = [b' '; 32];
    label[..6].copy_from_slice(b"cidata");
    head[16 * 2048 + 40..16 * 2048 + 72].copy_from_slice(&label);
    write(r, "/dev/sr0", &head);
    let mut sys = fake_for(r);
    let dev = std::fs::canonicalize(r.join("dev/sr0")).unwrap();
    sys.volume_files.insert(
        dev,
        vec![
            ("meta-data".into(), "instance-id: 5f1d8c4ea8c3b4a1e1d2c3b4a5f6e7d8c9b0a1f2\n".into()),
            (
                "user-data".into(),
                format!("#cloud-config\nhostname: vm-9\nmanage_etc_hosts: true\nfqdn: vm-9\nssh_authorized_keys:\n  - {SSH_KEY}\nchpasswd:\n  expire: False\nusers:\n  - default\npackage_upgrade: true\n"),
            ),
            (
                "vendor-data".into(),
                "#cloud-config\nk3s:\n  role: agent\n  server: https://10.0.0.10:6443\n  token: simple-secret\n".into(),
            ),
            ("network-config".into(), "version: 1\nconfig: []\n".into()),
        ],
    );
    let res = run(&Root::new(r), &sys, &RunOptions::default()).unwrap();
    assert!(res.finished, "{res:?}");
    assert_eq!(res.role.as_deref(), Some("agent"));
    assert_eq!(read(r, "/etc/hostname"), "vm-9\n");
    let from = &result(r).k3s_settings_from;
    assert_eq!(from["k3s.token"], "/dev/sr0:/vendor-data:5");
    // No cloud-init in this root: the agent installs Proxmox's key.
    assert!(read(r, "/root/.ssh/authorized_keys").contains(SSH_KEY));
}
