//! Command line: `run`, `check`, `status`, `upgrade`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::checks::{render_table, Level};
use crate::k3s::proxy::ProxyEnv;
use crate::rootfs::Root;
use crate::run::{self, RunOptions};
use crate::state::{RunResult, State};
use crate::system::{self, System};

/// First-boot agent of imgbuild K3s images: reads cloud-init NoCloud
/// metadata, prepares the node and installs the pinned K3s.
#[derive(Debug, Parser)]
#[command(name = "firstboot-agent", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Provision the node (resumes where an earlier run stopped).
    Run(RunArgs),
    /// Detection and preflight only; changes nothing. Exits 1 if anything fails.
    Check(CheckArgs),
    /// Print what the agent recorded.
    Status(StatusArgs),
    /// Move the installed K3s to another pinned release (or back with
    /// --rollback), verified by sha256; restarts K3s only when the
    /// release changes.
    #[command(long_about = UPGRADE_ABOUT)]
    Upgrade(UpgradeArgs),
}

const UPGRADE_ABOUT: &str = "\
Move the installed K3s to another pinned release, or back to the one the
last upgrade replaced (--rollback).

The binary comes from the mirror the node was provisioned with (k3s.mirror,
GitHub release layout) or from a file on the node (--binary), and is
installed only when its sha256 is the expected one: --sha256, else the
image's pin for the image's own release, else (only where the profile sets
k3s.trust-mirror-checksums: true) the mirror's sha256sum-amd64.txt. It
replaces /usr/local/bin/k3s atomically; the old binary is kept as
/usr/local/bin/k3s.previous. K3s is restarted (and awaited) only when the
binary changed: another release, or the same release whose installed binary
is not the pinned one. A downgrade across minor versions is
refused unless --force. On a server, --drain NODE drains NODE before and
uncordons it after, through `k3s kubectl`.

Cluster order, as K3s's upgrade playbook does it: servers one at a time,
each ready before the next, then the agents (see docs/agent.md).";

#[derive(Debug, Args)]
pub struct RootArg {
    /// Directory every path is relative to. Only `/` is this machine: with
    /// any other directory, actions on the machine (systemctl, modprobe,
    /// sysctl, mount, sethostname, swapoff, firewall-cmd, ufw, dnf) are
    /// recorded as "would run", not performed.
    #[arg(long, default_value = "/", value_name = "DIR")]
    pub root: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub root: RootArg,
    /// Start K3s without waiting for it to become ready; a helper unit
    /// (firstboot-agent-ready.service) confirms readiness afterwards.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub root: RootArg,
    /// Upper bound for the network checks, retries included.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub timeout: u64,
    /// Print the findings as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub root: RootArg,
    /// Print state and last result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    #[command(flatten)]
    pub root: RootArg,
    /// The K3s release to install, e.g. v1.35.0+k3s1.
    #[arg(
        long,
        value_name = "VERSION",
        required_unless_present = "rollback",
        conflicts_with = "rollback"
    )]
    pub version: Option<node_spec::K3sVersion>,
    /// sha256 of that release's amd64 `k3s` binary (the `k3s` line of its
    /// sha256sum-amd64.txt, checked out of band).
    #[arg(long, value_name = "HEX", conflicts_with = "rollback")]
    pub sha256: Option<node_spec::Sha256Hex>,
    /// Install this file on the node instead of downloading from the mirror
    /// (verified the same way).
    #[arg(long, value_name = "PATH", conflicts_with = "rollback")]
    pub binary: Option<PathBuf>,
    /// Go back to /usr/local/bin/k3s.previous, the binary the last upgrade
    /// replaced (the current one is kept there in turn).
    #[arg(long)]
    pub rollback: bool,
    /// Allow a downgrade across minor versions.
    #[arg(long)]
    pub force: bool,
    /// On a server: drain NODE (`k3s kubectl drain --ignore-daemonsets
    /// --delete-emptydir-data`) before, and uncordon it after.
    #[arg(long, value_name = "NODE")]
    pub drain: Option<String>,
}

