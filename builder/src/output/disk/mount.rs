//! Loop-mount a filesystem that lies at a byte range of the raw working
//! copy (an XFS root partition, or an LV inside an LVM partition), for the
//! roots `debugfs` cannot edit.
//!
//! `losetup --offset --sizelimit` needs no partition nodes (there may be no
//! udev), and XFS is mounted with `nouuid`: cloud images share their
//! filesystem UUID with every VM made from them, and a build host made from
//! the same image would otherwise refuse the mount. Every loop device and
//! mount is undone on drop (errors, the first Ctrl-C) and by
//! [`release_all`] on the second Ctrl-C, which exits without unwinding.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, MutexGuard};

use anyhow::{bail, Context, Result};

use super::tools::Tools;
use crate::command::run_command;

/// Programs the mounted path runs.
pub const MOUNT_TOOLS: &[&str] = &["losetup", "xfs_repair"];

/// Why this host cannot mount an XFS root, or `Ok` when it can: checked
/// before the base is fetched or anything is written.
pub fn preflight(tools: &mut Tools) -> Result<()> {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root (mounting through a loop device)".to_owned());
    }
    if !Path::new("/dev/loop-control").exists() {
        missing.push("loop devices (/dev/loop-control; `modprobe loop`)".to_owned());
    }
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !kernel_has(&filesystems, "xfs") {
        missing.push("XFS in the kernel (`xfs` in /proc/filesystems; `modprobe xfs`)".to_owned());
    }
    if let Err(e) = tools.require(MOUNT_TOOLS) {
        missing.push(e.to_string());
    }
    if !missing.is_empty() {
        bail!(
            "the root filesystem is XFS (or LVM with XFS), which imgbuild edits by mounting it; \
             this host lacks: {}",
            missing.join("; ")
        );
    }
    Ok(())
}

/// `name` is a filesystem in `/proc/filesystems` text.
pub fn kernel_has(proc_filesystems: &str, name: &str) -> bool {
    proc_filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some(name))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Held {
    Loop(PathBuf),
    Mount(PathBuf),
}

/// Loop devices and mounts this process holds now, for [`release_all`].
static HELD: Mutex<Vec<Held>> = Mutex::new(Vec::new());

fn held() -> MutexGuard<'static, Vec<Held>> {
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

/// Unmount and detach everything still held, newest first (the second
/// Ctrl-C, which exits without running destructors). Returns how many.
pub fn release_all() -> usize {
    let all: Vec<Held> = held().drain(..).rev().collect();
    for h in &all {
        release(h);
    }
    all.len()
}

fn release(h: &Held) {
    match h {
        Held::Mount(dir) => {
            if let Err(e) = nix::mount::umount2(dir, nix::mount::MntFlags::empty()) {
                tracing::warn!(dir = %dir.display(), "unmounting: {e}; detaching lazily");
                if let Err(e) = nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH) {
                    tracing::warn!(dir = %dir.display(), "cannot unmount: {e}");
                }
            }
        }
        Held::Loop(dev) => {
            // Clean-up runs after a Ctrl-C too: never cancelled itself.
            let never = AtomicBool::new(false);
            let losetup =
                crate::command::find_in_path("losetup", &crate::command::tool_search_path())
                    .unwrap_or_else(|| "losetup".into());
            if let Err(e) = run_command(Command::new(losetup).arg("--detach").arg(dev), &never) {
                tracing::warn!(device = %dev.display(), "cannot detach the loop device: {e}");
            }
        }
    }
}

/// A held loop device or mount, released on drop.
#[derive(Debug)]
struct Guard(Held);

impl Guard {
    fn new(h: Held) -> Guard {
        held().push(h.clone());
        Guard(h)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mine = {
            let mut all = held();
            let before = all.len();
            all.retain(|h| *h != self.0);
            before != all.len()
        };
        // Already released by `release_all` otherwise.
        if mine {
            release(&self.0);
        }
    }
}

/// A loop device over `size` bytes at `offset` of a file.
#[derive(Debug)]
pub struct LoopDevice {
    pub dev: PathBuf,
    _guard: Guard,
}

impl LoopDevice {
    pub fn attach(
        tools: &Tools,
        file: &Path,
        offset: u64,
        size: u64,
        cancel: &AtomicBool,
    ) -> Result<LoopDevice> {
        let out = run_command(
            Command::new(tools.get("losetup")?)
                .args(["--find", "--show"])
                .arg(format!("--offset={offset}"))
                .arg(format!("--sizelimit={size}"))
                .arg(file),
            cancel,
        )
        .context("attaching a loop device to the root filesystem")?;
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if !dev.starts_with("/dev") {
            bail!("losetup printed no device: {:?}", dev);
        }
        Ok(LoopDevice {
            _guard: Guard::new(Held::Loop(dev.clone())),
            dev,
        })
    }
}

/// `dev` mounted (XFS, `nouuid`) on a directory; unmounted on drop.
#[derive(Debug)]
pub struct Mounted {
    pub dir: PathBuf,
    _guard: Guard,
}

impl Mounted {
    pub fn xfs(dev: &LoopDevice, dir: &Path) -> Result<Mounted> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        nix::mount::mount(
            Some(&dev.dev),
            dir,
            Some("xfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some("nouuid"),
        )
        .with_context(|| {
            format!(
                "mounting the XFS root ({} on {}); if the kernel log says the filesystem needs \
                 recovery or has unknown features, the image was not shut down cleanly or is \
                 newer than this host's kernel",
                dev.dev.display(),
                dir.display()
            )
        })?;
        Ok(Mounted {
            dir: dir.to_owned(),
            _guard: Guard::new(Held::Mount(dir.to_owned())),
        })
    }

    /// Free bytes, counting the blocks reserved for root (the build runs as root).
    pub fn free_bytes(&self) -> Result<u64> {
        let st = nix::sys::statvfs::statvfs(&self.dir)
            .with_context(|| format!("statvfs {}", self.dir.display()))?;
        Ok(st.blocks_free() as u64 * st.fragment_size() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_filesystems() {
        let text = "nodev\tsysfs\nnodev\ttmpfs\n\text4\n\txfs\nnodev\tfuse\n";
        assert!(kernel_has(text, "xfs"));
        assert!(kernel_has(text, "ext4"));
        assert!(!kernel_has(text, "btrfs"));
        assert!(!kernel_has("\txfsx\n", "xfs"));
    }
}
