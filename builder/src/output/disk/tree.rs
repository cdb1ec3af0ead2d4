//! Apply a [`Layer`] to a mounted root filesystem: the same operations, in
//! the same order and with the same rules as the debugfs script
//! ([`super::debugfs_script`]) — missing parents made 0755 root:root, a
//! non-directory in the way replaced, a directory in the way refused, an
//! ancestor that is not a directory refused, times set to the op's mtime.
//!
//! The image is untrusted and mounted on the build host: no path is ever
//! resolved through a symbolic link of the image (a link `etc -> /etc`
//! must not make the build write to the host). Each component is checked
//! with `lstat` before it is used, and the last one is created with
//! `O_NOFOLLOW`/`AT_SYMLINK_NOFOLLOW`. Nothing else writes to the private
//! mount meanwhile, so the check holds while the build uses it.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;

use super::debugfs::check_image_path;
use crate::layer::{glob_component, Content, Layer, Meta, Op};

/// Apply `layer` below `root` (a mount point).
pub fn apply_to_tree(root: &Path, layer: &Layer) -> Result<()> {
    for op in &layer.ops {
        check_image_path(op.path())?;
        match op {
            Op::Remove { pattern } => remove(root, pattern)?,
            Op::Mkdir { path, meta } => {
                let p = parent_dirs(root, path, meta.mtime)?;
                match fs::symlink_metadata(&p) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        fs::remove_file(&p).with_context(|| format!("replacing {path}"))?;
                        mkdir(&p, path)?;
                    }
                    Err(_) => mkdir(&p, path)?,
                }
                set_meta(&p, Some(meta.mode), meta, path)?;
            }
            Op::WriteFile {
                path,
                meta,
                content,
            } => {
                let p = parent_dirs(root, path, meta.mtime)?;
                clear(&p, path)?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&p)
                    .with_context(|| format!("creating {path} in the image"))?;
                match content {
                    Content::Inline(bytes) => f.write_all(bytes),
                    Content::HostFile { path: src, .. } => fs::File::open(src)
                        .and_then(|mut s| std::io::copy(&mut s, &mut f).map(drop)),
                }
                .with_context(|| format!("writing {path} in the image"))?;
                drop(f);
                set_meta(&p, Some(meta.mode), meta, path)?;
            }
            Op::Symlink { path, target, meta } => {
                if target.is_empty() {
                    bail!("cannot write `{path}`: empty symlink target");
                }
                let p = parent_dirs(root, path, meta.mtime)?;
                clear(&p, path)?;
                std::os::unix::fs::symlink(target, &p)
                    .with_context(|| format!("creating the link {path} in the image"))?;
                set_meta(&p, None, meta, path)?;
            }
        }
    }
    Ok(())
}

/// The contents of the regular file `path` below `root`, or `None` when it
/// is missing, is not a regular file, or any component is a link: a link in
/// the image may point anywhere on the build host.
pub fn read_in_tree(root: &Path, path: &str) -> Result<Option<Vec<u8>>> {
    let Some(p) = regular_file_in_tree(root, path) else {
        return Ok(None);
    };
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&p)
        .with_context(|| format!("opening {path} in the image"))?;
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut &f, &mut buf)
        .with_context(|| format!("reading {path} in the image"))?;
    Ok(Some(buf))
}

/// `root/path` when it is a regular file reached through real directories
/// only (no link, no `..`).
pub fn regular_file_in_tree(root: &Path, path: &str) -> Option<PathBuf> {
    let mut p = root.to_path_buf();
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        if comp == ".." || comp == "." {
            return None;
        }
        p.push(comp);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() || m.is_file() => {}
            _ => return None,
        }
    }
    fs::symlink_metadata(&p)
        .is_ok_and(|m| m.is_file())
        .then_some(p)
}

/// `root/path`, every ancestor a real directory (missing ones created
/// 0755 root:root with `mtime`).
fn parent_dirs(root: &Path, path: &str, mtime: u64) -> Result<PathBuf> {
    let comps: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut p = root.to_path_buf();
    let mut shown = String::new();
    for comp in &comps[..comps.len() - 1] {
        p.push(comp);
        shown.push('/');
        shown.push_str(comp);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!(
                "cannot write `{path}`: its ancestor {shown} is not a directory in the image \
                 (a symbolic link is never followed)"
            ),
            Err(_) => {
                mkdir(&p, &shown)?;
                let meta = Meta {
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    mtime,
                };
                set_meta(&p, Some(0o755), &meta, &shown)?;
            }
        }
    }
    p.push(comps[comps.len() - 1]);
    Ok(p)
}

fn mkdir(p: &Path, shown: &str) -> Result<()> {
    fs::create_dir(p).with_context(|| format!("creating the directory {shown} in the image"))
}

/// Remove a non-directory in the way of a new entry.
fn clear(p: &Path, path: &str) -> Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => bail!("cannot write `{path}`: a directory is in the way"),
        Ok(_) => fs::remove_file(p).with_context(|| format!("replacing {path} in the image")),
        Err(_) => Ok(()),
    }
}

