//! Assemble a bootable GPT disk from a bootstrapped rootfs tarball that
//! carries a kernel: the offline path from `bootstrap` to a "cloud image"
//! laid out like Ubuntu's, with no mount, no loop device and no VM.
//!
//! | # | what | size | label |
//! |---|---|---|---|
//! | 14 | BIOS boot (GRUB core for SeaBIOS/legacy BIOS) | 4 MiB | |
//! | 15 | EFI system partition (FAT32, GRUB as `EFI/BOOT/BOOTX64.EFI`) | 106 MiB | `UEFI` |
//! | 1 | root (ext4, `mke2fs -d` from the extracted rootfs) | the rest | `cloudimg-rootfs` |
//!
//! `qcow2.assemble-root` may ask for an XFS root instead (`xfs`: label
//! `cloudimg-xfs`, XFS labels have 12 bytes), or an LVM2 PV whose LV
//! `imgbuild/root` holds that XFS (`lvm`) — the shapes of Rocky's
//! GenericCloud root, for testing the XFS path end to end from a Debian
//! bootstrap. Both are made on a loop device and mounted (root, kernel XFS);
//! the LVM metadata is written by lvm2 without device-mapper
//! (`--driverloaded n`) and only for the loop device (`--devices`), so the
//! host's own VGs are never scanned or touched.
//!
//! GRUB images are made on the build host with `grub-mkimage` from the
//! `grub-pc-bin` and `grub-efi-amd64-bin` module trees, each with an
//! embedded config that finds the root by label and reads
//! `/boot/grub/grub.cfg` there. That file boots `/vmlinuz` and
//! `/initrd.img`, the symlinks Debian's kernel packages keep current, so a
//! kernel upgrade inside the VM needs no bootloader update. The images are
//! not signed: turn Secure Boot off for UEFI guests.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::apply::RAW_NAME;
use super::gpt::LINUX_LVM;
use super::mount::{LoopDevice, Mounted};
use super::tools::Tools;
use crate::command::{run_command, run_command_stdin};

pub use crate::plan::schema::AssembleRoot;

/// Label of an assembled XFS root.
pub const XFS_LABEL: &str = "cloudimg-xfs";
/// VG of an assembled LVM root; its LV is `root`.
pub const LVM_VG: &str = "imgbuild";

impl AssembleRoot {
    fn label(self) -> &'static str {
        match self {
            AssembleRoot::Ext4 => ROOT_LABEL,
            AssembleRoot::Xfs | AssembleRoot::Lvm => XFS_LABEL,
        }
    }

    /// How GRUB finds the root: by label, or the LV by name. GRUB 2.06's
    /// `search` in the early config runs before any LVM PV has been
    /// scanned and does not see the LV; opening `(lvm/VG-LV)` by name scans
    /// for it (as grub-install's `prefix=(lvm/…)` does).
    fn grub_root(self) -> String {
        match self {
            AssembleRoot::Lvm => format!("set root=(lvm/{LVM_VG}-root)"),
            _ => format!("search --no-floppy --label --set=root {}", self.label()),
        }
    }

    /// The kernel's `root=`: by label, or the LV's device-mapper name,
    /// which Debian's initramfs (lvm2's `local-top` script) activates.
    fn kernel_root(self) -> String {
        match self {
            AssembleRoot::Lvm => format!("/dev/mapper/{LVM_VG}-root"),
            _ => format!("LABEL={}", self.label()),
        }
    }
}

/// Root filesystem label, as on Ubuntu cloud images.
pub const ROOT_LABEL: &str = "cloudimg-rootfs";
/// ESP label, as on Ubuntu cloud images.
pub const ESP_LABEL: &str = "UEFI";
/// Default size of an assembled disk.
pub const DEFAULT_DISK_SIZE: u64 = 4 << 30;

const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;
const BIOS_BOOT_START: u64 = MIB;
const BIOS_BOOT_SIZE: u64 = 4 * MIB;
const ESP_START: u64 = BIOS_BOOT_START + BIOS_BOOT_SIZE;
const ESP_SIZE: u64 = 106 * MIB;
const ROOT_START: u64 = ESP_START + ESP_SIZE;
/// The backup GPT at the end of the disk: 32 sectors of entries + header.
const GPT_BACKUP: u64 = 33 * SECTOR;

const GUID_BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";
const GUID_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const GUID_ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

