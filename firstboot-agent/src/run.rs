//! The first-boot pipeline, top to bottom. Each named step records its
//! outcome in state.json before the next starts, so a crash or reboot
//! resumes; every step is idempotent, and steps with lasting side effects
//! that already succeeded for this instance are skipped.

use std::time::{Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use node_spec::{BakedDefaults, DEFAULTS_PATH};

use crate::checks::{self, network, Finding, Level};
use crate::distro;
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
        self.step_with(name, |r| f(r).map(|o| (o, ())))
    }

    /// [`Runner::step`] for a step that also hands a value to later ones.
    fn step_with<T>(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut Self) -> Result<(Outcome, T)>,
    ) -> Result<T> {
        tracing::info!(step = name, "starting");
        let started = Instant::now();
        let recorded_before = self.system.would_run().len();
        let outcome = f(self).and_then(|(o, value)| match checks::failures(&o.findings) {
            Some(fail) => Err(anyhow!(fail)),
            None => Ok((o, value)),
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
            Ok((mut o, value)) => {
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
                self.save()?;
                Ok(value)
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

/// What the steps of one run share: the node's configuration (the metadata
/// step makes it; hostname adds the K3s node name), the environment, and
/// what the K3s steps found and changed.
struct Ctx<'o> {
    opts: &'o RunOptions,
    cfg: NodeConfig,
    environment: Environment,
    /// Files whose change restarts a K3s an earlier run started.
    changed: Vec<String>,
    /// The installed binary's sha256 (the k3s-binary step).
    sha256: String,
    /// K3s runs with `selinux: true` (the distro step).
    selinux: bool,
}

/// `firstboot-agent run`: the steps in order. Each returns early (with the
/// node retryable) when it fails.
pub fn run(root: &Root, system: &dyn System, opts: &RunOptions) -> Result<RunResult> {
    let mut r = Runner::start(root, system)?;
    sweep_leftovers(&mut r);
    let mut cfg = metadata(&mut r, opts)?;
    if let Some(done) = first_boot_or_finished(&mut r, &cfg)? {
        return Ok(done);
    }
    proxy_environment(&mut r, &mut cfg, opts);
    hostname(&mut r, &mut cfg)?;
    ssh_keys(&mut r, &cfg)?;
    let environment = environment(&mut r, &cfg)?;
    let mut cx = Ctx {
        opts,
        cfg,
        environment,
        changed: Vec::new(),
        sha256: String::new(),
        selinux: false,
    };
    network(&mut r, &cx)?;
    tweaks(&mut r, &cx)?;
    distro(&mut r, &mut cx)?;
    firewall(&mut r, &cx)?;
    nm_cloud_setup(&mut r, &cx)?;
    snapshotter(&mut r, &mut cx)?;
    k3s_binary(&mut r, &mut cx)?;
    k3s_scripts(&mut r, &cx)?;
    airgap_images(&mut r, &cx)?;
    k3s_config(&mut r, &mut cx)?;
    k3s_unit(&mut r, &mut cx)?;
    k3s_start(&mut r, &cx)?;
    k3s_ready(r, &cx)
}

impl<'a> Runner<'a> {
    fn start(root: &'a Root, system: &'a dyn System) -> Result<Self> {
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
                "dry run: --root {} is not /, so actions on this machine (systemctl, modprobe, sysctl, mount, sethostname, swapoff, firewall-cmd, ufw, dnf) are recorded, not performed",
                root.dir().display()
            );
        }
        Ok(r)
    }
}

/// Temp files of killed runs (the agent's own, named with their pid).
fn sweep_leftovers(r: &mut Runner<'_>) {
    let swept = leftovers::sweep(r.root, r.system, SystemTime::now());
    r.result.removed_temp_files = swept.removed;
    r.result.warnings.extend(swept.failed);
}

/// Metadata (read every run: it carries the instance-id).
fn metadata(r: &mut Runner<'_>, opts: &RunOptions) -> Result<NodeConfig> {
    let cfg = r.step_with("metadata", |r| {
        let c = load_node_config(r.root, r.system, &opts.env)?;
        let msg = metadata_message(&c);
        for n in &c.notes {
            tracing::info!("ignored: {n}");
        }
        let findings = c.warnings.clone();
        Ok((
            Outcome {
                message: msg,
                findings,
                ..Outcome::default()
            },
            c,
        ))
    })?;
    let res = &mut r.result;
    res.instance_id = Some(cfg.instance_id.clone());
    res.profile = Some(cfg.profile.clone());
    res.role = Some(cfg.role.to_string());
    res.topology = Some(cfg.topology.as_str().to_owned());
    res.k3s_version = Some(cfg.version.to_string());
    res.unit = Some(cfg.unit_name().to_owned());
    res.metadata_source = Some(cfg.metadata_source.clone());
    res.vendor_data = cfg.vendor.describe();
    res.k3s_settings_from = cfg.origins.k3s_settings();
    res.proxy_from_environment = cfg.proxy.from_environment.clone();
    Ok(cfg)
}

/// First boot is decided by instance-id; an installed K3s is never
/// reinstalled or renamed because the instance-id changed. Returns the
/// result when there is nothing more to do.
fn first_boot_or_finished(r: &mut Runner<'_>, cfg: &NodeConfig) -> Result<Option<RunResult>> {
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
            return Ok(Some(std::mem::take(&mut r.result)));
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
        return Ok(Some(std::mem::take(&mut r.result)));
    }
    Ok(None)
}

