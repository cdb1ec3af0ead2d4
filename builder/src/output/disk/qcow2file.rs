//! The qcow2 format itself (QEMU `docs/interop/qcow2.txt`): read a base
//! image's guest clusters, and write a new image that is the base with some
//! guest clusters replaced.
//!
//! The new image keeps every byte of the base after its header cluster
//! where it was and appends what changed: a new L1 table and refcount table
//! at the base's end (so the header pointing at them is known before the
//! layer is applied), then the replaced clusters, the L2 tables that point
//! at them, and refcount blocks recomputed from what the tables reference.
//! The base's old tables and replaced clusters stay in the file with a
//! refcount of 0. Because the prefix — the new header and the base's bytes
//! — is known up front, it is copied and hashed while the layer is applied,
//! and only the (small) tail is hashed at the end: one pass over the data
//! instead of two conversions and a hash.
//!
//! Bases this cannot read exactly (backing files, snapshots, encryption,
//! external data, extended L2 entries, bitmaps, a dirty image, odd refcount
//! widths) are reported as [`Open::Unsupported`]; the caller converts those
//! with `qemu-img` as before.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::bytes::{be_u32, be_u64};
use super::resumable::Resumable;

const MAGIC: &[u8; 4] = b"QFI\xfb";
const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;
/// Host offset bits of an L1 or standard L2 entry (9..=55).
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bit 0 of a v3 standard L2 entry: the cluster reads as zeros.
const ZERO_FLAG: u64 = 1;
/// Guest sizes past this are refused (qemu's own limit is 32 EiB, but a
/// base this large is not a cloud image).
const MAX_VIRTUAL: u64 = 1 << 44;
/// Header extensions a base may carry and still be read exactly: the
/// backing format name (only meaningful with a backing file, refused
/// anyway) and the feature name table.
const KNOWN_EXTENSIONS: [u32; 2] = [0xe279_2aca, 0x6803_f857];
/// Bytes per step of the prefix copy (between checks for Ctrl-C).
const CHUNK: u64 = 32 << 20;

/// How a guest cluster is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Unallocated or a zero cluster: reads as zeros.
    Zero,
    /// Stored as is at this host offset.
    Data(u64),
    /// Compressed: `len` bytes at `offset`.
    Compressed { offset: u64, len: u64 },
}

#[derive(Debug, Clone, Copy)]
enum Compression {
    Zlib,
    Zstd,
}

/// An opened base image.
#[derive(Debug)]
pub struct Qcow2 {
    path: PathBuf,
    file: File,
    file_len: u64,
    cluster_bits: u32,
    pub virtual_size: u64,
    refcount_bits: u32,
    version: u32,
    compression: Compression,
    l1: Vec<u64>,
    /// The L2 table of each L1 entry that has one.
    l2: Vec<Option<Vec<u64>>>,
    header_cluster: Vec<u8>,
}

/// What [`Qcow2::open`] found.
#[derive(Debug)]
pub enum Open {
    Image(Box<Qcow2>),
    /// A valid image using a feature this reader does not handle.
    Unsupported(String),
}

fn read_exact_at(file: &File, buf: &mut [u8], at: u64, what: &str) -> Result<()> {
    file.read_exact_at(buf, at)
        .with_context(|| format!("reading the {what} at byte {at}"))
}