/// GRUB modules built into both core images.
const GRUB_COMMON_MODULES: &[&str] = &[
    "part_gpt",
    "part_msdos",
    "ext2",
    "fat",
    "normal",
    "configfile",
    "search",
    "search_label",
    "search_fs_uuid",
    "linux",
    "echo",
    "test",
    "gzio",
    "xzio",
    "serial",
    "terminal",
    "boot",
    "sleep",
    "ls",
    "cat",
    "true",
];
const GRUB_PC_MODULES: &[&str] = &["biosdisk"];
/// What GRUB needs to read an XFS root, also inside an LV.
const GRUB_XFS_MODULES: &[&str] = &["xfs", "lvm"];
/// `all_video` pulls in whichever EFI video drivers the GRUB version has
/// (`efi_uga` is gone from newer ones).
const GRUB_EFI_MODULES: &[&str] = &["efi_gop", "all_video"];

/// What was assembled.
#[derive(Debug, Clone)]
pub struct Assembled {
    /// The kernel the disk boots (`/vmlinuz`'s target).
    pub kernel: String,
}

/// ext4 features for the root, fixed rather than taken from the build
/// host's `/etc/mke2fs.conf`: what GRUB 2.06 and e2fsprogs 1.46 (Ubuntu
/// 22.04) read, so a newer host's defaults (`orphan_file`,
/// `metadata_csum_seed`) cannot make a disk its guest cannot fsck.
const MKE2FS_CONF: &str = "\
[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384

