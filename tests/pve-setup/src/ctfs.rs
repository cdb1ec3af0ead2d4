//! The container's filesystem as pct's setup code sees it.
//!
//! pct runs its setup hooks in a forked child chrooted into the rootfs
//! (Setup.pm `protected_call`). This module gets the same view without a
//! chroot: every path is resolved inside the rootfs one component at a time,
//! symlinks followed by hand, absolute targets and `..` clamped at the root
//! (what openat2's RESOLVE_IN_ROOT does). The resolved host path contains no
//! symlinks, so nothing written through it can land outside the rootfs.
//!
//! On top of that sit the file wrappers of Base.pm (`ct_*`), with their
//! `.pve-ignore.<name>` check and, for unprivileged containers, the chown of
//! everything they create to the mapped root (`ct_reset_ownership`).

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, ErrorKind, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Linux's limit on symlinks followed in one lookup (ELOOP).
const MAX_SYMLINKS: u32 = 40;

const PVE_HEAD: &str = "# --- BEGIN PVE ---\n";
const PVE_TAIL: &str = "# --- END PVE ---\n";

/// Options of Base.pm `ct_modify_file`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Modify {
    pub perms: Option<u32>,
    pub replace: bool,
    pub prepend: bool,
    pub delete: bool,
}

/// A container rootfs, seen from inside.
#[derive(Debug)]
pub(crate) struct Ct {
    root: PathBuf,
    /// Host uid/gid of the container's root, for unprivileged containers.
    owner: Option<(u32, u32)>,
    /// Stands in for Perl's `$$` in temporary names.
    pid: u32,
}

