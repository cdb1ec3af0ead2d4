//! The build pipeline, top to bottom:
//! [`resolve_plan`] → [`sweep_leftovers`] → [`fetch_inputs`] → per output: fetch the base,
//! [`compute_layer`], apply it with a target, [`emit`] the artifact's manifest
//! and host configuration.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use node_spec::Sha256Hex;
use sha2::{Digest, Sha256};

use crate::emit::{self, HostConfigVariant, Manifest};
use crate::layer::{compute_layer, Content, HostBlob, Layer, LayerInputs, Op};
use crate::output;
use crate::plan::{self, OutputKind, Overrides, Plan};
use crate::source::{self, Cache, FetchOptions, Fetched};

/// How to run a build, from the command line.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub out_dir: PathBuf,
    pub cache: Cache,
    pub offline: bool,
    /// Draw progress bars (stderr is a terminal).
    pub progress: bool,
    /// The firstboot-agent binary to bake; found automatically when `None`.
    pub agent: Option<PathBuf>,
    /// zstd worker threads; 0 = one per core.
    pub threads: u32,
    /// Set by Ctrl-C.
    pub cancel: Arc<AtomicBool>,
}

/// One finished artifact.
#[derive(Debug, Clone)]
pub struct Built {
    pub kind: OutputKind,
    pub path: PathBuf,
    pub manifest_path: PathBuf,
    pub sha256: String,
    pub size: u64,
    pub extra_files: Vec<PathBuf>,
}

/// Step timings in the order the steps ran. Each artifact gets its own
/// copy of the shared steps' timings (plan, fetch-inputs) and adds its own,
/// so a manifest lists exactly the steps that made its artifact.
#[derive(Debug, Default, Clone)]
struct Timings(emit::StepTimings);

impl Timings {
    fn time<T>(&mut self, step: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let start = Instant::now();
        let out = f();
        let ms = start.elapsed().as_millis() as u64;
        self.0 .0.push((step.to_owned(), ms));
        tracing::debug!(step, ms, "step finished");
        out
    }
}

/// What every output's steps read: the plan, the inputs fetched for the
/// layer, the caller's options and how to fetch.
#[derive(Debug, Clone, Copy)]
struct BuildContext<'a> {
    plan: &'a Plan,
    inputs: &'a LayerInputs,
    opts: &'a BuildOptions,
    fetch: &'a FetchOptions,
}

/// Build every output the plan asks for.
pub fn run_build(profile: &Path, overrides: &Overrides, opts: &BuildOptions) -> Result<Vec<Built>> {
    let mut timings = Timings::default();
    let plan = timings.time("plan", || resolve_plan(profile, overrides))?;
    if plan.outputs.contains(&OutputKind::Qcow2) {
        if let Some(spec) = plan.recipe.source(OutputKind::Qcow2) {
            // Only the kind of base matters here; the path is not read.
            output::disk::preflight(disk_base(spec, Path::new("")), &disk_options(&plan, ""))?;
        }
    }
    sweep_leftovers(opts);
    let fetch = FetchOptions {
        offline: opts.offline,
        progress: opts.progress,
        cancel: opts.cancel.clone(),
        ..FetchOptions::default()
    };
    let inputs = timings.time("fetch-inputs", || fetch_inputs(&plan, opts, &fetch))?;
    std::fs::create_dir_all(&opts.out_dir)
        .with_context(|| format!("creating output directory {}", opts.out_dir.display()))?;

    let cx = BuildContext {
        plan: &plan,
        inputs: &inputs,
        opts,
        fetch: &fetch,
    };
    // Every output's base is fetched and checked before any is written, so a
    // base pct cannot boot fails the build before a qcow2 listed first is
    // written.
    let mut prepared = Vec::new();
    for &kind in &plan.outputs {
        let mut timings = timings.clone();
        let p = prepare(&cx, kind, &mut timings)?;
        prepared.push((p, timings));
    }
    let mut built = Vec::new();
    for (p, mut timings) in prepared {
        built.push(match p.kind {
            OutputKind::Lxc => build_lxc(&cx, p, &mut timings)?,
            OutputKind::Qcow2 => build_qcow2(&cx, p, &mut timings)?,
        });
    }
    Ok(built)
}

