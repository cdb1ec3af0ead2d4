//! The qcow2 target: base disk (a vendor cloud image, or a disk assembled
//! from a bootstrapped rootfs) → raw working copy → layer applied to the
//! ext4 root with debugfs → `e2fsck -fn` → qcow2, renamed into place only
//! when complete.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use node_spec::Sha256Hex;
use serde::Deserialize;

use super::apply::{apply_layer, ApplyReport};
use super::assemble::{assemble_disk, Assembled, DEFAULT_DISK_SIZE};
use super::tools::Tools;
use super::{find_root, parse_gpt, probe_filesystem, GPT_PROBE_LEN, PROBE_LEN};
use crate::layer::{Layer, Op};
use crate::source::{hash_file, run_command, FetchOptions};

/// Where the disk comes from.
#[derive(Debug, Clone, Copy)]
pub enum DiskBase<'a> {
    /// A vendor cloud image, qcow2 or raw.
    CloudImage(&'a Path),
    /// A rootfs tarball with a kernel, assembled into a bootable disk.
    Rootfs(&'a Path),
}

#[derive(Debug, Clone, Default)]
pub struct DiskOptions {
    /// Virtual size; a cloud image is grown to it, never shrunk.
    pub size: Option<u64>,
    /// `qemu-img convert -c`.
    pub compress: bool,
    /// Bytes that make an assembled disk's ids stable (the base digest).
    pub id_seed: Vec<u8>,
}

/// The root partition that was edited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootInfo {
    pub index: u32,
    pub label: String,
    pub fs: String,
    pub offset: u64,
    pub size: u64,
}

/// A finished qcow2.
#[derive(Debug, Clone)]
pub struct DiskOutput {
    pub sha256: Sha256Hex,
    pub size: u64,
    pub virtual_size: u64,
    /// Format of the base as `qemu-img` saw it (`qcow2`, `raw`), or
    /// `assembled` for a disk made from a rootfs.
    pub base_format: String,
    /// Size the base was grown from, when it was grown.
    pub grown_from: Option<u64>,
    pub root: RootInfo,
    pub assembled: Option<Assembled>,
    pub apply: ApplyReport,
    /// `/etc/os-release` read from the edited root.
    pub os_release: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ImgInfo {
    format: String,
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
}

fn img_info(tools: &Tools, path: &Path, fetch: &FetchOptions) -> Result<ImgInfo> {
    let out = run_command(
        Command::new(tools.get("qemu-img")?)
            .args(["info", "--output=json"])
            .arg(path),
        &fetch.cancel,
    )
    .with_context(|| format!("reading {} with qemu-img info", path.display()))?;
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("parsing `qemu-img info` of {}", path.display()))
}