[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
";

/// Write a bootable raw disk of `size` bytes to `work/disk.raw` from
/// `rootfs_tar`. `work` is scratch space on any filesystem (the rootfs is
/// extracted there); every tool runs inside it and names its files
/// relatively, so no character in its path can break a tool's syntax
/// (sfdisk splits at `:`, mtools at `@@`, e2fsprogs at `?`).
pub fn assemble_disk(
    tools: &Tools,
    rootfs_tar: &Path,
    size: u64,
    seed: &[u8],
    layout: AssembleRoot,
    work: &Path,
    cancel: &AtomicBool,
) -> Result<Assembled> {
    require_root()?;
    let size = size / MIB * MIB;
    if size < ROOT_START + 512 * MIB {
        bail!("a disk of {} MiB is too small; use at least 1G", size / MIB);
    }
    // The rootfs is extracted as root on this host: a member that escapes
    // it (`..`, a write through `./etc -> /etc`, …) would write to the host
    // itself. GNU tar defends against most of that; the entry policy all of
    // it, before tar runs. Only headers are read for an uncompressed
    // (bootstrapped) tarball: about 50 ms for 250 MB.
    crate::output::check_base_entries(rootfs_tar, cancel).with_context(|| {
        format!(
            "refusing to extract {} on this host to assemble the disk",
            rootfs_tar.display()
        )
    })?;
    // tar runs inside `work`: a relative path (`--cache-dir cache`) would
    // name nothing there.
    let rootfs_tar = &std::path::absolute(rootfs_tar)
        .with_context(|| format!("locating {}", rootfs_tar.display()))?;
    let tree = work.join("rootfs");
    fs::create_dir_all(&tree).with_context(|| format!("creating {}", tree.display()))?;
    let tool = |name: &'static str| -> Result<Command> {
        let mut c = Command::new(tools.get(name)?);
        c.current_dir(work);
        Ok(c)
    };
    // Stable identifiers from the rootfs digest, so the same input gives
    // the same disk ids.
    let id = |what: &str| uuid_from(&[seed, what.as_bytes()].concat());

    create_sparse(&work.join(RAW_NAME), size)?;
    let root_size = size - ROOT_START - GPT_BACKUP;
    let root_size = root_size / MIB * MIB;
    let root_type = match layout {
        AssembleRoot::Lvm => LINUX_LVM,
        _ => GUID_ROOT_X86_64,
    };
    let table = format!(
        "label: gpt\nlabel-id: {}\nunit: sectors\nfirst-lba: 2048\n\n\
         {RAW_NAME}1 : start={}, size={}, type={root_type}, uuid={}, name=\"cloudimg-rootfs\"\n\
         {RAW_NAME}14 : start={}, size={}, type={GUID_BIOS_BOOT}, uuid={}\n\
         {RAW_NAME}15 : start={}, size={}, type={GUID_ESP}, uuid={}\n",
        id("disk"),
        ROOT_START / SECTOR,
        root_size / SECTOR,
        id("root-part"),
        BIOS_BOOT_START / SECTOR,
        BIOS_BOOT_SIZE / SECTOR,
        id("bios-part"),
        ESP_START / SECTOR,
        ESP_SIZE / SECTOR,
        id("esp-part"),
    );
    let table_file = work.join("gpt.sfdisk");
    fs::write(&table_file, &table).context("writing the partition table script")?;
    let script = fs::File::open(&table_file).context("reading the partition table script")?;
    run_command_stdin(
        tool("sfdisk")?.args([
            "--no-reread",
            "--no-tell-kernel",
            "--quiet",
            "--wipe",
            "never",
            RAW_NAME,
        ]),
        script.into(),
        cancel,
    )
    .context("writing the GPT with sfdisk")?;

    let extract = || -> Result<()> {
        run_command(
            tool("tar")?
                .arg("--extract")
                // A `:` in the cache path must not make GNU tar dial a host.
                .arg("--force-local")
                .arg("--file")
                .arg(rootfs_tar)
                .args([
                    "--directory",
                    "rootfs",
                    "--numeric-owner",
                    "--preserve-permissions",
                    "--xattrs",
                    "--xattrs-include=*",
                ]),
            cancel,
        )
        .context("extracting the rootfs")?;
        Ok(())
    };
    let kernel = match layout {
        AssembleRoot::Ext4 => {
            extract()?;
            let kernel = find_kernel(&tree)?;
            prepare_tree(&tree, layout)?;
            // Root filesystem straight into its partition.
            fs::write(work.join("mke2fs.conf"), MKE2FS_CONF).context("writing mke2fs.conf")?;
            run_command(
                tool("mke2fs")?
                    .env("MKE2FS_CONFIG", work.join("mke2fs.conf"))
                    .args(["-q", "-F", "-t", "ext4", "-L", ROOT_LABEL])
                    .arg("-U")
                    .arg(id("rootfs"))
                    .arg("-E")
                    .arg(format!("offset={ROOT_START},hash_seed={}", id("hash-seed")))
                    .args(["-d", "rootfs", RAW_NAME])
                    .arg(format!("{}k", root_size / 1024)),
                cancel,
            )
            .context("making the root filesystem with mke2fs -d")?;
            kernel
        }
        AssembleRoot::Xfs | AssembleRoot::Lvm => {
            let raw = work.join(RAW_NAME);
            let (offset, len) = match layout {
                AssembleRoot::Lvm => make_lvm(tools, &raw, root_size, cancel)?,
                _ => (ROOT_START, root_size),
            };
            let dev = LoopDevice::attach(tools, &raw, offset, len, cancel)?;
            // Rocky's options (`--mkfsoptions "-m bigtime=0,inobtcount=0"` in
            // Rocky-9-GenericCloud-Base.ks): readable by older kernels and GRUB.
            run_command(
                tool("mkfs.xfs")?
                    .args(["-q", "-f", "-L", XFS_LABEL, "-m"])
                    .arg(format!("bigtime=0,inobtcount=0,uuid={}", id("rootfs")))
                    .arg(&dev.dev),
                cancel,
            )
            .context("making the XFS root filesystem")?;
            let mnt = Mounted::xfs(&dev, &tree)?;
            extract()?;
            let kernel = find_kernel(&tree)?;
            prepare_tree(&tree, layout)?;
            drop(mnt);
            kernel
        }
    };

    // ESP.
    let volid = &id("esp")[..8];
    run_command(
        tool("mkfs.fat")?
            .args(["-F", "32", "-s", "1", "-n", ESP_LABEL, "-i", volid])
            .arg(format!("--offset={}", ESP_START / SECTOR))
            .arg(RAW_NAME)
            .arg(format!("{}", ESP_SIZE / 1024)),
        cancel,
    )
    .context("making the EFI system partition")?;

    fs::write(work.join("grub-early.cfg"), early_config(layout))
        .context("writing the GRUB early config")?;
    let fs_modules: &[&str] = match layout {
        AssembleRoot::Ext4 => &[],
        _ => GRUB_XFS_MODULES,
    };
    let efi_modules = [GRUB_EFI_MODULES, fs_modules].concat();
    let pc_modules = [GRUB_PC_MODULES, fs_modules].concat();
    grub_mkimage(
        tools,
        work,
        "x86_64-efi",
        &efi_modules,
        "BOOTX64.EFI",
        cancel,
    )?;
    let esp = format!("{RAW_NAME}@@{ESP_START}");
    for dir in ["::/EFI", "::/EFI/BOOT"] {
        run_command(
            tool("mmd")?
                .env("MTOOLS_SKIP_CHECK", "1")
                .args(["-i", &esp, dir]),
            cancel,
        )
        .context("creating directories on the ESP")?;
    }
    run_command(
        tool("mcopy")?.env("MTOOLS_SKIP_CHECK", "1").args([
            "-i",
            &esp,
            "BOOTX64.EFI",
            "::/EFI/BOOT/BOOTX64.EFI",
        ]),
        cancel,
    )
    .context("copying GRUB to the ESP")?;

    grub_mkimage(tools, work, "i386-pc", &pc_modules, "core.img", cancel)?;
    let boot_img = tools.grub_dir("i386-pc")?.join("boot.img");
    install_bios_boot(&work.join(RAW_NAME), &boot_img, &work.join("core.img"))?;

    Ok(Assembled { kernel })
}