/// Parse and validate the profile and its recipe.
pub fn resolve_plan(profile: &Path, overrides: &Overrides) -> Result<Plan> {
    Ok(plan::load(profile, overrides)?)
}

/// Remove what killed builds left: the cache's `tmp/` entries and the
/// output directory's temp files whose owner (the pid in the name) is gone,
/// or that are a day old without one ([`output::leftovers`]). Each removal
/// is logged; a directory that cannot be swept is a warning, not a failure.
pub fn sweep_leftovers(opts: &BuildOptions) {
    if let Err(e) = opts.cache.sweep_temps() {
        tracing::warn!("{}", source::Chain(&e));
    }
    if let Err(e) = output::leftovers::sweep_output_dir(&opts.out_dir) {
        tracing::warn!(
            "cannot clean up {} after interrupted builds: {e}",
            opts.out_dir.display()
        );
    }
}

/// Fetch and hash every host file the layer copies in.
pub fn fetch_inputs(plan: &Plan, opts: &BuildOptions, fetch: &FetchOptions) -> Result<LayerInputs> {
    let blob = |f: Fetched| HostBlob {
        path: f.path,
        size: f.size,
        sha256: f.sha256,
    };
    let mut inputs = LayerInputs::default();
    if plan.profile.bake.agent {
        let path = match &opts.agent {
            Some(p) => p.clone(),
            None => crate::agent_binary::find()?,
        };
        crate::agent_binary::check(&path)?;
        inputs.agent = Some(blob(
            source::fetch_local(&path, None, fetch)
                .with_context(|| format!("reading the agent binary {}", path.display()))?,
        ));
    }
    let dir = plan.profile_dir();
    if let Some(a) = &plan.profile.bake.k3s_binary {
        let f = source::fetch_artifact(a, dir, &opts.cache, fetch)
            .context("fetching the K3s binary to bake (bake.k3s-binary)")?;
        if let Some(pin) = &plan.profile.k3s.sha256 {
            if *pin != f.sha256 {
                bail!(
                    "the K3s binary to bake ({}) has sha256 {}, but k3s.sha256 pins {pin}; bake the pinned release",
                    f.origin,
                    f.sha256
                );
            }
        }
        inputs.k3s_binary = Some(blob(f));
    }
    let digest = crate::k3s_digest::resolve(
        plan,
        inputs.k3s_binary.as_ref().map(|b| &b.sha256),
        &opts.cache,
        fetch,
    )?;
    for w in &digest.warnings {
        tracing::warn!("{w}");
    }
    inputs.k3s_digest = Some(digest);
    for (i, a) in plan.profile.bake.airgap_images.iter().enumerate() {
        let f = source::fetch_artifact(a, dir, &opts.cache, fetch)
            .with_context(|| format!("fetching air-gap image archive bake.airgap-images[{i}]"))?;
        let name = artifact_file_name(a).unwrap_or_else(|| format!("airgap-{i}.tar"));
        inputs.airgap_images.push((name, blob(f)));
    }
    for f in &plan.profile.files {
        inputs.file_sources.push(match &f.source {
            Some(src) => {
                let fetched = source::fetch_local(&dir.join(src), None, fetch)
                    .with_context(|| format!("reading files[].source for {}", f.path))?;
                Some(blob(fetched))
            }
            None => None,
        });
    }
    Ok(inputs)
}

/// The file name an artifact is stored under in the image: the last
/// segment of its URL (as a checksum file would list it) or of its path.
fn artifact_file_name(a: &plan::schema::Artifact) -> Option<String> {
    let name = match (&a.url, &a.path) {
        (Some(url), _) => source::url_file_name(url),
        (None, Some(path)) => Path::new(path).file_name()?.to_string_lossy().into_owned(),
        (None, None) => return None,
    };
    (!name.is_empty()).then_some(name)
}

/// An output ready to be written: its source, fetched base and layer, and
/// (for a template) the contract check's outcome.
struct Prepared<'p> {
    kind: OutputKind,
    spec: &'p plan::schema::SourceSpec,
    base: Fetched,
    layer: Layer,
    contract: Option<output::ContractOutcome>,
}

