//! Applies a [`Layer`] to a tar stream in one pass, without extracting
//! anything: base members are copied byte for byte or dropped, the layer's
//! entries are written as new members.
//!
//! Ordering rules (each one is what `pct create`'s
//! `tar xpf … --skip-old-files` needs to end up with the layer's result):
//! - Files and symlinks of the layer are appended after the base, in layer order.
//! - Every base member must pass the entry policy (`super::entry_policy`):
//!   nothing that escapes the rootfs, nothing below a symlink.
//! - An added entry is never written through a symlink either: where its
//!   path leads through one (`/lib/x` on merged-usr systems, where `./lib ->
//!   usr/lib`), the link is resolved inside the rootfs, as the container's
//!   kernel resolves it (an absolute target from the rootfs root), and the
//!   entry is written under its real name (`./usr/lib/x`). So it lands where
//!   the container finds it whichever tool unpacks the template, a link in
//!   the base that points at `/etc` cannot make an unpacking host write to
//!   its own `/etc`, and the template passes the same policy as a base.
//! - Missing parents of an added entry are created (0755 root, the entry's
//!   mtime) right before it.
//! - A directory the layer creates is written where it first appears in the
//!   base — at the base's own entry for it, or just before its first base
//!   descendant — or, if the base has neither, in layer order. GNU tar with
//!   `--skip-old-files` ignores a directory entry for a directory that already
//!   exists, so a directory entry after its children would lose its mode,
//!   owner and mtime.
//! - Hard links: see [`RewriteStats::hard_links_deferred`] and
//!   [`RewriteStats::hard_links_dropped`].

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};
use tar::EntryType;

use super::entry_policy::{check_layer_entry, unsafe_member, EntryPolicy};
use super::paths::{ancestors, normalize, resolve_link};
use super::reader::{Member, ReadFailure, TarReader};
use super::writer::{added_entry_head, padding, CountingWriter};
use crate::layer::{Content, Layer, Meta, Op};
use crate::output::OutputError;

/// Check the cancel flag at least this often while copying data.
const CANCEL_CHECK_BYTES: u64 = 4 << 20;
/// Distro identification files larger than this are not captured.
const MAX_CAPTURE: u64 = 64 << 10;
/// Hard links held back until the layer's replacement of their target is out.
const MAX_DEFERRED_LINK_DATA: u64 = 16 << 20;
/// The kernel's limit on symlinks followed in one lookup (`ELOOP`).
const MAX_SYMLINKS: usize = 40;

/// How the base names its members; added entries use the same style.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NameStyle {
    /// `./etc/hostname` (mmdebstrap, Proxmox templates). Also used for an empty base.
    #[default]
    DotSlash,
    /// `etc/hostname`.
    Bare,
}

/// What a rewrite did and found, for the manifest and for distro detection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewriteStats {
    /// Members read from the base (extension headers are part of their member).
    pub entries_in: u64,
    /// Members copied unchanged from the base.
    pub entries_passed: u64,
    /// Base members left out: removed, replaced by the layer, or hard links
    /// to a removed file.
    pub entries_dropped: u64,
    /// Members written for the layer, created parent directories included.
    pub entries_added: u64,
    /// Of `entries_added`: parent directories the layer needed and nobody created.
    pub parents_created: u64,
    /// Members written in total.
    pub entries_out: u64,
    /// Hard links whose target the layer replaced with a file or symlink. They
    /// are moved after the layer's entries, so they name the new file (one
    /// inode, as if the file had been rewritten in place); tar cannot link to
    /// a member that comes later.
    pub hard_links_deferred: u64,
    /// Hard links whose target the layer removed. They are dropped too (a
    /// single pass cannot recover the target's data, which came earlier), and
    /// a warning names each one.
    pub hard_links_dropped: u64,
    /// Uncompressed tar bytes read from the base, trailing padding included.
    pub bytes_in: u64,
    /// Uncompressed tar bytes written.
    pub bytes_out: u64,
    /// The output has the `sbin` member `pct create` requires, as its check
    /// sees it in `tar -tv` output: a directory stored as `sbin/` or `./sbin/`
    /// (with the slash), or a symlink or hard link named `sbin`/`./sbin`.
    pub has_sbin: bool,
    /// How the base names its members.
    pub name_style: NameStyle,
    /// `/etc/os-release` of the output (followed through symlinks, e.g. to
    /// `../usr/lib/os-release`), or `/usr/lib/os-release` if `/etc` has none.
    pub os_release: Option<String>,
    /// `/etc/lsb-release` of the output (Ubuntu), followed through symlinks.
    pub lsb_release: Option<String>,
}

