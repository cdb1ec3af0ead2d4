//! Render a [`Layer`] as a `debugfs -w -f SCRIPT 'image?offset=N'` command
//! script, and parse `debugfs -R "ls -p DIR"` output.
//!
//! `debugfs` keeps going after a failed command and still exits 0, so the
//! caller must check its stderr with [`debugfs_errors`].

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::DiskError;
use crate::layer::{pattern_matches_path_or_ancestor, Content, Layer, Meta, Op};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFMT: u32 = 0o170000;

/// An entry that already exists in the image, from a recursive
/// [`parse_ls_p`] walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedEntry {
    /// Absolute, normalized path in the image.
    pub path: String,
    pub is_dir: bool,
}

/// One line of `debugfs -R "ls -p DIR"` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LsEntry {
    pub inode: u64,
    /// Full mode, file type bits included (`0o040755`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub name: String,
    pub is_dir: bool,
}

/// A rendered script and the inline contents it writes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugfsScript {
    /// The command script for `debugfs -w -f`.
    pub script: String,
    /// Files the caller must create (path under the `stage_dir` given to
    /// [`debugfs_script`], bytes) before running the script.
    pub staged: Vec<(PathBuf, Vec<u8>)>,
}

/// Parse `debugfs -R "ls -p DIR"` output: lines `/INODE/MODE/UID/GID/NAME/SIZE/`
/// (SIZE is empty for directories). `.` and `..` and lines of any other
/// shape (banners, errors) are skipped.
pub fn parse_ls_p(output: &str) -> Vec<LsEntry> {
    output
        .lines()
        .filter_map(|line| {
            let inner = line.strip_prefix('/')?.strip_suffix('/')?;
            let f: Vec<&str> = inner.split('/').collect();
            if f.len() != 6 {
                return None;
            }
            let name = f[4];
            if name.is_empty() || name == "." || name == ".." {
                return None;
            }
            let mode = u32::from_str_radix(f[1], 8).ok()?;
            Some(LsEntry {
                inode: f[0].parse().ok()?,
                mode,
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                name: name.to_string(),
                is_dir: mode & S_IFMT == S_IFDIR,
            })
        })
        .collect()
}

/// The error lines in the stderr of a `debugfs -f` run: everything except
/// the version banner and `Allocated inode:` notes.
pub fn debugfs_errors(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .map(str::trim)
        .filter(|l| {
            let banner = l.starts_with("debugfs ") && l.ends_with(')');
            let note = l.is_empty() || l.starts_with("Allocated inode:");
            !(banner || note)
        })
        .map(str::to_string)
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Dir,
    Other,
    Gone,
}

struct Renderer<'a> {
    existing: &'a dyn Fn(&str) -> bool,
    listed: BTreeMap<&'a str, bool>,
    overlay: BTreeMap<String, State>,
    out: String,
}