/// Assembly extracts the rootfs with its owners, which needs root.
pub fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "assembling a disk from a rootfs tarball needs root (the files keep their owners); \
             run imgbuild as root, build only the template (--output lxc), or use a recipe whose \
             qcow2 source is a cloud-image"
        );
    }
    Ok(())
}

/// The kernel the rootfs boots: the target of `/vmlinuz`, which needs
/// `/initrd.img` beside it.
fn find_kernel(tree: &Path) -> Result<String> {
    let advice = "add a kernel and initramfs to the recipe's qcow2 bootstrap packages \
                  (linux-image-cloud-amd64 or linux-image-amd64, initramfs-tools)";
    let link = fs::read_link(tree.join("vmlinuz"))
        .with_context(|| format!("the rootfs has no /vmlinuz kernel; {advice}"))?;
    let kernel = if link.is_absolute() {
        tree.join(link.strip_prefix("/").unwrap_or(&link))
    } else {
        tree.join(&link)
    };
    if !kernel.is_file() {
        bail!(
            "/vmlinuz points to {}, which is missing; {advice}",
            link.display()
        );
    }
    if fs::metadata(tree.join("initrd.img")).is_err() {
        bail!("the rootfs has a kernel but no /initrd.img; {advice}");
    }
    Ok(link.to_string_lossy().into_owned())
}

/// Files a VM disk needs that a container rootfs does not: fstab, the GRUB
/// menu, DHCP on the first NIC, and `/boot/efi`.
fn prepare_tree(tree: &Path, layout: AssembleRoot) -> Result<()> {
    let write = |rel: &str, text: &str| -> Result<()> {
        let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let p = dir_in_tree(tree, dir)?.join(name);
        if fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            fs::remove_file(&p).with_context(|| format!("replacing the link {}", p.display()))?;
        }
        fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
    };
    let root_line = match layout {
        AssembleRoot::Ext4 => {
            format!("LABEL={ROOT_LABEL}\t/\text4\tdiscard,errors=remount-ro\t0 1")
        }
        // XFS is never fsck'd at boot (fsck.xfs does nothing): pass 0, as
        // anaconda writes it.
        _ => format!("{}\t/\txfs\tdefaults\t0 0", layout.kernel_root()),
    };
    write(
        "etc/fstab",
        &format!(
            "# Written by imgbuild when the disk was assembled.\n{root_line}\n\
             LABEL={ESP_LABEL}\t/boot/efi\tvfat\tumask=0077,nofail\t0 1\n"
        ),
    )?;
    dir_in_tree(tree, "boot/efi")?;
    write("boot/grub/grub.cfg", &grub_cfg(layout))?;
    write(
        "etc/systemd/network/80-imgbuild-dhcp.network",
        "# Written by imgbuild: DHCP on every Ethernet NIC of a VM.\n\
         [Match]\nType=ether\nName=en* eth*\n\n[Network]\nDHCP=yes\n\n[DHCPv4]\nUseDomains=yes\n",
    )?;
    let unit_exists = |unit: &str| {
        ["lib/systemd/system", "usr/lib/systemd/system"]
            .iter()
            .any(|d| tree.join(d).join(unit).is_file())
    };
    if unit_exists("systemd-networkd.service") {
        for (dir, unit) in [
            (
                "etc/systemd/system/multi-user.target.wants",
                "systemd-networkd.service",
            ),
            (
                "etc/systemd/system/sockets.target.wants",
                "systemd-networkd.socket",
            ),
            (
                "etc/systemd/system/network-online.target.wants",
                "systemd-networkd-wait-online.service",
            ),
        ] {
            let link = dir_in_tree(tree, dir)?.join(unit);
            if fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("/lib/systemd/system/{unit}"), &link)
                    .with_context(|| format!("enabling {unit}"))?;
            }
        }
        if !unit_exists("systemd-resolved.service") {
            tracing::warn!(
                "the rootfs has systemd-networkd but not systemd-resolved: DNS servers from DHCP \
                 will not reach /etc/resolv.conf (add systemd-resolved to the recipe's qcow2 packages)"
            );
        }
    } else {
        tracing::warn!(
            "the rootfs has no systemd-networkd: the disk brings up no network by itself"
        );
    }
    if tree.join("usr/bin/cloud-init").is_file() {
        write(CLOUD_CFG_PATH, CLOUD_CFG)?;
    }
    Ok(())
}

