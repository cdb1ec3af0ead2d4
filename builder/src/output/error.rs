//! Errors of the outputs. Each message says what failed, where, and what to do.

use std::io;
use std::path::PathBuf;

/// Why applying a layer to a base failed.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The base file could not be opened or its first bytes read.
    #[error("cannot read base tarball {path}")]
    OpenBase {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The base is neither compressed with a known format nor a plain tar.
    #[error(
        "base {path} is not a tar archive: it starts with neither a gzip, xz or zstd \
         signature nor a tar header (`ustar` at offset 257); expected a rootfs tarball \
         such as a Proxmox template or the output of `mmdebstrap … out.tar`"
    )]
    NotTar { path: PathBuf },

    /// The (decompressed) base stream broke off or holds something that is not tar.
    #[error(
        "base tarball {base} is truncated or corrupt at entry {entry} ({member}): {reason}; \
         fetch it again (delete it from the cache) and re-run the build"
    )]
    CorruptBase {
        base: String,
        /// 1-based index of the member being read (extension headers not counted).
        entry: u64,
        /// The member's path, or where in the archive the reader was.
        member: String,
        reason: String,
    },

    /// A base member that could make a tool unpacking the base (or the
    /// template made from it) write outside the rootfs; see
    /// `output::entry_policy`.
    #[error("{base}: member {entry} \"{member}\": {reason}")]
    UnsafeMember {
        base: String,
        /// 1-based index of the member (extension headers not counted).
        entry: u64,
        /// The member's name as stored, control characters escaped.
        member: String,
        /// What is wrong and what to do.
        reason: String,
    },

    /// Writing the output failed (disk full, read-only file system, …).
    #[error("cannot write {path}")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },

    /// A host file the layer copies in could not be read.
    #[error("cannot read {path} (copied into the image as {image_path})")]
    HostFileRead {
        path: PathBuf,
        image_path: String,
        #[source]
        source: io::Error,
    },

    /// A host file is not what the plan recorded.
    #[error(
        "{path} (copied into the image as {image_path}) changed since the build was planned: \
         expected {expected_size} bytes with sha256 {expected_sha256}, found {found}; \
         re-run the build so the plan records the current file"
    )]
    HostFileChanged {
        path: PathBuf,
        image_path: String,
        expected_size: u64,
        expected_sha256: String,
        /// What was found instead, e.g. `1234 bytes` or `sha256 ab…`.
        found: String,
    },

    /// The layer asks for something the base cannot hold.
    #[error("layer entry {path}: {reason}")]
    Layer { path: String, reason: String },

    /// Invalid output options.
    #[error("{0}")]
    Options(String),

    /// The cancel flag was set (Ctrl-C).
    #[error("interrupted; no output was written")]
    Interrupted,
}
