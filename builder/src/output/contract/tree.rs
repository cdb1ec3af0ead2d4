//! The tree a template will hold, as far as the contract needs to know it:
//! the base's members ([`BaseFacts`], gathered by a read-only pass) with the
//! layer applied on top, looked up and resolved through symlinks the way the
//! kernel resolves them inside the container.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};

use crate::layer::{pattern_matches_path_or_ancestor, Content, Layer, Op};

/// The kernel's limit on symlinks followed in one lookup (`ELOOP`).
const MAX_SYMLINKS: usize = 40;

/// What a member is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    /// A regular file (hard links count as one: they are the same inode).
    File,
    /// A symbolic link and its target as stored.
    Symlink(String),
    /// Device, FIFO, socket.
    Other,
}

impl Kind {
    fn describe(&self) -> &'static str {
        match self {
            Kind::Dir => "a directory",
            Kind::File => "a file",
            Kind::Symlink(_) => "a symlink",
            Kind::Other => "a device or FIFO",
        }
    }
}

/// One member of the base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// Permission bits.
    pub mode: u32,
}

/// Facts about a base rootfs: every member's type and mode, symlink
/// targets, and the text of the few small files that identify the distro.
/// Paths are normalized (`/etc/os-release`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BaseFacts {
    pub nodes: BTreeMap<String, Node>,
    /// Hard links: path → the member it links to (whose data it shares).
    pub hard_links: BTreeMap<String, String>,
    /// Contents of distro identification files ([`is_identity_file`]).
    pub contents: BTreeMap<String, String>,
    /// The archive has the member `pct create`'s listing check looks for: a
    /// directory stored as `sbin/` or a symlink or hard link named `sbin`.
    pub sbin_listed: bool,
}

/// Files whose text the pre-pass keeps: what `pct` reads to pick and run
/// the distro's set-up (os-release, lsb-release, debian_version, and
/// `/etc/*-release` such as redhat-release and the rocky-release it links to).
pub fn is_identity_file(path: &str) -> bool {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    matches!(name, "os-release" | "lsb-release" | "debian_version")
        || (dir == "/etc" && name.ends_with("-release"))
}

/// Builders for literal facts, in tests and for callers that know a tree.
impl BaseFacts {
    /// Records a member, as the pre-pass does; the first member for a path
    /// wins, as with `pct create`'s `tar --skip-old-files`.
    pub fn insert(&mut self, path: &str, node: Node) {
        if path == "/sbin" && matches!(node.kind, Kind::Dir | Kind::Symlink(_)) {
            // What GNU tar writes: `./sbin/` for a directory, `./sbin` for a link.
            self.sbin_listed = true;
        }
        self.nodes.entry(path.to_owned()).or_insert(node);
    }

    pub fn dir(mut self, path: &str) -> Self {
        self.insert(
            path,
            Node {
                kind: Kind::Dir,
                mode: 0o755,
            },
        );
        self
    }

    pub fn file(mut self, path: &str, mode: u32, text: &str) -> Self {
        self.insert(
            path,
            Node {
                kind: Kind::File,
                mode,
            },
        );
        if is_identity_file(path) {
            self.contents.insert(path.to_owned(), text.to_owned());
        }
        self
    }

    /// An executable (0755) file.
    pub fn exe(self, path: &str) -> Self {
        self.file(path, 0o755, "")
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        self.insert(
            path,
            Node {
                kind: Kind::Symlink(target.to_owned()),
                mode: 0o777,
            },
        );
        self
    }
}

/// A member of the resulting tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    pub kind: Kind,
    pub mode: u32,
    /// The file's text if known: a captured base file or an inline layer
    /// file. `None` for other files (too large, or copied from the host).
    pub text: Option<Cow<'a, str>>,
    /// Where the entry comes from.
    pub origin: Origin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A member of the base.
    Base,
    /// An entry the layer writes.
    Layer,
    /// A directory with no member of its own: something below it exists.
    /// `from_layer`: the rewrite creates it as a parent of a layer entry.
    Implicit { from_layer: bool },
}

/// Why a path does not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    /// `path` (after the links in `hops`) does not exist. `last`: it is the
    /// asked path's own last component (the links were on the way there).
    Missing {
        path: String,
        hops: Vec<String>,
        last: bool,
    },
    /// A component of the path is not a directory.
    NotADirectory { path: String, hops: Vec<String> },
    /// More than 40 symlinks.
    Loop { hops: Vec<String> },
}