/// Where the assembled disk's cloud-init settings go.
pub const CLOUD_CFG_PATH: &str = "etc/cloud/cloud.cfg.d/90-imgbuild.cfg";

/// cloud-init on an assembled disk (cloud-init docs: "Datasources",
/// "Network configuration → renderers"; cloud.cfg.d files are merged over
/// cloud.cfg, dictionaries key by key):
/// - look only for the seeds this disk is made for: NoCloud (Proxmox's
///   default cloud-init drive, `imgbuild seed`, libvirt's cidata) and
///   ConfigDrive (Proxmox's `citype configdrive2`), then none — so the boot
///   never waits for a cloud metadata service that is not there;
/// - render network-config for systemd-networkd, which the disk runs
///   (Debian's cloud-init would otherwise prefer ifupdown's ENI files, which
///   nothing on this disk reads). Its files sort before imgbuild's
///   `80-imgbuild-dhcp.network`, so a NIC cloud-init configures (a static
///   address by MAC) is not also put on DHCP; a NIC it leaves alone still is;
/// - set a locale the disk has: Debian's cloud.cfg asks for en_US.UTF-8,
///   which only the `locales` package can generate, and cc_locale fails
///   (and with it cloud-config.service) without it. C.UTF-8 is built into
///   glibc; user-data's `locale:` still wins.
const CLOUD_CFG: &str = "# Written by imgbuild when the disk was assembled.
datasource_list: [NoCloud, ConfigDrive, None]
locale: C.UTF-8
system_info:
  network:
    renderers: [networkd]
    activators: [networkd]
";

/// `tree/rel`, created as needed, refusing any symlink on the way: the
/// rootfs comes from packages, and a link such as `etc -> /etc` must not
/// make the build write to the build host's own files.
fn dir_in_tree(tree: &Path, rel: &str) -> Result<std::path::PathBuf> {
    let mut p = tree.to_path_buf();
    for comp in rel.split('/').filter(|c| !c.is_empty()) {
        p.push(comp);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => bail!(
                "{} is a symbolic link in the rootfs; refusing to write through it",
                p.strip_prefix(tree).unwrap_or(&p).display()
            ),
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!(
                "{} is not a directory in the rootfs",
                p.strip_prefix(tree).unwrap_or(&p).display()
            ),
            Err(_) => fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?,
        }
    }
    Ok(p)
}

/// Run by GRUB before anything else: find the root by label and load the
/// menu from it, whichever partition GRUB itself was loaded from.
fn early_config(layout: AssembleRoot) -> String {
    format!(
        "{}\n\
         set prefix=($root)/boot/grub\n\
         configfile ($root)/boot/grub/grub.cfg\n",
        layout.grub_root()
    )
}

