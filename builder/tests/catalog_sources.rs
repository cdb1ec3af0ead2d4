//! Bases by name from the catalogs Proxmox users get templates from, served
//! on loopback in the vendors' formats (tests/catalog): Proxmox's pveam
//! index (signed, sha512) and linuxcontainers' simplestreams index (sha256).
//! Each fixture base has its vendor's layout; the templates built from them
//! go through pct's extraction and set-up (tests/pve-setup) for the distro
//! pct detects. The fixtures' programs are empty files, so nothing here
//! boots: that is the end-to-end tests' part (e2e_distros for Ubuntu).
//!
//! Also the bad cases: an unknown template (close matches named), a
//! missing version, a wrong digest, an index altered after signing, a
//! truncated index, a missing file, and a Container-Base-like Rocky image.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod catalog;
mod common;

use std::path::{Path, PathBuf};

use catalog::*;
use common::*;

const WORKER: &str = "1.34.3-k3s1-1_amd64.tar.zst";

struct Built {
    out: PathBuf,
    stderr: String,
    ok: bool,
}

fn build(dir: &Path, recipe_text: &str, offline: bool) -> Built {
    let recipe = dir.join("recipe.yaml");
    std::fs::write(&recipe, recipe_text).unwrap();
    let out = dir.join("out");
    let profile = repo_root().join("profiles/worker.yaml");
    let cache = dir.join("cache");
    let mut args = vec![
        "build",
        profile.to_str().unwrap(),
        "--output",
        "lxc",
        "--recipe",
        recipe.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ];
    if offline {
        args.push("--offline");
    }
    let o = imgbuild(&args, &[("SOURCE_DATE_EPOCH", "1700000000")]);
    Built {
        out,
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        ok: o.status.success(),
    }
}

fn pveam_recipe(c: &Catalog, template: &str, extra: &str) -> String {
    format!(
        "name: ubuntu-22.04\ndistro: ubuntu\nrelease: \"22.04\"\nlxc:\n  pveam:\n    \
         template: {template}\n    index: {}\n{extra}",
        c.pveam_index()
    )
}

/// `pct create` on `template` (privileged, DHCP), returning what pct
/// detected and the rootfs.
fn pct_create(dir: &Path, template: &Path) -> (pve_setup::Distro, PathBuf) {
    let rootfs = dir.join("ct-rootfs");
    let ct = pve_setup::CtConfig {
        vmid: 9100,
        hostname: Some("ct-node".into()),
        nets: vec![pve_setup::NetConfig {
            index: 0,
            name: "eth0".into(),
            bridge: "vmbr0".into(),
            hwaddr: pve_setup::pve_mac(9100),
            ip: Some("dhcp".into()),
            gw: None,
            ip6: None,
            gw6: None,
            mtu: None,
        }],
        nameserver: Some("192.0.2.53".into()),
        unprivileged: false,
        arch: "amd64".into(),
        ..Default::default()
    };
    let host = pve_setup::Host {
        resolv_conf: "nameserver 192.0.2.53\n".into(),
    };
    let distro = pve_setup::create(template, &rootfs, &ct, &host)
        .unwrap_or_else(|e| panic!("pct create {}: {e}", template.display()));
    (distro, rootfs)
}

fn manifest(out: &Path, name: &str) -> serde_json::Value {
    let m = std::fs::read_to_string(out.join(format!("{name}.manifest.json"))).unwrap();
    serde_json::from_str(&m).unwrap()
}

