//! The disk-image (qcow2) target: locate the root of a raw GPT disk image
//! and apply a [`crate::layer::Layer`] to it — an ext4 root offline with
//! e2fsprogs `debugfs -w` on `image?offset=N` (no mount, no root), an XFS
//! root (also on an LVM2 LV) on a loop mount at its offset.
//!
//! - [`qcow2`]: the pipeline, one function per step.
//! - [`gpt`], [`root`], [`ext4`], [`xfs`], [`lvm`]: find the root partition
//!   and its filesystem; map an LVM root LV from the PV's metadata.
//! - [`debugfs`], [`apply`]: the debugfs script for a layer, and running it.
//! - [`mount`], [`tree`]: loop devices and mounts; the layer on a mounted tree.
//! - [`selinux`], [`edit`]: labels from the image's policy; the edit step.
//! - [`assemble`]: a bootable disk from a rootfs tarball.

pub mod apply;
pub mod assemble;
mod bytes;
pub mod debugfs;
pub mod edit;
mod error;
pub mod ext4;
pub mod gpt;
pub mod lvm;
pub mod mount;
pub mod qcow2;
pub mod qcow2file;
mod resumable;
pub mod root;
mod scratch;
pub mod selinux;
pub mod tools;
pub mod tree;
pub mod working;
pub mod xfs;

#[cfg(test)]
mod rocky_tests;
#[cfg(test)]
mod tests;

pub use debugfs::{
    debugfs_errors, debugfs_script, parse_ls_p, DebugfsScript, ListedEntry, LsEntry,
};
pub use error::DiskError;
pub use ext4::{probe_filesystem, Ext4Info, PROBE_LEN};
pub use gpt::{find_root, parse_gpt, Partition, GPT_PROBE_LEN, SECTOR};
pub use qcow2::{preflight, write_disk, DiskBase, DiskOptions, DiskOutput};
