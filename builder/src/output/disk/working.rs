//! The raw working copy of a qcow2 base, and what changed in it.
//!
//! The editors (debugfs, a loop mount) need a raw disk. It is a sparse file
//! of the guest's size holding either every stored cluster of the base
//! ([`Extent::Full`]) or, for a root whose metadata map is cached, only the
//! filesystem's metadata ([`Extent::Metadata`]). For ext4: superblocks,
//! group descriptors, bitmaps, inode tables, directories, extent trees,
//! the journal — the blocks `e2image -r` copies, which are what debugfs and
//! `e2fsck -fn` read; for XFS what `xfs_metadump` dumps, which is what the
//! mount and `xfs_repair -n` read. File data the editors read (os-release,
//! the SELinux policy) is copied in first ([`Working::fill_file_data`],
//! [`Working::fill_tree_file`]); blocks they allocate are written whole.
//! Holes read as zeros, so a block that is neither copied nor written must
//! never be read: debugfs runs with `UNIX_IO_NOZEROOUT` (zeroing writes
//! zeros instead of punching a hole), and the copied ranges are checked to
//! still be there afterwards.
//!
//! The map is made once per base ([`save_map`]) on a full copy (the first
//! build from it) and kept in the cache beside the base, keyed by its
//! digest and the filesystem's offset: the base is content-addressed and
//! never changes.
//!
//! [`Working::write_changes`] then hands every guest cluster that differs
//! from the base to [`Patched`]: in metadata mode, the clusters the raw
//! file holds data in, each read as the base's cluster overlaid with what
//! the raw file holds; in full mode, every cluster either side stores.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::apply::Ext4At;
use super::mount::LoopDevice;
use super::qcow2file::{data_ranges, Mapping, Patched, Qcow2};
use super::root::{FsKind, RootFs};
use super::tools::Tools;
use super::GPT_PROBE_LEN;
use crate::command::run_command;

/// Version of the cached map's format and of what it covers.
const MAP_FORMAT: u32 = 1;
/// Bytes copied at each end of the disk in metadata mode: the protective
/// MBR, both GPT headers and their entry arrays.
const GPT_AREA: u64 = 1 << 20;

/// How much of the base the working copy holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extent {
    Full,
    Metadata,
}

/// The working copy of `img` at `path`.
#[derive(Debug)]
pub struct Working<'a> {
    img: &'a Qcow2,
    file: File,
    pub extent: Extent,
    /// Guest ranges copied from the base (metadata mode).
    copied: Vec<(u64, u64)>,
    /// Where the root filesystem lies, its block size and its blocks.
    fs_offset: u64,
    block_size: u64,
    blocks: u64,
}

/// The cached metadata map of one base's ext4 or XFS root.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct MapFile {
    format: u32,
    base_sha256: String,
    fs_offset: u64,
    fs_bytes: u64,
    /// Byte ranges relative to the filesystem's start.
    ranges: Vec<(u64, u64)>,
}

/// `dir` is the base's own directory of derived data.
fn map_path(dir: &Path, root: &RootFs) -> PathBuf {
    let kind = match root.fs {
        FsKind::Ext(_) => "ext4",
        FsKind::Xfs(_) => "xfs",
    };
    dir.join(format!("{kind}-metadata-{}.json", root.offset))
}

