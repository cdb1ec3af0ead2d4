//! `firstboot-agent upgrade` and a newer pin in the metadata, on a node the
//! pipeline provisioned with the recording fake; releases served on
//! 127.0.0.1. What a failure must leave: the old binary, the old record, no
//! restart.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::path::Path;

use common::*;
use firstboot_agent::k3s::binary::{K3S_BIN, K3S_PREVIOUS};
use firstboot_agent::rootfs::Root;
use firstboot_agent::run::{run, RunOptions};
use firstboot_agent::state::State;
use firstboot_agent::system::{CommandOutput, FakeSystem};
use firstboot_agent::upgrade::{upgrade, UpgradeOptions};

const NEXT: &str = "v1.35.0+k3s1";
const NEXT_K3S: &[u8] = b"#!/bin/sh\necho fake k3s v1.35.0\n";
const OLDER: &str = "v1.33.6+k3s1";
const OLDER_K3S: &[u8] = b"#!/bin/sh\necho fake k3s v1.33.6\n";

/// `/rel/<version>/k3s` for each release, and a checksum list that lists
/// `listed` for it.
fn releases(list: &[(&str, &[u8], String)]) -> String {
    let mut routes = std::collections::HashMap::new();
    for (version, binary, listed) in list {
        let dir = format!("/rel/{}", version.replace('+', "%2B"));
        routes.insert(
            format!("{dir}/k3s"),
            Route {
                status: 200,
                body: binary.to_vec(),
                cut_first: 0,
            },
        );
        routes.insert(
            format!("{dir}/sha256sum-amd64.txt"),
            Route {
                status: 200,
                body: format!("{listed}  k3s\n").into_bytes(),
                cut_first: 0,
            },
        );
    }
    serve(routes).0
}

/// A node the pipeline finished: K3s VERSION from the image's baked binary,
/// started; its seed names `mirror`.
fn provisioned(dir: &Path, defaults_extra: &str, user_k3s: &str) -> FakeSystem {
    node_root(dir, defaults_extra);
    seed(dir, "i-1", &format!("#cloud-config\nk3s:\n{user_k3s}"));
    let sys = fake_for(dir);
    let res = run(&Root::new(dir), &sys, &RunOptions::default()).unwrap();
    assert!(res.finished, "{res:#?}");
    sys
}

/// [`provisioned`] with a seed that names `mirror`, in a temp dir.
fn node_with_mirror(mirror: &str) -> (tempfile::TempDir, Root, FakeSystem) {
    let dir = tempfile::tempdir().unwrap();
    let sys = provisioned(
        dir.path(),
        "",
        &format!("  token: t\n  mirror: {mirror}/rel\n"),
    );
    let root = Root::new(dir.path());
    (dir, root, sys)
}

fn opts(version: &str, sha: Option<&[u8]>) -> UpgradeOptions {
    UpgradeOptions {
        version: Some(version.parse().unwrap()),
        sha256: sha.map(|b| sha256_hex(b).parse().unwrap()),
        ..UpgradeOptions::default()
    }
}

fn restarts(sys: &FakeSystem) -> usize {
    sys.systemctl_calls()
        .iter()
        .filter(|c| c.starts_with("restart"))
        .count()
}

fn bin(dir: &Path, abs: &str) -> Option<Vec<u8>> {
    std::fs::read(dir.join(abs.trim_start_matches('/'))).ok()
}

#[test]
fn the_same_version_is_left_alone_and_not_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let sys = provisioned(dir.path(), "", "  token: t\n");
    let out = upgrade(&Root::new(dir.path()), &sys, &opts(VERSION, None)).unwrap();
    assert!(!out.changed && !out.restarted, "{out:?}");
    assert!(out.message.contains("installed already"), "{out:?}");
    assert_eq!(restarts(&sys), 0, "{:?}", sys.systemctl_calls());
    assert_eq!(bin(dir.path(), K3S_BIN).unwrap(), FAKE_K3S);
    assert!(bin(dir.path(), K3S_PREVIOUS).is_none());
}

