//! What the agent has done, kept in /var/lib/firstboot-agent/: `state.json`
//! (per-step outcomes for the current instance-id and the agent's own record
//! of an installed K3s), `result.json` (the last run, for people and tests)
//! and `done` (guards the unit once the node is finished). Every write is
//! atomic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::rootfs::{FileError, Root};

pub const STATE_DIR: &str = "/var/lib/firstboot-agent";
pub const STATE_FILE: &str = "/var/lib/firstboot-agent/state.json";
pub const RESULT_FILE: &str = "/var/lib/firstboot-agent/result.json";
pub const DONE_FILE: &str = "/var/lib/firstboot-agent/done";
const SCHEMA: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "{path}:{line}:{column}: {} — move the file away to start over (K3s, if installed, stays)",
        crate::message::plain_serde(message)
    )]
    Parse {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error(transparent)]
    File(#[from] FileError),
}

/// serde_json's message without its ` at line L column C` (the error names
/// the position itself).
fn json_message(e: &serde_json::Error) -> String {
    let m = e.to_string();
    match m.rfind(" at line ") {
        Some(i) => m[..i].to_owned(),
        None => m,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepStatus {
    Done,
    Failed,
    Skipped,
    Pending,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct StepRecord {
    pub status: StepStatus,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default)]
    pub attempts: u32,
    /// Warnings the step raised, carried into later runs' results when the
    /// step is skipped as done.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The agent's own record that it installed and started K3s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct K3sRecord {
    pub instance_id: String,
    pub version: String,
    pub role: String,
    pub topology: String,
    pub unit: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct State {
    pub schema: u32,
    pub instance_id: Option<String>,
    /// Step name → outcome, in the order they ran (names are unique).
    pub steps: BTreeMap<String, StepRecord>,
    pub k3s: Option<K3sRecord>,
    pub finished: bool,
    /// The files the image or cloud-init had put under /etc/rancher/k3s and
    /// K3s's data directory before K3s first started, which the uninstall
    /// script keeps (listed once, before the first start, and kept here so
    /// later runs write the same script).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_on_uninstall: Option<Vec<String>>,
    /// The proxy variables of the agent's environment in the first run of
    /// this instance that had any, for runs without them (the readiness
    /// unit). state.json is 0600: a proxy URL may hold a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_environment: Option<BTreeMap<String, String>>,
    /// The snapshotter decided for this instance (probed once: a K3s that
    /// has pulled images keeps its snapshotter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshotter: Option<crate::distro::snapshotter::Decision>,
    /// The binary the last upgrade replaced, kept as
    /// `/usr/local/bin/k3s.previous` for `firstboot-agent upgrade --rollback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k3s_previous: Option<PreviousBinary>,
    /// Every upgrade and rollback of K3s on this node, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upgrades: Vec<UpgradeRecord>,
}

/// A kept K3s binary: its release and digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PreviousBinary {
    pub version: String,
    pub sha256: String,
}

/// One change of the installed K3s release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct UpgradeRecord {
    pub from: String,
    pub to: String,
    /// The digest of the binary now installed.
    pub sha256: String,
    /// What asked for it: `firstboot-agent upgrade`, `firstboot-agent
    /// upgrade --rollback`, or the metadata's `k3s.version`.
    pub by: String,
    /// Where the binary came from (mirror URL, local file, baked copy, kept
    /// previous binary).
    pub source: String,
    /// Whether the K3s unit was restarted for it.
    pub restarted: bool,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

impl Default for State {
    fn default() -> Self {
        Self {
            schema: SCHEMA,
            instance_id: None,
            steps: BTreeMap::new(),
            k3s: None,
            finished: false,
            kept_on_uninstall: None,
            proxy_environment: None,
            snapshotter: None,
            k3s_previous: None,
            upgrades: Vec::new(),
        }
    }
}

impl State {
    pub fn load(root: &Root) -> Result<Self, StateError> {
        match root.read_optional(STATE_FILE)? {
            None => Ok(Self::default()),
            Some(text) => serde_json::from_str(&text).map_err(|e| StateError::Parse {
                path: STATE_FILE.into(),
                line: e.line(),
                column: e.column(),
                message: json_message(&e),
            }),
        }
    }

    pub fn save(&self, root: &Root) -> Result<(), FileError> {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        root.write_atomic(STATE_FILE, text.as_bytes(), 0o600)
    }

    pub fn is_done(&self, step: &str) -> bool {
        self.steps
            .get(step)
            .is_some_and(|s| s.status == StepStatus::Done)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct StepResult {
    pub name: String,
    pub status: StepStatus,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// `result.json`: the outcome of the last run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RunResult {
    pub finished: bool,
    pub instance_id: Option<String>,
    pub profile: Option<String>,
    pub role: Option<String>,
    pub topology: Option<String>,
    pub k3s_version: Option<String>,
    pub unit: Option<String>,
    pub metadata_source: Option<String>,
    /// How the seed's vendor-data took part (absent: the seed has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_data: Option<String>,
    /// `k3s.<key>` → the seed file and line it was set in (keys the
    /// metadata sets; the rest come from the image's defaults).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub k3s_settings_from: BTreeMap<String, String>,
    pub steps: Vec<StepResult>,
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
    /// Seconds from the start of PID 1 (the VM's or the container's boot) to
    /// the end of the run.
    pub boot_to_done_secs: Option<f64>,
    /// The run was against a `--root` other than `/`: actions on the
    /// machine were recorded in `would-run`, not performed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// `would run: <command>` for each action a dry run left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub would_run: Vec<String>,
    /// Temp files of killed runs removed at the start of this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_temp_files: Vec<String>,
    /// install.sh's scripts on this node: `k3s-killall.sh` and the role's
    /// uninstall script.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub k3s_scripts: Vec<String>,
    /// Proxy variables copied from the agent's own environment into K3s's
    /// env file (names only: the values may hold passwords).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_from_environment: Vec<String>,
    /// containerd's snapshotter on this node, and why
    /// ([`crate::distro::snapshotter`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshotter: Option<crate::distro::snapshotter::Decision>,
}

impl RunResult {
    pub fn load(root: &Root) -> Result<Option<Self>, StateError> {
        root.read_optional(RESULT_FILE)?
            .map(|text| {
                serde_json::from_str(&text).map_err(|e| StateError::Parse {
                    path: RESULT_FILE.into(),
                    line: e.line(),
                    column: e.column(),
                    message: json_message(&e),
                })
            })
            .transpose()
    }

    pub fn save(&self, root: &Root) -> Result<(), FileError> {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        root.write_atomic(RESULT_FILE, text.as_bytes(), 0o644)
    }
}

/// Start time of a process in clock ticks since the kernel booted: field 22
/// of `/proc/<pid>/stat`, counted after the `(comm)` field, which may hold
/// spaces and parentheses.
pub fn parse_stat_starttime(text: &str) -> Option<u64> {
    let after = &text[text.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Clock ticks per second in `/proc` (USER_HZ), fixed at 100 by the Linux
/// ABI on x86_64.
pub const USER_HZ: f64 = 100.0;

/// Seconds from PID 1's start to now, from `/proc/uptime` and `/proc/1/stat`.
/// In a container PID 1 is the container's init, so this is the container's
/// boot time rather than the host's uptime.
pub fn boot_to_now(uptime: &str, pid1_stat: Option<&str>) -> Option<f64> {
    let up = parse_uptime(uptime)?;
    let started = pid1_stat
        .and_then(parse_stat_starttime)
        .map(|t| t as f64 / USER_HZ)
        .unwrap_or(0.0);
    Some((up - started).max(0.0))
}

/// First field of /proc/uptime.
pub fn parse_uptime(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        assert_eq!(State::load(&root).unwrap(), State::default());
        let mut s = State {
            instance_id: Some("i".into()),
            ..State::default()
        };
        s.steps.insert(
            "tweaks".into(),
            StepRecord {
                status: StepStatus::Done,
                duration_ms: 3,
                message: String::new(),
                attempts: 1,
                warnings: vec!["tweaks: module br_netfilter: not loaded".into()],
            },
        );
        s.save(&root).unwrap();
        let loaded = State::load(&root).unwrap();
        assert!(loaded.is_done("tweaks") && !loaded.is_done("k3s-binary"));
        assert_eq!(loaded.steps["tweaks"].warnings.len(), 1);
        std::fs::write(root.path(STATE_FILE), "{\n  \"schema\": 1,\n  oops\n").unwrap();
        let e = State::load(&root).unwrap_err().to_string();
        assert!(
            e.starts_with("/var/lib/firstboot-agent/state.json:3:"),
            "{e}"
        );
        assert!(!e.contains(" at line "), "position given twice: {e}");
        std::fs::write(root.path(STATE_FILE), "{\"schema\": \"one\"}").unwrap();
        let e = State::load(&root).unwrap_err().to_string();
        assert!(
            e.contains("expected a whole number") && !e.contains("u32"),
            "{e}"
        );
    }

    #[test]
    fn boot_time_is_relative_to_pid1() {
        let stat = "1 (systemd (x)) S 0 1 1 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 400000 1 2";
        assert_eq!(parse_stat_starttime(stat), Some(400000));
        assert_eq!(boot_to_now("4012.5 1.0\n", Some(stat)), Some(12.5));
        assert_eq!(boot_to_now("12.5 1.0\n", None), Some(12.5));
        assert_eq!(parse_stat_starttime("garbage"), None);
    }

    #[test]
    fn uptime() {
        assert_eq!(parse_uptime("12.34 40.00\n"), Some(12.34));
        assert_eq!(parse_uptime(""), None);
    }
}
