//! Bases picked by name from the catalogs Proxmox users get templates from:
//! Proxmox's appliance index (`pveam`, [`pveam`]) and linuxcontainers.org's
//! simplestreams index ([`simplestreams`]). Each resolves to one download
//! whose digest the catalog lists (sha512 for pveam, sha256 for
//! simplestreams), verified before it enters the cache like any other base.
//!
//! A pveam template already on this host — in Proxmox's template directory,
//! where `pveam download` and the GUI put them — is read in place after its
//! sha512 is checked, so imgbuild on a Proxmox node needs no download.

mod pveam;
mod simplestreams;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::Sha512;

use super::http;
use super::{Cache, FetchOptions, Fetched, SourceError};
use crate::emit::CatalogInfo;
use crate::plan::schema::{
    LinuxcontainersSpec, PveamSpec, DEFAULT_LXC_IMAGE_SERVER, DEFAULT_PVEAM_INDEX,
    DEFAULT_PVE_TEMPLATE_DIR,
};

/// Where `pveam update` keeps the signature-checked index on a Proxmox
/// node (`$APL_INFO_DIRECTORY/<host>` in `PVE/APLInfo.pm`).
const PVE_APL_INFO: &str = "/var/lib/pve-manager/apl-info/download.proxmox.com";
/// The directory `PVE_APL_INFO`'s relative locations are below.
const PVE_APL_BASE: &str = "http://download.proxmox.com/images";
/// The keyring `pveam update` checks the index's signature with.
const PVE_KEYRING: &str = "/usr/share/doc/pve-manager/trustedkeys.gpg";
/// An unpacked index above this is not an appliance index (Proxmox's is
/// about 20 KB; linuxcontainers' images.json a few MB).
const INDEX_MAX: u64 = 64 << 20;

/// `line` cut for a message.
fn shorten(line: &str) -> String {
    match line.char_indices().nth(60) {
        Some((end, _)) => format!("{}…", &line[..end]),
        None => line.to_owned(),
    }
}

/// Up to five of `candidates` that look like `name`: within a few edits,
/// or with the same first word (`ubuntu-…`, `rockylinux:…`), nearest first.
fn close_matches<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Vec<String> {
    let word = |s: &str| s.split(['-', ':', '/']).next().unwrap_or("").to_owned();
    let first = word(name);
    let limit = (name.chars().count() / 4).max(3);
    let mut scored: Vec<(usize, &str)> = candidates
        .filter_map(|c| {
            let d = crate::edit_distance(name, c);
            (d <= limit || word(c) == first).then_some((d, c))
        })
        .collect();
    scored.sort();
    scored.dedup();
    scored
        .into_iter()
        .take(5)
        .map(|(_, c)| c.to_owned())
        .collect()
}

fn catalog_error(index: &str, reason: impl Into<String>) -> SourceError {
    SourceError::Catalog {
        index: index.to_owned(),
        reason: reason.into(),
    }
}

/// Reads a cached index blob, gunzipping it when `gz`.
fn read_index(path: &Path, gz: bool, label: &str) -> Result<String, SourceError> {
    let file = File::open(path).map_err(|e| SourceError::io("opening", path, e))?;
    let mut bytes = Vec::new();
    let read = if gz {
        flate2::read::MultiGzDecoder::new(file)
            .take(INDEX_MAX + 1)
            .read_to_end(&mut bytes)
    } else {
        file.take(INDEX_MAX + 1).read_to_end(&mut bytes)
    };
    read.map_err(|e| {
        catalog_error(
            label,
            format!("cannot be unpacked ({e}): it is truncated or not gzip data"),
        )
    })?;
    if bytes.len() as u64 > INDEX_MAX {
        return Err(catalog_error(
            label,
            format!("is larger than {INDEX_MAX} bytes; is it really an index?"),
        ));
    }
    String::from_utf8(bytes).map_err(|_| catalog_error(label, "is not UTF-8 text"))
}

