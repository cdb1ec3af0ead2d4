//! The on-disk schema of profiles (`profiles/*.yaml`) and recipes
//! (`image-recipes/*.yaml`). Documented key by key in `docs/schema.md`.
//!
//! Every struct denies unknown keys; value types from `node_spec` validate
//! themselves, so serde_yaml reports their errors with line and column.

use std::collections::BTreeMap;

use node_spec::{K3sVersion, Role, Sha256Hex};
use serde::{Deserialize, Serialize};

/// A node profile: what node this image makes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Profile {
    /// Short name used in artifact names, e.g. `k3s-worker`.
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Recipe name (`debian-12` → `image-recipes/debian-12.yaml` next to the
    /// profile directory) or a path to a recipe file ending in `.yaml`.
    pub recipe: String,
    pub k3s: K3sSpec,
    #[serde(default)]
    pub bake: BakeSpec,
    /// Extra sysctls written to `/etc/sysctl.d/90-imgbuild.conf`.
    #[serde(default)]
    pub sysctls: BTreeMap<String, SysctlValue>,
    /// Kernel modules listed in `/etc/modules-load.d/imgbuild.conf`.
    #[serde(default = "default_modules")]
    pub modules: Vec<String>,
    /// Extra files to place in the image.
    #[serde(default)]
    pub files: Vec<FileSpec>,
    #[serde(default)]
    /// Baked as written: one type for the profile and the agent's defaults.
    pub checks: node_spec::ChecksDefaults,
    /// Which artifacts `imgbuild build` makes.
    #[serde(default = "default_outputs")]
    pub outputs: Vec<OutputKind>,
    #[serde(default)]
    pub lxc: LxcSpec,
    #[serde(default)]
    pub qcow2: Qcow2Spec,
}

fn default_modules() -> Vec<String> {
    vec!["overlay".into(), "br_netfilter".into()]
}

