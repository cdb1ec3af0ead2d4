//! Tests of the tar-stream rewrite against GNU tar: bases are built in memory
//! (where exact PAX records matter) or by GNU tar from a real directory (device
//! nodes, hard links, sparse files), and outputs are extracted with exactly the
//! flags `pct create` uses. They need GNU tar and zstd and run as root (device
//! nodes, ownership), like `pct create`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

use ::tar::{EntryType, Header};
use sha2::Digest;

use super::*;
use crate::layer::{Content, Layer, Meta, Op};

/// The entry policy, layer entries below base symlinks, and cancellation.
mod safety;

const MTIME: u64 = 1_700_000_000;
const CAP_NET_RAW: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,
];

// ---------------------------------------------------------------- helpers

/// Runs a command and returns stdout; fails the test with stderr (and how to
/// install the tool) if it cannot run or fails.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e}; install it with `apt-get install tar zstd xz-utils gzip`")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `tar xpf` with the flags of pve-container's `restore_tar_archive`.
fn extract_like_pct(archive: &Path, dest: &Path) {
    fs::create_dir_all(dest).unwrap();
    let mut cmd = Command::new("tar");
    cmd.arg("xpf").arg(archive);
    if archive.extension().is_some_and(|e| e == "zst") {
        cmd.arg("--zstd");
    }
    cmd.args([
        "--totals",
        "--one-file-system",
        "-p",
        "--sparse",
        "--numeric-owner",
        "--acls",
        "--xattrs",
        "--xattrs-include=user.*",
        "--xattrs-include=security.capability",
        "--warning=no-file-ignored",
        "--warning=no-xattr-write",
        "-C",
    ])
    .arg(dest)
    .args(["--skip-old-files", "--anchored", "--exclude", "./dev/*"]);
    run(&mut cmd);
}

/// xattrs and ACLs of extracted files as GNU tar sees them: `x: …`/`a: …` lines.
fn xattr_listing(dir: &Path, member: &str) -> String {
    let archive = dir.with_extension("relist.tar");
    run(Command::new("tar")
        .args(["--acls", "--xattrs", "--xattrs-include=*", "-cf"])
        .arg(&archive)
        .arg("-C")
        .arg(dir)
        .arg(member));
    run(Command::new("tar")
        .args(["--acls", "--xattrs", "--xattrs-include=*", "-tvvf"])
        .arg(&archive))
}

fn meta(mode: u32) -> Meta {
    Meta {
        mode,
        uid: 0,
        gid: 0,
        mtime: MTIME,
    }
}

fn write_file(path: &str, body: &str, mode: u32) -> Op {
    Op::WriteFile {
        path: path.into(),
        meta: meta(mode),
        content: Content::Inline(body.as_bytes().to_vec()),
    }
}

fn remove(pattern: &str) -> Op {
    Op::Remove {
        pattern: pattern.into(),
    }
}

fn no_cancel() -> AtomicBool {
    AtomicBool::new(false)
}

fn rewrite(base: &[u8], layer: &Layer) -> (Vec<u8>, RewriteStats) {
    let mut out = Vec::new();
    let stats = rewrite_tar(base, layer, &mut out, &no_cancel()).expect("rewrite");
    (out, stats)
}

/// Member names of a tar stream, in order, with their types (read with the
/// tar crate, independent of the code under test).
fn members(tar_bytes: &[u8]) -> Vec<(String, EntryType)> {
    let mut archive = ::tar::Archive::new(tar_bytes);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                String::from_utf8_lossy(&e.path_bytes()).into_owned(),
                e.header().entry_type(),
            )
        })
        .collect()
}

fn names(tar_bytes: &[u8]) -> Vec<String> {
    members(tar_bytes).into_iter().map(|(n, _)| n).collect()
}

fn read_member(tar_bytes: &[u8], name: &str) -> Vec<u8> {
    let mut archive = ::tar::Archive::new(tar_bytes);
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        if *e.path_bytes() == *name.as_bytes() {
            let mut v = Vec::new();
            e.read_to_end(&mut v).unwrap();
            return v;
        }
    }
    panic!("{name} not in archive: {:?}", names(tar_bytes));
}

/// Builds tar streams member by member with exactly the headers and PAX
/// records a test wants.
#[derive(Default)]
struct RawTar {
    bytes: Vec<u8>,
}

struct Entry<'a> {
    name: &'a str,
    kind: EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    data: &'a [u8],
    link: Option<&'a str>,
    pax: Vec<(&'a str, Vec<u8>)>,
}

impl<'a> Entry<'a> {
    fn new(name: &'a str, kind: EntryType) -> Self {
        let mode = if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        };
        Entry {
            name,
            kind,
            mode,
            uid: 0,
            gid: 0,
            data: b"",
            link: None,
            pax: Vec::new(),
        }
    }
}

impl RawTar {
    fn add(&mut self, e: Entry<'_>) -> &mut Self {
        let mut pax = e.pax;
        if e.name.len() > 100 {
            pax.push(("path", e.name.as_bytes().to_vec()));
        }
        if !pax.is_empty() {
            let mut body = Vec::new();
            for (k, v) in &pax {
                let rest = k.len() + v.len() + 3; // ' ', '=', '\n'
                let mut len = rest + rest.to_string().len();
                if len.to_string().len() + rest != len {
                    len += 1;
                }
                body.extend(format!("{len} {k}=").as_bytes());
                body.extend(v);
                body.push(b'\n');
            }
            let mut h = Header::new_ustar();
            h.as_old_mut().name[..13].copy_from_slice(b"./PaxHeaders/");
            h.set_entry_type(EntryType::XHeader);
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(MTIME);
            h.set_cksum();
            self.bytes.extend(h.as_bytes());
            self.push_data(&body);
        }
        let mut h = Header::new_ustar();
        let n = e.name.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&e.name.as_bytes()[..n]);
        if let Some(link) = e.link {
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(MTIME - 1000);
        h.set_size(e.data.len() as u64);
        h.set_cksum();
        self.bytes.extend(h.as_bytes());
        self.push_data(e.data);
        self
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        self.add(Entry::new(name, EntryType::Directory))
    }

