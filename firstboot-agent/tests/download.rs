//! Installing K3s from a mirror served on 127.0.0.1: success, checksum
//! mismatch, a cut-off download, 404 — and that a failure installs nothing.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::path::Path;

use common::*;
use firstboot_agent::k3s::binary::{self, Origin, K3S_BIN};
use firstboot_agent::metadata::NodeConfig;
use firstboot_agent::metadata::{merge::merge, MetaData, Metadata, UserData};
use firstboot_agent::rootfs::Root;
use firstboot_agent::system::{Call, FakeSystem};

fn config(mirror: &str, pinned: Option<&str>) -> NodeConfig {
    // Without a pin these tests are about the mirror's checksum list, which
    // the agent reads only where the image allows it.
    let pin = pinned
        .map(|p| format!("  sha256: {p}\n"))
        .unwrap_or_else(|| "  trust-mirror-checksums: true\n".into());
    config_with(mirror, &pin)
}

/// The node's configuration from image defaults with `extra` in `k3s:`.
fn config_with(mirror: &str, extra: &str) -> NodeConfig {
    let defaults = node_spec::BakedDefaults::from_yaml(&format!(
        "schema: 1\nprofile: t\nk3s:\n  version: {VERSION}\n  role: server\n  mirror: {mirror}\n{extra}"
    ))
    .unwrap();
    let md = Metadata {
        source: "test".into(),
        user_data_path: "ud".into(),
        meta: MetaData {
            instance_id: "i".into(),
            local_hostname: None,
        },
        user: UserData::default(),
        vendor: None,
    };
    merge(&defaults, &md, "ud").unwrap()
}

fn installed_files(root: &Path) -> Vec<String> {
    match std::fs::read_dir(root.join("usr/local/bin")) {
        Ok(d) => {
            let mut v: Vec<String> = d
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
        Err(_) => vec![],
    }
}

#[test]
fn downloads_verifies_and_installs_with_links() {
    let sha = sha256_hex(FAKE_K3S);
    let (base, hits) = serve(release_routes(FAKE_K3S, &sha));
    let dir = tempfile::tempdir().unwrap();
    let root = Root::new(dir.path());
    let cfg = config(&format!("{base}/rel"), None);
    let sys = FakeSystem::new();
    let got = binary::install(&root, &sys, &cfg).unwrap();
    assert!(
        matches!(got.origin, Origin::Downloaded(ref u) if u.ends_with("/rel/v1.34.3%2Bk3s1/k3s")),
        "{got:?}"
    );
    assert_eq!(got.sha256.as_str(), sha);
    let bin = root.path(K3S_BIN);
    assert_eq!(std::fs::read(&bin).unwrap(), FAKE_K3S);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&bin).unwrap().permissions().mode() & 0o777,
        0o755
    );
    for tool in ["kubectl", "crictl", "ctr"] {
        assert_eq!(
            std::fs::read_link(root.path("/usr/local/bin").join(tool)).unwrap(),
            Path::new("k3s")
        );
    }
    assert_eq!(
        installed_files(dir.path()),
        vec!["crictl", "ctr", "k3s", "kubectl"]
    );
    // A second run finds it installed and downloads nothing.
    let again = binary::install(&root, &sys, &cfg).unwrap();
    assert_eq!(again.origin, Origin::AlreadyInstalled);
    assert_eq!(hits.get("/rel/v1.34.3%2Bk3s1/k3s"), 1);
}

#[test]
fn checksum_mismatch_prints_both_digests_and_installs_nothing() {
    let listed = sha256_hex(b"the real release");
    let (base, _) = serve(release_routes(FAKE_K3S, &listed));
    let dir = tempfile::tempdir().unwrap();
    let root = Root::new(dir.path());
    let e = binary::install(
        &root,
        &FakeSystem::new(),
        &config(&format!("{base}/rel"), None),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(&listed) && e.contains(&sha256_hex(FAKE_K3S)),
        "{e}"
    );
    assert!(
        e.contains("checksum mismatch") && e.contains("nothing was installed"),
        "{e}"
    );
    assert!(
        installed_files(dir.path()).is_empty(),
        "{:?}",
        installed_files(dir.path())
    );
}

