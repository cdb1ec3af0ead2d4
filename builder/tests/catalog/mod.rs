//! Loopback catalogs in the vendors' formats, and bases shaped like the
//! ones they serve, for tests that cannot reach Proxmox's or
//! linuxcontainers' servers.
//!
//! - [`Catalog::pveam`] writes Proxmox's appliance index as `pveam update`
//!   fetches it: `aplinfo-pve-9.dat.gz` and its detached signature
//!   `aplinfo-pve-9.dat.asc` (proxmox/pve-manager `PVE/APLInfo.pm`
//!   `download_aplinfo`), records with the fields of the live index.
//! - [`Catalog::simplestreams`] writes `streams/v1/index.json` and
//!   `streams/v1/images.json` as linuxcontainers.org serves them (lxc/incus
//!   `shared/simplestreams`: products `distro:release:arch:variant`,
//!   versions by date serial, a `root.tar.xz` item with path, size, sha256).
//! - The `*_base` functions build small rootfs trees with the layout of each
//!   vendor's base (empty executables stand in for programs); the source of
//!   each fact is cited where it is written.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256, Sha512};

/// A directory served on loopback by the stand-in's file server.
pub struct Catalog {
    pub www: PathBuf,
    server: k3s_standin::mirror::Mirror,
}

/// One template record for [`Catalog::pveam`].
pub struct Template<'a> {
    pub package: &'a str,
    pub version: &'a str,
    pub os: &'a str,
    /// The template file, copied to `images/system/<its name>`.
    pub file: &'a Path,
    /// The sha512 the index lists; the file's own when `None`.
    pub sha512: Option<String>,
}

impl Catalog {
    pub fn new(dir: &Path) -> Catalog {
        let www = dir.join("www");
        fs::create_dir_all(&www).unwrap();
        let server = k3s_standin::mirror::serve(
            &www,
            "127.0.0.1:0",
            k3s_standin::mirror::Faults::default(),
            false,
        )
        .unwrap();
        Catalog { www, server }
    }

    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// The paths requested so far, with the status answered.
    pub fn requested(&self) -> Vec<(String, u16)> {
        self.server
            .requests()
            .into_iter()
            .map(|r| (r.target, r.status))
            .collect()
    }

    /// The index URL a recipe names (`…/images/aplinfo-pve-9.dat`).
    pub fn pveam_index(&self) -> String {
        format!("{}/images/aplinfo-pve-9.dat", self.base_url())
    }

