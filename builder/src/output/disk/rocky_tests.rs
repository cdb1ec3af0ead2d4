//! Disks laid out like Rocky 9 GenericCloud and its LVM variant, built with
//! the real tools, customised by [`write_disk`] and read back.
//!
//! Layout from rocky-linux/kickstarts (branch r9) `Rocky-9-GenericCloud-Base.ks`
//! and `Rocky-9-GenericCloud-LVM.ks` `%pre`: `parted mklabel gpt`, then
//! `mkpart primary` for vda1 /boot/efi 1MiB–100MiB (`set 1 boot on`: the ESP
//! type), vda2 /boot 100MiB–1100MiB XFS (`--label=boot`), vda3 prepboot
//! 1100MiB–1104MiB, vda4 biosboot 1104MiB–1105MiB, vda5 / from 1106MiB, XFS
//! made with `-m bigtime=0,inobtcount=0`; in the LVM variant vda5 is
//! `set 5 lvm on`, PV of VG `rocky` with LV `root`. parted names every
//! partition `primary`; anaconda sets the types for efi, prepboot and
//! biosboot, and keeps parted's Linux filesystem type for /boot and /.
//! The root here is 1.2 GiB instead of ~9 GiB (still larger than /boot, as
//! on the real disk). Needs root (loop devices, mount), xfsprogs, lvm2,
//! attr, selinux-utils and selinux-policy-default (whose file_contexts
//! stands in for Rocky's `targeted` policy).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::selinux::SelinuxMode;
use super::tests::{run, run_stdin, tool};
use super::*;
use crate::layer::{compute_layer, HostBlob, Layer, LayerInputs};
use crate::plan::schema::OutputKind;
use crate::source::FetchOptions;

const MIB: u64 = 1 << 20;
const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const LINUX: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
const PREP: &str = "9E1A2D38-C612-4316-AA26-8B49521E5A8B";
const BIOS: &str = "21686148-6449-6E6F-744E-656564454649";
const LVM: &str = "E6D6D379-F507-44C2-A23C-238F2A3DF928";
const ROOT_START: u64 = 1106 * MIB;
const ROOT_SIZE: u64 = 1200 * MIB;
/// Debian's reference policy, the fixture's stand-in for `targeted`.
const POLICY_SRC: &str = "/etc/selinux/default/contexts/files";
const LVM_CONFIG: &str = "devices { obtain_device_list_from_udev = 0 use_devicesfile = 0 } \
                          activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }";

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the Rocky-layout disk tests need root (loop devices and mounts)"
    );
}

/// `losetup` over `size` bytes at `offset`; detached on drop.
struct Loop(String);

impl Loop {
    fn new(file: &Path, offset: u64, size: u64) -> Loop {
        let out = run(Command::new(tool("losetup", "mount"))
            .args(["--find", "--show"])
            .arg(format!("--offset={offset}"))
            .arg(format!("--sizelimit={size}"))
            .arg(file));
        Loop(String::from_utf8(out.stdout).unwrap().trim().to_owned())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
        let _ = Command::new("losetup").args(["-d", &self.0]).output();
    }
}

struct Mnt(PathBuf);

impl Mnt {
    fn new(dev: &Loop, dir: &Path, ro: bool) -> Mnt {
        fs::create_dir_all(dir).unwrap();
        run(Command::new("mount")
            .args(["-t", "xfs", "-o", if ro { "ro,nouuid" } else { "nouuid" }])
            .arg(&dev.0)
            .arg(dir));
        Mnt(dir.to_owned())
    }
}

impl Drop for Mnt {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
    }
}

fn lvm(args: &[&str], dev: &str) -> String {
    let out = run(Command::new(tool("lvm", "lvm2"))
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .arg(args[0])
        .args([
            "--driverloaded",
            "n",
            "--config",
            LVM_CONFIG,
            "--devices",
            dev,
        ])
        .args(&args[1..]));
    String::from_utf8(out.stdout).unwrap()
}

