//! SELinux labels for what the layer writes, from the image's own policy.
//!
//! An image that runs SELinux enforcing (Rocky, RHEL) cannot use a file
//! without its label: the agent's binary, unit and defaults would be
//! `unlabeled_t`. virt-customize labels with `setfiles` against the guest's
//! `/etc/selinux/<SELINUXTYPE>/contexts/files/file_contexts` and falls back
//! to `/.autorelabel` (libguestfs-common `mlcustomize/SELinux_relabel.ml`).
//! imgbuild does the same, but only for the paths the layer created or
//! changed, and the fallback only when the profile asks for it
//! (`qcow2.selinux: autorelabel`): an autorelabel boot relabels the whole
//! filesystem and reboots before the agent runs.
//!
//! The policy's text spec files are copied out of the image first (not the
//! compiled `.bin`, whose format must match the host's libselinux):
//! - a mounted root (XFS) is labelled with `setfiles -r MOUNT SPEC PATHS`;
//! - an ext4 root (debugfs, no mount) gets each path's context from
//!   `matchpathcon -f SPEC -m KIND`, written as the `security.selinux`
//!   xattr with `debugfs ea_set`, NUL-terminated as the kernel stores it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::layer::{pattern_matches_path_or_ancestor, Layer, Op};

pub use crate::plan::schema::SelinuxMode;

/// What was done, for the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SelinuxInfo {
    /// `SELINUXTYPE` of the image (`targeted`); absent without a policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Paths labelled.
    pub labelled: usize,
    /// `setfiles` (a mounted root), `xattr` (ext4, via debugfs),
    /// `autorelabel`, or `none` (no policy, or SELinux disabled).
    pub method: String,
}

impl SelinuxInfo {
    pub fn none() -> Self {
        SelinuxInfo {
            policy: None,
            labelled: 0,
            method: "none".into(),
        }
    }
}

/// `SELINUX=` and `SELINUXTYPE=` of `/etc/selinux/config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub disabled: bool,
    /// `targeted` when unset, as libselinux assumes.
    pub policy: String,
}

pub fn parse_config(text: &str) -> Config {
    let mut c = Config {
        disabled: false,
        policy: "targeted".into(),
    };
    for line in text.lines() {
        let Some((k, v)) = line.trim().split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"');
        match k.trim() {
            "SELINUX" => c.disabled = v.eq_ignore_ascii_case("disabled"),
            "SELINUXTYPE" if !v.is_empty() => c.policy = v.to_owned(),
            _ => {}
        }
    }
    c
}

/// Spec files read beside `file_contexts` (libselinux `label_file.c`).
pub const SPEC_FILES: &[&str] = &[
    "file_contexts",
    "file_contexts.homedirs",
    "file_contexts.local",
    "file_contexts.subs_dist",
    "file_contexts.subs",
];

/// `/etc/selinux/<policy>/contexts/files`.
pub fn spec_dir(policy: &str) -> String {
    format!("/etc/selinux/{policy}/contexts/files")
}

/// A policy name that can be a path component.
pub fn check_policy_name(policy: &str) -> Result<()> {
    if policy.is_empty()
        || policy == "."
        || policy == ".."
        || !policy
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!("/etc/selinux/config names the policy {policy:?}, which is not a policy name");
    }
    Ok(())
}

/// The image's policy, its spec files copied to `dir`.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    /// `dir/file_contexts`.
    pub spec: PathBuf,
}

/// What to do for an image: read its config with `read` (a path in the
/// image → its bytes, `None` if missing) and copy the spec files to `dir`.
/// `Ok(None)`: no policy, or SELinux disabled.
pub fn find_policy(
    read: &mut dyn FnMut(&str) -> Result<Option<Vec<u8>>>,
    mode: SelinuxMode,
    dir: &Path,
) -> Result<Option<Policy>> {
    let Some(config) = read("/etc/selinux/config")? else {
        return Ok(None);
    };
    let config = parse_config(&String::from_utf8_lossy(&config));
    if config.disabled {
        return Ok(None);
    }
    check_policy_name(&config.policy)?;
    let policy = Policy {
        name: config.policy.clone(),
        spec: dir.join("file_contexts"),
    };
    if mode == SelinuxMode::Autorelabel {
        return Ok(Some(policy));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let src = spec_dir(&config.policy);
    for name in SPEC_FILES {
        if let Some(bytes) = read(&format!("{src}/{name}"))? {
            let p = dir.join(name);
            std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
        }
    }
    if !policy.spec.is_file() {
        bail!(
            "the image runs SELinux (policy {}) but has no {src}/file_contexts to label the \
             files imgbuild adds; install the policy in the image, or set `qcow2.selinux: \
             autorelabel` in the profile to relabel at first boot",
            config.policy
        );
    }
    Ok(Some(policy))
}

/// The kind `matchpathcon -m` and file_contexts' `--`/`-d`/`-l` speak of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    File,
    Dir,
    Link,
}

