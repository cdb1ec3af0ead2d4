//! The first-boot pipeline, top to bottom. Each named step records its
//! outcome in state.json before the next starts, so a crash or reboot
//! resumes; every step is idempotent, and steps with lasting side effects
//! that already succeeded for this instance are skipped.

use std::time::{Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use node_spec::{BakedDefaults, DEFAULTS_PATH};

use crate::checks::{self, network, Finding, Level};
use crate::env::{self, Environment};
use crate::hostname;
use crate::k3s::proxy::{ProxyEnv, ProxySettings};
use crate::k3s::{self, binary, scripts};
use crate::leftovers;
use crate::message::plain_serde;
use crate::metadata::{self, token_file, NodeConfig};
use crate::rootfs::Root;
use crate::ssh;
use crate::state::{self, K3sRecord, RunResult, State, StepRecord, StepResult, StepStatus};
use crate::system::System;
use crate::tweaks;

/// Options of `firstboot-agent run`.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Start K3s but do not wait for it here; readiness is then confirmed by
    /// [`READY_UNIT`], which runs `firstboot-agent run` again once K3s has
    /// started (the agent's own unit is ordered before K3s, so it cannot wait).
    pub no_wait: bool,
    /// The proxy variables of the agent's own environment
    /// ([`ProxyEnv::from_process`] on a node; tests give their own).
    pub env: ProxyEnv,
}

pub const READY_UNIT: &str = "firstboot-agent-ready.service";
pub const READY_UNIT_TEXT: &str =
    "# Written by firstboot-agent: confirms K3s readiness after the first-boot
# unit (which is ordered before K3s and so cannot wait for it) has finished.
[Unit]
Description=Confirm K3s is ready (firstboot-agent)
After=firstboot-agent.service k3s.service k3s-agent.service
ConditionPathExists=!/var/lib/firstboot-agent/done

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/firstboot-agent run
StandardOutput=journal+console
";

/// A step failed. The message is the cause, once, with what to do; the run
/// stays retryable.
#[derive(Debug, thiserror::Error)]
#[error("step {step} failed: {message}; after fixing it, run `firstboot-agent run` again (firstboot-agent.service retries every 30 s)")]
pub struct StepFailed {
    pub step: String,
    pub message: String,
}

/// What a step reports besides success.
#[derive(Debug, Default)]
struct Outcome {
    message: String,
    findings: Vec<Finding>,
    attempts: u32,
    status: Option<StepStatus>,
}

impl Outcome {
    fn msg(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            ..Self::default()
        }
    }
}

struct Runner<'a> {
    root: &'a Root,
    system: &'a dyn System,
    state: State,
    result: RunResult,
}

