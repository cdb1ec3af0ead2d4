//! The qcow2 output: base disk (a vendor cloud image, or a disk assembled
//! from a bootstrapped rootfs) → raw working copy → layer applied to the
//! root (ext4 with debugfs; XFS, also on LVM, on a loop mount) and labelled
//! for SELinux where the image has a policy → filesystem check → qcow2,
//! renamed into place only when complete.
//!
//! [`write_disk`] lists the steps in order; each is a function of its own
//! taking the build's [`Cx`].

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use anyhow::{bail, Context, Result};
use node_spec::Sha256Hex;
use serde::Deserialize;

use super::apply::RAW_NAME;
use super::assemble::{assemble_disk, AssembleRoot, Assembled, DEFAULT_DISK_SIZE};
use super::edit::{self, Applied};
use super::mount::LoopDevice;
use super::qcow2file::{Open, Patched, Qcow2};
use super::root::{locate_root, locate_root_in, FsKind, RootFs};
use super::scratch::scratch_dir;
use super::selinux::{SelinuxInfo, SelinuxMode};
use super::tools::Tools;
use super::working::{self, Extent, Working};
use super::GPT_PROBE_LEN;
use crate::command::run_command;
use crate::layer::{Layer, Op};
use crate::output::leftovers;
use crate::source::{hash_file, FetchOptions};

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
    /// What to do when the image carries an SELinux policy.
    pub selinux: SelinuxMode,
    /// The root filesystem of an assembled disk.
    pub assemble_root: AssembleRoot,
    /// Convert a qcow2 base with `qemu-img` both ways even where it could
    /// be patched ([`CONVERT_VAR`]).
    pub convert: bool,
    /// Where data derived from a cached base is kept (its root's metadata
    /// map, [`super::working`]; the digest state of the patched prefix,
    /// [`super::qcow2file`]); `None` keeps nothing.
    pub derived: Option<PathBuf>,
}

/// The root that was edited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootInfo {
    pub index: u32,
    pub label: String,
    pub fs: String,
    /// Byte offset of the filesystem (inside the LV for an LVM root).
    pub offset: u64,
    pub size: u64,
    /// `VG/LV` when the root partition is an LVM2 PV.
    pub lv: Option<String>,
}

/// A finished qcow2, still to be put in place with
/// [`PendingDisk::commit`].
#[derive(Debug)]
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
    /// `/etc/os-release` read from the edited root.
    pub os_release: Option<String>,
    pub selinux: SelinuxInfo,
    /// `patched` (the base's bytes kept, changed clusters appended) or
    /// `converted` (`qemu-img convert` of the edited raw copy).
    pub written: &'static str,
    /// `metadata` or `full`, for a patched disk.
    pub working_copy: Option<&'static str>,
    pub pending: PendingDisk,
}

#[derive(Debug, Deserialize)]
struct ImgInfo {
    format: String,
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
    #[serde(rename = "backing-filename", default)]
    backing_filename: Option<String>,
    #[serde(rename = "format-specific", default)]
    format_specific: Option<serde_json::Value>,
}

