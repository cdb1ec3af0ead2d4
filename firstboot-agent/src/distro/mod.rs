//! What the distribution brings that K3s trips over, each acted on only
//! when it is present: a host firewall (firewalld, ufw), SELinux enforcing,
//! AppArmor without its parser, NetworkManager's nm-cloud-setup, and
//! storage on which containerd's overlayfs snapshotter cannot work.
//!
//! Each part reads the node's files under `--root` and acts through
//! [`crate::system::System`], so the fixtures of a Debian, Ubuntu or Rocky
//! root test it as the node would run it. With `apply == false` (the
//! `check` command) nothing is changed: each reports what `run` would do.

pub mod apparmor;
pub mod firewall;
pub mod nm_cloud_setup;
pub mod selinux;
pub mod snapshotter;

use std::os::unix::fs::PermissionsExt;

use crate::rootfs::{FileError, Root};

/// The directories a systemd service finds programs in (systemd's default
/// `PATH` for services, `/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin`,
/// plus `/sbin` and `/bin` for distributions not merged into /usr).
pub const SERVICE_PATH: [&str; 6] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// Whether `abs` is an executable file on the node (links followed inside
/// the root, as `/sbin -> /usr/sbin` on a merged /usr).
pub fn is_program(root: &Root, abs: &str) -> bool {
    std::fs::metadata(root.real_path(abs))
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Where `name` is on the service `PATH` of the node, as the node names it.
pub fn find_program(root: &Root, name: &str) -> Option<String> {
    SERVICE_PATH
        .iter()
        .map(|dir| format!("{dir}/{name}"))
        .find(|p| is_program(root, p))
}

/// The distribution family, for the package advice in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Debian, Ubuntu and their derivatives (apt).
    Debian,
    /// RHEL, Rocky, AlmaLinux, CentOS, Fedora (dnf).
    Rhel,
    Other,
}

/// The parts of os-release(5) the agent uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsRelease {
    pub id: String,
    pub id_like: Vec<String>,
    pub version_id: String,
    pub pretty_name: String,
}

impl OsRelease {
    /// Parse os-release(5): `KEY=value` lines, values optionally quoted.
    pub fn parse(text: &str) -> Self {
        let mut os = OsRelease::default();
        for line in text.lines() {
            let Some((k, v)) = line.trim().split_once('=') else {
                continue;
            };
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v)
                .to_owned();
            match k {
                "ID" => os.id = v,
                "ID_LIKE" => os.id_like = v.split_whitespace().map(str::to_owned).collect(),
                "VERSION_ID" => os.version_id = v,
                "PRETTY_NAME" => os.pretty_name = v,
                _ => {}
            }
        }
        os
    }

    /// `/etc/os-release`, else `/usr/lib/os-release` (os-release(5)).
    pub fn read(root: &Root) -> Result<Self, FileError> {
        for p in ["/etc/os-release", "/usr/lib/os-release"] {
            if let Some(text) = root.read_optional(p)? {
                return Ok(Self::parse(&text));
            }
        }
        Ok(Self::default())
    }

    pub fn family(&self) -> Family {
        let ids =
            || std::iter::once(self.id.as_str()).chain(self.id_like.iter().map(String::as_str));
        if ids().any(|i| matches!(i, "debian" | "ubuntu")) {
            Family::Debian
        } else if ids().any(|i| matches!(i, "rhel" | "fedora" | "centos" | "rocky" | "almalinux")) {
            Family::Rhel
        } else {
            Family::Other
        }
    }

    /// How messages name the system.
    pub fn name(&self) -> String {
        if !self.pretty_name.is_empty() {
            self.pretty_name.clone()
        } else if !self.id.is_empty() {
            format!("{} {}", self.id, self.version_id).trim().to_owned()
        } else {
            "an unknown distribution (no os-release)".to_owned()
        }
    }

    /// The command that installs `packages` on this family.
    pub fn install_hint(&self, packages: &str) -> String {
        match self.family() {
            Family::Debian => format!("apt-get install -y {packages}"),
            Family::Rhel => format!("dnf install -y {packages}"),
            Family::Other => format!("install {packages} with the distribution's package manager"),
        }
    }
}

/// `done` when the system acts, `would` when it only records (a dry run).
pub(crate) fn said(system: &dyn crate::system::System, done: String, would: String) -> String {
    if system.acts_on_host() {
        done
    } else {
        would
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Roots shaped like the three distributions the agent is tested on.
    use super::*;

    pub fn write(root: &Root, p: &str, t: &str) {
        let path = root.path(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, t).unwrap();
    }

    /// An executable at `p`.
    pub fn program(root: &Root, p: &str) {
        write(root, p, "#!/bin/sh\n");
        std::fs::set_permissions(root.path(p), std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Debian 12's os-release (base-files 12.4).
    pub const DEBIAN: &str = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n";
    /// Ubuntu 24.04's.
    pub const UBUNTU: &str = "PRETTY_NAME=\"Ubuntu 24.04.1 LTS\"\nNAME=\"Ubuntu\"\nVERSION_ID=\"24.04\"\nVERSION=\"24.04.1 LTS (Noble Numbat)\"\nID=ubuntu\nID_LIKE=debian\n";
    /// Rocky Linux 9's.
    pub const ROCKY: &str = "NAME=\"Rocky Linux\"\nVERSION=\"9.4 (Blue Onyx)\"\nID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\nVERSION_ID=\"9.4\"\nPLATFORM_ID=\"platform:el9\"\nPRETTY_NAME=\"Rocky Linux 9.4 (Blue Onyx)\"\n";

    pub fn root_with(os_release: &str) -> (tempfile::TempDir, Root) {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        write(&root, "/usr/lib/os-release", os_release);
        (dir, root)
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn os_release_of_the_three_distributions() {
        let (_d, root) = root_with(ROCKY);
        let os = OsRelease::read(&root).unwrap();
        assert_eq!(os.id, "rocky");
        assert_eq!(os.family(), Family::Rhel);
        assert_eq!(os.name(), "Rocky Linux 9.4 (Blue Onyx)");
        assert_eq!(os.install_hint("x"), "dnf install -y x");
        assert_eq!(OsRelease::parse(UBUNTU).family(), Family::Debian);
        assert_eq!(OsRelease::parse(DEBIAN).family(), Family::Debian);
        assert_eq!(
            OsRelease::parse(DEBIAN).install_hint("x"),
            "apt-get install -y x"
        );
        assert_eq!(OsRelease::parse("ID=alpine\n").family(), Family::Other);
        let (_d, empty) = {
            let d = tempfile::tempdir().unwrap();
            let r = Root::new(d.path());
            (d, r)
        };
        assert!(OsRelease::read(&empty)
            .unwrap()
            .name()
            .contains("no os-release"));
    }

    #[test]
    fn programs_are_found_on_the_service_path_only_when_executable() {
        let (_d, root) = root_with(DEBIAN);
        assert_eq!(find_program(&root, "ufw"), None);
        write(&root, "/usr/sbin/ufw", "not executable");
        assert_eq!(find_program(&root, "ufw"), None);
        program(&root, "/usr/sbin/ufw");
        assert_eq!(find_program(&root, "ufw").as_deref(), Some("/usr/sbin/ufw"));
    }
}
