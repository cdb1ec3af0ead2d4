//! The contract between `imgbuild` (which bakes an image) and `firstboot-agent`
//! (which reads what was baked at first boot).
//!
//! Both binaries depend on this crate so that a value the builder writes is a
//! value the agent can read: the K3s release tag, sha256 digests, the node role
//! and [`BakedDefaults`], the file the builder places at [`DEFAULTS_PATH`].
//!
//! Nothing in here may hold a secret: the defaults file ships inside every
//! image built from a profile. Tokens arrive from metadata at boot.

pub mod atomic;
mod defaults;
pub mod retry;
mod values;

pub use defaults::{
    AirgapImage, BakedBinary, BakedDefaults, ChecksDefaults, DefaultsError, FirewallPolicy,
    K3sDefaults, DEFAULTS_PATH, DEFAULTS_SCHEMA,
};
pub use values::{K3sVersion, Role, Sha256Hex, ValueError};

/// Default K3s release mirror: the GitHub release layout
/// `<mirror>/<version>/k3s` and `<mirror>/<version>/sha256sum-amd64.txt`.
pub const DEFAULT_K3S_MIRROR: &str = "https://github.com/k3s-io/k3s/releases/download";

/// A release's checksum file, beside its binaries on the mirror.
pub const CHECKSUM_FILE: &str = "sha256sum-amd64.txt";

/// `<mirror>/<version>/<file>` in the GitHub release layout, the version's
/// `+` written `%2B`: where the builder fetches the checksum file and the
/// agent the binary and, when allowed, the checksum file.
pub fn release_url(mirror: &str, version: &K3sVersion, file: &str) -> String {
    format!(
        "{}/{}/{file}",
        mirror.trim_end_matches('/'),
        version.url_encoded()
    )
}

/// Where the agent binary is installed inside an image.
pub const AGENT_BINARY_PATH: &str = "/usr/local/sbin/firstboot-agent";

/// Name of the agent's systemd unit inside an image.
pub const AGENT_UNIT_NAME: &str = "firstboot-agent.service";

/// Where a baked K3s binary is stored inside an image until the agent installs it.
pub const BAKED_K3S_PATH: &str = "/usr/local/lib/firstboot-agent/k3s";

/// Where baked air-gap image archives are placed (the directory K3s imports from).
pub const AIRGAP_IMAGES_DIR: &str = "/var/lib/rancher/k3s/agent/images";

/// Where a profile's `files:` put the k3s-selinux and container-selinux
/// RPMs; the agent installs them from here on an SELinux-enforcing node
/// whose k3s-selinux policy is missing (docs/agent.md, "SELinux").
pub const SELINUX_RPMS_DIR: &str = "/usr/local/lib/firstboot-agent/selinux-rpms";