impl Kind {
    pub fn matchpathcon(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Link => "lnk_file",
        }
    }
}

/// Every path the layer creates or replaces, with its kind, as it stands
/// once the layer is applied: the op paths, the missing parents it makes
/// (`existed` says what the base had), minus what later removals take.
pub fn touched_paths(layer: &Layer, existed: &dyn Fn(&str) -> bool) -> BTreeMap<String, Kind> {
    let mut out: BTreeMap<String, Kind> = BTreeMap::new();
    for op in &layer.ops {
        let kind = match op {
            Op::Remove { pattern } => {
                out.retain(|p, _| !pattern_matches_path_or_ancestor(pattern, p));
                continue;
            }
            Op::Mkdir { .. } => Kind::Dir,
            Op::WriteFile { .. } => Kind::File,
            Op::Symlink { .. } => Kind::Link,
        };
        let path = op.path();
        let mut prefix = String::new();
        let comps: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        for c in &comps[..comps.len().saturating_sub(1)] {
            prefix.push('/');
            prefix.push_str(c);
            if !out.contains_key(&prefix) && !existed(&prefix) {
                out.insert(prefix.clone(), Kind::Dir);
            }
        }
        out.insert(path.to_owned(), kind);
    }
    out
}

/// `matchpathcon -N` output: `PATH\tCONTEXT` per line; `<<none>>` (no
/// label for the path) is left out.
pub fn parse_matchpathcon(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| l.rsplit_once('\t'))
        .filter(|(_, c)| !c.trim().is_empty() && c.trim() != "<<none>>")
        .map(|(p, c)| (p.to_owned(), c.trim().to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{Content, Meta};

    #[test]
    fn reads_the_config_as_libselinux_does() {
        let c = parse_config("# c\nSELINUX=enforcing\nSELINUXTYPE=targeted\n");
        assert_eq!((c.disabled, c.policy.as_str()), (false, "targeted"));
        let c = parse_config("SELINUX=disabled\n");
        assert!(c.disabled);
        assert_eq!(parse_config("SELINUX=permissive\n").policy, "targeted");
        assert_eq!(parse_config("SELINUXTYPE=\"mls\"\n").policy, "mls");
        assert!(check_policy_name("../../etc").is_err());
        assert!(check_policy_name("default").is_ok());
    }

    #[test]
    fn touched_paths_follow_the_ops() {
        let m = Meta {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
        };
        let layer = Layer {
            ops: vec![
                Op::WriteFile {
                    path: "/etc/firstboot-agent/defaults.yaml".into(),
                    meta: m,
                    content: Content::Inline(Vec::new()),
                },
                Op::Symlink {
                    path: "/etc/systemd/system/multi-user.target.wants/a.service".into(),
                    target: "/etc/systemd/system/a.service".into(),
                    meta: m,
                },
                Op::WriteFile {
                    path: "/var/tmp/x".into(),
                    meta: m,
                    content: Content::Inline(Vec::new()),
                },
                Op::Remove {
                    pattern: "/var/tmp/*".into(),
                },
            ],
        };
        let existed =
            |p: &str| ["/etc", "/etc/systemd", "/etc/systemd/system", "/var"].contains(&p);
        let t: Vec<(String, Kind)> = touched_paths(&layer, &existed).into_iter().collect();
        assert_eq!(
            t,
            vec![
                ("/etc/firstboot-agent".into(), Kind::Dir),
                ("/etc/firstboot-agent/defaults.yaml".into(), Kind::File),
                (
                    "/etc/systemd/system/multi-user.target.wants".into(),
                    Kind::Dir
                ),
                (
                    "/etc/systemd/system/multi-user.target.wants/a.service".into(),
                    Kind::Link
                ),
                ("/var/tmp".into(), Kind::Dir),
            ]
        );
    }

    #[test]
    fn matchpathcon_output() {
        let out =
            "/etc/hostname\tsystem_u:object_r:net_conf_t:s0\n/proc/x\t<<none>>\n/a b\tu:r:t:s0\n";
        assert_eq!(
            parse_matchpathcon(out),
            vec![
                (
                    "/etc/hostname".into(),
                    "system_u:object_r:net_conf_t:s0".into()
                ),
                ("/a b".into(), "u:r:t:s0".into()),
            ]
        );
    }
}