impl Qcow2 {
    pub fn open(path: &Path) -> Result<Open> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let file_len = file.metadata()?.len();
        let mut h = vec![0u8; 112];
        let got = file.read_at(&mut h, 0)?;
        ensure!(
            got >= 72 && &h[..4] == MAGIC,
            "{} is not a qcow2 image",
            path.display()
        );
        let bad =
            |why: String| anyhow::anyhow!("{} is a damaged qcow2 image: {why}", path.display());
        let unsupported = |why: &str| Ok(Open::Unsupported(why.to_owned()));
        let version = be_u32(&h, 4);
        if version != 2 && version != 3 {
            return unsupported("its qcow2 version is neither 2 nor 3");
        }
        if be_u64(&h, 8) != 0 {
            return unsupported("it has a backing file");
        }
        let cluster_bits = be_u32(&h, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(bad(format!("cluster_bits {cluster_bits}")));
        }
        let cs = 1u64 << cluster_bits;
        let virtual_size = be_u64(&h, 24);
        if virtual_size > MAX_VIRTUAL {
            return unsupported("its virtual size is over 16 TiB");
        }
        if be_u32(&h, 32) != 0 {
            return unsupported("it is encrypted");
        }
        let l1_size = u64::from(be_u32(&h, 36));
        let l1_off = be_u64(&h, 40);
        if be_u32(&h, 60) != 0 {
            return unsupported("it has internal snapshots");
        }
        let (mut refcount_order, mut header_len, mut compression) = (4, 72u64, Compression::Zlib);
        if version == 3 {
            ensure!(got >= 104, "{}: short qcow2 v3 header", path.display());
            let incompatible = be_u64(&h, 72);
            if incompatible & 1 != 0 {
                return unsupported("it is marked dirty (not closed cleanly)");
            }
            if incompatible & 2 != 0 {
                return Err(bad("it is marked corrupt".into()));
            }
            if incompatible & !8 != 0 {
                return unsupported("it uses an external data file or extended L2 entries");
            }
            if be_u64(&h, 88) != 0 {
                return unsupported("it carries persistent bitmaps");
            }
            refcount_order = be_u32(&h, 96);
            header_len = u64::from(be_u32(&h, 100));
            if incompatible & 8 != 0 {
                ensure!(
                    header_len > 104 && got > 104,
                    "{}: short header",
                    path.display()
                );
                compression = match h[104] {
                    0 => Compression::Zlib,
                    1 => Compression::Zstd,
                    _ => return unsupported("its compression type is unknown"),
                };
            }
        }
        if !(3..=6).contains(&refcount_order) {
            return unsupported("its refcounts are narrower than a byte");
        }
        ensure!(
            header_len < cs,
            "{}: header longer than a cluster",
            path.display()
        );
        let l2_entries = cs / 8;
        if l1_size < virtual_size.div_ceil(cs * l2_entries) || l1_size > (32 << 20) {
            return Err(bad(format!("L1 size {l1_size} for {virtual_size} bytes")));
        }
        let in_file = |off: u64, len: u64| {
            off.is_multiple_of(512) && off.checked_add(len).is_some_and(|e| e <= file_len)
        };
        if !l1_off.is_multiple_of(cs) || !in_file(l1_off, l1_size * 8) {
            return Err(bad("L1 table outside the file".into()));
        }
        let mut header_cluster = vec![0u8; cs.min(file_len) as usize];
        read_exact_at(&file, &mut header_cluster, 0, "header cluster")?;
        header_cluster.resize(cs as usize, 0);
        // Header extensions (v3 only): refuse any that refers to clusters.
        if version == 3 {
            let mut at = header_len as usize;
            loop {
                ensure!(
                    at + 8 <= header_cluster.len(),
                    "{}: header extensions overrun",
                    path.display()
                );
                let (kind, len) = (
                    be_u32(&header_cluster, at),
                    be_u32(&header_cluster, at + 4) as usize,
                );
                if kind == 0 {
                    break;
                }
                if !KNOWN_EXTENSIONS.contains(&kind) {
                    return unsupported(&format!("it has header extension {kind:#x}"));
                }
                at += 8 + len.div_ceil(8) * 8;
            }
        }
        let mut raw_l1 = vec![0u8; (l1_size * 8) as usize];
        read_exact_at(&file, &mut raw_l1, l1_off, "L1 table")?;
        let l1: Vec<u64> = raw_l1.chunks_exact(8).map(|c| be_u64(c, 0)).collect();
        let mut l2 = Vec::with_capacity(l1.len());
        let mut table = vec![0u8; cs as usize];
        // Each table read is a distinct cluster of the file, so a crafted
        // L1 cannot make this read more than the file holds.
        let mut seen = std::collections::HashSet::new();
        for (i, e) in l1.iter().enumerate() {
            let off = e & OFFSET_MASK;
            if off == 0 {
                l2.push(None);
                continue;
            }
            if !seen.insert(off) {
                return unsupported("two L1 entries share an L2 table");
            }
            if !off.is_multiple_of(cs) || !in_file(off, cs) {
                return Err(bad(format!("L2 table {i} outside the file")));
            }
            read_exact_at(&file, &mut table, off, "L2 table")?;
            l2.push(Some(table.chunks_exact(8).map(|c| be_u64(c, 0)).collect()));
        }
        let img = Qcow2 {
            path: path.to_owned(),
            file,
            file_len,
            cluster_bits,
            virtual_size,
            refcount_bits: 1 << refcount_order,
            version,
            compression,
            l1,
            l2,
            header_cluster,
        };
        if let Some(why) = img.shared_cluster() {
            return Ok(Open::Unsupported(why));
        }
        // Every data cluster must lie in the file.
        for (c, m) in img.stored() {
            match m {
                Mapping::Zero => {}
                Mapping::Data(off) if off.is_multiple_of(cs) && in_file(off, cs) => {}
                Mapping::Compressed { offset, len }
                    if offset.checked_add(len).is_some() && offset < file_len => {}
                m => {
                    return Err(bad(format!(
                        "guest cluster {c} maps outside the file ({m:?})"
                    )))
                }
            }
        }
        Ok(Open::Image(Box::new(img)))
    }

    /// A host cluster that two things use (the header, an L2 table, a
    /// data cluster; compressed clusters may share with each other): a
    /// patched copy would give it a refcount the tables do not allow.
    fn shared_cluster(&self) -> Option<String> {
        let cs = self.cluster_size();
        // Host cluster → whether compressed data uses it.
        let mut used: std::collections::HashMap<u64, bool> = std::collections::HashMap::new();
        used.insert(0, false);
        // L2 tables are distinct (checked as they were read).
        for e in &self.l1 {
            let off = e & OFFSET_MASK;
            if off != 0 {
                used.insert(off / cs, false);
            }
        }
        for (c, m) in self.stored() {
            match m {
                Mapping::Zero => {}
                Mapping::Data(off) => {
                    if used.insert(off / cs, false).is_some() {
                        return Some(format!("guest cluster {c} shares its host cluster"));
                    }
                }
                Mapping::Compressed { offset, len } => {
                    for k in self.spanned(offset, len) {
                        if used.insert(k, true) == Some(false) {
                            return Some(format!("compressed guest cluster {c} overlaps another"));
                        }
                    }
                }
            }
        }
        None
    }

    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Guest clusters.
    pub fn clusters(&self) -> u64 {
        self.virtual_size.div_ceil(self.cluster_size())
    }

    /// Every guest cluster the tables store (with data or compressed), in
    /// order: only the L2 tables there are are walked, never the whole
    /// (possibly huge and sparse) disk.
    pub fn stored(&self) -> impl Iterator<Item = (u64, Mapping)> + '_ {
        let per = self.cluster_size() / 8;
        let clusters = self.clusters();
        self.l2
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.as_ref().map(|t| (i as u64, t)))
            .flat_map(move |(i, t)| {
                t.iter()
                    .enumerate()
                    .filter(|(_, e)| **e != 0)
                    .map(move |(j, _)| i * per + j as u64)
            })
            .filter(move |&c| c < clusters)
            .map(|c| (c, self.mapping(c)))
            .filter(|(_, m)| *m != Mapping::Zero)
    }

    /// True when any guest cluster is stored compressed.
    pub fn has_compressed(&self) -> bool {
        self.stored()
            .any(|(_, m)| matches!(m, Mapping::Compressed { .. }))
    }

    fn entry(&self, c: u64) -> u64 {
        let per = self.cluster_size() / 8;
        match self.l2.get((c / per) as usize) {
            Some(Some(t)) => t[(c % per) as usize],
            _ => 0,
        }
    }

    /// Host offset and length of a compressed L2 entry's data (the spec's
    /// "Compressed Clusters Descriptor").
    fn compressed_span(&self, entry: u64) -> (u64, u64) {
        let shift = 62 - (self.cluster_bits - 8);
        let offset = entry & ((1 << shift) - 1);
        let sectors = ((entry >> shift) & ((1 << (self.cluster_bits - 8)) - 1)) + 1;
        (offset, sectors * 512 - (offset & 511))
    }

    /// The host clusters `len` bytes at `offset` touch (`len` is at least
    /// 1 for a compressed descriptor).
    fn spanned(&self, offset: u64, len: u64) -> std::ops::RangeInclusive<u64> {
        let cs = self.cluster_size();
        offset / cs..=(offset + len - 1) / cs
    }

    pub fn mapping(&self, c: u64) -> Mapping {
        let e = self.entry(c);
        if e & COMPRESSED != 0 {
            let (offset, len) = self.compressed_span(e);
            return Mapping::Compressed { offset, len };
        }
        let off = e & OFFSET_MASK;
        if off == 0 || (self.version == 3 && e & ZERO_FLAG != 0) {
            Mapping::Zero
        } else {
            Mapping::Data(off)
        }
    }

    /// Guest cluster `c` into `buf` (one cluster); false when it reads as
    /// zeros (`buf` is then zeroed).
    pub fn read_cluster(&self, c: u64, buf: &mut [u8]) -> Result<bool> {
        match self.mapping(c) {
            Mapping::Zero => {
                buf.fill(0);
                Ok(false)
            }
            Mapping::Data(off) => {
                read_exact_at(&self.file, buf, off, "data cluster")?;
                Ok(true)
            }
            Mapping::Compressed { offset, len } => {
                let len = len.min(self.file_len - offset);
                let mut input = vec![0u8; len as usize];
                read_exact_at(&self.file, &mut input, offset, "compressed cluster")?;
                self.inflate(&input, buf).with_context(|| {
                    format!("decompressing guest cluster {c} of {}", self.path.display())
                })?;
                Ok(true)
            }
        }
    }

    fn inflate(&self, input: &[u8], out: &mut [u8]) -> Result<()> {
        match self.compression {
            Compression::Zlib => {
                // Raw deflate, as qemu writes it (window bits -12).
                let mut d = flate2::Decompress::new(false);
                d.decompress(input, out, flate2::FlushDecompress::Finish)?;
                ensure!(d.total_out() == out.len() as u64, "short deflate stream");
            }
            Compression::Zstd => {
                zstd::stream::read::Decoder::new(input)?.read_exact(out)?;
            }
        }
        Ok(())
    }

    /// `len` bytes of the guest disk at `offset` (fewer at its end).
    pub fn read_guest(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let end = (offset + len as u64).min(self.virtual_size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let cs = self.cluster_size();
        let mut buf = vec![0u8; cs as usize];
        let mut at = offset;
        while at < end {
            let c = at / cs;
            self.read_cluster(c, &mut buf)?;
            let from = (at - c * cs) as usize;
            let to = ((end - c * cs).min(cs)) as usize;
            out.extend_from_slice(&buf[from..to]);
            at = c * cs + to as u64;
        }
        Ok(out)
    }

    /// Copy the guest byte ranges `ranges` (sorted or not) into `raw`, a
    /// file laid out as the guest disk; clusters that read as zeros are
    /// left as holes.
    pub fn fill(&self, raw: &File, ranges: &[(u64, u64)], cancel: &AtomicBool) -> Result<()> {
        let cs = self.cluster_size();
        let mut buf = vec![0u8; cs as usize];
        for &(start, end) in ranges {
            let end = end.min(self.virtual_size);
            let mut at = start;
            while at < end {
                if cancel.load(Ordering::Relaxed) {
                    bail!("interrupted");
                }
                let c = at / cs;
                let from = at - c * cs;
                let to = (end - c * cs).min(cs);
                match self.mapping(c) {
                    Mapping::Zero => {}
                    Mapping::Data(host) => {
                        // A run of clusters stored back to back: one copy.
                        let mut run_end = c * cs + to;
                        let mut next = c + 1;
                        while run_end < end
                            && self.mapping(next) == Mapping::Data(host + (next - c) * cs)
                        {
                            run_end = (next * cs + cs).min(end);
                            next += 1;
                        }
                        copy_range(&self.file, host + from, raw, at, run_end - at)?;
                        at = run_end;
                        continue;
                    }
                    Mapping::Compressed { .. } => {
                        self.read_cluster(c, &mut buf)?;
                        raw.write_all_at(&buf[from as usize..to as usize], at)?;
                    }
                }
                at = c * cs + to;
            }
        }
        Ok(())
    }

    /// Every guest byte range that is stored (not zero), merged.
    pub fn stored_ranges(&self) -> Vec<(u64, u64)> {
        let cs = self.cluster_size();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (c, _) in self.stored() {
            let (s, e) = (c * cs, ((c + 1) * cs).min(self.virtual_size));
            match out.last_mut() {
                Some(last) if last.1 == s => last.1 = e,
                _ => out.push((s, e)),
            }
        }
        out
    }
}

