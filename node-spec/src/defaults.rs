//! The defaults file the builder bakes into an image and the agent merges
//! metadata over at first boot.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{K3sVersion, Role, Sha256Hex, DEFAULT_K3S_MIRROR};

/// Where the builder writes [`BakedDefaults`] inside an image.
pub const DEFAULTS_PATH: &str = "/etc/firstboot-agent/defaults.yaml";

/// Version of the defaults file format. The agent refuses a newer one with a
/// message instead of misreading it.
pub const DEFAULTS_SCHEMA: u32 = 1;

/// Everything the builder tells the agent. Written as YAML at [`DEFAULTS_PATH`].
///
/// It never holds a token or other secret: the same file is in every node
/// built from a profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BakedDefaults {
    /// Format version, [`DEFAULTS_SCHEMA`] when written by this crate.
    pub schema: u32,
    /// The profile's `name`, for status output.
    pub profile: String,
    pub k3s: K3sDefaults,
    #[serde(default)]
    pub checks: ChecksDefaults,
}

/// The K3s part of the baked defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct K3sDefaults {
    /// Pinned release tag.
    pub version: K3sVersion,
    /// Default role; metadata may override it.
    pub role: Role,
    /// Embedded-etcd HA server: with no server URL in metadata the node runs
    /// `cluster-init` (first server); with one, it joins as another server.
    #[serde(default)]
    pub ha: bool,
    /// Add `node-role.kubernetes.io/control-plane:NoSchedule` on servers.
    #[serde(default)]
    pub control_plane_taint: bool,
    /// sha256 of the release's `k3s` (amd64) binary, resolved at build time
    /// (the profile's `k3s.sha256`, the baked binary, or the release's
    /// `sha256sum-amd64.txt` fetched by the builder). The agent installs
    /// only a binary with this digest, baked or downloaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Sha256Hex>,
    /// Whether the agent may trust a `sha256sum-amd64.txt` it fetches from
    /// the mirror at boot, for a version without a pinned digest (the build
    /// could not resolve one, or the metadata asks for another version
    /// without `k3s.sha256`). Only the profile sets it; default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trust_mirror_checksums: bool,
    /// Release mirror in GitHub release layout.
    #[serde(default = "default_mirror")]
    pub mirror: String,
    /// The K3s binary baked into the image, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<BakedBinary>,
    /// Air-gap image archives baked into the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub airgap_images: Vec<AirgapImage>,
    /// Default `/etc/rancher/k3s/config.yaml` content (K3s flag names without
    /// leading dashes). Metadata keys are merged over it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, serde_yaml::Value>,
    /// What the agent does with an active firewalld or ufw.
    #[serde(default, skip_serializing_if = "FirewallPolicy::is_default")]
    pub firewall: FirewallPolicy,
}

/// What the agent does with a host firewall (firewalld or ufw) it finds
/// active: open the ports and networks K3s needs (the default), turn it
/// off (what the K3s docs recommend), or leave it alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FirewallPolicy {
    #[default]
    Open,
    Disable,
    Leave,
}

impl FirewallPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            FirewallPolicy::Open => "open",
            FirewallPolicy::Disable => "disable",
            FirewallPolicy::Leave => "leave",
        }
    }

    fn is_default(&self) -> bool {
        *self == FirewallPolicy::default()
    }
}

/// A file baked into the image, with the digest it had at build time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BakedBinary {
    /// Absolute path inside the image.
    pub path: String,
    pub sha256: Sha256Hex,
}

/// An air-gap image archive placed under [`crate::AIRGAP_IMAGES_DIR`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct AirgapImage {
    pub path: String,
    pub sha256: Sha256Hex,
}

/// Preflight defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ChecksDefaults {
    /// Extra host names that must resolve before K3s is installed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    /// Upper bound for the network preflight, retries included.
    #[serde(default = "default_network_timeout")]
    pub network_timeout_secs: u64,
    /// Upper bound for K3s to become ready after start.
    #[serde(default = "default_ready_timeout")]
    pub ready_timeout_secs: u64,
}

impl Default for ChecksDefaults {
    fn default() -> Self {
        Self {
            dns_names: Vec::new(),
            network_timeout_secs: default_network_timeout(),
            ready_timeout_secs: default_ready_timeout(),
        }
    }
}

fn default_mirror() -> String {
    DEFAULT_K3S_MIRROR.to_owned()
}

fn default_network_timeout() -> u64 {
    300
}

fn default_ready_timeout() -> u64 {
    300
}

impl BakedDefaults {
    /// Parse the defaults file. Rejects a newer schema with a clear message.
    pub fn from_yaml(text: &str) -> Result<Self, DefaultsError> {
        let d: BakedDefaults = serde_yaml::from_str(text).map_err(DefaultsError::Parse)?;
        if d.schema > DEFAULTS_SCHEMA {
            return Err(DefaultsError::Schema(d.schema));
        }
        Ok(d)
    }

    /// Render as YAML with a header saying what the file is.
    pub fn to_yaml(&self) -> String {
        let body = serde_yaml::to_string(self).unwrap_or_else(|e| {
            // Serializing plain data structs cannot fail; keep the file valid anyway.
            format!("# serialization failed: {e}\n")
        });
        format!(
            "# Written by imgbuild. Read by firstboot-agent at first boot; cloud-init\n\
             # NoCloud metadata is merged over these values. Holds no secrets.\n{body}"
        )
    }
}

/// Why a defaults file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DefaultsError {
    #[error("{0}")]
    Parse(#[source] serde_yaml::Error),
    #[error("defaults schema {0} is newer than this agent understands ({DEFAULTS_SCHEMA}); rebuild the image with a matching imgbuild")]
    Schema(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BakedDefaults {
        let mut config = BTreeMap::new();
        config.insert(
            "write-kubeconfig-mode".to_owned(),
            serde_yaml::Value::String("0644".into()),
        );
        BakedDefaults {
            schema: DEFAULTS_SCHEMA,
            profile: "k3s-server".into(),
            k3s: K3sDefaults {
                version: "v1.34.3+k3s1".parse().unwrap(),
                role: Role::Server,
                ha: false,
                control_plane_taint: false,
                sha256: None,
                trust_mirror_checksums: false,
                mirror: DEFAULT_K3S_MIRROR.into(),
                binary: None,
                airgap_images: vec![],
                config,
                firewall: FirewallPolicy::Disable,
            },
            checks: ChecksDefaults::default(),
        }
    }

    #[test]
    fn round_trip() {
        let d = sample();
        let text = d.to_yaml();
        assert!(text.starts_with("# Written by imgbuild"));
        assert_eq!(BakedDefaults::from_yaml(&text).unwrap(), d);
    }

    #[test]
    fn newer_schema_is_refused() {
        let text = sample().to_yaml().replace("schema: 1", "schema: 9");
        let e = BakedDefaults::from_yaml(&text).unwrap_err().to_string();
        assert!(e.contains("schema 9 is newer"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = sample().to_yaml() + "token: abc\n";
        assert!(BakedDefaults::from_yaml(&text).is_err());
    }
}
