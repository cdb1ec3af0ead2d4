//! The K3s digest pinned at build time, through the stand-in release served
//! on loopback (`k3s_standin::mirror`, GitHub release layout): fetched once,
//! baked, shown in the manifest, enforced by the node; a pin that disagrees,
//! and a checksum file that cannot be fetched.

use super::*;

use k3s_standin::mirror::{self, Faults, Mirror, Prepared};

const VERSION: &str = "v1.34.3+k3s1";
const SUMS: &str = "/v1.34.3%2Bk3s1/sha256sum-amd64.txt";

/// The stand-in release at `dir/mirror`, served on 127.0.0.1.
fn standin_mirror(dir: &Path, faults: Faults) -> (Mirror, Prepared) {
    let src = dir.join("k3s-src");
    std::fs::write(&src, b"#!/bin/sh\necho stand-in\n").unwrap();
    let prepared = mirror::prepare(&dir.join("mirror"), VERSION, &src).unwrap();
    let m = mirror::serve(&dir.join("mirror"), "127.0.0.1:0", faults, false).unwrap();
    (m, prepared)
}

/// The shipped worker profile with `k3s.mirror: mirror`, `extra` in its
/// `k3s:` mapping, and without its `trust-mirror-checksums` unless `trust`.
fn worker_profile(dir: &Path, mirror: &str, extra: &str, trust: bool) -> PathBuf {
    let text = std::fs::read_to_string(repo_root().join("profiles/worker.yaml")).unwrap();
    assert!(text.contains("  trust-mirror-checksums: true\n"), "{text}");
    let text = text
        .replace(
            "  trust-mirror-checksums: true\n",
            if trust {
                "  trust-mirror-checksums: true\n"
            } else {
                ""
            },
        )
        .replace(
            &format!("  version: {VERSION}\n"),
            &format!("  version: {VERSION}\n  mirror: {mirror}\n{extra}"),
        );
    let p = dir.join("worker.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

/// The small generated Debian base and its recipe.
fn tiny_recipe(dir: &Path) -> PathBuf {
    let base = make_base(dir);
    write_recipe(dir, &base, None)
}

fn manifest(out: &Path) -> serde_json::Value {
    let name = "debian-12-k3s-worker_1.34.3-k3s1-1_amd64.tar.zst.manifest.json";
    serde_json::from_str(&std::fs::read_to_string(out.join(name)).unwrap()).unwrap()
}

fn template(out: &Path) -> PathBuf {
    out.join("debian-12-k3s-worker_1.34.3-k3s1-1_amd64.tar.zst")
}

fn sums_requests(m: &Mirror) -> usize {
    m.requests().iter().filter(|r| r.target == SUMS).count()
}

/// The template extracted as pct does, with a seed: a node's root.
fn node_from(template: &Path, dir: &Path) -> PathBuf {
    let root = dir.join("node");
    pct_extract(template, &root);
    let seed = root.join("var/lib/cloud/seed/nocloud");
    std::fs::create_dir_all(&seed).unwrap();
    std::fs::write(seed.join("meta-data"), "instance-id: i-digest\n").unwrap();
    std::fs::write(
        seed.join("user-data"),
        "#cloud-config\nk3s:\n  server: https://10.0.0.10:6443\n  token: t\n",
    )
    .unwrap();
    root
}

/// What the node's agent does with its K3s binary step: the image's
/// defaults and the seed, then the install (the download is real).
fn node_installs(root: &Path) -> Result<String, String> {
    let root = firstboot_agent::rootfs::Root::new(root);
    let sys = firstboot_agent::system::FakeSystem::new();
    let cfg = firstboot_agent::run::load_node_config(&root, &sys, &Default::default())
        .map_err(|e| format!("{e:#}"))?;
    firstboot_agent::k3s::binary::install(&root, &sys, &cfg)
        .map(|i| i.sha256.to_string())
        .map_err(|e| e.to_string())
}

#[test]
fn the_checksum_file_is_read_once_its_digest_baked_shown_and_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let (m, prepared) = standin_mirror(dir.path(), Faults::default());
    let recipe = tiny_recipe(dir.path());
    let profile = worker_profile(dir.path(), &m.base_url(), "", false);
    let out = dir.path().join("out");
    let o = build_profile(dir.path(), &profile, &recipe, &out);
    assert!(o.status.success(), "{}", text(&o));
    let sums_url = format!("{}{SUMS}", m.base_url());
    let k3s = &manifest(&out)["k3s"];
    assert_eq!(k3s["pinned-sha256"], prepared.sha256.as_str(), "{k3s:#}");
    assert_eq!(
        k3s["sha256-source"],
        format!("checksum-file {sums_url}"),
        "{k3s:#}"
    );
    // Once per build (both outputs would share it), never the binary.
    assert_eq!(sums_requests(&m), 1, "{:?}", m.requests());
    assert!(
        m.requests().iter().all(|r| r.target == SUMS),
        "{:?}",
        m.requests()
    );
    let inspect = imgbuild(&["inspect", template(&out).to_str().unwrap()], &[]);
    assert!(
        text(&inspect).contains(&format!(
            "k3s sha256 {} (from checksum-file {sums_url})",
            prepared.sha256
        )),
        "{}",
        text(&inspect)
    );

    // The node installs the mirror's binary: it has the baked digest.
    let node = node_from(&template(&out), dir.path());
    let defaults = std::fs::read_to_string(node.join("etc/firstboot-agent/defaults.yaml")).unwrap();
    assert!(
        defaults.contains(&format!("sha256: {}", prepared.sha256)),
        "{defaults}"
    );
    assert_eq!(node_installs(&node).unwrap(), prepared.sha256);
    // The node never asked for the checksum file: the image pins the digest.
    assert_eq!(sums_requests(&m), 1, "{:?}", m.requests());

    // --offline, the mirror gone: the cached checksum file gives the same pin.
    drop(m);
    let out2 = dir.path().join("out2");
    let mut args = build_args(dir.path(), &profile, &recipe, &out2);
    args.push("--offline".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = imgbuild(&args, &[("SOURCE_DATE_EPOCH", "1700000000")]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        manifest(&out2)["k3s"]["pinned-sha256"],
        prepared.sha256.as_str()
    );
}

#[test]
fn a_wrong_digest_in_the_checksum_file_makes_the_node_refuse_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let (m, prepared) = standin_mirror(dir.path(), Faults::default());
    let wrong = "e".repeat(64);
    std::fs::write(
        prepared.release_dir.join("sha256sum-amd64.txt"),
        format!("{wrong}  k3s\n"),
    )
    .unwrap();
    let recipe = tiny_recipe(dir.path());
    let profile = worker_profile(dir.path(), &m.base_url(), "", false);
    let out = dir.path().join("out");
    let o = build_profile(dir.path(), &profile, &recipe, &out);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(manifest(&out)["k3s"]["pinned-sha256"], wrong.as_str());

    let node = node_from(&template(&out), dir.path());
    let e = node_installs(&node).unwrap_err();
    assert!(
        e.contains(&format!(
            "checksum mismatch: expected sha256 {wrong} (pinned in the image defaults), got {}",
            prepared.sha256
        )) && e.contains("nothing was installed"),
        "{e}"
    );
    assert!(!node.join("usr/local/bin/k3s").exists());
}

#[test]
fn a_profile_pin_is_cross_checked_and_a_disagreement_fails_the_build() {
    let dir = tempfile::tempdir().unwrap();
    let (m, prepared) = standin_mirror(dir.path(), Faults::default());
    let recipe = tiny_recipe(dir.path());
    let pin = "1".repeat(64);
    let profile = worker_profile(
        dir.path(),
        &m.base_url(),
        &format!("  sha256: {pin}\n"),
        true,
    );
    let out = dir.path().join("out");
    let o = build_profile(dir.path(), &profile, &recipe, &out);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "k3s.sha256 {pin} disagrees with {}{SUMS}, which lists {}",
            m.base_url(),
            prepared.sha256
        )),
        "{err}"
    );
    assert!(!template(&out).exists(), "{:?}", files_in(&out));

    // The right pin builds, and says where it came from.
    let profile = worker_profile(
        dir.path(),
        &m.base_url(),
        &format!("  sha256: {}\n", prepared.sha256),
        false,
    );
    let o = build_profile(dir.path(), &profile, &recipe, &out);
    assert!(o.status.success(), "{}", text(&o));
    let k3s = &manifest(&out)["k3s"];
    assert_eq!(k3s["sha256-source"], "profile", "{k3s:#}");
    assert_eq!(k3s["pinned-sha256"], prepared.sha256.as_str());
}