    fn file(&mut self, name: &str, data: &str) -> &mut Self {
        self.add(Entry {
            data: data.as_bytes(),
            ..Entry::new(name, EntryType::Regular)
        })
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.add(Entry {
            link: Some(target),
            mode: 0o777,
            ..Entry::new(name, EntryType::Symlink)
        })
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.add(Entry {
            link: Some(target),
            ..Entry::new(name, EntryType::Link)
        })
    }

    fn push_data(&mut self, data: &[u8]) {
        self.bytes.extend(data);
        let padded = self.bytes.len().div_ceil(512) * 512;
        self.bytes.resize(padded, 0);
    }

    /// The archive with its end-of-archive marker.
    fn finish(&self) -> Vec<u8> {
        let mut b = self.bytes.clone();
        b.extend([0u8; 1024]);
        b
    }
}

/// A small Debian-like rootfs in `./` style.
fn debian_like() -> RawTar {
    let mut t = RawTar::default();
    t.dir("./")
        .dir("./etc/")
        .dir("./etc/ssh/")
        .file("./etc/ssh/sshd_config", "PermitRootLogin no\n")
        .file("./etc/ssh/ssh_host_rsa_key", "secret")
        .file("./etc/ssh/ssh_host_rsa_key.pub", "public")
        .file("./etc/ssh/ssh_host_ed25519_key", "secret")
        .file("./etc/machine-id", "0123456789abcdef0123456789abcdef\n")
        .symlink("./etc/os-release", "../usr/lib/os-release")
        .dir("./usr/")
        .dir("./usr/lib/")
        .file(
            "./usr/lib/os-release",
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
        )
        .dir("./usr/sbin/")
        .symlink("./sbin", "usr/sbin")
        .symlink("./lib", "usr/lib")
        .dir("./var/")
        .dir("./var/lib/")
        .dir("./var/lib/cloud/")
        .dir("./var/lib/cloud/instances/")
        .dir("./var/lib/cloud/instances/i-1/")
        .file("./var/lib/cloud/instances/i-1/obj.pkl", "state");
    t
}

