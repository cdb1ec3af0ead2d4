//! Errors of the source step. Each names the URL, path or tool concerned and,
//! where there is one, the thing to do about it.

use std::path::{Path, PathBuf};

use node_spec::Sha256Hex;

use crate::command::CommandError;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{what}: {reason}")]
    InvalidArtifact { what: String, reason: String },

    #[error("bootstrap {what}: {reason}")]
    InvalidBootstrap { what: String, reason: String },

    #[error("{url}: pin a sha256 or give sha256-url, so the download can be verified")]
    Unpinned { url: String },

    #[error("{url}: only http:// and https:// URLs are supported")]
    UnsupportedUrl { url: String },

    // The cause is the `#[source]`, printed by the chain (`{:#}`), not here:
    // one convention crate-wide (see `plan::PlanError`).
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "sha256 mismatch for {origin}\n  expected: {expected}\n  actual:   {actual}\n\
         the file changed upstream or the pinned digest is wrong; nothing was cached"
    )]
    Mismatch {
        origin: String,
        expected: Sha256Hex,
        actual: Sha256Hex,
    },

    #[error(
        "{algorithm} mismatch for {origin}\n  expected: {expected} (listed by {listed_by})\n  \
         actual:   {actual}\nthe file is damaged or the index is stale; nothing was cached — \
         remove a damaged local copy, or run again to fetch the index afresh"
    )]
    DigestMismatch {
        algorithm: &'static str,
        origin: String,
        expected: String,
        actual: String,
        listed_by: String,
    },

    /// A catalog (pveam or simplestreams index) that cannot be read or
    /// does not have what the recipe names.
    #[error("{index}: {reason}")]
    Catalog { index: String, reason: String },

    #[error("{url}: HTTP {status}{}", status_hint(*status))]
    HttpStatus { url: String, status: u16 },

    #[error("{url}: {message} (gave up after {attempts} attempt(s))")]
    Network {
        url: String,
        attempts: u32,
        message: String,
    },

    #[error("{checksum_url}: {reason}")]
    BadChecksumFile {
        checksum_url: String,
        reason: String,
    },

    #[error(
        "{checksum_url} has no sha256 entry for {name:?}; it lists: {}",
        if available.is_empty() { "nothing usable".to_string() } else { available.join(", ") }
    )]
    ChecksumEntryMissing {
        checksum_url: String,
        name: String,
        available: Vec<String>,
    },

    /// `--offline` and nothing in the cache: `what` names the URL or
    /// bootstrap, the digest looked for and the cache (see
    /// `source::offline_miss`).
    #[error("{what}: not in cache; run once without --offline")]
    NotCached { what: String },

    #[error("interrupted while {what}; nothing was cached")]
    Interrupted { what: String },

    #[error("{tool} not found; install it with: {install}")]
    ToolMissing {
        tool: &'static str,
        install: &'static str,
    },

    #[error("{what}: not supported yet: {advice}")]
    Unsupported { what: String, advice: String },

    #[error("{path}: corrupt cache index ({reason}); delete it and run again", path = path.display())]
    CorruptIndex { path: PathBuf, reason: String },

    #[error("cannot locate the cache directory: set XDG_CACHE_HOME or HOME")]
    NoCacheDir,

    #[error(transparent)]
    Command(#[from] CommandError),
}

impl SourceError {
    pub(crate) fn io(action: &'static str, path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}

/// An error with its causes, `: `-separated, as anyhow's `{:#}` prints
/// them: for logging a typed error (`tracing::warn!("{}", Chain(&e))`),
/// whose own `Display` leaves the cause to the chain.
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

fn status_hint(status: u16) -> &'static str {
    match status {
        404 | 410 => " (not found: the URL moved or the release was removed; update the recipe)",
        401 | 403 => " (access denied)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_is_shown_once_whichever_way_it_is_printed() {
        let e = SourceError::io(
            "opening",
            "/x/base.tar",
            std::io::Error::from_raw_os_error(2),
        );
        assert_eq!(e.to_string(), "opening /x/base.tar");
        let chained = Chain(&e).to_string();
        assert_eq!(
            chained,
            "opening /x/base.tar: No such file or directory (os error 2)"
        );
        let via_anyhow = format!("{:#}", anyhow::Error::from(e).context("fetching the base"));
        assert_eq!(
            via_anyhow,
            "fetching the base: opening /x/base.tar: No such file or directory (os error 2)"
        );
    }
}
