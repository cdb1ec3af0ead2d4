//! The qcow2 output: base disk (a vendor cloud image, or a disk assembled
//! from a bootstrapped rootfs) → raw working copy → layer applied to the
//! ext4 root with debugfs → `e2fsck -fn` → qcow2, renamed into place only
//! when complete.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use node_spec::Sha256Hex;
use serde::Deserialize;

use super::apply::{apply_layer, check_fs, Ext4At, RAW_NAME};
use super::assemble::{assemble_disk, Assembled, DEFAULT_DISK_SIZE};
use super::tools::Tools;
use super::{find_root, parse_gpt, probe_filesystem, GPT_PROBE_LEN, PROBE_LEN, SECTOR};
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

/// Check up front that every program and GRUB module tree `base` needs is
/// installed, so a build fails before it fetches or writes anything.
pub fn preflight(base: DiskBase<'_>) -> Result<()> {
    let mut tools = Tools::from_env();
    tools.require(required_tools(base))?;
    if let DiskBase::Rootfs(_) = base {
        super::assemble::require_root()?;
        tools.grub_dir("i386-pc")?;
        tools.grub_dir("x86_64-efi")?;
    }
    Ok(())
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
    tools.require(required_tools(base))?;
    let cancel = &*fetch.cancel;
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
    // The raw working copy and the extracted rootfs go to memory when there
    // is room: no disk writes (and no `fsync` in e2fsprogs) for data that is
    // thrown away.
    let need = match (&base_info, base) {
        (Some(info), _) => info.virtual_size.max(opts.size.unwrap_or(0)),
        (None, DiskBase::Rootfs(tar)) => opts
            .size
            .unwrap_or(DEFAULT_DISK_SIZE)
            .saturating_add(fs::metadata(tar).map(|m| m.len()).unwrap_or(0)),
        (None, DiskBase::CloudImage(_)) => 0,
    };
    let scratch = scratch_dir(need)?;
    let _scratch_registered = scratch.as_ref().map(|t| leftovers::register(t.path()));
    let scratch_path = scratch.as_ref().map(|t| t.path()).unwrap_or(work.path());
    let raw = scratch_path.join(RAW_NAME);

    let (base_format, grown_from, assembled) = match base {
        DiskBase::CloudImage(path) => {
            let info = base_info.context("qemu-img info of the base")?;
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
                opts.size.unwrap_or(DEFAULT_DISK_SIZE),
                &opts.id_seed,
                scratch_path,
                cancel,
            )?;
            // The extracted tree is no longer needed; free the space now.
            let _ = fs::remove_dir_all(scratch_path.join("rootfs"));
            ("assembled".to_owned(), None, Some(a))
        }
    };

    let head = read_at(&raw, 0, GPT_PROBE_LEN)?;
    let parts = parse_gpt(&head).with_context(|| describe_base(base))?;
    let root = find_root(&parts)
        .with_context(|| describe_base(base))?
        .clone();
    let disk_len = fs::metadata(&raw)
        .with_context(|| format!("reading {}", raw.display()))?
        .len();
    // debugfs writes wherever the filesystem says it extends: the partition
    // must lie on the disk and the filesystem inside the partition.
    let root_end = root
        .last_lba
        .checked_add(1)
        .and_then(|n| n.checked_mul(SECTOR as u64));
    if root.first_lba > root.last_lba || root_end.is_none_or(|end| end > disk_len) {
        bail!(
            "{}: root partition {} (sectors {}–{}) does not fit the {}-byte disk",
            describe_base(base),
            root.index,
            root.first_lba,
            root.last_lba,
            disk_len
        );
    }
    let sb = read_at(&raw, root.offset_bytes(), PROBE_LEN)?;
    let fs_info = probe_filesystem(&sb, root.index).with_context(|| describe_base(base))?;
    if fs_info.blocks_count.saturating_mul(fs_info.block_size) > root.size_bytes() {
        bail!(
            "{}: the root filesystem claims {} bytes but partition {} has {}",
            describe_base(base),
            fs_info.blocks_count.saturating_mul(fs_info.block_size),
            root.index,
            root.size_bytes()
        );
    }
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
        let advice = match base {
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

    let root_fs = Ext4At {
        dir: scratch_path.to_owned(),
        offset: root.offset_bytes(),
    };
    apply_layer(&tools.get("debugfs")?, &root_fs, layer, cancel)?;
    let os_release = read_os_release(&tools, &root_fs, fetch);

    // `e2fsck -fn` and the qcow2 conversion only read the raw copy: run them
    // side by side; the disk is published only if both succeed.
    let tmp_out = work.path().join("out.qcow2");
    let mut convert = Command::new(tools.get("qemu-img")?);
    convert.args(["convert", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1"]);
    if opts.compress {
        convert.arg("-c");
    }
    convert.arg(&raw).arg(&tmp_out);
    let e2fsck = tools.get("e2fsck")?;
    let (checked, converted) = std::thread::scope(|s| {
        let check = s.spawn(|| check_fs(&e2fsck, &root_fs, cancel));
        let converted = run_command(&mut convert, cancel).context("writing the qcow2");
        let checked = check
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the e2fsck thread panicked")));
        (checked, converted)
    });
    checked?;
    converted?;
    let virtual_size = disk_len;
    fs::remove_file(&raw).ok();
    drop(scratch);
    run_command(
        Command::new(tools.get("qemu-img")?)
            .args(["check", "-f", "qcow2"])
            .arg(&tmp_out),
        cancel,
    )
    .context("the written qcow2 fails `qemu-img check`")?;
    // Hash (from the page cache) while the kernel writes the file back.
    let (hashed, synced) = std::thread::scope(|s| {
        let sync = s.spawn(|| fs::File::open(&tmp_out).and_then(|f| f.sync_all()));
        let hashed = hash_file(&tmp_out, fetch);
        let synced = sync
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the sync thread panicked")));
        (hashed, synced)
    });
    synced.context("syncing the qcow2")?;
    let (sha256, size) = hashed?;
    // Readable by all, like the template, whatever the umask.
    fs::set_permissions(&tmp_out, fs::Permissions::from_mode(0o644))
        .with_context(|| format!("setting the mode of {}", tmp_out.display()))?;

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
        os_release,
        pending: PendingDisk {
            _work: work,
            _registered: work_registered,
            tmp: tmp_out,
            out: out.to_owned(),
        },
    })
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

/// Prefix of scratch directories in memory (`imgbuild-disk-PID-XXXXXX`);
/// [`sweep_stale_scratch`] finds them by it.
const SCRATCH_PREFIX: &str = "imgbuild-disk-";
/// The file naming the process that owns a scratch directory made before
/// the pid was part of the name.
const OWNER_FILE: &str = "owner.pid";

/// Memory-backed scratch space (`$IMGBUILD_SCRATCH_DIR`, else `/dev/shm`)
/// when it has room for `need` bytes with 2 GiB of the machine's available
/// memory to spare; `None` means "use the work directory beside the output".
fn scratch_dir(need: u64) -> Result<Option<tempfile::TempDir>> {
    let forced = std::env::var_os("IMGBUILD_SCRATCH_DIR").map(PathBuf::from);
    let dir = match &forced {
        Some(d) => d.clone(),
        None => {
            let shm = Path::new("/dev/shm");
            sweep_stale_scratch(shm);
            let room = mem_available().zip(free_space(shm));
            match room {
                Some((mem, free)) if mem > need.saturating_add(2 << 30) && free > need => {
                    shm.to_owned()
                }
                _ => {
                    tracing::debug!(need, "scratch on disk, beside the output");
                    return Ok(None);
                }
            }
        }
    };
    let made = tempfile::Builder::new()
        .prefix(&format!("{SCRATCH_PREFIX}{}-", std::process::id()))
        .tempdir_in(&dir);
    match made {
        Ok(t) => {
            tracing::debug!(dir = %t.path().display(), "scratch space");
            Ok(Some(t))
        }
        Err(e) if forced.is_some() => {
            Err(e).with_context(|| format!("creating scratch space in {}", dir.display()))
        }
        Err(e) => {
            tracing::debug!(error = %e, "no scratch space in memory; using the output directory");
            Ok(None)
        }
    }
}

/// Remove scratch directories in `dir` whose owning process is gone (an
/// imgbuild killed outright cannot clean up, and memory is not freed until
/// they are removed): by the pid in the name, else by an `owner.pid` file
/// (older builds), else by age.
fn sweep_stale_scratch(dir: &Path) {
    let owner = |name: &str| {
        let rest = name.strip_prefix(SCRATCH_PREFIX)?;
        let pid = leftovers::pid_after(rest, "", '-').or_else(|| {
            fs::read_to_string(dir.join(name).join(OWNER_FILE))
                .ok()
                .and_then(|p| p.trim().parse().ok())
        });
        Some(pid.map_or(leftovers::Owner::Unknown, leftovers::Owner::Pid))
    };
    if let Err(e) = leftovers::sweep(dir, owner) {
        tracing::warn!(dir = %dir.display(), "cannot remove scratch space left by an interrupted build: {e}");
    }
}

/// `MemAvailable` from /proc/meminfo, in bytes.
fn mem_available() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn free_space(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(st.blocks_available() as u64 * st.fragment_size() as u64)
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

/// `/etc/os-release` of the edited root (or `/usr/lib/os-release`, where
/// it usually links to), for the manifest; `None` if unreadable. One
/// debugfs run dumps both.
fn read_os_release(tools: &Tools, fs_at: &Ext4At, fetch: &FetchOptions) -> Option<String> {
    let debugfs = tools.get("debugfs").ok()?;
    fs::write(
        fs_at.dir.join("os-release.debugfs"),
        "dump -p /etc/os-release os-release.etc\ndump -p /usr/lib/os-release os-release.usr\n",
    )
    .ok()?;
    run_command(
        fs_at
            .command(&debugfs)
            .args(["-f", "os-release.debugfs"])
            .arg(fs_at.spec()),
        &fetch.cancel,
    )
    .ok()?;
    // A symlink dumps as its target's name, not as os-release text.
    ["os-release.etc", "os-release.usr"]
        .iter()
        .filter_map(|name| fs::read_to_string(fs_at.dir.join(name)).ok())
        .find(|t| t.contains("ID="))
}