/// Programs needed for `base`.
pub fn required_tools(base: DiskBase<'_>) -> &'static [&'static str] {
    match base {
        DiskBase::CloudImage(_) => &["qemu-img", "debugfs", "e2fsck", "sfdisk"],
        DiskBase::Rootfs(_) => &[
            "qemu-img",
            "debugfs",
            "e2fsck",
            "sfdisk",
            "mke2fs",
            "mkfs.fat",
            "mmd",
            "mcopy",
            "grub-mkimage",
            "tar",
        ],
    }
}

/// Build the qcow2 at `out` from `base` with `layer` applied.
pub fn write_disk(
    base: DiskBase<'_>,
    layer: &Layer,
    out: &Path,
    opts: &DiskOptions,
    fetch: &FetchOptions,
) -> Result<DiskOutput> {
    let mut tools = Tools::from_env();
    tools.require(required_tools(base))?;
    let cancel = &*fetch.cancel;
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Scratch beside the output: the final rename stays on one filesystem,
    // and dropping the directory on any error removes every partial file.
    let work = tempfile::Builder::new()
        .prefix(".imgbuild-disk-")
        .tempdir_in(dir)
        .with_context(|| format!("creating a work directory in {}", dir.display()))?;
    let raw = work.path().join("disk.raw");

    let (base_format, grown_from, assembled) = match base {
        DiskBase::CloudImage(path) => {
            let info = img_info(&tools, path, fetch)?;
            if info.format != "qcow2" && info.format != "raw" {
                bail!(
                    "{} is a {} image; a cloud-image base must be qcow2 or raw",
                    path.display(),
                    info.format
                );
            }
            run_command(
                Command::new(tools.get("qemu-img")?)
                    .args(["convert", "-f", &info.format, "-O", "raw"])
                    .arg(path)
                    .arg(&raw),
                cancel,
            )
            .context("copying the base image to a raw working copy")?;
            check_partitioned(&raw, path)?;
            let grown = match opts.size {
                Some(want) if want > info.virtual_size => {
                    grow(&tools, &raw, want, fetch)?;
                    Some(info.virtual_size)
                }
                Some(want) if want < info.virtual_size => {
                    tracing::warn!(
                        base = info.virtual_size,
                        want,
                        "qcow2.size is smaller than the cloud image; disks are never shrunk, keeping the image's size"
                    );
                    None
                }
                _ => None,
            };
            (info.format, grown, None)
        }
        DiskBase::Rootfs(tar) => {
            let a = assemble_disk(
                &tools,
                tar,
                &raw,
                opts.size.unwrap_or(DEFAULT_DISK_SIZE),
                &opts.id_seed,
                work.path(),
                cancel,
            )?;
            // The extracted tree is no longer needed; free the space now.
            let _ = fs::remove_dir_all(work.path().join("rootfs"));
            ("assembled".to_owned(), None, Some(a))
        }
    };

    let head = read_at(&raw, 0, GPT_PROBE_LEN)?;
    let parts = parse_gpt(&head).with_context(|| describe_base(base))?;
    let root = find_root(&parts)
        .with_context(|| describe_base(base))?
        .clone();
    let sb = read_at(&raw, root.offset_bytes(), PROBE_LEN)?;
    let fs_info = probe_filesystem(&sb, root.index).with_context(|| describe_base(base))?;
    if fs_info.needs_recovery {
        bail!(
            "{}: the root filesystem's journal needs recovery (the image was not shut down cleanly); \
             use a clean image, or run `e2fsck -fy` on it first",
            describe_base(base)
        );
    }
    if fs_info.encrypted {
        bail!(
            "{}: the root filesystem uses ext4 encryption, which cannot be edited offline",
            describe_base(base)
        );
    }
    let needed = layer_bytes(layer);
    let free = fs_info.free_blocks.saturating_mul(fs_info.block_size);
    if needed.saturating_add(needed / 16) > free {
        bail!(
            "the root filesystem has {} MiB free but the layer needs {} MiB: set a larger `qcow2.size` in the profile",
            free >> 20,
            needed.div_ceil(1 << 20)
        );
    }

    let apply = apply_layer(
        &tools.get("debugfs")?,
        &tools.get("e2fsck")?,
        &raw,
        root.offset_bytes(),
        layer,
        work.path(),
        cancel,
    )?;
    let os_release = read_os_release(&tools, &raw, root.offset_bytes(), work.path(), fetch);

    let tmp_out = work.path().join("out.qcow2");
    let mut convert = Command::new(tools.get("qemu-img")?);
    convert.args(["convert", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1"]);
    if opts.compress {
        convert.arg("-c");
    }
    run_command(convert.arg(&raw).arg(&tmp_out), cancel).context("writing the qcow2")?;
    fs::remove_file(&raw).ok();
    run_command(
        Command::new(tools.get("qemu-img")?)
            .args(["check", "-f", "qcow2"])
            .arg(&tmp_out),
        cancel,
    )
    .context("the written qcow2 fails `qemu-img check`")?;
    let virtual_size = img_info(&tools, &tmp_out, fetch)?.virtual_size;
    let (sha256, size) = hash_file(&tmp_out, fetch)?;
    fs::File::open(&tmp_out)
        .and_then(|f| f.sync_all())
        .context("syncing the qcow2")?;
    fs::rename(&tmp_out, out)
        .with_context(|| format!("moving the finished disk to {}", out.display()))?;
    crate::emit::sync_dir(dir)?;

    Ok(DiskOutput {
        sha256,
        size,
        virtual_size,
        base_format,
        grown_from,
        root: RootInfo {
            index: root.index,
            label: fs_info.label.clone(),
            fs: fs_info.kind.to_owned(),
            offset: root.offset_bytes(),
            size: root.size_bytes(),
        },
        assembled,
        apply,
        os_release,
    })
}

fn describe_base(base: DiskBase<'_>) -> String {
    match base {
        DiskBase::CloudImage(p) => format!("cloud image {}", p.display()),
        DiskBase::Rootfs(p) => format!("disk assembled from {}", p.display()),
    }
}

/// A "disk" that qemu-img calls raw may be anything; say so plainly before
/// the GPT parser reports missing signatures.
fn check_partitioned(raw: &Path, original: &Path) -> Result<()> {
    let len = fs::metadata(raw)?.len();
    if len < GPT_PROBE_LEN as u64 {
        bail!(
            "{} is not a disk image: {} bytes is smaller than a partition table",
            original.display(),
            len
        );
    }
    Ok(())
}

/// Grow the raw disk to `size`: extend the file, then move the backup GPT
/// to the new end. The root filesystem itself is grown at first boot
/// (cloud-init `growpart`/`resizefs` in vendor images).
fn grow(tools: &Tools, raw: &Path, size: u64, fetch: &FetchOptions) -> Result<()> {
    run_command(
        Command::new(tools.get("qemu-img")?)
            .args(["resize", "-f", "raw"])
            .arg(raw)
            .arg(size.to_string()),
        &fetch.cancel,
    )
    .context("growing the disk")?;
    run_command(
        Command::new(tools.get("sfdisk")?)
            .args([
                "--no-reread",
                "--no-tell-kernel",
                "--relocate",
                "gpt-bak-std",
            ])
            .arg(raw),
        &fetch.cancel,
    )
    .context("moving the backup GPT to the end of the grown disk")?;
    Ok(())
}

fn read_at(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(len);
    f.take(len as u64)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(buf)
}

/// Bytes the layer writes (file contents).
fn layer_bytes(layer: &Layer) -> u64 {
    layer
        .ops
        .iter()
        .map(|op| match op {
            Op::WriteFile { content, .. } => content.len(),
            _ => 0,
        })
        .sum()
}

/// `/etc/os-release` of the edited root (following the usual symlink to
/// `/usr/lib/os-release`), for the manifest; `None` if unreadable.
fn read_os_release(
    tools: &Tools,
    raw: &Path,
    offset: u64,
    work: &Path,
    fetch: &FetchOptions,
) -> Option<String> {
    let debugfs = tools.get("debugfs").ok()?;
    let dest = work.join("os-release");
    for path in ["/etc/os-release", "/usr/lib/os-release"] {
        let _ = fs::remove_file(&dest);
        let req = format!("dump -p {path} {}", dest.display());
        let ok = run_command(
            Command::new(&debugfs)
                .arg("-R")
                .arg(&req)
                .arg(super::apply::fs_spec(raw, offset)),
            &fetch.cancel,
        )
        .is_ok();
        if ok {
            if let Ok(text) = fs::read_to_string(&dest) {
                if text.contains("ID=") {
                    return Some(text);
                }
            }
        }
    }
    None
}