/// Fetch the base for `kind`, compute its layer and, for a template, check
/// the contract: everything that can fail before an artifact is written.
fn prepare<'p>(
    cx: &BuildContext<'p>,
    kind: OutputKind,
    timings: &mut Timings,
) -> Result<Prepared<'p>> {
    let BuildContext {
        plan,
        inputs,
        opts,
        fetch,
    } = *cx;
    let spec = plan
        .recipe
        .source(kind)
        .with_context(|| format!("the recipe has no {} source", kind.as_str()))?;
    let base = timings.time("fetch-base", || {
        source::fetch_base(
            spec,
            &plan.recipe.arch,
            plan.recipe_dir(),
            &opts.cache,
            fetch,
        )
        .with_context(|| {
            format!(
                "fetching the {} base of recipe {}",
                kind.as_str(),
                plan.recipe.name
            )
        })
    })?;
    let layer = timings.time("layer", || Ok(compute_layer(plan, inputs, kind)))?;
    let contract = match kind {
        // Before anything is written: a base pct cannot boot fails here.
        OutputKind::Lxc => Some(timings.time("check-template", || {
            check_template_contract(plan, spec, &base, &layer, opts)
        })?),
        OutputKind::Qcow2 => None,
    };
    Ok(Prepared {
        kind,
        spec,
        base,
        layer,
        contract,
    })
}

