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

use super::tools::Tools;
use crate::source::{run_command, run_command_stdin};

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
const GRUB_EFI_MODULES: &[&str] = &["efi_gop", "efi_uga", "all_video"];

/// What was assembled.
#[derive(Debug, Clone)]
pub struct Assembled {
    pub disk_size: u64,
    pub kernel: String,
    pub root_offset: u64,
}

/// Write a bootable raw disk of `size` bytes to `raw` from `rootfs_tar`.
/// `work` is scratch space on any filesystem (the rootfs is extracted there).
pub fn assemble_disk(
    tools: &Tools,
    rootfs_tar: &Path,
    raw: &Path,
    size: u64,
    seed: &[u8],
    work: &Path,
    cancel: &AtomicBool,
) -> Result<Assembled> {
    require_root()?;
    let size = size / MIB * MIB;
    if size < ROOT_START + 512 * MIB {
        bail!("a disk of {} MiB is too small; use at least 1G", size / MIB);
    }
    let tree = work.join("rootfs");
    fs::create_dir_all(&tree).with_context(|| format!("creating {}", tree.display()))?;
    run_command(
        Command::new(tools.get("tar")?)
            .arg("--extract")
            .arg("--file")
            .arg(rootfs_tar)
            .arg("--directory")
            .arg(&tree)
            .args([
                "--numeric-owner",
                "--preserve-permissions",
                "--xattrs",
                "--xattrs-include=*",
            ]),
        cancel,
    )
    .context("extracting the rootfs")?;

    let kernel = find_kernel(&tree)?;
    prepare_tree(&tree)?;

    // Stable identifiers from the rootfs digest, so the same input gives
    // the same disk ids.
    let id = |what: &str| uuid_from(&[seed, what.as_bytes()].concat());

    create_sparse(raw, size)?;
    let root_size = size - ROOT_START - GPT_BACKUP;
    let root_size = root_size / MIB * MIB;
    let table = format!(
        "label: gpt\nlabel-id: {}\nunit: sectors\nfirst-lba: 2048\n\n\
         {dev}1 : start={}, size={}, type={GUID_ROOT_X86_64}, uuid={}, name=\"cloudimg-rootfs\"\n\
         {dev}14 : start={}, size={}, type={GUID_BIOS_BOOT}, uuid={}\n\
         {dev}15 : start={}, size={}, type={GUID_ESP}, uuid={}\n",
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
        dev = raw.display(),
    );
    let table_file = work.join("gpt.sfdisk");
    fs::write(&table_file, &table).context("writing the partition table script")?;
    let script = fs::File::open(&table_file).context("reading the partition table script")?;
    run_command_stdin(
        Command::new(tools.get("sfdisk")?)
            .args([
                "--no-reread",
                "--no-tell-kernel",
                "--quiet",
                "--wipe",
                "never",
            ])
            .arg(raw),
        script.into(),
        cancel,
    )
    .context("writing the GPT with sfdisk")?;

    // Root filesystem straight into its partition.
    run_command(
        Command::new(tools.get("mke2fs")?)
            .args(["-q", "-F", "-t", "ext4", "-L", ROOT_LABEL])
            .arg("-U")
            .arg(id("rootfs"))
            .arg("-E")
            .arg(format!("offset={ROOT_START},hash_seed={}", id("hash-seed")))
            .arg("-d")
            .arg(&tree)
            .arg(raw)
            .arg(format!("{}k", root_size / 1024)),
        cancel,
    )
    .context("making the root filesystem with mke2fs -d")?;

    // ESP.
    let volid = &id("esp")[..8];
    run_command(
        Command::new(tools.get("mkfs.fat")?)
            .args(["-F", "32", "-s", "1", "-n", ESP_LABEL, "-i", volid])
            .arg(format!("--offset={}", ESP_START / SECTOR))
            .arg(raw)
            .arg(format!("{}", ESP_SIZE / 1024)),
        cancel,
    )
    .context("making the EFI system partition")?;

    let early = work.join("grub-early.cfg");
    fs::write(&early, early_config()).context("writing the GRUB early config")?;
    let efi = work.join("BOOTX64.EFI");
    grub_mkimage(tools, "x86_64-efi", GRUB_EFI_MODULES, &early, &efi, cancel)?;
    let esp = format!("{}@@{ESP_START}", raw.display());
    for dir in ["::/EFI", "::/EFI/BOOT"] {
        run_command(
            Command::new(tools.get("mmd")?)
                .env("MTOOLS_SKIP_CHECK", "1")
                .args(["-i", &esp, dir]),
            cancel,
        )
        .context("creating directories on the ESP")?;
    }
    run_command(
        Command::new(tools.get("mcopy")?)
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-i", &esp])
            .arg(&efi)
            .arg("::/EFI/BOOT/BOOTX64.EFI"),
        cancel,
    )
    .context("copying GRUB to the ESP")?;

    let core = work.join("core.img");
    grub_mkimage(tools, "i386-pc", GRUB_PC_MODULES, &early, &core, cancel)?;
    let boot_img = tools.grub_dir("i386-pc")?.join("boot.img");
    install_bios_boot(raw, &boot_img, &core)?;

    Ok(Assembled {
        disk_size: size,
        kernel,
        root_offset: ROOT_START,
    })
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
fn prepare_tree(tree: &Path) -> Result<()> {
    let write = |rel: &str, text: &str| -> Result<()> {
        let p = tree.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
    };
    write(
        "etc/fstab",
        &format!(
            "# Written by imgbuild when the disk was assembled.\n\
             LABEL={ROOT_LABEL}\t/\text4\tdiscard,errors=remount-ro\t0 1\n\
             LABEL={ESP_LABEL}\t/boot/efi\tvfat\tumask=0077,nofail\t0 1\n"
        ),
    )?;
    fs::create_dir_all(tree.join("boot/efi")).context("creating /boot/efi")?;
    write("boot/grub/grub.cfg", GRUB_CFG)?;
    write(
        "etc/systemd/network/80-imgbuild-dhcp.network",
        "# Written by imgbuild: DHCP on every Ethernet NIC of a VM.\n\
         [Match]\nType=ether\nName=en* eth*\n\n[Network]\nDHCP=yes\n\n[DHCPv4]\nUseDomains=yes\n",
    )?;
    let networkd = tree.join("lib/systemd/system/systemd-networkd.service");
    if networkd.exists() {
        for (dir, unit, target) in [
            (
                "etc/systemd/system/multi-user.target.wants",
                "systemd-networkd.service",
                "/lib/systemd/system/systemd-networkd.service",
            ),
            (
                "etc/systemd/system/sockets.target.wants",
                "systemd-networkd.socket",
                "/lib/systemd/system/systemd-networkd.socket",
            ),
            (
                "etc/systemd/system/network-online.target.wants",
                "systemd-networkd-wait-online.service",
                "/lib/systemd/system/systemd-networkd-wait-online.service",
            ),
        ] {
            let d = tree.join(dir);
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            let link = d.join(unit);
            if fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(target, &link)
                    .with_context(|| format!("enabling {unit}"))?;
            }
        }
    }
    Ok(())
}

