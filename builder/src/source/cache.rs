//! The content-addressed cache.
//!
//! Layout under the root (`$XDG_CACHE_HOME/imgbuild`, else `~/.cache/imgbuild`):
//!
//! ```text
//! sha256/<digest>          verified blobs, read-only, named by their content
//! urls/<sha256(url)>.json  last digest a URL resolved to (for --offline)
//! bootstrap/<key>.json     digest of the rootfs made for a bootstrap spec
//! derived/<digest>/        what was learnt from a cached base (the ext4
//!                          metadata map of a cloud image, output::disk::working)
//! tmp/                     downloads and bootstraps in progress:
//!                          download-PID-XXXXXX.partial, bootstrap-PID-XXXXXX/
//! ```
//!
//! A blob only enters `sha256/` by rename after it was verified and fsynced,
//! so a reader never sees a partial file; two builds inserting the same digest
//! rename identical content over each other, which is harmless. Temp files
//! live in `tmp/` on the same filesystem (rename must not cross one) and are
//! deleted on every error path by `tempfile`'s drop. Their names carry the
//! owner's pid, so [`Cache::sweep_temps`] at the start of a build removes
//! what a killed one left (`crate::output::leftovers`).

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use node_spec::Sha256Hex;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tempfile::{NamedTempFile, TempDir};

use super::SourceError;
use crate::output::leftovers;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    root: PathBuf,
}

/// What a URL last resolved to; written after every verified URL fetch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct UrlRecord {
    pub url: String,
    pub sha256: Sha256Hex,
    pub size: u64,
    /// The checksum file the digest came from, if it was not pinned.
    #[serde(default)]
    pub sha256_url: Option<String>,
    /// Another digest the download was checked against, for catalogs that
    /// list no sha256 (`sha512:<hex>` from pveam's index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_by: Option<String>,
    /// Seconds since the Unix epoch.
    pub recorded_at: u64,
}

/// The rootfs tarball made for one bootstrap spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BootstrapRecord {
    /// [`super::bootstrap_key`] of the spec.
    pub key: Sha256Hex,
    pub sha256: Sha256Hex,
    pub size: u64,
    /// The command line that made it (without the output path).
    pub command: String,
    pub recorded_at: u64,
}

