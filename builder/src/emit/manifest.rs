//! The manifest: a JSON record of what went into an artifact and what came
//! out, written next to it as `<artifact>.manifest.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Bumped when a field changes meaning; readers refuse newer manifests.
pub const MANIFEST_SCHEMA: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Manifest {
    pub schema: u32,
    pub imgbuild_version: String,
    /// `lxc` or `qcow2`.
    pub kind: String,
    pub artifact: ArtifactInfo,
    pub profile: InputFile,
    pub recipe: InputFile,
    pub distro: String,
    pub release: String,
    pub arch: String,
    pub base: BaseInfo,
    pub k3s: K3sInfo,
    pub source_date_epoch: u64,
    /// Entries the layer added or replaced.
    pub files_added: Vec<AddedFile>,
    /// Remove patterns applied to the base.
    pub removed_patterns: Vec<String>,
    /// `/etc/os-release` of the result, as key → value.
    pub os_release: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tar: Option<TarInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskInfo>,
    /// LXC: how Proxmox will set the container up, as checked at build time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pct: Option<PctInfo>,
    /// The profile's and recipe's warnings, as `imgbuild validate` prints
    /// them (`path:line:column: key: message`): what the build went on with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Host-side configuration files written next to the artifact.
    #[serde(default)]
    pub host_config: Vec<String>,
    /// Wall-clock milliseconds per step of this artifact's build, in the
    /// order the steps ran (the shared ones — plan, fetch-inputs — first).
    pub timings_ms: StepTimings,
}

/// `(step, milliseconds)` in the order the steps ran, written as a JSON
/// object whose keys keep that order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepTimings(pub Vec<(String, u64)>);

impl StepTimings {
    pub fn iter(&self) -> impl Iterator<Item = &(String, u64)> {
        self.0.iter()
    }

    pub fn get(&self, step: &str) -> Option<u64> {
        self.0.iter().find(|(s, _)| s == step).map(|(_, ms)| *ms)
    }
}

impl Serialize for StepTimings {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = ser.serialize_map(Some(self.0.len()))?;
        for (step, ms) in &self.0 {
            map.serialize_entry(step, ms)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for StepTimings {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = StepTimings;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a mapping of step names to milliseconds")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<StepTimings, A::Error> {
                let mut v = Vec::new();
                while let Some(entry) = a.next_entry::<String, u64>()? {
                    v.push(entry);
                }
                Ok(StepTimings(v))
            }
        }
        de.deserialize_map(V)
    }
}

/// The template contract's outcome (builder/src/output/contract): what
/// `pct create`/`pct start` will find in the template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PctInfo {
    /// pve-container's set-up plugin for the distro: `debian`, `ubuntu` or
    /// `centos` (Rocky).
    pub plugin: String,
    /// What `/sbin/init` resolves to (systemd).
    pub init: String,
    /// The network tools pct's configuration relies on, as found.
    #[serde(default)]
    pub network_stack: Vec<NetworkTool>,
    /// Items the profile let the build go without (`lxc.require-network-stack: false`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NetworkTool {
    /// e.g. `ifupdown`, `DHCP client dhclient`, `NetworkManager`.
    pub what: String,
    /// Its path in the image, symlinks resolved.
    pub path: String,
}