/// The base's digest: the name of its directory of derived data.
fn base_of(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The filesystem's size, for a root a map can be made for: ext4 on a
/// partition, XFS on a partition or an LV.
fn fs_bytes(root: &RootFs) -> Option<u64> {
    match &root.fs {
        FsKind::Ext(_) if root.lv.is_some() => None,
        fs => Some(fs.bytes()),
    }
}

/// The cached map of the base's root, if there is a usable one.
pub fn load_map(dir: &Path, root: &RootFs) -> Option<Vec<(u64, u64)>> {
    let bytes = fs_bytes(root)?;
    let base_sha256 = base_of(dir);
    let path = map_path(dir, root);
    let text = fs::read(&path).ok()?;
    match serde_json::from_slice::<MapFile>(&text) {
        Ok(m)
            if m.format == MAP_FORMAT
                && m.base_sha256 == base_sha256
                && m.fs_offset == root.offset
                && m.fs_bytes == bytes
                && m.ranges.iter().all(|&(s, e)| s < e && e <= bytes) =>
        {
            Some(m.ranges)
        }
        _ => {
            tracing::debug!(path = %path.display(), "ignoring an unusable metadata map");
            None
        }
    }
}

/// Remove the kept map of `root` (it did not work).
pub fn forget_map(dir: &Path, root: &RootFs) {
    let _ = fs::remove_file(map_path(dir, root));
}

/// Make the metadata map of the root in the full, unedited working copy
/// `raw`, and keep it for the next build from this base: ext4 with
/// `e2image -r`, XFS with `xfs_metadump -a -o` and `xfs_mdrestore` (both
/// write a sparse image holding only the metadata; its written parts are
/// the map). Scratch files go to `scratch`. A map that cannot be made or
/// kept only costs the next build its speed.
pub fn save_map(
    tools: &Tools,
    scratch: &Path,
    raw: &Path,
    dir: &Path,
    root: &RootFs,
    cancel: &AtomicBool,
) {
    let Some(bytes) = fs_bytes(root) else {
        return;
    };
    let meta = scratch.join("metadata.raw");
    let made = (|| -> Result<Vec<(u64, u64)>> {
        let _ = fs::remove_file(&meta);
        match root.fs {
            FsKind::Ext(_) => {
                let at = Ext4At {
                    dir: scratch.to_owned(),
                    offset: root.offset,
                };
                // e2image takes the offset as `-o`, not as `disk.raw?offset=`.
                run_command(
                    at.command(&tools.get("e2image")?)
                        .arg("-r")
                        .arg("-o")
                        .arg(root.offset.to_string())
                        .arg(raw)
                        .arg(&meta),
                    cancel,
                )
                .context("mapping the root's metadata with e2image")?;
            }
            FsKind::Xfs(_) => {
                let dump = scratch.join("metadata.dump");
                let dev = LoopDevice::attach(tools, raw, root.offset, root.size, cancel)?;
                let dumped = run_command(
                    Command::new(tools.get("xfs_metadump")?)
                        .args(["-a", "-o"])
                        .arg(&dev.dev)
                        .arg(&dump),
                    cancel,
                );
                drop(dev);
                dumped.context("mapping the root's metadata with xfs_metadump")?;
                let restored = run_command(
                    Command::new(tools.get("xfs_mdrestore")?)
                        .arg(&dump)
                        .arg(&meta),
                    cancel,
                );
                let _ = fs::remove_file(&dump);
                restored.context("restoring the metadata dump with xfs_mdrestore")?;
            }
        }
        let ranges = data_ranges(&File::open(&meta)?)?;
        if ranges.is_empty() {
            bail!("no metadata was written");
        }
        Ok(ranges)
    })();
    let _ = fs::remove_file(&meta);
    let saved = made.and_then(|ranges| {
        let map = MapFile {
            format: MAP_FORMAT,
            base_sha256: base_of(dir),
            fs_offset: root.offset,
            fs_bytes: bytes,
            ranges,
        };
        let path = map_path(dir, root);
        fs::create_dir_all(crate::parent_dir(&path))?;
        crate::emit::atomic_write(&path, &serde_json::to_vec(&map)?)?;
        Ok(())
    });
    if let Err(e) = saved {
        tracing::warn!("the next build from this base will copy all of it: {e:#}");
    }
}

impl<'a> Working<'a> {
    /// Create the working copy at `path`: the whole base, or (given the
    /// root's metadata map) only the partition tables and the metadata.
    pub fn create(
        img: &'a Qcow2,
        path: &Path,
        root: &RootFs,
        map: Option<Vec<(u64, u64)>>,
        cancel: &AtomicBool,
    ) -> Result<Self> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        file.set_len(img.virtual_size)?;
        let size = img.virtual_size;
        // Holes tell copied blocks from written ones only if each block is
        // whole units of what the scratch filesystem allocates (a page on
        // tmpfs): a block written into a unit that also holds uncopied
        // bytes would make those read as zeros.
        let block = root.fs.block_size();
        let map = map.filter(|_| {
            let unit = hole_unit(crate::parent_dir(path))
                .map_err(|e| tracing::debug!("{e:#}"))
                .unwrap_or(u64::MAX);
            let fits = block.is_multiple_of(unit) && root.offset.is_multiple_of(unit);
            if !fits {
                tracing::debug!(
                    unit,
                    block,
                    "blocks smaller than the scratch space's unit: copying the whole base"
                );
            }
            fits
        });
        let (extent, ranges) = match map {
            Some(map) => {
                let mut r = vec![
                    (0, GPT_AREA.max(GPT_PROBE_LEN as u64).min(size)),
                    (size.saturating_sub(GPT_AREA), size),
                ];
                r.extend(map.iter().map(|&(s, e)| (root.offset + s, root.offset + e)));
                // An LV's PV label and VG metadata, read to find the LV.
                if root.lv.is_some() {
                    r.push((root.part.offset_bytes(), root.offset));
                }
                (Extent::Metadata, merge(r))
            }
            None => (Extent::Full, img.stored_ranges()),
        };
        fill_in_two(img, &file, &ranges, cancel)?;
        // Only a metadata copy is checked for what it copied.
        let copied = match extent {
            Extent::Metadata => stored_within(img, &ranges),
            Extent::Full => Vec::new(),
        };
        Ok(Working {
            img,
            file,
            extent,
            copied,
            fs_offset: root.offset,
            block_size: block,
            blocks: root.fs.blocks(),
        })
    }

    /// Copy the data blocks of `paths` (where they exist) from the base,
    /// so debugfs can read them. Nothing to do in full mode.
    pub fn fill_file_data(
        &mut self,
        debugfs: &Path,
        at: &Ext4At,
        paths: &[&str],
        cancel: &AtomicBool,
    ) -> Result<()> {
        if self.extent == Extent::Full || paths.is_empty() {
            return Ok(());
        }
        let mut script = String::new();
        for p in paths {
            script.push_str(&format!("blocks {}\n", super::debugfs::quote(p)?));
        }
        fs::write(at.dir.join("blocks.debugfs"), script).context("writing the blocks script")?;
        let out = run_command(
            at.command(debugfs)
                .args(["-f", "blocks.debugfs"])
                .arg(at.spec()),
            cancel,
        )
        .context("listing file blocks with debugfs")?;
        // A fast symlink's target prints as numbers too; those past the
        // filesystem's end are dropped, others only copy a block more.
        let mut blocks: Vec<u64> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with("debugfs"))
            .flat_map(|l| l.split_whitespace().map(str::parse::<u64>))
            .filter_map(Result::ok)
            .filter(|b| *b < self.blocks)
            .collect();
        blocks.sort_unstable();
        blocks.dedup();
        let bs = self.block_size;
        let ranges = merge(
            blocks
                .iter()
                .map(|b| (self.fs_offset + b * bs, self.fs_offset + (b + 1) * bs))
                .collect(),
        );
        self.copy_in(&ranges, cancel)
    }

    /// Copy the data of the regular file `path` of the mounted XFS root at
    /// `mnt` from the base before it is read (its extents, from
    /// `xfs_io -c fiemap`, which reads no data). Nothing to do in full mode.
    pub fn fill_tree_file(
        &mut self,
        tools: &Tools,
        mnt: &Path,
        path: &str,
        cancel: &AtomicBool,
    ) -> Result<()> {
        if self.extent == Extent::Full {
            return Ok(());
        }
        let Some(file) = super::tree::regular_file_in_tree(mnt, path) else {
            return Ok(());
        };
        let out = run_command(
            Command::new(tools.get("xfs_io")?)
                .args(["-r", "-c", "fiemap"])
                .arg(&file),
            cancel,
        )
        .with_context(|| format!("listing the extents of {path} with xfs_io"))?;
        let ranges = parse_fiemap(&String::from_utf8_lossy(&out.stdout))
            .with_context(|| format!("reading xfs_io's extents of {path}"))?
            .into_iter()
            .map(|(s, e)| (self.fs_offset + s, self.fs_offset + e))
            .filter(|&(_, e)| e <= self.fs_offset + self.blocks * self.block_size)
            .collect();
        let ranges = merge(ranges);
        self.copy_in(&ranges, cancel)
    }

    /// Copy guest `ranges` in from the base, and remember them as copied.
    fn copy_in(&mut self, ranges: &[(u64, u64)], cancel: &AtomicBool) -> Result<()> {
        self.img.fill(&self.file, ranges, cancel)?;
        self.copied = merge(
            self.copied
                .iter()
                .copied()
                .chain(stored_within(self.img, ranges))
                .collect(),
        );
        Ok(())
    }

    /// Hand every guest cluster that now differs from the base to `out`;
    /// returns how many did.
    pub fn write_changes(&self, out: &mut Patched<'_>, cancel: &AtomicBool) -> Result<u64> {
        let img = self.img;
        let cs = img.cluster_size();
        let len = self.file.metadata()?.len();
        let written = data_ranges(&self.file)?;
        if self.extent == Extent::Metadata {
            if let Some((s, e)) = missing(&self.copied, &written) {
                bail!(
                    "bytes {s}..{e} of the working copy were punched out while it was edited; \
                     the edit cannot be carried into the qcow2"
                );
            }
        }
        let mut clusters: BTreeSet<u64> = written
            .iter()
            .flat_map(|&(s, e)| s / cs..e.div_ceil(cs))
            .collect();
        if self.extent == Extent::Full {
            clusters.extend(img.stored().map(|(c, _)| c));
        }
        // Two workers compare (each half of the clusters); the writer
        // appends what changed as it comes, at most a few clusters behind.
        let clusters: Vec<u64> = clusters.into_iter().collect();
        let half = clusters.len().div_ceil(2).max(1);
        let (tx, rx) = std::sync::mpsc::sync_channel::<(u64, Vec<u8>)>(16);
        std::thread::scope(|s| -> Result<u64> {
            let workers: Vec<_> = clusters
                .chunks(half)
                .map(|part| {
                    let tx = tx.clone();
                    let written = &written;
                    s.spawn(move || self.compare(part, written, len, cancel, &tx))
                })
                .collect();
            drop(tx);
            let mut changed = 0;
            let mut wrote = Ok(());
            for (c, data) in rx {
                if wrote.is_ok() {
                    wrote = out.replace(c, &data);
                    changed += 1;
                }
            }
            for w in workers {
                w.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a comparing thread panicked")))?;
            }
            wrote?;
            Ok(changed)
        })
    }

    /// Send each of `clusters` that differs from the base to `tx`.
    fn compare(
        &self,
        clusters: &[u64],
        written: &[(u64, u64)],
        len: u64,
        cancel: &AtomicBool,
        tx: &std::sync::mpsc::SyncSender<(u64, Vec<u8>)>,
    ) -> Result<()> {
        let img = self.img;
        let cs = img.cluster_size();
        let mut base = vec![0u8; cs as usize];
        let mut now = vec![0u8; cs as usize];
        for &c in clusters {
            if cancel.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            if c < img.clusters() {
                img.read_cluster(c, &mut base)?;
            } else {
                base.fill(0);
            }
            let (start, end) = (c * cs, ((c + 1) * cs).min(len));
            match self.extent {
                // The raw file is the whole disk: read the cluster from it.
                Extent::Full => {
                    now.fill(0);
                    self.file
                        .read_exact_at(&mut now[..(end - start) as usize], start)
                        .context("reading the working copy")?;
                }
                // Holes are parts never copied: they keep the base's bytes.
                Extent::Metadata => {
                    now.copy_from_slice(&base);
                    for &(s, e) in overlapping(written, start, end) {
                        let (s, e) = (s.max(start), e.min(end));
                        self.file
                            .read_exact_at(&mut now[(s - start) as usize..(e - start) as usize], s)
                            .context("reading the working copy")?;
                    }
                }
            }
            if now != base && tx.send((c, now.clone())).is_err() {
                // The writer failed; it reports why.
                return Ok(());
            }
        }
        Ok(())
    }
}