impl ImgInfo {
    /// A file outside the image that `qemu-img convert` would read into
    /// the disk: a backing file or a qcow2 external data file. A crafted
    /// image could name host files (`/etc/shadow`, a block device) here.
    fn external_file(&self) -> Option<String> {
        self.backing_filename.clone().or_else(|| {
            self.format_specific
                .as_ref()?
                .pointer("/data/data-file")?
                .as_str()
                .map(str::to_owned)
        })
    }
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

/// Programs needed for `base` whatever its root filesystem.
pub fn required_tools(base: DiskBase<'_>, opts: &DiskOptions) -> Vec<&'static str> {
    let mut t = vec!["qemu-img", "debugfs", "e2fsck", "sfdisk"];
    if let DiskBase::Rootfs(_) = base {
        t.extend(["mke2fs", "mkfs.fat", "mmd", "mcopy", "grub-mkimage", "tar"]);
        match opts.assemble_root {
            AssembleRoot::Ext4 => {}
            AssembleRoot::Xfs => t.extend(["losetup", "mkfs.xfs", "xfs_repair"]),
            AssembleRoot::Lvm => t.extend(["losetup", "mkfs.xfs", "xfs_repair", "lvm"]),
        }
    }
    t
}

/// Check up front that every program and GRUB module tree `base` needs is
/// installed (and, for an assembled XFS or LVM root, that this host can
/// mount it), so a build fails before it fetches or writes anything. A
/// cloud image's root is known only once its partition table is read: an
/// XFS root is checked with [`super::mount::preflight`] then, before the
/// layer is written.
pub fn preflight(base: DiskBase<'_>, opts: &DiskOptions) -> Result<()> {
    let mut tools = Tools::from_env();
    tools.require(&required_tools(base, opts))?;
    if let DiskBase::Rootfs(_) = base {
        super::assemble::require_root()?;
        tools.grub_dir("i386-pc")?;
        tools.grub_dir("x86_64-efi")?;
        if opts.assemble_root != AssembleRoot::Ext4 {
            super::mount::preflight(&mut tools)?;
        }
    }
    Ok(())
}

/// The build's inputs and places, handed to every step.
#[derive(Debug)]
pub struct Cx<'a> {
    pub base: DiskBase<'a>,
    pub layer: &'a Layer,
    pub opts: &'a DiskOptions,
    pub fetch: &'a FetchOptions,
    pub tools: Tools,
    /// Scratch beside the output (the qcow2 is written here).
    pub work: &'a Path,
    /// Scratch for the raw copy (memory when there is room, else `work`).
    pub scratch: &'a Path,
    /// The working copy of a base written by patching (its file data is
    /// copied in as debugfs needs it); `None` for a converted one.
    pub working: Option<Mutex<Working<'a>>>,
}

impl<'a> Cx<'a> {
    pub fn raw(&self) -> PathBuf {
        self.scratch.join(RAW_NAME)
    }

    /// The qcow2 being written, in the work directory.
    pub fn tmp_out(&self) -> PathBuf {
        self.work.join("out.qcow2")
    }

    /// The patched base's working copy, locked; `None` when converting.
    pub fn working(&self) -> Result<Option<MutexGuard<'_, Working<'a>>>> {
        self.working
            .as_ref()
            .map(|w| {
                w.lock()
                    .map_err(|_| anyhow::anyhow!("the working copy's lock was poisoned"))
            })
            .transpose()
    }

    pub fn cancel(&self) -> &std::sync::atomic::AtomicBool {
        &self.fetch.cancel
    }