impl Runner<'_> {
    /// A dry run ([`System::acts_on_host`] is false) leaves state.json and
    /// the `done` marker alone: the node's real first boot must still do
    /// everything the dry run only recorded.
    fn dry_run(&self) -> bool {
        !self.system.acts_on_host()
    }

    fn save(&mut self) -> Result<()> {
        if self.dry_run() {
            self.result.dry_run = true;
            self.result.would_run = self.system.would_run();
        } else {
            self.state
                .save(self.root)
                .context("recording the agent state")?;
        }
        let pid1 = self.root.read_optional("/proc/1/stat")?;
        if let Some(up) = self
            .root
            .read_optional("/proc/uptime")?
            .as_deref()
            .and_then(|u| state::boot_to_now(u, pid1.as_deref()))
        {
            self.result.boot_to_done_secs = Some(up);
        }
        self.result.save(self.root).context("writing result.json")
    }

    /// Mark the node finished (not in a dry run).
    fn mark_done(&mut self) -> Result<()> {
        if !self.dry_run() {
            self.root.write_atomic(state::DONE_FILE, b"", 0o644)?;
        }
        Ok(())
    }

    fn record(
        &mut self,
        name: &str,
        status: StepStatus,
        duration_ms: u64,
        message: String,
        attempts: u32,
    ) {
        self.state.steps.insert(
            name.to_owned(),
            StepRecord {
                status,
                duration_ms,
                message: message.clone(),
                attempts,
                warnings: Vec::new(),
            },
        );
        self.result.steps.retain(|s| s.name != name);
        self.result.steps.push(StepResult {
            name: name.to_owned(),
            status,
            duration_ms,
            message,
        });
    }

    /// Run one step: time it, record it, save state; a failure is recorded
    /// and returned (the node stays retryable). The failure is not logged
    /// here: the caller prints it once.
    fn step(&mut self, name: &str, f: impl FnOnce(&mut Self) -> Result<Outcome>) -> Result<()> {
        tracing::info!(step = name, "starting");
        let started = Instant::now();
        let recorded_before = self.system.would_run().len();
        let outcome = f(self).and_then(|o| match checks::failures(&o.findings) {
            Some(fail) => Err(anyhow!(fail)),
            None => Ok(o),
        });
        let ms = started.elapsed().as_millis() as u64;
        let left_out: Vec<String> = self
            .system
            .would_run()
            .into_iter()
            .skip(recorded_before)
            .map(|a| a.trim_start_matches("would run: ").to_owned())
            .collect();
        let dry_note = if left_out.is_empty() {
            String::new()
        } else {
            format!(" (dry run, would run: {})", left_out.join("; "))
        };
        match outcome {
            Ok(mut o) => {
                o.message.push_str(&dry_note);
                let mut warnings = Vec::new();
                for w in o.findings.iter().filter(|f| f.level == Level::Warn) {
                    tracing::warn!(step = name, "{w}");
                    // "hostname: hostname: …" says the step twice.
                    warnings.push(if w.what == name {
                        w.to_string()
                    } else {
                        format!("{name}: {w}")
                    });
                }
                self.result.warnings.extend(warnings.iter().cloned());
                tracing::info!(step = name, "{}", o.message);
                self.record(
                    name,
                    o.status.unwrap_or(StepStatus::Done),
                    ms,
                    o.message,
                    o.attempts.max(1),
                );
                if let Some(rec) = self.state.steps.get_mut(name) {
                    rec.warnings = warnings;
                }
                self.save()
            }
            Err(e) => {
                let mut msg = format!("{e:#}{dry_note}");
                self.record(name, StepStatus::Failed, ms, msg.clone(), 1);
                self.result.errors.push(format!("{name}: {msg}"));
                self.result.finished = false;
                if let Err(save) = self.save() {
                    msg.push_str(&format!(" (recording the failure failed too: {save:#})"));
                }
                Err(StepFailed {
                    step: name.to_owned(),
                    message: msg,
                }
                .into())
            }
        }
    }

    fn skip_done(&mut self, name: &str) -> bool {
        if self.state.is_done(name) {
            tracing::info!(step = name, "already done for this instance; skipping");
            if let Some(r) = self.state.steps.get(name).cloned() {
                self.result.warnings.extend(r.warnings.iter().cloned());
                self.result.steps.push(StepResult {
                    name: name.to_owned(),
                    status: StepStatus::Skipped,
                    duration_ms: 0,
                    message: format!("done earlier: {}", r.message),
                });
            }
            return true;
        }
        false
    }
}

/// Read the defaults the builder baked into the image.
pub fn load_defaults(root: &Root) -> Result<BakedDefaults> {
    let text = root.read_optional(DEFAULTS_PATH)?.ok_or_else(|| {
        anyhow!(
            "{DEFAULTS_PATH} is missing — this image was not built by imgbuild, or the file was removed; rebuild the image"
        )
    })?;
    BakedDefaults::from_yaml(&text)
        .map_err(|e| anyhow!("{DEFAULTS_PATH}: {}", plain_serde(&e.to_string())))
}

/// Metadata, merged over the defaults; the proxies of the metadata over
/// those of the agent's environment.
pub fn load_node_config(root: &Root, system: &dyn System, env: &ProxyEnv) -> Result<NodeConfig> {
    let defaults = load_defaults(root)?;
    let md = metadata::load(root, system)?;
    let mut cfg = metadata::merge::merge(&defaults, &md, &md.user_data_path)?;
    let warnings = token_file::check(root, &cfg)?;
    cfg.warnings.extend(warnings);
    env.check()
        .map_err(|(name, message)| metadata::MetadataError::Invalid {
            path: k3s::proxy::ENV_SOURCE.into(),
            line: None,
            key: name,
            message,
        })?;
    cfg.proxy = ProxySettings::combine(&cfg.proxy_meta, env);
    cfg.warnings.extend(proxy_findings(&cfg));
    cfg.ssh = Some(ssh::plan(root, &cfg.login)?);
    Ok(cfg)
}