fn build_lxc(cx: &BuildContext<'_>, p: Prepared<'_>, timings: &mut Timings) -> Result<Built> {
    let BuildContext { plan, opts, .. } = *cx;
    let Prepared {
        base,
        layer,
        contract,
        ..
    } = p;
    let contract = contract.context("the template's contract was not checked")?;

    let name = plan.template_name();
    let out_path = opts.out_dir.join(&name);
    let lxc_opts = output::LxcOptions {
        zstd_level: plan.profile.lxc.zstd_level,
        threads: opts.threads,
    };
    let bar = opts.progress.then(|| {
        let b = indicatif::ProgressBar::new(base.size);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b.set_message(format!("writing {name}"));
        b
    });
    let written = timings.time("write-template", || {
        output::write_template_with_progress(
            &base.path,
            &layer,
            &out_path,
            &lxc_opts,
            &opts.cancel,
            bar.as_ref(),
        )
        .with_context(|| format!("writing template {}", out_path.display()))
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }

    // The sidecar files come after the artifact; if one fails, the artifact
    // goes too, so nothing that looks finished is left without its manifest
    // (not even after a second Ctrl-C, which exits at once).
    let _until_described = output::leftovers::register(&out_path);
    let result = emit_lxc_sidecars(cx, &base, &layer, &out_path, &written, &contract, timings);
    match result {
        Ok(b) => Ok(b),
        Err(e) => {
            let _ = std::fs::remove_file(&out_path);
            Err(e)
        }
    }
}

/// Reads the base once, read-only, and checks the template it makes with
/// `layer` against what Proxmox needs for the recipe's distro
/// ([`output::contract`]). Missing items fail the build with one error
/// naming all of them; accepted ones (`lxc.require-network-stack: false`)
/// are logged as warnings.
fn check_template_contract(
    plan: &Plan,
    spec: &plan::schema::SourceSpec,
    base: &Fetched,
    layer: &Layer,
    opts: &BuildOptions,
) -> Result<output::ContractOutcome> {
    let facts = output::scan_base(&base.path, &opts.cancel)
        .with_context(|| format!("reading the lxc base {} to check it", base.origin))?;
    let contract = output::ContractOptions {
        distro: plan.recipe.distro,
        release: plan.recipe.release.clone(),
        require_network_stack: plan.profile.lxc.require_network_stack,
    };
    let label = output::BaseLabel {
        recipe: plan.recipe_path.clone(),
        origin: base.origin.clone(),
        bootstrapped: matches!(spec, plan::schema::SourceSpec::Bootstrap(_)),
    };
    let outcome =
        output::evaluate_contract(&facts, layer, &contract).into_result(&label, &contract)?;
    for w in &outcome.warnings {
        tracing::warn!(
            "{}: the template has no working network set-up for Proxmox (lxc.require-network-stack: false): {w}",
            plan.recipe_path.display()
        );
    }
    Ok(outcome)
}

fn emit_lxc_sidecars(
    cx: &BuildContext<'_>,
    base: &Fetched,
    layer: &Layer,
    out_path: &Path,
    written: &output::TemplateOutput,
    contract: &output::ContractOutcome,
    timings: &mut Timings,
) -> Result<Built> {
    let plan = cx.plan;
    let name = plan.template_name();
    let mut extra = Vec::new();
    let mut host_config = Vec::new();
    for variant in [
        HostConfigVariant::Privileged,
        HostConfigVariant::Unprivileged,
    ] {
        let file = format!("{name}.pve-{}.conf", variant.as_str());
        let p = out_path.with_file_name(&file);
        emit::atomic_write(&p, emit::pve_config(&name, variant).as_bytes())?;
        extra.push(p);
        host_config.push(file);
    }
    let file = format!("{name}.lxc.conf");
    let p = out_path.with_file_name(&file);
    emit::atomic_write(&p, emit::lxc_config(&name).as_bytes())?;
    extra.push(p);
    host_config.push(file);

    let mut manifest = common_manifest(
        cx,
        base,
        layer,
        OutputKind::Lxc,
        emit::ArtifactInfo {
            file: name.clone(),
            sha256: written.sha256.to_string(),
            size: written.size,
        },
        written.stats.os_release.as_deref(),
        timings,
    )?;
    manifest.tar = Some(emit::TarInfo {
        entries_in: written.stats.entries_in,
        entries_out: written.stats.entries_out,
        entries_dropped: written.stats.entries_dropped,
        entries_added: written.stats.entries_added,
        uncompressed_bytes: written.stats.bytes_out,
    });
    manifest.host_config = host_config;
    manifest.pct = Some(emit::PctInfo {
        plugin: contract.plugin.clone().unwrap_or_default(),
        init: contract.init.clone().unwrap_or_default(),
        network_stack: contract
            .network_stack
            .iter()
            .map(|t| emit::NetworkTool {
                what: t.what.clone(),
                path: t.path.clone(),
            })
            .collect(),
        warnings: contract.warnings.iter().map(ToString::to_string).collect(),
    });
    let manifest_path = emit::manifest_path_for(out_path);
    emit::atomic_write(&manifest_path, manifest.to_json().as_bytes())?;
    Ok(Built {
        kind: OutputKind::Lxc,
        path: out_path.to_owned(),
        manifest_path,
        sha256: written.sha256.to_string(),
        size: written.size,
        extra_files: extra,
    })
}

fn build_qcow2(cx: &BuildContext<'_>, p: Prepared<'_>, timings: &mut Timings) -> Result<Built> {
    let BuildContext {
        plan, opts, fetch, ..
    } = *cx;
    let Prepared {
        spec, base, layer, ..
    } = p;
    let name = plan.disk_name();
    let out_path = opts.out_dir.join(&name);
    let disk_base = disk_base(spec, &base.path);
    let mut disk_opts = disk_options(plan, &base.sha256.to_string());
    disk_opts.derived = Some(opts.cache.derived_dir());
    let spinner = opts.progress.then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_message(format!("writing {name}"));
        b.enable_steady_tick(std::time::Duration::from_millis(200));
        b
    });
    let written = timings.time("write-disk", || {
        output::disk::write_disk(disk_base, &layer, &out_path, &disk_opts, fetch)
            .with_context(|| format!("writing disk {}", out_path.display()))
    });
    if let Some(b) = spinner {
        b.finish_and_clear();
    }
    let written = written?;
    // The manifest is staged first, so neither an existing disk nor a new
    // one is ever left without the manifest that describes it.
    let manifest = qcow2_manifest(cx, &base, &layer, &written, timings)?;
    let manifest_path = emit::manifest_path_for(&out_path);
    let staged = emit::stage_write(&manifest_path, manifest.to_json().as_bytes())?;
    let _until_described = output::leftovers::register(&out_path);
    written.pending.commit()?;
    if let Err(e) = staged.commit() {
        let _ = std::fs::remove_file(&out_path);
        return Err(e.into());
    }
    Ok(Built {
        kind: OutputKind::Qcow2,
        path: out_path,
        manifest_path,
        sha256: written.sha256.to_string(),
        size: written.size,
        extra_files: Vec::new(),
    })
}