impl UpgradeArgs {
    pub fn run(self, system: &dyn System) -> Result<ExitCode> {
        let root = Root::new(&self.root.root);
        let out = crate::upgrade::upgrade(
            &root,
            system,
            &crate::upgrade::UpgradeOptions {
                version: self.version,
                sha256: self.sha256,
                // A path as the operator typed it, relative to where they are.
                binary: self.binary.map(|p| std::path::absolute(&p).unwrap_or(p)),
                rollback: self.rollback,
                force: self.force,
                drain: self.drain,
                env: ProxyEnv::from_process(),
            },
        )?;
        println!("firstboot-agent: {}", out.message);
        Ok(ExitCode::SUCCESS)
    }
}

impl Cli {
    /// Run the chosen command on the system [`system::select`] picks for
    /// its `--root`: the real one for `/`, a recording dry run otherwise.
    pub fn run(self) -> Result<ExitCode> {
        let root = match self.command {
            Command::Run(ref a) => &a.root.root,
            Command::Check(ref a) => &a.root.root,
            Command::Upgrade(ref a) => &a.root.root,
            Command::Status(a) => return a.run(),
        };
        let selected = system::select(root)?;
        self.run_with(selected.system())
    }

    pub fn run_with(self, system: &dyn System) -> Result<ExitCode> {
        match self.command {
            Command::Run(a) => a.run(system),
            Command::Check(a) => a.run(system),
            Command::Upgrade(a) => a.run(system),
            Command::Status(a) => a.run(),
        }
    }
}

impl RunArgs {
    pub fn run(self, system: &dyn System) -> Result<ExitCode> {
        let root = Root::new(&self.root.root);
        run::run(
            &root,
            system,
            &RunOptions {
                no_wait: self.no_wait,
                env: ProxyEnv::from_process(),
            },
        )?;
        Ok(ExitCode::SUCCESS)
    }
}

