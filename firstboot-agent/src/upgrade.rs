//! `firstboot-agent upgrade`: move an installed K3s to another pinned
//! release, or back to the one an upgrade replaced.
//!
//! What the seeds' runbooks do, per node (k3s-io/k3s-ansible,
//! `roles/k3s_upgrade/tasks/main.yml`): ask the installed binary its
//! version (`k3s --version`), install the target only when it differs, then
//! restart the role's unit. On top of that: the binary is verified against
//! a pinned sha256 (as at first boot, [`binary::expected_digest`]) and
//! installed atomically, the one it replaces is kept for `--rollback`, a
//! downgrade across minor versions is refused unless forced (Kubernetes
//! supports none), and a server can drain a node before and uncordon it
//! after (`k3s kubectl`). Every change is recorded in state.json.
//!
//! A newer pin in the metadata (`k3s.version`) takes the same path from
//! `firstboot-agent run` ([`install_for_run`]).

use std::fs;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use node_spec::{K3sVersion, Role, Sha256Hex};

use crate::k3s::binary::{self, file_sha256, InstallOptions, Installed, K3S_BIN, K3S_PREVIOUS};
use crate::k3s::{self, proxy::ProxyEnv};
use crate::metadata::NodeConfig;
use crate::rootfs::{FileError, Root};
use crate::state::{K3sRecord, PreviousBinary, State, UpgradeRecord, STATE_FILE};
use crate::system::System;

/// What `firstboot-agent upgrade` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct UpgradeOptions {
    /// The release to install; `None` with `rollback`.
    pub version: Option<K3sVersion>,
    /// The digest its amd64 binary must have.
    pub sha256: Option<Sha256Hex>,
    /// Install this file on the node instead of downloading.
    pub binary: Option<PathBuf>,
    /// Go back to the binary the last upgrade replaced.
    pub rollback: bool,
    /// Allow a downgrade across minor versions.
    pub force: bool,
    /// Drain this node before and uncordon it after (servers only).
    pub drain: Option<String>,
    /// The agent's own proxy variables.
    pub env: ProxyEnv,
}

/// Why an upgrade was refused. Nothing was changed when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("firstboot-agent has not installed K3s on this node ({STATE_FILE} records none); provision it with `firstboot-agent run` first")]
    NotInstalled,
    #[error("K3s {from} → {to} is a downgrade across minor versions, which Kubernetes does not support (the datastore may already be migrated); nothing was changed. Restore an etcd snapshot taken before the upgrade instead, or pass --force if you know it is safe")]
    Downgrade { from: String, to: String },
    #[error("there is no binary to roll back to: no upgrade has kept one as {K3S_PREVIOUS}")]
    NoPrevious,
    #[error("{K3S_PREVIOUS} has sha256 {actual}, not the {expected} of K3s {version} kept by the last upgrade; it was changed since, so it is not rolled back to. Upgrade to the release you want with `firstboot-agent upgrade --version`")]
    PreviousChanged {
        version: String,
        expected: String,
        actual: String,
    },
    #[error("--drain: this node runs K3s as an agent, which has no cluster credentials; drain from a server: `k3s kubectl drain {node} --ignore-daemonsets --delete-emptydir-data` there, upgrade this node, then `k3s kubectl uncordon {node}`")]
    DrainOnAgent { node: String },
    #[error("`k3s kubectl {args}` failed: {stderr}")]
    Kubectl { args: String, stderr: String },
    #[error("cannot tell which K3s release {K3S_BIN} is: it is not the binary the agent recorded and `k3s --version` said {said:?}")]
    UnknownVersion { said: String },
}

/// What an upgrade did, for the console and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeOutcome {
    pub from: String,
    pub to: String,
    /// The binary was replaced.
    pub changed: bool,
    /// The K3s unit was restarted.
    pub restarted: bool,
    pub message: String,
}

/// A change from `from` to `to` Kubernetes supports: anything but going
/// back a minor version, unless `force`.
pub fn check_change(from: &K3sVersion, to: &K3sVersion, force: bool) -> Result<(), UpgradeError> {
    if to.minor() < from.minor() && !force {
        return Err(UpgradeError::Downgrade {
            from: from.to_string(),
            to: to.to_string(),
        });
    }
    if to.minor() > from.minor() + 1 {
        // K3s's docs: upgrade one minor version at a time.
        tracing::warn!(
            "{from} → {to} skips minor versions; Kubernetes supports upgrading one minor version at a time"
        );
    }
    Ok(())
}

