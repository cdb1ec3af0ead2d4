//! The qcow2 output's cloud-image path on small synthetic vendor-like
//! disks (GPT, ext4 root labelled `cloudimg-rootfs`), made here with sfdisk
//! and `mke2fs -d` since vendor images cannot be downloaded: the layer lands
//! in the root filesystem, the disk is grown, and every broken base gets
//! one clear error and leaves nothing behind. Needs no root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use common::*;

const ROOT_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const DISK_NAME: &str = "debian-12-k3s-worker_1.34.3-k3s1-1_amd64.qcow2";

fn sbin(name: &str) -> PathBuf {
    for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(d).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} not found");
}

/// A raw GPT disk of `mib` MiB with the given sfdisk partition lines.
fn gpt_disk(path: &Path, mib: u64, label: &str, parts: &str) {
    let f = fs::File::create(path).unwrap();
    f.set_len(mib << 20).unwrap();
    drop(f);
    let mut child = Command::new(sbin("sfdisk"))
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("label: {label}\nunit: sectors\n{parts}").as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "sfdisk on {}",
        path.display()
    );
}

/// A vendor-like cloud image: ESP at 1 MiB, ext4 root from 5 MiB to
/// 1 MiB before the end, made from a small tree with per-machine state to be removed.
fn cloud_image(dir: &Path, mib: u64, root_mib: Option<u64>) -> PathBuf {
    cloud_image_with(dir, mib, root_mib, &[])
}

/// [`cloud_image`] with more `mke2fs` options.
fn cloud_image_with(dir: &Path, mib: u64, root_mib: Option<u64>, mke2fs: &[&str]) -> PathBuf {
    let img = dir.join("cloud.raw");
    // The root fills the disk but for the primary table in front and 1 MiB
    // at the end (the backup table).
    let root_mib = root_mib.unwrap_or(mib - 6);
    let root_size = format!(", size={}", root_mib * 2048);
    gpt_disk(
        &img,
        mib,
        "gpt",
        &format!(
            "start=2048, size=8192, type={ESP_TYPE}\nstart=10240{root_size}, type={ROOT_TYPE}\n"
        ),
    );
    let tree = dir.join("tree");
    for (p, body) in [
        (
            "usr/lib/os-release",
            "PRETTY_NAME=\"Test Cloud 1\"\nID=testcloud\nVERSION_ID=\"1\"\n",
        ),
        ("etc/ssh/ssh_host_ed25519_key", "secret\n"),
        ("etc/hostname", "vendor-build-host\n"),
        ("var/log/cloud-init.log", "old log\n"),
    ] {
        let f = tree.join(p);
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(f, body).unwrap();
    }
    std::os::unix::fs::symlink("../usr/lib/os-release", tree.join("etc/os-release")).unwrap();
    let root_bytes = root_mib << 20;
    run_checked(
        Command::new(sbin("mke2fs"))
            .args(["-q", "-F", "-t", "ext4", "-L", "cloudimg-rootfs"])
            .args(mke2fs)
            .arg("-E")
            .arg(format!("offset={}", 10240 * 512))
            .arg("-d")
            .arg(&tree)
            .arg(&img)
            .arg(format!("{}k", root_bytes / 1024 / 4 * 4)),
    );
    img
}

struct Case {
    dir: tempfile::TempDir,
}

/// Scratch space with the characters the disk tools split paths at
/// (`?` for e2fsprogs, `:` for sfdisk, `@@` for mtools) and a space.
const SCRATCH: &str = "scratch ?x:y@@z";

impl Case {
    fn new() -> Self {
        require_tool("qemu-img", "qemu-utils");
        let c = Case {
            dir: tempfile::tempdir().unwrap(),
        };
        fs::create_dir(c.path(SCRATCH)).unwrap();
        fs::create_dir(c.path("tmp")).unwrap();
        c
    }

