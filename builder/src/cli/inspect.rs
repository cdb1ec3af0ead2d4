//! `imgbuild inspect`: show what an artifact is and what was baked into it,
//! reading the artifact itself, not only its manifest.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use node_spec::{BakedDefaults, Sha256Hex, DEFAULTS_PATH};
use serde::Serialize;

use crate::emit::{manifest_path_for, Manifest};
use crate::layer::BUILD_INFO_PATH;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// An artifact (`….tar.zst`, `….qcow2`) or its `….manifest.json`.
    pub artifact: PathBuf,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What inspection found inside an LXC template.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct TemplateContents {
    pub entries: u64,
    pub has_sbin: bool,
    pub has_os_release: bool,
    /// Files the manifest says were added, and whether each is in the archive.
    pub added_present: Vec<(String, bool)>,
    /// Remove patterns that still match an entry (should be empty).
    pub leftover_state: Vec<String>,
    pub defaults: Option<BakedDefaults>,
    pub build_info: Option<String>,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    manifest: &'a Manifest,
    digest_ok: bool,
    contents: Option<TemplateContents>,
}

impl InspectArgs {
    pub fn run(self) -> Result<()> {
        let (artifact, manifest_path) = locate(&self.artifact);
        let text = std::fs::read_to_string(&manifest_path).with_context(|| {
            format!(
                "reading manifest {} (every imgbuild artifact has one next to it)",
                manifest_path.display()
            )
        })?;
        let manifest = Manifest::from_json(&manifest_path, &text)?;
        let actual = sha256_file(&artifact)?;
        let digest_ok = actual.as_str() == manifest.artifact.sha256;
        let contents = if manifest.kind == "lxc" {
            Some(read_template(&artifact, &manifest)?)
        } else {
            None
        };
        if self.json {
            let r = Report {
                manifest: &manifest,
                digest_ok,
                contents,
            };
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            print_text(&artifact, &manifest, digest_ok, &actual, contents.as_ref());
        }
        if !digest_ok {
            bail!(
                "{} does not match its manifest: sha256 is {actual}, manifest says {}",
                artifact.display(),
                manifest.artifact.sha256
            );
        }
        Ok(())
    }
}

fn locate(p: &Path) -> (PathBuf, PathBuf) {
    let s = p.to_string_lossy();
    match s.strip_suffix(".manifest.json") {
        Some(a) => (PathBuf::from(a), p.to_owned()),
        None => (p.to_owned(), manifest_path_for(p)),
    }
}

fn sha256_file(p: &Path) -> Result<Sha256Hex> {
    let (digest, _size) = crate::source::hash_file(p, &crate::source::FetchOptions::default())?;
    Ok(digest)
}

fn normalize(p: &Path) -> String {
    let s = p.to_string_lossy();
    let s = s.trim_start_matches("./").trim_start_matches('/');
    format!("/{}", s.trim_end_matches('/'))
}

/// Stream the template once and collect what a user wants to see.
pub fn read_template(path: &Path, manifest: &Manifest) -> Result<TemplateContents> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let dec = zstd::stream::read::Decoder::new(f)
        .with_context(|| format!("{} is not a zstd stream", path.display()))?;
    let mut ar = tar::Archive::new(dec);
    let mut seen = BTreeSet::new();
    let mut defaults = None;
    let mut build_info = None;
    let mut leftover = BTreeSet::new();
    let mut entries = 0u64;
    for e in ar
        .entries()
        .with_context(|| format!("reading {}", path.display()))?
    {
        let mut e = e.with_context(|| format!("reading an entry of {}", path.display()))?;
        entries += 1;
        let name = normalize(&e.path()?);
        for pat in &manifest.removed_patterns {
            if crate::layer::pattern_matches_path_or_ancestor(pat, &name) {
                leftover.insert(pat.clone());
            }
        }
        if name == DEFAULTS_PATH {
            let mut s = String::new();
            e.read_to_string(&mut s)?;
            defaults =
                Some(BakedDefaults::from_yaml(&s).with_context(|| {
                    format!("parsing {DEFAULTS_PATH} inside {}", path.display())
                })?);
        } else if name == BUILD_INFO_PATH {
            let mut s = String::new();
            e.read_to_string(&mut s)?;
            build_info = Some(s);
        }
        seen.insert(name);
    }
    Ok(TemplateContents {
        entries,
        has_sbin: seen.contains("/sbin"),
        has_os_release: seen.contains("/etc/os-release"),
        added_present: manifest
            .files_added
            .iter()
            .map(|f| (f.path.clone(), seen.contains(&f.path)))
            .collect(),
        leftover_state: leftover.into_iter().collect(),
        defaults,
        build_info,
    })
}