fn io_msg(e: &io::Error) -> String {
    // Perl's "$!" texts, without Rust's "(os error N)" suffix.
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

impl Ct {
    pub fn new(root: &Path, owner: Option<(u32, u32)>) -> Result<Ct, String> {
        let root = fs::canonicalize(root)
            .map_err(|e| format!("container rootfs {}: {}", root.display(), io_msg(&e)))?;
        if root == Path::new("/") {
            // Setup.pm new: "no root directory"
            return Err("no root directory".into());
        }
        Ok(Ct {
            root,
            owner,
            pid: std::process::id(),
        })
    }

    #[cfg(test)]
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The host path of `path` (absolute, or relative to the chroot's cwd
    /// `/`). Symlinks are followed in every component; in the last one only
    /// if `follow_last`. Components that do not exist are taken literally.
    pub fn resolve(&self, path: &str, follow_last: bool) -> io::Result<PathBuf> {
        let follow_last = follow_last || path.ends_with('/');
        let mut todo: VecDeque<OsString> = split(OsStr::new(path)).collect();
        let mut stack: Vec<OsString> = Vec::new();
        let mut links = 0;
        while let Some(c) = todo.pop_front() {
            if c == "." {
                continue;
            }
            if c == ".." {
                stack.pop();
                continue;
            }
            let candidate = self.join(&stack).join(&c);
            let is_last = todo.is_empty();
            let is_link = fs::symlink_metadata(&candidate)
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(false);
            if is_link && (follow_last || !is_last) {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::from_raw_os_error(nix::libc::ELOOP));
                }
                let target = fs::read_link(&candidate)?;
                if target.is_absolute() {
                    stack.clear();
                }
                for t in split(target.as_os_str())
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                {
                    todo.push_front(t);
                }
            } else {
                stack.push(c);
            }
        }
        Ok(self.join(&stack))
    }

    fn join(&self, stack: &[OsString]) -> PathBuf {
        let mut p = self.root.clone();
        p.extend(stack);
        p
    }

    fn lmeta(&self, path: &str, follow: bool) -> Option<fs::Metadata> {
        let p = self.resolve(path, follow).ok()?;
        fs::symlink_metadata(p).ok()
    }

    /// The container path of a host path below the root.
    fn ct_path(&self, host: &Path) -> String {
        match host.strip_prefix(&self.root) {
            Ok(rel) if rel.as_os_str().is_empty() => "/".to_owned(),
            Ok(rel) => format!("/{}", rel.display()),
            Err(_) => host.display().to_string(),
        }
    }

    // Cwd abs_path inside the chroot: symlinks resolved, a missing last
    // component kept.
    pub fn abs_path(&self, path: &str) -> String {
        match self.resolve(path, true) {
            Ok(p) => self.ct_path(&p),
            Err(_) => path.to_owned(),
        }
    }

    // Base.pm ct_is_file_ignored: -f "$dir/.pve-ignore.$name"
    pub fn is_file_ignored(&self, path: &str) -> bool {
        let (dir, name) = match path.rfind('/') {
            Some(i) => (&path[..=i], &path[i + 1..]),
            None => ("./", path),
        };
        self.file_exists(&format!("{dir}/.pve-ignore.{name}"))
    }

    // Base.pm ct_file_exists: -f
    pub fn file_exists(&self, path: &str) -> bool {
        self.lmeta(path, true).is_some_and(|m| m.is_file())
    }

    // Base.pm ct_is_directory: -d
    pub fn is_directory(&self, path: &str) -> bool {
        self.lmeta(path, true).is_some_and(|m| m.is_dir())
    }

    // Base.pm ct_is_symlink: -l
    pub fn is_symlink(&self, path: &str) -> bool {
        self.lmeta(path, false)
            .is_some_and(|m| m.file_type().is_symlink())
    }

    // Base.pm ct_is_executable: -x, as root: any execute bit, or a directory.
    pub fn is_executable(&self, path: &str) -> bool {
        self.lmeta(path, true)
            .is_some_and(|m| m.is_dir() || m.mode() & 0o111 != 0)
    }

    // Base.pm ct_readlink
    pub fn readlink(&self, path: &str) -> Option<String> {
        let p = self.resolve(path, false).ok()?;
        fs::read_link(p)
            .ok()
            .map(|t| t.to_string_lossy().into_owned())
    }

    // Base.pm ct_readlink_recursive (at most 10 links)
    pub fn readlink_recursive(&self, path: &str) -> Result<String, String> {
        let mut res = path.to_owned();
        let mut i = 0;
        while self.is_symlink(&res) {
            if i >= 10 {
                return Err(format!(
                    "maximal link depth of 10 for resolving '{path}' reached, abort"
                ));
            }
            let target = self.readlink(&res).unwrap_or_default();
            res = self.abs_path(&target);
            i += 1;
        }
        Ok(res)
    }

    // Base.pm ct_file_get_contents (PVE::Tools file_get_contents)
    pub fn read(&self, path: &str) -> Result<String, String> {
        let p = self
            .resolve(path, true)
            .map_err(|e| format!("unable to open file '{path}' - {}", io_msg(&e)))?;
        let bytes =
            fs::read(&p).map_err(|e| format!("unable to open file '{path}' - {}", io_msg(&e)))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    // Base.pm ct_file_read_firstline (PVE::Tools file_read_firstline): the
    // first line without its newline; None if unreadable or empty.
    pub fn read_firstline(&self, path: &str) -> Option<String> {
        let text = self.read(path).ok()?;
        if text.is_empty() {
            return None;
        }
        Some(text.split('\n').next().unwrap_or_default().to_owned())
    }

    // Base.pm ct_stat
    pub fn stat(&self, path: &str) -> Option<fs::Metadata> {
        self.lmeta(path, true)
    }

    /// Entries of a directory (PVE::Tools dir_glob_foreach's readdir).
    pub fn read_dir(&self, path: &str) -> Vec<String> {
        let Ok(p) = self.resolve(path, true) else {
            return Vec::new();
        };
        let Ok(rd) = fs::read_dir(p) else {
            return Vec::new();
        };
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    // Base.pm ct_reset_ownership, on an already resolved host path; never
    // follows a symlink.
    fn reset_ownership(&self, ct_path: &str, host: &Path) {
        if let Some((uid, gid)) = self.owner {
            if self.is_file_ignored(ct_path) {
                return;
            }
            if let Err(e) = std::os::unix::fs::lchown(host, Some(uid), Some(gid)) {
                eprintln!(
                    "pve-setup: warning: chown {uid}:{gid} {ct_path}: {}",
                    io_msg(&e)
                );
            }
        }
    }

    /// The host path of `path`'s parent directory (resolved) joined with its
    /// last component (not followed): where a rename/unlink/symlink acts.
    fn entry(&self, path: &str) -> io::Result<PathBuf> {
        self.resolve(path, false)
    }

    // Base.pm ct_file_set_contents (PVE::Tools file_set_contents): write
    // "$file.tmp.$$" (mode 0644 unless given, umask applies), rename it over
    // the file (replacing a symlink there), then reset the ownership.
    pub fn set_contents(&self, path: &str, data: &str, perms: Option<u32>) -> Result<(), String> {
        if self.is_file_ignored(path) {
            return Ok(());
        }
        let target = self
            .entry(path)
            .map_err(|e| format!("unable to open file '{path}' - {}", io_msg(&e)))?;
        let tmp_ct = format!("{path}.tmp.{}", self.pid);
        let tmp = PathBuf::from(format!("{}.tmp.{}", target.display(), self.pid));
        let mode = perms.unwrap_or(0o644);
        let mut file = None;
        for _ in 0..3 {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&tmp)
            {
                Ok(f) => {
                    file = Some(f);
                    break;
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    fs::remove_file(&tmp)
                        .map_err(|e| format!("unable to delete old temp file: {}", io_msg(&e)))?;
                }
                Err(e) => {
                    return Err(format!("unable to open file '{tmp_ct}' - {}", io_msg(&e)));
                }
            }
        }
        let mut file = file.ok_or_else(|| format!("unable to open file '{tmp_ct}'"))?;
        let written = file
            .write_all(data.as_bytes())
            .map_err(|e| format!("unable to write '{tmp_ct}' - {}", io_msg(&e)));
        drop(file);
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        if let Err(e) = fs::rename(&tmp, &target) {
            let _ = fs::remove_file(&tmp);
            return Err(format!(
                "unable to rename '{tmp_ct}' to '{path}' - {}",
                io_msg(&e)
            ));
        }
        self.reset_ownership(path, &target);
        Ok(())
    }

    // Base.pm ct_modify_file: replace, or add, the `# --- BEGIN PVE ---` ..
    // `# --- END PVE ---` block of a file.
    pub fn modify_file(&self, path: &str, data: &str, opts: Modify) -> Result<(), String> {
        if self.is_file_ignored(path) {
            return Ok(());
        }
        let mut data = data.to_owned();
        if !data.is_empty() && !data.ends_with('\n') {
            data.push('\n');
        }
        if !self.file_exists(path) {
            if !data.is_empty() {
                self.set_contents(path, &format!("{PVE_HEAD}{data}{PVE_TAIL}"), opts.perms)?;
            }
            return Ok(());
        }
        let old = self.read(path)?;
        let mut lines = perl_split_lines(&old);
        let mut beg = None;
        let mut end = None;
        for (i, line) in lines.iter().enumerate() {
            if beg.is_none() && is_marker(line, "BEGIN", false) {
                beg = Some(i);
            }
            if end.is_none() && beg.is_some() && is_marker(line, "END", true) {
                end = Some(i);
            }
            if beg.is_some() && end.is_some() {
                break;
            }
        }
        if let (Some(b), Some(e)) = (beg, end) {
            let block = if !data.is_empty() {
                format!("{PVE_HEAD}{data}{}", PVE_TAIL.trim_end_matches('\n'))
            } else {
                if b == 0 && e == lines.len() - 1 {
                    if opts.delete {
                        self.unlink(path);
                    }
                    return Ok(());
                }
                // pct keeps the tail's newline here, leaving an empty line.
                format!("{PVE_HEAD}{PVE_TAIL}")
            };
            lines.splice(b..=e, [block]);
            self.set_contents(path, &(lines.join("\n") + "\n"), None)
        } else if !data.is_empty() {
            let mut content = lines.join("\n");
            if content.ends_with('\n') {
                content.pop();
            }
            content.push('\n');
            let block = format!("{PVE_HEAD}{data}{PVE_TAIL}");
            let new = if opts.replace {
                block
            } else if opts.prepend {
                block + &content
            } else {
                content + &block
            };
            self.set_contents(path, &new, opts.perms)
        } else {
            Ok(())
        }
    }

    // Base.pm ct_unlink (errors ignored, as CORE::unlink's result is)
    pub fn unlink(&self, path: &str) {
        if self.is_file_ignored(path) {
            return;
        }
        if let Ok(p) = self.entry(path) {
            let _ = fs::remove_file(p);
        }
    }

    // Base.pm ct_rename
    pub fn rename(&self, old: &str, new: &str) -> bool {
        if self.is_file_ignored(new) {
            return false;
        }
        match (self.entry(old), self.entry(new)) {
            (Ok(o), Ok(n)) => fs::rename(o, n).is_ok(),
            _ => false,
        }
    }

    // Base.pm ct_mkdir (mode 0777 when not given; umask applies)
    pub fn mkdir(&self, path: &str, mode: Option<u32>) -> bool {
        let Ok(p) = self.entry(path) else {
            return false;
        };
        let ok = fs::DirBuilder::new()
            .mode(mode.unwrap_or(0o777))
            .create(&p)
            .is_ok();
        if ok {
            self.reset_ownership(path, &p);
        }
        ok
    }

    // Base.pm ct_make_path (File::Path make_path, owner set for new dirs)
    pub fn make_path(&self, path: &str) -> Result<(), String> {
        let mut prefix = String::new();
        for c in path.split('/').filter(|c| !c.is_empty()) {
            prefix.push('/');
            prefix.push_str(c);
            if self.is_directory(&prefix) {
                continue;
            }
            // mkdir does not follow a (dangling) symlink: EEXIST, as in pct
            let p = self
                .entry(&prefix)
                .map_err(|e| format!("mkdir {prefix}: {}", io_msg(&e)))?;
            fs::DirBuilder::new()
                .mode(0o777)
                .create(&p)
                .map_err(|e| format!("mkdir {prefix}: {}", io_msg(&e)))?;
            if let Some((uid, gid)) = self.owner {
                std::os::unix::fs::lchown(&p, Some(uid), Some(gid))
                    .map_err(|e| format!("chown {prefix}: {}", io_msg(&e)))?;
            }
        }
        Ok(())
    }

    // Base.pm ct_symlink: the target is stored as given (a path inside the
    // container); lchown'd to the mapped root.
    pub fn symlink(&self, target: &str, link: &str) -> bool {
        if self.is_file_ignored(link) {
            return false;
        }
        let Ok(p) = self.entry(link) else {
            return false;
        };
        if std::os::unix::fs::symlink(target, &p).is_err() {
            return false;
        }
        if let Some((uid, gid)) = self.owner {
            let _ = std::os::unix::fs::lchown(&p, Some(uid), Some(gid));
        }
        true
    }

    /// Write a file with a given mode and owner through a temporary file,
    /// as Base.pm `$replacepw` does with ct_open_file_write + chmod/chown.
    pub fn replace_keeping_meta(
        &self,
        path: &str,
        data: &str,
        meta: &fs::Metadata,
    ) -> Result<(), String> {
        let tmp_ct = format!("{path}.{}", self.pid);
        let tmp = self
            .entry(&tmp_ct)
            .map_err(|e| format!("unable to open file '{tmp_ct}' - {}", io_msg(&e)))?;
        let write = || -> io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&tmp)?;
            f.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()))?;
            f.write_all(data.as_bytes())
        };
        if self.is_file_ignored(&tmp_ct) {
            return Ok(());
        }
        match write() {
            Ok(()) => {
                self.rename(&tmp_ct, path);
                self.unlink(&tmp_ct);
                Ok(())
            }
            Err(e) => {
                self.unlink(&tmp_ct);
                Err(format!("unable to write '{tmp_ct}' - {}", io_msg(&e)))
            }
        }
    }
}