/// Byte ranges (from the filesystem's start) of `xfs_io -c fiemap`'s
/// extents: `N: [a..b]: c..d` in 512-byte units, holes skipped.
fn parse_fiemap(text: &str) -> Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let Some((_, phys)) = line.split_once("]: ") else {
            continue;
        };
        let phys = phys.split_whitespace().next().unwrap_or_default();
        if phys == "hole" {
            continue;
        }
        let (a, b) = phys
            .split_once("..")
            .with_context(|| format!("unexpected line {line:?}"))?;
        let (a, b): (u64, u64) = (a.parse()?, b.parse()?);
        out.push((a * 512, (b + 1) * 512));
    }
    Ok(out)
}

/// The unit in which a file in `dir` stops being a hole when one byte is
/// written: a page on tmpfs, a block on a disk filesystem, larger with huge
/// pages.
fn hole_unit(dir: &Path) -> Result<u64> {
    let probe = tempfile::tempfile_in(dir).context("probing the scratch space")?;
    let at = (3 << 20) + 1;
    probe.set_len(8 << 20)?;
    probe.write_all_at(&[1], at)?;
    let written = data_ranges(&probe)?;
    match written.as_slice() {
        [(s, e)] if *s <= at && at < *e => Ok(e - s),
        _ => bail!("the scratch space does not report holes ({written:?})"),
    }
}