#[test]
fn a_new_version_is_verified_installed_recorded_and_restarted_then_rolled_back() {
    let mirror = releases(&[(NEXT, NEXT_K3S, sha256_hex(NEXT_K3S))]);
    let (dir, root, sys) = node_with_mirror(&mirror);
    let out = upgrade(&root, &sys, &opts(NEXT, Some(NEXT_K3S))).unwrap();
    assert!(out.changed && out.restarted, "{out:?}");
    assert!(
        out.message.contains(&format!(
            "K3s {VERSION} → {NEXT}: downloaded from {mirror}/rel/"
        )),
        "{out:?}"
    );
    assert_eq!(bin(dir.path(), K3S_BIN).unwrap(), NEXT_K3S);
    assert_eq!(bin(dir.path(), K3S_PREVIOUS).unwrap(), FAKE_K3S);
    let calls = sys.systemctl_calls();
    assert!(
        calls.contains(&"restart k3s.service".to_owned()),
        "{calls:?}"
    );
    let state = State::load(&root).unwrap();
    let k = state.k3s.as_ref().unwrap();
    assert_eq!(
        (k.version.as_str(), k.sha256.as_str()),
        (NEXT, sha256_hex(NEXT_K3S).as_str())
    );
    let prev = state.k3s_previous.as_ref().unwrap();
    assert_eq!(prev.version, VERSION);
    assert_eq!(state.upgrades.len(), 1);
    assert_eq!(state.upgrades[0].by, "firstboot-agent upgrade");
    assert!(state.upgrades[0].restarted);

    // The same upgrade again: nothing to do, no restart.
    let before = restarts(&sys);
    let again = upgrade(&root, &sys, &opts(NEXT, Some(NEXT_K3S))).unwrap();
    assert!(!again.changed && !again.restarted, "{again:?}");
    assert_eq!(restarts(&sys), before);

    // Rolling back a minor upgrade is a downgrade across minors: refused
    // without --force, like any other.
    let rollback = UpgradeOptions {
        rollback: true,
        ..UpgradeOptions::default()
    };
    let e = upgrade(&root, &sys, &rollback).unwrap_err().to_string();
    assert!(e.contains("downgrade across minor versions"), "{e}");
    assert_eq!(bin(dir.path(), K3S_BIN).unwrap(), NEXT_K3S);
    // Forced: the old binary back, the new one kept in its place.
    let back = upgrade(
        &root,
        &sys,
        &UpgradeOptions {
            force: true,
            ..rollback
        },
    )
    .unwrap();
    assert!(back.changed && back.restarted, "{back:?}");
    assert_eq!((back.from.as_str(), back.to.as_str()), (NEXT, VERSION));
    assert_eq!(bin(dir.path(), K3S_BIN).unwrap(), FAKE_K3S);
    assert_eq!(bin(dir.path(), K3S_PREVIOUS).unwrap(), NEXT_K3S);
    assert_eq!(restarts(&sys), before + 1);
    let state = State::load(&root).unwrap();
    assert_eq!(state.k3s.as_ref().unwrap().version, VERSION);
    assert_eq!(state.k3s_previous.as_ref().unwrap().version, NEXT);
    assert_eq!(state.upgrades.len(), 2);
    assert_eq!(state.upgrades[1].by, "firstboot-agent upgrade --rollback");
}

