//! Groundwork for the disk-image (qcow2) target: locate the root partition
//! of a raw GPT disk image and apply a [`crate::layer::Layer`] to its ext4
//! filesystem offline with e2fsprogs `debugfs -w` on `image?offset=N` — no
//! mount, no root, no VM.
//!
//! - [`gpt`]: parse the protective MBR, GPT header and partition entries
//!   (both checksums verified) and pick the root partition.
//! - [`ext4`]: probe the root partition's filesystem; ext2/3/4 is accepted,
//!   XFS and LVM2 get a clear "not supported offline" error.
//! - [`debugfs`]: render the `debugfs` command script for a layer and parse
//!   `debugfs -R "ls -p DIR"` listings.
//!
//! Everything here is pure (bytes in, values out); reading the image,
//! staging files and running `debugfs` is the caller's job.

pub mod apply;
pub mod assemble;
pub mod debugfs;
mod error;
pub mod ext4;
pub mod gpt;
pub mod qcow2;
pub mod tools;

#[cfg(test)]
mod tests;

pub use debugfs::{
    debugfs_errors, debugfs_script, parse_ls_p, DebugfsScript, ListedEntry, LsEntry,
};
pub use error::DiskError;
pub use ext4::{probe_filesystem, Ext4Info, PROBE_LEN};
pub use gpt::{find_root, parse_gpt, Partition, GPT_PROBE_LEN, SECTOR};
pub use qcow2::{preflight, write_disk, DiskBase, DiskOptions, DiskOutput};
