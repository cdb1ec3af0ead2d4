//! Atomic file replacement, the one way both binaries put a file in place:
//! a temporary file in the destination's directory (created 0600, so a
//! secret is never readable by others, even briefly), fsync, owner and mode
//! set, rename, fsync the directory. A reader sees the old file or the whole
//! new one; a crash leaves at most a temporary file whose name the caller
//! chose so its next run can sweep it.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A step of an atomic write that failed, and the file it was about.
#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {source}", path.display())]
pub struct AtomicError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn err<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> AtomicError + 'p {
    move |source| AtomicError {
        action,
        path: path.to_owned(),
        source,
    }
}

/// How the file is put in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement<'a> {
    /// Name prefix of the temporary file (the suffix is random).
    pub temp_prefix: &'a str,
    pub temp_suffix: &'a str,
    pub mode: u32,
    /// (uid, gid) given to the file before it becomes visible.
    pub owner: Option<(u32, u32)>,
    /// Create the destination's directory when it is missing (otherwise a
    /// missing directory is an error).
    pub create_dir: bool,
}

impl<'a> Placement<'a> {
    pub fn new(temp_prefix: &'a str, mode: u32) -> Self {
        Self {
            temp_prefix,
            temp_suffix: "",
            mode,
            owner: None,
            create_dir: false,
        }
    }

    pub fn create_dir(self) -> Self {
        Self {
            create_dir: true,
            ..self
        }
    }

    pub fn suffix(self, temp_suffix: &'a str) -> Self {
        Self {
            temp_suffix,
            ..self
        }
    }

    pub fn owner(self, owner: Option<(u32, u32)>) -> Self {
        Self { owner, ..self }
    }
}

/// A temporary file beside its destination, removed if dropped before
/// [`Staged::commit`]. Write it through [`Staged::file`], or have a program
/// write [`Staged::temp_path`].
#[derive(Debug)]
pub struct Staged {
    tmp: tempfile::NamedTempFile,
    path: PathBuf,
    mode: u32,
    owner: Option<(u32, u32)>,
}

impl Staged {
    /// Create the temporary file for `path`.
    pub fn new(path: &Path, how: Placement<'_>) -> Result<Self, AtomicError> {
        let dir = parent(path);
        if how.create_dir {
            fs::create_dir_all(dir).map_err(err("creating directory", dir))?;
        }
        let tmp = tempfile::Builder::new()
            .prefix(how.temp_prefix)
            .suffix(how.temp_suffix)
            .tempfile_in(dir)
            .map_err(err("creating a temporary file in", dir))?;
        Ok(Self {
            tmp,
            path: path.to_owned(),
            mode: how.mode,
            owner: how.owner,
        })
    }

    pub fn file(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }

    pub fn temp_path(&self) -> &Path {
        self.tmp.path()
    }

    /// Sync, set owner and mode, rename into place, sync the directory.
    pub fn commit(self) -> Result<(), AtomicError> {
        let Self {
            tmp,
            path,
            mode,
            owner,
        } = self;
        tmp.as_file().sync_all().map_err(err("writing", &path))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(tmp.as_file(), Some(uid), Some(gid))
                .map_err(err("setting the owner of", &path))?;
        }
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(mode))
            .map_err(err("setting the mode of", &path))?;
        // On failure the PersistError owns the temporary file and removes it.
        tmp.persist(&path)
            .map_err(|e| err("renaming into place", &path)(e.error))?;
        sync_dir(parent(&path))
    }
}

/// Stage `bytes` for `path`; [`Staged::commit`] puts them in place, so a
/// caller can stage several files and commit them together.
pub fn stage(path: &Path, bytes: &[u8], how: Placement<'_>) -> Result<Staged, AtomicError> {
    let mut staged = Staged::new(path, how)?;
    staged
        .file()
        .write_all(bytes)
        .map_err(err("writing", path))?;
    Ok(staged)
}

/// Replace `path` with `bytes` atomically.
pub fn write(path: &Path, bytes: &[u8], how: Placement<'_>) -> Result<(), AtomicError> {
    stage(path, bytes, how)?.commit()
}

/// fsync a directory so a rename in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), AtomicError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("syncing directory", dir))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn writes_with_mode_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/f");
        let e = write(&p, b"one", Placement::new(".t-", 0o600)).unwrap_err();
        assert_eq!(e.action, "creating a temporary file in");
        write(&p, b"one", Placement::new(".t-", 0o600).create_dir()).unwrap();
        write(&p, b"two", Placement::new(".t-", 0o640)).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o640);
        let names: Vec<_> = fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn an_uncommitted_stage_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write(&p, b"old", Placement::new(".t-", 0o644)).unwrap();
        let staged = stage(&p, b"new", Placement::new(".t-", 0o644).suffix(".tmp")).unwrap();
        assert!(staged.temp_path().to_string_lossy().ends_with(".tmp"));
        drop(staged);
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failure_names_the_step_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        fs::write(&blocker, b"x").unwrap();
        let e = write(
            &blocker.join("f"),
            b"x",
            Placement::new(".t-", 0o644).create_dir(),
        )
        .unwrap_err();
        assert_eq!(e.action, "creating directory");
        assert!(
            e.to_string().contains(&blocker.display().to_string()),
            "{e}"
        );
    }
}
