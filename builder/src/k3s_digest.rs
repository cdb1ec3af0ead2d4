//! The K3s binary's sha256, pinned at build time and baked into the
//! defaults, so a node never has to trust a checksum file it fetched at
//! boot. In order: the profile's `k3s.sha256`; else the baked binary's
//! digest; else the `k3s` line of the release's `sha256sum-amd64.txt` on
//! the mirror (GitHub release layout), fetched once per build through the
//! cache (`--offline` uses the copy an earlier build kept).

use anyhow::{bail, Result};
use node_spec::{Sha256Hex, DEFAULT_K3S_MIRROR};

use crate::plan::Plan;
use crate::source::{self, Cache, FetchOptions, SourceError};

/// The release file a checksum file lists the binary under.
const BINARY_NAME: &str = "k3s";

/// Where the baked digest came from, as the manifest names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DigestSource {
    /// `k3s.sha256` in the profile.
    Profile,
    /// The binary baked with `bake.k3s-binary`, hashed.
    BakedBinary,
    /// The release's checksum file at this URL.
    ChecksumFile(String),
    /// Nothing could be resolved and the profile allows nodes to trust the
    /// mirror's checksum file at boot (`k3s.trust-mirror-checksums`).
    Unpinned,
}

impl std::fmt::Display for DigestSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DigestSource::Profile => f.write_str("profile"),
            DigestSource::BakedBinary => f.write_str("baked-binary"),
            DigestSource::ChecksumFile(url) => write!(f, "checksum-file {url}"),
            DigestSource::Unpinned => f.write_str("none"),
        }
    }
}

/// The resolved digest, its source and what the build went on with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K3sDigest {
    pub sha256: Option<Sha256Hex>,
    pub source: DigestSource,
    /// For the manifest and the log.
    pub warnings: Vec<String>,
}

/// `<mirror>/<version>/sha256sum-amd64.txt` for the plan's release.
pub fn checksum_url(plan: &Plan) -> String {
    let k = &plan.profile.k3s;
    let mirror = k.mirror.as_deref().unwrap_or(DEFAULT_K3S_MIRROR);
    node_spec::release_url(mirror, &k.version, node_spec::CHECKSUM_FILE)
}

/// Whether a failure to read the checksum file means "not reachable from
/// here" (the profile may accept that) rather than "the file is wrong".
fn unreachable(e: &SourceError) -> bool {
    matches!(
        e,
        SourceError::Network { .. }
            | SourceError::HttpStatus { .. }
            | SourceError::NotCached { .. }
            | SourceError::UnsupportedUrl { .. }
    )
}

/// Resolve the digest to bake (see the module docs). `baked` is the digest
/// of the binary `bake.k3s-binary` put in the image, already checked
/// against `k3s.sha256`.
pub fn resolve(
    plan: &Plan,
    baked: Option<&Sha256Hex>,
    cache: &Cache,
    fetch: &FetchOptions,
) -> Result<K3sDigest> {
    let k = &plan.profile.k3s;
    let url = checksum_url(plan);
    let version = &k.version;
    let listed = || source::checksum_entry(&url, BINARY_NAME, cache, fetch);
    if let Some(pin) = &k.sha256 {
        // The pin is what nodes enforce; the checksum file is only a
        // cross-check here, and its absence is not an error.
        let mut warnings = Vec::new();
        match listed() {
            Ok(l) if &l != pin => bail!(
                "{}: k3s.sha256 {pin} disagrees with {url}, which lists {l} for the {version} `k3s` binary; \
                 check the pin against the release (or fix the mirror, k3s.mirror) and build again",
                plan.profile_path.display()
            ),
            Ok(_) => tracing::info!("k3s.sha256 agrees with {url}"),
            Err(e) if unreachable(&e) => warnings.push(format!(
                "k3s.sha256 {pin} was not cross-checked against {url}: {}",
                source::Chain(&e)
            )),
            Err(e) => bail!(
                "{}: cross-checking k3s.sha256 against the release's checksum file: {}",
                plan.profile_path.display(),
                source::Chain(&e)
            ),
        }
        return Ok(K3sDigest {
            sha256: Some(pin.clone()),
            source: DigestSource::Profile,
            warnings,
        });
    }
    if let Some(b) = baked {
        return Ok(K3sDigest {
            sha256: Some(b.clone()),
            source: DigestSource::BakedBinary,
            warnings: Vec::new(),
        });
    }
    match listed() {
        Ok(digest) => Ok(K3sDigest {
            sha256: Some(digest),
            source: DigestSource::ChecksumFile(url),
            warnings: Vec::new(),
        }),
        Err(e) if unreachable(&e) && k.trust_mirror_checksums => Ok(K3sDigest {
            sha256: None,
            source: DigestSource::Unpinned,
            warnings: vec![format!(
                "no sha256 pinned for K3s {version}: {}; nodes will trust the mirror's sha256sum-amd64.txt at boot, \
                 as k3s.trust-mirror-checksums: true allows (pin k3s.sha256, or build where the mirror can be reached)",
                source::Chain(&e)
            )],
        }),
        Err(e) if unreachable(&e) => bail!(
            "{}: cannot pin the sha256 of the K3s {version} binary: {}. \
             The build bakes the digest so nodes never trust a checksum file fetched at boot. \
             Pin it with k3s.sha256 (the `k3s` line of {url}), bake the binary (bake.k3s-binary), \
             build once where the mirror can be reached (--offline then uses the cached file), \
             or set k3s.trust-mirror-checksums: true to let nodes trust the mirror's checksum file at boot",
            plan.profile_path.display(),
            source::Chain(&e)
        ),
        Err(e) => bail!(
            "{}: resolving the sha256 of the K3s {version} binary: {}",
            plan.profile_path.display(),
            source::Chain(&e)
        ),
    }
}
