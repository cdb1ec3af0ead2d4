//! What a build leaves next to its artifact: the manifest JSON and the
//! host-side container configuration, written atomically.

mod hostconfig;
mod manifest;

pub use hostconfig::{lxc_config, pve_config, HostConfigVariant};
pub use manifest::{
    manifest_path_for, parse_os_release, AddedFile, ArtifactInfo, BaseInfo, CatalogInfo, DiskInfo,
    InputFile, K3sInfo, Manifest, NetworkTool, PctInfo, StepTimings, TarInfo, MANIFEST_SCHEMA,
};

use std::path::Path;

use node_spec::atomic::{self, Placement};
pub use node_spec::atomic::{sync_dir, Staged};

/// Write `bytes` to `path` so that readers see the old file or the complete
/// new one, never a partial one ([`node_spec::atomic`]). The file is
/// world-readable (0644): this writes manifests and host configuration,
/// which hold no secrets.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    stage_write(path, bytes)?.commit()?;
    Ok(())
}

/// The first half of [`atomic_write`]: everything but the rename, so a
/// caller can stage several files and then commit them together.
pub fn stage_write(path: &Path, bytes: &[u8]) -> anyhow::Result<Staged> {
    Ok(atomic::stage(path, bytes, placement(0o644))?)
}

/// How the builder stages a file in an output directory: the pid in the
/// name lets the next build sweep it if this one is killed before the
/// rename (`output::leftovers::output_dir_owner`).
pub fn placement(mode: u32) -> Placement<'static> {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let prefix = PREFIX.get_or_init(|| format!(".imgbuild-{}-", std::process::id()));
    Placement::new(prefix, mode).suffix(".tmp")
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