/// What the qcow2 output did to the disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DiskInfo {
    pub virtual_size: u64,
    /// `qcow2` or `raw` for a cloud image; `assembled` for a disk made
    /// from a rootfs.
    pub base_format: String,
    /// The base's virtual size, when the disk was grown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grown_from: Option<u64>,
    pub compressed: bool,
    /// How the qcow2 was written: `patched` (the base's bytes kept, the
    /// changed clusters appended) or `converted` (`qemu-img convert`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub written: String,
    /// What the working copy of a patched base held: `metadata` (the ext4
    /// root's metadata, from the map kept for the base) or `full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_copy: Option<String>,
    pub root_partition: u32,
    pub root_label: String,
    pub root_fs: String,
    /// Byte offset and size of the root filesystem (inside the LV for an
    /// LVM root).
    pub root_offset: u64,
    pub root_size: u64,
    /// `VG/LV` of the root when its partition is an LVM2 PV.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_lv: Option<String>,
    /// What was done for SELinux: the image's policy, how many paths were
    /// labelled, and how (`setfiles`, `xattr`, `autorelabel`, `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selinux: Option<crate::output::disk::selinux::SelinuxInfo>,
    /// The kernel an assembled disk boots (`/vmlinuz`'s target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Firmware an assembled disk was set up for (`bios`, `uefi`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boot: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ArtifactInfo {
    /// File name (the manifest sits in the same directory).
    pub file: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct InputFile {
    pub name: String,
    pub path: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BaseInfo {
    /// URL, local path or bootstrap command line.
    pub origin: String,
    pub sha256: String,
    pub size: u64,
    /// Set when the base was taken from a catalog (`pveam`,
    /// `linuxcontainers`) by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<CatalogInfo>,
}

/// The catalog entry a base came from and how it was trusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CatalogInfo {
    /// The index read (URL, or pveam's local copy).
    pub index: String,
    /// pveam package or simplestreams product key.
    pub name: String,
    /// pveam version or simplestreams serial.
    pub version: String,
    /// The digest the index lists, which the base was checked against.
    pub listed_digest: String,
    /// How the index was trusted: its signature checked (and with what), or not.
    pub index_signature: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct K3sInfo {
    pub version: String,
    pub role: String,
    pub ha: bool,
    pub mirror: String,
    /// The sha256 of the release's amd64 `k3s` binary baked into the
    /// defaults, which nodes enforce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_sha256: Option<String>,
    /// Where that digest came from: `profile`, `baked-binary`,
    /// `checksum-file <url>`, or `none` (not resolved; see `warnings`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256_source: Option<String>,
    /// The profile lets nodes trust the mirror's checksum file at boot for
    /// a version without a pinned digest.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trust_mirror_checksums: bool,
    /// sha256 of the baked K3s binary, when one was baked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baked_binary_sha256: Option<String>,
    #[serde(default)]
    pub airgap_images: Vec<InputFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AddedFile {
    pub path: String,
    /// `file`, `dir` or `symlink`.
    pub kind: String,
    /// Octal, e.g. `0644`.
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TarInfo {
    pub entries_in: u64,
    pub entries_out: u64,
    pub entries_dropped: u64,
    pub entries_added: u64,
    pub uncompressed_bytes: u64,
}

impl Manifest {
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self)
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
        s.push('\n');
        s
    }

    pub fn from_json(path: &Path, text: &str) -> anyhow::Result<Self> {
        let m: Manifest = serde_json::from_str(text)
            .map_err(|e| anyhow::anyhow!("{}: not an imgbuild manifest: {e}", path.display()))?;
        if m.schema > MANIFEST_SCHEMA {
            anyhow::bail!(
                "{}: manifest schema {} is newer than this imgbuild understands ({MANIFEST_SCHEMA}); upgrade imgbuild",
                path.display(),
                m.schema
            );
        }
        Ok(m)
    }
}

/// `out/x.tar.zst` → `out/x.tar.zst.manifest.json`.
pub fn manifest_path_for(artifact: &Path) -> PathBuf {
    let mut s = artifact.as_os_str().to_owned();
    s.push(".manifest.json");
    PathBuf::from(s)
}

/// `KEY=value` / `KEY="value"` lines of os-release into a map.
pub fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.starts_with('#') {
                return None;
            }
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_owned(), v.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_parsing() {
        let m = parse_os_release(
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n# c\nVERSION_ID='12'\n",
        );
        assert_eq!(m["ID"], "debian");
        assert_eq!(m["VERSION_ID"], "12");
        assert_eq!(m["PRETTY_NAME"], "Debian GNU/Linux 12 (bookworm)");
    }
}