/// `len` bytes from `src` at `from` to `dst` at `to`: `copy_file_range`
/// (in the kernel, no copy through this process) where the two files allow
/// it, else read and write.
fn copy_range(src: &File, from: u64, dst: &File, to: u64, len: u64) -> Result<()> {
    let (mut off_in, mut off_out) = (from as i64, to as i64);
    let end = from + len;
    while (off_in as u64) < end {
        let want = (end - off_in as u64).min(1 << 30) as usize;
        match nix::fcntl::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want) {
            Ok(0) => bail!("the base ended early at byte {off_in}"),
            Ok(_) => {}
            Err(
                nix::errno::Errno::EXDEV
                | nix::errno::Errno::EINVAL
                | nix::errno::Errno::ENOSYS
                | nix::errno::Errno::EOPNOTSUPP,
            ) => {
                return copy_by_reading(
                    src,
                    off_in as u64,
                    dst,
                    off_out as u64,
                    end - off_in as u64,
                );
            }
            Err(e) => return Err(e).context("copying from the base image"),
        }
    }
    Ok(())
}

fn copy_by_reading(src: &File, from: u64, dst: &File, to: u64, len: u64) -> Result<()> {
    let mut buf = vec![0u8; (len.min(4 << 20)) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        read_exact_at(src, &mut buf[..n], from + done, "base image")?;
        dst.write_all_at(&buf[..n], to + done)?;
        done += n as u64;
    }
    Ok(())
}

