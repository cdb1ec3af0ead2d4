//! Source: get the base an image is built on — a rootfs tarball, a vendor
//! cloud image, or a package bootstrap — into a content-addressed cache,
//! verified by sha256, so that later builds (and `--offline` builds) reuse it.
//!
//! Entry points:
//! - [`fetch_base`] for a recipe's [`SourceSpec`],
//! - [`fetch_artifact`] for one [`Artifact`] (local path or http(s) URL),
//! - [`bootstrap_rootfs`] for a [`BootstrapSpec`],
//! - `catalog` for a template named in Proxmox's or linuxcontainers'
//!   index.
//!
//! Every result is a [`Fetched`]: a path to read, its digest and size, and
//! where it came from, for the manifest.

mod bootstrap;
mod cache;
mod catalog;
mod checksums;
mod error;
mod http;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use node_spec::Sha256Hex;
use sha2::{Digest, Sha256};

use crate::plan::schema::{Artifact, SourceSpec};

pub use bootstrap::{bootstrap_key, bootstrap_rootfs, BOOTSTRAP_FORMAT};
pub use cache::{BootstrapRecord, Cache, UrlRecord};
pub use checksums::{parse_checksums, select_checksum, url_file_name};
pub use error::{Chain, SourceError};

/// How a fetch may behave. Built by the CLI from `--offline`, whether stderr
/// is a terminal, and the Ctrl-C flag.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Never touch the network or run a bootstrap tool; serve from the cache
    /// or fail with advice.
    pub offline: bool,
    /// Draw progress bars on stderr. The caller sets this only when stderr is
    /// a terminal, so logs and CI output stay clean.
    pub progress: bool,
    /// Set by the Ctrl-C handler; checked per downloaded chunk and while
    /// waiting for a bootstrap tool.
    pub cancel: Arc<AtomicBool>,
    /// Retries for transient network failures.
    pub retry: RetryPolicy,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            offline: false,
            progress: false,
            cancel: Arc::new(AtomicBool::new(false)),
            retry: RetryPolicy::default(),
        }
    }
}

impl FetchOptions {
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
}

/// Bounded retries with exponential backoff, for connection errors, bodies
/// cut off mid-way, 5xx, 408 and 429. A 404 or a digest mismatch is never
/// retried: asking again would give the same answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, first one included (at least 1 is made).
    pub attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    pub initial_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 3,
            initial_backoff: Duration::from_secs(1),
        }
    }
}

/// A base (or other input) ready to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The file to read: a cache blob, or the user's local file in place.
    /// Never write to it.
    pub path: PathBuf,
    pub sha256: Sha256Hex,
    pub size: u64,
    /// The URL, the absolute local path, or the bootstrap command line.
    pub origin: String,
    /// True when no download or bootstrap happened in this call.
    pub from_cache: bool,
    /// For a base taken from a catalog by name: which entry, from which
    /// index, and how the index was trusted (as the manifest records it).
    pub catalog: Option<crate::emit::CatalogInfo>,
}

/// Fetch the base described by a recipe source: an artifact for
/// `tarball`/`cloud-image`, a bootstrapped rootfs tarball for `bootstrap`.
pub fn fetch_base(
    spec: &SourceSpec,
    arch: &str,
    base_dir: &Path,
    cache: &Cache,
    opts: &FetchOptions,
) -> Result<Fetched, SourceError> {
    match spec {
        SourceSpec::Tarball(art) | SourceSpec::CloudImage(art) => {
            fetch_artifact(art, base_dir, cache, opts)
        }
        SourceSpec::Pveam(p) => catalog::fetch_pveam(p, arch, cache, opts),
        SourceSpec::Linuxcontainers(l) => catalog::fetch_linuxcontainers(l, arch, cache, opts),
        SourceSpec::Bootstrap(b) => bootstrap_rootfs(b, arch, cache, opts).map_err(|e| match e {
            SourceError::NotCached { what } => SourceError::NotCached {
                what: format!("{what}, looked for in {}", cache.root().display()),
            },
            e => e,
        }),
    }
}

/// The sha256 a release's checksum file (`sums_url`) lists for the file
/// `name`, the file fetched once into the cache (see `http::checksum_entry`).
pub fn checksum_entry(
    sums_url: &str,
    name: &str,
    cache: &Cache,
    opts: &FetchOptions,
) -> Result<Sha256Hex, SourceError> {
    http::checksum_entry(sums_url, name, cache, opts)
}