impl Cache {
    /// A cache rooted at `root` (created lazily on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `$XDG_CACHE_HOME/imgbuild`, falling back to `$HOME/.cache/imgbuild`.
    pub fn from_env() -> Result<Self, SourceError> {
        Self::from_vars(std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
    }

    /// [`Cache::from_env`] on explicit values. The XDG spec says a relative
    /// or empty `XDG_CACHE_HOME` is invalid and must be ignored.
    pub fn from_vars(
        xdg_cache_home: Option<OsString>,
        home: Option<OsString>,
    ) -> Result<Self, SourceError> {
        if let Some(xdg) = xdg_cache_home.map(PathBuf::from) {
            if xdg.is_absolute() {
                return Ok(Self::new(xdg.join("imgbuild")));
            }
        }
        match home.map(PathBuf::from) {
            Some(home) if home.is_absolute() => Ok(Self::new(home.join(".cache").join("imgbuild"))),
            _ => Err(SourceError::NoCacheDir),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Data derived from cached blobs, one directory per blob digest; it can
    /// be deleted at any time (it is made again).
    pub fn derived_dir(&self) -> PathBuf {
        self.root.join("derived")
    }

    /// Where the blob with this digest lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Sha256Hex) -> PathBuf {
        self.root.join("sha256").join(digest.as_str())
    }

    /// The blob's path and size if it is cached.
    pub fn lookup_blob(&self, digest: &Sha256Hex) -> Result<Option<(PathBuf, u64)>, SourceError> {
        let path = self.blob_path(digest);
        match fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some((path, m.len()))),
            Ok(_) => Err(SourceError::CorruptIndex {
                path,
                reason: "not a regular file".into(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SourceError::io("reading", &path, e)),
        }
    }

    fn tmp_dir(&self) -> Result<PathBuf, SourceError> {
        let dir = self.root.join("tmp");
        fs::create_dir_all(&dir).map_err(|e| SourceError::io("creating", &dir, e))?;
        Ok(dir)
    }

    /// A temp file next to the blobs (`tmp/<prefix><pid>-XXXXXX.partial`),
    /// deleted when dropped uncommitted.
    pub(crate) fn temp_file(&self, prefix: &str) -> Result<NamedTempFile, SourceError> {
        let dir = self.tmp_dir()?;
        tempfile::Builder::new()
            .prefix(&owned_prefix(prefix))
            .suffix(".partial")
            .tempfile_in(&dir)
            .map_err(|e| SourceError::io("creating a temp file in", &dir, e))
    }

    /// A temp directory next to the blobs (`tmp/<prefix><pid>-XXXXXX`),
    /// deleted with its content when dropped.
    pub(crate) fn temp_dir(&self, prefix: &str) -> Result<TempDir, SourceError> {
        let dir = self.tmp_dir()?;
        tempfile::Builder::new()
            .prefix(&owned_prefix(prefix))
            .tempdir_in(&dir)
            .map_err(|e| SourceError::io("creating a temp directory in", &dir, e))
    }

    /// Move a verified temp file into `sha256/<digest>`. The caller has checked
    /// the digest; this makes the content durable before it becomes visible.
    pub(crate) fn commit_temp(
        &self,
        tmp: NamedTempFile,
        digest: &Sha256Hex,
    ) -> Result<PathBuf, SourceError> {
        prepare_blob(tmp.as_file(), tmp.path())?;
        let dest = self.blob_dest(digest)?;
        // On failure the PersistError owns the temp file and deletes it on drop.
        tmp.persist(&dest)
            .map_err(|e| SourceError::io("moving a download into", &dest, e.error))?;
        sync_parent(&dest)?;
        Ok(dest)
    }

    /// Like [`Cache::commit_temp`] for a file inside a [`Cache::temp_dir`].
    pub(crate) fn commit_path(
        &self,
        src: &Path,
        digest: &Sha256Hex,
    ) -> Result<PathBuf, SourceError> {
        let file = File::open(src).map_err(|e| SourceError::io("opening", src, e))?;
        prepare_blob(&file, src)?;
        drop(file);
        let dest = self.blob_dest(digest)?;
        fs::rename(src, &dest).map_err(|e| SourceError::io("moving a file into", &dest, e))?;
        sync_parent(&dest)?;
        Ok(dest)
    }

    fn blob_dest(&self, digest: &Sha256Hex) -> Result<PathBuf, SourceError> {
        let dest = self.blob_path(digest);
        if let Some(dir) = dest.parent() {
            fs::create_dir_all(dir).map_err(|e| SourceError::io("creating", dir, e))?;
        }
        Ok(dest)
    }

    /// Delete what killed builds left in `tmp/`: entries whose owner (the
    /// pid in the name) is gone, and entries without one (named by an older
    /// imgbuild) older than [`leftovers::STALE_AGE`]. Temp files normally
    /// vanish with their `tempfile` guard; only a process killed outright
    /// (SIGKILL, power loss) leaves some. Returns what was removed.
    pub fn sweep_temps(&self) -> Result<Vec<PathBuf>, SourceError> {
        let dir = self.root.join("tmp");
        leftovers::sweep(&dir, temp_owner).map_err(|e| SourceError::io("cleaning up", &dir, e))
    }

    fn url_index_path(&self, url: &str) -> PathBuf {
        let key = Sha256Hex::from_digest(&Sha256::digest(url.as_bytes()));
        self.root.join("urls").join(format!("{key}.json"))
    }

    pub fn lookup_url(&self, url: &str) -> Result<Option<UrlRecord>, SourceError> {
        let path = self.url_index_path(url);
        let record: Option<UrlRecord> = read_json(&path)?;
        match record {
            // The file name is a hash of the URL; check it really is this one.
            Some(r) if r.url != url => Err(SourceError::CorruptIndex {
                path,
                reason: format!("records {} instead of {url}", r.url),
            }),
            other => Ok(other),
        }
    }

    pub fn record_url(&self, record: &UrlRecord) -> Result<(), SourceError> {
        write_json_atomic(&self.url_index_path(&record.url), record)
    }

    fn bootstrap_index_path(&self, key: &Sha256Hex) -> PathBuf {
        self.root.join("bootstrap").join(format!("{key}.json"))
    }

    pub fn lookup_bootstrap(
        &self,
        key: &Sha256Hex,
    ) -> Result<Option<BootstrapRecord>, SourceError> {
        read_json(&self.bootstrap_index_path(key))
    }

    pub fn record_bootstrap(&self, record: &BootstrapRecord) -> Result<(), SourceError> {
        write_json_atomic(&self.bootstrap_index_path(&record.key), record)
    }
}

/// `download-` → `download-<pid>-`: tempfile appends the random part.
fn owned_prefix(prefix: &str) -> String {
    format!("{prefix}{}-", std::process::id())
}

/// Everything in `tmp/` is a temp of some build: `<what>-<pid>-XXXXXX…`,
/// or without the pid from an older imgbuild.
fn temp_owner(name: &str) -> Option<leftovers::Owner> {
    let pid = name
        .split_once('-')
        .and_then(|(_, rest)| leftovers::pid_after(rest, "", '-'));
    Some(match pid {
        Some(pid) => leftovers::Owner::Pid(pid),
        None => leftovers::Owner::Unknown,
    })
}

/// Seconds since the Unix epoch, for index records.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// fsync and make read-only: a blob is shared by every build that names its
/// digest, so nothing may modify it in place.
fn prepare_blob(file: &File, path: &Path) -> Result<(), SourceError> {
    file.sync_all()
        .map_err(|e| SourceError::io("syncing", path, e))?;
    file.set_permissions(fs::Permissions::from_mode(0o444))
        .map_err(|e| SourceError::io("setting permissions on", path, e))
}

/// fsync the directory so the rename itself survives a crash.
fn sync_parent(path: &Path) -> Result<(), SourceError> {
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SourceError::io("syncing", dir, e))
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, SourceError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SourceError::io("reading", path, e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| SourceError::CorruptIndex {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), SourceError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| SourceError::CorruptIndex {
        path: path.to_path_buf(),
        reason: format!("cannot serialize: {e}"),
    })?;
    text.push('\n');
    let how = node_spec::atomic::Placement::new(".index-", 0o600).create_dir();
    node_spec::atomic::write(path, text.as_bytes(), how)
        .map_err(|e| SourceError::io(e.action, &e.path, e.source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    fn digest(s: &str) -> Sha256Hex {
        Sha256Hex::from_digest(&Sha256::digest(s.as_bytes()))
    }

    #[test]
    fn root_follows_xdg_then_home() {
        let c = Cache::from_vars(Some("/x/cache".into()), Some("/home/u".into())).unwrap();
        assert_eq!(c.root(), Path::new("/x/cache/imgbuild"));
        let c = Cache::from_vars(None, Some("/home/u".into())).unwrap();
        assert_eq!(c.root(), Path::new("/home/u/.cache/imgbuild"));
        // A relative XDG_CACHE_HOME is invalid per the spec and ignored.
        let c = Cache::from_vars(Some("rel".into()), Some("/home/u".into())).unwrap();
        assert_eq!(c.root(), Path::new("/home/u/.cache/imgbuild"));
        assert!(matches!(
            Cache::from_vars(Some("".into()), None),
            Err(SourceError::NoCacheDir)
        ));
    }

    #[test]
    fn committed_blob_is_read_only_and_found() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let d = digest("hello");
        assert_eq!(cache.lookup_blob(&d).unwrap(), None);

        let mut tmp = cache.temp_file("t-").unwrap();
        tmp.write_all(b"hello").unwrap();
        let path = cache.commit_temp(tmp, &d).unwrap();

        assert_eq!(path, dir.path().join("sha256").join(d.as_str()));
        assert_eq!(cache.lookup_blob(&d).unwrap(), Some((path.clone(), 5)));
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o444);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn uncommitted_temp_file_is_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let tmp = cache.temp_file("t-").unwrap();
        let p = tmp.path().to_path_buf();
        assert!(p.exists());
        drop(tmp);
        assert!(!p.exists());
    }

    #[test]
    fn temps_of_gone_builds_and_old_unnamed_ones_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        assert!(cache.sweep_temps().unwrap().is_empty());
        let mine = cache.temp_file("download-").unwrap();
        let name = mine.path().file_name().unwrap().to_string_lossy();
        assert!(
            name.starts_with(&format!("download-{}-", std::process::id())),
            "{name}"
        );
        let tmp = cache.tmp_dir().unwrap();
        // Beyond the kernel's pid_max: no such process.
        let dead_file = tmp.join(format!("download-{}-AbCdEf.partial", 1u32 << 30));
        fs::write(&dead_file, b"half").unwrap();
        let dead_dir = tmp.join(format!("bootstrap-{}-AbCdEf", 1u32 << 30));
        fs::create_dir(&dead_dir).unwrap();
        fs::write(dead_dir.join("rootfs.tar"), b"x").unwrap();
        let old_unnamed = tmp.join("download-old.partial");
        fs::write(&old_unnamed, b"half").unwrap();
        let new_unnamed = tmp.join("download-new.partial");
        fs::write(&new_unnamed, b"half").unwrap();
        let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 86400);
        File::options()
            .write(true)
            .open(&old_unnamed)
            .unwrap()
            .set_modified(two_days_ago)
            .unwrap();