/// The proxies of the agent's environment are those of the first run that
/// had any: the readiness run is another unit, without the drop-ins of
/// firstboot-agent.service, and must not write an env file without them
/// (and restart K3s for it).
fn proxy_environment(r: &mut Runner<'_>, cfg: &mut NodeConfig, opts: &RunOptions) {
    if !opts.env.is_empty() {
        r.state.proxy_environment = Some(opts.env.pairs());
        return;
    }
    let Some(recorded) = r.state.proxy_environment.clone() else {
        return;
    };
    let env = ProxyEnv::from_pairs(
        &recorded
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
    );
    cfg.proxy = ProxySettings::combine(&cfg.proxy_meta, &env);
    r.result.proxy_from_environment = cfg.proxy.from_environment.clone();
    let found = proxy_findings(cfg);
    r.result
        .warnings
        .extend(found.iter().map(|f| format!("metadata: {f}")));
}

/// Host name. Proxmox puts its own name back at every `pct start`: K3s
/// keeps the metadata's, so the node never re-registers under another name.
fn hostname(r: &mut Runner<'_>, cfg: &mut NodeConfig) -> Result<()> {
    let proxmox_names = r.step_with("hostname", |r| {
        let o = hostname::apply(r.root, r.system, cfg.hostname.as_deref())?;
        Ok((
            Outcome {
                message: o.message,
                findings: o.findings,
                ..Outcome::default()
            },
            o.proxmox_managed,
        ))
    })?;
    if proxmox_names && cfg.node_name.is_none() {
        cfg.node_name = cfg.hostname.clone();
    }
    Ok(())
}

/// SSH keys where cloud-init is absent: early, so a node whose later steps
/// fail can still be logged in to.
fn ssh_keys(r: &mut Runner<'_>, cfg: &NodeConfig) -> Result<()> {
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
    })
}

/// What the node runs on, against what the role needs.
fn environment(r: &mut Runner<'_>, cfg: &NodeConfig) -> Result<Environment> {
    r.step_with("environment", |r| {
        let e = env::detect(r.root)?;
        let findings = env::assess(&e, cfg.role);
        let msg = findings
            .iter()
            .filter(|f| f.level == Level::Pass)
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        Ok((
            Outcome {
                message: msg,
                findings,
                ..Outcome::default()
            },
            e,
        ))
    })
}

/// Network and DNS (not needed any more once K3s has been started).
fn network(r: &mut Runner<'_>, cx: &Ctx<'_>) -> Result<()> {
    if r.state.is_done("k3s-start") {
        return Ok(());
    }
    r.step("network", |r| {
        let download = binary::needs_download(r.root, &cx.cfg)?;
        let targets = network::targets(&cx.cfg, download);
        let (findings, attempts) =
            network::preflight(r.root, r.system, &targets, cx.cfg.network_timeout)?;
        Ok(Outcome {
            message: format!(
                "{} checks passed",
                findings.iter().filter(|f| f.level == Level::Pass).count()
            ),
            findings,
            attempts,
            status: None,
        })
    })
}

/// Kernel and container settings (once per instance).
fn tweaks(r: &mut Runner<'_>, cx: &Ctx<'_>) -> Result<()> {
    if r.skip_done("tweaks") {
        return Ok(());
    }
    r.step("tweaks", |r| {
        let findings = tweaks::run(r.root, r.system, &cx.environment, true)?;
        Ok(Outcome {
            message: "kernel and container settings applied".into(),
            findings,
            ..Outcome::default()
        })
    })
}

