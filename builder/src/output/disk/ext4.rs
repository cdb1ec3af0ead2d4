//! Identify the filesystem on the root partition: ext2/3/4 is what `debugfs`
//! edits; XFS and LVM2 roots (Rocky, RHEL GenericCloud) are refused clearly.

use super::bytes::{le_u16, le_u32};
use super::DiskError;

/// Bytes to read from the start of a partition for [`probe_filesystem`]
/// (the ext superblock ends at 2048).
pub const PROBE_LEN: usize = 2048;

const SB: usize = 1024;
const EXT_MAGIC: u16 = 0xEF53;

/// What the ext superblock says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Info {
    /// Volume label (`cloudimg-rootfs` on Ubuntu), NULs trimmed.
    pub label: String,
    /// `ext4` if extents/flex_bg/64bit are on, `ext3` with a journal, else `ext2`.
    pub kind: &'static str,
    pub block_size: u64,
    pub blocks_count: u64,
    pub free_blocks: u64,
    /// Names of the feature flags set (compat, incompat, ro_compat), with
    /// `unknown-…` entries for bits not named here.
    pub features: Vec<String>,
    /// The journal has not been replayed (`needs_recovery`): the image was
    /// not shut down cleanly and must be fsck'd before an offline edit.
    pub needs_recovery: bool,
    /// Contents are encrypted (`encrypt`): fscrypt directories cannot be
    /// written offline.
    pub encrypted: bool,
}

const COMPAT: &[(u32, &str)] = &[
    (0x1, "dir_prealloc"),
    (0x2, "imagic_inodes"),
    (0x4, "has_journal"),
    (0x8, "ext_attr"),
    (0x10, "resize_inode"),
    (0x20, "dir_index"),
    (0x200, "sparse_super2"),
    (0x400, "fast_commit"),
    (0x800, "stable_inodes"),
    (0x1000, "orphan_file"),
];
const INCOMPAT: &[(u32, &str)] = &[
    (0x1, "compression"),
    (0x2, "filetype"),
    (0x4, "needs_recovery"),
    (0x8, "journal_dev"),
    (0x10, "meta_bg"),
    (0x40, "extent"),
    (0x80, "64bit"),
    (0x100, "mmp"),
    (0x200, "flex_bg"),
    (0x400, "ea_inode"),
    (0x1000, "dirdata"),
    (0x2000, "metadata_csum_seed"),
    (0x4000, "large_dir"),
    (0x8000, "inline_data"),
    (0x10000, "encrypt"),
    (0x20000, "casefold"),
];
const RO_COMPAT: &[(u32, &str)] = &[
    (0x1, "sparse_super"),
    (0x2, "large_file"),
    (0x8, "huge_file"),
    (0x10, "uninit_bg"),
    (0x20, "dir_nlink"),
    (0x40, "extra_isize"),
    (0x100, "quota"),
    (0x200, "bigalloc"),
    (0x400, "metadata_csum"),
    (0x1000, "read-only"),
    (0x2000, "project"),
    (0x4000, "shared_blocks"),
    (0x8000, "verity"),
    (0x10000, "orphan_present"),
];
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_ENCRYPT: u32 = 0x10000;
const EXT4_MARKERS: u32 = 0x40 | 0x80 | 0x200;

fn names(bits: u32, table: &[(u32, &str)], kind: &str, out: &mut Vec<String>) {
    let mut known = 0;
    for (bit, name) in table {
        known |= bit;
        if bits & bit != 0 {
            out.push((*name).to_string());
        }
    }
    let unknown = bits & !known;
    if unknown != 0 {
        out.push(format!("unknown-{kind}-{unknown:#x}"));
    }
}

/// Identify the filesystem whose first bytes (at least [`PROBE_LEN`]) are
/// `data`; `index` is the partition number for error messages. ext2/3/4
/// yields [`Ext4Info`]; XFS and LVM2 yield
/// [`DiskError::UnsupportedFilesystem`].
pub fn probe_filesystem(data: &[u8], index: u32) -> Result<Ext4Info, DiskError> {
    if data.len() < PROBE_LEN {
        return Err(DiskError::Truncated {
            what: "the filesystem superblock",
            needed: PROBE_LEN,
            have: data.len(),
        });
    }
    if &data[0..4] == b"XFSB" {
        return Err(DiskError::UnsupportedFilesystem { index, fs: "XFS" });
    }
    // The LVM2 label may sit in any of the first four sectors; sector 1 is
    // where pvcreate puts it.
    if (0..4).any(|s| &data[s * 512..s * 512 + 8] == b"LABELONE") {
        return Err(DiskError::UnsupportedFilesystem {
            index,
            fs: "an LVM2 physical volume",
        });
    }
    let sb = &data[SB..SB + 1024];
    if le_u16(sb, 56) != EXT_MAGIC {
        return Err(DiskError::UnknownFilesystem { index });
    }
    let log_block = le_u32(sb, 24);
    if log_block > 6 {
        return Err(DiskError::UnknownFilesystem { index });
    }
    let compat = le_u32(sb, 0x5C);
    let incompat = le_u32(sb, 0x60);
    let ro_compat = le_u32(sb, 0x64);
    let wide = incompat & INCOMPAT_64BIT != 0;
    let split = |lo: usize, hi: usize| {
        let hi = if wide { u64::from(le_u32(sb, hi)) } else { 0 };
        (hi << 32) | u64::from(le_u32(sb, lo))
    };
    let label_bytes = &sb[120..136];
    let end = label_bytes.iter().position(|b| *b == 0).unwrap_or(16);
    let mut features = Vec::new();
    names(compat, COMPAT, "compat", &mut features);
    names(incompat, INCOMPAT, "incompat", &mut features);
    names(ro_compat, RO_COMPAT, "ro_compat", &mut features);
    let kind = if incompat & EXT4_MARKERS != 0 {
        "ext4"
    } else if compat & 0x4 != 0 {
        "ext3"
    } else {
        "ext2"
    };
    Ok(Ext4Info {
        label: String::from_utf8_lossy(&label_bytes[..end]).into_owned(),
        kind,
        block_size: 1024u64 << log_block,
        blocks_count: split(0x4, 0x150),
        free_blocks: split(0xC, 0x158),
        features,
        needs_recovery: incompat & INCOMPAT_RECOVER != 0,
        encrypted: incompat & INCOMPAT_ENCRYPT != 0,
    })
}