#[test]
fn an_ubuntu_standard_template_by_name_from_a_signed_pveam_index() {
    require_root("pct's extraction keeps the template's owners");
    require_tool("gpg", "gnupg");
    require_tool("gpgv", "gpgv");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = Catalog::new(d);
    let key = Gpg::new(d);
    let new = ubuntu_standard_base(&d.join("new"), "22.04", "jammy");
    let old_dir = d.join("old");
    std::fs::create_dir_all(&old_dir).unwrap();
    let old = old_dir.join("ubuntu-22.04-standard_22.04-0_amd64.tar.zst");
    std::fs::copy(&new, &old).unwrap();
    let noble = ubuntu_standard_base(&d.join("noble"), "24.04", "noble");
    let t = |package, version, os, file| Template {
        package,
        version,
        os,
        file,
        sha512: None,
    };
    c.pveam(
        &[
            t("ubuntu-22.04-standard", "22.04-0", "ubuntu-22.04", &old),
            t("ubuntu-22.04-standard", "22.04-1", "ubuntu-22.04", &new),
            t("ubuntu-24.04-standard", "24.04-2", "ubuntu-24.04", &noble),
        ],
        Some(&key),
    );
    let empty = d.join("vz-template-cache");
    std::fs::create_dir_all(&empty).unwrap();
    let extra = format!(
        "    keyring: {}\n    template-dir: {}\n",
        key.keyring.display(),
        empty.display()
    );

    // The newest version, signature and sha512 checked.
    let b = build(d, &pveam_recipe(&c, "ubuntu-22.04-standard", &extra), false);
    assert!(b.ok, "{}", b.stderr);
    assert!(b.stderr.contains("index signature is good"), "{}", b.stderr);
    let name = format!("ubuntu-22.04-k3s-worker_{WORKER}");
    let template = b.out.join(&name);
    let m = manifest(&b.out, &name);
    assert_eq!(m["pct"]["plugin"], "ubuntu");
    assert_eq!(
        m["base"]["origin"],
        format!(
            "{}/images/system/ubuntu-22.04-standard_22.04-1_amd64.tar.zst",
            c.base_url()
        )
    );
    assert!(
        m["pct"]["network-stack"]
            .to_string()
            .contains("systemd-networkd"),
        "{}",
        m["pct"]
    );
    // The manifest says which entry of which index, and how it was trusted.
    let cat = &m["base"]["catalog"];
    assert_eq!(cat["name"], "ubuntu-22.04-standard");
    assert_eq!(cat["version"], "22.04-1");
    assert_eq!(cat["index"], format!("{}.gz", c.pveam_index()), "{cat}");
    assert_eq!(
        cat["listed-digest"],
        format!("sha512:{}", sha512_file(&new))
    );
    assert_eq!(
        cat["index-signature"],
        format!(
            "good, {}.asc checked with {}",
            c.pveam_index(),
            key.keyring.display()
        )
    );

    // pct detects Ubuntu and writes what networkd reads.
    let (distro, rootfs) = pct_create(d, &template);
    assert_eq!(distro.ostype(), "ubuntu");
    let network = std::fs::read_to_string(rootfs.join("etc/systemd/network/eth0.network")).unwrap();
    assert!(
        network.contains("Name = eth0") && network.contains("DHCP = ipv4"),
        "{network}"
    );
    assert!(rootfs.join("usr/local/sbin/firstboot-agent").is_file());
    // A link to /etc/…: read as a link, not followed onto this host.
    assert!(rootfs
        .join("etc/systemd/system/multi-user.target.wants/firstboot-agent.service")
        .symlink_metadata()
        .is_ok());

    // Offline, the cached index and template serve the same build.
    std::fs::remove_dir_all(&b.out).unwrap();
    let requests = c.requested().len();
    let b = build(d, &pveam_recipe(&c, "ubuntu-22.04-standard", &extra), true);
    assert!(b.ok, "{}", b.stderr);
    assert!(b.out.join(&name).is_file());
    assert_eq!(c.requested().len(), requests, "offline asked the server");

    // A pinned version.
    let b = build(
        d,
        &pveam_recipe(
            &c,
            "ubuntu-22.04-standard",
            &format!("{extra}    version: \"22.04-0\"\n"),
        ),
        false,
    );
    assert!(b.ok, "{}", b.stderr);
    let m = manifest(&b.out, &name);
    assert!(m["base"]["origin"]
        .as_str()
        .unwrap()
        .ends_with("_22.04-0_amd64.tar.zst"));
    assert_eq!(m["base"]["catalog"]["version"], "22.04-0");

    // A template already on this host is read in place, not downloaded.
    std::fs::copy(&new, empty.join(new.file_name().unwrap())).unwrap();
    let before = c.requested();
    let b = build(d, &pveam_recipe(&c, "ubuntu-22.04-standard", &extra), false);
    assert!(b.ok, "{}", b.stderr);
    let m = manifest(&b.out, &name);
    assert_eq!(
        m["base"]["origin"],
        empty.join(new.file_name().unwrap()).display().to_string()
    );
    assert_eq!(m["base"]["catalog"]["name"], "ubuntu-22.04-standard");
    let fetched: Vec<_> = c.requested()[before.len()..].to_vec();
    assert!(
        fetched.iter().all(|(p, _)| !p.contains("/system/")),
        "{fetched:?}"
    );
    // …and a damaged copy there is refused, not silently replaced.
    std::fs::write(empty.join(new.file_name().unwrap()), "damaged").unwrap();
    let b = build(d, &pveam_recipe(&c, "ubuntu-22.04-standard", &extra), false);
    assert!(!b.ok);
    assert!(
        b.stderr.contains(&format!(
            "sha512 mismatch for {}",
            empty.join(new.file_name().unwrap()).display()
        )) && b.stderr.contains("listed by"),
        "{}",
        b.stderr
    );
}