/// The data ranges of `file` (`SEEK_DATA`/`SEEK_HOLE`): the parts written.
pub fn data_ranges(file: &File) -> Result<Vec<(u64, u64)>> {
    use nix::unistd::{lseek, Whence};
    let len = file.metadata()?.len() as i64;
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut at = 0i64;
    while at < len {
        let start = match lseek(fd, at, Whence::SeekData) {
            Ok(s) => s,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(e).context("finding the written parts of the working copy"),
        };
        let end = lseek(fd, start, Whence::SeekHole).context("finding a hole")?;
        out.push((start as u64, end as u64));
        at = end;
    }
    Ok(out)
}

/// A new image being written: the base with guest clusters replaced.
/// The prefix (new header and the base's bytes) is copied and hashed on two
/// threads from [`Patched::begin`]; [`Patched::replace`] appends clusters;
/// [`Patched::finish`] writes the tables and returns the digest.
#[derive(Debug)]
pub struct Patched<'a> {
    base: &'a Qcow2,
    out: Arc<File>,
    new_size: u64,
    l1_off: u64,
    l1_entries: u64,
    rt_off: u64,
    rt_clusters: u64,
    next: u64,
    /// Guest cluster → host offset of its replacement.
    replaced: BTreeMap<u64, u64>,
    stop: Arc<AtomicBool>,
    /// The prefix copy ([`copy_prefix`]).
    copier: Option<JoinHandle<Result<()>>>,
    prefix: Option<PrefixDigest>,
}

/// Where the prefix's digest state comes from.
#[derive(Debug)]
enum PrefixDigest {
    /// Kept from an earlier build.
    Kept(Resumable),
    /// Being hashed; kept when done at the path, with what identifies it.
    Hashing {
        thread: JoinHandle<Result<Resumable>>,
        keep: Option<(PathBuf, String, FileIdentity)>,
    },
}