#[test]
fn a_pinned_digest_is_enforced_and_the_mirrors_list_is_not_asked() {
    let sha = sha256_hex(FAKE_K3S);
    // The mirror lists what it serves; the image pins another build.
    let (base, hits) = serve(release_routes(FAKE_K3S, &sha));
    let dir = tempfile::tempdir().unwrap();
    let root = Root::new(dir.path());
    let pinned = "1".repeat(64);
    let e = binary::install(
        &root,
        &FakeSystem::new(),
        &config(&format!("{base}/rel"), Some(&pinned)),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(&format!(
            "expected sha256 {pinned} (pinned in the image defaults), got {sha}"
        )) && e.contains("nothing was installed"),
        "{e}"
    );
    assert_eq!(hits.get("/rel/v1.34.3%2Bk3s1/sha256sum-amd64.txt"), 0);
    assert!(installed_files(dir.path()).is_empty());
    // The right pin installs without the list either.
    let got = binary::install(
        &root,
        &FakeSystem::new(),
        &config(&format!("{base}/rel"), Some(&sha)),
    )
    .unwrap();
    assert_eq!(got.sha256.as_str(), sha);
    assert_eq!(hits.get("/rel/v1.34.3%2Bk3s1/sha256sum-amd64.txt"), 0);
}

#[test]
fn without_a_pin_the_mirrors_list_is_trusted_only_when_the_image_allows_it() {
    let sha = sha256_hex(FAKE_K3S);
    let (base, hits) = serve(release_routes(FAKE_K3S, &sha));
    let dir = tempfile::tempdir().unwrap();
    let root = Root::new(dir.path());
    let cfg = config_with(&format!("{base}/rel"), "");
    let e = binary::install(&root, &FakeSystem::new(), &cfg)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no sha256 is pinned for K3s v1.34.3+k3s1")
            && e.contains("k3s.trust-mirror-checksums is false")
            && e.contains("nothing was installed"),
        "{e}"
    );
    assert_eq!(hits.get("/rel/v1.34.3%2Bk3s1/sha256sum-amd64.txt"), 0);
    assert_eq!(hits.get("/rel/v1.34.3%2Bk3s1/k3s"), 0);
    assert!(installed_files(dir.path()).is_empty());
}

#[test]
fn cut_off_download_is_retried_and_leaves_nothing_half_written() {
    let sha = sha256_hex(FAKE_K3S);
    let mut routes = release_routes(FAKE_K3S, &sha);
    routes.get_mut("/rel/v1.34.3%2Bk3s1/k3s").unwrap().cut_first = 2;
    let (base, hits) = serve(routes);
    let dir = tempfile::tempdir().unwrap();
    let root = Root::new(dir.path());
    let sys = FakeSystem::new();
    binary::install(&root, &sys, &config(&format!("{base}/rel"), None)).unwrap();
    assert_eq!(hits.get("/rel/v1.34.3%2Bk3s1/k3s"), 3);
    let sleeps = sys
        .calls()
        .iter()
        .filter(|c| matches!(c, Call::Sleep(_)))
        .count();
    assert_eq!(sleeps, 2, "backoff between attempts");
    assert_eq!(
        installed_files(dir.path()),
        vec!["crictl", "ctr", "k3s", "kubectl"]
    );
}

#[test]
fn cut_off_every_time_gives_up_bounded() {
    let sha = sha256_hex(FAKE_K3S);
    let mut routes = release_routes(FAKE_K3S, &sha);
    routes.get_mut("/rel/v1.34.3%2Bk3s1/k3s").unwrap().cut_first = 100;
    let (base, hits) = serve(routes);
    let dir = tempfile::tempdir().unwrap();
    let root = Root::new(dir.path());
    let e = binary::install(
        &root,
        &FakeSystem::new(),
        &config(&format!("{base}/rel"), None),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("cut off"), "{e}");
    assert_eq!(hits.get("/rel/v1.34.3%2Bk3s1/k3s"), 4);
    assert!(
        installed_files(dir.path()).is_empty(),
        "{:?}",
        installed_files(dir.path())
    );
}