/// sha512 of a file, honouring Ctrl-C.
fn sha512_file(path: &Path, opts: &FetchOptions) -> Result<(String, u64), SourceError> {
    let (digest, size) = super::digest_file::<Sha512>(path, opts)?;
    Ok((hex(&digest), size))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The index records and where they came from, for messages.
struct Index {
    records: Vec<pveam::AplRecord>,
    label: String,
    /// How the index was trusted, for the manifest.
    signature: String,
}

/// The pveam index: pveam's own signature-checked copy on a Proxmox node
/// (unless the recipe names an index), else `<index>.gz` from the network
/// (or the cache, offline), its `<index>.asc` checked with gpgv when a
/// keyring is at hand.
fn pveam_index(spec: &PveamSpec, cache: &Cache, opts: &FetchOptions) -> Result<Index, SourceError> {
    if spec.index.is_none() && Path::new(PVE_APL_INFO).is_file() {
        let label = format!("{PVE_APL_INFO} (pveam update's copy)");
        let text = read_index(Path::new(PVE_APL_INFO), false, &label)?;
        let records =
            pveam::parse_aplinfo(&text, PVE_APL_BASE).map_err(|r| catalog_error(&label, r))?;
        return Ok(Index {
            records,
            label,
            signature: format!("checked by `pveam update` (with {PVE_KEYRING})"),
        });
    }
    let url = spec.index.as_deref().unwrap_or(DEFAULT_PVEAM_INDEX);
    let gz_url = format!("{url}.gz");
    let blob = http::fetch_index(&gz_url, cache, opts)?;
    let text = read_index(&blob, true, &gz_url)?;
    let keyring = match &spec.keyring {
        Some(k) => Some(PathBuf::from(k)),
        None => Some(PathBuf::from(PVE_KEYRING)).filter(|k| k.is_file()),
    };
    let signature = match &keyring {
        Some(keyring) => {
            check_signature(url, &text, keyring, cache, opts)?;
            format!("good, {url}.asc checked with {}", keyring.display())
        }
        None => {
            tracing::warn!(
            index = %url,
            "the template index is not signature-checked: no keyring (set `keyring:` in the \
             recipe, or build on a Proxmox node, which has {PVE_KEYRING}); the template is \
             checked against the sha512 this index lists — pin `sha512:` to trust it independently"
            );
            "not checked: no keyring".to_owned()
        }
    };
    let base = url.rsplit_once('/').map_or(url, |(dir, _)| dir);
    let records = pveam::parse_aplinfo(&text, base).map_err(|r| catalog_error(&gz_url, r))?;
    Ok(Index {
        records,
        label: gz_url,
        signature,
    })
}

/// `gpgv --keyring KEYRING <index>.asc <index>`, as `pveam update` checks
/// it (with sqv there; gpgv reads the same detached OpenPGP signature).
fn check_signature(
    url: &str,
    text: &str,
    keyring: &Path,
    cache: &Cache,
    opts: &FetchOptions,
) -> Result<(), SourceError> {
    let sig_url = format!("{url}.asc");
    let sig = http::fetch_index(&sig_url, cache, opts)?;
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let gpgv = crate::command::find_in_path("gpgv", &path_var).ok_or(SourceError::ToolMissing {
        tool: "gpgv",
        install: "apt-get install gpgv (or dnf install gnupg2)",
    })?;
    let work = cache.temp_dir("index-")?;
    let data = work.path().join("index");
    std::fs::write(&data, text).map_err(|e| SourceError::io("writing", &data, e))?;
    let keyring = std::path::absolute(keyring).unwrap_or_else(|_| keyring.to_owned());
    let mut cmd = Command::new(gpgv);
    cmd.arg("--keyring").arg(&keyring).arg(&sig).arg(&data);
    match crate::command::run_command(&mut cmd, &opts.cancel) {
        Ok(_) => {
            tracing::info!(index = %url, keyring = %keyring.display(), "index signature is good");
            Ok(())
        }
        Err(crate::command::CommandError::Interrupted { command }) => {
            Err(SourceError::Interrupted {
                what: format!("running {command}"),
            })
        }
        Err(crate::command::CommandError::Failed { stderr_tail, .. }) => Err(catalog_error(
            url,
            format!(
                "its signature {sig_url} does not verify with {}: {} — the index was altered or \
                 the keyring is not the one that signs it; nothing was used",
                keyring.display(),
                stderr_tail.trim_end()
            ),
        )),
        Err(e) => Err(e.into()),
    }
}

/// A template from Proxmox's index: the host's copy in the template
/// directory, else the cache, else a download, each checked against the
/// sha512 the index lists (and the recipe's pin).
pub(super) fn fetch_pveam(
    spec: &PveamSpec,
    arch: &str,
    cache: &Cache,
    opts: &FetchOptions,
) -> Result<Fetched, SourceError> {
    let index = pveam_index(spec, cache, opts)?;
    let rec = pveam::select(
        &index.records,
        &spec.template,
        spec.version.as_deref(),
        arch,
    )
    .map_err(|r| catalog_error(&index.label, r))?;
    let Some(listed) = rec.sha512.clone() else {
        return Err(catalog_error(
            &index.label,
            format!(
                "line {}: {} {} lists no sha512sum, so the download cannot be verified",
                rec.line, rec.package, rec.version
            ),
        ));
    };
    if let Some(pin) = &spec.sha512 {
        if !pin.eq_ignore_ascii_case(&listed) {
            return Err(catalog_error(
                &index.label,
                format!(
                    "{} lists sha512 {listed} for {}, but the recipe pins {pin}: the template \
                     was re-issued or the pin is for another version; pin `version:` too",
                    rec.package, rec.template
                ),
            ));
        }
    }
    tracing::info!(
        template = %rec.template, version = %rec.version, index = %index.label,
        "pveam template"
    );
    let entry = CatalogInfo {
        index: index.label.clone(),
        name: rec.package.clone(),
        version: rec.version.clone(),
        listed_digest: format!("sha512:{listed}"),
        index_signature: index.signature.clone(),
    };
    let verify = |path: &Path, origin: &str| -> Result<u64, SourceError> {
        let (actual, size) = sha512_file(path, opts)?;
        if actual != listed {
            return Err(SourceError::DigestMismatch {
                algorithm: "sha512",
                origin: origin.to_owned(),
                expected: listed.clone(),
                actual,
                listed_by: index.label.clone(),
            });
        }
        Ok(size)
    };

    let dir = spec
        .template_dir
        .as_deref()
        .unwrap_or(DEFAULT_PVE_TEMPLATE_DIR);
    let local = Path::new(dir).join(&rec.template);
    if local.is_file() {
        let shown = local.display().to_string();
        verify(&local, &shown)?;
        let (sha256, size) = super::hash_file(&local, opts)?;
        tracing::info!(path = %shown, "using the template already on this host");
        return Ok(Fetched {
            path: local,
            sha256,
            size,
            origin: shown,
            from_cache: true,
            catalog: Some(entry),
        });
    }
    let note = format!("sha512:{listed}");
    if let Some(f) = http::cached_with_note(&rec.location, &note, cache)? {
        tracing::info!(url = %rec.location, "using cached copy");
        return Ok(Fetched {
            catalog: Some(entry),
            ..f
        });
    }
    if opts.offline {
        return Err(SourceError::NotCached {
            what: format!(
                "{} ({} {}, sha512 {listed}; looked in {dir} and {})",
                rec.location,
                rec.package,
                rec.version,
                cache.root().display()
            ),
        });
    }
    let f = http::fetch_verified_by(&rec.location, &note, cache, opts, |p| {
        verify(p, &rec.location).map(|_| ())
    })?;
    Ok(Fetched {
        catalog: Some(entry),
        ..f
    })
}

/// An image from a simplestreams server, by its product key.
pub(super) fn fetch_linuxcontainers(
    spec: &LinuxcontainersSpec,
    arch: &str,
    cache: &Cache,
    opts: &FetchOptions,
) -> Result<Fetched, SourceError> {
    let server = spec
        .server
        .as_deref()
        .unwrap_or(DEFAULT_LXC_IMAGE_SERVER)
        .trim_end_matches('/');
    let key = simplestreams::product_key(&spec.image, arch, &spec.variant);
    let stream_url = format!("{server}/streams/v1/index.json");
    let json = |url: &str| -> Result<String, SourceError> {
        let blob = http::fetch_index(url, cache, opts)?;
        read_index(&blob, false, url)
    };
    let not_simplestreams = |url: &str, e: serde_json::Error| {
        catalog_error(url, format!("is not a simplestreams index ({e})"))
    };
    let stream: simplestreams::Stream =
        serde_json::from_str(&json(&stream_url)?).map_err(|e| not_simplestreams(&stream_url, e))?;
    let products_url = format!(
        "{server}/{}",
        simplestreams::products_path(&stream, &key).map_err(|r| catalog_error(&stream_url, r))?
    );
    let products: simplestreams::Products = serde_json::from_str(&json(&products_url)?)
        .map_err(|e| not_simplestreams(&products_url, e))?;
    let (serial, item) = simplestreams::select(&products, &key, spec.serial.as_deref())
        .map_err(|r| catalog_error(&products_url, r))?;
    let sha256 = item
        .sha256
        .as_deref()
        .and_then(|s| s.parse::<node_spec::Sha256Hex>().ok())
        .ok_or_else(|| {
            catalog_error(
                &products_url,
                format!("{key} {serial} lists no valid sha256 for {}", item.path),
            )
        })?;
    if item.path.split('/').any(|c| c == "..") || item.path.contains("://") {
        return Err(catalog_error(
            &products_url,
            format!(
                "{key} {serial} has the path {:?}, which leaves the server",
                item.path
            ),
        ));
    }
    let url = format!("{server}/{}", item.path.trim_start_matches('/'));
    tracing::info!(image = %key, %serial, size = item.size, "linuxcontainers image");
    let f = http::fetch_url(&url, Some(&sha256), None, cache, opts)?;
    Ok(Fetched {
        catalog: Some(CatalogInfo {
            index: products_url,
            name: key,
            version: serial.to_string(),
            listed_digest: format!("sha256:{sha256}"),
            // Incus and LXC read these indexes over https without a
            // signature; the image is checked against the sha256 they list.
            index_signature: "none: simplestreams indexes are not signed".into(),
        }),
        ..f
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_matches_by_edits_and_first_word() {
        let names = [
            "debian-12-standard",
            "ubuntu-22.04-standard",
            "ubuntu-24.04-standard",
        ];
        assert_eq!(
            close_matches("ubuntu-22.04-standart", names.into_iter()),
            ["ubuntu-22.04-standard", "ubuntu-24.04-standard"]
        );
        assert_eq!(
            close_matches("alpine-3.20-default", names.into_iter()),
            Vec::<String>::new()
        );
        assert_eq!(crate::edit_distance("kitten", "sitting"), 3);
    }
}