    fn describe_base(&self) -> String {
        match self.base {
            DiskBase::CloudImage(p) => format!("cloud image {}", p.display()),
            DiskBase::Rootfs(p) => format!("disk assembled from {}", p.display()),
        }
    }
}

/// Build the qcow2 for `out` from `base` with `layer` applied; it is put
/// in place by [`PendingDisk::commit`].
pub fn write_disk(
    base: DiskBase<'_>,
    layer: &Layer,
    out: &Path,
    opts: &DiskOptions,
    fetch: &FetchOptions,
) -> Result<DiskOutput> {
    let mut tools = Tools::from_env();
    tools.require(&required_tools(base, opts))?;
    let dir = crate::parent_dir(out);
    // Scratch beside the output: the final rename stays on one filesystem,
    // and dropping the directory on any error removes every partial file.
    // Its name holds the pid, so a later build removes it if this one is
    // killed (`output::leftovers`).
    let work = tempfile::Builder::new()
        .prefix(&format!(".imgbuild-disk-{}-", std::process::id()))
        .tempdir_in(dir)
        .with_context(|| format!("creating a work directory in {}", dir.display()))?;
    let work_registered = leftovers::register(work.path());
    let base_info = match base {
        DiskBase::CloudImage(path) => Some(img_info(&tools, path, fetch)?),
        DiskBase::Rootfs(_) => None,
    };
    let patchable = match (base, &base_info) {
        (DiskBase::CloudImage(path), Some(info)) => patchable(path, info, opts),
        _ => None,
    };
    // The raw working copy and the extracted rootfs go to memory when there
    // is room: no disk writes (and no `fsync` in e2fsprogs) for data that is
    // thrown away. A copy of the metadata only needs little.
    let need = match (&patchable, &base_info, base) {
        (Some(p), _, _) if p.map.is_some() => 256 << 20,
        (_, Some(info), _) => info.virtual_size.max(opts.size.unwrap_or(0)),
        (_, None, DiskBase::Rootfs(tar)) => opts
            .size
            .unwrap_or(DEFAULT_DISK_SIZE)
            .saturating_add(fs::metadata(tar).map(|m| m.len()).unwrap_or(0)),
        (_, None, DiskBase::CloudImage(_)) => 0,
    };
    let scratch = scratch_dir(need)?;
    let _scratch_registered = scratch.as_ref().map(|t| leftovers::register(t.path()));
    let mut cx = Cx {
        base,
        layer,
        opts,
        fetch,
        tools,
        work: work.path(),
        scratch: scratch.as_ref().map(|t| t.path()).unwrap_or(work.path()),
        working: None,
    };
    let done = match (&patchable, base_info) {
        (Some(p), Some(info)) => match patch(&mut cx, p, p.map.clone(), &info) {
            // The metadata copy is a shortcut: if anything went wrong with
            // it, forget the map and do it the long way.
            Err(e)
                if p.map.is_some() && !cx.cancel().load(std::sync::atomic::Ordering::Relaxed) =>
            {
                tracing::debug!("patching from a copy of the root's metadata failed: {e:#}");
                retry_whole(&mut cx, p, info, &e)?
            }
            r => r?,
        },
        (_, info) => convert(&mut cx, info)?,
    };
    drop(cx);
    drop(scratch);
    Ok(DiskOutput {
        sha256: done.sha256,
        size: done.size,
        virtual_size: done.virtual_size,
        base_format: done.base_format,
        grown_from: done.grown_from,
        root: RootInfo {
            index: done.root.part.index,
            label: done.root.label().to_owned(),
            fs: done.root.fs_name(),
            offset: done.root.offset,
            size: done.root.size,
            lv: done.root.lv.as_ref().map(|l| format!("{}/{}", l.vg, l.lv)),
        },
        assembled: done.assembled,
        written: done.written,
        working_copy: done.working_copy,
        os_release: done.applied.os_release,
        selinux: done.applied.selinux,
        pending: PendingDisk {
            _work: work,
            _registered: work_registered,
            tmp: done.tmp_out,
            out: out.to_owned(),
        },
    })
}

/// What either way of writing the disk produced.
struct Done {
    sha256: Sha256Hex,
    size: u64,
    virtual_size: u64,
    base_format: String,
    grown_from: Option<u64>,
    root: RootFs,
    assembled: Option<Assembled>,
    written: &'static str,
    working_copy: Option<&'static str>,
    applied: Applied,
    tmp_out: PathBuf,
}

/// Set to `1`, every qcow2 base is converted with `qemu-img` both ways
/// instead of patched: the way disks were written before, kept as a
/// fallback and as the reference the tests compare against.
pub const CONVERT_VAR: &str = "IMGBUILD_QCOW2_CONVERT";

/// A qcow2 base that is patched ([`patch`]) rather than converted twice.
struct Patchable {
    img: Box<Qcow2>,
    /// The root as read from the base.
    root: RootFs,
    /// The cached metadata map of its root.
    map: Option<Vec<(u64, u64)>>,
}

/// Keep the metadata map of a root read from a full, unedited working
/// copy, so the next build from this qcow2 base copies only that.
fn keep_map(cx: &Cx<'_>, root: &RootFs) {
    if let Some(dir) = derived_for_base(cx.opts) {
        if working::load_map(&dir, root).is_none() {
            working::save_map(&cx.tools, cx.scratch, &cx.raw(), &dir, root, cx.cancel());
        }
    }
}

/// The directory for what is derived from this base, named by its digest
/// (`id_seed`); `None` when nothing is kept.
fn derived_for_base(opts: &DiskOptions) -> Option<PathBuf> {
    let digest = std::str::from_utf8(&opts.id_seed).ok()?;
    let dir = opts.derived.as_deref()?;
    (digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit())).then(|| dir.join(digest))
}

