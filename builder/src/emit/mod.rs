//! What a build leaves next to its artifact: the manifest JSON and the
//! host-side container configuration, written atomically.

mod hostconfig;
mod manifest;

pub use hostconfig::{lxc_config, pve_config, HostConfigVariant};
pub use manifest::{
    manifest_path_for, parse_os_release, AddedFile, ArtifactInfo, BaseInfo, DiskInfo, InputFile,
    K3sInfo, Manifest, NetworkTool, PctInfo, StepTimings, TarInfo, MANIFEST_SCHEMA,
};

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;

/// Write `bytes` to `path` so that readers see the old file or the complete
/// new one, never a partial one: temp file in the same directory, fsync,
/// rename, fsync the directory. The file is world-readable (0644): this
/// writes manifests and host configuration, which hold no secrets.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    stage_write(path, bytes)?.commit()
}

/// A file written and synced beside its final path, put in place by
/// [`Staged::commit`]; removed if dropped uncommitted.
#[derive(Debug)]
pub struct Staged {
    tmp: tempfile::NamedTempFile,
    path: std::path::PathBuf,
}

impl Staged {
    /// Rename into place and sync the directory.
    pub fn commit(self) -> anyhow::Result<()> {
        let dir = crate::parent_dir(&self.path).to_owned();
        self.tmp
            .persist(&self.path)
            .with_context(|| format!("renaming into place {}", self.path.display()))?;
        sync_dir(&dir)
    }
}

/// The first half of [`atomic_write`]: everything but the rename, so a
/// caller can stage several files and then commit them together.
pub fn stage_write(path: &Path, bytes: &[u8]) -> anyhow::Result<Staged> {
    let dir = crate::parent_dir(path);
    // The pid lets the next build sweep this if we are killed before the
    // rename (`output::leftovers::output_dir_owner`).
    let prefix = format!(".imgbuild-{}-", std::process::id());
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| {
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644))
        })
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(Staged {
        tmp,
        path: path.to_owned(),
    })
}

/// fsync a directory so a rename in it survives a crash.
pub fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.json")]);
    }

    #[test]
    fn atomic_write_into_missing_dir_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing").join("a.json");
        let e = atomic_write(&p, b"x").unwrap_err();
        assert!(format!("{e:#}").contains("missing"), "{e:#}");
    }
}
