//! The plan: profile + recipe + command-line choices, parsed, validated and
//! resolved into one typed value before any download or build starts.
//!
//! Parsing takes `&str` ([`parse_profile`], [`parse_recipe`]); [`load`] is the
//! thin edge that reads the files.

mod error;
mod file_sources;
mod locate;
pub mod schema;
mod validate;
mod yaml;

use std::path::{Path, PathBuf};

pub use error::{PlanError, PlanErrors, PlanWarning};
pub use locate::Seg;
use node_spec::{BakedDefaults, K3sDefaults, DEFAULTS_SCHEMA, DEFAULT_K3S_MIRROR};
pub use schema::{OutputKind, Profile, Recipe};
pub use validate::parse_mode;

/// What the command line adds to the files.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Use this recipe file instead of the one the profile names.
    pub recipe: Option<PathBuf>,
    /// Build only these outputs (must be among the profile's).
    pub outputs: Vec<OutputKind>,
    /// `SOURCE_DATE_EPOCH` for timestamps of added files.
    pub source_date_epoch: Option<u64>,
}

/// Everything a build needs to know, validated.
#[derive(Debug, Clone)]
pub struct Plan {
    pub profile_path: PathBuf,
    pub recipe_path: PathBuf,
    pub profile: Profile,
    pub recipe: Recipe,
    pub outputs: Vec<OutputKind>,
    pub source_date_epoch: u64,
    /// Findings that do not stop a build (a secret readable by all, a
    /// setuid-root file, an owner an unprivileged container cannot map).
    pub warnings: Vec<PlanWarning>,
}

impl Plan {
    /// Directory relative paths in the profile are resolved against.
    pub fn profile_dir(&self) -> &Path {
        crate::parent_dir(&self.profile_path)
    }

    pub fn recipe_dir(&self) -> &Path {
        crate::parent_dir(&self.recipe_path)
    }

    /// The defaults file the agent reads at first boot. Holds no secrets:
    /// validation rejects tokens in the profile.
    ///
    /// `k3s.sha256` here is the profile's pin only; the build replaces it
    /// with the digest it resolved ([`crate::k3s_digest`]).
    pub fn baked_defaults(&self) -> BakedDefaults {
        let k = &self.profile.k3s;
        BakedDefaults {
            schema: DEFAULTS_SCHEMA,
            profile: self.profile.name.clone(),
            k3s: K3sDefaults {
                version: k.version.clone(),
                role: k.role,
                ha: k.ha,
                control_plane_taint: k.control_plane_taint,
                sha256: k.sha256.clone(),
                trust_mirror_checksums: k.trust_mirror_checksums,
                mirror: k
                    .mirror
                    .clone()
                    .unwrap_or_else(|| DEFAULT_K3S_MIRROR.to_owned()),
                binary: None,
                airgap_images: Vec::new(),
                config: k.config.clone(),
                firewall: k.firewall,
            },
            checks: self.profile.checks.clone(),
        }
    }

    /// The qcow2 disk's file name, built like [`Plan::template_name`]:
    /// `debian-12-k3s-worker_1.34.3-k3s1-1_amd64.qcow2`.
    pub fn disk_name(&self) -> String {
        self.artifact_name(self.profile.qcow2.revision, "qcow2")
    }

    /// The profile's `qcow2.size` in bytes, rounded up to whole MiB, if set
    /// (validated at load).
    pub fn disk_size(&self) -> Option<u64> {
        const MIB: u64 = 1 << 20;
        let n = self.profile.qcow2.size.as_deref().and_then(parse_size)?;
        n.checked_next_multiple_of(MIB)
    }

    /// Proxmox-style template file name:
    /// `<os>-<release>-<profile>_<k3s version>-<revision>_<arch>.tar.zst`,
    /// e.g. `debian-12-k3s-worker_1.34.3-k3s1-1_amd64.tar.zst`. The `+` of the
    /// K3s tag becomes `-` so the name stays a plain volume id.
    pub fn template_name(&self) -> String {
        self.artifact_name(self.profile.lxc.revision, "tar.zst")
    }

