//! The host programs the disk output runs, found up front so a missing
//! one is named with the package that provides it before any work starts.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::command::{find_in_path, package_of, tool_search_path};

/// Every tool the disk output may run (packages in [`crate::command::TOOLS`]).
pub const DISK_TOOLS: &[&str] = &[
    "qemu-img",
    "debugfs",
    "e2fsck",
    "mke2fs",
    "sfdisk",
    "mkfs.fat",
    "mmd",
    "mcopy",
    "grub-mkimage",
    "tar",
    "losetup",
    "mkfs.xfs",
    "xfs_repair",
    "lvm",
    "setfiles",
    "matchpathcon",
];

/// Tool paths, resolved from `PATH` plus the sbin directories (e2fsprogs
/// and sfdisk live there, and a non-root `PATH` often lacks them).
#[derive(Debug, Clone)]
pub struct Tools {
    path_var: OsString,
    found: BTreeMap<&'static str, PathBuf>,
    grub_root: PathBuf,
}

impl Tools {
    pub fn from_env() -> Self {
        let path_var = tool_search_path();
        Self {
            path_var,
            found: BTreeMap::new(),
            grub_root: std::env::var_os("IMGBUILD_GRUB_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/usr/lib/grub".into()),
        }
    }

    /// Resolve `names` now; the error lists every missing one and its package.
    pub fn require(&mut self, names: &[&'static str]) -> Result<()> {
        let mut missing = Vec::new();
        for &name in names {
            match find_in_path(name, &self.path_var) {
                Some(p) => {
                    self.found.insert(name, p);
                }
                None => missing.push(name),
            }
        }
        if !missing.is_empty() {
            let list = missing
                .iter()
                .map(|m| format!("{m} (package {})", package_of(m)))
                .collect::<Vec<_>>()
                .join(", ");
            bail!("the qcow2 output needs programs that are not installed: {list}");
        }
        Ok(())
    }

    /// A tool resolved by [`Tools::require`] (or found now).
    pub fn get(&self, name: &'static str) -> Result<PathBuf> {
        if let Some(p) = self.found.get(name) {
            return Ok(p.clone());
        }
        find_in_path(name, &self.path_var).ok_or_else(|| {
            anyhow::anyhow!(
                "{name} is not installed (package {}); the qcow2 output needs it",
                package_of(name)
            )
        })
    }

    /// GRUB's module directory for `format` (`i386-pc`, `x86_64-efi`).
    pub fn grub_dir(&self, format: &str) -> Result<PathBuf> {
        let dir = self.grub_root.join(format);
        if !dir.join("moddep.lst").is_file() {
            let package = match format {
                "i386-pc" => "grub-pc-bin",
                _ => "grub-efi-amd64-bin",
            };
            bail!(
                "GRUB modules for {format} not found in {} (install package {package}, or set IMGBUILD_GRUB_DIR)",
                dir.display()
            );
        }
        Ok(dir)
    }
}