impl Renderer<'_> {
    fn state(&self, path: &str) -> Option<State> {
        if let Some(s) = self.overlay.get(path) {
            return Some(*s);
        }
        match self.listed.get(path) {
            Some(true) => Some(State::Dir),
            Some(false) => Some(State::Other),
            None if (self.existing)(path) => Some(State::Other),
            None => None,
        }
    }

    fn line(&mut self, words: &[&str]) {
        self.out.push_str(&words.join(" "));
        self.out.push('\n');
    }

    fn set_meta(&mut self, q: &str, mode: Option<u32>, meta: &Meta) {
        if let Some(mode) = mode {
            self.line(&["set_inode_field", q, "mode", &format!("0{mode:o}")]);
        }
        self.line(&["set_inode_field", q, "uid", &meta.uid.to_string()]);
        self.line(&["set_inode_field", q, "gid", &meta.gid.to_string()]);
        let t = format!("@{}", meta.mtime);
        for field in ["mtime", "atime", "ctime", "crtime"] {
            self.line(&["set_inode_field", q, field, &t]);
        }
    }

    /// Create missing ancestors 0755 root:root, as the layer contract says.
    fn ensure_parents(&mut self, path: &str, mtime: u64) -> Result<(), DiskError> {
        let mut prefix = String::new();
        let comps: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        for comp in &comps[..comps.len() - 1] {
            prefix.push('/');
            prefix.push_str(comp);
            match self.state(&prefix) {
                Some(State::Dir) => {}
                Some(State::Other) if self.listed.get(prefix.as_str()) == Some(&false) => {
                    return Err(DiskError::BadPath {
                        path: path.to_string(),
                        reason: "an ancestor is not a directory",
                    });
                }
                Some(State::Other) => {}
                None | Some(State::Gone) => {
                    let q = quote(&prefix)?;
                    self.line(&["mkdir", &q]);
                    let meta = Meta {
                        mode: 0o755,
                        uid: 0,
                        gid: 0,
                        mtime,
                    };
                    self.set_meta(&q, Some(S_IFDIR | 0o755), &meta);
                    self.overlay.insert(prefix.clone(), State::Dir);
                }
            }
        }
        Ok(())
    }

    /// Remove a non-directory in the way of a new entry.
    fn clear(&mut self, path: &str, q: &str) -> Result<(), DiskError> {
        match self.state(path) {
            Some(State::Dir) => Err(DiskError::BadPath {
                path: path.to_string(),
                reason: "a directory is in the way",
            }),
            Some(State::Other) => {
                self.line(&["rm", q]);
                Ok(())
            }
            None | Some(State::Gone) => Ok(()),
        }
    }

    fn remove(&mut self, pattern: &str) -> Result<(), DiskError> {
        let mut candidates: HashSet<String> =
            self.listed.keys().map(|p| (*p).to_string()).collect();
        candidates.extend(self.overlay.keys().cloned());
        let mut hits: Vec<(String, bool)> = candidates
            .into_iter()
            .filter(|p| pattern_matches_path_or_ancestor(pattern, p))
            .filter_map(|p| match self.state(&p) {
                Some(State::Dir) => Some((p, true)),
                Some(State::Other) => Some((p, false)),
                _ => None,
            })
            .collect();
        // Deepest first so directories are empty when removed; then by name
        // for a stable script.
        hits.sort_by(|a, b| {
            let depth = |p: &str| p.matches('/').count();
            depth(&b.0).cmp(&depth(&a.0)).then_with(|| a.0.cmp(&b.0))
        });
        for (path, is_dir) in hits {
            let q = quote(&path)?;
            self.line(&[if is_dir { "rmdir" } else { "rm" }, &q]);
            self.overlay.insert(path, State::Gone);
        }
        Ok(())
    }
}

/// Render the `debugfs -w -f` script that applies `layer`.
///
/// - `existing` says whether a path exists in the image (for paths not in
///   `listing`).
/// - `listing` holds the existing entries below every `Remove` pattern's
///   fixed prefix, recursively (a matched directory's whole subtree must be
///   listed, or its `rmdir` fails), and any path known to be a directory.
/// - Inline contents are written from files under `stage_dir`; the caller
///   creates them from [`DebugfsScript::staged`]. Host files are written
///   from their own path (their size and digest are the caller's to check).
///
/// Modes carry their file type bits (`040755`, `0100600`); times are set to
/// the op's `mtime` (`@EPOCH`) for mtime, atime, ctime and crtime.
pub fn debugfs_script(
    layer: &Layer,
    existing: &dyn Fn(&str) -> bool,
    listing: &[ListedEntry],
    stage_dir: &Path,
) -> Result<DebugfsScript, DiskError> {
    let mut r = Renderer {
        existing,
        listed: listing
            .iter()
            .map(|e| (e.path.as_str(), e.is_dir))
            .collect(),
        overlay: BTreeMap::new(),
        out: String::new(),
    };
    let mut staged = Vec::new();
    for op in &layer.ops {
        match op {
            Op::Remove { pattern } => {
                check_image_path(pattern)?;
                r.remove(pattern)?;
            }
            Op::Mkdir { path, meta } => {
                check_image_path(path)?;
                r.ensure_parents(path, meta.mtime)?;
                let q = quote(path)?;
                match r.state(path) {
                    Some(State::Dir) => {}
                    Some(State::Other) if r.listed.get(path.as_str()) == Some(&false) => {
                        r.line(&["rm", &q]);
                        r.line(&["mkdir", &q]);
                    }
                    // Existence without a listing: assume the base's
                    // directory (mkdir would fail on it anyway).
                    Some(State::Other) => {}
                    None | Some(State::Gone) => r.line(&["mkdir", &q]),
                }
                r.set_meta(&q, Some(S_IFDIR | (meta.mode & 0o7777)), meta);
                r.overlay.insert(path.clone(), State::Dir);
            }
            Op::WriteFile {
                path,
                meta,
                content,
            } => {
                check_image_path(path)?;
                r.ensure_parents(path, meta.mtime)?;
                let q = quote(path)?;
                r.clear(path, &q)?;
                let source = match content {
                    Content::Inline(bytes) => {
                        let staged_path = stage_dir.join(format!("inline-{:04}", staged.len() + 1));
                        staged.push((staged_path.clone(), bytes.clone()));
                        staged_path
                    }
                    Content::HostFile { path, .. } => path.clone(),
                };
                let source = source.to_str().ok_or_else(|| DiskError::BadPath {
                    path: source.display().to_string(),
                    reason: "host path is not UTF-8",
                })?;
                let qs = quote(source)?;
                r.line(&["write", &qs, &q]);
                r.set_meta(&q, Some(S_IFREG | (meta.mode & 0o7777)), meta);
                r.overlay.insert(path.clone(), State::Other);
            }
            Op::Symlink { path, target, meta } => {
                check_image_path(path)?;
                if target.is_empty() {
                    return Err(DiskError::BadPath {
                        path: path.clone(),
                        reason: "empty symlink target",
                    });
                }
                r.ensure_parents(path, meta.mtime)?;
                let q = quote(path)?;
                r.clear(path, &q)?;
                let qt = quote(target)?;
                r.line(&["symlink", &q, &qt]);
                r.set_meta(&q, None, meta);
                r.overlay.insert(path.clone(), State::Other);
            }
        }
    }
    Ok(DebugfsScript {
        script: r.out,
        staged,
    })
}

