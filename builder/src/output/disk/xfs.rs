//! The XFS superblock at the start of a filesystem (xfsprogs
//! `libxfs/xfs_format.h`, `struct xfs_dsb`; big-endian).

use super::bytes::{be_u16, be_u32, be_u64};

/// Magic at byte 0.
pub const XFS_MAGIC: &[u8; 4] = b"XFSB";

/// What the superblock says, for the manifest and the size check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XfsInfo {
    /// `sb_fname`, NULs trimmed (`xfs_admin -L`; at most 12 bytes).
    pub label: String,
    pub block_size: u64,
    /// `sb_dblocks`: data blocks.
    pub blocks: u64,
    /// 4 or 5 (v5 has metadata checksums).
    pub version: u16,
}

/// `None` unless `sb` (at least 120 bytes) is an XFS superblock.
pub fn probe_xfs(sb: &[u8]) -> Option<XfsInfo> {
    if sb.len() < 120 || &sb[..4] != XFS_MAGIC {
        return None;
    }
    let name = &sb[108..120];
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    Some(XfsInfo {
        label: String::from_utf8_lossy(&name[..end]).into_owned(),
        block_size: u64::from(be_u32(sb, 4)),
        blocks: be_u64(sb, 8),
        version: be_u16(sb, 100) & 0xf,
    })
}