impl Unresolved {
    /// `"/sbin/init is missing"`, `"/sbin/init -> /lib/systemd/systemd
    /// leads to /usr/lib/systemd/systemd, which is missing"`.
    pub fn describe(&self, asked: &str) -> String {
        match self {
            Unresolved::Missing {
                hops, last: true, ..
            } if hops.is_empty() => {
                format!("{asked} is missing")
            }
            Unresolved::Missing {
                path,
                hops,
                last: true,
            } => format!("{asked} is missing (no {path}, via {})", hops.join(", ")),
            Unresolved::Missing { path, hops, .. } if hops.is_empty() => {
                format!("{asked} is missing ({path} does not exist)")
            }
            Unresolved::Missing { path, hops, .. } => format!(
                "{asked} leads through {} to {path}, which is missing",
                hops.join(", ")
            ),
            Unresolved::NotADirectory { path, .. } => {
                format!("{asked} is missing ({path} is not a directory)")
            }
            Unresolved::Loop { hops } => format!(
                "{asked} does not resolve: more than {MAX_SYMLINKS} symlinks ({} …)",
                hops.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

/// Where a path leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved<'a> {
    /// The final path, every symlink followed.
    pub path: String,
    pub entry: Entry<'a>,
    /// The symlinks followed, as `link -> target`.
    pub hops: Vec<String>,
}

/// The base with the layer applied.
#[derive(Debug, Clone, Copy)]
pub struct Tree<'a> {
    base: &'a BaseFacts,
    layer: &'a Layer,
}

impl<'a> Tree<'a> {
    pub fn new(base: &'a BaseFacts, layer: &'a Layer) -> Self {
        Tree { base, layer }
    }

    /// The entry at exactly `path` (normalized), not following a symlink
    /// there. Mirrors the rewrite: the last layer operation on the path or
    /// an ancestor decides (a write replaces, a remove pattern or a file
    /// written over an ancestor deletes); otherwise the base's member.
    pub fn entry(&self, path: &str) -> Option<Entry<'a>> {
        if path == "/" {
            return Some(dir_entry(Origin::Base));
        }
        for op in self.layer.ops.iter().rev() {
            match op {
                Op::Remove { pattern } if pattern_matches_path_or_ancestor(pattern, path) => {
                    return None
                }
                Op::Remove { .. } => {}
                Op::Mkdir { path: p, meta } if p == path => {
                    return Some(Entry {
                        kind: Kind::Dir,
                        mode: meta.mode,
                        text: None,
                        origin: Origin::Layer,
                    })
                }
                Op::WriteFile {
                    path: p,
                    meta,
                    content,
                } if p == path => {
                    let text = match content {
                        Content::Inline(b) => Some(String::from_utf8_lossy(b)),
                        Content::HostFile { .. } => None,
                    };
                    return Some(Entry {
                        kind: Kind::File,
                        mode: meta.mode,
                        text,
                        origin: Origin::Layer,
                    });
                }
                Op::Symlink {
                    path: p,
                    target,
                    meta,
                } if p == path => {
                    return Some(Entry {
                        kind: Kind::Symlink(target.clone()),
                        mode: meta.mode,
                        text: None,
                        origin: Origin::Layer,
                    })
                }
                Op::WriteFile { path: p, .. } | Op::Symlink { path: p, .. }
                    if is_below(path, p) =>
                {
                    // A file or link written over an ancestor drops its subtree.
                    return None;
                }
                _ => {}
            }
        }
        if let Some(node) = self.base.nodes.get(path) {
            let text_path = self.base.hard_links.get(path).map_or(path, String::as_str);
            return Some(Entry {
                kind: node.kind.clone(),
                mode: node.mode,
                text: self
                    .base
                    .contents
                    .get(text_path)
                    .map(|s| Cow::Borrowed(s.as_str())),
                origin: Origin::Base,
            });
        }
        if self.layer.written_paths().any(|p| is_below(p, path)) {
            return Some(dir_entry(Origin::Implicit { from_layer: true }));
        }
        let prefix = format!("{path}/");
        let has_base_child = self
            .base
            .nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .any(|(k, _)| !self.layer.is_removed(k));
        has_base_child.then(|| dir_entry(Origin::Implicit { from_layer: false }))
    }

    /// Follows every symlink in `path`, the last component's too.
    pub fn resolve(&self, path: &str) -> Result<Resolved<'a>, Unresolved> {
        self.walk(path, true)
    }

    /// `readlink(path)`: the target of the symlink at `path` (its parent
    /// directories resolved), or `None` if it is not a symlink.
    pub fn readlink(&self, path: &str) -> Option<String> {
        match self.walk(path, false).ok()?.entry.kind {
            Kind::Symlink(t) => Some(t),
            _ => None,
        }
    }