/// The distribution's security modules, checked every run (config.yaml
/// follows them): AppArmor without its parser fails, SELinux gets K3s's
/// `selinux: true` and fails without the k3s-selinux policy (installed
/// first from RPMs the image carries, if any).
fn distro(r: &mut Runner<'_>, cx: &mut Ctx<'_>) -> Result<()> {
    let selinux = r.step_with("distro", |r| {
        let os = distro::OsRelease::read(r.root)?;
        let apparmor = distro::apparmor::check(r.root, &os)?;
        let selinux = distro::selinux::run(r.root, r.system, &os, true)?;
        let message = format!("{}; {}; {}", os.name(), apparmor, selinux.finding);
        Ok((
            Outcome {
                message,
                findings: vec![apparmor, selinux.finding.clone()],
                ..Outcome::default()
            },
            selinux.k3s_selinux(),
        ))
    })?;
    if selinux {
        cx.cfg
            .extra_config
            .entry("selinux".into())
            .or_insert(serde_yaml::Value::Bool(true));
    }
    cx.selinux = selinux;
    Ok(())
}

/// firewalld or ufw: open what K3s needs, or turn it off, or leave it, as
/// `k3s.firewall` says (once per instance).
fn firewall(r: &mut Runner<'_>, cx: &Ctx<'_>) -> Result<()> {
    if r.skip_done("firewall") {
        return Ok(());
    }
    r.step("firewall", |r| {
        let f = distro::firewall::run(r.root, r.system, &cx.cfg, true)?;
        Ok(Outcome {
            message: f.detail.clone(),
            findings: vec![f],
            ..Outcome::default()
        })
    })
}

/// nm-cloud-setup disabled before K3s starts (once per instance).
fn nm_cloud_setup(r: &mut Runner<'_>, _cx: &Ctx<'_>) -> Result<()> {
    if r.skip_done("nm-cloud-setup") {
        return Ok(());
    }
    r.step("nm-cloud-setup", |r| {
        let f = distro::nm_cloud_setup::run(r.root, r.system, true);
        Ok(Outcome {
            message: f.detail.clone(),
            findings: vec![f],
            ..Outcome::default()
        })
    })
}

/// containerd's snapshotter for this storage: probed once per instance
/// (unless the configuration names one), written into config.yaml when it
/// is not overlayfs.
fn snapshotter(r: &mut Runner<'_>, cx: &mut Ctx<'_>) -> Result<()> {
    let cfg = &cx.cfg;
    let decision = r.step_with("snapshotter", |r| {
        let explicit = cfg.extra_config.contains_key("snapshotter");
        let (d, earlier) = match r.state.snapshotter.clone() {
            Some(d) if !explicit => (d, " (decided earlier for this instance)"),
            _ => (distro::snapshotter::decide(r.root, r.system, cfg)?, ""),
        };
        r.state.snapshotter = Some(d.clone());
        r.result.snapshotter = Some(d.clone());
        let message = format!("{}: {}{earlier}", d.snapshotter, d.reason);
        Ok((Outcome::msg(message), d))
    })?;
    if decision.write {
        cx.cfg.extra_config.insert(
            "snapshotter".into(),
            serde_yaml::Value::String(decision.snapshotter),
        );
    }
    Ok(())
}

/// The K3s binary: already installed, baked, or downloaded; verified.
fn k3s_binary(r: &mut Runner<'_>, cx: &mut Ctx<'_>) -> Result<()> {
    let cfg = &cx.cfg;
    let selinux = cx.selinux;
    let installed = r.step_with("k3s-binary", |r| {
        let (installed, upgraded) =
            crate::upgrade::install_for_run(r.root, r.system, cfg, &mut r.state)?;
        let how = installed.origin.describe();
        let mut msg = format!("K3s {} {how} (sha256 {})", cfg.version, installed.sha256);
        if !installed.not_linked.is_empty() {
            msg.push_str(&format!("; {}", installed.not_linked.join(", ")));
        }
        if let Some(u) = upgraded {
            msg.push_str(&format!("; {u}"));
        }
        // On SELinux the binary gets the policy's label, as install.sh's chcon gives it.
        let findings = if selinux {
            distro::selinux::relabel(r.root, r.system, binary::K3S_BIN)
                .into_iter()
                .collect()
        } else {
            Vec::new()
        };
        Ok((
            Outcome {
                message: msg,
                findings,
                ..Outcome::default()
            },
            installed,
        ))
    })?;
    cx.sha256 = installed.sha256.to_string();
    if installed.origin != binary::Origin::AlreadyInstalled {
        cx.changed.push(binary::K3S_BIN.to_owned());
    }
    Ok(())
}

/// install.sh's killall and uninstall scripts.
fn k3s_scripts(r: &mut Runner<'_>, cx: &Ctx<'_>) -> Result<()> {
    let cfg = &cx.cfg;
    r.step("k3s-scripts", |r| {
        let keep = kept_on_uninstall(r, cfg)?;
        let written = scripts::write(r.root, cfg, &keep)?;
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
                scripts::data_dir(cfg)
            )
        };
        Ok(Outcome::msg(if written.is_empty() {
            format!("{} unchanged{kept}", r.result.k3s_scripts.join(", "))
        } else {
            format!("wrote {} (mode 0755){kept}", written.join(", "))
        }))
    })
}