/// A joining node whose server would be reached through the proxy: K3s
/// asks that its nodes' addresses be in NO_PROXY (docs.k3s.io, "Configuring
/// an HTTP proxy"); most proxies cannot reach them.
fn proxy_findings(cfg: &NodeConfig) -> Vec<Finding> {
    let Some(server) = &cfg.server else {
        return Vec::new();
    };
    match cfg.proxy.for_url(&server.url) {
        Some(p) => vec![Finding::warn(
            "proxy",
            format!(
                "K3s would reach its server {} through the proxy {} ({}), as {} is not in NO_PROXY",
                server.url,
                k3s::proxy::redacted(&p.value),
                p.from,
                server.host
            ),
            format!(
                "add the nodes' network (e.g. {}) to k3s.proxy.no-proxy",
                example_network(&server.host)
            ),
        )],
        None => Vec::new(),
    }
}

/// `10.0.0.0/8` for 10.1.2.3 and the like, else the host itself.
fn example_network(host: &str) -> String {
    match host.parse::<std::net::Ipv4Addr>().map(|ip| ip.octets()) {
        Ok([10, ..]) => "10.0.0.0/8".into(),
        Ok([172, b, ..]) if (16..32).contains(&b) => "172.16.0.0/12".into(),
        Ok([192, 168, ..]) => "192.168.0.0/16".into(),
        _ => host.to_owned(),
    }
}

/// The metadata step's message: the instance, where it came from, and how
/// vendor-data took part.
fn metadata_message(c: &NodeConfig) -> String {
    let mut msg = format!(
        "instance {} from {}: {} ({})",
        c.instance_id,
        c.metadata_source,
        c.role,
        c.topology.as_str()
    );
    if let Some(v) = c.vendor.describe() {
        msg.push_str(&format!("; vendor-data: {v}"));
    }
    msg
}

/// What the uninstall script keeps: listed once, before K3s first starts
/// (then the files under /etc/rancher/k3s and the data directory are the
/// image's or cloud-init's), and recorded in the state. A K3s started by
/// an agent that did not record the list has made files of its own there
/// since; then only the image's air-gap archives are kept.
fn kept_on_uninstall(r: &mut Runner<'_>, cfg: &NodeConfig) -> Result<Vec<String>> {
    if let Some(k) = &r.state.kept_on_uninstall {
        return Ok(k.clone());
    }
    let keep = if r.state.k3s.is_none() {
        let (files, left_out) = scripts::image_files(r.root, &scripts::data_dir(cfg))?;
        if left_out {
            tracing::warn!(
                "the uninstall script lists {} of the files under /etc/rancher/k3s and {} (names with quotes or control characters, or more than {}, are not kept)",
                files.len(),
                scripts::data_dir(cfg),
                scripts::MAX_KEPT
            );
        }
        files
    } else {
        cfg.airgap_images
            .iter()
            .map(|i| i.path.clone())
            .filter(|p| r.root.exists(p))
            .collect()
    };
    r.state.kept_on_uninstall = Some(keep.clone());
    Ok(keep)
}