/// The kept digest state of one prefix: the new header and the base's
/// bytes after it. Trusted only while the base file is the same file,
/// unchanged since (its size, inode, modification and change times).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
struct KeptPrefix {
    format: u32,
    header_sha256: String,
    base: FileIdentity,
    state: Resumable,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
struct FileIdentity {
    len: u64,
    dev: u64,
    ino: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileIdentity {
    fn of(file: &File) -> Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = file.metadata()?;
        Ok(FileIdentity {
            len: m.len(),
            dev: m.dev(),
            ino: m.ino(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        })
    }
}

const KEPT_FORMAT: u32 = 1;

impl<'a> Patched<'a> {
    /// Start writing `out` (created, must not exist) for `base` grown to
    /// `new_size` (never smaller than the base).
    /// `keep_dir` holds the prefix's digest state between builds from the
    /// same base (`None`: hash it every time).
    pub fn begin(
        base: &'a Qcow2,
        out: &Path,
        new_size: u64,
        cancel: Arc<AtomicBool>,
        keep_dir: Option<&Path>,
    ) -> Result<Self> {
        ensure!(new_size >= base.virtual_size, "a disk is never shrunk");
        ensure!(new_size <= MAX_VIRTUAL, "disk size over 16 TiB");
        let cs = base.cluster_size();
        let per_l2 = cs / 8;
        let base_end = base.file_len.div_ceil(cs) * cs;
        let l1_entries = new_size.div_ceil(cs * per_l2);
        let l1_off = base_end;
        let rt_off = l1_off + (l1_entries * 8).div_ceil(cs) * cs;
        // Size the refcount table for the largest file this can become:
        // every guest cluster replaced and every L2 table new.
        let per_block = cs * 8 / u64::from(base.refcount_bits);
        let mut rt_clusters = 1;
        loop {
            let max_clusters = rt_off / cs + rt_clusters + l1_entries + new_size.div_ceil(cs);
            let blocks = max_clusters.div_ceil(per_block);
            let max_clusters = max_clusters + blocks;
            let need = (max_clusters.div_ceil(per_block) * 8).div_ceil(cs);
            if need <= rt_clusters {
                break;
            }
            rt_clusters = need;
        }
        let mut header = base.header_cluster.clone();
        header[24..32].copy_from_slice(&new_size.to_be_bytes());
        header[36..40].copy_from_slice(&(l1_entries as u32).to_be_bytes());
        header[40..48].copy_from_slice(&l1_off.to_be_bytes());
        header[48..56].copy_from_slice(&rt_off.to_be_bytes());
        header[56..60].copy_from_slice(&(rt_clusters as u32).to_be_bytes());

        let file = std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(out)
            .with_context(|| format!("creating {}", out.display()))?;
        file.write_all_at(&header, 0)?;
        file.set_len(base_end)?;
        let out = Arc::new(file);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = {
            let (stop, cancel) = (stop.clone(), cancel.clone());
            move || stop.load(Ordering::Relaxed) || cancel.load(Ordering::Relaxed)
        };
        let src = Arc::new(base.file.try_clone()?);
        let len = base.file_len;
        let copier = {
            let (src, dst, stopped) = (src.clone(), out.clone(), stopped.clone());
            std::thread::spawn(move || copy_prefix(&src, &dst, cs.min(len), len, cs, &stopped))
        };

        let header_sha = node_spec::Sha256Hex::from_digest(&Sha256::digest(&header)).to_string();
        let identity = FileIdentity::of(&base.file)?;
        let keep_at = keep_dir.map(|d| d.join(format!("qcow2-prefix-{}.json", &header_sha[..32])));
        let kept = keep_at.as_deref().and_then(|p| {
            let k: KeptPrefix = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
            (k.format == KEPT_FORMAT
                && k.header_sha256 == header_sha
                && k.base == identity
                && k.state.len() == base_end)
                .then_some(k.state)
        });
        let prefix = match kept {
            Some(state) => PrefixDigest::Kept(state),
            None => PrefixDigest::Hashing {
                // The header, the base's bytes after its first cluster, then
                // zeros to the whole cluster the tail starts at.
                thread: std::thread::spawn(move || -> Result<Resumable> {
                    let mut h = Resumable::default();
                    h.update(&header);
                    hash_range(&mut h, &src, cs, len, &stopped)?;
                    h.update(&vec![0u8; (base_end - len.max(cs)) as usize]);
                    Ok(h)
                }),
                keep: keep_at.map(|p| (p, header_sha, identity)),
            },
        };
        Ok(Patched {
            base,
            out,
            new_size,
            l1_off,
            l1_entries,
            rt_off,
            rt_clusters,
            next: rt_off + rt_clusters * cs,
            replaced: BTreeMap::new(),
            stop,
            copier: Some(copier),
            prefix: Some(prefix),
        })
    }

    /// Guest cluster `c` now holds `data` (one cluster).
    pub fn replace(&mut self, c: u64, data: &[u8]) -> Result<()> {
        let cs = self.base.cluster_size();
        ensure!(
            data.len() as u64 == cs && c < self.new_size.div_ceil(cs),
            "cluster {c} out of range"
        );
        let host = match self.replaced.get(&c) {
            Some(h) => *h,
            None => {
                let h = self.next;
                self.next += cs;
                self.replaced.insert(c, h);
                h
            }
        };
        self.out
            .write_all_at(data, host)
            .context("writing a changed cluster")?;
        Ok(())
    }