#[test]
fn a_patch_upgrade_rolls_back_without_force() {
    const PATCH: &str = "v1.34.4+k3s1";
    const PATCH_K3S: &[u8] = b"#!/bin/sh\necho fake k3s v1.34.4\n";
    let mirror = releases(&[(PATCH, PATCH_K3S, sha256_hex(PATCH_K3S))]);
    let (dir, root, sys) = node_with_mirror(&mirror);
    upgrade(&root, &sys, &opts(PATCH, Some(PATCH_K3S))).unwrap();
    let back = upgrade(
        &root,
        &sys,
        &UpgradeOptions {
            rollback: true,
            ..UpgradeOptions::default()
        },
    )
    .unwrap();
    assert!(back.restarted, "{back:?}");
    assert_eq!(bin(dir.path(), K3S_BIN).unwrap(), FAKE_K3S);
    assert_eq!(bin(dir.path(), K3S_PREVIOUS).unwrap(), PATCH_K3S);
    // A kept binary changed since is not rolled back to.
    write(dir.path(), K3S_PREVIOUS, b"tampered");
    let e = upgrade(
        &root,
        &sys,
        &UpgradeOptions {
            rollback: true,
            ..UpgradeOptions::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("was changed since"), "{e}");
    assert_eq!(bin(dir.path(), K3S_BIN).unwrap(), FAKE_K3S);
}

#[test]
fn a_downgrade_across_minors_is_refused_unless_forced() {
    let mirror = releases(&[(OLDER, OLDER_K3S, sha256_hex(OLDER_K3S))]);
    let (dir, root, sys) = node_with_mirror(&mirror);
    let e = upgrade(&root, &sys, &opts(OLDER, Some(OLDER_K3S)))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!(
            "K3s {VERSION} → {OLDER} is a downgrade across minor versions"
        )) && e.contains("--force"),
        "{e}"
    );
    assert_eq!(bin(dir.path(), K3S_BIN).unwrap(), FAKE_K3S);
    assert!(bin(dir.path(), K3S_PREVIOUS).is_none());
    assert_eq!(restarts(&sys), 0);
    let forced = upgrade(
        &root,
        &sys,
        &UpgradeOptions {
            force: true,
            ..opts(OLDER, Some(OLDER_K3S))
        },
    )
    .unwrap();
    assert!(forced.changed, "{forced:?}");
    assert_eq!(bin(dir.path(), K3S_BIN).unwrap(), OLDER_K3S);
}

#[test]
fn a_wrong_sha256_is_refused_and_the_old_binary_kept() {
    let mirror = releases(&[(NEXT, NEXT_K3S, sha256_hex(NEXT_K3S))]);
    let (dir, root, sys) = node_with_mirror(&mirror);
    let before = State::load(&root).unwrap();
    let wrong = b"some other build";
    let e = upgrade(&root, &sys, &opts(NEXT, Some(wrong)))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("checksum mismatch")
            && e.contains(&sha256_hex(wrong))
            && e.contains("(given with --sha256)")
            && e.contains("nothing was installed"),
        "{e}"
    );
    assert_eq!(bin(dir.path(), K3S_BIN).unwrap(), FAKE_K3S);
    assert!(bin(dir.path(), K3S_PREVIOUS).is_none());
    assert_eq!(restarts(&sys), 0);
    assert_eq!(State::load(&root).unwrap(), before);

    // Without --sha256 a release other than the image's has no pin, and
    // this image does not trust the mirror's list: refused, too.
    let e = upgrade(&root, &sys, &opts(NEXT, None))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no sha256 is pinned for K3s v1.35.0+k3s1"),
        "{e}"
    );
    assert_eq!(bin(dir.path(), K3S_BIN).unwrap(), FAKE_K3S);
}

#[test]
fn with_trust_the_mirrors_list_is_used_and_a_wrong_entry_refused() {
    let mirror = releases(&[(NEXT, NEXT_K3S, sha256_hex(b"tampered"))]);
    let dir = tempfile::tempdir().unwrap();
    let root = Root::new(dir.path());
    let sys = provisioned(
        dir.path(),
        "  trust-mirror-checksums: true\n",
        &format!("  token: t\n  mirror: {mirror}/rel\n"),
    );
    let e = upgrade(&root, &sys, &opts(NEXT, None))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("checksum mismatch") && e.contains("sha256sum-amd64.txt"),
        "{e}"
    );
    assert_eq!(bin(dir.path(), K3S_BIN).unwrap(), FAKE_K3S);
}

#[test]
fn a_local_binary_is_verified_like_a_download() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::new(dir.path());
    let sys = provisioned(dir.path(), "", "  token: t\n");
    write(dir.path(), "/root/k3s-next", NEXT_K3S);
    let local = UpgradeOptions {
        binary: Some("/root/k3s-next".into()),
        ..opts(NEXT, Some(NEXT_K3S))
    };
    let out = upgrade(&root, &sys, &local).unwrap();
    assert!(out.message.contains("installed from"), "{out:?}");
    assert_eq!(bin(dir.path(), K3S_BIN).unwrap(), NEXT_K3S);
}

