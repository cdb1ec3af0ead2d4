//! Temporary files and directories a build leaves while it runs: the
//! template's `.NAME.PID.XXXXXX.partial` beside the artifacts, the disk's
//! `.imgbuild-disk-PID-XXXXXX` work directory and its memory-backed scratch,
//! the cache's `tmp/download-PID-XXXXXX.partial` and `tmp/bootstrap-PID-…`.
//!
//! Each name carries the pid of the process that owns it. A build that is
//! killed outright (SIGKILL, power loss, a second Ctrl-C before this
//! existed) cannot clean up, so every build sweeps first: an entry whose
//! owner is gone goes at once; an entry without a pid in its name (written
//! by an older imgbuild) goes when it is older than [`STALE_AGE`]. Each
//! removal is logged.
//!
//! A second Ctrl-C exits without unwinding: [`remove_registered`] removes
//! what is registered here first.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Age after which a leftover of unknown owner is removed: no build runs
/// for a day, and a running one keeps its files' modification time fresh.
pub const STALE_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// Who owns a leftover, as its name tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The process with this pid.
    Pid(u32),
    /// An entry of ours whose name has no pid.
    Unknown,
}

/// Whether process `pid` is gone, or its pid now belongs to a program that
/// is not imgbuild. A process of another user (`EPERM`) counts as running.
pub fn owner_gone(pid: u32) -> bool {
    if pid == std::process::id() {
        return false;
    }
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Err(nix::errno::Errno::ESRCH) => true,
        Err(_) => false,
        // Test binaries are `imgbuild-<hash>`; a replaced binary reads
        // `…/imgbuild (deleted)`.
        Ok(()) => fs::read_link(format!("/proc/{pid}/exe"))
            .is_ok_and(|exe| !exe.to_string_lossy().contains("imgbuild")),
    }
}

/// The pid in `name` after `prefix`, up to `end` (`download-` … `-`).
pub fn pid_after(name: &str, prefix: &str, end: char) -> Option<u32> {
    let (pid, _) = name.strip_prefix(prefix)?.split_once(end)?;
    parse_pid(pid)
}

fn parse_pid(digits: &str) -> Option<u32> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Removes the entries of `dir` that `owner_of` claims (by name) and that
/// are stale: owner gone, or owner unknown and older than [`STALE_AGE`].
/// A missing `dir` has nothing to sweep. Returns what was removed.
pub fn sweep(dir: &Path, owner_of: impl Fn(&str) -> Option<Owner>) -> io::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let now = SystemTime::now();
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(owner) = owner_of(&name.to_string_lossy()) else {
            continue;
        };
        let path = entry.path();
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let why = match owner {
            Owner::Pid(pid) if owner_gone(pid) => format!("its build (pid {pid}) is gone"),
            Owner::Pid(_) => continue,
            Owner::Unknown => {
                // A modification time in the future counts as fresh.
                let age = meta
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .unwrap_or_default();
                if age < STALE_AGE {
                    continue;
                }
                format!("it is {} hours old", age.as_secs() / 3600)
            }
        };
        let result = if meta.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match result {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed a leftover of an interrupted build: {why}");
                removed.push(path);
            }
            // Another build swept it first.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// Paths to remove if the process exits without unwinding.
#[derive(Debug)]
pub struct Registry {
    paths: Mutex<Vec<(u64, PathBuf)>>,
    next_id: AtomicU64,
}

/// The process's registry, emptied by [`remove_registered`].
static REGISTRY: Registry = Registry::new();

/// Keeps a path registered while it lives.
#[derive(Debug)]
pub struct Registered<'r> {
    registry: &'r Registry,
    id: u64,
}

impl Registry {
    pub const fn new() -> Self {
        Registry {
            paths: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
        }
    }

    /// Registers `path` (a file or a directory) until the guard is dropped.
    pub fn register(&self, path: &Path) -> Registered<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.paths().push((id, path.to_owned()));
        Registered { registry: self, id }
    }

    fn paths(&self) -> std::sync::MutexGuard<'_, Vec<(u64, PathBuf)>> {
        // A panic elsewhere cannot leave the list half-edited: recover it.
        self.paths.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes every registered path. Returns how many were removed.
    pub fn remove_all(&self) -> usize {
        let paths: Vec<PathBuf> = self.paths().drain(..).map(|(_, p)| p).collect();
        let mut removed = 0;
        for p in paths {
            let result = match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(&p),
                Ok(_) => fs::remove_file(&p),
                Err(_) => continue,
            };
            match result {
                Ok(()) => removed += 1,
                Err(e) => eprintln!("imgbuild: cannot remove {}: {e}", p.display()),
            }
        }
        removed
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.registry.paths().retain(|(id, _)| *id != self.id);
    }
}

/// Registers `path` in the process's registry: removed by
/// [`remove_registered`] until the returned guard is dropped.
pub fn register(path: &Path) -> Registered<'static> {
    REGISTRY.register(path)
}

/// Removes every path registered with [`register`], for an exit that skips
/// destructors (the second Ctrl-C). Returns how many were removed.
pub fn remove_registered() -> usize {
    REGISTRY.remove_all()
}

