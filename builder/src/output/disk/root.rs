//! Find the root filesystem in a raw disk image: the GPT's root partition,
//! and in it an ext2/3/4 or XFS filesystem, or an LVM2 physical volume whose
//! root LV holds one.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::lvm::{self, LvMap};
use super::xfs::{probe_xfs, XfsInfo};
use super::{find_root, parse_gpt, probe_filesystem, Ext4Info, Partition};
use super::{GPT_PROBE_LEN, PROBE_LEN, SECTOR};

/// The filesystem on the root.
#[derive(Debug, Clone)]
pub enum FsKind {
    /// ext2/3/4: edited with debugfs, no mount.
    Ext(Ext4Info),
    /// XFS: edited on a loop mount.
    Xfs(XfsInfo),
}

impl FsKind {
    pub fn block_size(&self) -> u64 {
        match self {
            FsKind::Ext(i) => i.block_size,
            FsKind::Xfs(i) => i.block_size,
        }
    }

    /// Blocks the filesystem has.
    pub fn blocks(&self) -> u64 {
        match self {
            FsKind::Ext(i) => i.blocks_count,
            FsKind::Xfs(i) => i.blocks,
        }
    }

    /// Bytes the filesystem claims.
    pub fn bytes(&self) -> u64 {
        self.blocks().saturating_mul(self.block_size())
    }
}

/// The root filesystem and where it lies in the raw image.
#[derive(Debug, Clone)]
pub struct RootFs {
    pub part: Partition,
    pub fs: FsKind,
    /// Byte offset of the filesystem in the raw image (the partition's, or
    /// the LV's first extent inside it).
    pub offset: u64,
    /// Bytes the filesystem may span (the partition, or the LV).
    pub size: u64,
    /// The LV the filesystem is on, when the partition is an LVM2 PV.
    pub lv: Option<LvMap>,
}

impl RootFs {
    pub fn fs_name(&self) -> String {
        match &self.fs {
            FsKind::Ext(i) => i.kind.to_owned(),
            FsKind::Xfs(_) => "xfs".to_owned(),
        }
    }

    pub fn label(&self) -> &str {
        match &self.fs {
            FsKind::Ext(i) => &i.label,
            FsKind::Xfs(i) => &i.label,
        }
    }
}

pub fn read_at(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(len);
    f.take(len as u64)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(buf)
}

/// Reads `len` bytes at an offset of a disk (fewer at its end).
pub type DiskReader<'a> = dyn Fn(u64, usize) -> Result<Vec<u8>> + 'a;

/// Locate and identify the root of the raw image `raw`; `what` names the
/// base in errors.
pub fn locate_root(raw: &Path, what: &str) -> Result<RootFs> {
    let disk_len = fs::metadata(raw)
        .with_context(|| format!("reading {}", raw.display()))?
        .len();
    locate_root_in(&|off, len| read_at(raw, off, len), disk_len, what)
}

/// [`locate_root`] on a disk of `disk_len` bytes read through `read`.
pub fn locate_root_in(read: &DiskReader<'_>, disk_len: u64, what: &str) -> Result<RootFs> {
    let head = read(0, GPT_PROBE_LEN)?;
    let parts = parse_gpt(&head).with_context(|| what.to_owned())?;
    let part = find_root(&parts).with_context(|| what.to_owned())?.clone();
    // The editors write wherever the filesystem says it extends: the
    // partition must lie on the disk and the filesystem inside it.
    let end = part
        .last_lba
        .checked_add(1)
        .and_then(|n| n.checked_mul(SECTOR as u64));
    if part.first_lba > part.last_lba || end.is_none_or(|end| end > disk_len) {
        bail!(
            "{what}: root partition {} (sectors {}–{}) does not fit the {disk_len}-byte disk",
            part.index,
            part.first_lba,
            part.last_lba,
        );
    }
    let mut offset = part.offset_bytes();
    let mut size = part.size_bytes();
    let mut sb = read(offset, PROBE_LEN)?;
    let mut lv = None;
    if sb.len() >= lvm::LABEL_PROBE_LEN
        && (0..4).any(|s| sb.get(s * 512..s * 512 + 8) == Some(b"LABELONE".as_slice()))
    {
        let map = read_lvm(read, &part, &sb)
            .with_context(|| format!("{what}: reading the LVM2 PV on partition {}", part.index))?;
        if map.offset.checked_add(map.size).is_none_or(|e| e > size) {
            bail!(
                "{what}: LV {}/{} ({} bytes at {}) does not fit partition {}",
                map.vg,
                map.lv,
                map.size,
                map.offset,
                part.index
            );
        }
        offset += map.offset;
        size = map.size;
        sb = read(offset, PROBE_LEN)?;
        lv = Some(map);
    }
    let fs = match probe_xfs(&sb) {
        Some(info) => FsKind::Xfs(info),
        None => FsKind::Ext(probe_filesystem(&sb, part.index).with_context(|| what.to_owned())?),
    };
    let claimed = fs.bytes();
    if claimed > size {
        bail!(
            "{what}: the root filesystem claims {claimed} bytes but {} has {size}",
            match &lv {
                Some(l) => format!("LV {}/{}", l.vg, l.lv),
                None => format!("partition {}", part.index),
            }
        );
    }
    Ok(RootFs {
        part,
        fs,
        offset,
        size,
        lv,
    })
}

/// The root LV of the PV that starts partition `part`.
pub(super) fn read_lvm(read: &DiskReader<'_>, part: &Partition, head: &[u8]) -> Result<LvMap> {
    let (uuid, mda) = lvm::metadata_location(head)?;
    let base = part.offset_bytes();
    let header = read(base.saturating_add(mda), 512)?;
    let mut text = Vec::new();
    for (off, len) in lvm::text_ranges(&header)? {
        text.extend(read(
            base.saturating_add(mda).saturating_add(off),
            len as usize,
        )?);
    }
    let end = text.iter().position(|b| *b == 0).unwrap_or(text.len());
    lvm::root_lv(&String::from_utf8_lossy(&text[..end]), &uuid)
}