#[test]
fn a_server_drains_before_and_uncordons_after_and_an_agent_refuses() {
    let mirror = releases(&[(NEXT, NEXT_K3S, sha256_hex(NEXT_K3S))]);
    let (_dir, root, sys) = node_with_mirror(&mirror);
    let drained = UpgradeOptions {
        drain: Some("srv-1".into()),
        ..opts(NEXT, Some(NEXT_K3S))
    };
    upgrade(&root, &sys, &drained).unwrap();
    assert_eq!(
        sys.k3s_calls(),
        vec![
            "kubectl drain srv-1 --ignore-daemonsets --delete-emptydir-data --timeout=300s",
            "kubectl uncordon srv-1"
        ]
    );
    // The drain comes before the restart, the uncordon after it.
    let calls = format!("{:?}", sys.calls());
    let (d, r, u) = (
        calls.find("drain").unwrap(),
        calls.find("restart").unwrap(),
        calls.find("uncordon").unwrap(),
    );
    assert!(d < r && r < u, "{calls}");

    // A failed install leaves the node cordoned and says so.
    let (_dir2, root2, sys2) = node_with_mirror(&mirror);
    let bad = UpgradeOptions {
        drain: Some("srv-1".into()),
        ..opts(NEXT, Some(b"wrong"))
    };
    let e = format!("{:#}", upgrade(&root2, &sys2, &bad).unwrap_err());
    assert!(e.contains("srv-1 is still cordoned"), "{e}");
    assert_eq!(sys2.k3s_calls().len(), 1, "{:?}", sys2.k3s_calls());

    // A failed drain changes nothing.
    let (dir3, root3, mut sys3) = node_with_mirror(&mirror);
    sys3.k3s_answers.insert(
        "kubectl drain srv-1 --ignore-daemonsets --delete-emptydir-data --timeout=300s".into(),
        CommandOutput {
            success: false,
            stdout: String::new(),
            stderr: "error: cannot evict pod as it would violate the pod's disruption budget\n"
                .into(),
        },
    );
    let e = upgrade(&root3, &sys3, &drained).unwrap_err().to_string();
    assert!(e.contains("disruption budget"), "{e}");
    assert_eq!(bin(dir3.path(), K3S_BIN).unwrap(), FAKE_K3S);

    // An agent has no credentials to drain with.
    let dir4 = tempfile::tempdir().unwrap();
    let sys4 = provisioned(
        dir4.path(),
        "",
        "  role: agent\n  server: https://10.0.0.10:6443\n  token: t\n",
    );
    let e = upgrade(&Root::new(dir4.path()), &sys4, &drained)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("runs K3s as an agent") && e.contains("k3s kubectl drain srv-1"),
        "{e}"
    );
    assert!(sys4.k3s_calls().is_empty());
}

#[test]
fn a_binary_replaced_by_hand_is_asked_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::new(dir.path());
    let mut sys = provisioned(dir.path(), "", "  token: t\n");
    let by_hand = b"#!/bin/sh\necho k3s v1.34.1 from install.sh\n";
    write(dir.path(), K3S_BIN, by_hand);
    sys.k3s_versions
        .insert(sha256_hex(by_hand), "v1.34.1+k3s1".into());
    // The image's release: the baked binary, pinned in the defaults.
    let out = upgrade(&root, &sys, &opts(VERSION, None)).unwrap();
    assert_eq!(out.from, "v1.34.1+k3s1", "{out:?}");
    assert!(out.restarted, "{out:?}");
    assert_eq!(bin(dir.path(), K3S_BIN).unwrap(), FAKE_K3S);
    assert_eq!(bin(dir.path(), K3S_PREVIOUS).unwrap(), by_hand);
    assert_eq!(sys.k3s_calls(), vec!["--version"]);
}