/// Run by GRUB before anything else: find the root by label and load the
/// menu from it, whichever partition GRUB itself was loaded from.
fn early_config() -> String {
    format!(
        "search --no-floppy --label --set=root {ROOT_LABEL}\n\
         set prefix=($root)/boot/grub\n\
         configfile ($root)/boot/grub/grub.cfg\n"
    )
}

const GRUB_CFG: &str = "\
# Written by imgbuild when the disk was assembled. /vmlinuz and /initrd.img
# are kept current by the distribution's kernel packages.
set default=0
set timeout=1
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
menuentry 'Linux (imgbuild)' {
    search --no-floppy --label --set=root cloudimg-rootfs
    linux /vmlinuz root=LABEL=cloudimg-rootfs ro console=tty0 console=ttyS0,115200n8
    initrd /initrd.img
}
";

fn grub_mkimage(
    tools: &Tools,
    format: &str,
    extra: &[&str],
    early: &Path,
    out: &Path,
    cancel: &AtomicBool,
) -> Result<()> {
    let dir = tools.grub_dir(format)?;
    run_command(
        Command::new(tools.get("grub-mkimage")?)
            .arg("-O")
            .arg(format)
            .arg("-d")
            .arg(&dir)
            .arg("-p")
            .arg("/boot/grub")
            .arg("-c")
            .arg(early)
            .arg("-o")
            .arg(out)
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
/// Boot code ends where the disk signature begins.
const BOOT_CODE_END: usize = 0x1b8;
/// The blocklist entry at the end of `diskboot.img`: u64 start, u16 len, u16 segment.
const BLOCKLIST: usize = 512 - 12;

fn patch_mbr(mbr: &[u8; 512], boot: &[u8], core_lba: u64) -> [u8; 512] {
    let mut out = *mbr;
    out[..BOOT_CODE_END].copy_from_slice(&boot[..BOOT_CODE_END]);
    out[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
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

/// A version-4-shaped UUID from a digest of `input`.
fn uuid_from(input: &[u8]) -> String {
    let d = Sha256::digest(input);
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
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
