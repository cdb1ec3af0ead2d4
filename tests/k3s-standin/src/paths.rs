//! Every file the stand-in touches goes through [`Root`], so unit tests can
//! run it against a temporary directory (`--root DIR` / `K3S_STANDIN_ROOT`).

use std::io;
use std::path::{Path, PathBuf};

/// The filesystem root the stand-in works in (`/` outside tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root(PathBuf);

impl Root {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Root(dir.into())
    }

    pub fn dir(&self) -> &Path {
        &self.0
    }

    /// `p` (absolute or relative, as K3s would see it) inside the root.
    pub fn path(&self, p: &str) -> PathBuf {
        if self.0 == Path::new("/") {
            PathBuf::from(p)
        } else {
            self.0.join(p.trim_start_matches('/'))
        }
    }

    /// Write `bytes` to `p` atomically (temp file + rename) with `mode`,
    /// creating parent directories.
    pub fn write_atomic(&self, p: &str, bytes: &[u8], mode: u32) -> io::Result<PathBuf> {
        let dest = self.path(p);
        write_atomic(&dest, bytes, mode)?;
        Ok(dest)
    }
}

/// Write `bytes` to `dest` through a temp file in the same directory, with
/// `mode` set before the rename.
pub fn write_atomic(dest: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{name}.tmp-");
    let how = node_spec::atomic::Placement::new(&prefix, mode).create_dir();
    node_spec::atomic::write(dest, bytes, how).map_err(|e| io::Error::new(e.source.kind(), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn paths_are_rooted() {
        let r = Root::new("/tmp/x");
        assert_eq!(
            r.path("/etc/rancher/k3s/config.yaml"),
            PathBuf::from("/tmp/x/etc/rancher/k3s/config.yaml")
        );
        assert_eq!(Root::new("/").path("/etc/a"), PathBuf::from("/etc/a"));
    }

    #[test]
    fn write_atomic_sets_mode() {
        let d = tempfile::tempdir().unwrap();
        let r = Root::new(d.path());
        let p = r.write_atomic("/a/b/c", b"hi", 0o640).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"hi");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }
}
