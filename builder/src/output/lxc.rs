//! The Proxmox/LXC container template: base tarball → layer applied →
//! multi-threaded zstd (on its own thread) → `out_path`, written atomically.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::ProgressBar;

use node_spec::atomic::{Placement, Staged};

use super::leftovers;
use super::tar::base::open_base_with_progress;
use super::tar::compressor::{Compressor, Stop};
use super::tar::rewrite::{rewrite_labelled, Labels, RewriteStats};
use super::OutputError;
use crate::layer::Layer;

/// How long a cancel takes at most to stop [`write_template`], whatever the
/// zstd level, on an idle machine: the compressor's poll interval plus the
/// rewriter's check every few MB.
pub const CANCEL_LATENCY: std::time::Duration = std::time::Duration::from_secs(1);

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
/// as it was. A cancel takes effect within about [`CANCEL_LATENCY`] at any
/// zstd level: compression runs on its own thread, which is abandoned
/// (`super::compressor`).
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
) -> Result<TemplateOutput, OutputError> {
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
) -> Result<TemplateOutput, OutputError> {
    let range = zstd::compression_level_range();
    if !range.contains(&opts.zstd_level) || opts.zstd_level == 0 {
        return Err(OutputError::Options(format!(
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

    let file_name = out_path.file_name().ok_or_else(|| {
        OutputError::Options(format!("{} is not a file path", out_path.display()))
    })?;
    // `.NAME.PID.XXXXXX.partial`: a later build removes it if this process
    // dies without cleaning up (see `super::leftovers`). A template is read
    // by pveam/pct and web servers: 0644.
    let prefix = format!(".{}.{}.", file_name.to_string_lossy(), std::process::id());
    let how = Placement::new(&prefix, 0o644).suffix(".partial");
    let mut temp = Staged::new(out_path, how).map_err(|e| OutputError::Write {
        path: format!("a temporary file for {}", out_path.display()),
        source: e.source,
    })?;
    let _registered = leftovers::register(temp.temp_path());
    let temp_label = temp.temp_path().display().to_string();
    let write_err = |source: io::Error| OutputError::Write {
        path: temp_label.clone(),
        source,
    };

    let input = open_base_with_progress(base, progress)?;
    let file = temp.file().try_clone().map_err(write_err)?;
    let mut compressor =
        Compressor::start(file, opts.zstd_level, workers, cancel).map_err(write_err)?;
    let labels = Labels {
        base: base.display().to_string(),
        out: temp_label.clone(),
    };
    let stats = match rewrite_labelled(input, layer, &mut compressor, cancel, &labels) {
        Ok(stats) => stats,
        // A write that gave up because of the cancel flag.
        Err(_) if cancel.load(Ordering::Relaxed) => return Err(OutputError::Interrupted),
        Err(e) => return Err(e),
    };
    let compressed = compressor.finish().map_err(|stop| match stop {
        Stop::Interrupted => OutputError::Interrupted,
        Stop::Io(e) => write_err(e),
    })?;
    temp.commit().map_err(|e| OutputError::Write {
        path: e.path.display().to_string(),
        source: e.source,
    })?;

    Ok(TemplateOutput {
        sha256: compressed.sha256,
        size: compressed.size,
        stats,
    })
}
