//! Integration: bad input gives one clear message and leaves no artifact.
//! Uses a small generated base, so it needs neither network nor mmdebstrap.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A tiny rootfs tarball with the members `pct create` looks for.
fn make_base(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    for d in [
        "sbin", "etc/ssh", "usr/lib", "var/log", "bin", "lib", "tmp", "root", "home", "srv",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(
        root.join("usr/lib/os-release"),
        "ID=debian\nVERSION_ID=\"12\"\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("../usr/lib/os-release", root.join("etc/os-release")).unwrap();
    std::fs::write(root.join("etc/ssh/ssh_host_rsa_key"), "secret").unwrap();
    std::fs::write(
        root.join("etc/machine-id"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    std::fs::write(root.join("var/log/dpkg.log"), "log").unwrap();
    let tarball = dir.join("base.tar.gz");
    let o = Command::new("tar")
        .arg("czf")
        .arg(&tarball)
        .args(["--numeric-owner", "-C"])
        .arg(&root)
        .arg(".")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    tarball
}

fn write_recipe(dir: &Path, tarball: &Path, sha256: Option<&str>) -> PathBuf {
    let mut s = format!(
        "name: tiny\ndistro: debian\nrelease: \"12\"\nlxc:\n  tarball:\n    path: {}\n",
        tarball.display()
    );
    if let Some(d) = sha256 {
        s.push_str(&format!("    sha256: {d}\n"));
    }
    let p = dir.join("tiny.yaml");
    std::fs::write(&p, s).unwrap();
    p
}

fn build(dir: &Path, recipe: &Path, out: &Path) -> std::process::Output {
    imgbuild(
        &[
            "build",
            repo_root().join("profiles/worker.yaml").to_str().unwrap(),
            "--output",
            "lxc",
            "--recipe",
            recipe.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--cache-dir",
            dir.join("cache").to_str().unwrap(),
        ],
        &[("SOURCE_DATE_EPOCH", "1700000000")],
    )
}

#[test]
fn small_base_builds_and_strips_machine_state() {
    let dir = tempfile::tempdir().unwrap();
    let base = make_base(dir.path());
    let recipe = write_recipe(dir.path(), &base, None);
    let out = dir.path().join("out");
    let o = build(dir.path(), &recipe, &out);
    assert!(o.status.success(), "{}", text(&o));
    let t = out.join("debian-12-k3s-worker_1.34.3-k3s1-1_amd64.tar.zst");
    let members = list(&t);
    assert!(members.contains(&"./sbin/".to_string()), "{members:?}");
    assert!(
        !members.iter().any(|m| m.contains("ssh_host_")),
        "{members:?}"
    );
    assert!(
        !members.iter().any(|m| m.ends_with("dpkg.log")),
        "{members:?}"
    );
    let root = dir.path().join("x");
    pct_extract(&t, &root);
    assert_eq!(std::fs::read(root.join("etc/machine-id")).unwrap(), b"");
}

#[test]
fn wrong_sha256_prints_both_digests_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let base = make_base(dir.path());
    let wrong = "0".repeat(64);
    let recipe = write_recipe(dir.path(), &base, Some(&wrong));
    let out = dir.path().join("out");
    let o = build(dir.path(), &recipe, &out);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&wrong), "{err}");
    // The actual digest is printed too: a 64-hex word other than the pin.
    let actual = err
        .split(|c: char| !c.is_ascii_hexdigit())
        .any(|w| w.len() == 64 && w != wrong);
    assert!(actual, "{err}");
    assert!(files_in(&out).is_empty(), "{:?}", files_in(&out));
}

#[test]
fn truncated_base_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let base = make_base(dir.path());
    // An uncompressed tarball cut in the middle of the archive.
    let plain = dir.path().join("plain.tar");
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -dc {} > {}", base.display(), plain.display()))
        .output()
        .unwrap();
    assert!(o.status.success());
    let bytes = std::fs::read(&plain).unwrap();
    let cut = dir.path().join("cut.tar");
    std::fs::write(&cut, &bytes[..bytes.len() / 2 + 100]).unwrap();
    let recipe = write_recipe(dir.path(), &cut, None);
    let out = dir.path().join("out");
    let o = build(dir.path(), &recipe, &out);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("truncated") || err.contains("corrupt"),
        "{err}"
    );
    let left: Vec<String> = files_in(&out);
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn invalid_profile_is_reported_with_location_and_builds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.yaml");
    let text_in = std::fs::read_to_string(repo_root().join("profiles/worker.yaml"))
        .unwrap()
        .replace("v1.34.3+k3s1", "\"1.34\"");
    std::fs::write(&p, &text_in).unwrap();
    let o = imgbuild(&["validate", p.to_str().unwrap()], &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let line = text_in
        .lines()
        .position(|l| l.contains("\"1.34\""))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!("bad.yaml:{line}:12: k3s.version: \"1.34\" is not a K3s release tag; expected e.g. v1.34.3+k3s1")),
        "{err}"
    );
    let out = dir.path().join("out");
    let o = imgbuild(
        &["build", p.to_str().unwrap(), "--out", out.to_str().unwrap()],
        &[],
    );
    assert!(!o.status.success());
    assert!(!out.exists() || files_in(&out).is_empty());
}

#[test]
fn shipped_profiles_validate_from_the_cli() {
    let root = repo_root();
    let mut args = vec!["validate".to_string()];
    for p in ["server", "worker", "ha-server"] {
        args.push(
            root.join(format!("profiles/{p}.yaml"))
                .display()
                .to_string(),
        );
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = imgbuild(&args, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).matches("ok  ").count(),
        3
    );
}