/// Owner first (chown clears set-id bits), then mode, then times.
fn set_meta(p: &Path, mode: Option<u32>, meta: &Meta, shown: &str) -> Result<()> {
    std::os::unix::fs::lchown(p, Some(meta.uid), Some(meta.gid))
        .with_context(|| format!("setting the owner of {shown}"))?;
    if let Some(mode) = mode {
        fs::set_permissions(p, fs::Permissions::from_mode(mode & 0o7777))
            .with_context(|| format!("setting the mode of {shown}"))?;
    }
    let t = TimeSpec::new(meta.mtime as i64, 0);
    utimensat(None, p, &t, &t, UtimensatFlags::NoFollowSymlink)
        .with_context(|| format!("setting the times of {shown}"))?;
    Ok(())
}

/// Every entry matching `pattern` (`*` within a component), with what is
/// below it. Directories on the way are entered only if they are real
/// directories.
fn remove(root: &Path, pattern: &str) -> Result<()> {
    let mut hits = vec![root.to_path_buf()];
    for comp in pattern.trim_matches('/').split('/') {
        let mut next = Vec::new();
        for dir in hits {
            if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            if !comp.contains('*') {
                let p = dir.join(comp);
                if fs::symlink_metadata(&p).is_ok() {
                    next.push(p);
                }
                continue;
            }
            let entries =
                fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?;
            for e in entries {
                let e = e.with_context(|| format!("listing {}", dir.display()))?;
                if glob_component(comp, &e.file_name().to_string_lossy()) {
                    next.push(e.path());
                }
            }
        }
        hits = next;
    }
    hits.sort();
    for p in hits {
        let shown = p.strip_prefix(root).unwrap_or(&p).display().to_string();
        let m = fs::symlink_metadata(&p).with_context(|| format!("reading /{shown}"))?;
        if m.is_dir() {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        }
        .with_context(|| format!("removing /{shown} from the image"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn meta(mode: u32) -> Meta {
        Meta {
            mode,
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
        }
    }

    #[test]
    fn applies_ops_like_the_debugfs_script() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        fs::create_dir_all(r.join("etc/ssh")).unwrap();
        fs::write(r.join("etc/ssh/ssh_host_rsa_key"), "secret").unwrap();
        fs::write(r.join("etc/ssh/sshd_config"), "Port 22").unwrap();
        fs::create_dir_all(r.join("var/lib/cloud/instances/i-1")).unwrap();
        fs::write(r.join("var/lib/cloud/instances/i-1/obj.pkl"), "x").unwrap();
        fs::write(r.join("etc/machine-id"), "0123").unwrap();
        let layer = Layer {
            ops: vec![
                Op::WriteFile {
                    path: "/etc/machine-id".into(),
                    meta: meta(0o444),
                    content: Content::Inline(Vec::new()),
                },
                Op::WriteFile {
                    path: "/opt/k3s/bin/tool".into(),
                    meta: meta(0o755),
                    content: Content::Inline(b"#!/bin/sh\n".to_vec()),
                },
                Op::Symlink {
                    path: "/usr/local/bin/k3s".into(),
                    target: "/opt/k3s/bin/tool".into(),
                    meta: meta(0o777),
                },
                Op::Remove {
                    pattern: "/etc/ssh/ssh_host_*".into(),
                },
                Op::Remove {
                    pattern: "/var/lib/cloud/instances/*".into(),
                },
            ],
        };
        apply_to_tree(r, &layer).unwrap();
        assert_eq!(fs::read(r.join("etc/machine-id")).unwrap(), b"");
        let m = fs::metadata(r.join("etc/machine-id")).unwrap();
        assert_eq!((m.mode() & 0o7777, m.mtime()), (0o444, 1_700_000_000));
        let m = fs::metadata(r.join("opt/k3s/bin/tool")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o755);
        assert_eq!(
            fs::metadata(r.join("opt/k3s")).unwrap().mode() & 0o7777,
            0o755
        );
        assert_eq!(
            fs::read_link(r.join("usr/local/bin/k3s")).unwrap(),
            Path::new("/opt/k3s/bin/tool")
        );
        assert!(!r.join("etc/ssh/ssh_host_rsa_key").exists());
        assert!(r.join("etc/ssh/sshd_config").exists());
        assert!(r.join("var/lib/cloud/instances").is_dir());
        assert!(!r.join("var/lib/cloud/instances/i-1").exists());
    }

    #[test]
    fn never_writes_through_a_link_of_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::os::unix::fs::symlink(outside.path(), r.join("etc")).unwrap();
        fs::create_dir(r.join("bin")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("f"), r.join("bin/f")).unwrap();
        let write = |path: &str| Layer {
            ops: vec![Op::WriteFile {
                path: path.into(),
                meta: meta(0o644),
                content: Content::Inline(b"x".to_vec()),
            }],
        };
        let e = apply_to_tree(r, &write("/etc/firstboot-agent/defaults.yaml")).unwrap_err();
        assert!(e.to_string().contains("/etc is not a directory"), "{e:#}");
        // A link as the last component is replaced, not written through.
        apply_to_tree(r, &write("/bin/f")).unwrap();
        assert!(fs::symlink_metadata(r.join("bin/f")).unwrap().is_file());
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
        let rm = Layer {
            ops: vec![Op::Remove {
                pattern: "/etc/*".into(),
            }],
        };
        fs::write(outside.path().join("keep"), "x").unwrap();
        apply_to_tree(r, &rm).unwrap();
        assert!(outside.path().join("keep").exists());
    }
}