/// The owner of a template temp file `.NAME.PID.XXXXXX.partial` (or the
/// older `.NAME.XXXXXX.partial`), a disk work directory
/// `.imgbuild-disk-PID-XXXXXX` (or `.imgbuild-disk-XXXXXX`), or a manifest
/// or host config being staged (`.imgbuild-PID-XXXXXX.tmp`, or the older
/// `.imgbuild-XXXXXX.tmp`), in an output directory.
pub fn output_dir_owner(name: &str) -> Option<Owner> {
    if let Some(rest) = name.strip_prefix(".imgbuild-disk-") {
        return Some(match pid_after(rest, "", '-') {
            Some(pid) => Owner::Pid(pid),
            None => Owner::Unknown,
        });
    }
    if let Some(rest) = name.strip_prefix(".imgbuild-") {
        if name.ends_with(".tmp") {
            return Some(pid_after(rest, "", '-').map_or(Owner::Unknown, Owner::Pid));
        }
    }
    let stem = name.strip_prefix('.')?.strip_suffix(".partial")?;
    let (rest, _random) = stem.rsplit_once('.')?;
    let pid = rest.rsplit_once('.').and_then(|(_, pid)| parse_pid(pid));
    Some(match pid {
        Some(pid) => Owner::Pid(pid),
        None => Owner::Unknown,
    })
}

/// Sweeps an output directory before a build writes to it.
pub fn sweep_output_dir(dir: &Path) -> io::Result<Vec<PathBuf>> {
    sweep(dir, output_dir_owner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    /// A pid no process has: beyond the kernel's pid_max.
    const DEAD: u32 = 1 << 30;

    #[test]
    fn owners_are_read_from_names() {
        let t = "debian-12-k3s-worker_1.34.3-k3s1-1_amd64.tar.zst";
        assert_eq!(
            output_dir_owner(&format!(".{t}.4242.AbC123.partial")),
            Some(Owner::Pid(4242))
        );
        assert_eq!(
            output_dir_owner(&format!(".{t}.AbC123.partial")),
            Some(Owner::Unknown)
        );
        assert_eq!(
            output_dir_owner(".imgbuild-disk-77-xyzXYZ"),
            Some(Owner::Pid(77))
        );
        assert_eq!(
            output_dir_owner(".imgbuild-4242-xyzXYZ.tmp"),
            Some(Owner::Pid(4242))
        );
        assert_eq!(
            output_dir_owner(".imgbuild-xyzXYZ.tmp"),
            Some(Owner::Unknown)
        );
        assert_eq!(
            output_dir_owner(".imgbuild-disk-xyzXYZ"),
            Some(Owner::Unknown)
        );
        assert_eq!(
            output_dir_owner(".imgbuild-Ab12cd.tmp"),
            Some(Owner::Unknown)
        );
        for other in [t, ".hidden", "notes.partial", ".x.partial", "manifest.json"] {
            assert_eq!(output_dir_owner(other), None, "{other}");
        }
        assert_eq!(
            pid_after("download-12-abc.partial", "download-", '-'),
            Some(12)
        );
        assert_eq!(pid_after("download-abc.partial", "download-", '-'), None);
    }

    #[test]
    fn liveness() {
        assert!(!owner_gone(std::process::id()));
        assert!(owner_gone(DEAD));
        // pid 0 would address the process group: never "gone".
        assert!(!owner_gone(0));
    }

    #[test]
    fn sweep_removes_dead_owners_and_old_unknowns_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let me = std::process::id();
        let t = "t.tar.zst";
        fs::write(p(&format!(".{t}.{DEAD}.aaaaaa.partial")), "x").unwrap();
        fs::write(p(&format!(".{t}.{me}.bbbbbb.partial")), "x").unwrap();
        fs::write(p(&format!(".{t}.cccccc.partial")), "x").unwrap();
        fs::write(p(&format!(".{t}.dddddd.partial")), "x").unwrap();
        fs::create_dir(p(&format!(".imgbuild-disk-{DEAD}-eeeeee"))).unwrap();
        fs::write(p(&format!(".imgbuild-disk-{DEAD}-eeeeee/disk.raw")), "x").unwrap();
        fs::write(p(t), "finished").unwrap();
        let old = SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
        File::options()
            .write(true)
            .open(p(&format!(".{t}.cccccc.partial")))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let mut removed: Vec<String> = sweep_output_dir(dir.path())
            .unwrap()
            .iter()
            .map(|r| r.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        removed.sort();
        let mut expected = [
            format!(".imgbuild-disk-{DEAD}-eeeeee"),
            format!(".{t}.{DEAD}.aaaaaa.partial"),
            format!(".{t}.cccccc.partial"),
        ];
        expected.sort();
        assert_eq!(removed, expected);
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut expected = [
            format!(".{t}.dddddd.partial"),
            format!(".{t}.{me}.bbbbbb.partial"),
            t.to_owned(),
        ];
        expected.sort();
        assert_eq!(left, expected);
        assert!(sweep_output_dir(&p("missing")).unwrap().is_empty());
    }

    #[test]
    fn registered_paths_are_removed_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.partial");
        let sub = dir.path().join("work");
        let kept = dir.path().join("kept");
        fs::write(&file, "x").unwrap();
        fs::create_dir(&sub).unwrap();
        fs::write(sub.join("inner"), "x").unwrap();
        fs::write(&kept, "x").unwrap();
        // A registry of its own: the process's one holds other tests' files.
        let registry = Registry::new();
        let _a = registry.register(&file);
        let _b = registry.register(&sub);
        drop(registry.register(&kept));
        assert_eq!(registry.remove_all(), 2);
        assert!(!file.exists() && !sub.exists());
        assert!(kept.exists());
    }
}