fn split(path: &OsStr) -> impl Iterator<Item = OsString> + '_ {
    path.as_bytes()
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty())
        .map(|c| OsStr::from_bytes(c).to_owned())
}

/// Perl's `split(/\n/, $s)`: trailing empty fields dropped.
pub(crate) fn perl_split_lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.split('\n').map(str::to_owned).collect();
    while v.last().is_some_and(|l| l.is_empty()) {
        v.pop();
    }
    v
}

// ct_modify_file's markers: /^#\s*---\s*BEGIN\s*PVE\s*/ and (case-insensitive)
// /^#\s*---\s*END\s*PVE\s*/i
fn is_marker(line: &str, word: &str, ignore_case: bool) -> bool {
    let owned;
    let line = if ignore_case {
        owned = line.to_ascii_uppercase();
        owned.as_str()
    } else {
        line
    };
    let Some(rest) = line.strip_prefix('#') else {
        return false;
    };
    let Some(rest) = rest.trim_start().strip_prefix("---") else {
        return false;
    };
    let Some(rest) = rest.trim_start().strip_prefix(word) else {
        return false;
    };
    rest.trim_start().starts_with("PVE")
}

/// Base.pm `remove_pve_sections`: drop everything from the first line
/// starting with the BEGIN marker to the end of the last line starting with
/// the END marker (the Perl regex is greedy across lines).
pub(crate) fn remove_pve_sections(data: &str) -> String {
    let head = PVE_HEAD.trim_end();
    let tail = PVE_TAIL.trim_end();
    let starts: Vec<usize> = std::iter::once(0)
        .chain(data.match_indices('\n').map(|(i, _)| i + 1))
        .filter(|&i| i <= data.len())
        .collect();
    let line_has = |start: usize, marker: &str| {
        data[start..]
            .trim_start_matches([' ', '\t'])
            .starts_with(marker)
    };
    let Some(&b) = starts.iter().find(|&&s| line_has(s, head)) else {
        return data.to_owned();
    };
    let Some(&e) = starts.iter().rev().find(|&&s| s > b && line_has(s, tail)) else {
        return data.to_owned();
    };
    let eol = data[e..].find('\n').map_or(data.len(), |i| e + i);
    format!("{}{}", &data[..b], &data[eol..])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ct() -> (tempfile::TempDir, Ct) {
        let d = tempfile::tempdir().unwrap();
        let ct = Ct::new(d.path(), None).unwrap();
        (d, ct)
    }

    #[test]
    fn symlinks_are_clamped_at_the_root() {
        let (d, ct) = ct();
        let root = ct.root().to_owned();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("/", root.join("etc/evil")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("etc/evil2")).unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("/../../../../tmp", root.join("etc/evil3")).unwrap();
        assert_eq!(
            ct.resolve("/etc/evil/etc/x", true).unwrap(),
            root.join("etc/x")
        );
        assert_eq!(
            ct.resolve("/etc/evil2/etc/x", true).unwrap(),
            root.join("etc/x")
        );
        assert_eq!(
            ct.resolve("/etc/evil3/x", true).unwrap(),
            root.join("tmp/x")
        );
        assert_eq!(
            ct.resolve("/lib/systemd", true).unwrap(),
            root.join("usr/lib/systemd")
        );
        assert_eq!(ct.resolve("../../etc", true).unwrap(), root.join("etc"));
        assert_eq!(
            ct.resolve("/etc/evil", false).unwrap(),
            root.join("etc/evil")
        );

        ct.set_contents("/etc/evil2/escape", "x", None).unwrap();
        assert!(root.join("escape").is_file());
        ct.make_path("/etc/evil/newdir/sub").unwrap();
        assert!(root.join("newdir/sub").is_dir());
        assert!(ct.symlink("/x", "/etc/evil/link"));
        assert!(root.join("link").is_symlink());
        drop(d);
    }

    #[test]
    fn symlink_loops_fail() {
        let (_d, ct) = ct();
        std::os::unix::fs::symlink("b", ct.root().join("a")).unwrap();
        std::os::unix::fs::symlink("a", ct.root().join("b")).unwrap();
        assert!(ct.resolve("/a/x", true).is_err());
        assert!(ct.set_contents("/a/x", "y", None).is_err());
    }

    #[test]
    fn set_contents_replaces_a_symlink() {
        let (_d, ct) = ct();
        let root = ct.root();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(root.join("run")).unwrap();
        fs::write(root.join("run/stub"), "old\n").unwrap();
        std::os::unix::fs::symlink("../run/stub", root.join("etc/resolv.conf")).unwrap();
        assert!(ct.file_exists("/etc/resolv.conf"));
        ct.set_contents("/etc/resolv.conf", "new\n", None).unwrap();
        assert!(!root.join("etc/resolv.conf").is_symlink());
        assert_eq!(fs::read_to_string(root.join("run/stub")).unwrap(), "old\n");
        let m = fs::metadata(root.join("etc/resolv.conf")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o644);
    }

    #[test]
    fn ignore_files() {
        let (_d, ct) = ct();
        let root = ct.root();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/.pve-ignore.hosts"), "").unwrap();
        ct.set_contents("/etc/hosts", "x", None).unwrap();
        assert!(!root.join("etc/hosts").exists());
        fs::write(root.join("etc/hosts"), "keep").unwrap();
        ct.unlink("/etc/hosts");
        ct.modify_file("/etc/hosts", "y", Modify::default())
            .unwrap();
        assert_eq!(fs::read_to_string(root.join("etc/hosts")).unwrap(), "keep");
    }

    #[test]
    fn modify_file_sections() {
        let (_d, ct) = ct();
        let f = "/f";
        ct.modify_file(f, "a", Modify::default()).unwrap();
        assert_eq!(ct.read(f).unwrap(), format!("{PVE_HEAD}a\n{PVE_TAIL}"));
        ct.set_contents(
            f,
            "x\n# --- BEGIN PVE ---\nold\n# --- END PVE ---\ny\n",
            None,
        )
        .unwrap();
        ct.modify_file(f, "b\n", Modify::default()).unwrap();
        assert_eq!(
            ct.read(f).unwrap(),
            format!("x\n{PVE_HEAD}b\n{PVE_TAIL}y\n")
        );
        ct.set_contents(f, "keep\n", None).unwrap();
        ct.modify_file(f, "c", Modify::default()).unwrap();
        assert_eq!(
            ct.read(f).unwrap(),
            format!("keep\n{PVE_HEAD}c\n{PVE_TAIL}")
        );
        ct.set_contents(f, "keep\n", None).unwrap();
        let replace = Modify {
            replace: true,
            ..Modify::default()
        };
        ct.modify_file(f, "d", replace).unwrap();
        assert_eq!(ct.read(f).unwrap(), format!("{PVE_HEAD}d\n{PVE_TAIL}"));
        let delete = Modify {
            delete: true,
            ..Modify::default()
        };
        ct.modify_file(f, "", delete).unwrap();
        assert!(!ct.file_exists(f));
    }

    #[test]
    fn pve_sections_removed() {
        let t = "a\n# --- BEGIN PVE ---\n127.0.0.1 x\n# --- END PVE ---\nb\n";
        assert_eq!(remove_pve_sections(t), "a\n\nb\n");
        assert_eq!(remove_pve_sections("a\nb\n"), "a\nb\n");
    }
}