/// `firstboot-agent run`.
pub fn run(root: &Root, system: &dyn System, opts: &RunOptions) -> Result<RunResult> {
    let state = State::load(root)?;
    let mut r = Runner {
        root,
        system,
        state,
        result: RunResult::default(),
    };
    r.result.dry_run = r.dry_run();
    if r.dry_run() {
        tracing::info!(
            "dry run: --root {} is not /, so actions on this machine (systemctl, modprobe, sysctl, mount, sethostname, swapoff) are recorded, not performed",
            root.dir().display()
        );
    }

    // 0. Temp files of killed runs (the agent's own, named with their pid).
    let swept = leftovers::sweep(root, system, SystemTime::now());
    r.result.removed_temp_files = swept.removed;
    r.result.warnings.extend(swept.failed);

    // 1. Metadata (read every run: it carries the instance-id).
    let mut cfg = None;
    r.step("metadata", |r| {
        let c = load_node_config(r.root, r.system, &opts.env)?;
        let msg = metadata_message(&c);
        for n in &c.notes {
            tracing::info!("ignored: {n}");
        }
        let findings = c.warnings.clone();
        cfg = Some(c);
        Ok(Outcome {
            message: msg,
            findings,
            ..Outcome::default()
        })
    })?;
    let mut cfg = cfg.ok_or_else(|| anyhow!("metadata step produced no configuration"))?;
    r.result.instance_id = Some(cfg.instance_id.clone());
    r.result.profile = Some(cfg.profile.clone());
    r.result.role = Some(cfg.role.to_string());
    r.result.topology = Some(cfg.topology.as_str().to_owned());
    r.result.k3s_version = Some(cfg.version.to_string());
    r.result.unit = Some(cfg.unit_name().to_owned());
    r.result.metadata_source = Some(cfg.metadata_source.clone());
    r.result.vendor_data = cfg.vendor.describe();
    r.result.k3s_settings_from = cfg.origins.k3s_settings();
    r.result.proxy_from_environment = cfg.proxy.from_environment.clone();

    // First boot is decided by instance-id; an installed K3s is never
    // reinstalled or renamed because the instance-id changed.
    if r.state.instance_id.as_deref() != Some(&cfg.instance_id) {
        if let Some(k) = r.state.k3s.clone() {
            let uninstall = if k.unit == node_spec::Role::Agent.unit_name() {
                scripts::uninstall_path(node_spec::Role::Agent)
            } else {
                scripts::uninstall_path(node_spec::Role::Server)
            };
            let msg = format!(
                "instance-id changed from {} to {}, but this node already runs K3s {} as {} ({}); leaving it alone. \
                 To provision it again, run {uninstall} (it removes K3s and {}), then `firstboot-agent run`",
                k.instance_id, cfg.instance_id, k.version, k.topology, k.unit, state::STATE_DIR
            );
            tracing::warn!("{msg}");
            r.result.warnings.push(msg.clone());
            r.state.instance_id = Some(cfg.instance_id.clone());
            r.record("k3s", StepStatus::Skipped, 0, msg, 0);
            r.result.finished = true;
            r.state.finished = true;
            r.save()?;
            r.mark_done()?;
            return Ok(r.result);
        }
        r.state = State {
            instance_id: Some(cfg.instance_id.clone()),
            ..State::default()
        };
        let meta = r.result.steps.pop();
        if let Some(m) = meta {
            r.record(&m.name, m.status, m.duration_ms, m.message, 1);
        }
    } else if r.state.finished
        && (r.state.k3s.as_ref()).is_some_and(|k| k.version != cfg.version.as_str())
    {
        // A newer pin in the metadata: the steps run again, and the
        // k3s-binary step upgrades (crate::upgrade::install_for_run).
        tracing::info!(
            "the metadata pins K3s {}; this finished node runs another release, so it is upgraded",
            cfg.version
        );
    } else if r.state.finished {
        let msg = format!("already finished for instance {}", cfg.instance_id);
        println!("firstboot-agent: {msg}; nothing to do");
        r.result.finished = true;
        r.result.warnings.push(msg);
        r.save()?;
        return Ok(r.result);
    }

    // The proxies of the agent's environment are those of the first run
    // that had any: the readiness run is another unit, without the drop-ins
    // of firstboot-agent.service, and must not write an env file without
    // them (and restart K3s for it).
    if opts.env.is_empty() {
        if let Some(recorded) = r.state.proxy_environment.clone() {
            let env = ProxyEnv::from_pairs(
                &recorded
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect::<Vec<_>>(),
            );
            cfg.proxy = ProxySettings::combine(&cfg.proxy_meta, &env);
            r.result.proxy_from_environment = cfg.proxy.from_environment.clone();
            let found = proxy_findings(&cfg);
            r.result
                .warnings
                .extend(found.iter().map(|f| format!("metadata: {f}")));
        }
    } else {
        r.state.proxy_environment = Some(opts.env.pairs());
    }

    // 2. Host name.
    let mut proxmox_names = false;
    r.step("hostname", |r| {
        let o = hostname::apply(r.root, r.system, cfg.hostname.as_deref())?;
        proxmox_names = o.proxmox_managed;
        Ok(Outcome {
            message: o.message,
            findings: o.findings,
            ..Outcome::default()
        })
    })?;
    // Proxmox puts its own name back at every `pct start`: K3s keeps the
    // metadata's, so the node never re-registers under another name.
    if proxmox_names && cfg.node_name.is_none() {
        cfg.node_name = cfg.hostname.clone();
    }

    // 2b. SSH keys where cloud-init is absent: early, so a node whose later
    // steps fail can still be logged in to.
    r.step("ssh-keys", |r| {
        let plan = cfg
            .ssh
            .as_ref()
            .ok_or_else(|| anyhow!("the metadata step decided nothing about SSH keys"))?;
        let o = ssh::apply(r.root, r.system, plan)?;
        Ok(Outcome {
            message: o.message,
            findings: o.findings,
            ..Outcome::default()
        })
    })?;

    // 3. Environment.
    let mut environment: Option<Environment> = None;
    r.step("environment", |r| {
        let e = env::detect(r.root)?;
        let findings = env::assess(&e, cfg.role);
        let msg = findings
            .iter()
            .filter(|f| f.level == Level::Pass)
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        environment = Some(e);
        Ok(Outcome {
            message: msg,
            findings,
            ..Outcome::default()
        })
    })?;
    let environment = environment.ok_or_else(|| anyhow!("environment step produced nothing"))?;

    // 4. Network and DNS (not needed any more once K3s has been started).
    if !r.state.is_done("k3s-start") {
        r.step("network", |r| {
            let download = binary::needs_download(r.root, &cfg)?;
            let targets = network::targets(&cfg, download);
            let (findings, attempts) =
                network::preflight(r.root, r.system, &targets, cfg.network_timeout)?;
            Ok(Outcome {
                message: format!(
                    "{} checks passed",
                    findings.iter().filter(|f| f.level == Level::Pass).count()
                ),
                findings,
                attempts,
                status: None,
            })
        })?;
    }

    // 5. Tweaks.
    if !r.skip_done("tweaks") {
        r.step("tweaks", |r| {
            let findings = tweaks::run(r.root, r.system, &environment, true)?;
            Ok(Outcome {
                message: "kernel and container settings applied".into(),
                findings,
                ..Outcome::default()
            })
        })?;
    }

    // 6. K3s binary, install.sh's scripts, air-gap images, config, unit.
    // What changes here restarts a K3s that an earlier run started.
    let mut changed: Vec<String> = Vec::new();
    let mut sha256 = String::new();
    r.step("k3s-binary", |r| {
        let (installed, upgraded) =
            crate::upgrade::install_for_run(r.root, r.system, &cfg, &mut r.state)?;
        sha256 = installed.sha256.to_string();
        let how = installed.origin.describe();
        if installed.origin != binary::Origin::AlreadyInstalled {
            changed.push(binary::K3S_BIN.to_owned());
        }
        let mut msg = format!("K3s {} {how} (sha256 {})", cfg.version, installed.sha256);
        if !installed.not_linked.is_empty() {
            msg.push_str(&format!("; {}", installed.not_linked.join(", ")));
        }
        if let Some(u) = upgraded {
            msg.push_str(&format!("; {u}"));
        }
        Ok(Outcome::msg(msg))
    })?;
    r.step("k3s-scripts", |r| {
        let keep = kept_on_uninstall(r, &cfg)?;
        let written = scripts::write(r.root, &cfg, &keep)?;
        r.result.k3s_scripts = vec![
            scripts::KILLALL_PATH.to_owned(),
            scripts::uninstall_path(cfg.role).to_owned(),
        ];
        let kept = if keep.is_empty() {
            String::new()
        } else {
            format!(
                "; the uninstall keeps {} file(s) the image put under /etc/rancher/k3s and {}",
                keep.len(),
                scripts::data_dir(&cfg)
            )
        };
        Ok(Outcome::msg(if written.is_empty() {
            format!("{} unchanged{kept}", r.result.k3s_scripts.join(", "))
        } else {
            format!("wrote {} (mode 0755){kept}", written.join(", "))
        }))
    })?;
    if !cfg.airgap_images.is_empty() {
        r.step("airgap-images", |r| {
            let placed = k3s::place_airgap_images(r.root, &cfg)?;
            Ok(Outcome::msg(format!("verified {}", placed.join(", "))))
        })?;
    }
    let extra_args = tweaks::extra_k3s_args(&environment);
    r.step("k3s-config", |r| {
        let written = k3s::write_config(r.root, &cfg, &extra_args)?;
        changed.extend(written.iter().cloned());
        Ok(Outcome::msg(if written.is_empty() {
            "unchanged".to_owned()
        } else {
            format!("wrote {}", written.join(", "))
        }))
    })?;
    r.step("k3s-unit", |r| {
        let written = k3s::write_unit(r.root, cfg.role)?;
        if written {
            changed.push(k3s::config::unit_path(cfg.role));
        }
        Ok(Outcome::msg(format!(
            "{} {}",
            k3s::config::unit_path(cfg.role),
            if written { "written" } else { "unchanged" }
        )))
    })?;

    // 7. Start; or, when an earlier run started K3s, restart it if its
    // binary, config, env file or unit changed since (install.sh restarts
    // only then, too).
    if r.skip_done("k3s-start") {
        if !changed.is_empty() {
            r.step("k3s-restart", |r| {
                k3s::restart(r.system, cfg.role)?;
                Ok(Outcome::msg(format!(
                    "{} restarted: {} changed",
                    cfg.unit_name(),
                    changed.join(", ")
                )))
            })?;
        }
    } else {
        r.step("k3s-start", |r| {
            k3s::enable_and_start(r.system, cfg.role)?;
            r.state.k3s = Some(K3sRecord {
                instance_id: cfg.instance_id.clone(),
                version: cfg.version.to_string(),
                role: cfg.role.to_string(),
                topology: cfg.topology.as_str().to_owned(),
                unit: cfg.unit_name().to_owned(),
                sha256: sha256.clone(),
            });
            Ok(Outcome::msg(if r.dry_run() {
                format!("{} would be enabled and started", cfg.unit_name())
            } else {
                format!("{} enabled and started", cfg.unit_name())
            }))
        })?;
    }

    // 8. Ready.
    if opts.no_wait {
        r.step("k3s-ready", |r| {
            r.root.write_atomic(
                format!("/etc/systemd/system/{READY_UNIT}"),
                READY_UNIT_TEXT.as_bytes(),
                0o644,
            )?;
            for args in [
                &["daemon-reload"][..],
                &["start", "--no-block", READY_UNIT][..],
            ] {
                let out = r.system.systemctl(args)?;
                if !out.success {
                    bail!(
                        "`systemctl {}` failed: {}",
                        args.join(" "),
                        out.stderr.trim()
                    );
                }
            }
            Ok(Outcome {
                message: format!("not waiting; {READY_UNIT} confirms readiness"),
                status: Some(StepStatus::Pending),
                ..Outcome::default()
            })
        })?;
        if r.dry_run() {
            println!("{}", dry_run_summary(root, &r.result));
        } else {
            println!(
                "firstboot-agent: {} started ({}); readiness is confirmed by {READY_UNIT}",
                cfg.unit_name(),
                cfg.topology.as_str()
            );
        }
        return Ok(r.result);
    }
    if r.dry_run() {
        // K3s was not started, so there is nothing to wait for.
        r.record(
            "k3s-ready",
            StepStatus::Skipped,
            0,
            format!(
                "dry run: {} was not started, so its readiness was not awaited",
                cfg.unit_name()
            ),
            0,
        );
        r.save()?;
        println!("{}", dry_run_summary(root, &r.result));
        return Ok(r.result);
    }
    r.step("k3s-ready", |r| {
        k3s::wait_ready(r.root, r.system, cfg.role, cfg.ready_timeout)?;
        Ok(Outcome::msg(format!("{} is ready", cfg.unit_name())))
    })?;

    r.state.finished = true;
    r.result.finished = true;
    r.save()?;
    r.mark_done()?;
    println!("{}", summary(&r.result));
    Ok(r.result)
}