    /// Resolves `path` component by component, like the kernel's namei.
    fn walk(&self, path: &str, follow_last: bool) -> Result<Resolved<'a>, Unresolved> {
        let mut pending: VecDeque<String> = components(path).collect();
        // The asked path's components not taken yet: always the queue's tail.
        let mut own_left = pending.len();
        let mut current = String::new();
        let mut hops = Vec::new();
        let mut last = dir_entry(Origin::Base);
        while let Some(comp) = pending.pop_front() {
            let own = pending.len() < own_left;
            if own {
                own_left -= 1;
            }
            if comp == ".." {
                // `..` at the root stays at the root.
                current.truncate(current.rfind('/').unwrap_or(0));
                last = dir_entry(Origin::Base);
                continue;
            }
            let candidate = format!("{current}/{comp}");
            let Some(entry) = self.entry(&candidate) else {
                return Err(Unresolved::Missing {
                    path: candidate,
                    hops,
                    last: own && pending.is_empty(),
                });
            };
            match &entry.kind {
                Kind::Symlink(target) if follow_last || !pending.is_empty() => {
                    hops.push(format!("{candidate} -> {target}"));
                    if hops.len() > MAX_SYMLINKS {
                        return Err(Unresolved::Loop { hops });
                    }
                    if target.starts_with('/') {
                        current.clear();
                    }
                    for c in components(target).collect::<Vec<_>>().into_iter().rev() {
                        pending.push_front(c);
                    }
                    last = dir_entry(Origin::Base);
                }
                Kind::Dir => {
                    current = candidate;
                    last = entry;
                }
                _ if !pending.is_empty() => {
                    return Err(Unresolved::NotADirectory {
                        path: candidate,
                        hops,
                    })
                }
                _ => {
                    current = candidate;
                    last = entry;
                }
            }
        }
        if current.is_empty() {
            current.push('/');
        }
        Ok(Resolved {
            path: current,
            entry: last,
            hops,
        })
    }

    /// Resolves `path` to an executable regular file; the resolved path, or
    /// what is wrong.
    pub fn executable(&self, path: &str) -> Result<String, String> {
        let r = self.resolve(path).map_err(|u| u.describe(path))?;
        match r.entry.kind {
            Kind::File if r.entry.mode & 0o111 != 0 => Ok(r.path),
            Kind::File => Err(format!("{} is not executable", r.path)),
            other => Err(format!("{} is {}, not a program", r.path, other.describe())),
        }
    }

    /// The text of the regular file `path` leads to: `Ok(None)` when it
    /// exists but its text is not known (too large, or copied from the host).
    pub fn text(&self, path: &str) -> Result<Option<Cow<'a, str>>, String> {
        let r = self.resolve(path).map_err(|u| u.describe(path))?;
        match r.entry.kind {
            Kind::File => Ok(r.entry.text),
            other => Err(format!("{path} is {}, not a file", other.describe())),
        }
    }

    /// Files named `name` exactly `depth` directories below `dir`, e.g.
    /// `/usr/lib64/NetworkManager/<version>/libnm-settings-plugin-ifcfg-rh.so`.
    pub fn find_below(&self, dir: &str, depth: usize, name: &str) -> Vec<String> {
        let prefix = format!("{dir}/");
        let mut found: Vec<String> = self
            .base
            .nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .chain(self.layer.written_paths().map(str::to_owned))
            .filter(|k| {
                k.strip_prefix(&prefix).is_some_and(|rest| {
                    rest.split('/').count() == depth + 1 && rest.rsplit('/').next() == Some(name)
                })
            })
            .filter(|k| matches!(self.resolve(k), Ok(r) if r.entry.kind == Kind::File))
            .collect();
        found.sort();
        found.dedup();
        found
    }

    /// The archive will have the `sbin` member `pct create` requires: the
    /// base's own (listed as pct wants it), or one the layer writes.
    pub fn sbin_listed(&self) -> bool {
        match self.entry("/sbin") {
            Some(Entry {
                origin: Origin::Base,
                ..
            }) => self.base.sbin_listed,
            Some(Entry {
                origin: Origin::Layer | Origin::Implicit { from_layer: true },
                kind,
                ..
            }) => matches!(kind, Kind::Dir | Kind::Symlink(_)),
            _ => false,
        }
    }
}

fn dir_entry<'a>(origin: Origin) -> Entry<'a> {
    Entry {
        kind: Kind::Dir,
        mode: 0o755,
        text: None,
        origin,
    }
}

/// `path` is strictly inside `dir`.
fn is_below(path: &str, dir: &str) -> bool {
    path.len() > dir.len() + 1 && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

fn components(path: &str) -> impl Iterator<Item = String> + '_ {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_owned)
}