/// A directory tree with every kind of member GNU tar can archive, archived
/// by GNU tar in `format` (`gnu` or `posix`).
fn gnu_tar_base(work: &Path, format: &str) -> PathBuf {
    let root = work.join(format!("root-{format}"));
    let mk = |p: &str| fs::create_dir_all(root.join(p)).unwrap();
    mk("etc");
    mk("sbin");
    mk("usr/bin");
    mk("tmp");
    mk("dev");
    mk("home/user");
    fs::write(root.join("etc/hostname"), "base\n").unwrap();
    fs::write(root.join("usr/bin/tool"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(
        root.join("usr/bin/tool"),
        fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool-alias")).unwrap();
    std::os::unix::fs::symlink("../etc/hostname", root.join("usr/hostname-link")).unwrap();
    fs::write(root.join("home/user/.profile"), "x").unwrap();
    std::os::unix::fs::chown(root.join("home/user"), Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::chown(
        root.join("home/user/.profile"),
        Some(100_000),
        Some(100_000),
    )
    .unwrap();
    run(Command::new("mknod")
        .arg(root.join("dev/null"))
        .args(["c", "1", "3"]));
    run(Command::new("mknod")
        .arg(root.join("dev/loop7"))
        .args(["b", "7", "0"]));
    run(Command::new("mkfifo").arg(root.join("usr/fifo")));
    // Sparse: 8 MiB with 5 bytes of data in the middle.
    let sparse = root.join("usr/sparse.img");
    let f = fs::File::create(&sparse).unwrap();
    f.set_len(8 << 20).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, b"hello", 4 << 20).unwrap();
    // Long names: >100 bytes (GNU long name / PAX path) and >255 bytes.
    let long_dir = format!("usr/{}/{}", "d".repeat(60), "e".repeat(60));
    mk(&long_dir);
    fs::write(root.join(&long_dir).join("f".repeat(140)), "deep").unwrap();
    std::os::unix::fs::symlink("l".repeat(120), root.join("usr/long-target-link")).unwrap();
    let out = work.join(format!("base-{format}.tar"));
    run(Command::new("tar")
        .args(["--sparse", "--numeric-owner", "--format", format, "-cf"])
        .arg(&out)
        .arg("-C")
        .arg(&root)
        .arg("."));
    out
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------- pass-through

#[test]
fn without_a_layer_gnu_tar_archives_pass_through_byte_for_byte() {
    let work = tempdir();
    for format in ["gnu", "posix"] {
        let base = fs::read(gnu_tar_base(work.path(), format)).unwrap();
        let (out, stats) = rewrite(&base, &Layer::default());
        // Identical up to our end marker; GNU tar's record padding follows in the base.
        let body = out.len() - 1024;
        assert_eq!(out[..body], base[..body], "{format}");
        assert!(out[body..].iter().all(|&b| b == 0));
        assert!(base[body..].iter().all(|&b| b == 0));
        assert_eq!(stats.entries_in, stats.entries_out);
        assert_eq!(stats.entries_dropped + stats.entries_added, 0);
        assert_eq!(stats.bytes_in, base.len() as u64);
        assert!(stats.has_sbin);
        assert_eq!(stats.name_style, NameStyle::DotSlash);
    }
}

#[test]
fn pct_extraction_of_a_template_keeps_owners_modes_links_devices_and_sparse_files() {
    let work = tempdir();
    for format in ["gnu", "posix"] {
        let base = gnu_tar_base(work.path(), format);
        let layer = Layer {
            ops: vec![write_file("/etc/hostname", "node\n", 0o644)],
        };
        let out = work.path().join(format!("t-{format}.tar.zst"));
        let opts = LxcOptions {
            zstd_level: 3,
            threads: 2,
        };
        write_template(&base, &layer, &out, &opts, &no_cancel()).unwrap();
        let dest = work.path().join(format!("x-{format}"));
        extract_like_pct(&out, &dest);

        let md = |p: &str| fs::symlink_metadata(dest.join(p)).unwrap();
        assert_eq!(
            fs::read_to_string(dest.join("etc/hostname")).unwrap(),
            "node\n"
        );
        assert_eq!(md("usr/bin/tool").mode() & 0o7777, 0o4755, "setuid");
        assert_eq!(md("tmp").mode() & 0o7777, 0o1777, "sticky");
        assert_eq!((md("home/user").uid(), md("home/user").gid()), (1000, 1000));
        let profile = md("home/user/.profile");
        assert_eq!((profile.uid(), profile.gid()), (100_000, 100_000));
        assert_eq!(md("usr/bin/tool").ino(), md("usr/bin/tool-alias").ino());
        assert_eq!(
            fs::read_link(dest.join("usr/hostname-link")).unwrap(),
            Path::new("../etc/hostname")
        );
        assert_eq!(
            fs::read_link(dest.join("usr/long-target-link")).unwrap(),
            Path::new(&"l".repeat(120))
        );
        assert!(md("usr/fifo").file_type().is_fifo());
        // pct excludes ./dev/*, so the devices (the only place the entry
        // policy allows them) are checked in the listing.
        assert!(dir_entries(&dest.join("dev")).is_empty());
        let listing = run(Command::new("tar")
            .args(["--zstd", "--numeric-owner", "-tvf"])
            .arg(&out));
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with("crw") && l.contains("1,3") && l.ends_with("./dev/null")),
            "{listing}"
        );
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with("brw") && l.contains("7,0") && l.ends_with("./dev/loop7")),
            "{listing}"
        );
        let sparse = md("usr/sparse.img");
        assert_eq!(sparse.len(), 8 << 20);
        assert!(sparse.blocks() * 512 < 1 << 20, "sparse file was filled");
        let mut data = vec![0u8; 5];
        std::os::unix::fs::FileExt::read_exact_at(
            &fs::File::open(dest.join("usr/sparse.img")).unwrap(),
            &mut data,
            4 << 20,
        )
        .unwrap();
        assert_eq!(&data, b"hello");
        let deep = dest
            .join("usr")
            .join("d".repeat(60))
            .join("e".repeat(60))
            .join("f".repeat(140));
        assert_eq!(fs::read_to_string(deep).unwrap(), "deep");
        pct_listing_check(&listing).unwrap();
    }
}

#[test]
fn xattrs_acls_and_file_capabilities_survive_pct_extraction() {
    let mut t = debian_like();
    t.dir("./usr/bin/");
    t.add(Entry {
        data: b"ELF",
        mode: 0o755,
        pax: vec![
            ("SCHILY.xattr.security.capability", CAP_NET_RAW.to_vec()),
            ("SCHILY.xattr.user.origin", b"line1\nline2".to_vec()),
        ],
        ..Entry::new("./usr/bin/ping", EntryType::Regular)
    });
    t.add(Entry {
        data: b"log",
        pax: vec![(
            "SCHILY.acl.access",
            b"user::rw-,user:1000:r--,group::r--,mask::r--,other::r--".to_vec(),
        )],
        ..Entry::new("./var/acl-file", EntryType::Regular)
    });
    let work = tempdir();
    let base = work.path().join("base.tar");
    fs::write(&base, t.finish()).unwrap();
    let layer = Layer {
        ops: vec![remove("/etc/ssh/ssh_host_*")],
    };
    let out = work.path().join("t.tar.zst");
    write_template(
        &base,
        &layer,
        &out,
        &LxcOptions {
            zstd_level: 3,
            threads: 1,
        },
        &no_cancel(),
    )
    .unwrap();
    let dest = work.path().join("x");
    extract_like_pct(&out, &dest);

    let ping = xattr_listing(&dest, "./usr/bin/ping");
    assert!(ping.contains("x: 20 security.capability"), "{ping}");
    assert!(ping.contains("x: 11 user.origin"), "{ping}");
    let acl = xattr_listing(&dest, "./var/acl-file");
    assert!(acl.contains("a: user::rw-,user:"), "{acl}");
    assert!(acl.contains("mask::r--"), "{acl}");
}

// ---------------------------------------------------------------- layer ops

