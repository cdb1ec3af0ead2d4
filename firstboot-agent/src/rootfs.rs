//! The node's filesystem as seen through `--root`: every absolute path the
//! agent uses is joined onto the root, and every write is atomic.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use node_spec::atomic::{self, AtomicError, Placement};

use crate::leftovers::{temp_prefix, AGENT_TEMP};
use crate::message::io_cause;

/// A file operation that failed, with the path it was about. The cause is
/// part of the message, not a `source()` (see [`crate::message`]).
#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {}", path.display(), io_cause(cause))]
pub struct FileError {
    pub action: &'static str,
    pub path: PathBuf,
    pub cause: io::Error,
}

impl FileError {
    pub fn new(action: &'static str, path: impl Into<PathBuf>, cause: io::Error) -> Self {
        Self {
            action,
            path: path.into(),
            cause,
        }
    }
}

/// The root directory the agent works in (`/` on a node).
#[derive(Debug, Clone)]
pub struct Root {
    dir: PathBuf,
}

impl Root {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether this is the running system's own root (`/` once symlinks
    /// and `..` are resolved).
    pub fn is_live(&self) -> bool {
        fs::canonicalize(&self.dir).is_ok_and(|d| d == Path::new("/"))
    }

    /// `abs` (an absolute path on the node) under this root. `..` is
    /// resolved by name and stops at the root, as `/..` is `/` on the node:
    /// a path from metadata (`ds=nocloud;s=/../../etc`) cannot climb out of
    /// `--root`.
    pub fn path(&self, abs: impl AsRef<Path>) -> PathBuf {
        let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
        for c in abs.as_ref().components() {
            match c {
                Component::Normal(name) => parts.push(name),
                Component::ParentDir => {
                    parts.pop();
                }
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
        let mut path = self.dir.clone();
        path.extend(parts);
        path
    }

    /// `abs` under this root with the links along it followed inside the
    /// root ([`Root::resolve`]): what reading `abs` on the node reads. Under
    /// `--root`, `/etc/resolv.conf -> /run/…` is the root's `/run`, not this
    /// machine's.
    pub fn real_path(&self, abs: impl AsRef<Path>) -> PathBuf {
        self.path(self.resolve(abs))
    }

    /// Read a text file, links followed inside the root; `Ok(None)` when it
    /// does not exist.
    pub fn read_optional(&self, abs: impl AsRef<Path>) -> Result<Option<String>, FileError> {
        let path = self.real_path(abs);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(FileError::new("reading", path, e)),
        }
    }

    /// Whether `abs` exists on the node, links followed inside the root.
    pub fn exists(&self, abs: impl AsRef<Path>) -> bool {
        self.real_path(abs).exists()
    }

    /// Write a file atomically (see [`write_atomic`]).
    pub fn write_atomic(
        &self,
        abs: impl AsRef<Path>,
        content: &[u8],
        mode: u32,
    ) -> Result<(), FileError> {
        write_atomic(&self.path(abs), content, mode)
    }

    /// The node path `abs` leads to once the symbolic links along it are
    /// followed inside this root: an absolute target is a path on the
    /// node, `..` stops at the root. A chain of more than 40 links is left
    /// where it stopped (the caller then finds no file there).
    pub fn resolve(&self, abs: impl AsRef<Path>) -> PathBuf {
        use std::collections::VecDeque;
        use std::ffi::OsString;
        fn parts(p: &Path) -> impl Iterator<Item = Option<OsString>> + '_ {
            p.components().filter_map(|c| match c {
                Component::Normal(n) => Some(Some(n.to_owned())),
                Component::ParentDir => Some(None),
                _ => None,
            })
        }
        let mut todo: VecDeque<Option<OsString>> = parts(abs.as_ref()).collect();
        let mut at = PathBuf::from("/");
        let mut links = 0;
        while let Some(part) = todo.pop_front() {
            let Some(name) = part else {
                at.pop();
                continue;
            };
            let next = at.join(&name);
            match fs::read_link(self.path(&next)) {
                Ok(target) if links < 40 => {
                    links += 1;
                    if target.is_absolute() {
                        at = PathBuf::from("/");
                    }
                    for p in parts(&target).collect::<Vec<_>>().into_iter().rev() {
                        todo.push_front(p);
                    }
                }
                _ => at = next,
            }
        }
        at
    }

    pub fn create_dir_all(&self, abs: impl AsRef<Path>) -> Result<PathBuf, FileError> {
        let path = self.path(abs);
        fs::create_dir_all(&path).map_err(|e| FileError::new("creating directory", &path, e))?;
        Ok(path)
    }
}

/// Write `content` to `path` so that a reader sees either the old file or the
/// whole new one: a temp file in the same directory (created 0600, so a secret
/// is never readable by others even briefly), fsync, chmod, rename, fsync the
/// directory. The temp file is named `.firstboot-agent-<pid>-<random>`, so a
/// later run can tell one left by a killed run ([`crate::leftovers`]).
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> Result<(), FileError> {
    write_atomic_owned(path, content, mode, None)
}

/// [`write_atomic`], the file given to `owner` (uid, gid) before it is
/// renamed into place, so it never appears with the wrong owner.
pub fn write_atomic_owned(
    path: &Path,
    content: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), FileError> {
    let prefix = temp_prefix(AGENT_TEMP);
    let how = Placement::new(&prefix, mode).owner(owner).create_dir();
    atomic::write(path, content, how).map_err(file_error)
}