#[test]
fn bad_pveam_indexes_and_names_are_refused_with_what_the_index_has() {
    require_tool("gpg", "gnupg");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = Catalog::new(d);
    let key = Gpg::new(d);
    let base = ubuntu_standard_base(&d.join("b"), "22.04", "jammy");
    let empty = d.join("vz");
    std::fs::create_dir_all(&empty).unwrap();
    let extra = format!(
        "    keyring: {}\n    template-dir: {}\n",
        key.keyring.display(),
        empty.display()
    );
    let listed = |sha512: Option<String>| {
        c.pveam(
            &[Template {
                package: "ubuntu-22.04-standard",
                version: "22.04-1",
                os: "ubuntu-22.04",
                file: &base,
                sha512,
            }],
            Some(&key),
        )
    };
    listed(None);
    let gz = format!("{}.gz", c.pveam_index());
    let refused = |recipe: String, expected: &str| {
        let cache = d.join("cache");
        let before = files_in(&cache);
        let b = build(d, &recipe, false);
        assert!(!b.ok, "built with {recipe}");
        assert!(
            b.stderr.contains(expected),
            "{expected:?} not in:\n{}",
            b.stderr
        );
        assert!(
            !b.out.exists() || files_in(&b.out).is_empty(),
            "{:?}",
            files_in(&b.out)
        );
        let blobs = |fs: &[String]| fs.iter().filter(|f| f.starts_with("sha256/")).count();
        let after = files_in(&cache);
        assert!(
            blobs(&after) <= blobs(&before) + 2,
            "more than the index and its signature were cached: {after:?}"
        );
        assert!(
            !after
                .iter()
                .any(|f| f.starts_with("tmp/") && !f.ends_with('/')),
            "{after:?}"
        );
        b.stderr
    };

    // A typo: close matches from the index, which is named.
    refused(
        pveam_recipe(&c, "ubuntu-22.04-standart", &extra),
        &format!(
            "{gz}: no template \"ubuntu-22.04-standart\" for amd64; close matches: ubuntu-22.04-standard (22.04-1)"
        ),
    );
    // A version the index does not list.
    refused(
        pveam_recipe(
            &c,
            "ubuntu-22.04-standard",
            &format!("{extra}    version: \"22.04-9\"\n"),
        ),
        "ubuntu-22.04-standard has no version \"22.04-9\"; the index lists 22.04-1",
    );
    // A pin that disagrees with the index.
    refused(
        pveam_recipe(
            &c,
            "ubuntu-22.04-standard",
            &format!("{extra}    sha512: \"{}\"\n", "0".repeat(128)),
        ),
        "but the recipe pins 0000",
    );
    // The index lists another digest than the file has: nothing is cached.
    listed(Some("ab".repeat(64)));
    refused(
        pveam_recipe(&c, "ubuntu-22.04-standard", &extra),
        &format!("sha512 mismatch for {}/images/system/", c.base_url()),
    );
    // An index changed after it was signed.
    listed(None);
    let asc = c.www.join("images/aplinfo-pve-9.dat.asc");
    let good_sig = std::fs::read(&asc).unwrap();
    listed(Some("cd".repeat(64)));
    std::fs::write(&asc, &good_sig).unwrap();
    refused(
        pveam_recipe(&c, "ubuntu-22.04-standard", &extra),
        "does not verify with",
    );
    // A truncated index.
    listed(None);
    let gz_path = c.www.join("images/aplinfo-pve-9.dat.gz");
    let bytes = std::fs::read(&gz_path).unwrap();
    std::fs::write(&gz_path, &bytes[..bytes.len() / 2]).unwrap();
    refused(
        pveam_recipe(&c, "ubuntu-22.04-standard", &extra),
        &format!("{gz}: cannot be unpacked"),
    );
    // A template the index lists but the server lacks.
    listed(None);
    std::fs::remove_file(c.www.join("images/system").join(base.file_name().unwrap())).unwrap();
    refused(
        pveam_recipe(&c, "ubuntu-22.04-standard", &extra),
        "HTTP 404",
    );
    // No index at all.
    std::fs::remove_file(&gz_path).unwrap();
    refused(
        pveam_recipe(&c, "ubuntu-22.04-standard", &extra),
        &format!("{gz}: HTTP 404"),
    );
}