fn default_outputs() -> Vec<OutputKind> {
    vec![OutputKind::Lxc]
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct K3sSpec {
    pub version: K3sVersion,
    pub role: Role,
    #[serde(default)]
    pub ha: bool,
    #[serde(default)]
    pub control_plane_taint: bool,
    /// sha256 of the release's amd64 `k3s` binary. When absent the build
    /// resolves it (from the baked binary, else the release's
    /// `sha256sum-amd64.txt` on the mirror) and bakes it.
    #[serde(default)]
    pub sha256: Option<Sha256Hex>,
    /// Release mirror in GitHub release layout.
    #[serde(default)]
    pub mirror: Option<String>,
    /// Let a node trust the mirror's `sha256sum-amd64.txt` at boot for a
    /// version without a pinned digest; and let a build whose checksum file
    /// cannot be fetched go on without a pin (with a manifest warning)
    /// instead of failing. Default false.
    #[serde(default)]
    pub trust_mirror_checksums: bool,
    /// Default `config.yaml` keys (K3s flag names without dashes).
    #[serde(default)]
    pub config: BTreeMap<String, serde_yaml::Value>,
    /// What the agent does with an active firewalld or ufw: `open` the
    /// ports K3s needs (default), `disable` it, or `leave` it alone.
    #[serde(default)]
    pub firewall: node_spec::FirewallPolicy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BakeSpec {
    /// Bake firstboot-agent (default true; an image without it is a plain base).
    #[serde(default = "yes")]
    pub agent: bool,
    /// Bake this K3s binary so first boot needs no download.
    #[serde(default)]
    pub k3s_binary: Option<Artifact>,
    /// Air-gap image archives (`k3s-airgap-images-amd64.tar.zst`, …).
    #[serde(default)]
    pub airgap_images: Vec<Artifact>,
}

impl Default for BakeSpec {
    fn default() -> Self {
        Self {
            agent: true,
            k3s_binary: None,
            airgap_images: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}

/// A file fetched by the builder: a local path or an http(s) URL, with its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Artifact {
    /// Local file, relative to the YAML file that names it. Exclusive with `url`.
    #[serde(default)]
    pub path: Option<String>,
    /// http(s) URL. Exclusive with `path`.
    #[serde(default)]
    pub url: Option<String>,
    /// Required for URLs; for local paths it is checked when given.
    #[serde(default)]
    pub sha256: Option<Sha256Hex>,
    /// A checksum file (GNU `sha256sum` or BSD `SHA256 (name) = …` format)
    /// holding the digest, when the digest is not pinned inline.
    #[serde(default)]
    pub sha256_url: Option<String>,
}

/// A sysctl's value: a number or a string (`"4096 87380 6291456"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum SysctlValue {
    Int(i64),
    Text(String),
}

// By hand rather than `untagged`, whose error names the Rust type
// ("data did not match any variant of untagged enum SysctlValue").
impl<'de> Deserialize<'de> for SysctlValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SysctlValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a whole number or a string, e.g. 524288 or \"4096 87380 6291456\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SysctlValue, E> {
                Ok(SysctlValue::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SysctlValue, E> {
                // Above i64::MAX (e.g. an unsigned 64-bit limit): keep the digits.
                Ok(i64::try_from(v)
                    .map_or_else(|_| SysctlValue::Text(v.to_string()), SysctlValue::Int))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SysctlValue, E> {
                Ok(SysctlValue::Text(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

impl std::fmt::Display for SysctlValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SysctlValue::Int(i) => write!(f, "{i}"),
            SysctlValue::Text(s) => f.write_str(s),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileSpec {
    /// Absolute path inside the image.
    pub path: String,
    /// Inline text content; exclusive with `source`.
    #[serde(default)]
    pub content: Option<String>,
    /// Host file to copy, relative to the profile; exclusive with `content`.
    #[serde(default)]
    pub source: Option<String>,
    /// Octal permission bits as a string, e.g. `"0644"`.
    #[serde(default = "default_file_mode")]
    pub mode: String,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
}

fn default_file_mode() -> String {
    "0644".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputKind {
    /// Proxmox/LXC container template (`.tar.zst`).
    Lxc,
    /// qcow2 VM disk.
    Qcow2,
}

impl OutputKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputKind::Lxc => "lxc",
            OutputKind::Qcow2 => "qcow2",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LxcSpec {
    /// Template revision in the file name (`…_<version>-<revision>_amd64.tar.zst`).
    #[serde(default = "default_revision")]
    pub revision: u32,
    /// zstd level for the template (1–19).
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    /// Refuse a base without the network stack Proxmox configures for the
    /// distro (ifupdown and a DHCP client on Debian, systemd-networkd on
    /// Ubuntu, NetworkManager with ifcfg-rh on Rocky). `false` turns those
    /// items into warnings, for images that bring their own network set-up;
    /// what `pct` itself needs (systemd as init, os-release, the distro's
    /// version file) is always required.
    #[serde(default = "yes")]
    pub require_network_stack: bool,
}

impl Default for LxcSpec {
    fn default() -> Self {
        Self {
            revision: default_revision(),
            zstd_level: default_zstd_level(),
            require_network_stack: true,
        }
    }
}

fn default_revision() -> u32 {
    1
}

fn default_zstd_level() -> i32 {
    3
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Qcow2Spec {
    /// Disk revision in the file name (`…_<version>-<revision>_amd64.qcow2`).
    #[serde(default = "default_revision")]
    pub revision: u32,
    /// Virtual disk size (`8G`, `20GiB`, `4096M`, bytes). A cloud image is
    /// grown to it (never shrunk); an assembled disk is made this size.
    /// Default: the cloud image's own size; 4 GiB for an assembled disk.
    #[serde(default)]
    pub size: Option<String>,
    /// Write a compressed qcow2 (`qemu-img convert -c`): smaller, slower to build.
    #[serde(default)]
    pub compress: bool,
    /// When the image carries an SELinux policy: label what the layer
    /// writes (`label`), or leave `/.autorelabel` for the first boot.
    #[serde(default)]
    pub selinux: SelinuxMode,
    /// Root filesystem of a disk assembled from a rootfs: `ext4`, `xfs`, or
    /// `lvm` (XFS on LV `imgbuild/root`).
    #[serde(default)]
    pub assemble_root: AssembleRoot,
}

impl Default for Qcow2Spec {
    fn default() -> Self {
        Self {
            revision: default_revision(),
            size: None,
            compress: false,
            selinux: SelinuxMode::default(),
            assemble_root: AssembleRoot::default(),
        }
    }
}

/// `qcow2.selinux`: what to do when the image carries an SELinux policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SelinuxMode {
    /// Label every path the layer writes from the image's file_contexts.
    #[default]
    Label,
    /// Write `/.autorelabel`: the first boot relabels everything and reboots.
    Autorelabel,
}

/// `qcow2.assemble-root`: the root filesystem of an assembled disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AssembleRoot {
    #[default]
    Ext4,
    Xfs,
    /// XFS on LV `root` of VG `imgbuild`.
    Lvm,
}

/// An OS recipe: where the base comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Recipe {
    pub name: String,
    pub distro: Distro,
    /// Release version as the distro spells it: `"12"`, `"24.04"`, `"9"`.
    pub release: String,
    #[serde(default = "default_arch")]
    pub arch: String,
    /// Base for the LXC template: a rootfs tarball or a bootstrap.
    #[serde(default)]
    pub lxc: Option<SourceSpec>,
    /// Base for the qcow2 disk: a cloud image or a bootstrap.
    #[serde(default)]
    pub qcow2: Option<SourceSpec>,
}

impl Recipe {
    /// The base source for `kind` of output, if the recipe has one.
    pub fn source(&self, kind: OutputKind) -> Option<&SourceSpec> {
        match kind {
            OutputKind::Lxc => self.lxc.as_ref(),
            OutputKind::Qcow2 => self.qcow2.as_ref(),
        }
    }
}

fn default_arch() -> String {
    "amd64".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Distro {
    Debian,
    Ubuntu,
    Rocky,
}

impl Distro {
    pub fn as_str(self) -> &'static str {
        match self {
            Distro::Debian => "debian",
            Distro::Ubuntu => "ubuntu",
            Distro::Rocky => "rockylinux",
        }
    }
}

/// One base source. Exactly one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", try_from = "SourceSpecRepr")]
pub enum SourceSpec {
    /// A rootfs tarball (`.tar`, `.tar.gz`, `.tar.xz`, `.tar.zst`).
    Tarball(Artifact),
    /// A vendor cloud disk image (qcow2 or raw).
    CloudImage(Artifact),
    /// Build the rootfs with a package bootstrap tool.
    Bootstrap(BootstrapSpec),
    /// A Proxmox template by name from the index `pveam` reads.
    Pveam(PveamSpec),
    /// A linuxcontainers.org image by distro, release and variant, from its
    /// simplestreams index.
    Linuxcontainers(LinuxcontainersSpec),
}

impl SourceSpec {
    /// The recipe key naming this kind of source.
    pub fn key(&self) -> &'static str {
        match self {
            SourceSpec::Tarball(_) => "tarball",
            SourceSpec::CloudImage(_) => "cloud-image",
            SourceSpec::Bootstrap(_) => "bootstrap",
            SourceSpec::Pveam(_) => "pveam",
            SourceSpec::Linuxcontainers(_) => "linuxcontainers",
        }
    }

    /// Whether the base is a rootfs tarball (every source but a cloud image).
    pub fn is_rootfs(&self) -> bool {
        !matches!(self, SourceSpec::CloudImage(_))
    }
}

/// Proxmox's template index, as `pveam update` downloads it (PVE 9).
pub const DEFAULT_PVEAM_INDEX: &str = "http://download.proxmox.com/images/aplinfo-pve-9.dat";
/// Where Proxmox keeps container templates on a node (storage `local`).
pub const DEFAULT_PVE_TEMPLATE_DIR: &str = "/var/lib/vz/template/cache";
/// linuxcontainers.org's image server.
pub const DEFAULT_LXC_IMAGE_SERVER: &str = "https://images.linuxcontainers.org";

/// `lxc: {pveam: …}`: a template from Proxmox's appliance index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PveamSpec {
    /// The index's `Package`, e.g. `ubuntu-22.04-standard`.
    pub template: String,
    /// The index's `Version` (`22.04-1`); the newest when absent.
    #[serde(default)]
    pub version: Option<String>,
    /// The index as pveam names it (`…/aplinfo-pve-9.dat`): fetched as
    /// `<index>.gz`, its signature as `<index>.asc`.
    #[serde(default)]
    pub index: Option<String>,
    /// Keyring to check the index's signature with (gpgv); Proxmox's own
    /// (`/usr/share/doc/pve-manager/trustedkeys.gpg`) when present.
    #[serde(default)]
    pub keyring: Option<String>,
    /// Pinned sha512 of the template; must match the index's.
    #[serde(default)]
    pub sha512: Option<String>,
    /// Directory of templates already on this host, used in place when the
    /// chosen file is there.
    #[serde(default)]
    pub template_dir: Option<String>,
}

/// `lxc: {linuxcontainers: …}`: an image from a simplestreams server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LinuxcontainersSpec {
    /// `distro/release`, as `lxc-create -t download` and incus name it:
    /// `rockylinux/9`, `ubuntu/jammy`, `debian/bookworm`.
    pub image: String,
    /// Image variant: `default` (with the distro's init and network stack),
    /// `cloud` (with cloud-init).
    #[serde(default = "default_image_variant")]
    pub variant: String,
    /// A version serial (`20250601_02:06`); the newest when absent.
    #[serde(default)]
    pub serial: Option<String>,
    /// The simplestreams server (`streams/v1/index.json` below it).
    #[serde(default)]
    pub server: Option<String>,
}

fn default_image_variant() -> String {
    "default".into()
}

/// How a source is written in YAML: a mapping with exactly one of the keys.
/// (serde_yaml would otherwise expect enum variants as `!tags`.)
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct SourceSpecRepr {
    #[serde(default)]
    tarball: Option<Artifact>,
    #[serde(default)]
    cloud_image: Option<Artifact>,
    #[serde(default)]
    bootstrap: Option<BootstrapSpec>,
    #[serde(default)]
    pveam: Option<PveamSpec>,
    #[serde(default)]
    linuxcontainers: Option<LinuxcontainersSpec>,
}

impl TryFrom<SourceSpecRepr> for SourceSpec {
    type Error = String;
    fn try_from(r: SourceSpecRepr) -> Result<Self, String> {
        let mut given = Vec::new();
        if let Some(a) = r.tarball {
            given.push(SourceSpec::Tarball(a));
        }
        if let Some(a) = r.cloud_image {
            given.push(SourceSpec::CloudImage(a));
        }
        if let Some(b) = r.bootstrap {
            given.push(SourceSpec::Bootstrap(b));
        }
        if let Some(p) = r.pveam {
            given.push(SourceSpec::Pveam(p));
        }
        if let Some(l) = r.linuxcontainers {
            given.push(SourceSpec::Linuxcontainers(l));
        }
        match given.len() {
            1 => Ok(given.remove(0)),
            _ => Err(
                "a source needs exactly one of `tarball`, `cloud-image`, `bootstrap`, \
                 `pveam` or `linuxcontainers`"
                    .into(),
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BootstrapSpec {
    pub tool: BootstrapTool,
    /// Suite/codename (`bookworm`) for mmdebstrap; release (`9`) for dnf.
    pub suite: String,
    /// Mirror URL; the tool's default (Debian's archive for mmdebstrap) when absent.
    #[serde(default)]
    pub mirror: Option<String>,
    /// mmdebstrap `--variant` (default `apt`).
    #[serde(default = "default_variant")]
    pub variant: String,
    #[serde(default)]
    pub components: Vec<String>,
    #[serde(default)]
    pub packages: Vec<String>,
}

fn default_variant() -> String {
    "apt".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootstrapTool {
    Mmdebstrap,
    Dnf,
}