/// The image's air-gap archives, verified (only when it has any).
fn airgap_images(r: &mut Runner<'_>, cx: &Ctx<'_>) -> Result<()> {
    if cx.cfg.airgap_images.is_empty() {
        return Ok(());
    }
    r.step("airgap-images", |r| {
        let placed = k3s::place_airgap_images(r.root, &cx.cfg)?;
        Ok(Outcome::msg(format!("verified {}", placed.join(", "))))
    })
}

/// config.yaml and the 0600 env file.
fn k3s_config(r: &mut Runner<'_>, cx: &mut Ctx<'_>) -> Result<()> {
    let extra_args = tweaks::extra_k3s_args(&cx.environment);
    let cfg = &cx.cfg;
    let written = r.step_with("k3s-config", |r| {
        let written = k3s::write_config(r.root, cfg, &extra_args)?;
        let msg = if written.is_empty() {
            "unchanged".to_owned()
        } else {
            format!("wrote {}", written.join(", "))
        };
        Ok((Outcome::msg(msg), written))
    })?;
    cx.changed.extend(written);
    Ok(())
}

/// The systemd unit install.sh writes for the role.
fn k3s_unit(r: &mut Runner<'_>, cx: &mut Ctx<'_>) -> Result<()> {
    let role = cx.cfg.role;
    let written = r.step_with("k3s-unit", |r| {
        let written = k3s::write_unit(r.root, role)?;
        Ok((
            Outcome::msg(format!(
                "{} {}",
                k3s::config::unit_path(role),
                if written { "written" } else { "unchanged" }
            )),
            written,
        ))
    })?;
    if written {
        cx.changed.push(k3s::config::unit_path(role));
    }
    Ok(())
}

/// Start; or, when an earlier run started K3s, restart it if its binary,
/// config, env file or unit changed since (install.sh restarts only then,
/// too).
fn k3s_start(r: &mut Runner<'_>, cx: &Ctx<'_>) -> Result<()> {
    let cfg = &cx.cfg;
    if r.skip_done("k3s-start") {
        if cx.changed.is_empty() {
            return Ok(());
        }
        return r.step("k3s-restart", |r| {
            k3s::restart(r.system, cfg.role)?;
            Ok(Outcome::msg(format!(
                "{} restarted: {} changed",
                cfg.unit_name(),
                cx.changed.join(", ")
            )))
        });
    }
    r.step("k3s-start", |r| {
        k3s::enable_and_start(r.system, cfg.role)?;
        r.state.k3s = Some(K3sRecord {
            instance_id: cfg.instance_id.clone(),
            version: cfg.version.to_string(),
            role: cfg.role.to_string(),
            topology: cfg.topology.as_str().to_owned(),
            unit: cfg.unit_name().to_owned(),
            sha256: cx.sha256.clone(),
        });
        Ok(Outcome::msg(if r.dry_run() {
            format!("{} would be enabled and started", cfg.unit_name())
        } else {
            format!("{} enabled and started", cfg.unit_name())
        }))
    })
}

/// Wait for readiness, or (`--no-wait`) hand it to [`READY_UNIT`]; then
/// mark the node finished.
fn k3s_ready(mut r: Runner<'_>, cx: &Ctx<'_>) -> Result<RunResult> {
    let cfg = &cx.cfg;
    if cx.opts.no_wait {
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
            println!("{}", dry_run_summary(r.root, &r.result));
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
        println!("{}", dry_run_summary(r.root, &r.result));
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
    match distro::OsRelease::read(root) {
        Ok(os) => {
            out.push(Finding::pass("distribution", os.name()));
            match distro::apparmor::check(root, &os) {
                Ok(f) => out.push(f),
                Err(e) => push_err(&mut out, "apparmor", &e),
            }
            match distro::selinux::run(root, system, &os, false) {
                Ok(s) => out.push(s.finding),
                Err(e) => push_err(&mut out, "selinux", &e),
            }
        }
        Err(e) => push_err(&mut out, "distribution", &e),
    }
    match distro::firewall::run(root, system, &cfg, false) {
        Ok(f) => out.push(f),
        Err(e) => push_err(&mut out, "firewall", &e),
    }
    out.push(distro::nm_cloud_setup::run(root, system, false));
    match distro::snapshotter::decide(root, system, &cfg) {
        Ok(d) => out.push(Finding::pass(
            "snapshotter",
            format!("{}: {}", d.snapshotter, d.reason),
        )),
        Err(e) => push_err(&mut out, "snapshotter", &e),
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
