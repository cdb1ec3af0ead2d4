//! Apply a [`Layer`] to an ext4 filesystem inside a raw disk image with
//! `debugfs -w` on `image?offset=N`; [`check_fs`] then checks the result
//! with `e2fsck -fn`. No mount, no loop device, no root.
//!
//! `debugfs` needs to know what already exists (to replace files, remove
//! subtrees and create missing parents), so the directories the layer
//! touches are listed first: one `debugfs -f` run per tree level, every
//! `ls -p` of that level batched into its script.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context, Result};

use super::debugfs::quote;
use super::{debugfs_errors, debugfs_script, parse_ls_p, ListedEntry};
use crate::layer::{Layer, Op};
use crate::source::run_command;

/// `image?offset=N`: how e2fsprogs tools address a filesystem at an offset.
pub fn fs_spec(image: &Path, offset: u64) -> OsString {
    let mut s = image.as_os_str().to_owned();
    s.push(format!("?offset={offset}"));
    s
}

/// What [`apply_layer`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Directories listed to learn what exists.
    pub dirs_listed: usize,
    /// Commands in the debugfs script.
    pub commands: usize,
}

/// Apply `layer` to the ext4 filesystem at `offset` in `image`.
/// `work` holds the script and staged inline files. The caller checks the
/// result with [`check_fs`].
pub fn apply_layer(
    debugfs: &Path,
    image: &Path,
    offset: u64,
    layer: &Layer,
    work: &Path,
    cancel: &AtomicBool,
) -> Result<ApplyReport> {
    let spec = fs_spec(image, offset);
    let (listing, dirs_listed) = list_for_layer(debugfs, &spec, layer, cancel)?;
    let paths: HashSet<&str> = listing.iter().map(|e| e.path.as_str()).collect();
    let exists = |p: &str| p == "/" || paths.contains(p);

    let stage = work.join("stage");
    std::fs::create_dir_all(&stage)
        .with_context(|| format!("creating staging directory {}", stage.display()))?;
    let script = debugfs_script(layer, &exists, &listing, &stage)?;
    for (path, bytes) in &script.staged {
        std::fs::write(path, bytes).with_context(|| format!("staging {}", path.display()))?;
    }
    let script_file = work.join("apply.debugfs");
    std::fs::write(&script_file, &script.script)
        .with_context(|| format!("writing {}", script_file.display()))?;

    let out = run_command(
        debugfs_cmd(debugfs)
            .arg("-w")
            .arg("-f")
            .arg(&script_file)
            .arg(&spec),
        cancel,
    )?;
    let errors = debugfs_errors(&String::from_utf8_lossy(&out.stderr));
    if !errors.is_empty() {
        let full = errors
            .iter()
            .any(|e| e.contains("Could not allocate") || e.contains("No free space"));
        if full {
            bail!(
                "the root filesystem is too small for the layer ({}): set a larger `qcow2.size` in the profile",
                errors[0]
            );
        }
        bail!(
            "debugfs could not apply the layer:\n  {}\n(script: {})",
            errors.join("\n  "),
            script_file.display()
        );
    }
    Ok(ApplyReport {
        dirs_listed,
        commands: script.script.lines().count(),
    })
}

/// `e2fsck -fn`: fail unless the filesystem is consistent.
pub fn check_fs(e2fsck: &Path, image: &Path, offset: u64, cancel: &AtomicBool) -> Result<()> {
    run_command(
        Command::new(e2fsck)
            .args(["-f", "-n"])
            .arg(fs_spec(image, offset)),
        cancel,
    )
    .context("the edited root filesystem does not pass `e2fsck -fn`")?;
    Ok(())
}

fn debugfs_cmd(debugfs: &Path) -> Command {
    let mut c = Command::new(debugfs);
    // Never page output into a pager process.
    c.env("DEBUGFS_PAGER", "__none__").env("PAGER", "__none__");
    c
}