/// The root's contents: what a Rocky GenericCloud root has where the layer
/// writes, plus per-machine state the layer must remove.
fn populate(root: &Path, policy: bool) {
    let write = |rel: &str, body: &str| {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, body).unwrap();
    };
    write(
        "etc/os-release",
        "NAME=\"Rocky Linux\"\nVERSION=\"9.6 (Blue Onyx)\"\nID=\"rocky\"\nVERSION_ID=\"9.6\"\n",
    );
    write("etc/machine-id", "4f1c0a9e2b3d4c5e6f708192a3b4c5d6\n");
    write("etc/ssh/ssh_host_ed25519_key", "secret\n");
    write("etc/ssh/sshd_config", "Port 22\n");
    write("var/lib/cloud/instances/i-1/obj.pkl", "pickle");
    fs::create_dir_all(root.join("etc/systemd/system/multi-user.target.wants")).unwrap();
    fs::create_dir_all(root.join("usr/lib/systemd/system")).unwrap();
    fs::create_dir_all(root.join("usr/local/sbin")).unwrap();
    if policy {
        write(
            "etc/selinux/config",
            "SELINUX=enforcing\nSELINUXTYPE=targeted\n",
        );
        let dst = root.join("etc/selinux/targeted/contexts/files");
        fs::create_dir_all(&dst).unwrap();
        for name in [
            "file_contexts",
            "file_contexts.homedirs",
            "file_contexts.subs_dist",
        ] {
            let src = Path::new(POLICY_SRC).join(name);
            assert!(
                src.is_file() || name != "file_contexts",
                "{} is needed: apt-get install -y selinux-policy-default",
                src.display()
            );
            if src.is_file() {
                fs::copy(&src, dst.join(name)).unwrap();
            }
        }
    }
}

/// A raw disk shaped like Rocky 9 GenericCloud (`lvm`: its LVM variant).
fn rocky_disk(dir: &Path, lvm_root: bool, policy: bool) -> PathBuf {
    require_root();
    let img = dir.join("rocky.raw");
    let size = ROOT_START + ROOT_SIZE + MIB;
    fs::File::create(&img).unwrap().set_len(size).unwrap();
    let s = |mib: u64| mib * 2048;
    let root_type = if lvm_root { LVM } else { LINUX };
    let script = format!(
        "label: gpt\nunit: sectors\n\
         start={}, size={}, type={ESP}, name=\"primary\"\n\
         start={}, size={}, type={LINUX}, name=\"primary\"\n\
         start={}, size={}, type={PREP}, name=\"primary\"\n\
         start={}, size={}, type={BIOS}, name=\"primary\"\n\
         start={}, size={}, type={root_type}, name=\"primary\"\n",
        s(1),
        s(99),
        s(100),
        s(1000),
        s(1100),
        s(4),
        s(1104),
        s(1),
        s(1106),
        ROOT_SIZE / 512,
    );
    run_stdin(
        Command::new(tool("sfdisk", "fdisk"))
            .args(["--quiet", "--no-reread", "--no-tell-kernel"])
            .arg(&img),
        &script,
    );
    run(Command::new(tool("mkfs.fat", "dosfstools"))
        .args(["-F", "32", "--offset", &s(1).to_string()])
        .arg(&img)
        .arg((99 * 1024).to_string()));
    let boot = Loop::new(&img, 100 * MIB, 1000 * MIB);
    run(Command::new(tool("mkfs.xfs", "xfsprogs"))
        .args(["-q", "-L", "boot"])
        .arg(&boot.0));
    drop(boot);
    let (offset, len) = if lvm_root {
        let pv = Loop::new(&img, ROOT_START, ROOT_SIZE);
        lvm(&["pvcreate", "--yes", &pv.0], &pv.0);
        lvm(&["vgcreate", "rocky", &pv.0], &pv.0);
        lvm(
            &[
                "lvcreate", "-an", "-Zn", "-n", "root", "-l", "100%FREE", "rocky",
            ],
            &pv.0,
        );
        // Where lvm2 itself says the LV lies, to check the build's own
        // reading of the metadata against.
        let seg = lvm(
            &[
                "lvs",
                "--noheadings",
                "--units",
                "b",
                "--nosuffix",
                "--segments",
                "-o",
                "seg_pe_ranges,vg_extent_size,seg_size",
                "rocky/root",
            ],
            &pv.0,
        );
        let pe_start = lvm(
            &[
                "pvs",
                "--noheadings",
                "--units",
                "b",
                "--nosuffix",
                "-o",
                "pe_start",
            ],
            &pv.0,
        );
        let f: Vec<&str> = seg.split_whitespace().collect();
        let first_pe: u64 = f[0]
            .split(':')
            .nth(1)
            .unwrap()
            .split('-')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let extent: u64 = f[1].parse().unwrap();
        let lv_size: u64 = f[2].parse().unwrap();
        let pe_start: u64 = pe_start.trim().parse().unwrap();
        (ROOT_START + pe_start + first_pe * extent, lv_size)
    } else {
        (ROOT_START, ROOT_SIZE)
    };
    let root = Loop::new(&img, offset, len);
    run(Command::new(tool("mkfs.xfs", "xfsprogs"))
        .args(["-q", "-m", "bigtime=0,inobtcount=0"])
        .arg(&root.0));
    {
        let m = Mnt::new(&root, &dir.join("populate"), false);
        populate(&m.0, policy);
    }
    fs::write(dir.join("expected-root"), format!("{offset} {len}")).unwrap();
    img
}