/// [`Qcow2::fill`] of `ranges`, split in two halves by bytes, side by side.
fn fill_in_two(img: &Qcow2, file: &File, ranges: &[(u64, u64)], cancel: &AtomicBool) -> Result<()> {
    let total: u64 = ranges.iter().map(|(s, e)| e - s).sum();
    // The split point, on a cluster boundary.
    let cs = img.cluster_size();
    let mut at = total / 2;
    let mut split = 0;
    for &(s, e) in ranges {
        if at < e - s {
            split = (s + at) / cs * cs;
            break;
        }
        at -= e - s;
    }
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for &(s, e) in ranges {
        if e <= split {
            first.push((s, e));
        } else if s >= split {
            second.push((s, e));
        } else {
            first.push((s, split));
            second.push((split, e));
        }
    }
    std::thread::scope(|sc| {
        let other = sc.spawn(|| img.fill(file, &second, cancel));
        let one = img.fill(file, &first, cancel);
        let other = other
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("a copying thread panicked")));
        one.and(other)
    })
}

/// Sorted ranges, overlapping and touching ones merged.
fn merge(mut r: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    r.retain(|(s, e)| s < e);
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(r.len());
    for (s, e) in r {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// The parts of `ranges` the base stores (not zero clusters).
fn stored_within(img: &Qcow2, ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let cs = img.cluster_size();
    let mut out = Vec::new();
    for &(s, e) in ranges {
        let e = e.min(img.virtual_size);
        for c in s / cs..e.div_ceil(cs) {
            if img.mapping(c) != Mapping::Zero {
                out.push(((c * cs).max(s), ((c + 1) * cs).min(e)));
            }
        }
    }
    merge(out)
}

/// The ranges of sorted, disjoint `ranges` that overlap `start..end`.
fn overlapping(ranges: &[(u64, u64)], start: u64, end: u64) -> &[(u64, u64)] {
    let from = ranges.partition_point(|&(_, e)| e <= start);
    let to = ranges.partition_point(|&(s, _)| s < end);
    &ranges[from..to.max(from)]
}

/// The first part of `want` that `have` (both sorted, disjoint) lacks.
fn missing(want: &[(u64, u64)], have: &[(u64, u64)]) -> Option<(u64, u64)> {
    for &(s, e) in want {
        let mut at = s;
        for &(hs, he) in overlapping(have, s, e) {
            if hs > at {
                return Some((at, hs));
            }
            at = at.max(he);
        }
        if at < e {
            return Some((at, e));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fiemap_extents_in_bytes() {
        let text = "/mnt/usr/lib/os-release:\n\t0: [0..7]: 2137776..2137783\n\t1: [8..15]: hole\n\t2: [16..31]: 96..111\n";
        assert_eq!(
            parse_fiemap(text).unwrap(),
            vec![(2_137_776 * 512, 2_137_784 * 512), (96 * 512, 112 * 512)]
        );
        assert!(parse_fiemap("x:\n 0: [0..7]: what\n").is_err());
    }

    #[test]
    fn ranges_merge_overlap_and_report_what_is_missing() {
        assert_eq!(
            merge(vec![(5, 9), (0, 2), (2, 4), (8, 12), (20, 20)]),
            vec![(0, 4), (5, 12)]
        );
        let have = [(0, 10), (20, 30)];
        assert_eq!(overlapping(&have, 5, 25), &have[..]);
        assert_eq!(overlapping(&have, 10, 20), &[] as &[(u64, u64)]);
        assert_eq!(missing(&[(2, 8), (22, 28)], &have), None);
        assert_eq!(missing(&[(5, 25)], &have), Some((10, 20)));
        assert_eq!(missing(&[(25, 35)], &have), Some((30, 35)));
    }
}