/// The profile's qcow2 settings; `id_seed` (the base digest) makes an
/// assembled disk's ids stable.
fn disk_options(plan: &Plan, id_seed: &str) -> output::disk::DiskOptions {
    output::disk::DiskOptions {
        size: plan.disk_size(),
        compress: plan.profile.qcow2.compress,
        id_seed: id_seed.as_bytes().to_vec(),
        selinux: plan.profile.qcow2.selinux,
        assemble_root: plan.profile.qcow2.assemble_root,
        convert: std::env::var_os(output::disk::qcow2::CONVERT_VAR).is_some_and(|v| v == "1"),
        derived: None,
    }
}

/// A vendor disk is customized; a rootfs (bootstrap or tarball) is assembled.
fn disk_base<'a>(spec: &plan::schema::SourceSpec, path: &'a Path) -> output::disk::DiskBase<'a> {
    match spec {
        plan::schema::SourceSpec::CloudImage(_) => output::disk::DiskBase::CloudImage(path),
        plan::schema::SourceSpec::Bootstrap(_)
        | plan::schema::SourceSpec::Tarball(_)
        | plan::schema::SourceSpec::Pveam(_)
        | plan::schema::SourceSpec::Linuxcontainers(_) => output::disk::DiskBase::Rootfs(path),
    }
}

fn qcow2_manifest(
    cx: &BuildContext<'_>,
    base: &Fetched,
    layer: &Layer,
    written: &output::disk::DiskOutput,
    timings: &Timings,
) -> Result<Manifest> {
    let plan = cx.plan;
    let mut manifest = common_manifest(
        cx,
        base,
        layer,
        OutputKind::Qcow2,
        emit::ArtifactInfo {
            file: plan.disk_name(),
            sha256: written.sha256.to_string(),
            size: written.size,
        },
        written.os_release.as_deref(),
        timings,
    )?;
    manifest.disk = Some(emit::DiskInfo {
        virtual_size: written.virtual_size,
        base_format: written.base_format.clone(),
        grown_from: written.grown_from,
        compressed: plan.profile.qcow2.compress,
        written: written.written.to_owned(),
        working_copy: written.working_copy.map(str::to_owned),
        root_partition: written.root.index,
        root_label: written.root.label.clone(),
        root_fs: written.root.fs.clone(),
        root_offset: written.root.offset,
        root_size: written.root.size,
        root_lv: written.root.lv.clone(),
        selinux: Some(written.selinux.clone()),
        kernel: written.assembled.as_ref().map(|a| a.kernel.clone()),
        boot: written
            .assembled
            .as_ref()
            .map(|_| vec!["bios".to_owned(), "uefi".to_owned()])
            .unwrap_or_default(),
    });

    Ok(manifest)
}

fn removed_patterns(layer: &Layer) -> Vec<String> {
    layer
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::Remove { pattern } => Some(pattern.clone()),
            _ => None,
        })
        .collect()
}

/// The manifest fields every artifact kind fills the same way.
fn common_manifest(
    cx: &BuildContext<'_>,
    base: &Fetched,
    layer: &Layer,
    kind: OutputKind,
    artifact: emit::ArtifactInfo,
    os_release: Option<&str>,
    timings: &Timings,
) -> Result<Manifest> {
    let BuildContext { plan, inputs, .. } = *cx;
    Ok(Manifest {
        schema: emit::MANIFEST_SCHEMA,
        imgbuild_version: env!("CARGO_PKG_VERSION").into(),
        kind: kind.as_str().into(),
        artifact,
        profile: input_file(&plan.profile.name, &plan.profile_path)?,
        recipe: input_file(&plan.recipe.name, &plan.recipe_path)?,
        distro: plan.recipe.distro.as_str().into(),
        release: plan.recipe.release.clone(),
        arch: plan.recipe.arch.clone(),
        base: emit::BaseInfo {
            origin: base.origin.clone(),
            sha256: base.sha256.to_string(),
            size: base.size,
            catalog: base.catalog.clone(),
        },
        k3s: k3s_info(plan, layer, inputs),
        source_date_epoch: plan.source_date_epoch,
        files_added: added_files(layer),
        removed_patterns: removed_patterns(layer),
        os_release: emit::parse_os_release(os_release.unwrap_or("")),
        tar: None,
        disk: None,
        pct: None,
        warnings: plan
            .warnings
            .iter()
            .map(ToString::to_string)
            .chain(inputs.k3s_digest.iter().flat_map(|d| d.warnings.clone()))
            .collect(),
        host_config: Vec::new(),
        timings_ms: timings.0.clone(),
    })
}