fn print_text(
    artifact: &Path,
    m: &Manifest,
    digest_ok: bool,
    actual: &Sha256Hex,
    c: Option<&TemplateContents>,
) {
    println!("artifact   {}", artifact.display());
    println!("kind       {}", m.kind);
    println!("size       {} bytes", m.artifact.size);
    println!(
        "sha256     {actual} ({})",
        if digest_ok {
            "matches manifest"
        } else {
            "DOES NOT MATCH manifest"
        }
    );
    println!("built by   imgbuild {}", m.imgbuild_version);
    println!(
        "profile    {} ({}, sha256 {})",
        m.profile.name, m.profile.path, m.profile.sha256
    );
    println!(
        "recipe     {} ({} {} {})",
        m.recipe.name, m.distro, m.release, m.arch
    );
    println!(
        "base       {} (sha256 {}, {} bytes)",
        m.base.origin, m.base.sha256, m.base.size
    );
    if let Some(c) = &m.base.catalog {
        println!(
            "catalog    {} {} from {} ({} listed; index signature: {})",
            c.name, c.version, c.index, c.listed_digest, c.index_signature
        );
    }
    if let Some(pretty) = m.os_release.get("PRETTY_NAME") {
        println!("os         {pretty}");
    }
    println!(
        "k3s        {} as {}{}",
        m.k3s.version,
        m.k3s.role,
        if m.k3s.ha { " (HA, embedded etcd)" } else { "" }
    );
    match &m.k3s.baked_binary_sha256 {
        Some(s) => println!("k3s binary baked (sha256 {s})"),
        None => println!(
            "k3s binary not baked; downloaded at first boot from {}",
            m.k3s.mirror
        ),
    }
    match (&m.k3s.pinned_sha256, &m.k3s.sha256_source) {
        (Some(s), Some(from)) => println!("k3s sha256 {s} (from {from}); nodes install only this binary"),
        (Some(s), None) => println!("k3s sha256 {s}; nodes install only this binary"),
        (None, _) if m.k3s.trust_mirror_checksums => println!(
            "k3s sha256 not pinned; nodes trust the mirror's sha256sum-amd64.txt (k3s.trust-mirror-checksums)"
        ),
        (None, _) => println!("k3s sha256 not pinned"),
    }
    println!("epoch      SOURCE_DATE_EPOCH={}", m.source_date_epoch);
    let timings: Vec<String> = m
        .timings_ms
        .iter()
        .map(|(k, v)| format!("{k} {v} ms"))
        .collect();
    println!("timings    {}", timings.join(", "));
    if let Some(p) = &m.pct {
        let network = if p.network_stack.is_empty() {
            "none found".to_owned()
        } else {
            p.network_stack
                .iter()
                .map(|t| format!("{} {}", t.what, t.path))
                .collect::<Vec<_>>()
                .join(" + ")
        };
        println!(
            "pct        {} set-up, init {}, network {network}",
            p.plugin, p.init
        );
        for w in &p.warnings {
            println!("WARNING: {w}");
        }
    }
    for w in &m.warnings {
        println!("WARNING: {w}");
    }
    if !m.host_config.is_empty() {
        println!("host conf  {}", m.host_config.join(", "));
    }
    if let Some(d) = &m.disk {
        let grown = d
            .grown_from
            .map(|g| format!(", grown from {} MiB", g >> 20))
            .unwrap_or_default();
        println!(
            "disk       {} MiB virtual{grown}, base {}{}",
            d.virtual_size >> 20,
            d.base_format,
            if d.compressed { ", compressed" } else { "" }
        );
        println!(
            "root       partition {}, {} labelled {:?}, {} MiB at offset {}",
            d.root_partition,
            d.root_fs,
            d.root_label,
            d.root_size >> 20,
            d.root_offset
        );
        if !d.boot.is_empty() {
            println!(
                "boot       {} (kernel {})",
                d.boot.join(" + "),
                d.kernel.as_deref().unwrap_or("?")
            );
        }
    }
    println!("added:");
    for f in &m.files_added {
        let present = c
            .and_then(|c| c.added_present.iter().find(|(p, _)| *p == f.path))
            .map(|(_, ok)| if *ok { "" } else { "  MISSING" })
            .unwrap_or("");
        match &f.target {
            Some(t) => println!("  {} {:>5} {} -> {t}{present}", f.mode, "", f.path),
            None => println!("  {} {:>10} {}{present}", f.mode, f.size, f.path),
        }
    }
    println!("removed from base: {}", m.removed_patterns.join(" "));
    if let Some(c) = c {
        println!(
            "archive    {} entries, ./sbin {}, /etc/os-release {}",
            c.entries,
            if c.has_sbin { "present" } else { "MISSING" },
            if c.has_os_release {
                "present"
            } else {
                "MISSING"
            }
        );
        if !c.leftover_state.is_empty() {
            println!(
                "WARNING: per-machine state still present: {}",
                c.leftover_state.join(" ")
            );
        }
        if let Some(d) = &c.defaults {
            println!("baked defaults ({DEFAULTS_PATH}):");
            for line in d.to_yaml().lines().filter(|l| !l.starts_with('#')) {
                println!("  {line}");
            }
        }
    }
}
