//! The Proxmox/LXC container template: base tarball → layer applied →
//! multi-threaded zstd → `out_path`, written atomically.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::AtomicBool;

use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

use super::base::open_base_with_progress;
use super::rewrite::{rewrite_labelled, Labels, RewriteStats};
use super::TargetError;
use crate::layer::Layer;

/// How the template is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LxcOptions {
    /// zstd level (1–22; negative levels are zstd's fast modes).
    pub zstd_level: i32,
    /// zstd worker threads; 0 = one per available core. The output does not
    /// depend on this number (see [`write_template`]).
    pub threads: u32,
}

/// zstd's own default level. Measured on this kind of machine (2 cores,
/// 100 MB of /usr/lib): level 3 takes 1.4 s, 9 takes 5.7 s (9 % smaller),
/// 19 takes 104 s (20 % smaller) — 19 would turn a build of seconds into
/// minutes, so higher levels are for release builds that ask for them.
impl Default for LxcOptions {
    fn default() -> Self {
        LxcOptions {
            zstd_level: zstd::DEFAULT_COMPRESSION_LEVEL,
            threads: 0,
        }
    }
}

/// The finished template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateOutput {
    /// sha256 of the compressed file.
    pub sha256: node_spec::Sha256Hex,
    /// Size of the compressed file in bytes.
    pub size: u64,
    pub stats: RewriteStats,
}

/// Writes the LXC template for `layer` on top of `base` to `out_path`.
///
/// The file appears at `out_path` only when complete (temp file in the same
/// directory, fsync, rename, fsync of the directory); on any error or
/// interruption the temp file is removed and an existing `out_path` is left
/// as it was.
///
/// The output is byte-identical for the same inputs: member order and headers
/// are fixed by the base and the layer, and zstd in multi-threaded mode cuts
/// the input into jobs by size, not by worker count, so any number of workers
/// (≥ 1) gives the same bytes. zstd's single-threaded mode (0 workers) writes
/// a different frame layout, so it is never used, even on one core.
pub fn write_template(
    base: &Path,
    layer: &Layer,
    out_path: &Path,
    opts: &LxcOptions,
    cancel: &AtomicBool,
) -> Result<TemplateOutput, TargetError> {
    write_template_with_progress(base, layer, out_path, opts, cancel, None)
}

/// Like [`write_template`]; `progress` advances by the bytes of `base` read.
pub fn write_template_with_progress(
    base: &Path,
    layer: &Layer,
    out_path: &Path,
    opts: &LxcOptions,
    cancel: &AtomicBool,
    progress: Option<&ProgressBar>,
) -> Result<TemplateOutput, TargetError> {
    let range = zstd::compression_level_range();
    if !range.contains(&opts.zstd_level) || opts.zstd_level == 0 {
        return Err(TargetError::Options(format!(
            "zstd level {} is out of range; use 1 to {} (or a negative fast level down to {})",
            opts.zstd_level,
            range.end(),
            range.start()
        )));
    }
    let workers = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        n => n,
    };

    let dir = match out_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let file_name = out_path.file_name().ok_or_else(|| {
        TargetError::Options(format!("{} is not a file path", out_path.display()))
    })?;
    let temp = tempfile::Builder::new()
        .prefix(&format!(".{}.", file_name.to_string_lossy()))
        .suffix(".partial")
        .tempfile_in(dir)
        .map_err(|source| TargetError::Write {
            path: format!("a temporary file in {}", dir.display()),
            source,
        })?;
    let temp_label = temp.path().display().to_string();
    let write_err = |source: io::Error| TargetError::Write {
        path: temp_label.clone(),
        source,
    };

    let input = open_base_with_progress(base, progress)?;
    let file = temp.as_file().try_clone().map_err(write_err)?;
    let hashing = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        written: 0,
    };
    let mut encoder =
        zstd::stream::write::Encoder::new(hashing, opts.zstd_level).map_err(write_err)?;
    encoder.include_checksum(true).map_err(write_err)?;
    encoder.multithread(workers).map_err(write_err)?;
    let labels = Labels {
        base: base.display().to_string(),
        out: temp_label.clone(),
    };
    // Tar writes many 512-byte headers; batch them before the encoder.
    let mut tar_out = BufWriter::with_capacity(256 << 10, encoder);
    let stats = rewrite_labelled(input, layer, &mut tar_out, cancel, &labels)?;
    let encoder = tar_out
        .into_inner()
        .map_err(|e| write_err(e.into_error()))?;
    let mut hashing = encoder.finish().map_err(write_err)?;
    hashing.flush().map_err(write_err)?;
    let HashingWriter {
        inner,
        hasher,
        written,
    } = hashing;
    let file = inner.into_inner().map_err(|e| write_err(e.into_error()))?;
    file.sync_all().map_err(write_err)?;
    drop(file);
    // tempfile creates 0600; a template is read by pveam/pct and web servers.
    fs::set_permissions(
        temp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .map_err(write_err)?;
    temp.persist(out_path).map_err(|e| TargetError::Write {
        path: out_path.display().to_string(),
        source: e.error,
    })?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| TargetError::Write {
            path: dir.display().to_string(),
            source,
        })?;

    Ok(TemplateOutput {
        sha256: node_spec::Sha256Hex::from_digest(&hasher.finalize()),
        size: written,
        stats,
    })
}

/// Hashes and counts what goes to the file, so the digest needs no second read.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