/// The menu: `/vmlinuz` and `/initrd.img` are kept current by the
/// distribution's kernel packages.
fn grub_cfg(layout: AssembleRoot) -> String {
    format!(
        "# Written by imgbuild when the disk was assembled. /vmlinuz and /initrd.img\n\
         # are kept current by the distribution's kernel packages.\n\
         set default=0\n\
         set timeout=1\n\
         serial --unit=0 --speed=115200\n\
         terminal_input console serial\n\
         terminal_output console serial\n\
         menuentry 'Linux (imgbuild)' {{\n\
         \x20   {find_root}\n\
         \x20   linux /vmlinuz root={root} ro console=tty0 console=ttyS0,115200n8\n\
         \x20   initrd /initrd.img\n\
         }}\n",
        find_root = layout.grub_root(),
        root = layout.kernel_root(),
    )
}

/// Make the root partition an LVM2 PV with VG [`LVM_VG`] and a linear LV
/// `root` over all of it; returns the LV's byte range in the disk.
/// lvm2 runs without device-mapper (`--driverloaded n`: the LV is never
/// activated here) and sees only the partition's loop device (`--devices`),
/// so no VG of the host is read or changed.
fn make_lvm(tools: &Tools, raw: &Path, root_size: u64, cancel: &AtomicBool) -> Result<(u64, u64)> {
    let pv = LoopDevice::attach(tools, raw, ROOT_START, root_size, cancel)?;
    let config = "devices { obtain_device_list_from_udev = 0 use_devicesfile = 0 } \
                  activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }";
    let lvm = |args: &[&str]| -> Result<()> {
        run_command(
            Command::new(tools.get("lvm")?)
                .env("LVM_SUPPRESS_FD_WARNINGS", "1")
                .args(&args[..1])
                .args(["--driverloaded", "n", "--config", config, "--devices"])
                .arg(&pv.dev)
                .args(&args[1..]),
            cancel,
        )
        .with_context(|| format!("lvm {}", args[0]))?;
        Ok(())
    };
    let dev = pv.dev.to_string_lossy().into_owned();
    lvm(&["pvcreate", "--yes", &dev])?;
    lvm(&["vgcreate", LVM_VG, &dev])?;
    lvm(&[
        "lvcreate", "-an", "-Zn", "-n", "root", "-l", "100%FREE", LVM_VG,
    ])?;
    drop(pv);
    let head = super::root::read_at(raw, ROOT_START, super::lvm::LABEL_PROBE_LEN)?;
    let part = super::Partition {
        index: 1,
        type_guid: LINUX_LVM.into(),
        unique_guid: String::new(),
        first_lba: ROOT_START / SECTOR,
        last_lba: (ROOT_START + root_size) / SECTOR - 1,
        name: String::new(),
    };
    let lv = super::root::read_lvm(&|o, l| super::root::read_at(raw, o, l), &part, &head)?;
    Ok((ROOT_START + lv.offset, lv.size))
}

fn grub_mkimage(
    tools: &Tools,
    work: &Path,
    format: &str,
    extra: &[&str],
    out: &str,
    cancel: &AtomicBool,
) -> Result<()> {
    let dir = tools.grub_dir(format)?;
    run_command(
        Command::new(tools.get("grub-mkimage")?)
            .current_dir(work)
            .arg("-O")
            .arg(format)
            .arg("-d")
            .arg(&dir)
            .args(["-p", "/boot/grub", "-c", "grub-early.cfg", "-o", out])
            .args(GRUB_COMMON_MODULES)
            .args(extra),
        cancel,
    )
    .with_context(|| format!("building the {format} GRUB image"))?;
    Ok(())
}

/// Install GRUB for BIOS boot without `grub-install` (which wants a block
/// device): `core.img` goes into the BIOS boot partition with its first
/// sector's blocklist pointing at the rest; `boot.img`'s code goes into the
/// MBR (partition table kept) pointing at core's first sector.
fn install_bios_boot(raw: &Path, boot_img: &Path, core_img: &Path) -> Result<()> {
    let boot = fs::read(boot_img).with_context(|| format!("reading {}", boot_img.display()))?;
    let mut core = fs::read(core_img).with_context(|| format!("reading {}", core_img.display()))?;
    if boot.len() != 512 {
        bail!("{} is not a 512-byte boot sector", boot_img.display());
    }
    if core.len() as u64 > BIOS_BOOT_SIZE || core.len() < 512 {
        bail!(
            "the BIOS GRUB core image is {} bytes; it must fit the {} MiB BIOS boot partition",
            core.len(),
            BIOS_BOOT_SIZE / MIB
        );
    }
    let core_lba = BIOS_BOOT_START / SECTOR;
    patch_core_blocklist(&mut core, core_lba)?;
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(raw)
        .with_context(|| format!("opening {}", raw.display()))?;
    let mut mbr = [0u8; 512];
    f.read_exact(&mut mbr).context("reading the MBR")?;
    let mbr = patch_mbr(&mbr, &boot, core_lba);
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&mbr).context("writing the MBR")?;
    f.seek(SeekFrom::Start(BIOS_BOOT_START))?;
    f.write_all(&core).context("writing the GRUB core image")?;
    f.sync_all().context("syncing the disk image")?;
    Ok(())
}