#[test]
fn a_newer_pin_in_the_metadata_upgrades_on_the_next_run() {
    let mirror = releases(&[
        (NEXT, NEXT_K3S, sha256_hex(NEXT_K3S)),
        (OLDER, OLDER_K3S, sha256_hex(OLDER_K3S)),
    ]);
    let (dir, root, sys) = node_with_mirror(&mirror);
    // The operator writes the new pin into the seed and runs the agent.
    seed(
        dir.path(),
        "i-1",
        &format!(
            "#cloud-config\nk3s:\n  token: t\n  mirror: {mirror}/rel\n  version: {NEXT}\n  sha256: {}\n",
            sha256_hex(NEXT_K3S)
        ),
    );
    let res = run(&root, &sys, &RunOptions::default()).unwrap();
    assert!(res.finished, "{res:#?}");
    let step = |name: &str| res.steps.iter().find(|s| s.name == name).cloned();
    let binary = step("k3s-binary").unwrap();
    assert!(
        binary.message.contains(&format!("upgraded from {VERSION}")),
        "{binary:?}"
    );
    assert!(step("k3s-restart").is_some(), "{:#?}", res.steps);
    assert_eq!(bin(dir.path(), K3S_BIN).unwrap(), NEXT_K3S);
    assert_eq!(bin(dir.path(), K3S_PREVIOUS).unwrap(), FAKE_K3S);
    let state = State::load(&root).unwrap();
    assert_eq!(state.k3s.as_ref().unwrap().version, NEXT);
    assert_eq!(state.upgrades[0].by, "metadata k3s.version");

    // Run again: nothing more to do.
    let again = run(&root, &sys, &RunOptions::default()).unwrap();
    assert!(
        again
            .warnings
            .iter()
            .any(|w| w.contains("already finished")),
        "{again:#?}"
    );

    // A pin across minors back down is refused; the node keeps running
    // what it has and the next run tries again.
    seed(
        dir.path(),
        "i-1",
        &format!(
            "#cloud-config\nk3s:\n  token: t\n  mirror: {mirror}/rel\n  version: {OLDER}\n  sha256: {}\n",
            sha256_hex(OLDER_K3S)
        ),
    );
    let e = run(&root, &sys, &RunOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("step k3s-binary failed") && e.contains("downgrade across minor versions"),
        "{e}"
    );
    assert_eq!(bin(dir.path(), K3S_BIN).unwrap(), NEXT_K3S);
    assert_eq!(State::load(&root).unwrap().k3s.unwrap().version, NEXT);
}

#[test]
fn check_fails_a_release_without_a_pin_the_image_would_not_trust() {
    let dir = tempfile::tempdir().unwrap();
    node_root(dir.path(), "");
    seed(
        dir.path(),
        "i-1",
        &format!("#cloud-config\nk3s:\n  token: t\n  version: {NEXT}\n"),
    );
    let root = Root::new(dir.path());
    let findings = firstboot_agent::run::check(
        &root,
        &fake_for(dir.path()),
        std::time::Duration::from_secs(5),
        &Default::default(),
    );
    let f = findings
        .iter()
        .find(|f| f.what == "k3s binary")
        .unwrap_or_else(|| panic!("{findings:#?}"));
    assert_eq!(f.level, firstboot_agent::checks::Level::Fail, "{f:?}");
    assert!(
        f.to_string()
            .contains("no sha256 is pinned for K3s v1.35.0+k3s1"),
        "{f}"
    );
    // With the digest in the user-data it passes.
    seed(
        dir.path(),
        "i-1",
        &format!(
            "#cloud-config\nk3s:\n  token: t\n  version: {NEXT}\n  sha256: {}\n",
            sha256_hex(NEXT_K3S)
        ),
    );
    let findings = firstboot_agent::run::check(
        &root,
        &fake_for(dir.path()),
        std::time::Duration::from_secs(5),
        &Default::default(),
    );
    let f = findings.iter().find(|f| f.what == "k3s binary").unwrap();
    assert_eq!(f.level, firstboot_agent::checks::Level::Pass, "{f:?}");
}