/// A plain or compressed qcow2 base whose format [`Qcow2`] reads exactly,
/// written without `qcow2.compress`. A compressed one only with its
/// metadata map: copying all of it would decompress it twice. Anything
/// else (or any doubt) goes through `qemu-img convert`, whose errors are
/// the precise ones.
fn patchable(path: &Path, info: &ImgInfo, opts: &DiskOptions) -> Option<Patchable> {
    if info.format != "qcow2" || opts.compress || info.external_file().is_some() {
        return None;
    }
    if opts.convert {
        tracing::debug!("converting the base with qemu-img, as asked");
        return None;
    }
    let img = match Qcow2::open(path) {
        Ok(Open::Image(img)) => img,
        Ok(Open::Unsupported(why)) => {
            tracing::debug!("converting the base with qemu-img: {why}");
            return None;
        }
        Err(e) => {
            tracing::debug!("converting the base with qemu-img: {e:#}");
            return None;
        }
    };
    let root = locate_root_in(
        &|off, len| img.read_guest(off, len),
        img.virtual_size,
        &path.display().to_string(),
    )
    .ok()?;
    // Blocks smaller than a page get a full copy (`Working::create` checks
    // the scratch space's real unit); decided here so the scratch space is
    // chosen for the right size.
    let map = derived_for_base(opts)
        .as_deref()
        .and_then(|dir| working::load_map(dir, &root))
        .filter(|_| root.fs.block_size().is_multiple_of(4096) && root.offset.is_multiple_of(4096));
    if map.is_none() && img.has_compressed() {
        return None;
    }
    Some(Patchable { img, root, map })
}

/// The base converted to a raw working copy, edited, and converted to the
/// qcow2 (`qemu-img convert` both ways); also a disk assembled from a
/// rootfs.
fn convert(cx: &mut Cx<'_>, info: Option<ImgInfo>) -> Result<Done> {
    let (base_format, grown_from, assembled) = match (cx.base, info) {
        (DiskBase::CloudImage(_), Some(info)) => {
            preflight_root(cx, &info)?;
            convert_to_raw(cx, &info)?;
            let grown = grow(cx, &info)?;
            (info.format, grown, None)
        }
        _ => {
            let a = assemble(cx)?;
            ("assembled".to_owned(), None, Some(a))
        }
    };
    let root = locate(cx)?;
    if base_format == "qcow2" {
        keep_map(cx, &root);
    }
    let mut applied = apply_layer(cx, &root)?;
    let tmp_out = check_fs_and_write_qcow2(cx, &root, applied.loop_dev.take())?;
    let virtual_size = fs::metadata(cx.raw())
        .with_context(|| format!("reading {}", cx.raw().display()))?
        .len();
    fs::remove_file(cx.raw()).ok();
    let (sha256, size) = finish_qcow2(&cx.tools, cx.fetch, &tmp_out)?;
    Ok(Done {
        sha256,
        size,
        virtual_size,
        base_format,
        grown_from,
        root,
        assembled,
        written: "converted",
        working_copy: None,
        applied,
        tmp_out,
    })
}

/// After a failed attempt from the metadata map: the map is forgotten and
/// the base copied whole (patched, or converted if it is compressed). An
/// error then is the base's; a success means the map was wrong.
fn retry_whole<'a>(
    cx: &mut Cx<'a>,
    p: &'a Patchable,
    info: ImgInfo,
    first: &anyhow::Error,
) -> Result<Done> {
    cx.working = None;
    for leftover in [cx.raw(), cx.tmp_out()] {
        let _ = fs::remove_file(leftover);
    }
    if let Some(dir) = derived_for_base(cx.opts) {
        working::forget_map(&dir, &p.root);
    }
    let done = if p.img.has_compressed() {
        convert(cx, Some(info))
    } else {
        patch(cx, p, None, &info)
    }?;
    tracing::warn!(
        "the kept map of this base's root metadata did not work ({first:#}); the base was \
         copied whole and the map made again"
    );
    Ok(done)
}