fn worker_layer(dir: &Path, mode: SelinuxMode) -> (Layer, DiskOptions) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut plan = crate::plan::load(
        &root.join("profiles/worker.yaml"),
        &crate::plan::Overrides::default(),
    )
    .unwrap();
    plan.source_date_epoch = 1_700_000_000;
    let agent = b"\x7fELF stand-in agent\n".to_vec();
    let agent_path = dir.join("agent");
    fs::write(&agent_path, &agent).unwrap();
    let inputs = LayerInputs {
        agent: Some(HostBlob {
            path: agent_path,
            size: agent.len() as u64,
            sha256: crate::source::hash_file(&dir.join("agent"), &FetchOptions::default())
                .unwrap()
                .0,
        }),
        ..LayerInputs::default()
    };
    let layer = compute_layer(&plan, &inputs, OutputKind::Qcow2);
    // What a build keeps about its base, as under the cache's `derived/`
    // (named by a digest; the tests' bases are not in a cache).
    let opts = DiskOptions {
        selinux: mode,
        id_seed: "ab".repeat(32).into_bytes(),
        derived: Some(dir.join("derived")),
        ..DiskOptions::default()
    };
    (layer, opts)
}

/// What the tests look at of a [`DiskOutput`] once it is put in place.
#[derive(Debug)]
struct Built {
    root: qcow2::RootInfo,
    selinux: super::selinux::SelinuxInfo,
    os_release: Option<String>,
    written: &'static str,
    working_copy: Option<&'static str>,
}

/// `write_disk` of the worker profile's layer from the cloud image `img`
/// to `out`, put in place.
fn build_worker(dir: &Path, img: &Path, out: &Path, mode: SelinuxMode) -> anyhow::Result<Built> {
    let (layer, opts) = worker_layer(dir, mode);
    let w = write_disk(
        DiskBase::CloudImage(img),
        &layer,
        out,
        &opts,
        &FetchOptions::default(),
    )?;
    let built = Built {
        root: w.root,
        selinux: w.selinux,
        os_release: w.os_release,
        written: w.written,
        working_copy: w.working_copy,
    };
    w.pending.commit()?;
    Ok(built)
}

/// The qcow2 `out` as a raw image at `raw`.
fn to_raw(out: &Path, raw: &Path) -> PathBuf {
    run(Command::new(tool("qemu-img", "qemu-utils"))
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(out)
        .arg(raw));
    raw.to_owned()
}

fn getfattr(path: &Path) -> Option<String> {
    let out = Command::new(tool("getfattr", "attr"))
        .args(["-h", "--only-values", "-n", "security.selinux"])
        .arg(path)
        .output()
        .unwrap();
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .trim_end_matches('\0')
            .to_owned()
    })
}

/// Build the worker's qcow2 from `img`, then check the edited root read back
/// from the qcow2: `xfs_repair -n`, the layer's files, labels.
/// `img` (raw) as the qcow2 Rocky publishes (compressed for the LVM
/// variant, plain otherwise), customised twice: the first build copies the
/// whole base (or converts a compressed one) and keeps the root's metadata
/// map, the second copies only the metadata. Both disks are checked.
fn customise_and_check(dir: &Path, img: &Path, lvm_root: bool, mode: SelinuxMode, policy: bool) {
    let base = dir.join("rocky.qcow2");
    let mut convert = Command::new(tool("qemu-img", "qemu-utils"));
    convert.args(["convert", "-f", "raw", "-O", "qcow2"]);
    if lvm_root {
        convert.arg("-c");
    }
    run(convert.arg(img).arg(&base));
    let first = if lvm_root {
        ("converted", None)
    } else {
        ("patched", Some("full"))
    };
    for (round, (how, copy)) in [first, ("patched", Some("metadata"))]
        .into_iter()
        .enumerate()
    {
        let out = dir.join(format!("out-{round}.qcow2"));
        let written = build_worker(dir, &base, &out, mode).unwrap();
        assert_eq!(
            (written.written, written.working_copy),
            (how, copy),
            "build {round}"
        );
        check_built(dir, &out, &written, lvm_root, mode, policy);
    }
}