#[test]
fn removal_patterns_drop_files_and_whole_subtrees() {
    let layer = Layer {
        ops: vec![
            remove("/etc/ssh/ssh_host_*"),
            remove("/var/lib/cloud/instances/*"),
        ],
    };
    let (out, stats) = rewrite(&debian_like().finish(), &layer);
    let n = names(&out);
    assert!(!n.iter().any(|p| p.contains("ssh_host_")), "{n:?}");
    assert!(n.contains(&"./etc/ssh/sshd_config".to_owned()));
    assert!(n.contains(&"./var/lib/cloud/instances/".to_owned()));
    assert!(!n.iter().any(|p| p.contains("i-1")), "{n:?}");
    assert_eq!(stats.entries_dropped, 5);
    assert_eq!(stats.entries_out, stats.entries_in - 5);
}

#[test]
fn replaced_files_appear_once_with_the_layer_content_after_the_base() {
    let layer = Layer {
        ops: vec![write_file("/etc/machine-id", "", 0o444)],
    };
    let (out, stats) = rewrite(&debian_like().finish(), &layer);
    let n = names(&out);
    assert_eq!(n.iter().filter(|p| p.ends_with("machine-id")).count(), 1);
    assert_eq!(n.last().unwrap(), "./etc/machine-id");
    assert_eq!(read_member(&out, "./etc/machine-id"), b"");
    assert_eq!((stats.entries_dropped, stats.entries_added), (1, 1));
}

#[test]
fn added_files_get_missing_parents_in_the_base_style() {
    let layer = Layer {
        ops: vec![
            write_file("/etc/rancher/k3s/config.yaml", "token: x\n", 0o600),
            Op::Symlink {
                path: "/etc/systemd/system/multi-user.target.wants/k3s.service".into(),
                target: "/etc/systemd/system/k3s.service".into(),
                meta: meta(0o777),
            },
        ],
    };
    let (out, stats) = rewrite(&debian_like().finish(), &layer);
    let added: Vec<_> = members(&out)
        .into_iter()
        .skip(stats.entries_passed as usize)
        .collect();
    let expect = [
        ("./etc/rancher/", EntryType::Directory),
        ("./etc/rancher/k3s/", EntryType::Directory),
        ("./etc/rancher/k3s/config.yaml", EntryType::Regular),
        ("./etc/systemd/", EntryType::Directory),
        ("./etc/systemd/system/", EntryType::Directory),
        (
            "./etc/systemd/system/multi-user.target.wants/",
            EntryType::Directory,
        ),
        (
            "./etc/systemd/system/multi-user.target.wants/k3s.service",
            EntryType::Symlink,
        ),
    ];
    let added: Vec<(&str, EntryType)> = added.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    assert_eq!(added, expect);
    assert_eq!(stats.parents_created, 5);
    assert_eq!(stats.entries_added, 7);

    let mut archive = ::tar::Archive::new(&out[..]);
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        if &*e.path_bytes() == b"./etc/rancher/k3s/config.yaml" {
            let h = e.header();
            assert_eq!(h.mode().unwrap(), 0o600);
            assert_eq!(h.mtime().unwrap(), MTIME);
            assert_eq!(h.username().unwrap(), Some("root"));
        }
        if &*e.path_bytes() == b"./etc/rancher/" {
            assert_eq!(e.header().mode().unwrap(), 0o755);
            assert_eq!(e.header().mtime().unwrap(), MTIME);
        }
    }
}

#[test]
fn a_parent_that_is_a_regular_file_is_a_layer_error() {
    let layer = Layer {
        ops: vec![write_file("/etc/machine-id/x", "", 0o644)],
    };
    let mut out = Vec::new();
    let err = rewrite_tar(&debian_like().finish()[..], &layer, &mut out, &no_cancel()).unwrap_err();
    assert!(
        matches!(err, OutputError::Layer { .. }) && err.to_string().contains("/etc/machine-id"),
        "{err}"
    );
}

#[test]
fn layer_directories_replace_base_directories_in_place_so_pct_applies_their_mode() {
    // GNU tar --skip-old-files ignores a directory entry for an existing
    // directory; the layer's mode must therefore come before the children.
    let layer = Layer {
        ops: vec![
            Op::Mkdir {
                path: "/var/lib/cloud".into(),
                meta: meta(0o700),
            },
            Op::Mkdir {
                path: "/opt/new".into(),
                meta: meta(0o750),
            },
        ],
    };
    let (out, stats) = rewrite(&debian_like().finish(), &layer);
    let n = names(&out);
    let pos = |p: &str| n.iter().position(|x| x == p).unwrap();
    assert_eq!(n.iter().filter(|p| *p == "./var/lib/cloud/").count(), 1);
    assert!(pos("./var/lib/cloud/") < pos("./var/lib/cloud/instances/"));
    assert_eq!(n.last().unwrap(), "./opt/new/");
    assert_eq!(stats.parents_created, 1); // ./opt/

    let work = tempdir();
    let archive = work.path().join("t.tar");
    fs::write(&archive, &out).unwrap();
    let dest = work.path().join("x");
    extract_like_pct(&archive, &dest);
    let mode = |p: &str| fs::metadata(dest.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("var/lib/cloud"), 0o700);
    assert_eq!(mode("opt/new"), 0o750);
}

#[test]
fn a_layer_directory_is_written_before_base_entries_inside_it() {
    // The base has children of /srv/data but no entry for the directory itself.
    let mut t = RawTar::default();
    t.dir("./").dir("./srv/").file("./srv/data/a", "a");
    let layer = Layer {
        ops: vec![Op::Mkdir {
            path: "/srv/data".into(),
            meta: meta(0o711),
        }],
    };
    let (out, _) = rewrite(&t.finish(), &layer);
    assert_eq!(names(&out), ["./", "./srv/", "./srv/data/", "./srv/data/a"]);
}