    fn artifact_name(&self, revision: u32, ext: &str) -> String {
        format!(
            "{}-{}-{}_{}-{}_{}.{ext}",
            self.recipe.distro.as_str(),
            self.recipe.release,
            self.profile.name,
            self.profile
                .k3s
                .version
                .as_str()
                .trim_start_matches('v')
                .replace('+', "-"),
            revision,
            self.recipe.arch,
        )
    }
}

/// Parse a profile. `path` only labels errors.
pub fn parse_profile(path: &Path, text: &str) -> Result<Profile, PlanErrors> {
    parse_profile_with_warnings(path, text).map(|(p, _)| p)
}

/// Parse a profile and keep the warnings its values raise.
pub fn parse_profile_with_warnings(
    path: &Path,
    text: &str,
) -> Result<(Profile, Vec<PlanWarning>), PlanErrors> {
    let profile: Profile = yaml::parse(path, text)?;
    let warnings = validate::profile(path, text, &profile)?;
    Ok((profile, warnings))
}

/// Parse a recipe. `path` only labels errors.
pub fn parse_recipe(path: &Path, text: &str) -> Result<Recipe, PlanErrors> {
    let recipe: Recipe = yaml::parse(path, text)?;
    validate::recipe(path, text, &recipe)?;
    Ok(recipe)
}

fn read(path: &Path, what: &'static str) -> Result<String, PlanErrors> {
    std::fs::read_to_string(path).map_err(|source| {
        PlanErrors(vec![PlanError::Read {
            path: path.to_owned(),
            what,
            source,
        }])
    })
}

/// Where the recipe a profile names lives: a `.yaml` path relative to the
/// profile, or a bare name looked up in `image-recipes/` beside the profile's
/// directory (`profiles/../image-recipes/<name>.yaml`), then in the profile's
/// own directory.
pub fn recipe_path_for(profile_path: &Path, recipe: &str) -> Vec<PathBuf> {
    // Not `parent_dir`: "" rather than "." keeps messages free of "./../".
    let dir = profile_path.parent().unwrap_or(Path::new(""));
    if recipe.ends_with(".yaml") || recipe.ends_with(".yml") || recipe.contains('/') {
        return vec![dir.join(recipe)];
    }
    vec![
        dir.join("..")
            .join("image-recipes")
            .join(format!("{recipe}.yaml")),
        dir.join("image-recipes").join(format!("{recipe}.yaml")),
    ]
}

/// Read and validate a profile, the recipe it names (or `overrides.recipe`)
/// and the command-line choices into a [`Plan`], logging its warnings.
pub fn load(profile_path: &Path, overrides: &Overrides) -> Result<Plan, PlanErrors> {
    let plan = resolve(profile_path, overrides)?;
    for w in &plan.warnings {
        tracing::warn!("{w}");
    }
    Ok(plan)
}