/// Fetch one artifact.
///
/// - `path` (relative to `base_dir`, the directory of the YAML naming it):
///   hashed in place, checked against `sha256` when given, never copied.
/// - `url`: served from the cache when the digest (pinned, or resolved through
///   `sha256-url`, or — offline — the last digest recorded for this URL) is
///   there; otherwise downloaded, verified and inserted atomically.
pub fn fetch_artifact(
    art: &Artifact,
    base_dir: &Path,
    cache: &Cache,
    opts: &FetchOptions,
) -> Result<Fetched, SourceError> {
    match (&art.path, &art.url) {
        (Some(path), None) => {
            if let Some(sha_url) = &art.sha256_url {
                return Err(SourceError::InvalidArtifact {
                    what: path.clone(),
                    reason: format!(
                        "sha256-url ({sha_url}) applies to `url` artifacts only; pin `sha256` for a local file"
                    ),
                });
            }
            fetch_local(&base_dir.join(path), art.sha256.as_ref(), opts)
        }
        (None, Some(url)) => http::fetch_url(
            url,
            art.sha256.as_ref(),
            art.sha256_url.as_deref(),
            cache,
            opts,
        )
        .map_err(|e| match e {
            SourceError::NotCached { .. } => offline_miss(url, art.sha256.as_ref(), cache),
            e => e,
        }),
        (Some(path), Some(url)) => Err(SourceError::InvalidArtifact {
            what: format!("{path} / {url}"),
            reason: "give exactly one of `path` or `url`, not both".into(),
        }),
        (None, None) => Err(SourceError::InvalidArtifact {
            what: "artifact".into(),
            reason: "give one of `path` or `url`".into(),
        }),
    }
}

/// The `--offline` miss for `url`, saying which digest was looked for and
/// where, or that there was none to look for.
fn offline_miss(url: &str, pinned: Option<&Sha256Hex>, cache: &Cache) -> SourceError {
    let blob = |d: &Sha256Hex| cache.blob_path(d).display().to_string();
    let what = match pinned {
        Some(d) => format!("{url} (pinned sha256 {d}; looked for {})", blob(d)),
        // Offline, an unpinned URL is served by the digest last recorded for
        // it. The fetch has read that record already, so an unreadable one
        // was reported there and cannot reach this point.
        None => match cache.lookup_url(url) {
            Ok(Some(rec)) => format!(
                "{url} (sha256 {}, the digest last recorded for this URL; looked for {})",
                rec.sha256,
                blob(&rec.sha256)
            ),
            Ok(None) | Err(_) => format!(
                "{url} (no sha256 is pinned and none is recorded for this URL in {}, so offline mode has no digest to look for: pin `sha256:` in the recipe to build offline)",
                cache.root().display()
            ),
        },
    };
    SourceError::NotCached { what }
}

/// A local file, hashed in place (never copied) and checked against
/// `expected` when given.
pub fn fetch_local(
    path: &Path,
    expected: Option<&Sha256Hex>,
    opts: &FetchOptions,
) -> Result<Fetched, SourceError> {
    // Canonical so the manifest names the file the same way whatever the
    // working directory was; this also reports a missing file with its path.
    let abs = path
        .canonicalize()
        .map_err(|e| SourceError::io("opening", path, e))?;
    let (sha256, size) = hash_file(&abs, opts)?;
    let origin = abs.display().to_string();
    if let Some(expected) = expected {
        if *expected != sha256 {
            return Err(SourceError::Mismatch {
                origin,
                expected: expected.clone(),
                actual: sha256,
            });
        }
    }
    Ok(Fetched {
        path: abs,
        sha256,
        size,
        origin,
        from_cache: false,
        catalog: None,
    })
}

/// Streaming sha256 of a file, honouring the cancel flag (a multi-GB cloud
/// image takes a few seconds).
pub fn hash_file(path: &Path, opts: &FetchOptions) -> Result<(Sha256Hex, u64), SourceError> {
    let (digest, size) = digest_file::<Sha256>(path, opts)?;
    Ok((Sha256Hex::from_digest(&digest), size))
}