#[test]
fn an_unreachable_checksum_file_fails_the_build_unless_the_profile_trusts_the_mirror() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let recipe = tiny_recipe(dir.path());
    let out = dir.path().join("out");
    let strict = worker_profile(dir.path(), &closed, "", false);
    let o = build_profile(dir.path(), &strict, &recipe, &out);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot pin the sha256 of the K3s v1.34.3+k3s1 binary")
            && err.contains(&format!("{closed}{SUMS}"))
            && err.contains("k3s.trust-mirror-checksums: true"),
        "{err}"
    );
    assert!(!template(&out).exists(), "{:?}", files_in(&out));

    // Opted in: the build goes on, says so, and bakes no digest.
    let trusting = worker_profile(dir.path(), &closed, "", true);
    let o = build_profile(dir.path(), &trusting, &recipe, &out);
    assert!(o.status.success(), "{}", text(&o));
    let m = manifest(&out);
    assert_eq!(m["k3s"]["sha256-source"], "none", "{m:#}");
    assert!(m["k3s"].get("pinned-sha256").is_none(), "{m:#}");
    assert_eq!(m["k3s"]["trust-mirror-checksums"], true);
    assert!(
        m["warnings"].as_array().unwrap().iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("no sha256 pinned for K3s v1.34.3+k3s1")),
        "{m:#}"
    );
}
