//! The K3s binary: use the baked copy when its digest matches, else download
//! the pinned release from the mirror (GitHub release layout), verify it, and
//! install it atomically as /usr/local/bin/k3s with its tool links.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Duration;

use node_spec::atomic::{Placement, Staged};
use node_spec::retry::{retry, Backoff};
use node_spec::Sha256Hex;
use sha2::{Digest, Sha256};

use super::proxy::ProxySettings;
use crate::metadata::NodeConfig;
use crate::rootfs::{symlink_atomic, FileError, Root};
use crate::system::System;

pub const K3S_BIN: &str = "/usr/local/bin/k3s";
/// The binary an upgrade replaced, for `firstboot-agent upgrade --rollback`.
pub const K3S_PREVIOUS: &str = "/usr/local/bin/k3s.previous";
/// Tools K3s serves from the same binary, linked next to it.
pub const TOOL_LINKS: [&str; 3] = ["kubectl", "crictl", "ctr"];
const ATTEMPTS: u32 = 4;

/// Why the binary could not be put in place. Nothing is installed when any
/// of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("{url}: not found (HTTP 404); check that the mirror has release {version} in GitHub release layout")]
    NotFound { url: String, version: String },
    #[error("{url}: HTTP {code}")]
    Status { url: String, code: u16 },
    #[error("{url}: {message}; check the network and the mirror (k3s.mirror)")]
    Transport { url: String, message: String },
    #[error("{url}: download cut off after {received} bytes: {message}")]
    CutOff {
        url: String,
        received: u64,
        message: String,
    },
    #[error("{url}: checksum mismatch: expected sha256 {expected} ({expected_from}), got {actual}; nothing was installed")]
    Checksum {
        url: String,
        expected: Sha256Hex,
        expected_from: String,
        actual: Sha256Hex,
    },
    #[error("{url}: cannot use the proxy {proxy} ({from}): {message}")]
    Proxy {
        url: String,
        proxy: String,
        from: String,
        message: String,
    },
    #[error("{url} has no entry for `k3s`")]
    NoSumEntry { url: String },
    #[error("no sha256 is pinned for K3s {version}, and the image does not let the agent trust the mirror's checksum file (k3s.trust-mirror-checksums is false); nothing was installed. Give the digest of the release's amd64 `k3s` binary (the `k3s` line of its sha256sum-amd64.txt, checked out of band): `k3s.sha256` in the user-data, or `firstboot-agent upgrade --sha256`")]
    Unpinned { version: String },
    #[error(transparent)]
    File(#[from] FileError),
}

impl DownloadError {
    /// Whether another attempt may succeed.
    fn transient(&self) -> bool {
        match self {
            DownloadError::Transport { .. } | DownloadError::CutOff { .. } => true,
            DownloadError::Status { code, .. } => *code >= 500 || *code == 429,
            _ => false,
        }
    }
}

/// Where the installed binary came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    AlreadyInstalled,
    Baked,
    Downloaded(String),
    /// A file on the node (`firstboot-agent upgrade --binary`).
    Local(String),
}

impl Origin {
    /// How the binary got there, for step messages.
    pub fn describe(&self) -> String {
        match self {
            Origin::AlreadyInstalled => "already installed".to_owned(),
            Origin::Baked => "installed from the image".to_owned(),
            Origin::Downloaded(url) => format!("downloaded from {url}"),
            Origin::Local(path) => format!("installed from {path}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub origin: Origin,
    pub sha256: Sha256Hex,
    /// `kubectl`/`crictl`/`ctr` not linked to k3s, and why.
    pub not_linked: Vec<String>,
    /// The binary it replaced was kept as [`K3S_PREVIOUS`].
    pub kept_previous: bool,
}

/// How [`install_with`] gets and places the binary.
#[derive(Debug, Clone, Default)]
pub struct InstallOptions {
    /// Install this file (a real path) instead of the baked or mirror copy.
    pub local: Option<std::path::PathBuf>,
    /// Keep the binary being replaced as [`K3S_PREVIOUS`].
    pub keep_previous: bool,
}

/// sha256 of a file; `Ok(None)` when it does not exist.
pub fn file_sha256(path: &Path) -> Result<Option<Sha256Hex>, FileError> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(FileError::new("reading", path, e)),
    };
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h).map_err(|e| FileError::new("reading", path, e))?;
    Ok(Some(Sha256Hex::from_digest(&h.finalize())))
}