    /// Writes the pveam index listing `templates` (each file copied below
    /// `images/system/`), gzipped, and signs it with `key` when given.
    pub fn pveam(&self, templates: &[Template<'_>], key: Option<&Gpg>) {
        let images = self.www.join("images");
        fs::create_dir_all(images.join("system")).unwrap();
        // pve-manager's news entry comes first in the live index.
        let mut dat = String::from(
            "Package: pve-web-news\nVersion: 1.0\nType: lxc\nOS: none\nSection: none\n\
             Maintainer: Proxmox Support Team <support@proxmox.com>\n\
             Infopage: https://www.proxmox.com/en/news\nDescription: news\n text\n\n",
        );
        for t in templates {
            let name = t.file.file_name().unwrap().to_str().unwrap();
            fs::copy(t.file, images.join("system").join(name)).unwrap();
            let sha512 = t.sha512.clone().unwrap_or_else(|| sha512_file(t.file));
            dat.push_str(&format!(
                "Package: {}\nVersion: {}\nType: lxc\nOS: {}\nSection: system\n\
                 Maintainer: Proxmox Support Team <support@proxmox.com>\nArchitecture: amd64\n\
                 Location: system/{name}\nsha512sum: {sha512}\n\
                 Infopage: https://pve.proxmox.com/wiki/Linux_Container#pct_supported_distributions\n\
                 Description: {} (standard)\n A small system.\n\n",
                t.package, t.version, t.os, t.package
            ));
        }
        let plain = images.join("aplinfo-pve-9.dat");
        fs::write(&plain, &dat).unwrap();
        let mut gz = flate2::write::GzEncoder::new(
            fs::File::create(images.join("aplinfo-pve-9.dat.gz")).unwrap(),
            flate2::Compression::default(),
        );
        gz.write_all(dat.as_bytes()).unwrap();
        gz.finish().unwrap();
        if let Some(key) = key {
            key.sign(&plain, &images.join("aplinfo-pve-9.dat.asc"));
        }
        // pveam fetches only the .gz; the plain file was for signing.
        fs::remove_file(plain).unwrap();
    }

    /// Writes a simplestreams index listing `images`: (distro, release,
    /// variant, serial, rootfs tarball), each copied to its path.
    pub fn simplestreams(&self, images: &[(&str, &str, &str, &str, &Path)]) {
        let mut products = serde_json::Map::new();
        for (distro, release, variant, serial, file) in images {
            let key = format!("{distro}:{release}:amd64:{variant}");
            let path = format!("images/{distro}/{release}/amd64/{variant}/{serial}/rootfs.tar.xz");
            let dest = self.www.join(&path);
            fs::create_dir_all(dest.parent().unwrap()).unwrap();
            fs::copy(file, &dest).unwrap();
            let bytes = fs::read(file).unwrap();
            let item = serde_json::json!({
                "ftype": "root.tar.xz",
                "path": path,
                "size": bytes.len(),
                "sha256": hex(&Sha256::digest(&bytes)),
            });
            let meta = serde_json::json!({
                "ftype": "lxd.tar.xz",
                "path": format!("images/{distro}/{release}/amd64/{variant}/{serial}/incus.tar.xz"),
                "size": 1,
                "sha256": "00",
            });
            let product = products.entry(key).or_insert_with(|| {
                serde_json::json!({
                    "aliases": format!("{distro}/{release}/{variant}"),
                    "arch": "amd64", "os": distro, "release": release,
                    "release_title": release, "variant": variant, "versions": {}
                })
            });
            product["versions"][*serial] =
                serde_json::json!({"items": {"root.tar.xz": item, "lxd.tar.xz": meta}});
        }
        let keys: Vec<String> = products.keys().cloned().collect();
        let streams = self.www.join("streams/v1");
        fs::create_dir_all(&streams).unwrap();
        let images_json = serde_json::json!({
            "content_id": "images", "datatype": "image-downloads",
            "format": "products:1.0", "products": products
        });
        fs::write(streams.join("images.json"), images_json.to_string()).unwrap();
        let index = serde_json::json!({
            "format": "index:1.0",
            "index": {"images": {
                "datatype": "image-downloads", "path": "streams/v1/images.json",
                "format": "products:1.0", "products": keys
            }}
        });
        fs::write(streams.join("index.json"), index.to_string()).unwrap();
    }
}

/// A throw-away OpenPGP key (gpg, in its own home) and its public keyring.
pub struct Gpg {
    home: PathBuf,
    pub keyring: PathBuf,
}

/// gpg starts an agent for its home; it must not outlive the key.
impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(&self.home)
            .args(["--kill", "all"])
            .output();
    }
}