/// Copies `base` (a decompressed tar stream) to `out` with `layer` applied.
///
/// On error the output is incomplete and must be discarded. Errors name the
/// streams generically; [`super::write_template`] names the files.
pub fn rewrite_tar<R: Read, W: Write>(
    base: R,
    layer: &Layer,
    out: W,
    cancel: &AtomicBool,
) -> Result<RewriteStats, OutputError> {
    let labels = Labels {
        base: "(input stream)".into(),
        out: "(output stream)".into(),
    };
    rewrite_labelled(base, layer, out, cancel, &labels)
}

/// Names of the input and output used in error messages.
#[derive(Debug)]
pub(in crate::output) struct Labels {
    pub base: String,
    pub out: String,
}

pub(in crate::output) fn rewrite_labelled<R: Read, W: Write>(
    base: R,
    layer: &Layer,
    out: W,
    cancel: &AtomicBool,
    labels: &Labels,
) -> Result<RewriteStats, OutputError> {
    let mut rewriter = Rewriter::new(layer, out, cancel, labels)?;
    rewriter.run(TarReader::new(base))?;
    Ok(rewriter.stats)
}

/// A layer operation with its normalized path and whether it shapes the result.
#[derive(Debug)]
struct PlannedOp<'a> {
    path: String,
    op: &'a Op,
    /// Not overwritten by a later op for the same path and not removed by a
    /// later `Remove`.
    effective: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    Symlink,
    HardLink,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DropReason {
    Removed,
    /// Replaced by the (effective) op with this index.
    Replaced(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Keep,
    Drop(DropReason),
    /// The layer's directory takes the place of this entry.
    MkdirHere(usize),
    /// A hard link to a file the layer writes later.
    Defer,
    /// A hard link whose target was dropped.
    DropLink,
}

/// Contents kept for distro detection.
#[derive(Debug, Clone)]
enum Captured {
    File(String),
    Symlink(String),
    HardLink(String),
}

#[derive(Debug)]
struct DeferredLink {
    raw: Vec<u8>,
    name: Vec<u8>,
    path: String,
    target: String,
}

struct Rewriter<'a, W: Write> {
    ops: Vec<PlannedOp<'a>>,
    layer: &'a Layer,
    /// Normalized path → index of the last op writing it.
    written: HashMap<String, usize>,
    /// Paths some op writes as a file or symlink: the base's subtree below
    /// them goes away.
    non_dir_written: HashSet<String>,
    /// Effective `Mkdir` ops not written yet.
    pending_mkdirs: HashMap<String, usize>,
    emitted: Vec<bool>,
    /// What the output holds so far, for parent creation.
    known: HashMap<String, Kind>,
    /// Targets of the symlinks in `known`, to resolve added entries' parents.
    symlink_targets: HashMap<String, String>,
    policy: EntryPolicy,
    dropped: HashMap<String, DropReason>,
    deferred: Vec<DeferredLink>,
    deferred_paths: HashSet<String>,
    captured: HashMap<String, Captured>,
    style: Option<NameStyle>,
    out: CountingWriter<W>,
    stats: RewriteStats,
    cancel: &'a AtomicBool,
    labels: &'a Labels,
    bytes_since_cancel_check: u64,
    buf: Vec<u8>,
}

