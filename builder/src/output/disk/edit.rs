//! Write the layer into the located root, label it for SELinux where the
//! image has a policy, and read back what the manifest reports.
//!
//! - ext4: `debugfs -w` on the raw copy (no mount, no root); labels as
//!   `security.selinux` xattrs computed with `matchpathcon`.
//! - XFS (also inside an LVM LV): a loop mount at the filesystem's offset,
//!   the layer written with [`super::tree`], labels set with `setfiles`;
//!   unmounted before the check, the loop device kept for `xfs_repair -n`.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::apply::{self, Ext4At};
use super::mount::{LoopDevice, Mounted};
use super::qcow2::{check_room, Cx};
use super::root::RootFs;
use super::selinux::{self, Kind, Policy, SelinuxInfo, SelinuxMode};
use super::{debugfs::quote, debugfs_errors, tree};
use crate::command::{run_command, CommandError};
use crate::layer::{Content, Layer, Meta, Op};

/// What applying the layer left for the rest of the build.
#[derive(Debug)]
pub struct Applied {
    pub os_release: Option<String>,
    pub selinux: SelinuxInfo,
    /// The XFS root's loop device, detached once it is checked.
    pub loop_dev: Option<LoopDevice>,
}

pub fn ext4_at(cx: &Cx<'_>, root: &RootFs) -> Ext4At {
    Ext4At {
        dir: cx.scratch.to_owned(),
        offset: root.offset,
    }
}

/// The layer to write: `/.autorelabel` added when the profile asks for the
/// first-boot relabel and the image has a policy.
fn with_autorelabel(layer: &Layer, mode: SelinuxMode, policy: Option<&Policy>) -> Layer {
    let mut l = layer.clone();
    if mode == SelinuxMode::Autorelabel && policy.is_some() {
        let mtime = layer
            .ops
            .iter()
            .find_map(|op| match op {
                Op::Mkdir { meta, .. } | Op::WriteFile { meta, .. } | Op::Symlink { meta, .. } => {
                    Some(meta.mtime)
                }
                Op::Remove { .. } => None,
            })
            .unwrap_or(0);
        l.ops.push(Op::WriteFile {
            path: "/.autorelabel".into(),
            meta: Meta {
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime,
            },
            content: Content::Inline(Vec::new()),
        });
    }
    l
}

fn outcome(policy: Option<&Policy>, mode: SelinuxMode, labelled: usize, how: &str) -> SelinuxInfo {
    match policy {
        None => SelinuxInfo::none(),
        Some(p) => SelinuxInfo {
            policy: Some(p.name.clone()),
            labelled,
            method: match mode {
                SelinuxMode::Autorelabel => "autorelabel".into(),
                SelinuxMode::Label => how.into(),
            },
        },
    }
}

pub fn apply_ext4(cx: &Cx<'_>, root: &RootFs) -> Result<Applied> {
    let at = ext4_at(cx, root);
    let debugfs = cx.tools.get("debugfs")?;
    let selinux_dir = cx.scratch.join("selinux");
    let mut read = |path: &str| -> Result<Option<Vec<u8>>> {
        Ok(dump_ext4(&debugfs, &at, &[path], cx)?.pop().flatten())
    };
    let policy = selinux::find_policy(&mut read, cx.opts.selinux, &selinux_dir)?;
    let layer = with_autorelabel(cx.layer, cx.opts.selinux, policy.as_ref());
    let listing = apply::apply_layer(&debugfs, &at, &layer, cx.cancel())?;
    let mut labelled = 0;
    if let (Some(p), SelinuxMode::Label) = (&policy, cx.opts.selinux) {
        let existed: HashSet<&str> = listing.iter().map(|e| e.path.as_str()).collect();
        let touched = selinux::touched_paths(&layer, &|p| p == "/" || existed.contains(p));
        labelled = label_ext4(cx, &at, p, &touched)?;
    }
    let os_release = dump_ext4(
        &debugfs,
        &at,
        &["/etc/os-release", "/usr/lib/os-release"],
        cx,
    )
    .ok()
    .and_then(|v| first_os_release(v.into_iter().flatten()));
    Ok(Applied {
        os_release,
        selinux: outcome(policy.as_ref(), cx.opts.selinux, labelled, "xattr"),
        loop_dev: None,
    })
}

