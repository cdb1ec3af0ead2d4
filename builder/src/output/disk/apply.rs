//! Apply a [`Layer`] to an ext4 filesystem inside a raw disk image with
//! `debugfs -w` on `image?offset=N`; [`check_fs`] then checks the result
//! with `e2fsck -fn`. No mount, no loop device, no root.
//!
//! `debugfs` needs to know what already exists (to replace files, remove
//! subtrees and create missing parents), so the directories the layer
//! touches are listed first: one `debugfs -f` run per tree level, every
//! `ls -p` of that level batched into its script.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context, Result};

use super::debugfs::quote;
use super::{debugfs_errors, debugfs_script, parse_ls_p, ListedEntry};
use crate::command::{run_command, CommandError};
use crate::layer::{Layer, Op};

/// The raw image's file name inside its directory.
pub const RAW_NAME: &str = "disk.raw";

/// An ext4 filesystem at `offset` in the raw image `dir/disk.raw`.
///
/// e2fsprogs address it as `disk.raw?offset=N` and split that at the first
/// `?`, so every tool runs inside `dir` and names the image (and its
/// scripts and staged files) relatively: a `?`, `"` or space in the output
/// directory's path cannot break a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4At {
    pub dir: PathBuf,
    pub offset: u64,
}

impl Ext4At {
    pub fn image(&self) -> PathBuf {
        self.dir.join(RAW_NAME)
    }

    /// `disk.raw?offset=N`, relative to [`Ext4At::dir`].
    pub fn spec(&self) -> String {
        format!("{RAW_NAME}?offset={}", self.offset)
    }

    /// `tool` to run on this filesystem: inside `dir`, never paging.
    pub fn command(&self, tool: &Path) -> Command {
        let mut c = Command::new(tool);
        // Zeroing writes zeros rather than punching a hole: a working copy
        // holding the metadata only tells copied blocks from written ones by
        // its holes (`super::working`).
        c.current_dir(&self.dir)
            .env("DEBUGFS_PAGER", "__none__")
            .env("PAGER", "__none__")
            .env("UNIX_IO_NOZEROOUT", "1");
        c
    }
}

/// Apply `layer` to the filesystem `fs`; its directory holds the script
/// and the staged inline files. The caller checks the result with
/// [`check_fs`]. Returns what the base had where the layer writes (the
/// listing the script was made from).
pub fn apply_layer(
    debugfs: &Path,
    fs: &Ext4At,
    layer: &Layer,
    cancel: &AtomicBool,
) -> Result<Vec<ListedEntry>> {
    let listing = list_for_layer(debugfs, fs, layer, cancel)?;
    let paths: HashSet<&str> = listing.iter().map(|e| e.path.as_str()).collect();
    let exists = |p: &str| p == "/" || paths.contains(p);

    let stage = fs.dir.join("stage");
    std::fs::create_dir_all(&stage)
        .with_context(|| format!("creating staging directory {}", stage.display()))?;
    // Relative: debugfs runs inside `fs.dir`.
    let script = debugfs_script(layer, &exists, &listing, Path::new("stage"))?;
    for (path, bytes) in &script.staged {
        let p = fs.dir.join(path);
        std::fs::write(&p, bytes).with_context(|| format!("staging {}", p.display()))?;
    }
    let script_file = fs.dir.join("apply.debugfs");
    std::fs::write(&script_file, &script.script)
        .with_context(|| format!("writing {}", script_file.display()))?;

    let out = run_command(
        fs.command(debugfs)
            .args(["-w", "-f", "apply.debugfs"])
            .arg(fs.spec()),
        cancel,
    )?;
    let errors = debugfs_errors(&String::from_utf8_lossy(&out.stderr));
    if !errors.is_empty() {
        let full = errors
            .iter()
            .any(|e| e.contains("Could not allocate") || e.contains("No free space"));
        if full {
            bail!(
                "the root filesystem ran out of space or inodes while the layer was written ({})",
                errors[0]
            );
        }
        bail!(
            "debugfs could not apply the layer:\n  {}",
            errors.join("\n  ")
        );
    }
    Ok(listing)
}

/// `e2fsck -fn`: fail unless the filesystem is consistent.
pub fn check_fs(e2fsck: &Path, fs: &Ext4At, cancel: &AtomicBool) -> Result<()> {
    match run_command(fs.command(e2fsck).args(["-f", "-n"]).arg(fs.spec()), cancel) {
        Ok(_) => Ok(()),
        Err(e @ CommandError::Interrupted { .. }) => Err(e.into()),
        Err(e) => {
            Err(anyhow::Error::new(e)
                .context("the edited root filesystem does not pass `e2fsck -fn`"))
        }
    }
}

/// Every entry the debugfs script needs to know about: the ancestors of
/// each path the layer writes (non-recursive) and the subtree below each
/// removal pattern's fixed prefix.
fn list_for_layer(
    debugfs: &Path,
    fs: &Ext4At,
    layer: &Layer,
    cancel: &AtomicBool,
) -> Result<Vec<ListedEntry>> {
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
        let found = list_dirs(debugfs, fs, &dirs, cancel)?;
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
    Ok(entries
        .into_iter()
        .map(|(path, is_dir)| ListedEntry { path, is_dir })
        .collect())
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
    fs: &Ext4At,
    dirs: &[String],
    cancel: &AtomicBool,
) -> Result<Vec<Option<Vec<super::LsEntry>>>> {
    let mut script = String::new();
    for d in dirs {
        script.push_str("ls -p ");
        script.push_str(&quote(d)?);
        script.push('\n');
    }
    let file = fs.dir.join("list.debugfs");
    std::fs::write(&file, &script).with_context(|| format!("writing {}", file.display()))?;
    let out = run_command(
        fs.command(debugfs)
            .args(["-f", "list.debugfs"])
            .arg(fs.spec()),
        cancel,
    )?;
    // A missing directory is expected (the layer creates it); anything else
    // (a filesystem debugfs cannot open, a damaged directory) is not.
    let unexpected: Vec<String> = debugfs_errors(&String::from_utf8_lossy(&out.stderr))
        .into_iter()
        .filter(|l| !l.contains("File not found by ext2_lookup") && !l.contains("not a directory"))
        .collect();
    if !unexpected.is_empty() {
        bail!(
            "debugfs cannot read the root filesystem:\n  {}",
            unexpected.join("\n  ")
        );
    }
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