impl<W: Write> std::fmt::Debug for Rewriter<'_, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewriter")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<'a, W: Write> Rewriter<'a, W> {
    fn new(
        layer: &'a Layer,
        out: W,
        cancel: &'a AtomicBool,
        labels: &'a Labels,
    ) -> Result<Self, OutputError> {
        let mut ops = Vec::with_capacity(layer.ops.len());
        let mut written = HashMap::new();
        let mut non_dir_written = HashSet::new();
        for (i, op) in layer.ops.iter().enumerate() {
            let path = if let Op::Remove { .. } = op {
                String::new()
            } else {
                let raw = op.path();
                if !raw.starts_with('/') {
                    return Err(OutputError::Layer {
                        path: raw.to_owned(),
                        reason: "the path must be absolute inside the image".into(),
                    });
                }
                check_layer_entry(raw, op)?;
                let path = normalize(raw.as_bytes());
                if path == "/" && !matches!(op, Op::Mkdir { .. }) {
                    return Err(OutputError::Layer {
                        path: raw.to_owned(),
                        reason: "only a directory can be written at the image root".into(),
                    });
                }
                written.insert(path.clone(), i);
                if !matches!(op, Op::Mkdir { .. }) {
                    non_dir_written.insert(path.clone());
                }
                path
            };
            ops.push(PlannedOp {
                path,
                op,
                effective: false,
            });
        }
        let mut pending_mkdirs = HashMap::new();
        for (i, planned) in ops.iter_mut().enumerate() {
            if matches!(planned.op, Op::Remove { .. }) {
                continue;
            }
            let path = &planned.path;
            let removed_later = layer.ops[i + 1..].iter().any(|later| match later {
                Op::Remove { pattern } => {
                    crate::layer::pattern_matches_path_or_ancestor(pattern, path)
                }
                _ => false,
            });
            planned.effective = written.get(path) == Some(&i) && !removed_later;
            if planned.effective && matches!(planned.op, Op::Mkdir { .. }) {
                pending_mkdirs.insert(path.clone(), i);
            }
        }
        Ok(Rewriter {
            emitted: vec![false; ops.len()],
            ops,
            layer,
            written,
            non_dir_written,
            pending_mkdirs,
            known: HashMap::new(),
            symlink_targets: HashMap::new(),
            policy: EntryPolicy::default(),
            dropped: HashMap::new(),
            deferred: Vec::new(),
            deferred_paths: HashSet::new(),
            captured: HashMap::new(),
            style: None,
            out: CountingWriter {
                inner: out,
                written: 0,
            },
            stats: RewriteStats::default(),
            cancel,
            labels,
            bytes_since_cancel_check: 0,
            buf: vec![0u8; 256 << 10],
        })
    }

    fn run<R: Read>(&mut self, mut reader: TarReader<R>) -> Result<(), OutputError> {
        let mut last_path: Option<String> = None;
        loop {
            self.check_cancel()?;
            let member = match reader.next_member() {
                Ok(Some(member)) => member,
                Ok(None) => break,
                Err(failure) => {
                    let at = match &last_path {
                        Some(p) => format!("after {p}"),
                        None => "at the start of the archive".into(),
                    };
                    return Err(self.corrupt(self.stats.entries_in + 1, at, failure));
                }
            };
            if member.is_global {
                let index = self.stats.entries_in + 1;
                EntryPolicy::check_global(&member)
                    .map_err(|refusal| unsafe_member(&self.labels.base, index, &member, refusal))?;
                self.write(&member.raw_head)?;
                continue;
            }
            self.stats.entries_in += 1;
            let index = self.stats.entries_in;
            self.policy
                .check_member(index, &member)
                .map_err(|refusal| unsafe_member(&self.labels.base, index, &member, refusal))?;
            let display = String::from_utf8_lossy(&member.path).into_owned();
            last_path = Some(display.clone());
            self.style.get_or_insert_with(|| detect_style(&member.path));
            self.base_member(&mut reader, member).map_err(|e| match e {
                Step::Read(failure) => self.corrupt(index, display, failure),
                Step::Target(e) => e,
            })?;
        }
        let trailing = reader.finish().map_err(|f| {
            self.corrupt(
                self.stats.entries_in + 1,
                "after the end-of-archive marker".into(),
                f,
            )
        })?;
        if trailing > 0 {
            tracing::warn!(
                base = %self.labels.base,
                "{trailing} non-zero bytes after the end-of-archive marker are ignored, as tar does"
            );
        }
        self.stats.bytes_in = reader.offset();

        for i in 0..self.ops.len() {
            if self.ops[i].effective && !self.emitted[i] {
                self.emit_op_with_parents(i)?;
            }
        }
        for link in std::mem::take(&mut self.deferred) {
            self.check_cancel()?;
            self.stats.entries_out += 1;
            self.stats.entries_passed += 1;
            let replacement = self.written.get(&link.target).map(|&i| self.ops[i].op);
            if let Some(Op::Symlink { target, meta, .. }) = replacement {
                // A hard link to a symlink is a second symlink with the same
                // target (what `link(2)` makes of one); written as such, so
                // no tool that follows links while linking can be misled.
                let name = self.render(&link.path, false);
                let head =
                    added_entry_head(&name, EntryType::Symlink, meta, 0, Some(target.as_bytes()));
                self.write(&head)?;
                self.record_output(&link.path, Kind::Symlink, &name);
                self.symlink_targets
                    .insert(link.path.clone(), target.clone());
                continue;
            }
            self.write(&link.raw)?;
            self.record_output(&link.path, Kind::HardLink, &link.name);
            if is_distro_file(&link.path) {
                self.captured
                    .insert(link.path.clone(), Captured::HardLink(link.target.clone()));
            }
        }
        // End-of-archive marker: two zero blocks.
        self.write(&[0u8; 1024])?;
        self.out.flush().map_err(|source| OutputError::Write {
            path: self.labels.out.clone(),
            source,
        })?;
        self.stats.bytes_out = self.out.written;
        self.stats.name_style = self.style.unwrap_or_default();
        self.stats.os_release = self
            .resolve_capture("/etc/os-release")
            .or_else(|| self.resolve_capture("/usr/lib/os-release"));
        self.stats.lsb_release = self.resolve_capture("/etc/lsb-release");
        Ok(())
    }

    fn base_member<R: Read>(
        &mut self,
        reader: &mut TarReader<R>,
        member: Member,
    ) -> Result<(), Step> {
        let path = normalize(&member.path);
        let fate = self.fate(&path, &member);
        if matches!(fate, Fate::Keep | Fate::MkdirHere(_) | Fate::Defer)
            && !self.pending_mkdirs.is_empty()
        {
            self.hoist_mkdirs_above(&path)?;
        }
        match fate {
            Fate::Keep => {
                self.write(&member.raw_head)?;
                let capture = is_distro_file(&path);
                let kind = kind_of(member.entry_type());
                let et = member.entry_type();
                let mut content = Vec::new();
                let want = if capture && is_regular(et) && member.data_len <= MAX_CAPTURE {
                    member.data_len as usize
                } else {
                    0
                };
                loop {
                    let n = reader.read_data(&mut self.buf).map_err(Step::Read)?;
                    if n == 0 {
                        break;
                    }
                    if content.len() < want {
                        let take = (want - content.len()).min(n);
                        content.extend_from_slice(&self.buf[..take]);
                    }
                    let chunk = std::mem::take(&mut self.buf);
                    let res = self.write(&chunk[..n]);
                    self.buf = chunk;
                    res?;
                    self.tick(n as u64)?;
                }
                self.stats.entries_passed += 1;
                self.stats.entries_out += 1;
                self.record_output(&path, kind, &member.path);
                if kind == Kind::Symlink {
                    let target = member.link.as_deref().unwrap_or_default();
                    self.symlink_targets
                        .insert(path.clone(), String::from_utf8_lossy(target).into_owned());
                }
                self.dropped.remove(&path);
                if capture {
                    let link = member.link.as_deref().map(String::from_utf8_lossy);
                    let captured = match et {
                        EntryType::Symlink => {
                            link.map(|t| Captured::Symlink(resolve_link(&path, &t)))
                        }
                        EntryType::Link => {
                            link.map(|t| Captured::HardLink(normalize(t.as_bytes())))
                        }
                        _ if want > 0 || member.data_len == 0 => Some(Captured::File(
                            String::from_utf8_lossy(&content).into_owned(),
                        )),
                        _ => None,
                    };
                    match captured {
                        Some(c) => self.captured.insert(path, c),
                        None => self.captured.remove(&path),
                    };
                }
            }
            Fate::Drop(_) | Fate::DropLink => {
                let reason = match fate {
                    Fate::Drop(reason) => reason,
                    _ => {
                        self.stats.hard_links_dropped += 1;
                        DropReason::Removed
                    }
                };
                self.drain(reader)?;
                self.stats.entries_dropped += 1;
                self.known.remove(&path);
                self.symlink_targets.remove(&path);
                self.captured.remove(&path);
                self.dropped.insert(path, reason);
            }
            Fate::MkdirHere(i) => {
                self.drain(reader)?;
                self.stats.entries_dropped += 1;
                self.dropped.insert(path, DropReason::Replaced(i));
                self.emit_op_with_parents(i)?;
            }
            Fate::Defer => {
                let mut raw = member.raw_head;
                if member.data_len > MAX_DEFERRED_LINK_DATA {
                    return Err(Step::Read(ReadFailure {
                        reason: format!(
                            "hard link carries {} bytes of data; links have none",
                            member.data_len
                        ),
                    }));
                }
                loop {
                    let n = reader.read_data(&mut self.buf).map_err(Step::Read)?;
                    if n == 0 {
                        break;
                    }
                    raw.extend_from_slice(&self.buf[..n]);
                }
                let target = normalize(member.link.as_deref().unwrap_or_default());
                self.stats.hard_links_deferred += 1;
                self.deferred_paths.insert(path.clone());
                self.known.remove(&path);
                self.symlink_targets.remove(&path);
                self.deferred.push(DeferredLink {
                    raw,
                    name: member.path,
                    path,
                    target,
                });
            }
        }
        Ok(())
    }

    fn fate(&self, path: &str, member: &Member) -> Fate {
        if self.layer.is_removed(path) {
            return Fate::Drop(DropReason::Removed);
        }
        if let Some(&i) = self.written.get(path) {
            let op = &self.ops[i];
            return match op.op {
                _ if !op.effective => Fate::Drop(DropReason::Removed),
                Op::Mkdir { .. } if !self.emitted[i] => Fate::MkdirHere(i),
                _ => Fate::Drop(DropReason::Replaced(i)),
            };
        }
        if !self.non_dir_written.is_empty()
            && ancestors(path).any(|a| self.non_dir_written.contains(a))
        {
            return Fate::Drop(DropReason::Removed);
        }
        if member.entry_type() == EntryType::Link {
            let target = normalize(member.link.as_deref().unwrap_or_default());
            if self.deferred_paths.contains(&target) {
                return Fate::Defer;
            }
            match self.dropped.get(&target) {
                Some(DropReason::Replaced(i))
                    if matches!(self.ops[*i].op, Op::WriteFile { .. } | Op::Symlink { .. }) =>
                {
                    return Fate::Defer;
                }
                Some(_) => {
                    tracing::warn!(
                        link = %path,
                        target = %target,
                        "dropping hard link: the layer removed or replaced the file it links to"
                    );
                    return Fate::DropLink;
                }
                None => {}
            }
        }
        Fate::Keep
    }

    /// Writes pending layer directories that are ancestors of `path`, so they
    /// come before the base entries inside them.
    fn hoist_mkdirs_above(&mut self, path: &str) -> Result<(), OutputError> {
        let hoist: Vec<usize> = ancestors(path)
            .filter_map(|a| self.pending_mkdirs.get(a).copied())
            .collect();
        for i in hoist {
            if !self.emitted[i] {
                self.emit_op_with_parents(i)?;
            }
        }
        Ok(())
    }

    fn emit_op_with_parents(&mut self, i: usize) -> Result<(), OutputError> {
        let op_path = self.ops[i].path.clone();
        let mtime = match self.ops[i].op {
            Op::Mkdir { meta, .. } | Op::WriteFile { meta, .. } | Op::Symlink { meta, .. } => {
                meta.mtime
            }
            Op::Remove { .. } => return Ok(()),
        };
        let path = self.resolve_parents(&op_path)?;
        if path != op_path {
            tracing::debug!(layer = %op_path, written = %path, "layer entry below a symlink written under its real name");
            let is_dir = matches!(self.ops[i].op, Op::Mkdir { .. });
            match self.known.get(&path) {
                None => {}
                Some(Kind::Dir) if is_dir => {}
                Some(_) => {
                    return Err(OutputError::Layer {
                        path: op_path,
                        reason: format!(
                            "through the base's symlinks it is {path}, which the base already \
                             holds and `pct create` would keep; name it {path} in the profile so \
                             the layer replaces it"
                        ),
                    })
                }
            }
        }
        for parent in ancestors(&path).map(str::to_owned).collect::<Vec<_>>() {
            match self.known.get(&parent) {
                Some(Kind::Dir) => {}
                Some(Kind::Symlink) => {
                    return Err(OutputError::Layer {
                        path: op_path,
                        reason: format!(
                            "internal: its parent {parent} is still a symlink after resolving"
                        ),
                    })
                }
                Some(Kind::Other | Kind::HardLink) => {
                    return Err(OutputError::Layer {
                        path: path.clone(),
                        reason: format!(
                            "its parent {parent} is not a directory in the base; \
                             remove or replace {parent} in the layer first"
                        ),
                    })
                }
                None => match self.pending_mkdirs.get(&parent).copied() {
                    Some(j) => self.emit_op(j, &parent)?,
                    None => {
                        let meta = Meta {
                            mode: 0o755,
                            uid: 0,
                            gid: 0,
                            mtime,
                        };
                        let name = self.render(&parent, true);
                        let head = added_entry_head(&name, EntryType::Directory, &meta, 0, None);
                        self.write(&head)?;
                        self.stats.entries_added += 1;
                        self.stats.parents_created += 1;
                        self.stats.entries_out += 1;
                        self.record_output(&parent, Kind::Dir, &name);
                    }
                },
            }
        }
        self.emit_op(i, &path)
    }

    /// Where a layer path really is: its parents resolved through the
    /// output's symlinks inside the rootfs (absolute targets from the
    /// rootfs root, `..` stopping at it), the last component kept.
    fn resolve_parents(&self, path: &str) -> Result<String, OutputError> {
        let mut current = path.to_owned();
        for _ in 0..MAX_SYMLINKS {
            let link =
                ancestors(&current).find_map(|a| self.symlink_targets.get(a).map(|t| (a.len(), t)));
            let Some((at, target)) = link else {
                return Ok(current);
            };
            let leads_to = resolve_link(&current[..at], target);
            let rest = &current[at..];
            current = if leads_to == "/" {
                rest.to_owned()
            } else {
                format!("{leads_to}{rest}")
            };
        }
        Err(OutputError::Layer {
            path: path.to_owned(),
            reason: format!(
                "its parents lead through more than {MAX_SYMLINKS} symlinks (a loop) in the base"
            ),
        })
    }

    /// Writes op `i` at `path`: its own path with the parents resolved.
    fn emit_op(&mut self, i: usize, path: &str) -> Result<(), OutputError> {
        self.check_cancel()?;
        self.emitted[i] = true;
        self.pending_mkdirs.remove(&self.ops[i].path);
        let path = path.to_owned();
        let op = self.ops[i].op;
        let name = self.render(&path, matches!(op, Op::Mkdir { .. }));
        let kind = match op {
            Op::Mkdir { meta, .. } => {
                let head = added_entry_head(&name, EntryType::Directory, meta, 0, None);
                self.write(&head)?;
                Kind::Dir
            }
            Op::Symlink { target, meta, .. } => {
                let head =
                    added_entry_head(&name, EntryType::Symlink, meta, 0, Some(target.as_bytes()));
                self.write(&head)?;
                self.symlink_targets.insert(path.clone(), target.clone());
                if is_distro_file(&path) {
                    let resolved = resolve_link(&path, target);
                    self.captured
                        .insert(path.clone(), Captured::Symlink(resolved));
                }
                Kind::Symlink
            }
            Op::WriteFile {
                meta,
                content: Content::Inline(bytes),
                ..
            } => {
                let len = bytes.len() as u64;
                let head = added_entry_head(&name, EntryType::Regular, meta, len, None);
                self.write(&head)?;
                self.write(bytes)?;
                self.write(&[0u8; 512][..padding(len)])?;
                if is_distro_file(&path) {
                    let text = String::from_utf8_lossy(bytes).into_owned();
                    self.captured.insert(path.clone(), Captured::File(text));
                }
                Kind::Other
            }
            Op::WriteFile {
                meta,
                content:
                    Content::HostFile {
                        path: host,
                        size,
                        sha256,
                    },
                ..
            } => {
                self.stream_host_file(&path, &name, meta, host, *size, sha256)?;
                Kind::Other
            }
            Op::Remove { .. } => return Ok(()),
        };
        self.stats.entries_added += 1;
        self.stats.entries_out += 1;
        self.record_output(&path, kind, &name);
        Ok(())
    }

    /// Streams a host file into the archive, checking it is still the file
    /// the plan recorded (size and sha256) while copying.
    fn stream_host_file(
        &mut self,
        image_path: &str,
        name: &[u8],
        meta: &Meta,
        host: &Path,
        size: u64,
        sha256: &str,
    ) -> Result<(), OutputError> {
        let expected: node_spec::Sha256Hex = sha256.parse().map_err(|e| OutputError::Layer {
            path: image_path.to_owned(),
            reason: format!("invalid sha256 for {}: {e}", host.display()),
        })?;
        let read_err = |source| OutputError::HostFileRead {
            path: host.to_owned(),
            image_path: image_path.to_owned(),
            source,
        };
        let changed = |found: String| OutputError::HostFileChanged {
            path: host.to_owned(),
            image_path: image_path.to_owned(),
            expected_size: size,
            expected_sha256: expected.to_string(),
            found,
        };
        let mut file = File::open(host).map_err(read_err)?;
        let actual_len = file.metadata().map_err(read_err)?.len();
        if actual_len != size {
            return Err(changed(format!("{actual_len} bytes")));
        }
        let head = added_entry_head(name, EntryType::Regular, meta, size, None);
        self.write(&head)?;
        let mut hasher = Sha256::new();
        let mut remaining = size;
        let capture = is_distro_file(image_path) && size <= MAX_CAPTURE;
        let mut content = Vec::new();
        let mut buf = std::mem::take(&mut self.buf);
        let result = (|| {
            while remaining > 0 {
                let want = buf
                    .len()
                    .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                let n = match file.read(&mut buf[..want]) {
                    Ok(0) => {
                        return Err(changed(format!(
                            "only {} bytes while reading",
                            size - remaining
                        )))
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(read_err(e)),
                };
                hasher.update(&buf[..n]);
                if capture {
                    content.extend_from_slice(&buf[..n]);
                }
                self.write(&buf[..n])?;
                self.tick(n as u64)?;
                remaining -= n as u64;
            }
            let mut probe = [0u8; 1];
            if file.read(&mut probe).map_err(read_err)? != 0 {
                return Err(changed(format!("more than {size} bytes while reading")));
            }
            Ok(())
        })();
        self.buf = buf;
        result?;
        let found = node_spec::Sha256Hex::from_digest(&hasher.finalize());
        if found != expected {
            return Err(changed(format!("sha256 {found}")));
        }
        self.write(&[0u8; 512][..padding(size)])?;
        if capture {
            let text = String::from_utf8_lossy(&content).into_owned();
            self.captured
                .insert(image_path.to_owned(), Captured::File(text));
        }
        Ok(())
    }

    /// Reads and discards the current member's data, watching the cancel flag.
    fn drain<R: Read>(&mut self, reader: &mut TarReader<R>) -> Result<(), Step> {
        loop {
            let n = reader.read_data(&mut self.buf).map_err(Step::Read)?;
            if n == 0 {
                return Ok(());
            }
            self.tick(n as u64)?;
        }
    }

    /// Notes an output member; `name` is the member name as written.
    fn record_output(&mut self, path: &str, kind: Kind, name: &[u8]) {
        // What pct's check looks for in `tar -tv` output, which prints names
        // as stored: a directory `sbin/` (with the slash) or a link `sbin`.
        let name = name.strip_prefix(b"/").unwrap_or(name);
        let name = name.strip_prefix(b"./").unwrap_or(name);
        self.stats.has_sbin |= match kind {
            Kind::Dir => name == b"sbin/",
            Kind::Symlink | Kind::HardLink => name == b"sbin",
            Kind::Other => false,
        };
        if kind != Kind::Symlink {
            self.symlink_targets.remove(path);
        }
        self.known.insert(path.to_owned(), kind);
    }

    /// The member name for a normalized path in the base's style.
    fn render(&self, path: &str, dir: bool) -> Vec<u8> {
        let rel = path.trim_start_matches('/');
        if rel.is_empty() {
            return b"./".to_vec();
        }
        let mut name = match self.style.unwrap_or_default() {
            NameStyle::DotSlash => format!("./{rel}"),
            NameStyle::Bare => rel.to_owned(),
        };
        if dir {
            name.push('/');
        }
        name.into_bytes()
    }

    fn resolve_capture(&self, path: &str) -> Option<String> {
        let mut path = path.to_owned();
        // Bounded like the kernel's symlink limit, against link loops.
        for _ in 0..40 {
            match self.captured.get(&path)? {
                Captured::File(text) => return Some(text.clone()),
                Captured::Symlink(target) | Captured::HardLink(target) => path = target.clone(),
            }
        }
        None
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), OutputError> {
        self.out
            .write_all(bytes)
            .map_err(|source| OutputError::Write {
                path: self.labels.out.clone(),
                source,
            })
    }

    fn tick(&mut self, bytes: u64) -> Result<(), OutputError> {
        self.bytes_since_cancel_check += bytes;
        if self.bytes_since_cancel_check >= CANCEL_CHECK_BYTES {
            self.bytes_since_cancel_check = 0;
            self.check_cancel()?;
        }
        Ok(())
    }

    fn check_cancel(&self) -> Result<(), OutputError> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(OutputError::Interrupted)
        } else {
            Ok(())
        }
    }

    fn corrupt(&self, entry: u64, member: String, failure: ReadFailure) -> OutputError {
        OutputError::CorruptBase {
            base: self.labels.base.clone(),
            entry,
            member,
            reason: failure.reason,
        }
    }
}

/// A failure while handling one base member: reading it, or anything else.
#[derive(Debug)]
enum Step {
    Read(ReadFailure),
    Target(OutputError),
}

impl From<OutputError> for Step {
    fn from(e: OutputError) -> Self {
        Step::Target(e)
    }
}

fn kind_of(et: EntryType) -> Kind {
    match et {
        EntryType::Directory => Kind::Dir,
        EntryType::Symlink => Kind::Symlink,
        EntryType::Link => Kind::HardLink,
        _ => Kind::Other,
    }
}

fn is_regular(et: EntryType) -> bool {
    matches!(et, EntryType::Regular | EntryType::Continuous)
}

fn is_distro_file(path: &str) -> bool {
    matches!(path.rsplit('/').next(), Some("os-release" | "lsb-release"))
}

/// The style of a base's first member (which passed the entry policy, so
/// it is not absolute).
fn detect_style(raw: &[u8]) -> NameStyle {
    if raw.starts_with(b"./") || raw == b"." {
        NameStyle::DotSlash
    } else {
        NameStyle::Bare
    }
}