#[test]
fn a_later_remove_undoes_an_earlier_write() {
    let layer = Layer {
        ops: vec![
            write_file("/etc/tmp-note", "x", 0o644),
            remove("/etc/tmp-*"),
        ],
    };
    let (out, stats) = rewrite(&debian_like().finish(), &layer);
    assert!(!names(&out).iter().any(|n| n.contains("tmp-note")));
    assert_eq!(stats.entries_added, 0);
}

#[test]
fn writing_a_file_over_a_base_directory_drops_its_subtree() {
    let layer = Layer {
        ops: vec![write_file("/var/lib/cloud", "not a dir", 0o644)],
    };
    let (out, _) = rewrite(&debian_like().finish(), &layer);
    let n = names(&out);
    assert!(
        !n.iter().any(|p| p.starts_with("./var/lib/cloud/")),
        "{n:?}"
    );
    assert_eq!(n.last().unwrap(), "./var/lib/cloud");
}

#[test]
fn long_added_names_and_link_targets_extract_with_gnu_tar() {
    let long_path = format!("/opt/{}/{}/file", "a".repeat(99), "b".repeat(200));
    let long_target = format!("/{}", "t".repeat(150));
    let layer = Layer {
        ops: vec![
            write_file(&long_path, "long", 0o644),
            Op::Symlink {
                path: "/opt/link".into(),
                target: long_target.clone(),
                meta: meta(0o777),
            },
        ],
    };
    let (out, _) = rewrite(&debian_like().finish(), &layer);
    let work = tempdir();
    let archive = work.path().join("t.tar");
    fs::write(&archive, &out).unwrap();
    let dest = work.path().join("x");
    extract_like_pct(&archive, &dest);
    let file = dest.join(long_path.trim_start_matches('/'));
    assert_eq!(fs::read_to_string(file).unwrap(), "long");
    assert_eq!(
        fs::read_link(dest.join("opt/link")).unwrap(),
        Path::new(&long_target)
    );
}