/// The release of a `k3s --version` answer:
/// `k3s version v1.34.3+k3s1 (abcdef12)` → `v1.34.3+k3s1`.
pub fn parse_version_output(out: &str) -> Option<K3sVersion> {
    let first = out.lines().next()?;
    let mut words = first.split_whitespace();
    (words.next()? == "k3s" && words.next()? == "version")
        .then(|| words.next()?.parse().ok())
        .flatten()
}

/// The release installed now: the agent's record when the binary is the
/// one it recorded, else what the binary says.
fn installed_version(root: &Root, system: &dyn System, rec: &K3sRecord) -> Result<K3sVersion> {
    let path = root.path(K3S_BIN);
    if file_sha256(&path)?.is_some_and(|s| s.as_str() == rec.sha256) {
        return rec
            .version
            .parse()
            .with_context(|| format!("{STATE_FILE}: k3s.version"));
    }
    let out = system.k3s(&path, &["--version"])?;
    parse_version_output(&out.stdout).ok_or_else(|| {
        UpgradeError::UnknownVersion {
            said: format!("{}{}", out.stdout.trim(), out.stderr.trim()),
        }
        .into()
    })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn source_of(origin: &binary::Origin) -> String {
    match origin {
        binary::Origin::AlreadyInstalled => "already installed".into(),
        binary::Origin::Baked => "the image's baked binary".into(),
        binary::Origin::Downloaded(url) => url.clone(),
        binary::Origin::Local(path) => path.clone(),
    }
}

/// Record that `installed` replaced the binary of release `from`; the
/// outcome says `message`.
fn record_change(
    state: &mut State,
    from: &str,
    to: &K3sVersion,
    installed: &Installed,
    by: &str,
    restarted: bool,
    message: String,
) -> UpgradeOutcome {
    if let Some(k) = state.k3s.as_mut() {
        if installed.kept_previous {
            state.k3s_previous = Some(PreviousBinary {
                version: k.version.clone(),
                sha256: k.sha256.clone(),
            });
        }
        k.version = to.to_string();
        k.sha256 = installed.sha256.to_string();
    }
    state.upgrades.push(UpgradeRecord {
        from: from.to_owned(),
        to: to.to_string(),
        sha256: installed.sha256.to_string(),
        by: by.to_owned(),
        source: source_of(&installed.origin),
        restarted,
        at: now(),
    });
    UpgradeOutcome {
        from: from.to_owned(),
        to: to.to_string(),
        changed: true,
        restarted,
        message,
    }
}

/// The k3s-binary step of `firstboot-agent run`: on a node where the agent
/// installed K3s already and the metadata pins another release, the same
/// checks and bookkeeping as `firstboot-agent upgrade` (without --force or
/// --drain); otherwise [`binary::install`]. The caller restarts K3s when
/// the binary changed. Returns a note for the step message.
pub fn install_for_run(
    root: &Root,
    system: &dyn System,
    cfg: &NodeConfig,
    state: &mut State,
) -> Result<(Installed, Option<String>)> {
    let Some(rec) = state.k3s.clone() else {
        return Ok((binary::install(root, system, cfg)?, None));
    };
    if rec.version == cfg.version.as_str() {
        return Ok((binary::install(root, system, cfg)?, None));
    }
    let from: K3sVersion = rec
        .version
        .parse()
        .with_context(|| format!("{STATE_FILE}: k3s.version"))?;
    check_change(&from, &cfg.version, false)?;
    let installed = binary::install_with(
        root,
        system,
        cfg,
        &InstallOptions {
            local: None,
            keep_previous: true,
        },
    )?;
    // The caller restarts the unit (the binary changed) when it runs.
    let started = state.is_done("k3s-start");
    let note = format!("upgraded from {from} (the metadata pins {})", cfg.version);
    let done = record_change(
        state,
        &rec.version,
        &cfg.version,
        &installed,
        "metadata k3s.version",
        started,
        note,
    );
    Ok((installed, Some(done.message)))
}

/// Run `k3s kubectl ARGS` on this server.
fn kubectl(root: &Root, system: &dyn System, args: &[&str]) -> Result<(), UpgradeError> {
    let mut full = vec!["kubectl"];
    full.extend_from_slice(args);
    let out = system
        .k3s(&root.path(K3S_BIN), &full)
        .map_err(|e| UpgradeError::Kubectl {
            args: args.join(" "),
            stderr: e.to_string(),
        })?;
    if !out.success {
        return Err(UpgradeError::Kubectl {
            args: args.join(" "),
            stderr: out.stderr.trim().to_owned(),
        });
    }
    Ok(())
}

/// Restart K3s for a new release and wait until it is ready again (not in
/// a dry run, where nothing was restarted).
fn restart_and_wait(root: &Root, system: &dyn System, cfg: &NodeConfig) -> Result<()> {
    k3s::restart_blocking(system, cfg.role)?;
    if system.acts_on_host() {
        k3s::wait_ready(root, system, cfg.role, cfg.ready_timeout)?;
    }
    Ok(())
}

/// `firstboot-agent upgrade` (see the module docs).
pub fn upgrade(root: &Root, system: &dyn System, opts: &UpgradeOptions) -> Result<UpgradeOutcome> {
    let mut state = State::load(root)?;
    let rec = state.k3s.clone().ok_or(UpgradeError::NotInstalled)?;
    let mut cfg = crate::run::load_node_config(root, system, &opts.env)
        .context("reading the node's configuration (the image defaults and its metadata)")?;
    if opts.drain.is_some() && cfg.role != Role::Server {
        return Err(UpgradeError::DrainOnAgent {
            node: opts.drain.clone().unwrap_or_default(),
        }
        .into());
    }
    let current = installed_version(root, system, &rec)?;
    let started = state.is_done("k3s-start");

    let outcome = if opts.rollback {
        rollback(root, system, &mut state, &cfg, &current, opts, started)?
    } else {
        let target = opts
            .version
            .clone()
            .ok_or_else(|| anyhow!("give --version (or --rollback)"))?;
        // The metadata's pin stays when it is for this very release.
        if opts.sha256.is_some() || cfg.version != target {
            cfg.retarget(
                target.clone(),
                opts.sha256
                    .clone()
                    .map(|d| (d, "given with --sha256".to_owned())),
            );
        }
        let installed_sha = file_sha256(&root.path(K3S_BIN))?;
        let same_binary = cfg.pinned_sha256.is_none() || installed_sha == cfg.pinned_sha256;
        if current == target && same_binary {
            UpgradeOutcome {
                from: current.to_string(),
                to: target.to_string(),
                changed: false,
                restarted: false,
                message: format!("K3s {target} is installed already; nothing to do"),
            }
        } else {
            check_change(&current, &target, opts.force)?;
            with_drain(root, system, opts, || {
                let installed = binary::install_with(
                    root,
                    system,
                    &cfg,
                    &InstallOptions {
                        local: opts.binary.as_ref().map(|p| root.path(p)),
                        keep_previous: true,
                    },
                )?;
                // A new release restarts K3s; the same release (a binary
                // repaired to its pin) does too, since the file changed.
                let restart = started && installed.origin != binary::Origin::AlreadyInstalled;
                if restart {
                    restart_and_wait(root, system, &cfg)?;
                }
                let message = format!(
                    "K3s {current} → {target}: {} (sha256 {}){}",
                    installed.origin.describe(),
                    installed.sha256,
                    restart_note(restart, started, &cfg),
                );
                Ok(record_change(
                    &mut state,
                    current.as_str(),
                    &target,
                    &installed,
                    "firstboot-agent upgrade",
                    restart,
                    message,
                ))
            })?
        }
    };
    if system.acts_on_host() {
        state.save(root).context("recording the upgrade")?;
    }
    Ok(outcome)
}

fn restart_note(restarted: bool, started: bool, cfg: &NodeConfig) -> String {
    if restarted {
        format!("; {} restarted and ready", cfg.unit_name())
    } else if !started {
        format!(
            "; {} was not started yet, so it was not restarted",
            cfg.unit_name()
        )
    } else {
        String::new()
    }
}

/// Drain before `f`, uncordon after it succeeded. When `f` fails the node
/// stays cordoned, and the error says so.
fn with_drain<T>(
    root: &Root,
    system: &dyn System,
    opts: &UpgradeOptions,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let Some(node) = &opts.drain else {
        return f();
    };
    // kubectl's own flags for a node running DaemonSets and pods with
    // emptyDir volumes, as K3s's and Kubernetes' upgrade docs drain.
    kubectl(
        root,
        system,
        &[
            "drain",
            node,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=300s",
        ],
    )?;
    let out = f().with_context(|| {
        format!("{node} is still cordoned; once fixed, `k3s kubectl uncordon {node}`")
    })?;
    kubectl(root, system, &["uncordon", node])?;
    Ok(out)
}

/// `--rollback`: swap the kept binary and the installed one, so a second
/// rollback goes forward again.
fn rollback(
    root: &Root,
    system: &dyn System,
    state: &mut State,
    cfg: &NodeConfig,
    current: &K3sVersion,
    opts: &UpgradeOptions,
    started: bool,
) -> Result<UpgradeOutcome> {
    let prev = state.k3s_previous.clone().ok_or(UpgradeError::NoPrevious)?;
    let prev_path = root.path(K3S_PREVIOUS);
    let actual = file_sha256(&prev_path)?.ok_or(UpgradeError::NoPrevious)?;
    if actual.as_str() != prev.sha256 {
        return Err(UpgradeError::PreviousChanged {
            version: prev.version,
            expected: prev.sha256,
            actual: actual.to_string(),
        }
        .into());
    }
    let target: K3sVersion = prev
        .version
        .parse()
        .with_context(|| format!("{STATE_FILE}: k3s-previous.version"))?;
    check_change(current, &target, opts.force)?;
    with_drain(root, system, opts, || {
        let dest = root.path(K3S_BIN);
        let dir = dest
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_else(|| root.path("/"));
        // The installed binary under a temp name, the kept one over it,
        // then the temp one as the kept one: each step a rename.
        let tmp = tempfile::Builder::new()
            .prefix(&crate::leftovers::temp_prefix(
                crate::leftovers::DOWNLOAD_TEMP,
            ))
            .make_in(&dir, |p| fs::hard_link(&dest, p))
            .map_err(|e| FileError::new("keeping a link to", &dest, e))?;
        fs::rename(&prev_path, &dest)
            .map_err(|e| FileError::new("renaming into place", &dest, e))?;
        tmp.persist(&prev_path)
            .map_err(|e| FileError::new("renaming into place", &prev_path, e.error))?;
        crate::rootfs::sync_dir(&dir)?;
        let restart = started && current != &target;
        if restart {
            restart_and_wait(root, system, cfg)?;
        }
        let installed = Installed {
            origin: binary::Origin::Local(K3S_PREVIOUS.to_owned()),
            sha256: actual.clone(),
            not_linked: Vec::new(),
            kept_previous: true,
        };
        let message = format!(
            "K3s {current} → {target}: rolled back to {K3S_PREVIOUS} (sha256 {actual}); {current} is kept there now{}",
            restart_note(restart, started, cfg),
        );
        Ok(record_change(
            state,
            current.as_str(),
            &target,
            &installed,
            "firstboot-agent upgrade --rollback",
            restart,
            message,
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> K3sVersion {
        s.parse().unwrap()
    }

    #[test]
    fn version_output() {
        let out = "k3s version v1.34.3+k3s1 (abcdef12)\ngo version go1.24.4\n";
        assert_eq!(parse_version_output(out), Some(v("v1.34.3+k3s1")));
        assert_eq!(parse_version_output("k3s-standin: nope\n"), None);
        assert_eq!(parse_version_output(""), None);
    }

    #[test]
    fn downgrades_across_minors_need_force() {
        assert!(check_change(&v("v1.34.3+k3s1"), &v("v1.35.0+k3s1"), false).is_ok());
        assert!(check_change(&v("v1.34.3+k3s1"), &v("v1.34.1+k3s1"), false).is_ok());
        let e = check_change(&v("v1.34.3+k3s1"), &v("v1.33.6+k3s1"), false).unwrap_err();
        assert!(
            e.to_string().contains("downgrade across minor versions"),
            "{e}"
        );
        assert!(check_change(&v("v1.34.3+k3s1"), &v("v1.33.6+k3s1"), true).is_ok());
    }
}