fn file_error(e: AtomicError) -> FileError {
    FileError::new(e.action, e.path, e.source)
}

/// fsync a directory so a rename in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), FileError> {
    atomic::sync_dir(dir).map_err(file_error)
}

/// Replace `link` with a symlink to `target`, atomically.
pub fn symlink_atomic(target: &Path, link: &Path) -> Result<(), FileError> {
    let dir = link
        .parent()
        .ok_or_else(|| FileError::new("linking", link, io::ErrorKind::InvalidInput.into()))?;
    let name = link.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        "{}link-{}",
        temp_prefix(AGENT_TEMP),
        name.unwrap_or_default()
    ));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(|e| FileError::new("linking", &tmp, e))?;
    fs::rename(&tmp, link).map_err(|e| FileError::new("renaming into place", link, e))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn paths_stay_below_the_root() {
        let root = Root::new("/srv/node");
        assert_eq!(root.path("/etc/hosts"), Path::new("/srv/node/etc/hosts"));
        assert_eq!(
            root.path("/../../etc/passwd"),
            Path::new("/srv/node/etc/passwd")
        );
        assert_eq!(root.path("/a/./b/../../../c"), Path::new("/srv/node/c"));
        assert_eq!(root.path("/"), Path::new("/srv/node"));
        assert_eq!(Root::new("/").path("/x/../y"), Path::new("/y"));
    }

    #[test]
    fn reads_follow_links_inside_the_root_not_onto_this_machine() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        root.write_atomic(
            "/run/systemd/resolve/stub-resolv.conf",
            b"nameserver 127.0.0.53\n",
            0o644,
        )
        .unwrap();
        root.create_dir_all("/etc").unwrap();
        std::os::unix::fs::symlink(
            "/run/systemd/resolve/stub-resolv.conf",
            root.path("/etc/resolv.conf"),
        )
        .unwrap();
        // An absolute link to a file this machine has and the root lacks.
        std::os::unix::fs::symlink("/proc/self/status", root.path("/etc/host-file")).unwrap();
        assert_eq!(
            root.read_optional("/etc/resolv.conf").unwrap().as_deref(),
            Some("nameserver 127.0.0.53\n")
        );
        assert_eq!(root.read_optional("/etc/host-file").unwrap(), None);
        assert!(!root.exists("/etc/host-file"));
        assert!(root.exists("/etc/resolv.conf"));
    }

    #[test]
    fn atomic_write_sets_mode_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        root.write_atomic("/etc/x/secret.env", b"K3S_TOKEN='a'\n", 0o600)
            .unwrap();
        let p = root.path("/etc/x/secret.env");
        assert_eq!(fs::read_to_string(&p).unwrap(), "K3S_TOKEN='a'\n");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn file_errors_name_the_path_and_the_cause_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        std::fs::create_dir_all(root.path("/x/state.json")).unwrap();
        let e = root.read_optional("/x/state.json").unwrap_err();
        let shown = format!(
            "{:#}",
            anyhow::Error::from(e).context("reading the agent state")
        );
        assert_eq!(
            shown,
            format!(
                "reading the agent state: reading {}/x/state.json: Is a directory — a directory is in the way; move it aside",
                dir.path().display()
            )
        );
    }

    #[test]
    fn root_joins_absolute_paths() {
        let root = Root::new("/tmp/r");
        assert_eq!(root.path("/etc/hostname"), Path::new("/tmp/r/etc/hostname"));
        assert!(!root.is_live());
        assert!(Root::new("/").is_live());
        assert!(Root::new("/tmp/..").is_live());
        assert!(Root::new("//").is_live());
    }

    #[test]
    fn links_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        fs::create_dir_all(root.path("/usr/lib/systemd")).unwrap();
        fs::create_dir_all(root.path("/var/home/ann")).unwrap();
        std::os::unix::fs::symlink("usr/lib", root.path("/lib")).unwrap();
        std::os::unix::fs::symlink("/var/home", root.path("/home")).unwrap();
        std::os::unix::fs::symlink("../../../../../etc", root.path("/var/home/up")).unwrap();
        std::os::unix::fs::symlink("loop", root.path("/loop")).unwrap();
        assert_eq!(
            root.resolve("/lib/systemd/x"),
            Path::new("/usr/lib/systemd/x")
        );
        assert_eq!(
            root.resolve("/home/ann/.ssh"),
            Path::new("/var/home/ann/.ssh")
        );
        assert_eq!(root.resolve("/home/up/passwd"), Path::new("/etc/passwd"));
        assert_eq!(root.resolve("/a/../b"), Path::new("/b"));
        assert_eq!(root.resolve("/loop"), Path::new("/loop"));
    }

    #[test]
    fn atomic_write_can_set_the_owner() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let me = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        write_atomic_owned(&p, b"x", 0o600, Some(me)).unwrap();
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (me.0, me.1, 0o600));
    }

    #[test]
    fn symlink_replaces_existing() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("kubectl");
        fs::write(&link, "old").unwrap();
        symlink_atomic(Path::new("k3s"), &link).unwrap();
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("k3s"));
    }
}