impl CheckArgs {
    pub fn run(self, system: &dyn System) -> Result<ExitCode> {
        let root = Root::new(&self.root.root);
        let findings = run::check(
            &root,
            system,
            Duration::from_secs(self.timeout),
            &ProxyEnv::from_process(),
        );
        if self.json {
            println!("{}", serde_json::to_string_pretty(&findings)?);
        } else {
            print!("{}", render_table(&findings));
        }
        Ok(if findings.iter().any(|f| f.level == Level::Fail) {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    }
}

impl StatusArgs {
    pub fn run(self) -> Result<ExitCode> {
        let root = Root::new(&self.root.root);
        let state = State::load(&root).context("reading the agent state")?;
        let result = RunResult::load(&root).context("reading the last result")?;
        if self.json {
            let v = serde_json::json!({ "state": state, "result": result });
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            print!("{}", render_status(&state, result.as_ref()));
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Human-readable status.
pub fn render_status(state: &State, result: Option<&RunResult>) -> String {
    let mut out = String::new();
    let Some(instance) = &state.instance_id else {
        return match result.filter(|r| r.dry_run) {
            Some(r) => format!(
                "firstboot-agent has not run on this node yet; the last run was a dry run (--root was not /) for instance {} with {} action(s) left out (see {})\n",
                r.instance_id.as_deref().unwrap_or("?"),
                r.would_run.len(),
                crate::state::RESULT_FILE
            ),
            None => "firstboot-agent has not run on this node yet\n".into(),
        };
    };
    out.push_str(&format!(
        "instance:  {instance}\nfinished:  {}\n",
        if state.finished { "yes" } else { "no" }
    ));
    match &state.k3s {
        Some(k) => out.push_str(&format!(
            "k3s:       {} {} ({}), unit {}, installed for instance {}\n",
            k.version, k.role, k.topology, k.unit, k.instance_id
        )),
        None => out.push_str("k3s:       not installed by the agent\n"),
    }
    if let Some(p) = &state.k3s_previous {
        out.push_str(&format!(
            "previous:  {} kept as {} (`firstboot-agent upgrade --rollback`)\n",
            p.version,
            crate::k3s::binary::K3S_PREVIOUS
        ));
    }
    for u in &state.upgrades {
        out.push_str(&format!(
            "upgraded:  {} → {} by {}{}\n",
            u.from,
            u.to,
            u.by,
            if u.restarted { ", restarted" } else { "" }
        ));
    }
    if let Some(r) = result.filter(|r| !r.dry_run && state.k3s.is_some()) {
        if let Some(u) = r.k3s_scripts.last() {
            out.push_str(&format!("uninstall: {u}\n"));
        }
    }
    out.push_str("steps:\n");
    for (name, s) in &state.steps {
        out.push_str(&format!(
            "  {name:<15} {:<8} {:>7} ms  {}\n",
            format!("{:?}", s.status).to_lowercase(),
            s.duration_ms,
            s.message
        ));
    }
    if let Some(r) = result {
        if r.dry_run {
            out.push_str(
                "last run: a dry run (--root was not /); nothing was done on the machine\n",
            );
        }
        for e in &r.errors {
            out.push_str(&format!("error:     {e}\n"));
        }
        for w in &r.warnings {
            out.push_str(&format!("warning:   {w}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn status_names_the_uninstall_script_once_k3s_is_installed() {
        let mut state = State {
            instance_id: Some("i1".into()),
            ..State::default()
        };
        let result = RunResult {
            k3s_scripts: vec![
                "/usr/local/bin/k3s-killall.sh".into(),
                "/usr/local/bin/k3s-agent-uninstall.sh".into(),
            ],
            ..RunResult::default()
        };
        assert!(!render_status(&state, Some(&result)).contains("uninstall:"));
        state.k3s = Some(crate::state::K3sRecord {
            instance_id: "i1".into(),
            version: "v1.34.3+k3s1".into(),
            role: "agent".into(),
            topology: "agent".into(),
            unit: "k3s-agent.service".into(),
            sha256: String::new(),
        });
        assert!(render_status(&state, Some(&result))
            .contains("uninstall: /usr/local/bin/k3s-agent-uninstall.sh\n"));
    }

    #[test]
    fn parses_subcommands() {
        let c = Cli::try_parse_from(["firstboot-agent", "run", "--root", "/tmp/x", "--no-wait"])
            .unwrap();
        assert!(matches!(
            c.command,
            Command::Run(RunArgs { no_wait: true, .. })
        ));
        let c = Cli::try_parse_from(["firstboot-agent", "status", "--json"]).unwrap();
        assert!(matches!(
            c.command,
            Command::Status(StatusArgs { json: true, .. })
        ));
        assert!(Cli::try_parse_from(["firstboot-agent", "install"]).is_err());
        let sha = "a".repeat(64);
        let c = Cli::try_parse_from([
            "firstboot-agent",
            "upgrade",
            "--version",
            "v1.35.0+k3s1",
            "--sha256",
            &sha,
            "--drain",
            "n1",
        ])
        .unwrap();
        assert!(matches!(
            c.command,
            Command::Upgrade(UpgradeArgs {
                version: Some(_),
                sha256: Some(_),
                drain: Some(_),
                rollback: false,
                ..
            })
        ));
        for bad in [
            &["firstboot-agent", "upgrade"][..],
            &["firstboot-agent", "upgrade", "--version", "1.35"][..],
            &[
                "firstboot-agent",
                "upgrade",
                "--rollback",
                "--version",
                "v1.35.0+k3s1",
            ][..],
            &[
                "firstboot-agent",
                "upgrade",
                "--version",
                "v1.35.0+k3s1",
                "--sha256",
                "abc",
            ][..],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
        assert!(Cli::try_parse_from(["firstboot-agent", "upgrade", "--rollback"]).is_ok());
    }
}
