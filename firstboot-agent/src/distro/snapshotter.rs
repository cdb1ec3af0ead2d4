//! containerd's snapshotter, chosen by what the storage under K3s's data
//! directory can do. K3s refuses to start when overlayfs does not work
//! there: `"overlayfs" snapshotter cannot be enabled for
//! "/var/lib/rancher/k3s/agent/containerd", try using "fuse-overlayfs" or
//! "native"` — ZFS before 2.2 (a Proxmox container on a ZFS dataset),
//! an overlay upper directory on overlayfs, some nested set-ups. K3s
//! checks with containerd's `overlayutils.Supported`, which mounts an
//! overlay in a temporary directory under the containerd root; the probe
//! here does the same mount, so the answer is the one K3s would get.
//!
//! When it fails: `fuse-overlayfs` (built into K3s; it needs `/dev/fuse`
//! and the `fuse-overlayfs` program), else `native` (copies, always works).
//! An explicit `snapshotter` in the configuration is kept as it is.

use serde::{Deserialize, Serialize};

use super::find_program;
use crate::metadata::NodeConfig;
use crate::rootfs::{FileError, Root};
use crate::system::{OverlayDirs, System};

/// What K3s uses, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Decision {
    pub snapshotter: String,
    pub reason: String,
    /// Whether the agent writes `snapshotter:` into config.yaml (not when
    /// it is overlayfs, K3s's default, or the configuration set it).
    pub write: bool,
}

/// containerd's root under K3s's data directory.
pub fn containerd_root(cfg: &NodeConfig) -> String {
    format!("{}/agent/containerd", crate::k3s::scripts::data_dir(cfg))
}

/// The directory the probe runs in: `dir`, or (before K3s made it) its
/// nearest existing parent, whose filesystem `dir` will be created on.
/// Nothing is left behind, so `check` can probe as well.
pub fn probe_dir(root: &Root, dir: &str) -> String {
    let mut at = std::path::Path::new(dir);
    while !root.real_path(at).is_dir() {
        match at.parent() {
            Some(p) => at = p,
            None => break,
        }
    }
    at.to_string_lossy().into_owned()
}

/// Mount an overlay in a fresh directory under [`probe_dir`], unmount it,
/// remove the directory. Returns where it probed, and why the mount failed.
pub fn probe(
    root: &Root,
    system: &dyn System,
    dir: &str,
) -> Result<(String, Result<(), String>), FileError> {
    let at = probe_dir(root, dir);
    let base = format!(
        "{}/firstboot-agent-overlay-check.{}",
        at.trim_end_matches('/'),
        std::process::id()
    );
    let real = root.path(&base);
    if real.exists() {
        std::fs::remove_dir_all(&real).map_err(|e| FileError::new("removing", &real, e))?;
    }
    let mut dirs = Vec::new();
    for d in ["lower", "upper", "work", "merged"] {
        dirs.push(root.create_dir_all(format!("{base}/{d}"))?);
    }
    let probe_file = dirs[0].join("probe");
    std::fs::write(&probe_file, b"").map_err(|e| FileError::new("writing", &probe_file, e))?;
    let overlay = OverlayDirs {
        lower: dirs[0].clone(),
        upper: dirs[1].clone(),
        work: dirs[2].clone(),
        target: dirs[3].clone(),
    };
    let outcome = match system.mount_overlay(&overlay) {
        Ok(()) => {
            if let Err(e) = system.unmount(&overlay.target) {
                tracing::warn!("unmounting the overlay probe: {e}");
            }
            Ok(())
        }
        Err(e) => Err(e.reason()),
    };
    std::fs::remove_dir_all(&real).map_err(|e| FileError::new("removing", &real, e))?;
    Ok((at, outcome))
}

/// Decide the snapshotter for this node.
pub fn decide(root: &Root, system: &dyn System, cfg: &NodeConfig) -> Result<Decision, FileError> {
    if let Some(s) = cfg.extra_config.get("snapshotter") {
        let name = s.as_str().map_or_else(|| format!("{s:?}"), str::to_owned);
        return Ok(Decision {
            reason: format!(
                "set in the configuration ({})",
                cfg.origins.of("k3s.config.snapshotter").path
            ),
            snapshotter: name,
            write: false,
        });
    }
    let dir = containerd_root(cfg);
    let (at, outcome) = probe(root, system, &dir)?;
    let under = if at == dir {
        dir.clone()
    } else {
        format!("{at} (where {dir} will be)")
    };
    let why = match outcome {
        Ok(()) => {
            return Ok(Decision {
                snapshotter: "overlayfs".into(),
                reason: format!("an overlay mounts under {under}"),
                write: false,
            })
        }
        Err(why) => why,
    };
    let fuse = root.real_path("/dev/fuse").exists();
    let program = find_program(root, "fuse-overlayfs");
    let (name, fallback) = match (fuse, program) {
        (true, Some(p)) => ("fuse-overlayfs", format!("/dev/fuse and {p} are there")),
        (false, _) => ("native", "no /dev/fuse for fuse-overlayfs".to_owned()),
        (true, None) => (
            "native",
            "/dev/fuse is there, the fuse-overlayfs program is not".to_owned(),
        ),
    };
    Ok(Decision {
        snapshotter: name.into(),
        reason: format!("overlayfs does not work under {under} ({why}); {fallback}"),
        write: true,
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;
    use crate::system::{Call, FakeSystem};

    #[test]
    fn probe_mounts_unmounts_and_tidies_up() {
        let (_d, root) = root_with(DEBIAN);
        let dir = "/var/lib/rancher/k3s/agent/containerd";
        // Before K3s made its directory: the nearest existing parent.
        root.create_dir_all("/var/lib").unwrap();
        assert_eq!(probe_dir(&root, dir), "/var/lib");
        root.create_dir_all(dir).unwrap();
        assert_eq!(probe_dir(&root, dir), dir);
        let sys = FakeSystem::new();
        assert_eq!(probe(&root, &sys, dir).unwrap(), (dir.to_owned(), Ok(())));
        let calls = sys.calls();
        let Call::MountOverlay(o) = &calls[0] else {
            panic!("{calls:?}")
        };
        let base = root.path(format!(
            "{dir}/firstboot-agent-overlay-check.{}",
            std::process::id()
        ));
        assert_eq!(o.lower, base.join("lower"));
        assert_eq!(o.target, base.join("merged"));
        assert_eq!(calls[1], Call::Unmount(base.join("merged")));
        assert!(!base.exists(), "the probe's directory is left behind");
        let mut sys = FakeSystem::new();
        sys.overlay_error = Some("Invalid argument".into());
        assert_eq!(
            probe(&root, &sys, dir).unwrap().1,
            Err("Invalid argument".into())
        );
        assert_eq!(
            sys.calls().len(),
            1,
            "nothing to unmount: {:?}",
            sys.calls()
        );
        assert!(!base.exists());
    }
}