/// The base patched: the new qcow2's prefix (header and the base's bytes)
/// is copied and hashed from the start while the working copy is made and
/// edited; then only the clusters that changed are appended
/// ([`super::qcow2file`], [`super::working`]).
fn patch<'a>(
    cx: &mut Cx<'a>,
    p: &'a Patchable,
    map: Option<Vec<(u64, u64)>>,
    info: &ImgInfo,
) -> Result<Done> {
    preflight_root(cx, info)?;
    let tmp_out = cx.tmp_out();
    let new_size = info.virtual_size.max(cx.opts.size.unwrap_or(0));
    let keep = derived_for_base(cx.opts);
    let mut out = Patched::begin(
        &p.img,
        &tmp_out,
        new_size,
        cx.fetch.cancel.clone(),
        keep.as_deref(),
    )?;
    let working = Working::create(&p.img, &cx.raw(), &p.root, map, cx.cancel())?;
    let extent = working.extent;
    cx.working = Some(Mutex::new(working));
    let grown = grow(cx, info)?;
    let root = locate(cx)?;
    if root.offset != p.root.offset {
        bail!(
            "{}: the root was found at byte {} in the working copy but at {} in the base",
            cx.describe_base(),
            root.offset,
            p.root.offset
        );
    }
    if extent == Extent::Full {
        keep_map(cx, &root);
    }
    let mut applied = apply_layer(cx, &root)?;
    let loop_dev = applied.loop_dev.take();
    let cx = &*cx;
    let (checked, changed) = std::thread::scope(|s| {
        let check = s.spawn(|| check_fs(cx, &root, loop_dev));
        let changed = cx.working().and_then(|w| match w {
            Some(w) => w.write_changes(&mut out, cx.cancel()),
            None => Err(anyhow::anyhow!("no working copy")),
        });
        let checked = check
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the filesystem check thread panicked")));
        (checked, changed)
    });
    checked?;
    let changed = changed.context("carrying the edit into the qcow2")?;
    tracing::debug!(changed, "clusters replaced");
    let (sha256, size) = out.finish(|| check_qcow2(&cx.tools, cx.fetch, &tmp_out))?;
    make_readable(&tmp_out)?;
    Ok(Done {
        sha256,
        size,
        virtual_size: new_size,
        base_format: info.format.clone(),
        grown_from: grown,
        root,
        assembled: None,
        written: "patched",
        working_copy: Some(match extent {
            Extent::Metadata => "metadata",
            Extent::Full => "full",
        }),
        applied,
        tmp_out,
    })
}

/// On a host that cannot mount XFS, read the base's partition table and
/// root superblock in place (`qemu-img dd`, a few KiB) and say what is
/// missing before the working copy is written. Only a refusal is final: a
/// base that cannot be read this way gets its precise error from the full
/// check on the working copy ([`locate`]).
fn preflight_root(cx: &Cx<'_>, info: &ImgInfo) -> Result<()> {
    let DiskBase::CloudImage(path) = cx.base else {
        return Ok(());
    };
    let mut tools = cx.tools.clone();
    let Err(missing) = super::mount::preflight(&mut tools) else {
        return Ok(());
    };
    if info.external_file().is_some() || (info.format != "qcow2" && info.format != "raw") {
        return Ok(());
    }
    let peek = cx.scratch.join("peek.raw");
    let read = |offset: u64, len: usize| -> Result<Vec<u8>> {
        let (first, end) = (offset / 512, (offset + len as u64).div_ceil(512));
        let _ = fs::remove_file(&peek);
        run_command(
            Command::new(cx.tools.get("qemu-img")?)
                .args(["dd", "-f", &info.format, "-O", "raw", "bs=512"])
                .arg(format!("skip={first}"))
                .arg(format!("count={}", end.min(info.virtual_size / 512)))
                .arg(format!("if={}", path.display()))
                .arg(format!("of={}", peek.display())),
            cx.cancel(),
        )?;
        let bytes = fs::read(&peek).with_context(|| format!("reading {}", peek.display()))?;
        let skip = (offset - first * 512) as usize;
        Ok(bytes
            .get(skip..)
            .unwrap_or_default()
            .iter()
            .take(len)
            .copied()
            .collect())
    };
    let probed = locate_root_in(&read, info.virtual_size, &cx.describe_base());
    let _ = fs::remove_file(&peek);
    match probed {
        Ok(root) if matches!(root.fs, FsKind::Xfs(_)) => Err(missing.context(cx.describe_base())),
        _ => Ok(()),
    }
}