fn input_file(name: &str, path: &Path) -> Result<emit::InputFile> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(emit::InputFile {
        name: name.to_owned(),
        path: path.display().to_string(),
        sha256: Sha256Hex::from_digest(&Sha256::digest(&bytes)).to_string(),
    })
}

fn k3s_info(plan: &Plan, layer: &Layer, inputs: &LayerInputs) -> emit::K3sInfo {
    let d = plan.baked_defaults();
    let digest = inputs.k3s_digest.as_ref();
    let host_sha = |path: &str| {
        layer.ops.iter().find_map(|op| match op {
            Op::WriteFile {
                path: p,
                content: Content::HostFile { sha256, .. },
                ..
            } if p == path => Some(sha256.clone()),
            _ => None,
        })
    };
    emit::K3sInfo {
        version: d.k3s.version.to_string(),
        role: d.k3s.role.to_string(),
        ha: d.k3s.ha,
        mirror: d.k3s.mirror.clone(),
        pinned_sha256: match digest {
            Some(g) => g.sha256.as_ref().map(|s| s.to_string()),
            None => d.k3s.sha256.as_ref().map(|s| s.to_string()),
        },
        sha256_source: digest.map(|g| g.source.to_string()),
        trust_mirror_checksums: d.k3s.trust_mirror_checksums,
        baked_binary_sha256: host_sha(node_spec::BAKED_K3S_PATH),
        airgap_images: layer
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::WriteFile {
                    path,
                    content:
                        Content::HostFile {
                            sha256, path: host, ..
                        },
                    ..
                } if path.starts_with(node_spec::AIRGAP_IMAGES_DIR) => Some(emit::InputFile {
                    name: path.rsplit('/').next().unwrap_or(path).to_owned(),
                    path: host.display().to_string(),
                    sha256: sha256.clone(),
                }),
                _ => None,
            })
            .collect(),
    }
}

fn added_files(layer: &Layer) -> Vec<emit::AddedFile> {
    layer
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::Remove { .. } => None,
            Op::Mkdir { path, meta } => Some(emit::AddedFile {
                path: path.clone(),
                kind: "dir".into(),
                mode: format!("{:04o}", meta.mode),
                uid: meta.uid,
                gid: meta.gid,
                size: 0,
                sha256: None,
                target: None,
            }),
            Op::Symlink { path, target, meta } => Some(emit::AddedFile {
                path: path.clone(),
                kind: "symlink".into(),
                mode: format!("{:04o}", meta.mode),
                uid: meta.uid,
                gid: meta.gid,
                size: 0,
                sha256: None,
                target: Some(target.clone()),
            }),
            Op::WriteFile {
                path,
                meta,
                content,
            } => Some(emit::AddedFile {
                path: path.clone(),
                kind: "file".into(),
                mode: format!("{:04o}", meta.mode),
                uid: meta.uid,
                gid: meta.gid,
                size: content.len(),
                sha256: Some(match content {
                    Content::Inline(b) => Sha256Hex::from_digest(&Sha256::digest(b)).to_string(),
                    Content::HostFile { sha256, .. } => sha256.clone(),
                }),
                target: None,
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_names() {
        let a = plan::schema::Artifact {
            path: None,
            url: Some("https://h/x/k3s-airgap-images-amd64.tar.zst?raw=1".into()),
            sha256: None,
            sha256_url: None,
        };
        assert_eq!(
            artifact_file_name(&a).as_deref(),
            Some("k3s-airgap-images-amd64.tar.zst")
        );
    }
}