/// [`hash_file`] with any digest (pveam's index lists sha512).
pub(crate) fn digest_file<D: Digest>(
    path: &Path,
    opts: &FetchOptions,
) -> Result<(sha2::digest::Output<D>, u64), SourceError> {
    let mut file = File::open(path).map_err(|e| SourceError::io("opening", path, e))?;
    let mut hasher = D::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        if opts.cancelled() {
            return Err(SourceError::Interrupted {
                what: format!("hashing {}", path.display()),
            });
        }
        let n = file
            .read(&mut buf)
            .map_err(|e| SourceError::io("reading", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hasher.finalize(), size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sha(data: &[u8]) -> Sha256Hex {
        Sha256Hex::from_digest(&Sha256::digest(data))
    }

    fn local(path: &str, sha256: Option<Sha256Hex>) -> Artifact {
        Artifact {
            path: Some(path.into()),
            url: None,
            sha256,
            sha256_url: None,
        }
    }

    #[test]
    fn local_path_without_digest_is_hashed_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        std::fs::write(dir.path().join("rootfs.tar"), b"tarball bytes").unwrap();

        let got = fetch_artifact(
            &local("rootfs.tar", None),
            dir.path(),
            &cache,
            &FetchOptions::default(),
        )
        .unwrap();

        let abs = dir.path().join("rootfs.tar").canonicalize().unwrap();
        assert_eq!(got.path, abs, "local files are used in place, not copied");
        assert_eq!(got.sha256, sha(b"tarball bytes"));
        assert_eq!(got.size, 13);
        assert_eq!(got.origin, abs.display().to_string());
        assert!(!cache.root().join("sha256").exists(), "nothing copied");
    }

    #[test]
    fn local_path_with_matching_digest_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        let sub = dir.path().join("images");
        std::fs::create_dir(&sub).unwrap();
        let mut f = File::create(sub.join("base.qcow2")).unwrap();
        f.write_all(&[7u8; 300_000]).unwrap();
        drop(f);

        let art = local("images/base.qcow2", Some(sha(&[7u8; 300_000])));
        let got = fetch_artifact(&art, dir.path(), &cache, &FetchOptions::default()).unwrap();
        assert_eq!(got.size, 300_000);
    }

    #[test]
    fn local_path_with_wrong_digest_reports_both() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        std::fs::write(dir.path().join("rootfs.tar"), b"tarball bytes").unwrap();
        let wrong = sha(b"something else");

        let err = fetch_artifact(
            &local("rootfs.tar", Some(wrong.clone())),
            dir.path(),
            &cache,
            &FetchOptions::default(),
        )
        .unwrap_err();

        let msg = err.to_string();
        assert!(matches!(err, SourceError::Mismatch { .. }), "{msg}");
        assert!(msg.contains(wrong.as_str()), "{msg}");
        assert!(msg.contains(sha(b"tarball bytes").as_str()), "{msg}");
        assert!(msg.contains("rootfs.tar"), "{msg}");
    }

    #[test]
    fn missing_local_path_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        let err = fetch_artifact(
            &local("nope.tar", None),
            dir.path(),
            &cache,
            &FetchOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("nope.tar"), "{err}");
    }

    #[test]
    fn artifact_with_both_or_neither_location_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        let both = Artifact {
            path: Some("a.tar".into()),
            url: Some("http://127.0.0.1:1/a.tar".into()),
            sha256: None,
            sha256_url: None,
        };
        let neither = Artifact {
            path: None,
            url: None,
            sha256: None,
            sha256_url: None,
        };
        for art in [both, neither] {
            let err = fetch_artifact(&art, dir.path(), &cache, &FetchOptions::default());
            assert!(
                matches!(err, Err(SourceError::InvalidArtifact { .. })),
                "{err:?}"
            );
        }
    }

    #[test]
    fn cancelled_hash_is_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        std::fs::write(dir.path().join("rootfs.tar"), b"x").unwrap();
        let opts = FetchOptions::default();
        opts.cancel.store(true, Ordering::SeqCst);
        let err = fetch_artifact(&local("rootfs.tar", None), dir.path(), &cache, &opts);
        assert!(
            matches!(err, Err(SourceError::Interrupted { .. })),
            "{err:?}"
        );
    }
}