/// A cloud image, qcow2 or raw and self-contained, to the raw working copy.
fn convert_to_raw(cx: &Cx<'_>, info: &ImgInfo) -> Result<()> {
    let DiskBase::CloudImage(path) = cx.base else {
        bail!("convert_to_raw is for cloud images");
    };
    if info.format != "qcow2" && info.format != "raw" {
        bail!(
            "{} is a {} image; a cloud-image base must be qcow2 or raw",
            path.display(),
            info.format
        );
    }
    if let Some(file) = info.external_file() {
        bail!(
            "{} refers to another file ({file}) as its backing or data file; a cloud-image \
             base must be self-contained (flatten it with `qemu-img convert -O qcow2`)",
            path.display()
        );
    }
    run_command(
        Command::new(cx.tools.get("qemu-img")?)
            .args(["convert", "-f", &info.format, "-O", "raw"])
            .arg(path)
            .arg(cx.raw()),
        cx.cancel(),
    )
    .context("copying the base image to a raw working copy")?;
    check_partitioned(&cx.raw(), path)
}

/// Grow the working copy to `qcow2.size` when that is larger; the size the
/// base had, if it was grown.
fn grow(cx: &Cx<'_>, info: &ImgInfo) -> Result<Option<u64>> {
    Ok(match cx.opts.size {
        Some(want) if want > info.virtual_size => {
            grow_disk(&cx.tools, &cx.raw(), want, cx.fetch)?;
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
    })
}

/// A rootfs tarball to a bootable raw disk.
fn assemble(cx: &Cx<'_>) -> Result<Assembled> {
    let DiskBase::Rootfs(tar) = cx.base else {
        bail!("assemble is for rootfs bases");
    };
    let a = assemble_disk(
        &cx.tools,
        tar,
        cx.opts.size.unwrap_or(DEFAULT_DISK_SIZE),
        &cx.opts.id_seed,
        cx.opts.assemble_root,
        cx.scratch,
        cx.cancel(),
    )?;
    // The extracted tree is no longer needed; free the space now.
    let _ = fs::remove_dir_all(cx.scratch.join("rootfs"));
    Ok(a)
}

/// The root filesystem, checked for what the editor needs.
fn locate(cx: &Cx<'_>) -> Result<RootFs> {
    let root = locate_root(&cx.raw(), &cx.describe_base())?;
    match &root.fs {
        FsKind::Ext(info) => {
            if info.needs_recovery {
                bail!(
                    "{}: the root filesystem's journal needs recovery (the image was not shut \
                     down cleanly); use a clean image, or run `e2fsck -fy` on it first",
                    cx.describe_base()
                );
            }
            if info.encrypted {
                bail!(
                    "{}: the root filesystem uses ext4 encryption, which cannot be edited offline",
                    cx.describe_base()
                );
            }
            let free = info.free_blocks.saturating_mul(info.block_size);
            check_room(cx, free)?;
        }
        FsKind::Xfs(_) => {
            let mut tools = cx.tools.clone();
            super::mount::preflight(&mut tools).with_context(|| cx.describe_base())?;
        }
    }
    Ok(root)
}

/// The layer (with 1/16 to spare) fits in `free` bytes.
pub(super) fn check_room(cx: &Cx<'_>, free: u64) -> Result<()> {
    let needed = layer_bytes(cx.layer);
    if needed.saturating_add(needed / 16) > free {
        let advice = match cx.base {
            DiskBase::CloudImage(_) => {
                "use a cloud image with more free space in its root filesystem, or bake less \
                 (bake.k3s-binary, bake.airgap-images)"
            }
            DiskBase::Rootfs(_) => "set a larger `qcow2.size` in the profile",
        };
        bail!(
            "the root filesystem is too small for the layer: {} MiB free, {} MiB needed; {advice}",
            free >> 20,
            needed.div_ceil(1 << 20)
        );
    }
    Ok(())
}

/// Write the layer (and SELinux labels) into the root.
fn apply_layer(cx: &Cx<'_>, root: &RootFs) -> Result<Applied> {
    match root.fs {
        FsKind::Ext(_) => edit::apply_ext4(cx, root),
        FsKind::Xfs(_) => edit::apply_mounted(cx, root),
    }
}

/// The filesystem check and the qcow2 conversion only read the raw copy:
/// run them side by side; the disk is published only if both succeed. An
/// XFS root's loop device is detached as soon as its check is done.
fn check_fs_and_write_qcow2(
    cx: &Cx<'_>,
    root: &RootFs,
    loop_dev: Option<LoopDevice>,
) -> Result<PathBuf> {
    let tmp_out = cx.tmp_out();
    let (checked, converted) = std::thread::scope(|s| {
        let check = s.spawn(|| check_fs(cx, root, loop_dev));
        let converted = write_qcow2(cx, &tmp_out);
        let checked = check
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the filesystem check thread panicked")));
        (checked, converted)
    });
    checked?;
    converted?;
    Ok(tmp_out)
}

/// `e2fsck -fn` (ext4) or `xfs_repair -n` (XFS, on the still attached
/// loop device): fail unless the edited filesystem is consistent.
fn check_fs(cx: &Cx<'_>, root: &RootFs, loop_dev: Option<LoopDevice>) -> Result<()> {
    match (&root.fs, &loop_dev) {
        (FsKind::Ext(_), _) => {
            let at = edit::ext4_at(cx, root);
            super::apply::check_fs(&cx.tools.get("e2fsck")?, &at, cx.cancel())
        }
        (FsKind::Xfs(_), Some(dev)) => edit::check_xfs(cx, dev),
        (FsKind::Xfs(_), None) => bail!("the XFS root was not left attached for its check"),
    }
}

fn write_qcow2(cx: &Cx<'_>, tmp_out: &Path) -> Result<()> {
    let mut convert = Command::new(cx.tools.get("qemu-img")?);
    convert.args(["convert", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1"]);
    if cx.opts.compress {
        convert.arg("-c");
    }
    convert.arg(cx.raw()).arg(tmp_out);
    run_command(&mut convert, cx.cancel()).context("writing the qcow2")?;
    Ok(())
}

/// `qemu-img check`, then hash and sync; the file is made readable by all.
fn finish_qcow2(tools: &Tools, fetch: &FetchOptions, tmp_out: &Path) -> Result<(Sha256Hex, u64)> {
    check_qcow2(tools, fetch, tmp_out)?;
    // Hash (from the page cache) while the kernel writes the file back.
    let (hashed, synced) = std::thread::scope(|s| {
        let sync = s.spawn(|| fs::File::open(tmp_out).and_then(|f| f.sync_all()));
        let hashed = hash_file(tmp_out, fetch);
        let synced = sync
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the sync thread panicked")));
        (hashed, synced)
    });
    synced.context("syncing the qcow2")?;
    let hashed = hashed?;
    make_readable(tmp_out)?;
    Ok(hashed)
}

fn check_qcow2(tools: &Tools, fetch: &FetchOptions, path: &Path) -> Result<()> {
    run_command(
        Command::new(tools.get("qemu-img")?)
            .args(["check", "-f", "qcow2"])
            .arg(path),
        &fetch.cancel,
    )
    .context("the written qcow2 fails `qemu-img check`")?;
    Ok(())
}

/// Readable by all, like the template, whatever the umask.
fn make_readable(path: &Path) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// A finished, checked and synced qcow2 that is not in place yet, so the
/// caller can stage its manifest first. Dropped uncommitted, it is removed.
#[derive(Debug)]
pub struct PendingDisk {
    _work: tempfile::TempDir,
    _registered: leftovers::Registered<'static>,
    tmp: PathBuf,
    out: PathBuf,
}

impl PendingDisk {
    /// Rename the disk into place and sync its directory.
    pub fn commit(self) -> Result<()> {
        fs::rename(&self.tmp, &self.out)
            .with_context(|| format!("moving the finished disk to {}", self.out.display()))?;
        Ok(crate::emit::sync_dir(crate::parent_dir(&self.out))?)
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
fn grow_disk(tools: &Tools, raw: &Path, size: u64, fetch: &FetchOptions) -> Result<()> {
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