/// Every entry the debugfs script needs to know about: the ancestors of
/// each path the layer writes (non-recursive) and the subtree below each
/// removal pattern's fixed prefix.
fn list_for_layer(
    debugfs: &Path,
    spec: &OsString,
    layer: &Layer,
    cancel: &AtomicBool,
) -> Result<(Vec<ListedEntry>, usize)> {
    let mut flat: BTreeSet<String> = BTreeSet::new();
    let mut deep: BTreeSet<String> = BTreeSet::new();
    for op in &layer.ops {
        match op {
            Op::Remove { pattern } => {
                let comps: Vec<&str> = pattern.split('/').filter(|c| !c.is_empty()).collect();
                let fixed = comps
                    .iter()
                    .position(|c| c.contains(['*', '?', '[']))
                    .unwrap_or(comps.len());
                let root = format!("/{}", comps[..fixed].join("/"));
                add_ancestors(&root, &mut flat);
                deep.insert(root);
            }
            Op::Mkdir { path, .. } | Op::WriteFile { path, .. } | Op::Symlink { path, .. } => {
                add_ancestors(path, &mut flat)
            }
        }
    }

    let mut entries: BTreeMap<String, bool> = BTreeMap::new();
    let mut listed = 0;
    // Level by level: the flat directories and deep roots first, then the
    // subdirectories found below deep roots, until none are left.
    let mut level: Vec<(String, bool)> = flat
        .iter()
        .map(|d| (d.clone(), deep.contains(d)))
        .chain(
            deep.iter()
                .filter(|d| !flat.contains(*d))
                .map(|d| (d.clone(), true)),
        )
        .collect();
    while !level.is_empty() {
        let dirs: Vec<String> = level.iter().map(|(d, _)| d.clone()).collect();
        let found = list_dirs(debugfs, spec, &dirs, cancel)?;
        listed += dirs.len();
        let mut next = Vec::new();
        for ((dir, recurse), list) in level.iter().zip(found) {
            let Some(list) = list else { continue };
            for e in list {
                let path = format!("{}/{}", dir.trim_end_matches('/'), e.name);
                if *recurse && e.is_dir && path != "/lost+found" {
                    next.push((path.clone(), true));
                }
                entries.insert(path, e.is_dir);
            }
        }
        // A directory listed flat in this level may also sit below a deep
        // root; listing it twice is harmless, but do not loop.
        next.retain(|(d, _)| !dirs.contains(d));
        level = next;
    }
    Ok((
        entries
            .into_iter()
            .map(|(path, is_dir)| ListedEntry { path, is_dir })
            .collect(),
        listed,
    ))
}

/// `/a/b/c` → `/`, `/a`, `/a/b` into `out`.
fn add_ancestors(path: &str, out: &mut BTreeSet<String>) {
    out.insert("/".into());
    let mut cur = String::new();
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    for c in comps.iter().take(comps.len().saturating_sub(1)) {
        cur.push('/');
        cur.push_str(c);
        out.insert(cur.clone());
    }
}

/// `ls -p` every directory in one debugfs run. `None` for a directory that
/// does not exist (or is not a directory).
fn list_dirs(
    debugfs: &Path,
    spec: &OsString,
    dirs: &[String],
    cancel: &AtomicBool,
) -> Result<Vec<Option<Vec<super::LsEntry>>>> {
    let mut script = String::new();
    for d in dirs {
        script.push_str("ls -p ");
        script.push_str(&quote(d)?);
        script.push('\n');
    }
    let file = tempfile::Builder::new()
        .prefix("imgbuild-ls-")
        .tempfile()
        .context("creating a debugfs script file")?;
    std::fs::write(file.path(), &script).context("writing a debugfs script file")?;
    let out = run_command(
        debugfs_cmd(debugfs).arg("-f").arg(file.path()).arg(spec),
        cancel,
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let sections = split_sections(&stdout);
    if sections.len() != dirs.len() {
        bail!(
            "unexpected debugfs output: {} listings for {} directories",
            sections.len(),
            dirs.len()
        );
    }
    Ok(sections
        .into_iter()
        .map(|s| {
            // An existing directory always lists its `.` entry.
            let exists = s.lines().any(|l| {
                l.strip_prefix('/')
                    .and_then(|l| l.split('/').nth(4))
                    .is_some_and(|name| name == ".")
            });
            exists.then(|| parse_ls_p(&s))
        })
        .collect())
}

/// Split `debugfs -f` stdout into the output of each command: every
/// command is echoed as a `debugfs: CMD` line before its output.
fn split_sections(stdout: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in stdout.lines() {
        if line.starts_with("debugfs: ") {
            out.push(String::new());
        } else if let Some(cur) = out.last_mut() {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_and_sections() {
        let mut s = BTreeSet::new();
        add_ancestors("/etc/ssh/sshd_config", &mut s);
        assert_eq!(
            s.into_iter().collect::<Vec<_>>(),
            vec!["/".to_string(), "/etc".into(), "/etc/ssh".into()]
        );
        let secs = split_sections(
            "debugfs 1.47.0\ndebugfs: ls -p /\n/2/040755/0/0/.//\n/11/040700/0/0/lost+found//\ndebugfs: ls -p /nope\n",
        );
        assert_eq!(secs.len(), 2);
        assert!(secs[0].contains("lost+found"));
        assert!(secs[1].is_empty());
    }
}