/// [`load`] without logging: the warnings are in [`Plan::warnings`] for the
/// caller to show (as `imgbuild validate` does).
pub fn resolve(profile_path: &Path, overrides: &Overrides) -> Result<Plan, PlanErrors> {
    let text = read(profile_path, "profile")?;
    let (profile, mut warnings) = parse_profile_with_warnings(profile_path, &text)?;
    warnings.extend(file_sources::check(profile_path, &text, &profile)?);

    let recipe_path = match &overrides.recipe {
        Some(p) => p.clone(),
        None => {
            let candidates = recipe_path_for(profile_path, &profile.recipe);
            match candidates.iter().find(|p| p.is_file()) {
                Some(p) => p.clone(),
                None => {
                    let (line, column) = locate::locate(&text, &[Seg::Key("recipe")]);
                    return Err(PlanErrors(vec![PlanError::Invalid {
                        path: profile_path.to_owned(),
                        line,
                        column,
                        key: "recipe".into(),
                        message: recipe_not_found(&profile.recipe, &candidates),
                    }]));
                }
            }
        }
    };
    let recipe_text = read(&recipe_path, "recipe")?;
    let recipe = parse_recipe(&recipe_path, &recipe_text)?;

    let outputs = if overrides.outputs.is_empty() {
        profile.outputs.clone()
    } else {
        overrides.outputs.clone()
    };
    warnings.extend(validate::combination(
        profile_path,
        &text,
        &profile,
        &recipe_path,
        &recipe,
        &outputs,
    )?);

    Ok(Plan {
        profile_path: profile_path.to_owned(),
        recipe_path,
        profile,
        recipe,
        outputs,
        source_date_epoch: overrides.source_date_epoch.unwrap_or(0),
        warnings,
    })
}

/// "recipe "x" not found in DIR — did you mean y? …": the directories
/// searched, the recipes they hold and the closest name.
fn recipe_not_found(name: &str, candidates: &[PathBuf]) -> String {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for c in candidates {
        let d = shown_path(crate::parent_dir(c));
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    let mut found: Vec<String> = dirs.iter().flat_map(|d| recipes_in(d)).collect();
    found.sort();
    found.dedup();
    let searched = dirs
        .iter()
        .map(|d| {
            if d.is_dir() {
                d.display().to_string()
            } else {
                format!("{} (no such directory)", d.display())
            }
        })
        .collect::<Vec<_>>()
        .join(" or ");
    // A value with '/' or ending in .yaml is a path; a bare name is looked up.
    let (what, wanted) = match candidates {
        [file] => (
            format!(
                "recipe file {name:?} not found: there is no {}",
                shown_path(file).display()
            ),
            file.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
        _ => (
            format!("recipe {name:?} not found in {searched}"),
            name.to_owned(),
        ),
    };
    let names: Vec<&str> = found.iter().map(String::as_str).collect();
    let suggestion = match (yaml::closest(&wanted, &names), candidates) {
        (Some(best), [_]) => format!(
            "did you mean {}? ",
            Path::new(name)
                .with_file_name(format!("{best}.yaml"))
                .display()
        ),
        (Some(best), _) => format!("did you mean {best}? "),
        (None, _) => String::new(),
    };
    let listed: Vec<String> = dirs
        .iter()
        .filter_map(|d| {
            let names = recipes_in(d);
            (!names.is_empty()).then(|| format!("{} holds {}", d.display(), names.join(", ")))
        })
        .collect();
    let list = if listed.is_empty() {
        "no recipes are there; give the path of a recipe ending in .yaml, or --recipe FILE"
            .to_owned()
    } else {
        format!(
            "{}; or give the path of a recipe ending in .yaml",
            listed.join("; ")
        )
    };
    format!("{what} — {suggestion}{list}")
}

/// A path as the user should read it: absolute, without `.` and `..`
/// (`profiles/../image-recipes` → `/work/image-recipes`); canonical when it
/// exists, so a symlinked directory shows where it leads.
fn shown_path(d: &Path) -> PathBuf {
    if let Ok(c) = d.canonicalize() {
        return c;
    }
    let abs = std::path::absolute(d).unwrap_or_else(|_| d.to_owned());
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The recipe names (`*.yaml` stems) in `dir`, sorted; none when unreadable.
fn recipes_in(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests;

/// The smallest disk `qcow2.size` accepts.
pub const MIN_DISK_SIZE: u64 = 1 << 30;

/// A disk size: a byte count, or a number with a binary unit
/// `K`/`M`/`G`/`T` (also `KiB`…`TiB`, `KB`…`TB`; all powers of 1024, as
/// `qemu-img` reads them). `None` when it is not a size or overflows.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits);
    let n: u64 = num.parse().ok()?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}
