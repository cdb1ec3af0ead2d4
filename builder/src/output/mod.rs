//! The outputs: each applies one [`crate::layer::Layer`] to one kind of base
//! and writes the artifact — the Proxmox/LXC template from a rootfs tarball
//! ([`write_template`], through [`tar`]) and the VM disk ([`disk`]).
//!
//! - [`rewrite_tar`]: the tar-stream rewrite. It reads a rootfs tarball member
//!   by member and writes a new one — base members byte for byte (owners,
//!   modes, device nodes, hard links, sparse maps, xattrs, ACLs and long names
//!   untouched), minus what the layer removes or replaces, plus the layer's
//!   entries. Nothing is extracted, so no root is needed.
//! - [`write_template`]: that stream, zstd-compressed, written atomically as a
//!   Proxmox/LXC container template (`.tar.zst`).
//! - [`pct_listing_check`]: the archive check `pct create` applies.
//! - `tar::entry_policy`: what a base member may be (no name that escapes the
//!   rootfs, nothing below a symlink, no escaping links, devices only in
//!   /dev), applied by every reader of a base tarball.
//! - [`leftovers`]: temporary files named by their owner's pid, swept at
//!   the start of a build and removed on a forced exit.
//! - [`contract`]: what `pct create`/`pct start` need in the rootfs per
//!   distro, checked on the base (one read-only pass, [`scan_base`]) before
//!   anything is written.

pub mod contract;
pub mod disk;
mod error;
pub mod leftovers;
mod lxc;
mod proxmox;
mod tar;

#[cfg(test)]
mod tests;

pub use contract::{
    check_base_entries, evaluate as evaluate_contract, scan_base, BaseFacts, BaseLabel,
    ContractError, ContractOptions, Outcome as ContractOutcome,
};
pub use error::OutputError;
pub use lxc::{
    write_template, write_template_with_progress, LxcOptions, TemplateOutput, CANCEL_LATENCY,
};
pub use proxmox::{pct_listing_check, PCT_MIN_MEMBERS};
pub use tar::base::{detect_compression, open_base, open_base_with_progress, Compression};
pub use tar::rewrite::{rewrite_tar, NameStyle, RewriteStats};