    /// Names left in a directory.
    fn left_in(&self, dir: &str) -> Vec<String> {
        let d = self.path(dir);
        if !d.exists() {
            return Vec::new();
        }
        fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// The manifest of the disk in `out`.
    fn manifest(&self) -> Value {
        let path = self.path("out").join(format!("{DISK_NAME}.manifest.json"));
        serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
    }

    /// Build the worker profile (plus `profile_extra`) from `base` as the
    /// recipe's cloud image, with `path` on PATH for imgbuild's tools.
    fn build(&self, base: &Path, profile_extra: &str, path: Option<&str>) -> Output {
        self.build_cmd(base, profile_extra, path, &[])
            .output()
            .expect("running imgbuild")
    }

    /// The command [`Case::build`] runs, started through `launcher` (e.g.
    /// `setpriv …`) when that is not empty.
    fn build_cmd(
        &self,
        base: &Path,
        profile_extra: &str,
        path: Option<&str>,
        launcher: &[&str],
    ) -> Command {
        let recipe = self.path("recipe.yaml");
        fs::write(
            &recipe,
            format!(
                "name: cloud-test\ndistro: debian\nrelease: \"12\"\nqcow2:\n  cloud-image:\n    path: {}\n",
                base.display()
            ),
        )
        .unwrap();
        let profile = self.path("profile.yaml");
        let text = fs::read_to_string(repo_root().join("profiles/worker.yaml")).unwrap();
        fs::write(&profile, format!("{text}{profile_extra}")).unwrap();
        let agent = agent_binary();
        let scratch = self.path(SCRATCH);
        let tmp = self.path("tmp");
        let mut envs = vec![
            ("SOURCE_DATE_EPOCH", "1700000000"),
            ("IMGBUILD_SCRATCH_DIR", scratch.to_str().unwrap()),
            ("TMPDIR", tmp.to_str().unwrap()),
        ];
        if let Some(p) = path {
            envs.push(("PATH", p));
        }
        let bin = env!("CARGO_BIN_EXE_imgbuild");
        let mut c = match launcher.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        c.env("IMGBUILD_AGENT", &agent);
        for (k, v) in envs {
            c.env(k, v);
        }
        c.args([
            "build",
            profile.to_str().unwrap(),
            "--recipe",
            recipe.to_str().unwrap(),
            "--output",
            "qcow2",
            "--agent",
            agent.to_str().unwrap(),
            "--cache-dir",
            self.path("cache").to_str().unwrap(),
            "--out",
            self.path("out").to_str().unwrap(),
        ]);
        c
    }

    /// The build failed with `needle` in its error and left no file that
    /// looks like an artifact, no work directory and no scratch or
    /// temporary file.
    fn assert_refused(&self, o: &Output, needle: &str) {
        assert!(!o.status.success(), "build succeeded: {}", text(o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
        for dir in ["out", SCRATCH, "tmp"] {
            let left = self.left_in(dir);
            assert!(left.is_empty(), "left behind in {dir}: {left:?}");
        }
    }
}

fn debugfs(spec: &str, request: &str) -> String {
    let o = run_checked(
        Command::new(sbin("debugfs"))
            .arg("-R")
            .arg(request)
            .arg(spec),
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn layer_is_applied_offline_and_the_disk_grown() {
    let c = Case::new();
    let raw = cloud_image(c.dir.path(), 256, None);
    // Vendors ship qcow2: convert the synthetic image, as a vendor would.
    let base = c.path("cloud.qcow2");
    run_checked(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&base),
    );
    let o = c.build(&base, "qcow2:\n  size: 1G\n", None);
    assert!(o.status.success(), "{}", text(&o));
    let out = c.path("out");
    assert_eq!(
        files_in(&out),
        vec![DISK_NAME.to_string(), format!("{DISK_NAME}.manifest.json")]
    );
    assert!(c.left_in(SCRATCH).is_empty() && c.left_in("tmp").is_empty());
    let disk_mode = fs::metadata(out.join(DISK_NAME)).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&disk_mode) & 0o777,
        0o644
    );
    let disk = out.join(DISK_NAME);
    run_checked(
        Command::new("qemu-img")
            .args(["check", "-f", "qcow2"])
            .arg(&disk),
    );

    let m = c.manifest();
    assert_eq!(m["kind"], "qcow2");
    let d = &m["disk"];
    assert_eq!(d["base-format"], "qcow2", "{m:#}");
    assert_eq!(d["virtual-size"], 1u64 << 30);
    assert_eq!(d["grown-from"], 256u64 << 20);
    assert_eq!(d["root-partition"], 2);
    assert_eq!(d["root-label"], "cloudimg-rootfs");
    assert_eq!(m["os-release"]["ID"], "testcloud", "{m:#}");

    // Inspect the result as raw: a valid GPT whose backup header moved to
    // the new end, and the layer inside the ext4 root.
    let check = c.path("check.raw");
    run_checked(
        Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(&disk)
            .arg(&check),
    );
    assert_eq!(fs::metadata(&check).unwrap().len(), 1 << 30);
    let v = run_checked(Command::new(sbin("sfdisk")).arg("--verify").arg(&check));
    let verify = text(&v);
    assert!(verify.contains("No errors detected"), "{verify}");
    let spec = format!("{}?offset={}", check.display(), 10240 * 512);
    let agent = debugfs(&spec, "stat /usr/local/sbin/firstboot-agent");
    assert!(agent.contains("Type: regular"), "{agent}");
    assert!(
        agent.contains(&format!(
            "Size: {}",
            fs::metadata(agent_binary()).unwrap().len()
        )),
        "{agent}"
    );
    let defaults = debugfs(&spec, "cat /etc/firstboot-agent/defaults.yaml");
    assert!(defaults.contains("v1.34.3+k3s1"), "{defaults}");
    assert!(debugfs(&spec, "stat /etc/ssh/ssh_host_ed25519_key").contains("File not found"));
    assert!(debugfs(&spec, "stat /var/log/cloud-init.log").contains("File not found"));
    assert!(debugfs(&spec, "cat /etc/hostname").contains("localhost"));
    // Untouched vendor content stays, symlink included.
    assert!(debugfs(&spec, "stat /etc/os-release").contains("Type: symlink"));
    run_checked(Command::new(sbin("e2fsck")).args(["-f", "-n"]).arg(&spec));
}

#[test]
fn raw_base_keeps_its_size_without_qcow2_size() {
    let c = Case::new();
    let raw = cloud_image(c.dir.path(), 128, None);
    let o = c.build(&raw, "", None);
    assert!(o.status.success(), "{}", text(&o));
    let m = c.manifest();
    assert_eq!(m["disk"]["base-format"], "raw");
    assert_eq!(m["disk"]["virtual-size"], 128u64 << 20);
    assert!(m["disk"].get("grown-from").is_none(), "{m:#}");
}

#[test]
fn not_a_disk_image_is_refused() {
    let c = Case::new();
    let base = c.path("noise.qcow2");
    let noise: Vec<u8> = (0..(4u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write(&base, noise).unwrap();
    let o = c.build(&base, "", None);
    c.assert_refused(&o, "not a disk image");

    let tiny = c.path("tiny.img");
    fs::write(&tiny, b"hello\n").unwrap();
    let o = c.build(&tiny, "", None);
    c.assert_refused(&o, "not a disk image");
}

#[test]
fn mbr_only_disk_is_refused() {
    let c = Case::new();
    let base = c.path("mbr.raw");
    gpt_disk(&base, 16, "dos", "start=2048, type=83\n");
    let o = c.build(&base, "", None);
    c.assert_refused(&o, "no GPT");
}

#[test]
fn disk_without_a_linux_root_is_refused() {
    let c = Case::new();
    let base = c.path("esp-only.raw");
    gpt_disk(&base, 16, "gpt", &format!("start=2048, type={ESP_TYPE}\n"));
    let o = c.build(&base, "", None);
    c.assert_refused(&o, "no Linux root partition found");
}

#[test]
fn a_broken_xfs_root_is_refused_and_nothing_stays_attached() {
    let c = Case::new();
    let base = c.path("xfs.raw");
    gpt_disk(
        &base,
        16,
        "gpt",
        &format!("start=2048, size=8192, type={ESP_TYPE}\nstart=10240, type={ROOT_TYPE}\n"),
    );
    // An XFS superblock magic where the root filesystem starts, and nothing
    // else: the build takes it for XFS (needs root, loop devices and the
    // kernel's XFS, or says so) and the mount fails.
    let mut bytes = fs::read(&base).unwrap();
    bytes[10240 * 512..10240 * 512 + 4].copy_from_slice(b"XFSB");
    fs::write(&base, bytes).unwrap();
    let o = c.build(&base, "", None);
    c.assert_refused(&o, "XFS");
    let loops = run_checked(Command::new("losetup").arg("--list"));
    let loops = String::from_utf8_lossy(&loops.stdout).into_owned();
    assert!(
        !loops.contains(SCRATCH),
        "the failed build left a loop device attached: {loops}"
    );
}

/// Without root an XFS root cannot be mounted: the build says so before it
/// writes the working copy. A `qemu-img` shim on PATH logs every run: only
/// `info` and the few-KiB `dd` peeks happen, never `convert`.
#[test]
fn xfs_root_without_root_is_refused_before_the_working_copy() {
    require_root("the test makes a loop-free XFS fixture and drops to nobody with setpriv");
    let c = Case::new();
    let base = c.path("xfs.raw");
    gpt_disk(
        &base,
        420,
        "gpt",
        &format!("start=2048, size=8192, type={ESP_TYPE}\nstart=10240, type={ROOT_TYPE}\n"),
    );
    let part = c.path("part.xfs");
    fs::File::create(&part).unwrap().set_len(400 << 20).unwrap();
    run_checked(Command::new(sbin("mkfs.xfs")).args(["-q", "-f"]).arg(&part));
    run_checked(
        Command::new("dd")
            .arg(format!("if={}", part.display()))
            .arg(format!("of={}", base.display()))
            .args(["bs=512", "seek=10240", "conv=notrunc,sparse", "status=none"]),
    );
    fs::remove_file(&part).unwrap();
    let shim = c.path("shim");
    fs::create_dir(&shim).unwrap();
    let log = c.path("qemu-img.log");
    let real = sbin("qemu-img");
    fs::write(
        shim.join("qemu-img"),
        format!(
            "#!/bin/sh\necho \"$1\" >>'{}'\nexec '{}' \"$@\"\n",
            log.display(),
            real.display()
        ),
    )
    .unwrap();
    fs::write(&log, "").unwrap();
    // Everything the build reads or writes, open to nobody.
    run_checked(
        Command::new("chmod")
            .args(["-R", "a+rwX"])
            .arg(c.dir.path()),
    );
    run_checked(
        Command::new("chmod")
            .args(["a+x"])
            .arg(shim.join("qemu-img")),
    );
    let path = format!(
        "{}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        shim.display()
    );
    let o = c
        .build_cmd(
            &base,
            "",
            Some(&path),
            &[
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ],
        )
        .output()
        .expect("running imgbuild as nobody");
    c.assert_refused(&o, "this host lacks: root (mounting through a loop device)");
    let runs = fs::read_to_string(&log).unwrap();
    assert!(runs.lines().any(|l| l == "dd"), "no peek: {runs}");
    assert!(
        !runs.lines().any(|l| l == "convert"),
        "the working copy was written before the refusal: {runs}"
    );
}

#[test]
fn root_too_small_for_the_layer_is_refused() {
    let c = Case::new();
    // A 4 MiB root cannot take the ~7 MiB static agent.
    let raw = cloud_image(c.dir.path(), 16, Some(4));
    let o = c.build(&raw, "", None);
    c.assert_refused(&o, "too small");
}

#[test]
fn missing_qemu_img_is_named_with_its_package() {
    let c = Case::new();
    let raw = cloud_image(c.dir.path(), 64, None);
    // imgbuild adds the sbin directories itself; qemu-img lives in /usr/bin.
    let o = c.build(&raw, "", Some("/nonexistent"));
    c.assert_refused(&o, "qemu-img (package qemu-utils)");
}

#[test]
fn base_with_a_backing_file_is_refused() {
    let c = Case::new();
    let raw = cloud_image(c.dir.path(), 64, None);
    // A qcow2 whose data would come from another file: here a harmless
    // image, in an attack a host file.
    let base = c.path("overlay.qcow2");
    run_checked(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&raw)
            .arg(&base),
    );
    let o = c.build(&base, "", None);
    c.assert_refused(&o, "refers to another file");
    c.assert_refused(&o, "backing or data file");
}

#[test]
fn a_failed_build_keeps_the_previous_disk_and_manifest() {
    let c = Case::new();
    let raw = cloud_image(c.dir.path(), 128, None);
    let o = c.build(&raw, "", None);
    assert!(o.status.success(), "{}", text(&o));
    let out = c.path("out");
    let disk = fs::read(out.join(DISK_NAME)).unwrap();
    let manifest = fs::read(out.join(format!("{DISK_NAME}.manifest.json"))).unwrap();
    // The same build from a broken base fails and leaves both untouched.
    let mut bytes = fs::read(&raw).unwrap();
    bytes[512..520].copy_from_slice(b"XXXXXXXX");
    fs::write(&raw, bytes).unwrap();
    let o = c.build(&raw, "", None);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no GPT"),
        "{}",
        text(&o)
    );
    assert_eq!(fs::read(out.join(DISK_NAME)).unwrap(), disk);
    assert_eq!(
        fs::read(out.join(format!("{DISK_NAME}.manifest.json"))).unwrap(),
        manifest
    );
    assert_eq!(
        files_in(&out),
        vec![DISK_NAME.to_string(), format!("{DISK_NAME}.manifest.json")]
    );
}

/// The byte offsets where `disk` reads differently from `other`, outside
/// the root's superblock and its backups (they carry the time of each
/// edit: debugfs has no fixed-time mode).
fn guest_differences(c: &Case, disk: &Path, other: &Path) -> Vec<usize> {
    let raw = |p: &Path, name: &str| {
        let out = c.path(name);
        let _ = fs::remove_file(&out);
        run_checked(
            Command::new("qemu-img")
                .args(["convert", "-O", "raw"])
                .arg(p)
                .arg(&out),
        );
        fs::read(&out).unwrap()
    };
    let (a, b) = (raw(disk, "a.raw"), raw(other, "b.raw"));
    assert_eq!(a.len(), b.len());
    let fs = 10240 * 512;
    // A superblock copy starts 1 KiB-aligned in the filesystem and has
    // the ext4 magic at byte 56.
    let in_superblock = |i: usize| {
        let start = i.checked_sub(fs).map(|r| fs + r / 1024 * 1024);
        start
            .is_some_and(|s| a[s + 56..s + 58] == [0x53, 0xef] && b[s + 56..s + 58] == [0x53, 0xef])
    };
    a.chunks(4096)
        .zip(b.chunks(4096))
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .flat_map(|(k, (x, y))| {
            (0..x.len())
                .filter(|&i| x[i] != y[i])
                .map(move |i| k * 4096 + i)
                .collect::<Vec<_>>()
        })
        .filter(|&i| !in_superblock(i))
        .take(10)
        .collect()
}

/// A qcow2 base is patched, not converted twice: the first build copies
/// all of it and keeps the root's metadata map and the prefix's digest
/// state; the next copies only the metadata and hashes only the tail. Both
/// read back as the disk `qemu-img convert` both ways makes, the manifest's
/// digest is the file's, and a compressed base is patched too once its map
/// is kept.
#[test]
fn a_patched_disk_reads_back_as_the_converted_one() {
    let c = Case::new();
    // 4 KiB blocks, as vendors' images have; 1 KiB blocks (what mke2fs
    // picks for a small disk) are smaller than a tmpfs page, so the
    // working copy stays whole.
    let raw4k = cloud_image_with(c.dir.path(), 256, None, &["-b", "4096"]);
    fs::rename(&raw4k, c.path("cloud-4k.raw")).unwrap();
    fs::create_dir(c.path("1k")).unwrap();
    let raw1k = cloud_image_with(&c.path("1k"), 256, None, &["-b", "1024"]);
    for (name, raw, args, second) in [
        ("plain", c.path("cloud-4k.raw"), &[][..], "metadata"),
        (
            "compressed",
            c.path("cloud-4k.raw"),
            &["-c"][..],
            "metadata",
        ),
        ("plain-1k", raw1k, &[][..], "full"),
    ] {
        let base = c.path(&format!("{name}.qcow2"));
        run_checked(
            Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "qcow2"])
                .args(args)
                .arg(&raw)
                .arg(&base),
        );
        let _ = fs::remove_dir_all(c.path("cache"));
        let mut disks = Vec::new();
        for (round, convert, written, copy) in [
            // A compressed base is converted until its map is kept.
            (
                0,
                false,
                if name == "compressed" {
                    "converted"
                } else {
                    "patched"
                },
                (name != "compressed").then_some("full"),
            ),
            (1, false, "patched", Some(second)),
            (2, true, "converted", None),
        ] {
            let mut cmd = c.build_cmd(&base, "qcow2:\n  size: 1G\n", None, &[]);
            if convert {
                cmd.env("IMGBUILD_QCOW2_CONVERT", "1");
            }
            let o = cmd.output().unwrap();
            assert!(o.status.success(), "{name} {round}: {}", text(&o));
            let out = c.path("out");
            let m = c.manifest();
            assert_eq!(m["disk"]["written"], written, "{name} {round}: {m:#}");
            assert_eq!(m["disk"]["working-copy"].as_str(), copy, "{name} {round}");
            assert_eq!(m["disk"]["grown-from"], 256u64 << 20);
            let disk = c.path(&format!("{name}-{round}.qcow2"));
            fs::rename(out.join(DISK_NAME), &disk).unwrap();
            let sum = run_checked(Command::new("sha256sum").arg(&disk)).stdout;
            let sum = String::from_utf8_lossy(&sum);
            assert!(
                sum.starts_with(m["artifact"]["sha256"].as_str().unwrap()),
                "{name} {round}: {sum} vs {m:#}"
            );
            run_checked(
                Command::new("qemu-img")
                    .args(["check", "-f", "qcow2"])
                    .arg(&disk),
            );
            disks.push(disk);
        }
        for other in &disks[1..] {
            let d = guest_differences(&c, &disks[0], other);
            assert!(d.is_empty(), "{name}: {} differs at {d:?}", other.display());
        }
        let spec = format!("{}?offset={}", c.path("a.raw").display(), 10240 * 512);
        run_checked(Command::new(sbin("e2fsck")).args(["-f", "-n"]).arg(&spec));
        assert!(debugfs(&spec, "cat /etc/firstboot-agent/defaults.yaml").contains("v1.34.3+k3s1"));
    }
}