impl Gpg {
    pub fn new(dir: &Path) -> Gpg {
        let home = dir.join("gnupg");
        fs::create_dir_all(&home).unwrap();
        fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
        let gpg = |args: &[&str]| {
            let o = Command::new("gpg")
                .arg("--homedir")
                .arg(&home)
                .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
                .args(args)
                .output()
                .expect("gpg (apt-get install -y gnupg)");
            assert!(
                o.status.success(),
                "gpg {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            o.stdout
        };
        gpg(&[
            "--quick-gen-key",
            "imgbuild test <test@invalid>",
            "ed25519",
            "sign",
            "never",
        ]);
        let keyring = dir.join("trustedkeys.gpg");
        fs::write(&keyring, gpg(&["--export"])).unwrap();
        Gpg { home, keyring }
    }

    /// An armored detached signature of `file` at `sig`.
    pub fn sign(&self, file: &Path, sig: &Path) {
        let o = Command::new("gpg")
            .arg("--homedir")
            .arg(&self.home)
            .args(["--batch", "--yes", "--armor", "--detach-sign", "--output"])
            .arg(sig)
            .arg(file)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

pub fn sha512_file(p: &Path) -> String {
    hex(&Sha512::digest(fs::read(p).unwrap()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn exe(root: &Path, p: &str) {
    let path = root.join(p);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, "").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
}

fn file(root: &Path, p: &str, content: &str) {
    let path = root.join(p);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

fn link(root: &Path, p: &str, target: &str) {
    let path = root.join(p);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    symlink(target, path).unwrap();
}

/// `tar --numeric-owner -C root -c{flag}f dir/name .`
pub fn pack(root: &Path, dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    let flag = match name.rsplit('.').next() {
        Some("zst") => "--zstd",
        Some("xz") => "--xz",
        Some("gz") => "--gzip",
        _ => "--no-auto-compress",
    };
    let o = Command::new("tar")
        .args([
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            flag,
            "-C",
        ])
        .arg(root)
        .arg("-cf")
        .arg(&out)
        .arg(".")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// What every systemd userspace here has: merged /usr as Debian 12, Ubuntu
/// 22.04+ and Rocky 9 ship it (`/bin`, `/sbin`, `/lib`, `/lib64` are links
/// into `/usr`), systemd with `/sbin/init` pointing at it.
fn usr_merged(root: &Path) {
    for (l, t) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        fs::create_dir_all(root.join(t)).unwrap();
        link(root, l, t);
    }
    for d in [
        "etc/ssh", "var/log", "tmp", "root", "home", "srv", "dev", "run",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    exe(root, "usr/lib/systemd/systemd");
    link(root, "usr/sbin/init", "../lib/systemd/systemd");
    exe(root, "usr/bin/bash");
    link(root, "usr/bin/sh", "bash");
    file(root, "etc/machine-id", "0123456789abcdef0123456789abcdef\n");
}

/// Proxmox's `ubuntu-<release>-standard` template (built with Proxmox's
/// DAB from Ubuntu's archive): lsb-release and os-release from
/// `base-files`, which pct's Ubuntu plugin reads (pve-container
/// `Setup/Ubuntu.pm` `new`: `DISTRIB_ID=Ubuntu`, `DISTRIB_RELEASE=NN.NN`);
/// systemd-networkd, which that plugin configures (`setup_network`,
/// `setup_systemd_networkd`) and enables (`template_fixup` below 23.04, a
/// preset from 23.04); Debian's `debian_version` as Ubuntu's base-files
/// ships it.
pub fn ubuntu_standard_base(dir: &Path, release: &str, codename: &str) -> PathBuf {
    let root = dir.join(format!("ubuntu-{release}-root"));
    usr_merged(&root);
    let pretty = format!("Ubuntu {release} LTS");
    file(
        &root,
        "usr/lib/os-release",
        &format!(
            "PRETTY_NAME=\"{pretty}\"\nNAME=\"Ubuntu\"\nVERSION_ID=\"{release}\"\n\
             VERSION_CODENAME={codename}\nID=ubuntu\nID_LIKE=debian\nUBUNTU_CODENAME={codename}\n"
        ),
    );
    link(&root, "etc/os-release", "../usr/lib/os-release");
    file(
        &root,
        "etc/lsb-release",
        &format!(
            "DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE={release}\nDISTRIB_CODENAME={codename}\n\
             DISTRIB_DESCRIPTION=\"{pretty}\"\n"
        ),
    );
    file(&root, "etc/debian_version", "bookworm/sid\n");
    exe(&root, "usr/lib/systemd/systemd-networkd");
    file(
        &root,
        "usr/lib/systemd/system/systemd-networkd.service",
        "[Unit]\n",
    );
    file(
        &root,
        "usr/lib/systemd/system/systemd-networkd.socket",
        "[Unit]\n",
    );
    exe(&root, "usr/lib/systemd/systemd-resolved");
    fs::create_dir_all(root.join("etc/systemd/network")).unwrap();
    fs::create_dir_all(root.join("var/lib/dpkg")).unwrap();
    file(
        &root,
        "var/lib/dpkg/status",
        "Package: base-files\nStatus: install ok installed\n",
    );
    pack(
        &root,
        dir,
        &format!("ubuntu-{release}-standard_{release}-1_amd64.tar.zst"),
    )
}

/// linuxcontainers' `rockylinux/9` `default` image (lxc/lxc-ci
/// `images/rockylinux.yaml`): `rocky-release` with `redhat-release` linked
/// to it, which pct's CentOS plugin reads (pve-container `Setup/CentOS.pm`);
/// NetworkManager with its ifcfg-rh plugin (the `default` variant's
/// NetworkManager package set for containers, release 9), which reads the
/// `ifcfg-eth0` pct writes; `dhclient`; `/etc/sysconfig` with the
/// `network-scripts` directory the image's own ifcfg-eth0 lives in; the
/// rpm database; SELinux switched off (the image's post-packages step).
pub fn rockylinux_default_base(dir: &Path) -> PathBuf {
    let root = dir.join("rockylinux-9-root");
    usr_merged(&root);
    file(
        &root,
        "usr/lib/os-release",
        "NAME=\"Rocky Linux\"\nVERSION=\"9.6 (Blue Onyx)\"\nID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n\
         VERSION_ID=\"9.6\"\nPLATFORM_ID=\"platform:el9\"\nPRETTY_NAME=\"Rocky Linux 9.6 (Blue Onyx)\"\n",
    );
    link(&root, "etc/os-release", "../usr/lib/os-release");
    file(
        &root,
        "etc/rocky-release",
        "Rocky Linux release 9.6 (Blue Onyx)\n",
    );
    link(&root, "etc/redhat-release", "rocky-release");
    link(&root, "etc/system-release", "rocky-release");
    exe(&root, "usr/sbin/NetworkManager");
    exe(
        &root,
        "usr/lib64/NetworkManager/1.52.0-1.el9/libnm-settings-plugin-ifcfg-rh.so",
    );
    file(
        &root,
        "usr/lib/systemd/system/NetworkManager.service",
        "[Unit]\nDescription=Network Manager\n",
    );
    link(
        &root,
        "etc/systemd/system/multi-user.target.wants/NetworkManager.service",
        "/usr/lib/systemd/system/NetworkManager.service",
    );
    exe(&root, "usr/sbin/dhclient");
    file(
        &root,
        "etc/sysconfig/network-scripts/ifcfg-eth0",
        "DEVICE=eth0\nBOOTPROTO=dhcp\nONBOOT=yes\nHOSTNAME=LXC_NAME\nTYPE=Ethernet\nMTU=\nDHCP_HOSTNAME=LXC_NAME\n",
    );
    file(&root, "etc/sysconfig/network", "");
    file(
        &root,
        "etc/selinux/config",
        "SELINUX=disabled\nSELINUXTYPE=targeted\n",
    );
    file(&root, "var/lib/rpm/rpmdb.sqlite", "");
    link(
        &root,
        "etc/systemd/system/systemd-firstboot.service",
        "/dev/null",
    );
    pack(&root, dir, "rootfs.tar.xz")
}

/// Canonical's `ubuntu-<release>-server-cloudimg-amd64-root.tar.xz`: the
/// cloud image's root as a tarball (the `-root.tar.xz` file listed in the
/// release's `SHA256SUMS`). Ubuntu's base-files release files as above;
/// cloud-init and netplan, which render systemd-networkd configuration
/// (`/etc/netplan/50-cloud-init.yaml`); systemd-networkd and resolved.
pub fn ubuntu_cloudimg_root_base(dir: &Path, release: &str, codename: &str) -> PathBuf {
    let root = dir.join(format!("cloudimg-{release}-root"));
    usr_merged(&root);
    file(
        &root,
        "usr/lib/os-release",
        &format!("NAME=\"Ubuntu\"\nVERSION_ID=\"{release}\"\nID=ubuntu\nID_LIKE=debian\nVERSION_CODENAME={codename}\n"),
    );
    link(&root, "etc/os-release", "../usr/lib/os-release");
    file(
        &root,
        "etc/lsb-release",
        &format!("DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE={release}\nDISTRIB_CODENAME={codename}\n"),
    );
    exe(&root, "usr/lib/systemd/systemd-networkd");
    exe(&root, "usr/lib/systemd/systemd-resolved");
    exe(&root, "usr/bin/cloud-init");
    exe(&root, "usr/sbin/netplan");
    file(
        &root,
        "etc/netplan/50-cloud-init.yaml",
        "network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: true\n",
    );
    pack(
        &root,
        dir,
        &format!("ubuntu-{release}-server-cloudimg-amd64-root.tar.xz"),
    )
}

/// `SHA256SUMS` in the release directory, as Canonical writes it
/// (`<digest> *<name>`), listing `files` (copied into `www/<dir>/`).
pub fn publish_with_sha256sums(c: &Catalog, dir: &str, files: &[&Path]) {
    let d = c.www.join(dir);
    fs::create_dir_all(&d).unwrap();
    let mut sums = String::new();
    for f in files {
        let name = f.file_name().unwrap().to_str().unwrap();
        fs::copy(f, d.join(name)).unwrap();
        sums.push_str(&format!(
            "{} *{name}\n",
            hex(&Sha256::digest(fs::read(f).unwrap()))
        ));
    }
    fs::write(d.join("SHA256SUMS"), sums).unwrap();
}