#[test]
fn host_files_are_streamed_and_checked() {
    let work = tempdir();
    let host = work.path().join("k3s");
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(&host, &body).unwrap();
    let sha = node_spec::Sha256Hex::from_digest(&sha2::Sha256::digest(&body)).to_string();
    let op = |size: u64, sha256: &str| Op::WriteFile {
        path: "/usr/local/bin/k3s".into(),
        meta: meta(0o755),
        content: Content::HostFile {
            path: host.clone(),
            size,
            sha256: sha256.into(),
        },
    };
    let base = debian_like().finish();
    let (out, _) = rewrite(
        &base,
        &Layer {
            ops: vec![op(body.len() as u64, &sha)],
        },
    );
    assert_eq!(read_member(&out, "./usr/local/bin/k3s"), body);

    let mut sink = Vec::new();
    let wrong_size = Layer {
        ops: vec![op(body.len() as u64 - 1, &sha)],
    };
    let err = rewrite_tar(&base[..], &wrong_size, &mut sink, &no_cancel()).unwrap_err();
    assert!(matches!(err, OutputError::HostFileChanged { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("changed since the build was planned"),
        "{err}"
    );

    let other_sha = "0".repeat(64);
    let wrong_sha = Layer {
        ops: vec![op(body.len() as u64, &other_sha)],
    };
    let err = rewrite_tar(&base[..], &wrong_sha, &mut sink, &no_cancel()).unwrap_err();
    assert!(
        matches!(err, OutputError::HostFileChanged { ref found, .. } if found.contains(&sha)),
        "{err}"
    );
}

// ---------------------------------------------------------------- hard links

#[test]
fn hard_links_follow_a_replaced_target_and_vanish_with_a_removed_one() {
    let mut t = debian_like();
    t.dir("./usr/bin/")
        .file("./usr/bin/perl", "old perl")
        .hardlink("./usr/bin/perl5.36", "./usr/bin/perl")
        .file("./usr/bin/gone", "x")
        .hardlink("./usr/bin/gone-alias", "./usr/bin/gone")
        .file("./usr/bin/kept", "k")
        .hardlink("./usr/bin/kept-alias", "./usr/bin/kept");
    let layer = Layer {
        ops: vec![
            write_file("/usr/bin/perl", "new perl", 0o755),
            remove("/usr/bin/gone"),
        ],
    };
    let (out, stats) = rewrite(&t.finish(), &layer);
    assert_eq!(
        (stats.hard_links_deferred, stats.hard_links_dropped),
        (1, 1)
    );
    let n = names(&out);
    assert!(!n.iter().any(|p| p.contains("gone")), "{n:?}");
    let pos = |p: &str| n.iter().position(|x| x == p).unwrap();
    assert!(pos("./usr/bin/perl") < pos("./usr/bin/perl5.36"));
    assert!(pos("./usr/bin/kept") < pos("./usr/bin/kept-alias"));

    let work = tempdir();
    let archive = work.path().join("t.tar");
    fs::write(&archive, &out).unwrap();
    let dest = work.path().join("x");
    extract_like_pct(&archive, &dest);
    let ino = |p: &str| fs::metadata(dest.join(p)).unwrap().ino();
    assert_eq!(ino("usr/bin/perl"), ino("usr/bin/perl5.36"));
    assert_eq!(
        fs::read_to_string(dest.join("usr/bin/perl5.36")).unwrap(),
        "new perl"
    );
    assert_eq!(ino("usr/bin/kept"), ino("usr/bin/kept-alias"));
}

#[test]
fn a_hard_link_to_a_removed_file_is_dropped_and_counted() {
    let mut t = debian_like();
    t.file("./etc/a", "a").hardlink("./etc/b", "./etc/a");
    let layer = Layer {
        ops: vec![remove("/etc/a")],
    };
    let (out, stats) = rewrite(&t.finish(), &layer);
    assert!(!names(&out).iter().any(|p| p == "./etc/b"));
    assert_eq!(stats.entries_dropped, 2);
}

// ---------------------------------------------------------------- name styles, capture

#[test]
fn bare_bases_get_bare_added_names() {
    let mut t = RawTar::default();
    t.dir("etc/").file("etc/hostname", "base").dir("sbin/");
    let layer = Layer {
        ops: vec![
            write_file("/etc/hostname", "node", 0o644),
            write_file("/opt/x/y", "y", 0o644),
        ],
    };
    let (out, stats) = rewrite(&t.finish(), &layer);
    assert_eq!(stats.name_style, NameStyle::Bare);
    assert_eq!(
        names(&out),
        ["etc/", "sbin/", "etc/hostname", "opt/", "opt/x/", "opt/x/y"]
    );
    assert!(stats.has_sbin);
}

#[test]
fn os_release_is_followed_through_its_symlink_and_lsb_release_captured() {
    let mut t = debian_like();
    t.file("./etc/lsb-release", "DISTRIB_ID=Ubuntu\n");
    let (_, stats) = rewrite(&t.finish(), &Layer::default());
    assert!(stats.os_release.as_deref().unwrap().contains("ID=debian"));
    assert_eq!(stats.lsb_release.as_deref(), Some("DISTRIB_ID=Ubuntu\n"));
    assert!(stats.has_sbin);

    // What the layer writes is what the image holds.
    let layer = Layer {
        ops: vec![write_file("/usr/lib/os-release", "ID=custom\n", 0o644)],
    };
    let (_, stats) = rewrite(&debian_like().finish(), &layer);
    assert_eq!(stats.os_release.as_deref(), Some("ID=custom\n"));

    let mut no_sbin = RawTar::default();
    no_sbin.dir("./").dir("./etc/");
    let (_, stats) = rewrite(&no_sbin.finish(), &Layer::default());
    assert!(!stats.has_sbin);
    assert_eq!(stats.os_release, None);

    // pct's check reads `tar -tv`, which shows names as stored: a directory
    // stored without its slash, or a file, does not satisfy it.
    for sbin in [
        Entry::new("./sbin", EntryType::Directory),
        Entry::new("./sbin", EntryType::Regular),
    ] {
        let mut t = RawTar::default();
        t.dir("./").add(sbin);
        let (_, stats) = rewrite(&t.finish(), &Layer::default());
        assert!(!stats.has_sbin);
    }
    // A hard link named sbin does.
    let mut t = RawTar::default();
    t.dir("./")
        .dir("./usr/")
        .file("./usr/x", "")
        .hardlink("./sbin", "./usr/x");
    assert!(rewrite(&t.finish(), &Layer::default()).1.has_sbin);
}

// ---------------------------------------------------------------- templates

fn layer_for_template() -> Layer {
    Layer {
        ops: vec![
            remove("/etc/ssh/ssh_host_*"),
            write_file("/etc/machine-id", "", 0o444),
            write_file("/etc/firstboot-agent/defaults.yaml", "schema: 1\n", 0o644),
        ],
    }
}

/// A base of `blobs` × 512 KiB; 48 blobs are enough for zstd to cut the
/// stream into several multi-threaded jobs.
fn large_base(work: &Path, blobs: usize) -> PathBuf {
    let mut t = debian_like();
    let mut seed = 0x2545_f491_u32;
    for i in 0..blobs {
        // Compressible but not trivially so: xorshift noise over a small alphabet.
        let data: String = (0..512 * 1024)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                (b'a' + (seed % 16) as u8) as char
            })
            .collect();
        t.file(&format!("./usr/lib/blob{i}"), &data);
    }
    let path = work.join("large.tar");
    fs::write(&path, t.finish()).unwrap();
    path
}

#[test]
fn templates_are_byte_identical_across_runs_and_thread_counts() {
    let work = tempdir();
    let base = large_base(work.path(), 48);
    let layer = layer_for_template();
    let mut digests = BTreeMap::new();
    for (run_no, threads) in [(0, 1u32), (1, 1), (2, 2), (3, 4), (4, 0)] {
        let out = work.path().join(format!("t{run_no}.tar.zst"));
        let opts = LxcOptions {
            zstd_level: 3,
            threads,
        };
        let res = write_template(&base, &layer, &out, &opts, &no_cancel()).unwrap();
        let bytes = fs::read(&out).unwrap();
        assert_eq!(res.size, bytes.len() as u64);
        assert_eq!(
            res.sha256,
            node_spec::Sha256Hex::from_digest(&sha2::Sha256::digest(&bytes))
        );
        assert_eq!(fs::metadata(&out).unwrap().mode() & 0o777, 0o644);
        digests.insert(run_no, res.sha256);
    }
    let first = &digests[&0];
    assert!(digests.values().all(|d| d == first), "{digests:?}");
}