    /// Write the tables, wait for the prefix, hash the tail; returns the
    /// image's digest and length once the file is synced.
    /// `while_syncing` (a check of the finished file) runs while the file
    /// is synced.
    pub fn finish(
        mut self,
        while_syncing: impl FnOnce() -> Result<()>,
    ) -> Result<(node_spec::Sha256Hex, u64)> {
        let base = self.base;
        let cs = base.cluster_size();
        let per_l2 = cs / 8;
        // New L2 tables for every L1 entry with a replaced cluster.
        let mut tables: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for (&c, &host) in &self.replaced {
            let i = c / per_l2;
            let t = tables
                .entry(i)
                .or_insert_with(|| match base.l2.get(i as usize) {
                    Some(Some(t)) => t.clone(),
                    _ => vec![0; per_l2 as usize],
                });
            t[(c % per_l2) as usize] = host | COPIED;
        }
        let mut l2_host = BTreeMap::new();
        for &i in tables.keys() {
            l2_host.insert(i, self.next);
            self.next += cs;
        }
        let l1: Vec<u64> = (0..self.l1_entries)
            .map(|i| match l2_host.get(&i) {
                Some(h) => h | COPIED,
                None => base.l1.get(i as usize).copied().unwrap_or(0),
            })
            .collect();

        // Refcounts of the final layout.
        let per_block = cs * 8 / u64::from(base.refcount_bits);
        let blocks_at = self.next / cs;
        let mut blocks = blocks_at.div_ceil(per_block);
        while (blocks_at + blocks).div_ceil(per_block) > blocks {
            blocks += 1;
        }
        ensure!(
            blocks * 8 <= self.rt_clusters * cs,
            "refcount table too small"
        );
        let total = blocks_at + blocks;
        let mut counts = vec![0u64; total as usize];
        let mut inc = |host: u64| -> Result<()> {
            let n = counts
                .get_mut((host / cs) as usize)
                .with_context(|| format!("cluster at {host} beyond the image"))?;
            *n += 1;
            Ok(())
        };
        inc(0)?;
        for k in 0..(self.l1_entries * 8).div_ceil(cs) {
            inc(self.l1_off + k * cs)?;
        }
        for k in 0..self.rt_clusters {
            inc(self.rt_off + k * cs)?;
        }
        for k in 0..blocks {
            inc((blocks_at + k) * cs)?;
        }
        for (i, e) in l1.iter().enumerate() {
            let off = e & OFFSET_MASK;
            if off == 0 {
                continue;
            }
            inc(off)?;
            let entries: &[u64] = match tables.get(&(i as u64)) {
                Some(t) => t,
                None => match base.l2.get(i) {
                    Some(Some(t)) => t,
                    _ => continue,
                },
            };
            for &entry in entries {
                if entry & COMPRESSED != 0 {
                    let (offset, len) = base.compressed_span(entry);
                    for k in base.spanned(offset, len) {
                        inc(k * cs)?;
                    }
                } else if entry & OFFSET_MASK != 0 {
                    inc(entry & OFFSET_MASK)?;
                }
            }
        }
        let max = if base.refcount_bits == 64 {
            u64::MAX
        } else {
            (1 << base.refcount_bits) - 1
        };
        ensure!(counts.iter().all(|&n| n <= max), "a refcount overflows");

        // Write the tail: L2 tables, refcount blocks, refcount table, L1.
        let be = |v: &[u64]| v.iter().flat_map(|x| x.to_be_bytes()).collect::<Vec<u8>>();
        for (i, t) in &tables {
            self.out.write_all_at(&be(t), l2_host[i])?;
        }
        let width = (base.refcount_bits / 8) as usize;
        for k in 0..blocks {
            let mut block = vec![0u8; cs as usize];
            for (j, n) in counts
                .iter()
                .skip((k * per_block) as usize)
                .take(per_block as usize)
                .enumerate()
            {
                block[j * width..(j + 1) * width].copy_from_slice(&n.to_be_bytes()[8 - width..]);
            }
            self.out.write_all_at(&block, (blocks_at + k) * cs)?;
        }
        let mut rt = vec![0u64; (self.rt_clusters * cs / 8) as usize];
        for (k, slot) in rt.iter_mut().take(blocks as usize).enumerate() {
            *slot = (blocks_at + k as u64) * cs;
        }
        self.out.write_all_at(&be(&rt), self.rt_off)?;
        let mut l1_bytes = be(&l1);
        l1_bytes.resize(((self.l1_entries * 8).div_ceil(cs) * cs) as usize, 0);
        self.out.write_all_at(&l1_bytes, self.l1_off)?;
        let end = total * cs;
        self.out.set_len(end)?;

        // The prefix, then the tail read back (it is in the page cache).
        if let Some(t) = self.copier.take() {
            t.join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the copy thread panicked")))?;
        }
        let mut h = match self.prefix.take() {
            Some(PrefixDigest::Kept(state)) => state,
            Some(PrefixDigest::Hashing { thread, keep }) => {
                let h = thread
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("the hash thread panicked")))?;
                if let Some((path, header_sha256, base)) = keep {
                    keep_prefix(&path, header_sha256, base, &h);
                }
                h
            }
            None => bail!("the prefix was hashed twice"),
        };
        hash_range(&mut h, &self.out, self.l1_off, end, &|| false)?;
        let sha = node_spec::Sha256Hex::from_digest(&h.finish());
        // The check reads the finished file while it is synced.
        let out = self.out.clone();
        let synced = std::thread::spawn(move || out.sync_data());
        let checked = while_syncing();
        synced
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the sync thread panicked")))
            .context("syncing the disk")?;
        checked?;
        Ok((sha, end))
    }
}

impl Drop for Patched<'_> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.copier.take() {
            let _ = t.join();
        }
        if let Some(PrefixDigest::Hashing { thread, .. }) = self.prefix.take() {
            let _ = thread.join();
        }
    }
}

