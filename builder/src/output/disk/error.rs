//! Errors of the disk-image target.

/// Why a disk image cannot be read or customized offline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiskError {
    #[error("not a disk image (no MBR signature)")]
    NoMbrSignature,
    #[error("no GPT (MBR-only disks are not supported)")]
    NoGpt,
    #[error("GPT header checksum mismatch")]
    GptHeaderChecksum,
    #[error("GPT partition entries checksum mismatch")]
    GptEntriesChecksum,
    #[error("GPT header is invalid: {0}")]
    GptInvalid(String),
    #[error("disk image too short: {what} needs bytes up to {needed}, have {have}")]
    Truncated {
        what: &'static str,
        needed: usize,
        have: usize,
    },
    #[error("no Linux root partition found; partitions: {partitions}")]
    NoRootPartition { partitions: String },
    #[error("root partition {index} holds {fs} where an ext2/3/4 filesystem was expected")]
    UnsupportedFilesystem { index: u32, fs: &'static str },
    #[error("root partition {index} has no recognizable filesystem (no ext4 superblock)")]
    UnknownFilesystem { index: u32 },
    #[error("cannot apply `{path}` with debugfs: {reason}")]
    BadPath { path: String, reason: &'static str },
}