#[test]
fn template_is_a_valid_zstd_file_with_checksum_accepted_by_pct() {
    let work = tempdir();
    let base = work.path().join("base.tar");
    fs::write(&base, debian_like().finish()).unwrap();
    let out = work.path().join("debian-12-k3s_1.0-1_amd64.tar.zst");
    let res = write_template(
        &base,
        &layer_for_template(),
        &out,
        &LxcOptions::default(),
        &no_cancel(),
    )
    .unwrap();
    run(Command::new("zstd").arg("-t").arg(&out));
    let header = run(Command::new("zstd").args(["-lv"]).arg(&out));
    assert!(header.contains("Check: XXH64"), "{header}");
    let listing = run(Command::new("tar")
        .args(["--zstd", "--numeric-owner", "-tvf"])
        .arg(&out));
    pct_listing_check(&listing).unwrap();
    assert_eq!(listing.lines().count() as u64, res.stats.entries_out);
    assert_eq!(
        dir_entries(work.path()),
        ["base.tar", "debian-12-k3s_1.0-1_amd64.tar.zst"]
    );
}

#[test]
fn compressed_bases_are_detected_by_magic_bytes() {
    let work = tempdir();
    let plain = debian_like().finish();
    let tar_path = work.path().join("base.tar");
    fs::write(&tar_path, &plain).unwrap();
    for (tool, args) in [
        ("gzip", ["-k", "-f"]),
        ("xz", ["-k", "-f"]),
        ("zstd", ["-q", "-f"]),
    ] {
        run(Command::new(tool).args(args).arg(&tar_path));
    }
    for name in ["base.tar", "base.tar.gz", "base.tar.xz", "base.tar.zst"] {
        let path = work.path().join(name);
        // A misleading name must not matter.
        let renamed = work.path().join(format!("{name}.blob"));
        fs::copy(&path, &renamed).unwrap();
        let mut decompressed = Vec::new();
        open_base(&renamed)
            .unwrap()
            .read_to_end(&mut decompressed)
            .unwrap();
        assert_eq!(decompressed, plain, "{name}");
    }
    let not_tar = work.path().join("notes.txt");
    fs::write(&not_tar, "hello").unwrap();
    let err = open_base(&not_tar).err().unwrap();
    assert!(matches!(err, OutputError::NotTar { .. }));
    assert!(err.to_string().contains("not a tar archive"), "{err}");
}

// ---------------------------------------------------------------- failures

fn assert_no_output(dir: &Path, keep: &[&str]) {
    let left: Vec<String> = dir_entries(dir)
        .into_iter()
        .filter(|n| !keep.contains(&n.as_str()))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn template_err(base_bytes: &[u8], name: &str) -> OutputError {
    let work = tempdir();
    let base = work.path().join(name);
    fs::write(&base, base_bytes).unwrap();
    let out = work.path().join("out.tar.zst");
    let opts = LxcOptions {
        zstd_level: 3,
        threads: 2,
    };
    let err = write_template(&base, &layer_for_template(), &out, &opts, &no_cancel()).unwrap_err();
    assert_no_output(work.path(), &[name]);
    err
}

#[test]
fn truncated_tarballs_fail_loudly_and_leave_nothing() {
    let full = debian_like().finish();
    let body_end = full.len() - 1024;
    // Find the start of a file's data to cut inside it.
    let member_data = full
        .windows(b"PermitRootLogin".len())
        .position(|w| w == b"PermitRootLogin")
        .unwrap();
    for (cut, what) in [
        (body_end, "at a member boundary without the end marker"),
        (body_end - 512 - 300, "inside a header"),
        (member_data + 5, "inside file data"),
        (0x200 * 3 + 7, "early"),
    ] {
        let err = template_err(&full[..cut], "base.tar");
        let msg = err.to_string();
        assert!(
            matches!(err, OutputError::CorruptBase { .. }),
            "{what}: {msg}"
        );
        assert!(
            msg.contains("is truncated or corrupt at entry"),
            "{what}: {msg}"
        );
        assert!(msg.contains("truncated"), "{what}: {msg}");
    }
    // The error names the member being read.
    let err = template_err(&full[..member_data + 5], "base.tar").to_string();
    assert!(err.contains("./etc/ssh/sshd_config"), "{err}");
}

#[test]
fn corrupt_headers_are_reported() {
    let mut bad = debian_like().finish();
    bad[512 * 2 + 10] ^= 0x55; // inside the third header's name
    let err = template_err(&bad, "base.tar").to_string();
    assert!(err.contains("checksum mismatch"), "{err}");
}

#[test]
fn corrupt_or_truncated_compressed_bases_fail_loudly() {
    let work = tempdir();
    let plain = large_base(work.path(), 4);
    for (tool, ext) in [("gzip", "gz"), ("xz", "xz"), ("zstd", "zst")] {
        run(Command::new(tool).args(["-k", "-f", "-q"]).arg(&plain));
        let packed = fs::read(work.path().join(format!("large.tar.{ext}"))).unwrap();
        // Flip a byte in the middle of the compressed stream.
        let mut flipped = packed.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0xff;
        let err = template_err(&flipped, &format!("flipped.{ext}"));
        assert!(
            matches!(err, OutputError::CorruptBase { .. }),
            "{tool} flipped: {err}"
        );
        // Cut the stream: in data, and just before the trailer/checksum.
        for cut in [packed.len() / 2, packed.len() - 4] {
            let err = template_err(&packed[..cut], &format!("cut.{ext}"));
            assert!(
                matches!(err, OutputError::CorruptBase { .. }),
                "{tool} cut at {cut}: {err}"
            );
        }
    }
}

#[test]
fn cancellation_stops_the_build_and_leaves_nothing() {
    let work = tempdir();
    let base = large_base(work.path(), 32);
    let out = work.path().join("out.tar.zst");
    let cancel = AtomicBool::new(true);
    let err = write_template(
        &base,
        &layer_for_template(),
        &out,
        &LxcOptions::default(),
        &cancel,
    )
    .unwrap_err();
    assert!(matches!(err, OutputError::Interrupted), "{err}");
    assert_no_output(work.path(), &["large.tar"]);

    // Set while running: a reader that raises the flag after some megabytes.
    struct Trip<'a, R> {
        inner: R,
        read: u64,
        flag: &'a AtomicBool,
    }
    impl<R: Read> Read for Trip<'_, R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read += n as u64;
            if self.read > 8 << 20 {
                self.flag.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(n)
        }
    }
    let flag = AtomicBool::new(false);
    let input = Trip {
        inner: fs::File::open(&base).unwrap(),
        read: 0,
        flag: &flag,
    };
    let mut sink = Vec::new();
    let err = rewrite_tar(input, &layer_for_template(), &mut sink, &flag).unwrap_err();
    assert!(matches!(err, OutputError::Interrupted), "{err}");
    assert!(
        sink.len() < 20 << 20,
        "stopped late: {} bytes written",
        sink.len()
    );
}