/// The checks of one customised Rocky-shaped disk `out`.
fn check_built(
    dir: &Path,
    out: &Path,
    written: &Built,
    lvm_root: bool,
    mode: SelinuxMode,
    policy: bool,
) {
    let agent = fs::read(dir.join("agent")).unwrap();
    let expected = fs::read_to_string(dir.join("expected-root")).unwrap();
    assert_eq!(
        format!("{} {}", written.root.offset, written.root.size),
        expected,
        "the root LV/partition the build edited is not where mkfs put it"
    );
    assert_eq!(written.root.index, 5);
    assert_eq!(written.root.fs, "xfs");
    assert_eq!(written.root.lv.as_deref(), lvm_root.then_some("rocky/root"));
    assert!(written
        .os_release
        .as_deref()
        .unwrap()
        .contains("ID=\"rocky\""));

    // Read back from the artifact, not from the working copy.
    let back = to_raw(out, &dir.join("back.raw"));
    let dev = Loop::new(&back, written.root.offset, written.root.size);
    run(Command::new(tool("xfs_repair", "xfsprogs"))
        .arg("-n")
        .arg(&dev.0));
    let m = Mnt::new(&dev, &dir.join("check"), true);
    let r = &m.0;
    assert_eq!(
        fs::read(r.join("usr/local/sbin/firstboot-agent")).unwrap(),
        agent
    );
    let defaults = fs::read_to_string(r.join("etc/firstboot-agent/defaults.yaml")).unwrap();
    assert!(defaults.contains("role"), "{defaults}");
    let unit = fs::read_to_string(r.join("etc/systemd/system/firstboot-agent.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/sbin/firstboot-agent"),
        "{unit}"
    );
    let wants = r.join("etc/systemd/system/multi-user.target.wants/firstboot-agent.service");
    assert_eq!(
        fs::read_link(&wants).unwrap(),
        Path::new("/etc/systemd/system/firstboot-agent.service")
    );
    assert_eq!(fs::read(r.join("etc/machine-id")).unwrap(), b"");
    assert!(!r.join("etc/ssh/ssh_host_ed25519_key").exists());
    assert!(r.join("etc/ssh/sshd_config").exists());
    assert!(!r.join("var/lib/cloud/instances/i-1").exists());
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(r.join("usr/local/sbin/firstboot-agent")).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o755, 0));

    let labels = [
        (
            "usr/local/sbin/firstboot-agent",
            "system_u:object_r:bin_t:s0",
        ),
        ("etc/firstboot-agent", "system_u:object_r:etc_t:s0"),
        (
            "etc/firstboot-agent/defaults.yaml",
            "system_u:object_r:etc_t:s0",
        ),
        (
            "etc/systemd/system/firstboot-agent.service",
            "system_u:object_r:systemd_unit_t:s0",
        ),
        (
            "etc/systemd/system/multi-user.target.wants/firstboot-agent.service",
            "system_u:object_r:systemd_unit_t:s0",
        ),
        ("etc/machine-id", "system_u:object_r:etc_t:s0"),
    ];
    match (policy, mode) {
        (true, SelinuxMode::Label) => {
            for (p, want) in labels {
                assert_eq!(getfattr(&r.join(p)).as_deref(), Some(want), "label of /{p}");
            }
            assert_eq!(written.selinux.method, "setfiles");
            assert_eq!(written.selinux.policy.as_deref(), Some("targeted"));
            assert!(
                written.selinux.labelled >= labels.len(),
                "{:?}",
                written.selinux
            );
            assert!(!r.join(".autorelabel").exists());
        }
        (true, SelinuxMode::Autorelabel) => {
            assert!(r.join(".autorelabel").is_file());
            assert_eq!(getfattr(&r.join(labels[0].0)), None);
            assert_eq!(written.selinux.method, "autorelabel");
        }
        (false, _) => {
            assert_eq!(getfattr(&r.join(labels[0].0)), None);
            assert_eq!(written.selinux, super::selinux::SelinuxInfo::none());
            assert!(!r.join(".autorelabel").exists());
        }
    }
    drop(m);
    drop(dev);
    // Nothing is left mounted or attached by the build.
    let loops = run(Command::new(tool("losetup", "mount")).arg("--list"));
    let loops = String::from_utf8_lossy(&loops.stdout).into_owned();
    assert!(
        !loops.contains(&*dir.to_string_lossy()),
        "the build left a loop device: {loops}"
    );
}