#[test]
fn not_found_is_not_retried_and_names_the_url() {
    let (base, hits) = serve(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let root = Root::new(dir.path());
    let e = binary::install(
        &root,
        &FakeSystem::new(),
        &config(&format!("{base}/rel"), None),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("/rel/v1.34.3%2Bk3s1/sha256sum-amd64.txt") && e.contains("404"),
        "{e}"
    );
    assert_eq!(hits.get("/rel/v1.34.3%2Bk3s1/sha256sum-amd64.txt"), 1);
    assert!(installed_files(dir.path()).is_empty());
}

#[test]
fn file_mirror_works() {
    let src = tempfile::tempdir().unwrap();
    let rel = src.path().join(VERSION);
    std::fs::create_dir_all(&rel).unwrap();
    std::fs::write(rel.join("k3s"), FAKE_K3S).unwrap();
    std::fs::write(
        rel.join("sha256sum-amd64.txt"),
        format!("{}  k3s\n", sha256_hex(FAKE_K3S)),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = Root::new(dir.path());
    let got = binary::install(
        &root,
        &FakeSystem::new(),
        &config(&format!("file://{}", src.path().display()), None),
    )
    .unwrap();
    assert!(matches!(got.origin, Origin::Downloaded(_)));
    assert_eq!(std::fs::read(root.path(K3S_BIN)).unwrap(), FAKE_K3S);
}

/// With a proxy for the mirror's scheme, the agent asks the proxy (HTTP's
/// absolute-form request line) and never the mirror host itself — here a
/// name that does not resolve; with the mirror in NO_PROXY it goes direct.
#[test]
fn downloads_go_through_the_proxy_k3s_would_use() {
    use firstboot_agent::k3s::proxy::{ProxyEnv, ProxyMeta, ProxySettings};
    let sha = sha256_hex(FAKE_K3S);
    let mirror = "http://mirror.invalid:8080/rel";
    let routes = release_routes(FAKE_K3S, &sha)
        .into_iter()
        .map(|(path, route)| (format!("http://mirror.invalid:8080{path}"), route))
        .collect();
    let (proxy, hits) = serve(routes);
    let dir = tempfile::tempdir().unwrap();
    let root = Root::new(dir.path());
    let mut cfg = config(mirror, None);
    cfg.proxy = ProxySettings::combine(
        &ProxyMeta::default(),
        &ProxyEnv::from_pairs(&[("http_proxy", &proxy), ("HTTPS_PROXY", "http://unused:1")]),
    );
    let got = binary::install(&root, &FakeSystem::new(), &cfg).unwrap();
    assert!(matches!(got.origin, Origin::Downloaded(_)), "{got:?}");
    assert_eq!(
        hits.get("http://mirror.invalid:8080/rel/v1.34.3%2Bk3s1/k3s"),
        1
    );
    assert_eq!(std::fs::read(root.path(K3S_BIN)).unwrap(), FAKE_K3S);

    // NO_PROXY names the mirror: direct, so the unresolvable name fails,
    // and the message says there was no proxy in the way.
    let dir = tempfile::tempdir().unwrap();
    let root = Root::new(dir.path());
    cfg.proxy = ProxySettings::combine(
        &ProxyMeta {
            no_proxy: Some(".invalid".into()),
            ..ProxyMeta::default()
        },
        &ProxyEnv::from_pairs(&[("HTTP_PROXY", &proxy)]),
    );
    let sys = FakeSystem::new();
    let e = binary::install(&root, &sys, &cfg).unwrap_err().to_string();
    assert!(
        e.contains("mirror.invalid") && !e.contains("through the proxy"),
        "{e}"
    );

    // A proxy the agent's client cannot speak to is refused with advice.
    cfg.proxy = ProxySettings::combine(
        &ProxyMeta {
            http: Some("socks5://u:pw@proxy.lan:1080".into()),
            ..ProxyMeta::default()
        },
        &ProxyEnv::default(),
    );
    let e = binary::install(&root, &sys, &cfg).unwrap_err().to_string();
    assert!(
        e.contains("cannot use the proxy socks5://u:***@proxy.lan:1080 (k3s.proxy.http)")
            && e.contains("only through http:// proxies")
            && !e.contains("pw@"),
        "{e}"
    );
}

/// kubectl, crictl and ctr are linked as install.sh's create_symlinks links
/// them: not over an existing file or link, and not when the tool is on
/// the PATH already.
#[test]
fn tool_links_follow_install_sh() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    let root = Root::new(r);
    write(r, "/usr/bin/ctr", "#!/bin/sh\n");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        r.join("usr/bin/ctr"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    write(r, "/opt/kubectl", "#!/bin/sh\n");
    std::fs::create_dir_all(r.join("usr/local/bin")).unwrap();
    std::os::unix::fs::symlink("/opt/kubectl", r.join("usr/local/bin/kubectl")).unwrap();
    let skipped = binary::link_tools(&root).unwrap();
    assert_eq!(
        skipped,
        vec!["/usr/local/bin/ctr not linked (/usr/bin/ctr exists)"]
    );
    assert_eq!(
        std::fs::read_link(r.join("usr/local/bin/kubectl")).unwrap(),
        Path::new("/opt/kubectl")
    );
    assert_eq!(
        std::fs::read_link(r.join("usr/local/bin/crictl")).unwrap(),
        Path::new("k3s")
    );
    assert!(!r.join("usr/local/bin/ctr").exists());
    // A link that leads nowhere is replaced.
    std::fs::remove_file(r.join("usr/local/bin/kubectl")).unwrap();
    std::os::unix::fs::symlink("/gone", r.join("usr/local/bin/kubectl")).unwrap();
    binary::link_tools(&root).unwrap();
    assert_eq!(
        std::fs::read_link(r.join("usr/local/bin/kubectl")).unwrap(),
        Path::new("k3s")
    );
}