/// Copy bytes `from..to` of `src` to the same place in `dst`: two halves
/// side by side (split on a cluster boundary), with the write-back started
/// as they go rather than all at the final sync.
fn copy_prefix(
    src: &File,
    dst: &File,
    from: u64,
    to: u64,
    cs: u64,
    stopped: &(dyn Fn() -> bool + Sync),
) -> Result<()> {
    let copy = |from: u64, to: u64| -> Result<()> {
        let mut at = from;
        while at < to {
            if stopped() {
                bail!("interrupted");
            }
            let n = CHUNK.min(to - at);
            copy_range(src, at, dst, at, n)?;
            at += n;
        }
        Ok(())
    };
    let mid = ((from + (to - from) / 2) / cs * cs).max(from);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let syncer = s.spawn(|| -> Result<()> {
            while !done.load(Ordering::Relaxed) && !stopped() {
                std::thread::sleep(std::time::Duration::from_millis(5));
                dst.sync_data().context("writing the disk back")?;
            }
            Ok(())
        });
        let second = s.spawn(|| copy(mid, to));
        let first = copy(from, mid);
        let second = second
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("a copy thread panicked")));
        done.store(true, Ordering::Relaxed);
        let synced = syncer
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the write-back thread panicked")));
        first.and(second).and(synced)
    })
}