#[test]
fn a_rockylinux_default_image_from_simplestreams_builds_and_pct_sets_it_up() {
    require_root("pct's extraction keeps the template's owners");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = Catalog::new(d);
    let rocky = rockylinux_default_base(&d.join("r"));
    let older = d.join("older.tar.xz");
    std::fs::copy(&rocky, &older).unwrap();
    c.simplestreams(&[
        ("rockylinux", "9", "default", "20250530_02:06", &older),
        ("rockylinux", "9", "default", "20250601_02:06", &rocky),
        ("rockylinux", "9", "cloud", "20250601_02:06", &rocky),
    ]);
    let recipe = |image: &str, extra: &str| {
        format!(
            "name: rocky-9\ndistro: rocky\nrelease: \"9\"\nlxc:\n  linuxcontainers:\n    \
             image: {image}\n    server: {}\n{extra}",
            c.base_url()
        )
    };
    let b = build(d, &recipe("rockylinux/9", ""), false);
    assert!(b.ok, "{}", b.stderr);
    let name = format!("rockylinux-9-k3s-worker_{WORKER}");
    let m = manifest(&b.out, &name);
    assert_eq!(m["pct"]["plugin"], "centos");
    let cat = &m["base"]["catalog"];
    assert_eq!(cat["name"], "rockylinux:9:amd64:default");
    assert_eq!(cat["version"], "20250601_02:06");
    assert!(
        cat["listed-digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{cat}"
    );
    assert_eq!(
        cat["index-signature"],
        "none: simplestreams indexes are not signed"
    );
    assert_eq!(
        m["base"]["origin"],
        format!(
            "{}/images/rockylinux/9/amd64/default/20250601_02:06/rootfs.tar.xz",
            c.base_url()
        )
    );
    let (distro, rootfs) = pct_create(d, &b.out.join(&name));
    assert_eq!(distro.ostype(), "centos");
    let ifcfg =
        std::fs::read_to_string(rootfs.join("etc/sysconfig/network-scripts/ifcfg-eth0")).unwrap();
    assert!(
        ifcfg.contains("BOOTPROTO=dhcp") && ifcfg.contains("ONBOOT=yes"),
        "{ifcfg}"
    );
    assert!(rootfs.join("usr/local/sbin/firstboot-agent").is_file());

    // Unknown release: the close images are named; a wrong sha256 in the
    // index is a mismatch that caches nothing.
    let b = build(d, &recipe("rockylinux/10", ""), false);
    assert!(!b.ok);
    assert!(
        b.stderr.contains(&format!(
            "{}/streams/v1/images.json: no image rockylinux:10:amd64:default; close matches: rockylinux:9:amd64:default",
            c.base_url()
        )),
        "{}",
        b.stderr
    );
    let images = c.www.join("streams/v1/images.json");
    let text = std::fs::read_to_string(&images).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let good = v["products"]["rockylinux:9:amd64:default"]["versions"]["20250601_02:06"]["items"]
        ["root.tar.xz"]["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::write(&images, text.replace(&good, &"e".repeat(64))).unwrap();
    let b = build(
        d,
        &recipe("rockylinux/9", "    serial: \"20250601_02:06\"\n"),
        false,
    );
    // The blob with the good digest is cached already, so the changed
    // digest is looked for, missed, downloaded and refused.
    assert!(!b.ok);
    assert!(b.stderr.contains("sha256 mismatch for"), "{}", b.stderr);
    // A truncated products file.
    std::fs::write(&images, &text[..text.len() / 2]).unwrap();
    let b = build(d, &recipe("rockylinux/9", ""), false);
    assert!(!b.ok);
    assert!(
        b.stderr
            .contains("images.json: is not a simplestreams index"),
        "{}",
        b.stderr
    );
}

#[test]
fn a_container_base_like_rocky_image_is_refused_by_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = Catalog::new(d);
    // The Docker-style base: release files but no systemd, no NetworkManager.
    let root = d.join("root");
    for sub in ["usr/bin", "usr/sbin", "usr/lib", "etc"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    std::os::unix::fs::symlink("usr/sbin", root.join("sbin")).unwrap();
    std::fs::write(
        root.join("usr/lib/os-release"),
        "ID=\"rocky\"\nVERSION_ID=\"9.6\"\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("../usr/lib/os-release", root.join("etc/os-release")).unwrap();
    std::fs::write(
        root.join("etc/redhat-release"),
        "Rocky Linux release 9.6 (Blue Onyx)\n",
    )
    .unwrap();
    let tarball = pack(&root, d, "rootfs.tar.xz");
    c.simplestreams(&[("rockylinux", "9", "container", "20250601_02:06", &tarball)]);
    let b = build(
        d,
        &format!(
            "name: rocky-9\ndistro: rocky\nrelease: \"9\"\nlxc:\n  linuxcontainers:\n    \
             image: rockylinux/9\n    variant: container\n    server: {}\n",
            c.base_url()
        ),
        false,
    );
    assert!(!b.ok);
    for needed in ["systemd", "NetworkManager", "rockylinux-9-default"] {
        assert!(b.stderr.contains(needed), "{needed} not in:\n{}", b.stderr);
    }
}

#[test]
fn ubuntus_cloud_image_root_tarball_builds_and_pct_sets_it_up() {
    require_root("pct's extraction keeps the template's owners");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = Catalog::new(d);
    let root = ubuntu_cloudimg_root_base(d, "24.04", "noble");
    publish_with_sha256sums(&c, "releases/24.04/release", &[&root]);
    let base = format!("{}/releases/24.04/release", c.base_url());
    let b = build(
        d,
        &format!(
            "name: ubuntu-24.04\ndistro: ubuntu\nrelease: \"24.04\"\nlxc:\n  tarball:\n    \
             url: {base}/ubuntu-24.04-server-cloudimg-amd64-root.tar.xz\n    \
             sha256-url: {base}/SHA256SUMS\n"
        ),
        false,
    );
    assert!(b.ok, "{}", b.stderr);
    let name = format!("ubuntu-24.04-k3s-worker_{WORKER}");
    assert_eq!(manifest(&b.out, &name)["pct"]["plugin"], "ubuntu");
    let (distro, rootfs) = pct_create(d, &b.out.join(&name));
    assert_eq!(distro.ostype(), "ubuntu");
    // 24.04 is past 23.04: pct enables networkd by a preset, and its
    // eth0.network sits beside the image's netplan file.
    assert!(rootfs.join("etc/systemd/network/eth0.network").is_file());
    let preset =
        std::fs::read_to_string(rootfs.join("etc/systemd/system-preset/00-pve.preset")).unwrap();
    assert!(
        preset.contains("enable systemd-networkd.service"),
        "{preset}"
    );
    assert!(rootfs.join("etc/netplan/50-cloud-init.yaml").is_file());
    assert!(rootfs.join("usr/local/sbin/firstboot-agent").is_file());
}
