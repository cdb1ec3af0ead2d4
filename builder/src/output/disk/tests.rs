//! Tests against images made by the real tools (sfdisk, mke2fs, debugfs,
//! e2fsck). A missing tool fails the test with the package to install.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::gpt::{crc32, LINUX_FS_DATA, LINUX_ROOT_X86_64};
use super::*;
use crate::layer::{Content, Layer, Meta, Op};

const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";

pub(super) fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` is needed: apt-get install -y {package}"))
}

pub(super) fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    succeeded(cmd, out)
}

/// `out`, after asserting that `cmd` succeeded.
fn succeeded(cmd: &Command, out: Output) -> Output {
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub(super) fn run_stdin(cmd: &mut Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    succeeded(cmd, out)
}

/// A sparse `mib` MiB file partitioned by `sfdisk` from `script`.
fn sfdisk_image(dir: &Path, mib: u64, script: &str) -> PathBuf {
    let img = dir.join("disk.raw");
    fs::File::create(&img).unwrap().set_len(mib << 20).unwrap();
    run_stdin(
        Command::new(tool("sfdisk", "fdisk"))
            .args(["--quiet", "--no-reread", "--no-tell-kernel"])
            .arg(&img),
        script,
    );
    img
}

fn head(img: &Path, len: usize) -> Vec<u8> {
    let mut b = fs::read(img).unwrap();
    b.truncate(len);
    b
}

fn gpt_script(root_type: &str) -> String {
    format!(
        "label: gpt\nunit: sectors\n\
         start=2048, size=2048, type={BIOS_BOOT}, name=\"bios\"\n\
         start=4096, size=16384, type={ESP}, name=\"UEFI\"\n\
         start=20480, type={root_type}\n"
    )
}

#[test]
fn crc32_matches_the_ieee_check_value() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32(b""), 0);
}

#[test]
fn parses_sfdisk_gpt_and_finds_unnamed_linux_root() {
    let dir = tempfile::tempdir().unwrap();
    let img = sfdisk_image(dir.path(), 64, &gpt_script(LINUX_FS_DATA));
    let parts = parse_gpt(&head(&img, GPT_PROBE_LEN)).unwrap();
    assert_eq!(parts.len(), 3, "{parts:?}");
    assert_eq!(parts[0].index, 1);
    assert_eq!(parts[0].type_guid, BIOS_BOOT);
    assert_eq!(parts[0].name, "bios");
    assert_eq!((parts[0].first_lba, parts[0].last_lba), (2048, 4095));
    assert_eq!(parts[1].type_guid, ESP);
    assert_eq!(parts[1].name, "UEFI");
    assert_eq!(parts[2].name, "");
    assert_eq!(parts[2].unique_guid.len(), 36);
    assert_ne!(parts[2].unique_guid, parts[1].unique_guid);
    let root = find_root(&parts).unwrap();
    assert_eq!(root.index, 3);
    assert_eq!(root.offset_bytes(), 20480 * 512);
    // sfdisk aligns the end to 1 MiB below the 33-sector backup GPT.
    assert_eq!(root.last_lba, (63 << 11) - 1);
    assert_eq!(root.size_bytes(), (63 << 20) - 20480 * 512);
}

#[test]
fn root_type_wins_over_larger_filesystem_partition() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "label: gpt\nunit: sectors\n\
         start=2048, size=40960, type={LINUX_FS_DATA}, name=\"data\"\n\
         start=43008, size=8192, type={LINUX_ROOT_X86_64}, name=\"root\"\n"
    );
    let img = sfdisk_image(dir.path(), 32, &script);
    let parts = parse_gpt(&head(&img, GPT_PROBE_LEN)).unwrap();
    let root = find_root(&parts).unwrap();
    assert_eq!((root.index, root.name.as_str()), (2, "root"));
}

#[test]
fn largest_filesystem_partition_is_root_and_none_is_an_error() {
    let part = |index, first, last, type_guid: &str| Partition {
        index,
        type_guid: type_guid.into(),
        unique_guid: String::new(),
        first_lba: first,
        last_lba: last,
        name: String::new(),
    };
    let parts = vec![
        part(1, 2048, 4095, LINUX_FS_DATA),
        part(2, 4096, 99_999, LINUX_FS_DATA),
        part(3, 100_000, 100_999, LINUX_FS_DATA),
    ];
    assert_eq!(find_root(&parts).unwrap().index, 2);
    let err = find_root(&[part(1, 2048, 4095, ESP)]).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("no Linux root partition found; partitions: 1 (type C12A7328"),
        "{msg}"
    );
}

#[test]
fn corrupted_gpt_checksums_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let img = sfdisk_image(dir.path(), 64, &gpt_script(LINUX_FS_DATA));
    let good = head(&img, GPT_PROBE_LEN);

    let mut bad_header = good.clone();
    bad_header[512 + 56] ^= 0xFF; // disk GUID
    assert_eq!(parse_gpt(&bad_header), Err(DiskError::GptHeaderChecksum));
    assert_eq!(
        DiskError::GptHeaderChecksum.to_string(),
        "GPT header checksum mismatch"
    );

    let mut bad_entries = good.clone();
    bad_entries[1024 + 56] ^= 0xFF; // first entry's name
    assert_eq!(parse_gpt(&bad_entries), Err(DiskError::GptEntriesChecksum));

    let short = &good[..2 * 512 + 100];
    assert!(matches!(parse_gpt(short), Err(DiskError::Truncated { .. })));
}

#[test]
fn mbr_only_and_blank_images_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = sfdisk_image(dir.path(), 16, "label: dos\nstart=2048, type=83\n");
    let err = parse_gpt(&head(&img, GPT_PROBE_LEN)).unwrap_err();
    assert_eq!(err, DiskError::NoGpt);
    assert_eq!(err.to_string(), "no GPT (MBR-only disks are not supported)");

    let err = parse_gpt(&vec![0u8; GPT_PROBE_LEN]).unwrap_err();
    assert_eq!(err.to_string(), "not a disk image (no MBR signature)");
}

fn mke2fs(file: &Path, size_mib: u64, extra: &[&str]) {
    fs::File::create(file)
        .unwrap()
        .set_len(size_mib << 20)
        .unwrap();
    run(Command::new(tool("mke2fs", "e2fsprogs"))
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-L",
            "cloudimg-rootfs",
        ])
        .args(["-E", "lazy_itable_init=0,lazy_journal_init=0"])
        .args(extra)
        .arg(file)
        .env("E2FSPROGS_FAKE_TIME", "1700000000"));
}

#[test]
fn probes_ext4_superblock() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fs.img");
    mke2fs(&file, 32, &[]);
    let info = probe_filesystem(&head(&file, PROBE_LEN), 1).unwrap();
    assert_eq!(info.label, "cloudimg-rootfs");
    assert_eq!(info.kind, "ext4");
    assert_eq!(info.block_size, 4096);
    assert_eq!(info.blocks_count, 32 * 256);
    assert!(
        info.free_blocks > 0 && info.free_blocks < info.blocks_count,
        "{info:?}"
    );
    for f in ["has_journal", "extent", "flex_bg", "filetype"] {
        assert!(info.features.iter().any(|x| x == f), "{f}: {info:?}");
    }
    assert!(!info.needs_recovery && !info.encrypted);
    assert!(
        !info.features.iter().any(|f| f.starts_with("unknown")),
        "{info:?}"
    );

    let err = probe_filesystem(&vec![0u8; PROBE_LEN], 4).unwrap_err();
    assert_eq!(err, DiskError::UnknownFilesystem { index: 4 });
}

#[test]
fn encrypt_feature_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fs.img");
    mke2fs(&file, 16, &["-O", "encrypt"]);
    let info = probe_filesystem(&head(&file, PROBE_LEN), 1).unwrap();
    assert!(info.encrypted, "{info:?}");
    assert!(info.features.iter().any(|f| f == "encrypt"));
}

#[test]
fn the_ext_probe_names_xfs_and_lvm_it_is_handed() {
    let mut xfs = vec![0u8; PROBE_LEN];
    xfs[..4].copy_from_slice(b"XFSB");
    xfs[4..8].copy_from_slice(&4096u32.to_be_bytes());
    let msg = probe_filesystem(&xfs, 4).unwrap_err().to_string();
    assert_eq!(
        msg,
        "root partition 4 holds XFS where an ext2/3/4 filesystem was expected"
    );
    // `root::locate_root` reads XFS itself and looks inside an LVM PV
    // (rocky_tests.rs); this probe is only ever handed what remains.
    assert_eq!(
        super::xfs::probe_xfs(&xfs).map(|i| i.block_size),
        Some(4096)
    );

    let mut lvm = vec![0u8; PROBE_LEN];
    lvm[512..520].copy_from_slice(b"LABELONE");
    lvm[536..544].copy_from_slice(b"LVM2 001");
    let msg = probe_filesystem(&lvm, 2).unwrap_err().to_string();
    assert!(
        msg.starts_with("root partition 2 holds an LVM2 physical volume where"),
        "{msg}"
    );
}

/// Run `debugfs -R REQUEST SPEC` and return stdout.
fn debugfs_r(spec: &str, request: &str) -> String {
    let out = run(Command::new(tool("debugfs", "e2fsprogs"))
        .args(["-R", request])
        .arg(spec));
    String::from_utf8(out.stdout).unwrap()
}

/// Every entry below `dir`, recursively, through `debugfs ls -p`.
fn walk(spec: &str, dir: &str, out: &mut Vec<ListedEntry>) {
    for e in parse_ls_p(&debugfs_r(spec, &format!("ls -p \"{dir}\""))) {
        if e.name == "lost+found" {
            continue;
        }
        let path = format!("{}/{}", dir.trim_end_matches('/'), e.name);
        out.push(ListedEntry {
            path: path.clone(),
            is_dir: e.is_dir,
        });
        if e.is_dir {
            walk(spec, &path, out);
        }
    }
}

fn ls_entry(spec: &str, path: &str) -> Option<LsEntry> {
    let (dir, name) = path.rsplit_once('/').unwrap();
    let dir = if dir.is_empty() { "/" } else { dir };
    parse_ls_p(&debugfs_r(spec, &format!("ls -p \"{dir}\"")))
        .into_iter()
        .find(|e| e.name == name)
}

#[test]
fn applies_a_layer_to_ext4_inside_a_gpt_image() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = sfdisk_image(
        d,
        64,
        &format!(
            "label: gpt\nunit: sectors\n\
             start=2048, size=2048, type={ESP}\n\
             start=4096, type={LINUX_FS_DATA}\n"
        ),
    );

    // The base filesystem, built separately and copied into partition 2.
    let tree = d.join("tree");
    for (path, body) in [
        ("etc/hostname", "base\n"),
        ("etc/ssh/ssh_host_rsa_key", "secret\n"),
        ("etc/ssh/sshd_config", "Port 22\n"),
        ("var/lib/cloud/instances/i-1/obj.pkl", "pickle"),
    ] {
        let p = tree.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, body).unwrap();
    }
    let parts = parse_gpt(&head(&img, GPT_PROBE_LEN)).unwrap();
    let root = find_root(&parts).unwrap().clone();
    assert_eq!(root.index, 2);
    let part_file = d.join("part.ext4");
    mke2fs(
        &part_file,
        root.size_bytes() >> 20,
        &["-d", tree.to_str().unwrap()],
    );
    run(Command::new("dd")
        .arg(format!("if={}", part_file.display()))
        .arg(format!("of={}", img.display()))
        .args(["bs=512", "conv=notrunc,sparse", "status=none"])
        .arg(format!("seek={}", root.first_lba)));

    let bytes = fs::read(&img).unwrap();
    let off = root.offset_bytes() as usize;
    let info = probe_filesystem(&bytes[off..off + PROBE_LEN], root.index).unwrap();
    assert_eq!(info.label, "cloudimg-rootfs");
    drop(bytes);

    let spec = format!("{}?offset={}", img.display(), root.offset_bytes());
    let mut listing = Vec::new();
    walk(&spec, "/", &mut listing);
    assert!(listing.contains(&ListedEntry {
        path: "/var/lib/cloud/instances/i-1".into(),
        is_dir: true
    }));

    let t = 1_700_000_000;
    let meta = |mode, uid, gid| Meta {
        mode,
        uid,
        gid,
        mtime: t,
    };
    let host_file = d.join("host bin");
    fs::write(&host_file, b"\x7fELF binary").unwrap();
    let layer = Layer {
        ops: vec![
            Op::Mkdir {
                path: "/opt/k3s/bin".into(),
                meta: meta(0o750, 0, 0),
            },
            Op::WriteFile {
                path: "/etc/hostname".into(),
                meta: meta(0o600, 1000, 1000),
                content: Content::Inline(b"node-1\n".to_vec()),
            },
            Op::WriteFile {
                path: "/opt/k3s/bin/k3s tool".into(),
                meta: meta(0o755, 0, 0),
                content: Content::HostFile {
                    path: host_file.clone(),
                    size: 11,
                    sha256: String::new(),
                },
            },
            Op::Symlink {
                path: "/usr/local/bin/k3s".into(),
                target: "/opt/k3s/bin/k3s tool".into(),
                meta: meta(0o777, 0, 0),
            },
            Op::Remove {
                pattern: "/etc/ssh/ssh_host_*".into(),
            },
            Op::Remove {
                pattern: "/var/lib/cloud/instances/*".into(),
            },
        ],
    };
    let paths: std::collections::HashSet<String> = listing.iter().map(|e| e.path.clone()).collect();
    let exists = |p: &str| paths.contains(p);
    let stage = d.join("stage");
    fs::create_dir(&stage).unwrap();
    let script = debugfs_script(&layer, &exists, &listing, &stage).unwrap();
    for (path, bytes) in &script.staged {
        fs::write(path, bytes).unwrap();
    }
    let script_file = d.join("apply.debugfs");
    fs::write(&script_file, &script.script).unwrap();
    let out = run(Command::new(tool("debugfs", "e2fsprogs"))
        .arg("-w")
        .arg("-f")
        .arg(&script_file)
        .arg(&spec));
    let errors = debugfs_errors(&String::from_utf8_lossy(&out.stderr));
    assert!(errors.is_empty(), "{errors:?}\nscript:\n{}", script.script);

    let hostname = ls_entry(&spec, "/etc/hostname").unwrap();
    assert_eq!(
        (hostname.mode, hostname.uid, hostname.gid),
        (0o100600, 1000, 1000)
    );
    let dumped = d.join("dumped");
    debugfs_r(
        &spec,
        &format!("dump /etc/hostname \"{}\"", dumped.display()),
    );
    assert_eq!(fs::read(&dumped).unwrap(), b"node-1\n");
    let bin = ls_entry(&spec, "/opt/k3s/bin/k3s tool").unwrap();
    assert_eq!(bin.mode, 0o100755);
    fs::remove_file(&dumped).unwrap();
    debugfs_r(
        &spec,
        &format!("dump \"/opt/k3s/bin/k3s tool\" \"{}\"", dumped.display()),
    );
    assert_eq!(fs::read(&dumped).unwrap(), b"\x7fELF binary");
    assert_eq!(ls_entry(&spec, "/opt/k3s/bin").unwrap().mode, 0o040750);
    assert_eq!(ls_entry(&spec, "/opt").unwrap().mode, 0o040755);
    assert_eq!(ls_entry(&spec, "/usr/local").unwrap().mode, 0o040755);

    let link = debugfs_r(&spec, "stat /usr/local/bin/k3s");
    assert!(link.contains("Type: symlink"), "{link}");
    assert!(
        link.contains("Fast link dest: \"/opt/k3s/bin/k3s tool\""),
        "{link}"
    );
    let stat = debugfs_r(&spec, "stat /etc/hostname");
    assert!(stat.contains("mtime: 0x6553f100"), "{stat}");
    assert!(stat.contains("crtime: 0x6553f100"), "{stat}");

    assert!(ls_entry(&spec, "/etc/ssh/ssh_host_rsa_key").is_none());
    assert!(ls_entry(&spec, "/etc/ssh/sshd_config").is_some());
    assert!(ls_entry(&spec, "/var/lib/cloud/instances").is_some());
    assert!(ls_entry(&spec, "/var/lib/cloud/instances/i-1").is_none());

    // The edited filesystem is consistent: check a copy of the partition.
    let copy = d.join("check.ext4");
    run(Command::new("dd")
        .arg(format!("if={}", img.display()))
        .arg(format!("of={}", copy.display()))
        .args(["bs=512", "status=none"])
        .arg(format!("skip={}", root.first_lba))
        .arg(format!("count={}", root.last_lba + 1 - root.first_lba)));
    run(Command::new(tool("e2fsck", "e2fsprogs"))
        .args(["-f", "-n"])
        .arg(&copy));
}