/// The console summary of a dry run: what was left out, one per line.
pub fn dry_run_summary(root: &Root, res: &RunResult) -> String {
    let mut out = format!(
        "firstboot-agent: dry run — --root {} is not /, so nothing on this machine was changed; \
         files were written under {} only, and state.json and the done marker were left alone. \
         K3s {} {} ({}) via {}, instance {}, {} steps{}",
        root.dir().display(),
        root.dir().display(),
        res.k3s_version.as_deref().unwrap_or("?"),
        res.role.as_deref().unwrap_or("?"),
        res.topology.as_deref().unwrap_or("?"),
        res.unit.as_deref().unwrap_or("?"),
        res.instance_id.as_deref().unwrap_or("?"),
        res.steps.len(),
        if res.warnings.is_empty() {
            String::new()
        } else {
            format!(", {} warning(s)", res.warnings.len())
        },
    );
    if res.would_run.is_empty() {
        out.push_str("; no action on the machine was needed");
    } else {
        out.push_str(&format!("; {} action(s) left out:", res.would_run.len()));
        for a in &res.would_run {
            out.push_str("\n  ");
            out.push_str(a);
        }
    }
    out
}

/// One-paragraph summary for the console.
pub fn summary(res: &RunResult) -> String {
    let total: u64 = res.steps.iter().map(|s| s.duration_ms).sum();
    format!(
        "firstboot-agent: {} — K3s {} {} ({}) via {}, instance {}, {} steps in {:.1} s{}{}",
        if res.finished {
            "finished"
        } else {
            "NOT finished"
        },
        res.k3s_version.as_deref().unwrap_or("?"),
        res.role.as_deref().unwrap_or("?"),
        res.topology.as_deref().unwrap_or("?"),
        res.unit.as_deref().unwrap_or("?"),
        res.instance_id.as_deref().unwrap_or("?"),
        res.steps.len(),
        total as f64 / 1000.0,
        res.boot_to_done_secs
            .map(|s| format!(", {s:.0} s after boot"))
            .unwrap_or_default(),
        if res.warnings.is_empty() {
            String::new()
        } else {
            format!(", {} warning(s)", res.warnings.len())
        },
    )
}