/// A kept metadata map that misses blocks (here: all but the first) makes
/// the shortcut fail; the build then copies the whole base, still succeeds,
/// says so, and keeps a good map again.
#[test]
fn a_wrong_metadata_map_costs_a_full_copy_not_the_build() {
    let c = Case::new();
    let raw = cloud_image_with(c.dir.path(), 256, None, &["-b", "4096"]);
    let base = c.path("base.qcow2");
    run_checked(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&base),
    );
    let o = c.build(&base, "", None);
    assert!(o.status.success(), "{}", text(&o));
    let maps: Vec<PathBuf> = fs::read_dir(c.path("cache/derived"))
        .unwrap()
        .flat_map(|d| fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("ext4-metadata-"))
        .collect();
    assert_eq!(maps.len(), 1, "{maps:?}");
    let mut map: Value = serde_json::from_slice(&fs::read(&maps[0]).unwrap()).unwrap();
    let good = map["ranges"].clone();
    map["ranges"] = serde_json::json!([[0, 4096]]);
    fs::write(&maps[0], serde_json::to_vec(&map).unwrap()).unwrap();

    let o = c.build(&base, "", None);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("did not work"),
        "{}",
        text(&o)
    );
    let m = c.manifest();
    assert_eq!(m["disk"]["written"], "patched");
    assert_eq!(m["disk"]["working-copy"], "full");
    let again: Value = serde_json::from_slice(&fs::read(&maps[0]).unwrap()).unwrap();
    assert_eq!(again["ranges"], good);
    run_checked(
        Command::new("qemu-img")
            .args(["check", "-f", "qcow2"])
            .arg(c.path("out").join(DISK_NAME)),
    );
}