/// Each path's context from `matchpathcon`, written as its
/// `security.selinux` xattr (NUL-terminated, as the kernel stores it).
fn label_ext4(
    cx: &Cx<'_>,
    at: &Ext4At,
    policy: &Policy,
    touched: &BTreeMap<String, Kind>,
) -> Result<usize> {
    let contexts = lookup_contexts(cx, policy, touched)?;
    let stage = at.dir.join("labels");
    fs::create_dir_all(&stage).with_context(|| format!("creating {}", stage.display()))?;
    let mut script = String::new();
    for (n, (path, context)) in contexts.iter().enumerate() {
        let name = format!("labels/{n:05}");
        fs::write(at.dir.join(&name), format!("{context}\0"))
            .with_context(|| format!("staging the label of {path}"))?;
        script.push_str(&format!(
            "ea_set -f {name} {} security.selinux\n",
            quote(path)?
        ));
    }
    fs::write(at.dir.join("labels.debugfs"), &script).context("writing the label script")?;
    let out = run_command(
        at.command(&cx.tools.get("debugfs")?)
            .args(["-w", "-f", "labels.debugfs"])
            .arg(at.spec()),
        cx.cancel(),
    )?;
    let errors = debugfs_errors(&String::from_utf8_lossy(&out.stderr));
    if !errors.is_empty() {
        bail!(
            "debugfs could not set the SELinux labels:\n  {}",
            errors.join("\n  ")
        );
    }
    Ok(contexts.len())
}

/// `matchpathcon -N -f SPEC -m KIND PATHS…`, one run per kind.
fn lookup_contexts(
    cx: &Cx<'_>,
    policy: &Policy,
    touched: &BTreeMap<String, Kind>,
) -> Result<Vec<(String, String)>> {
    let matchpathcon = cx.tools.get("matchpathcon")?;
    let mut out = Vec::new();
    for kind in [Kind::File, Kind::Dir, Kind::Link] {
        let paths: Vec<&String> = touched
            .iter()
            .filter(|(_, k)| **k == kind)
            .map(|(p, _)| p)
            .collect();
        if paths.is_empty() {
            continue;
        }
        let o = run_command(
            Command::new(&matchpathcon)
                .arg("-N")
                .arg("-f")
                .arg(&policy.spec)
                .args(["-m", kind.matchpathcon()])
                .args(&paths),
            cx.cancel(),
        )
        .with_context(|| {
            format!(
                "looking up SELinux labels in the image's {} policy",
                policy.name
            )
        })?;
        out.extend(selinux::parse_matchpathcon(&String::from_utf8_lossy(
            &o.stdout,
        )));
    }
    Ok(out)
}

/// `dump -p` each image path to a scratch file in one debugfs run; `None`
/// for a path that is missing.
fn dump_ext4(
    debugfs: &Path,
    at: &Ext4At,
    paths: &[&str],
    cx: &Cx<'_>,
) -> Result<Vec<Option<Vec<u8>>>> {
    if let Some(mut w) = cx.working()? {
        w.fill_file_data(debugfs, at, paths, cx.cancel())?;
    }
    let mut script = String::new();
    for (n, p) in paths.iter().enumerate() {
        let _ = fs::remove_file(at.dir.join(format!("dump-{n}")));
        script.push_str(&format!("dump -p {} dump-{n}\n", quote(p)?));
    }
    fs::write(at.dir.join("dump.debugfs"), script).context("writing the dump script")?;
    run_command(
        at.command(debugfs)
            .args(["-f", "dump.debugfs"])
            .arg(at.spec()),
        cx.cancel(),
    )
    .context("reading files from the root filesystem with debugfs")?;
    Ok((0..paths.len())
        .map(|n| fs::read(at.dir.join(format!("dump-{n}"))).ok())
        .collect())
}