/// `firstboot-agent check`: detection and preflight, changing nothing.
/// Returns the findings; the caller turns any failure into an exit code.
pub fn check(
    root: &Root,
    system: &dyn System,
    timeout: std::time::Duration,
    env: &ProxyEnv,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let cfg = match load_node_config(root, system, env) {
        Ok(c) => {
            out.push(Finding::pass("metadata", metadata_message(&c)));
            out.extend(c.warnings.iter().cloned());
            if let Some(plan) = &c.ssh {
                out.extend(ssh::inspect(root, plan));
            }
            c
        }
        Err(e) => {
            out.push(Finding::fail(
                "metadata",
                format!("{e:#}"),
                "fix the file named above; nothing else can be checked without it",
            ));
            return out;
        }
    };
    let push_err = |out: &mut Vec<Finding>, what: &str, e: &dyn std::fmt::Display| {
        out.push(Finding::fail(what, e.to_string(), "see the message"));
    };
    match env::detect(root) {
        Ok(e) => {
            out.extend(env::assess(&e, cfg.role));
            match tweaks::run(root, system, &e, false) {
                Ok(f) => out.extend(f),
                Err(err) => push_err(&mut out, "tweaks", &err),
            }
        }
        Err(err) => push_err(&mut out, "environment", &err),
    }
    let download = match binary::needs_download(root, &cfg) {
        Ok(true) if cfg.pinned_sha256.is_none() && !cfg.trust_mirror_checksums => {
            out.push(Finding::fail(
                "k3s binary",
                format!("no sha256 is pinned for K3s {}, and the image does not let the agent trust the mirror's checksum file", cfg.version),
                "give the release's amd64 k3s digest as k3s.sha256 in the user-data",
            ));
            true
        }
        Ok(d) => {
            out.push(Finding::pass(
                "k3s binary",
                if d {
                    format!("will download {} from {}", cfg.version, cfg.mirror)
                } else {
                    "baked or installed binary matches".to_owned()
                },
            ));
            d
        }
        Err(e) => {
            push_err(&mut out, "k3s binary", &e);
            true
        }
    };
    let timeout = timeout.min(cfg.network_timeout);
    match network::preflight(root, system, &network::targets(&cfg, download), timeout) {
        Ok((f, _)) => out.extend(f),
        Err(e) => push_err(&mut out, "network", &e),
    }
    out
}