#[test]
fn write_failures_name_the_output() {
    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("No space left on device"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let err = rewrite_tar(
        &debian_like().finish()[..],
        &Layer::default(),
        Full,
        &no_cancel(),
    )
    .unwrap_err();
    // The message names the output; the OS error is its cause, printed
    // once by whoever prints the chain.
    assert!(err.to_string().contains("(output stream)"), "{err}");
    let chain = crate::source::Chain(&err).to_string();
    assert_eq!(
        chain.matches("No space left on device").count(),
        1,
        "{chain}"
    );
    assert!(matches!(err, OutputError::Write { .. }));
}

#[test]
fn an_existing_template_is_kept_when_a_rebuild_fails() {
    let work = tempdir();
    let out = work.path().join("out.tar.zst");
    fs::write(&out, "previous").unwrap();
    let base = work.path().join("base.tar");
    fs::write(&base, &debian_like().finish()[..2048]).unwrap();
    let opts = LxcOptions {
        zstd_level: 3,
        threads: 1,
    };
    write_template(&base, &Layer::default(), &out, &opts, &no_cancel()).unwrap_err();
    assert_eq!(fs::read_to_string(&out).unwrap(), "previous");
    assert_no_output(work.path(), &["base.tar", "out.tar.zst"]);
}

#[test]
fn invalid_zstd_levels_are_rejected() {
    let work = tempdir();
    let base = work.path().join("base.tar");
    fs::write(&base, debian_like().finish()).unwrap();
    let opts = LxcOptions {
        zstd_level: 99,
        threads: 1,
    };
    let err = write_template(
        &base,
        &Layer::default(),
        &work.path().join("o.tar.zst"),
        &opts,
        &no_cancel(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("zstd level 99"), "{err}");
}

#[test]
fn relative_layer_paths_are_rejected() {
    let layer = Layer {
        ops: vec![write_file("etc/x", "", 0o644)],
    };
    let err = rewrite_tar(
        &debian_like().finish()[..],
        &layer,
        Vec::new(),
        &no_cancel(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("must be absolute"), "{err}");
}

#[test]
fn progress_counts_the_compressed_base() {
    let work = tempdir();
    let base = work.path().join("base.tar");
    fs::write(&base, debian_like().finish()).unwrap();
    run(Command::new("zstd").args(["-q", "-f"]).arg(&base));
    let packed = work.path().join("base.tar.zst");
    let bar = indicatif::ProgressBar::hidden();
    let opts = LxcOptions {
        zstd_level: 3,
        threads: 1,
    };
    write_template_with_progress(
        &packed,
        &Layer::default(),
        &work.path().join("o.tar.zst"),
        &opts,
        &no_cancel(),
        Some(&bar),
    )
    .unwrap();
    assert_eq!(bar.position(), fs::metadata(&packed).unwrap().len());
}

#[test]
fn host_files_are_copied_in_bounded_chunks() {
    // K3s binaries and air-gap archives are hundreds of MB: the copy must go
    // through a bounded buffer, which shows as bounded write sizes.
    let work = tempdir();
    let host = work.path().join("big");
    let mut f = fs::File::create(&host).unwrap();
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..8 {
        f.write_all(&chunk).unwrap();
    }
    drop(f);
    let body = fs::read(&host).unwrap();
    let sha = node_spec::Sha256Hex::from_digest(&sha2::Sha256::digest(&body)).to_string();
    struct MaxWrite(usize, usize);
    impl Write for MaxWrite {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.max(buf.len());
            self.1 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let layer = Layer {
        ops: vec![Op::WriteFile {
            path: "/var/lib/rancher/k3s/agent/images/airgap.tar".into(),
            meta: meta(0o644),
            content: Content::HostFile {
                path: host,
                size: body.len() as u64,
                sha256: sha,
            },
        }],
    };
    let mut w = MaxWrite(0, 0);
    rewrite_tar(&debian_like().finish()[..], &layer, &mut w, &no_cancel()).unwrap();
    assert!(w.1 > 8 << 20);
    assert!(w.0 <= 1 << 20, "a single write of {} bytes", w.0);
}