/// Offset of the core image's first sector address in `boot.img`.
const KERNEL_SECTOR: usize = 0x5c;
/// The 2-byte jump over boot.img's "is DL a hard disk?" fix-up; NOPed for
/// hard disks, as grub-bios-setup does, for BIOSes that pass a wrong drive.
const DRIVE_CHECK: usize = 0x66;
/// Boot code ends where the disk signature begins.
const BOOT_CODE_END: usize = 0x1b8;
/// The blocklist entry at the end of `diskboot.img`: u64 start, u16 len, u16 segment.
const BLOCKLIST: usize = 512 - 12;

fn patch_mbr(mbr: &[u8; 512], boot: &[u8], core_lba: u64) -> [u8; 512] {
    let mut out = *mbr;
    out[..BOOT_CODE_END].copy_from_slice(&boot[..BOOT_CODE_END]);
    out[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    out[DRIVE_CHECK..DRIVE_CHECK + 2].copy_from_slice(&[0x90, 0x90]);
    out
}

/// `grub-mkimage -O i386-pc` assumes core.img right after the MBR (start 2);
/// point its blocklist at the sectors after `core_lba` instead.
fn patch_core_blocklist(core: &mut [u8], core_lba: u64) -> Result<()> {
    let sectors = core.len().div_ceil(512) as u64;
    let len = u16::from_le_bytes([core[BLOCKLIST + 8], core[BLOCKLIST + 9]]) as u64;
    if len + 1 != sectors {
        bail!(
            "unexpected GRUB core image: its blocklist covers {len} sectors, the image has {}",
            sectors - 1
        );
    }
    core[BLOCKLIST..BLOCKLIST + 8].copy_from_slice(&(core_lba + 1).to_le_bytes());
    Ok(())
}

fn create_sparse(path: &Path, size: u64) -> Result<()> {
    let f = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.set_len(size)
        .with_context(|| format!("sizing {} to {size} bytes", path.display()))?;
    Ok(())
}

/// A version-4-shaped UUID from a digest of `input` (stable per input, so
/// an assembled disk's ids are reproducible).
fn uuid_from(input: &[u8]) -> String {
    let d = Sha256::digest(input);
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbr_keeps_partition_table_and_points_at_core() {
        let mut mbr = [0u8; 512];
        mbr[0x1be] = 0xee;
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        mbr[0x1b8] = 0x12;
        let boot = [0xebu8; 512];
        let out = patch_mbr(&mbr, &boot, 2048);
        assert_eq!(out[0], 0xeb);
        assert_eq!(&out[0x5c..0x64], &2048u64.to_le_bytes());
        assert_eq!(&out[0x66..0x68], &[0x90, 0x90]);
        assert_eq!(out[0x1b8], 0x12);
        assert_eq!(out[0x1be], 0xee);
        assert_eq!(&out[510..], &[0x55, 0xaa]);
    }

    #[test]
    fn core_blocklist_is_moved_and_checked() {
        let mut core = vec![0u8; 512 * 5];
        core[BLOCKLIST..BLOCKLIST + 8].copy_from_slice(&2u64.to_le_bytes());
        core[BLOCKLIST + 8..BLOCKLIST + 10].copy_from_slice(&4u16.to_le_bytes());
        patch_core_blocklist(&mut core, 2048).unwrap();
        assert_eq!(&core[BLOCKLIST..BLOCKLIST + 8], &2049u64.to_le_bytes());
        core[BLOCKLIST + 8] = 9;
        assert!(patch_core_blocklist(&mut core, 2048).is_err());
    }

    #[test]
    fn uuids_are_stable_and_well_formed() {
        let a = uuid_from(b"x");
        assert_eq!(a, uuid_from(b"x"));
        assert_ne!(a, uuid_from(b"y"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }
}