/// The first text that looks like os-release (a symlink dumps as its
/// target's name, not as os-release text).
fn first_os_release(texts: impl Iterator<Item = Vec<u8>>) -> Option<String> {
    texts
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .find(|t| t.contains("ID="))
}

pub fn apply_mounted(cx: &Cx<'_>, root: &RootFs) -> Result<Applied> {
    let dev = LoopDevice::attach(&cx.tools, &cx.raw(), root.offset, root.size, cx.cancel())?;
    let (os_release, selinux) = {
        let mnt = Mounted::xfs(&dev, &cx.scratch.join("root"))?;
        check_room(cx, mnt.free_bytes()?)?;
        let read_tree = |path: &str| -> Result<Option<Vec<u8>>> {
            if let Some(mut w) = cx.working()? {
                w.fill_tree_file(&cx.tools, &mnt.dir, path, cx.cancel())?;
            }
            tree::read_in_tree(&mnt.dir, path)
        };
        let mut read = read_tree;
        let policy = selinux::find_policy(&mut read, cx.opts.selinux, &cx.scratch.join("selinux"))?;
        let layer = with_autorelabel(cx.layer, cx.opts.selinux, policy.as_ref());
        let touched = selinux::touched_paths(&layer, &|p| {
            fs::symlink_metadata(mnt.dir.join(p.trim_start_matches('/'))).is_ok()
        });
        tree::apply_to_tree(&mnt.dir, &layer)?;
        let mut labelled = 0;
        if let (Some(p), SelinuxMode::Label) = (&policy, cx.opts.selinux) {
            labelled = setfiles(cx, &mnt.dir, p, &touched)?;
        }
        let os_release = first_os_release(
            ["/etc/os-release", "/usr/lib/os-release"]
                .iter()
                .filter_map(|p| read_tree(p).ok().flatten()),
        );
        let info = outcome(policy.as_ref(), cx.opts.selinux, labelled, "setfiles");
        // Unmounted here: the data reaches the loop device before the
        // check and the conversion read it.
        drop(mnt);
        (os_release, info)
    };
    Ok(Applied {
        os_release,
        selinux,
        loop_dev: Some(dev),
    })
}

/// `setfiles -F -m -r MOUNT SPEC PATHS…` (the flags libguestfs's
/// selinux-relabel uses: force, no /proc/mounts lookup — the build host's
/// mount of the image need not be `seclabel` — and the alternate root).
fn setfiles(
    cx: &Cx<'_>,
    mnt: &Path,
    policy: &Policy,
    touched: &BTreeMap<String, Kind>,
) -> Result<usize> {
    if touched.is_empty() {
        return Ok(0);
    }
    let paths: Vec<std::path::PathBuf> = touched
        .keys()
        .map(|p| mnt.join(p.trim_start_matches('/')))
        .collect();
    run_command(
        Command::new(cx.tools.get("setfiles")?)
            .args(["-F", "-m", "-r"])
            .arg(mnt)
            .arg(&policy.spec)
            .args(&paths),
        cx.cancel(),
    )
    .with_context(|| {
        format!(
            "labelling the added files with setfiles against the image's {} policy; set \
             `qcow2.selinux: autorelabel` in the profile to relabel at first boot instead",
            policy.name
        )
    })?;
    Ok(paths.len())
}

/// `xfs_repair -n` on the unmounted filesystem.
pub fn check_xfs(cx: &Cx<'_>, dev: &LoopDevice) -> Result<()> {
    match run_command(
        Command::new(cx.tools.get("xfs_repair")?)
            .arg("-n")
            .arg(&dev.dev),
        cx.cancel(),
    ) {
        Ok(_) => Ok(()),
        Err(e @ CommandError::Interrupted { .. }) => Err(e.into()),
        Err(e) => Err(anyhow::Error::new(e)
            .context("the edited root filesystem does not pass `xfs_repair -n`")),
    }
}
