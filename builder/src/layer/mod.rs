//! The layer: the pure list of file operations an image needs on top of its
//! base. It is computed from the [`crate::plan::Plan`] alone, so it is the same
//! for every output format and testable without I/O.

mod compute;

pub use compute::{
    compute_layer, HostBlob, LayerInputs, AGENT_UNIT, BUILD_INFO_PATH, PER_MACHINE_STATE,
};

use std::path::PathBuf;

/// One file operation, applied in order by a target.
///
/// Paths are absolute inside the image (`/etc/hostname`), normalized (no `.`,
/// `..` or trailing `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create a directory (parents that the base lacks are created 0755 root).
    Mkdir { path: String, meta: Meta },
    /// Create or replace a regular file.
    WriteFile {
        path: String,
        meta: Meta,
        content: Content,
    },
    /// Create or replace a symbolic link.
    Symlink {
        path: String,
        target: String,
        meta: Meta,
    },
    /// Remove every path matching `pattern` and everything below it.
    /// `*` matches any run of characters within one path component
    /// (`/etc/ssh/ssh_host_*`). A pattern that matches nothing is not an error.
    Remove { pattern: String },
}

impl Op {
    /// The path (or pattern) this operation acts on.
    pub fn path(&self) -> &str {
        match self {
            Op::Mkdir { path, .. } | Op::WriteFile { path, .. } | Op::Symlink { path, .. } => path,
            Op::Remove { pattern } => pattern,
        }
    }
}

/// Ownership, permissions and timestamp of an added entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits (e.g. `0o644`); file type bits are implied by the op.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time (seconds since the epoch): `SOURCE_DATE_EPOCH`.
    pub mtime: u64,
}

/// Where a file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Bytes computed by the builder (config files, units).
    Inline(Vec<u8>),
    /// A host file copied in (agent binary, K3s binary, air-gap images).
    /// `size` and `sha256` were recorded when the plan was resolved; a target
    /// fails if the file changed since.
    HostFile {
        path: PathBuf,
        size: u64,
        sha256: String,
    },
}

impl Content {
    pub fn len(&self) -> u64 {
        match self {
            Content::Inline(b) => b.len() as u64,
            Content::HostFile { size, .. } => *size,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The ordered operations for one image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layer {
    pub ops: Vec<Op>,
}

impl Layer {
    /// Does `path` (absolute, normalized) match a remove pattern of this layer,
    /// itself or through a matching ancestor?
    pub fn is_removed(&self, path: &str) -> bool {
        self.ops.iter().any(|op| match op {
            Op::Remove { pattern } => pattern_matches_path_or_ancestor(pattern, path),
            _ => false,
        })
    }

    /// Paths this layer writes (files, dirs, symlinks), in order.
    pub fn written_paths(&self) -> impl Iterator<Item = &str> {
        self.ops.iter().filter_map(|op| match op {
            Op::Remove { .. } => None,
            other => Some(other.path()),
        })
    }
}

/// `*` within one component; the pattern matches `path` if it matches the
/// path itself or one of its ancestors.
pub fn pattern_matches_path_or_ancestor(pattern: &str, path: &str) -> bool {
    let pat: Vec<&str> = pattern.trim_matches('/').split('/').collect();
    let comps: Vec<&str> = path.trim_matches('/').split('/').collect();
    if comps.len() < pat.len() {
        return false;
    }
    pat.iter().zip(&comps).all(|(p, c)| glob_component(p, c))
}

/// Match one path component against a pattern where `*` is any run of characters.
pub fn glob_component(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    let first = parts[0];
    let last = parts[parts.len() - 1];
    if !rest.starts_with(first) {
        return false;
    }
    rest = &rest[first.len()..];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globbing() {
        assert!(glob_component("ssh_host_*", "ssh_host_rsa_key"));
        assert!(glob_component("*.log", "dpkg.log"));
        assert!(!glob_component("*.log", "dpkg.log.1"));
        assert!(glob_component("a*b*c", "aXXbYYc"));
        assert!(!glob_component("a*b*c", "aXXc"));
        assert!(glob_component("exact", "exact"));
        assert!(!glob_component("ab*ab", "ab"));
    }

    #[test]
    fn removal_covers_subtrees() {
        let layer = Layer {
            ops: vec![Op::Remove {
                pattern: "/var/lib/cloud/instances/*".into(),
            }],
        };
        assert!(layer.is_removed("/var/lib/cloud/instances/abc"));
        assert!(layer.is_removed("/var/lib/cloud/instances/abc/obj.pkl"));
        assert!(!layer.is_removed("/var/lib/cloud/instances"));
        assert!(!layer.is_removed("/var/lib/cloud"));
    }
}