/// The `k3s` entry of a `sha256sum-<arch>.txt`.
pub fn parse_sums(text: &str, name: &str) -> Option<Sha256Hex> {
    text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let digest = f.next()?;
        let file = f.next()?.trim_start_matches('*');
        (file == name).then(|| digest.parse().ok()).flatten()
    })
}

/// The baked binary's path when its digest is the one we want.
fn valid_baked(
    root: &Root,
    cfg: &NodeConfig,
) -> Result<Option<(std::path::PathBuf, Sha256Hex)>, FileError> {
    let Some(b) = &cfg.baked_binary else {
        return Ok(None);
    };
    let path = root.path(&b.path);
    let Some(actual) = file_sha256(&path)? else {
        tracing::warn!("baked K3s binary {} is missing; will download", b.path);
        return Ok(None);
    };
    let wanted = cfg.pinned_sha256.as_ref().unwrap_or(&b.sha256);
    if &actual == wanted && actual == b.sha256 {
        Ok(Some((path, actual)))
    } else {
        tracing::warn!(
            "baked K3s binary {} has sha256 {actual}, expected {wanted}; will download",
            b.path
        );
        Ok(None)
    }
}

/// Whether installing needs the mirror (used to decide which DNS names the
/// preflight must resolve).
pub fn needs_download(root: &Root, cfg: &NodeConfig) -> Result<bool, FileError> {
    if valid_baked(root, cfg)?.is_some() {
        return Ok(false);
    }
    if let Some(p) = &cfg.pinned_sha256 {
        if file_sha256(&root.path(K3S_BIN))?.as_ref() == Some(p) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn release_url(cfg: &NodeConfig, file: &str) -> String {
    node_spec::release_url(&cfg.mirror, &cfg.version, file)
}

/// The ureq agent for `url`: through the proxy K3s would use for it
/// ([`ProxySettings::for_url`]), or direct.
fn http_agent(url: &str, proxy: &ProxySettings) -> Result<ureq::Agent, DownloadError> {
    let mut b = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(15))
        .timeout_read(Duration::from_secs(60))
        .user_agent(concat!("firstboot-agent/", env!("CARGO_PKG_VERSION")))
        .try_proxy_from_env(false);
    if let Some(p) = proxy.for_url(url) {
        let shown = super::proxy::redacted(&p.value);
        let bad = |why: &str| DownloadError::Proxy {
            url: url.to_owned(),
            proxy: shown.clone(),
            from: p.from.clone(),
            message: why.to_owned(),
        };
        // K3s also takes https:// and socks5:// proxies; the agent's HTTP
        // client speaks to plain HTTP ones only.
        if p.value.contains("://") && !p.value.starts_with("http://") {
            return Err(bad("the agent downloads only through http:// proxies (K3s itself uses this one) — give an http:// URL, or bake the K3s binary into the image (bake.k3s-binary)"));
        }
        let proxy = ureq::Proxy::new(&p.value).map_err(|e| bad(&e.to_string()))?;
        tracing::info!("downloading {url} through the proxy {shown} ({})", p.from);
        b = b.proxy(proxy);
    }
    Ok(b.build())
}

fn open_url(
    url: &str,
    version: &str,
    proxy: &ProxySettings,
) -> Result<Box<dyn Read + Send>, DownloadError> {
    if let Some(path) = url.strip_prefix("file://") {
        let path = path.replace("%2B", "+");
        return match File::open(&path) {
            Ok(f) => Ok(Box::new(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(DownloadError::NotFound {
                url: url.to_owned(),
                version: version.to_owned(),
            }),
            Err(e) => Err(FileError::new("reading", path, e).into()),
        };
    }
    let agent = http_agent(url, proxy)?;
    let via = proxy
        .for_url(url)
        .map(|p| {
            format!(
                " (through the proxy {}, {})",
                super::proxy::redacted(&p.value),
                p.from
            )
        })
        .unwrap_or_default();
    match agent.get(url).call() {
        Ok(resp) => Ok(Box::new(resp.into_reader())),
        Err(ureq::Error::Status(404, _)) => Err(DownloadError::NotFound {
            url: url.to_owned(),
            version: version.to_owned(),
        }),
        Err(ureq::Error::Status(code, _)) => Err(DownloadError::Status {
            url: url.to_owned(),
            code,
        }),
        Err(ureq::Error::Transport(t)) => Err(DownloadError::Transport {
            url: url.to_owned(),
            message: format!("{}{via}", transport_message(&t)),
        }),
    }
}

/// ureq's transport error without the URL (the message names it already)
/// and with its cause once: `Connection Failed: Connection refused`.
fn transport_message(t: &ureq::Transport) -> String {
    let mut parts = vec![t.kind().to_string()];
    if let Some(m) = t.message() {
        parts.push(m.to_owned());
    }
    if let Some(cause) = std::error::Error::source(t) {
        let text = match cause.downcast_ref::<io::Error>() {
            Some(io) => crate::message::io_text(io),
            None => cause.to_string(),
        };
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// Retry transient download failures with backoff ([`node_spec::retry`]),
/// sleeping through the [`System`] so tests do not wait.
fn with_retries<T>(
    system: &dyn System,
    what: &str,
    mut f: impl FnMut() -> Result<T, DownloadError>,
) -> Result<T, DownloadError> {
    let policy = Backoff::new(ATTEMPTS, Duration::from_secs(2));
    retry(
        policy,
        |_| f(),
        DownloadError::transient,
        |attempt, delay, e| {
            tracing::warn!(
                "{what} failed (attempt {attempt}/{ATTEMPTS}), retrying in {delay:?}: {e}"
            );
            system.sleep(delay);
            true
        },
    )
    .map_err(|gave_up| gave_up.error)
}

fn fetch_text(url: &str, version: &str, proxy: &ProxySettings) -> Result<String, DownloadError> {
    let mut r = open_url(url, version, proxy)?;
    let mut buf = String::new();
    r.by_ref()
        .take(1024 * 1024)
        .read_to_string(&mut buf)
        .map_err(|e| DownloadError::CutOff {
            url: url.to_owned(),
            received: buf.len() as u64,
            message: crate::message::io_text(&e),
        })?;
    Ok(buf)
}

/// Stream `reader` into a temp file in `dest`'s directory while hashing; on
/// a digest match make it 0755 and rename it over `dest`. The temp file is
/// removed on every error path.
fn stream_install(
    mut reader: impl Read,
    url: &str,
    dest: &Path,
    expected: &Sha256Hex,
    expected_from: &str,
    previous: Option<&Path>,
) -> Result<(Sha256Hex, bool), DownloadError> {
    let dir = dest
        .parent()
        .ok_or_else(|| FileError::new("installing", dest, io::ErrorKind::InvalidInput.into()))?;
    fs::create_dir_all(dir).map_err(|e| FileError::new("creating directory", dir, e))?;
    let prefix = crate::leftovers::temp_prefix(crate::leftovers::DOWNLOAD_TEMP);
    let mut tmp = Staged::new(dest, Placement::new(&prefix, 0o755)).map_err(atomic_error)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut received: u64 = 0;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(DownloadError::CutOff {
                    url: url.to_owned(),
                    received,
                    message: crate::message::io_text(&e),
                })
            }
        };
        hasher.update(&buf[..n]);
        tmp.file()
            .write_all(&buf[..n])
            .map_err(|e| FileError::new("writing", tmp.temp_path(), e))?;
        received += n as u64;
    }
    let actual = Sha256Hex::from_digest(&hasher.finalize());
    if &actual != expected {
        return Err(DownloadError::Checksum {
            url: url.to_owned(),
            expected: expected.clone(),
            expected_from: expected_from.to_owned(),
            actual,
        });
    }
    // Only a verified binary replaces the old one, and only then is the
    // old one kept (a refused download leaves both as they were).
    let kept = match previous {
        Some(prev) => keep_previous(dest, prev)?,
        None => false,
    };
    tmp.commit().map_err(atomic_error)?;
    Ok((actual, kept))
}

fn atomic_error(e: node_spec::atomic::AtomicError) -> FileError {
    FileError::new(e.action, e.path, e.source)
}

/// `dest` as `previous`: a hard link made under a temp name and renamed
/// over `previous`, so `previous` is always a whole binary. `false` when
/// there is no `dest`.
pub fn keep_previous(dest: &Path, previous: &Path) -> Result<bool, FileError> {
    if fs::symlink_metadata(dest).is_err() {
        return Ok(false);
    }
    let dir = previous
        .parent()
        .ok_or_else(|| FileError::new("keeping", previous, io::ErrorKind::InvalidInput.into()))?;
    let link = tempfile::Builder::new()
        .prefix(&crate::leftovers::temp_prefix(
            crate::leftovers::DOWNLOAD_TEMP,
        ))
        .make_in(dir, |p| fs::hard_link(dest, p))
        .map_err(|e| FileError::new("keeping a link to", dest, e))?;
    link.persist(previous)
        .map_err(|e| FileError::new("renaming into place", previous, e.error))?;
    Ok(true)
}

/// Put the pinned K3s at /usr/local/bin/k3s (see the module docs).
pub fn install(
    root: &Root,
    system: &dyn System,
    cfg: &NodeConfig,
) -> Result<Installed, DownloadError> {
    install_with(root, system, cfg, &InstallOptions::default())
}

/// The digest the binary of `cfg.version` must have, and where that
/// digest came from: the pin (image defaults, metadata or `--sha256`);
/// else, only where the image allows it, the mirror's checksum file.
pub fn expected_digest(
    system: &dyn System,
    cfg: &NodeConfig,
) -> Result<(Sha256Hex, String), DownloadError> {
    if let Some(p) = &cfg.pinned_sha256 {
        return Ok((p.clone(), cfg.pin_source.clone()));
    }
    if !cfg.trust_mirror_checksums {
        return Err(DownloadError::Unpinned {
            version: cfg.version.to_string(),
        });
    }
    let sums_url = release_url(cfg, node_spec::CHECKSUM_FILE);
    let text = with_retries(system, "fetching the checksum list", || {
        fetch_text(&sums_url, cfg.version.as_str(), &cfg.proxy)
    })?;
    let listed = parse_sums(&text, "k3s").ok_or_else(|| DownloadError::NoSumEntry {
        url: sums_url.clone(),
    })?;
    Ok((listed, sums_url))
}

/// [`install`] with a local source and/or the replaced binary kept.
pub fn install_with(
    root: &Root,
    system: &dyn System,
    cfg: &NodeConfig,
    opts: &InstallOptions,
) -> Result<Installed, DownloadError> {
    let dest = root.path(K3S_BIN);
    let previous_path = root.path(K3S_PREVIOUS);
    let previous = opts.keep_previous.then_some(previous_path.as_path());
    let version = cfg.version.as_str();
    let unchanged = |sha256| Installed {
        origin: Origin::AlreadyInstalled,
        sha256,
        not_linked: Vec::new(),
        kept_previous: false,
    };
    let baked = match opts.local {
        Some(_) => None,
        None => valid_baked(root, cfg)?,
    };
    let installed = if let Some((baked, digest)) = baked {
        if file_sha256(&dest)?.as_ref() == Some(&digest) {
            unchanged(digest)
        } else {
            let f = File::open(&baked).map_err(|e| FileError::new("reading", &baked, e))?;
            let from = format!("baked {}", baked.display());
            let (sha256, kept_previous) =
                stream_install(f, &from, &dest, &digest, "baked defaults", previous)?;
            Installed {
                origin: Origin::Baked,
                sha256,
                not_linked: Vec::new(),
                kept_previous,
            }
        }
    } else {
        let (expected, expected_from) = expected_digest(system, cfg)?;
        if file_sha256(&dest)?.as_ref() == Some(&expected) {
            unchanged(expected)
        } else if let Some(local) = &opts.local {
            let f = File::open(local).map_err(|e| FileError::new("reading", local, e))?;
            let shown = local.display().to_string();
            let (sha256, kept_previous) =
                stream_install(f, &shown, &dest, &expected, &expected_from, previous)?;
            Installed {
                origin: Origin::Local(shown),
                sha256,
                not_linked: Vec::new(),
                kept_previous,
            }
        } else {
            let url = release_url(cfg, "k3s");
            let (sha256, kept_previous) = with_retries(system, "downloading K3s", || {
                let r = open_url(&url, version, &cfg.proxy)?;
                stream_install(r, &url, &dest, &expected, &expected_from, previous)
            })?;
            Installed {
                origin: Origin::Downloaded(url),
                sha256,
                not_linked: Vec::new(),
                kept_previous,
            }
        }
    };
    let not_linked = link_tools(root)?;
    Ok(Installed {
        not_linked,
        ..installed
    })
}

/// The directories of systemd's default PATH, where install.sh's
/// `command -v` finds a tool under a unit or a root shell.
const PATH_DIRS: [&str; 6] = crate::distro::SERVICE_PATH;

/// kubectl/crictl/ctr → k3s, as install.sh's `create_symlinks` makes them:
/// only where `/usr/local/bin/<tool>` does not exist (a link that leads
/// nowhere counts as missing) and no tool of that name is on the PATH
/// (Debian's `containerd` package has its own `ctr`, a `kubectl` package
/// its `kubectl`). A link made earlier is left as it is. Returns the tools
/// it did not link, and why.
pub fn link_tools(root: &Root) -> Result<Vec<String>, FileError> {
    let mut notes = Vec::new();
    for tool in TOOL_LINKS {
        let link_abs = format!("/usr/local/bin/{tool}");
        let link = root.path(&link_abs);
        if fs::metadata(root.real_path(&link_abs)).is_ok() {
            continue; // ours from an earlier run, or somebody else's
        }
        let elsewhere = PATH_DIRS
            .iter()
            .map(|d| format!("{d}/{tool}"))
            .find(|p| p != &link_abs && crate::distro::is_program(root, p));
        match elsewhere {
            Some(p) => {
                tracing::info!("not linking {link_abs} to k3s: {p} is on the PATH");
                notes.push(format!("{link_abs} not linked ({p} exists)"));
            }
            None => symlink_atomic(Path::new("k3s"), &link)?,
        }
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_file() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let text = format!("{a}  k3s-airgap-images-amd64.tar.zst\n{b}  k3s\n");
        assert_eq!(parse_sums(&text, "k3s").unwrap().as_str(), b);
        assert_eq!(
            parse_sums(&format!("{b} *k3s\n"), "k3s").unwrap().as_str(),
            b
        );
        assert!(parse_sums("junk\n", "k3s").is_none());
    }

    #[test]
    fn transient_errors() {
        let t = DownloadError::Status {
            url: "u".into(),
            code: 503,
        };
        assert!(t.transient());
        let p = DownloadError::NotFound {
            url: "u".into(),
            version: "v".into(),
        };
        assert!(!p.transient());
    }
}