/// Feed bytes `from..to` of `file` to `h` (nothing when `to <= from`).
fn hash_range(
    h: &mut Resumable,
    file: &File,
    from: u64,
    to: u64,
    stopped: &dyn Fn() -> bool,
) -> Result<()> {
    let mut buf = vec![0u8; 4 << 20];
    let mut at = from;
    while at < to {
        if stopped() {
            bail!("interrupted");
        }
        let n = (buf.len() as u64).min(to - at) as usize;
        read_exact_at(file, &mut buf[..n], at, "image")?;
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(())
}

/// Keep the prefix's digest state `h` at `path` for the next build; failing
/// to only costs that build a hash of the whole file.
fn keep_prefix(path: &Path, header_sha256: String, base: FileIdentity, h: &Resumable) {
    let kept = KeptPrefix {
        format: KEPT_FORMAT,
        header_sha256,
        base,
        state: h.clone(),
    };
    let saved = std::fs::create_dir_all(crate::parent_dir(path))
        .map_err(anyhow::Error::from)
        .and_then(|()| crate::emit::atomic_write(path, &serde_json::to_vec(&kept)?));
    if let Err(e) = saved {
        tracing::warn!("the next build from this base will hash all of it: {e:#}");
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::super::tests::{run, tool};
    use super::*;

    /// A guest disk of `mib` MiB with data at scattered places (and holes).
    fn guest(dir: &Path, mib: u64) -> PathBuf {
        let raw = dir.join("guest.raw");
        let f = File::create(&raw).unwrap();
        f.set_len(mib << 20).unwrap();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for k in 0..(mib * 3) {
            let at = (k * 347_911) % (mib << 20);
            let block: Vec<u8> = (0..20_000)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Half the bytes zero, so compression has work to do.
                    if x & 1 == 0 {
                        0
                    } else {
                        (x >> 8) as u8
                    }
                })
                .collect();
            f.write_all_at(&block, at).unwrap();
        }
        raw
    }

    fn qemu_img() -> PathBuf {
        tool("qemu-img", "qemu-utils")
    }

    fn opened(path: &Path) -> Box<Qcow2> {
        match Qcow2::open(path).unwrap() {
            Open::Image(i) => i,
            Open::Unsupported(why) => panic!("unsupported: {why}"),
        }
    }

    /// The base with clusters replaced (in place, past the base's data, in
    /// a part of the disk with no L2 table yet, and in the grown part) reads
    /// back as the guest disk with the same bytes changed; `qemu-img check`
    /// finds no error and no leak; the digest is the file's.
    fn patch_round_trip(convert_args: &[&str], cluster: &str, grow_mib: u64) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let raw = guest(d, 48);
        let base = d.join("base.qcow2");
        run(Command::new(qemu_img())
            .args(["convert", "-f", "raw", "-O", "qcow2", "-o"])
            .arg(format!("cluster_size={cluster}"))
            .args(convert_args)
            .arg(&raw)
            .arg(&base));
        let img = opened(&base);
        let cs = img.cluster_size();
        let new_size = (48 + grow_mib) << 20;

        // The expected guest disk: the raw grown, with the same changes.
        let want = File::options().write(true).open(&raw).unwrap();
        want.set_len(new_size).unwrap();
        // Twice: the second build resumes the prefix's digest state the
        // first one kept.
        let keep = d.join("keep");
        let mut outs = Vec::new();
        for round in 0..2 {
            let out = d.join(format!("out{round}.qcow2"));
            let mut p = Patched::begin(
                &img,
                &out,
                new_size,
                Arc::new(AtomicBool::new(false)),
                Some(&keep),
            )
            .unwrap();
            assert_eq!(matches!(p.prefix, Some(PrefixDigest::Kept(_))), round == 1);
            let last = new_size / cs - 1;
            for (i, c) in [0, 3, 5, 17, 700 % (48 * 1024 * 1024 / cs), last]
                .into_iter()
                .enumerate()
            {
                let mut data = vec![0u8; cs as usize];
                img.read_cluster(c.min(img.clusters() - 1), &mut data)
                    .unwrap();
                data[(i * 97) % cs as usize] ^= 0x5a;
                data[cs as usize - 1] = i as u8 + 1;
                p.replace(c, &data).unwrap();
                want.write_all_at(&data, c * cs).unwrap();
            }
            let (sha, len) = p.finish(|| Ok(())).unwrap();
            assert_eq!(len, std::fs::metadata(&out).unwrap().len());
            let bytes = std::fs::read(&out).unwrap();
            assert_eq!(
                sha.as_str(),
                node_spec::Sha256Hex::from_digest(&Sha256::digest(&bytes)).as_str()
            );
            let check = Command::new(qemu_img())
                .args(["check", "-f", "qcow2"])
                .arg(&out)
                .output()
                .unwrap();
            assert!(
                check.status.success(),
                "{}",
                String::from_utf8_lossy(&check.stdout)
            );
            run(Command::new(qemu_img())
                .args(["compare", "-f", "qcow2", "-F", "raw"])
                .arg(&out)
                .arg(&raw));
            outs.push(bytes);
        }
        assert_eq!(outs[0], outs[1]);
        let bytes = &outs[0];
        // A base file touched since is hashed again, not trusted.
        File::options()
            .write(true)
            .open(&base)
            .unwrap()
            .set_modified(std::time::SystemTime::UNIX_EPOCH)
            .unwrap();
        let touched = opened(&base);
        let p = Patched::begin(
            &touched,
            &d.join("out-touched.qcow2"),
            new_size,
            Arc::new(AtomicBool::new(false)),
            Some(&keep),
        )
        .unwrap();
        assert!(!matches!(p.prefix, Some(PrefixDigest::Kept(_))));
        // The prefix is the base's, past the header cluster.
        let base_bytes = std::fs::read(&base).unwrap();
        assert_eq!(
            bytes[cs as usize..base_bytes.len()],
            base_bytes[cs as usize..]
        );
    }

    #[test]
    fn patches_a_plain_image() {
        patch_round_trip(&["-o", "compat=1.1"], "65536", 0);
    }

    #[test]
    fn patches_a_compressed_grown_image_with_small_clusters() {
        patch_round_trip(&["-c"], "4096", 600);
    }

    #[test]
    fn patches_a_version_2_image() {
        patch_round_trip(&["-o", "compat=0.10"], "65536", 16);
    }

    #[test]
    fn fills_a_working_copy_that_reads_as_the_guest() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let raw = guest(d, 16);
        for args in [&["-c"][..], &[][..]] {
            let base = d.join("b.qcow2");
            let _ = std::fs::remove_file(&base);
            run(Command::new(qemu_img())
                .args(["convert", "-f", "raw", "-O", "qcow2"])
                .args(args)
                .arg(&raw)
                .arg(&base));
            let img = opened(&base);
            let copy = d.join("copy.raw");
            let f = File::create(&copy).unwrap();
            f.set_len(img.virtual_size).unwrap();
            img.fill(&f, &img.stored_ranges(), &AtomicBool::new(false))
                .unwrap();
            assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&raw).unwrap());
            assert_eq!(
                img.read_guest(1_000_000, 70_000).unwrap(),
                std::fs::read(&raw).unwrap()[1_000_000..1_070_000]
            );
        }
    }

    #[test]
    fn refuses_what_it_cannot_read_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let base = d.join("b.qcow2");
        run(Command::new(qemu_img())
            .args(["create", "-f", "qcow2"])
            .arg(&base)
            .arg("16M"));
        let top = d.join("top.qcow2");
        run(Command::new(qemu_img())
            .args(["create", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&base)
            .arg(&top));
        assert!(
            matches!(Qcow2::open(&top).unwrap(), Open::Unsupported(w) if w.contains("backing"))
        );
        run(Command::new(qemu_img())
            .args(["snapshot", "-c", "s1"])
            .arg(&base));
        assert!(
            matches!(Qcow2::open(&base).unwrap(), Open::Unsupported(w) if w.contains("snapshots"))
        );
        // Two guest clusters stored in one host cluster (qemu reads that,
        // but a patched copy could not count it): converted instead.
        let raw = guest(d, 4);
        let shared = d.join("shared.qcow2");
        run(Command::new(qemu_img())
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&shared));
        let f = File::options()
            .read(true)
            .write(true)
            .open(&shared)
            .unwrap();
        let mut h = [0u8; 48];
        f.read_exact_at(&mut h, 0).unwrap();
        let mut l1 = [0u8; 8];
        f.read_exact_at(&mut l1, be_u64(&h, 40)).unwrap();
        let l2 = u64::from_be_bytes(l1) & OFFSET_MASK;
        let mut first = [0u8; 8];
        f.read_exact_at(&mut first, l2).unwrap();
        assert_ne!(u64::from_be_bytes(first) & OFFSET_MASK, 0);
        f.write_all_at(&first, l2 + 8).unwrap();
        assert!(
            matches!(Qcow2::open(&shared).unwrap(), Open::Unsupported(w) if w.contains("shares")),
        );
        // A damaged L1 pointer is an error, not a silent fallback.
        let b2 = d.join("b2.qcow2");
        run(Command::new(qemu_img())
            .args(["create", "-f", "qcow2"])
            .arg(&b2)
            .arg("16M"));
        let f = File::options().write(true).open(&b2).unwrap();
        f.write_all_at(&(1u64 << 40).to_be_bytes(), 40).unwrap();
        let e = Qcow2::open(&b2).unwrap_err().to_string();
        assert!(e.contains("L1 table outside the file"), "{e}");
    }
}