pub(super) fn check_image_path(path: &str) -> Result<(), DiskError> {
    let bad = |reason| {
        Err(DiskError::BadPath {
            path: path.to_string(),
            reason,
        })
    };
    if !path.starts_with('/') || path == "/" {
        return bad("not an absolute path below /");
    }
    if path
        .split('/')
        .skip(1)
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return bad("not a normalized path");
    }
    Ok(())
}

/// Quote a word for debugfs's command parser: double quotes when it holds
/// anything but plain path characters. Quotes and control characters
/// (newlines end a command) cannot be expressed and are refused.
pub(super) fn quote(word: &str) -> Result<String, DiskError> {
    if word.chars().any(|c| c == '"' || c.is_control()) {
        return Err(DiskError::BadPath {
            path: word.to_string(),
            reason: "contains a quote or control character",
        });
    }
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+,:@=%~".contains(c));
    if plain {
        Ok(word.to_string())
    } else {
        let mut s = String::with_capacity(word.len() + 2);
        let _ = write!(s, "\"{word}\"");
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: Meta = Meta {
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 1_700_000_000,
    };

    /// Captured from `debugfs -R "ls -p /etc" fs.img` (e2fsprogs 1.47.0) after
    /// creating a directory with a space, a file and a symlink.
    const LS_P_ETC: &str = "/12/040755/0/0/.//\n\
/2/040755/0/0/..//\n\
/13/040755/0/0/with space//\n\
/15/100600/1000/0/hostname/6/\n\
/16/120777/0/0/link/9/\n\
\n";

    #[test]
    fn parses_ls_p() {
        let e = parse_ls_p(LS_P_ETC);
        assert_eq!(e.len(), 3, "{e:?}");
        assert_eq!(
            e[0],
            LsEntry {
                inode: 13,
                mode: 0o040755,
                uid: 0,
                gid: 0,
                name: "with space".into(),
                is_dir: true
            }
        );
        assert_eq!(e[1].name, "hostname");
        assert_eq!(e[1].mode, 0o100600);
        assert_eq!(e[1].uid, 1000);
        assert!(!e[1].is_dir);
        assert_eq!(e[2].mode & S_IFMT, 0o120000);
        assert!(parse_ls_p("debugfs 1.47.0 (5-Feb-2023)\n/x: File not found\n").is_empty());
    }

    #[test]
    fn renders_ops_in_order_with_parents() {
        let layer = Layer {
            ops: vec![
                Op::Mkdir {
                    path: "/opt/a/b".into(),
                    meta: Meta {
                        mode: 0o750,
                        ..META
                    },
                },
                Op::WriteFile {
                    path: "/etc/hostname".into(),
                    meta: Meta {
                        mode: 0o600,
                        uid: 1000,
                        gid: 1000,
                        mtime: 5,
                    },
                    content: Content::Inline(b"node\n".to_vec()),
                },
                Op::Symlink {
                    path: "/etc/my link".into(),
                    target: "/etc/hostname".into(),
                    meta: META,
                },
            ],
        };
        let exists = |p: &str| matches!(p, "/etc" | "/etc/hostname");
        let s = debugfs_script(&layer, &exists, &[], Path::new("/stage")).unwrap();
        let lines: Vec<&str> = s.script.lines().collect();
        assert_eq!(lines[0], "mkdir /opt");
        assert_eq!(lines[1], "set_inode_field /opt mode 040755");
        assert!(lines.contains(&"mkdir /opt/a"));
        assert!(lines.contains(&"mkdir /opt/a/b"));
        assert!(lines.contains(&"set_inode_field /opt/a/b mode 040750"));
        assert!(lines.contains(&"set_inode_field /opt/a/b mtime @1700000000"));
        let rm = lines.iter().position(|l| *l == "rm /etc/hostname").unwrap();
        let w = lines
            .iter()
            .position(|l| *l == "write /stage/inline-0001 /etc/hostname")
            .unwrap();
        assert!(rm < w);
        assert!(lines.contains(&"set_inode_field /etc/hostname mode 0100600"));
        assert!(lines.contains(&"set_inode_field /etc/hostname uid 1000"));
        assert!(lines.contains(&"set_inode_field /etc/hostname crtime @5"));
        assert!(lines.contains(&"symlink \"/etc/my link\" /etc/hostname"));
        assert!(!lines.iter().any(|l| l.starts_with("rm \"/etc/my link\"")));
        assert!(!lines.contains(&"mkdir /etc"));
        assert!(!lines
            .iter()
            .any(|l| l.starts_with("set_inode_field \"/etc/my link\" mode")));
        assert_eq!(
            s.staged,
            vec![(PathBuf::from("/stage/inline-0001"), b"node\n".to_vec())]
        );
    }

    #[test]
    fn removal_goes_deepest_first_and_covers_new_entries() {
        let listing = vec![
            ListedEntry {
                path: "/var/lib/cloud/instances".into(),
                is_dir: true,
            },
            ListedEntry {
                path: "/var/lib/cloud/instances/i-1".into(),
                is_dir: true,
            },
            ListedEntry {
                path: "/var/lib/cloud/instances/i-1/obj.pkl".into(),
                is_dir: false,
            },
            ListedEntry {
                path: "/etc/ssh/ssh_host_rsa_key".into(),
                is_dir: false,
            },
            ListedEntry {
                path: "/etc/ssh/sshd_config".into(),
                is_dir: false,
            },
        ];
        let layer = Layer {
            ops: vec![
                Op::WriteFile {
                    path: "/var/lib/cloud/instances/new".into(),
                    meta: META,
                    content: Content::Inline(vec![]),
                },
                Op::Remove {
                    pattern: "/var/lib/cloud/instances/*".into(),
                },
                Op::Remove {
                    pattern: "/etc/ssh/ssh_host_*".into(),
                },
                Op::Remove {
                    pattern: "/nothing/*".into(),
                },
            ],
        };
        let s = debugfs_script(&layer, &|_| false, &listing, Path::new("/s")).unwrap();
        let tail: Vec<&str> = s
            .script
            .lines()
            .filter(|l| l.starts_with("rm") || l.starts_with("rmdir"))
            .collect();
        assert_eq!(
            tail,
            vec![
                "rm /var/lib/cloud/instances/i-1/obj.pkl",
                "rmdir /var/lib/cloud/instances/i-1",
                "rm /var/lib/cloud/instances/new",
                "rm /etc/ssh/ssh_host_rsa_key",
            ]
        );
    }

    #[test]
    fn rejects_unquotable_and_unnormalized_paths() {
        for path in [
            "/etc/a\"b",
            "/etc/a\nb",
            "etc/x",
            "/etc/../x",
            "/etc//x",
            "/",
        ] {
            let layer = Layer {
                ops: vec![Op::Mkdir {
                    path: path.into(),
                    meta: META,
                }],
            };
            let err = debugfs_script(&layer, &|_| true, &[], Path::new("/s")).unwrap_err();
            assert!(matches!(err, DiskError::BadPath { .. }), "{path:?}: {err}");
        }
        let layer = Layer {
            ops: vec![Op::WriteFile {
                path: "/etc".into(),
                meta: META,
                content: Content::Inline(vec![]),
            }],
        };
        let listing = [ListedEntry {
            path: "/etc".into(),
            is_dir: true,
        }];
        let err = debugfs_script(&layer, &|_| true, &listing, Path::new("/s")).unwrap_err();
        assert!(err.to_string().contains("directory is in the way"), "{err}");
    }

    #[test]
    fn error_lines_skip_banner_and_notes() {
        let stderr = "debugfs 1.47.0 (5-Feb-2023)\nAllocated inode: 14\nrm: File not found by ext2_lookup while trying to resolve filename\n";
        assert_eq!(
            debugfs_errors(stderr),
            vec!["rm: File not found by ext2_lookup while trying to resolve filename"]
        );
    }
}
