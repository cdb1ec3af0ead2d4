//! The plan: profile + recipe + command-line choices, parsed, validated and
//! resolved into one typed value before any download or build starts.
//!
//! Parsing takes `&str` ([`parse_profile`], [`parse_recipe`]); [`load`] is the
//! thin edge that reads the files.

mod error;
mod locate;
pub mod schema;
mod validate;

use std::path::{Path, PathBuf};

pub use error::{PlanError, PlanErrors};
pub use locate::Seg;
use node_spec::{BakedDefaults, ChecksDefaults, K3sDefaults, DEFAULTS_SCHEMA, DEFAULT_K3S_MIRROR};
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
                mirror: k
                    .mirror
                    .clone()
                    .unwrap_or_else(|| DEFAULT_K3S_MIRROR.to_owned()),
                binary: None,
                airgap_images: Vec::new(),
                config: k.config.clone(),
            },
            checks: ChecksDefaults {
                dns_names: self.profile.checks.dns_names.clone(),
                network_timeout_secs: self.profile.checks.network_timeout_secs,
                ready_timeout_secs: self.profile.checks.ready_timeout_secs,
            },
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
    let profile: Profile = parse_yaml(path, text)?;
    validate::profile(path, text, &profile)?;
    Ok(profile)
}

/// Parse a recipe. `path` only labels errors.
pub fn parse_recipe(path: &Path, text: &str) -> Result<Recipe, PlanErrors> {
    let recipe: Recipe = parse_yaml(path, text)?;
    validate::recipe(path, text, &recipe)?;
    Ok(recipe)
}

fn parse_yaml<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, PlanErrors> {
    // A UTF-8 byte order mark is legal at the start of a YAML stream.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    serde_yaml::from_str(text).map_err(|e| PlanErrors(vec![yaml_error(path, text, &e)]))
}

/// Turn serde_yaml's "key.path: message at line L column C" into our format.
fn yaml_error(path: &Path, text: &str, e: &serde_yaml::Error) -> PlanError {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((1, 1));
    let mut msg = e.to_string();
    if let Some(i) = msg.rfind(" at line ") {
        msg.truncate(i);
    }
    // serde_yaml prefixes the key path ("k3s.version: …") when it knows it.
    let (key, message) = match msg.split_once(": ") {
        Some((k, m)) if !k.contains(' ') && !k.is_empty() => (k.to_owned(), m.to_owned()),
        _ => ("(document)".to_owned(), msg.clone()),
    };
    // Errors raised by a value's own validation (K3s tag, digest, role) are
    // reported by serde_yaml at the enclosing mapping; point at the value.
    let (key, line, column) = match quoted_value(&message) {
        Some(bad) => locate::find_value(text, &key, bad).unwrap_or((key, line, column)),
        None => (key, line, column),
    };
    let message = if message.starts_with("missing field") {
        format!("{message}; see docs/schema.md")
    } else {
        message
    };
    PlanError::Invalid {
        path: path.to_owned(),
        line,
        column,
        key,
        message,
    }
}

/// The leading `"…"` of a message such as `"1.34" is not a K3s release tag`.
fn quoted_value(message: &str) -> Option<&str> {
    let rest = message.strip_prefix('"')?;
    let end = rest.find("\" ")?;
    Some(&rest[..end])
}

fn read(path: &Path) -> Result<String, PlanErrors> {
    std::fs::read_to_string(path).map_err(|source| {
        PlanErrors(vec![PlanError::Read {
            path: path.to_owned(),
            source,
        }])
    })
}

/// Where the recipe a profile names lives: a `.yaml` path relative to the
/// profile, or a bare name looked up in `image-recipes/` beside the profile's
/// directory (`profiles/../image-recipes/<name>.yaml`), then in the profile's
/// own directory.
pub fn recipe_path_for(profile_path: &Path, recipe: &str) -> Vec<PathBuf> {
    let dir = crate::parent_dir(profile_path);
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
/// and the command-line choices into a [`Plan`].
pub fn load(profile_path: &Path, overrides: &Overrides) -> Result<Plan, PlanErrors> {
    let text = read(profile_path)?;
    let profile = parse_profile(profile_path, &text)?;

    let recipe_path = match &overrides.recipe {
        Some(p) => p.clone(),
        None => {
            let candidates = recipe_path_for(profile_path, &profile.recipe);
            match candidates.iter().find(|p| p.is_file()) {
                Some(p) => p.clone(),
                None => {
                    let (line, column) = locate::locate(&text, &[Seg::Key("recipe")]);
                    let tried = candidates
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(PlanErrors(vec![PlanError::Invalid {
                        path: profile_path.to_owned(),
                        line,
                        column,
                        key: "recipe".into(),
                        message: format!(
                            "recipe {:?} not found (looked for {tried}); name a file in image-recipes/ such as debian-12, or give a path ending in .yaml",
                            profile.recipe
                        ),
                    }]));
                }
            }
        }
    };
    let recipe_text = read(&recipe_path)?;
    let recipe = parse_recipe(&recipe_path, &recipe_text)?;

    let outputs = if overrides.outputs.is_empty() {
        profile.outputs.clone()
    } else {
        overrides.outputs.clone()
    };
    validate::combination(
        profile_path,
        &text,
        &profile,
        &recipe_path,
        &recipe,
        &outputs,
    )?;

    Ok(Plan {
        profile_path: profile_path.to_owned(),
        recipe_path,
        profile,
        recipe,
        outputs,
        source_date_epoch: overrides.source_date_epoch.unwrap_or(0),
    })
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