/// A fresh Rocky-shaped disk, customised and checked.
fn case(lvm_root: bool, mode: SelinuxMode, policy: bool) {
    let dir = tempfile::tempdir().unwrap();
    let img = rocky_disk(dir.path(), lvm_root, policy);
    customise_and_check(dir.path(), &img, lvm_root, mode, policy);
}

#[test]
fn rocky_genericcloud_xfs_root_is_customised_and_labelled() {
    case(false, SelinuxMode::Label, true);
}

#[test]
fn rocky_genericcloud_lvm_root_is_customised_and_labelled() {
    case(true, SelinuxMode::Label, true);
}

#[test]
fn xfs_root_without_policy_and_autorelabel_fallback() {
    case(false, SelinuxMode::Label, false);
    case(true, SelinuxMode::Autorelabel, true);
}

#[test]
fn a_policy_without_file_contexts_is_refused_before_the_layer_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let img = rocky_disk(dir.path(), false, true);
    {
        let (off, len) = {
            let t = fs::read_to_string(dir.path().join("expected-root")).unwrap();
            let v: Vec<u64> = t.split(' ').map(|x| x.parse().unwrap()).collect();
            (v[0], v[1])
        };
        let dev = Loop::new(&img, off, len);
        let m = Mnt::new(&dev, &dir.path().join("strip"), false);
        fs::remove_file(m.0.join("etc/selinux/targeted/contexts/files/file_contexts")).unwrap();
    }
    let out = dir.path().join("out.qcow2");
    let e = build_worker(dir.path(), &img, &out, SelinuxMode::Label).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("no /etc/selinux/targeted/contexts/files/file_contexts")
            && msg.contains("qcow2.selinux: autorelabel"),
        "{msg}"
    );
    assert!(!out.exists());
}

/// An ext4 root that carries a policy (a RHEL-like ext4 image, or a Debian
/// one with SELinux on): debugfs writes the layer, and every path it adds
/// gets its `security.selinux` xattr from the image's file_contexts.
#[test]
fn ext4_root_with_a_policy_gets_xattr_labels() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = d.join("ext4.raw");
    fs::File::create(&img).unwrap().set_len(96 * MIB).unwrap();
    run_stdin(
        Command::new(tool("sfdisk", "fdisk"))
            .args(["--quiet", "--no-reread", "--no-tell-kernel"])
            .arg(&img),
        &format!("label: gpt\nunit: sectors\nstart=2048, size=2048, type={ESP}\nstart=4096, type={LINUX}\n"),
    );
    let tree = d.join("tree");
    populate(&tree, true);
    let part = d.join("part.ext4");
    run(Command::new(tool("mke2fs", "e2fsprogs"))
        .args(["-q", "-t", "ext4", "-d"])
        .arg(&tree)
        .arg(&part)
        .arg("90M"));
    run(Command::new("dd")
        .arg(format!("if={}", part.display()))
        .arg(format!("of={}", img.display()))
        .args(["bs=512", "seek=4096", "conv=notrunc,sparse", "status=none"]));
    let out = d.join("out.qcow2");
    let written = build_worker(d, &img, &out, SelinuxMode::Label).unwrap();
    assert_eq!(written.root.fs, "ext4");
    assert_eq!(written.selinux.method, "xattr");
    assert_eq!(written.selinux.policy.as_deref(), Some("targeted"));
    let back = to_raw(&out, &d.join("back.raw"));
    let spec = format!("{}?offset={}", back.display(), written.root.offset);
    for (path, want) in [
        (
            "/usr/local/sbin/firstboot-agent",
            "system_u:object_r:bin_t:s0",
        ),
        ("/etc/firstboot-agent", "system_u:object_r:etc_t:s0"),
        (
            "/etc/systemd/system/multi-user.target.wants/firstboot-agent.service",
            "system_u:object_r:systemd_unit_t:s0",
        ),
        ("/etc/machine-id", "system_u:object_r:etc_t:s0"),
    ] {
        let o = run(Command::new(tool("debugfs", "e2fsprogs"))
            .arg("-R")
            .arg(format!("ea_get {path} security.selinux"))
            .arg(&spec));
        let got = String::from_utf8_lossy(&o.stdout);
        assert!(
            got.contains(&format!("\"{want}\\000\"")),
            "label of {path}: {got} {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert!(written.selinux.labelled >= 4, "{:?}", written.selinux);
    run(Command::new(tool("e2fsck", "e2fsprogs"))
        .args(["-f", "-n"])
        .arg(&spec));
}
