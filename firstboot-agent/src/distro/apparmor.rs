//! AppArmor enabled without `apparmor_parser`: containerd then tries to
//! load its default profile and every pod fails with `exec:
//! "apparmor_parser": executable file not found in $PATH` (k3s#3406).
//!
//! containerd decides whether to use AppArmor as `hostSupports` in its
//! `pkg/apparmor/apparmor_linux.go` does: `/sys/kernel/security/apparmor`
//! exists and `/sys/module/apparmor/parameters/enabled` starts with `Y`.
//! The same two files decide here, so a container whose securityfs is not
//! mounted (AppArmor invisible to containerd) is not failed for nothing.

use super::{find_program, OsRelease};
use crate::checks::Finding;
use crate::rootfs::{FileError, Root};

pub const ENABLED: &str = "/sys/module/apparmor/parameters/enabled";
pub const SECURITYFS: &str = "/sys/kernel/security/apparmor";

/// The AppArmor line of `check` and of the preflight step.
pub fn check(root: &Root, os: &OsRelease) -> Result<Finding, FileError> {
    let enabled = root
        .read_optional(ENABLED)?
        .is_some_and(|v| v.starts_with('Y'));
    let used = enabled && root.real_path(SECURITYFS).exists();
    if !used {
        return Ok(Finding::pass(
            "apparmor",
            if enabled {
                format!("enabled in the kernel, but {SECURITYFS} is absent, so containerd does not use it")
            } else {
                "not enabled".to_owned()
            },
        ));
    }
    Ok(match find_program(root, "apparmor_parser") {
        Some(p) => Finding::pass("apparmor", format!("enabled; containerd loads its profile with {p}")),
        None => Finding::fail(
            "apparmor",
            format!(
                "AppArmor is enabled ({ENABLED} is Y) but apparmor_parser is not installed on {}: containerd would load its default profile with it, and every pod would fail with `exec: \"apparmor_parser\": executable file not found in $PATH` (k3s#3406)",
                os.name()
            ),
            format!(
                "install the apparmor package ({}), or bake it: add `apparmor` to the recipe's packages and rebuild",
                os.install_hint("apparmor")
            ),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;
    use crate::checks::Level;

    #[test]
    fn enabled_without_the_parser_fails_naming_the_package() {
        let (_d, root) = root_with(UBUNTU);
        let os = OsRelease::read(&root).unwrap();
        write(&root, ENABLED, "Y\n");
        write(&root, &format!("{SECURITYFS}/profiles"), "");
        let f = check(&root, &os).unwrap();
        assert_eq!(f.level, Level::Fail, "{f}");
        assert!(
            f.detail.contains("Ubuntu 24.04.1 LTS") && f.detail.contains("k3s#3406"),
            "{f}"
        );
        assert_eq!(
            f.advice.as_deref(),
            Some("install the apparmor package (apt-get install -y apparmor), or bake it: add `apparmor` to the recipe's packages and rebuild")
        );
        program(&root, "/usr/sbin/apparmor_parser");
        let f = check(&root, &os).unwrap();
        assert_eq!(f.level, Level::Pass, "{f}");
        assert!(f.detail.contains("/usr/sbin/apparmor_parser"), "{f}");
    }

    #[test]
    fn not_used_by_containerd_passes() {
        // Debian in a container: the module says Y, securityfs is not there.
        let (_d, root) = root_with(DEBIAN);
        let os = OsRelease::read(&root).unwrap();
        write(&root, ENABLED, "Y\n");
        let f = check(&root, &os).unwrap();
        assert_eq!(f.level, Level::Pass, "{f}");
        assert!(f.detail.contains("does not use it"), "{f}");
        // Rocky: no AppArmor at all.
        let (_d, root) = root_with(ROCKY);
        let f = check(&root, &OsRelease::read(&root).unwrap()).unwrap();
        assert_eq!((f.level, f.detail.as_str()), (Level::Pass, "not enabled"));
        write(&root, ENABLED, "N\n");
        write(&root, &format!("{SECURITYFS}/profiles"), "");
        assert_eq!(
            check(&root, &OsRelease::default()).unwrap().level,
            Level::Pass
        );
    }
}