        let mut removed = cache.sweep_temps().unwrap();
        removed.sort();
        let mut expected = vec![dead_dir.clone(), dead_file.clone(), old_unnamed.clone()];
        expected.sort();
        assert_eq!(removed, expected);
        assert!(!dead_file.exists() && !dead_dir.exists() && !old_unnamed.exists());
        assert!(mine.path().exists() && new_unnamed.exists());
    }

    #[test]
    fn url_index_round_trips_and_detects_foreign_records() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let url = "https://example.invalid/a.tar.xz";
        assert_eq!(cache.lookup_url(url).unwrap(), None);
        let rec = UrlRecord {
            url: url.into(),
            sha256: digest("a"),
            size: 1,
            sha256_url: Some("https://example.invalid/SHA256SUMS".into()),
            verified_by: None,
            recorded_at: 1,
        };
        cache.record_url(&rec).unwrap();
        assert_eq!(cache.lookup_url(url).unwrap(), Some(rec.clone()));

        // A record under the wrong name must not be trusted.
        let other = "https://example.invalid/b.tar.xz";
        fs::copy(cache.url_index_path(url), cache.url_index_path(other)).unwrap();
        assert!(matches!(
            cache.lookup_url(other),
            Err(SourceError::CorruptIndex { .. })
        ));
    }

    #[test]
    fn corrupt_index_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let key = digest("spec");
        let path = cache.bootstrap_index_path(&key);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, "{ not json").unwrap();
        let err = cache.lookup_bootstrap(&key).unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert!(err.to_string().contains("delete it"), "{err}");
    }
}
