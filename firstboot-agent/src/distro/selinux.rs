//! SELinux. On an SELinux host K3s runs with `selinux: true` (K3s docs,
//! "SELinux Support": "specify the --selinux flag when starting K3s
//! servers and agents") and needs the k3s-selinux policy, which depends on
//! container-selinux. install.sh's `setup_selinux` looks for the policy at
//! `/usr/share/selinux/packages/k3s.pp` and is fatal without it ("Failed to
//! find the k3s-selinux policy, please install: … container-selinux …
//! k3s-selinux"); the agent does the same, before K3s is installed.
//!
//! Where the image has the RPMs (a profile's `files:` placed them in
//! [`node_spec::SELINUX_RPMS_DIR`]), they are installed from there with
//! dnf (dependencies from the installed system only, no repository), or
//! `rpm -U` where dnf is absent.

use node_spec::SELINUX_RPMS_DIR;

use super::{find_program, said, OsRelease};
use crate::checks::Finding;
use crate::rootfs::{FileError, Root};
use crate::system::System;

/// selinuxfs: present when the kernel runs SELinux (here, for this node).
pub const ENFORCE: &str = "/sys/fs/selinux/enforce";
pub const CONFIG: &str = "/etc/selinux/config";
/// What install.sh checks for (k3s-selinux installs it).
pub const K3S_POLICY: &str = "/usr/share/selinux/packages/k3s.pp";

/// SELinux on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The kernel runs no SELinux here (no selinuxfs), whatever the config says.
    Off,
    Permissive,
    Enforcing,
}

/// What the SELinux part found (and did).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub mode: Mode,
    /// `/etc/selinux/config` says `SELINUX=enforcing`.
    pub configured_enforcing: bool,
    /// The k3s-selinux policy is installed (now).
    pub policy: bool,
    pub finding: Finding,
}

impl Outcome {
    /// Whether K3s runs with `selinux: true`.
    pub fn k3s_selinux(&self) -> bool {
        self.mode != Mode::Off && self.policy
    }
}

/// `SELINUX=enforcing` in /etc/selinux/config.
pub fn config_enforcing(text: &str) -> bool {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("SELINUX="))
        .next_back()
        .is_some_and(|v| v.trim().trim_matches('"') == "enforcing")
}

pub fn mode(root: &Root) -> Result<Mode, FileError> {
    Ok(
        match root.read_optional(ENFORCE)?.as_deref().map(str::trim) {
            None => Mode::Off,
            Some("1") => Mode::Enforcing,
            Some(_) => Mode::Permissive,
        },
    )
}

/// The RPMs baked into [`SELINUX_RPMS_DIR`], as node paths, sorted.
pub fn baked_rpms(root: &Root) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root.real_path(SELINUX_RPMS_DIR)) else {
        return Vec::new();
    };
    let mut rpms: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".rpm") && !n.starts_with('.'))
        .map(|n| format!("{SELINUX_RPMS_DIR}/{n}"))
        .collect();
    rpms.sort();
    rpms
}

fn packages_hint(os: &OsRelease) -> String {
    format!(
        "install container-selinux and k3s-selinux ({}; k3s-selinux comes from K3s's RPM repository, rpm.rancher.io, as install.sh installs it), or bake them: put the two RPMs into the image with the profile's `files:` under {SELINUX_RPMS_DIR}/ and the agent installs them from there (docs/agent.md, \"SELinux\")",
        os.install_hint("container-selinux")
    )
}

/// Inspect (and with `apply`, install baked RPMs when the policy is
/// missing). A missing policy fails when SELinux enforces, now or from
/// the next boot on.
pub fn run(
    root: &Root,
    system: &dyn System,
    os: &OsRelease,
    apply: bool,
) -> Result<Outcome, FileError> {
    let mode = mode(root)?;
    let configured_enforcing = root
        .read_optional(CONFIG)?
        .is_some_and(|t| config_enforcing(&t));
    let mut policy = root.exists(K3S_POLICY);
    let out = |policy, finding| Outcome {
        mode,
        configured_enforcing,
        policy,
        finding,
    };
    if mode == Mode::Off {
        return Ok(out(
            policy,
            Finding::pass(
                "selinux",
                if configured_enforcing {
                    format!("{CONFIG} says enforcing, but this kernel runs no SELinux here ({ENFORCE} is absent, as in a container); K3s runs without it")
                } else {
                    "not enabled".to_owned()
                },
            ),
        ));
    }
    let enforcing = mode == Mode::Enforcing || configured_enforcing;
    let state = match (mode, configured_enforcing) {
        (Mode::Enforcing, _) => "enforcing",
        (_, true) => "permissive now, enforcing from the next boot",
        _ => "permissive",
    };
    let mut installed = String::new();
    if !policy {
        let rpms = baked_rpms(root);
        if !rpms.is_empty() && apply {
            let files: Vec<&str> = rpms.iter().map(String::as_str).collect();
            let (program, mut args) = if find_program(root, "dnf").is_some() {
                // No repository: what the RPMs need comes from the installed
                // system; a missing dependency fails with dnf's message.
                (
                    "dnf",
                    vec![
                        "install",
                        "-y",
                        "--disablerepo=*",
                        "--setopt=install_weak_deps=False",
                    ],
                )
            } else {
                ("rpm", vec!["-U", "--replacepkgs"])
            };
            args.extend(files.iter().copied());
            let o =
                system
                    .command(program, &args)
                    .unwrap_or_else(|e| crate::system::CommandOutput {
                        success: false,
                        stdout: String::new(),
                        stderr: e.to_string(),
                    });
            if !o.success {
                return Ok(out(
                    false,
                    Finding::fail(
                        "selinux",
                        format!(
                            "SELinux is {state} and the k3s-selinux policy is missing; `{program} {}` failed: {}",
                            args.join(" "),
                            o.stderr.trim().lines().last().unwrap_or("no message")
                        ),
                        packages_hint(os),
                    ),
                ));
            }
            policy = root.exists(K3S_POLICY) || !system.acts_on_host();
            installed = said(
                system,
                format!("; installed {} from the image", files.join(", ")),
                format!(
                    "; would install {} from the image (dry run)",
                    files.join(", ")
                ),
            );
        } else if !rpms.is_empty() {
            return Ok(out(
                false,
                Finding::warn(
                    "selinux",
                    format!("SELinux is {state}; the k3s-selinux policy is missing"),
                    format!("`run` installs {} from the image", rpms.join(", ")),
                ),
            ));
        }
    }
    let finding = if policy {
        Finding::pass(
            "selinux",
            format!("{state}; k3s-selinux policy present{installed}; K3s runs with selinux: true"),
        )
    } else if enforcing {
        Finding::fail(
            "selinux",
            format!(
                "SELinux is {state} on {} and the k3s-selinux policy ({K3S_POLICY}) is missing: K3s's containers would be denied",
                os.name()
            ),
            packages_hint(os),
        )
    } else {
        Finding::warn(
            "selinux",
            format!(
                "{state}; the k3s-selinux policy is missing, so K3s runs without selinux: true"
            ),
            format!("before enforcing: {}", packages_hint(os)),
        )
    };
    Ok(out(policy, finding))
}

/// install.sh labels the binary `container_runtime_exec_t` (chcon); the
/// policy's file contexts name /usr/local/bin/k3s, so restorecon gives it
/// the same label after the agent's atomic install (a rename keeps the
/// temp file's label).
pub fn relabel(root: &Root, system: &dyn System, path: &str) -> Option<Finding> {
    find_program(root, "restorecon")?;
    match system.command("restorecon", &[path]) {
        Ok(o) if o.success => None,
        Ok(o) => Some(Finding::warn(
            "selinux",
            format!("restorecon {path} failed: {}", o.stderr.trim()),
            format!("run `chcon -t container_runtime_exec_t {path}`"),
        )),
        Err(e) => Some(Finding::warn(
            "selinux",
            format!("restorecon {path}: {e}"),
            format!("run `chcon -t container_runtime_exec_t {path}`"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;
    use crate::checks::Level;
    use crate::system::FakeSystem;

    fn rocky_enforcing() -> (tempfile::TempDir, Root, OsRelease) {
        let (d, root) = root_with(ROCKY);
        write(&root, ENFORCE, "1");
        // Rocky 9 GenericCloud's /etc/selinux/config.
        write(&root, CONFIG, "# This file controls the state of SELinux on the system.\nSELINUX=enforcing\nSELINUXTYPE=targeted\n");
        program(&root, "/usr/bin/dnf");
        let os = OsRelease::read(&root).unwrap();
        (d, root, os)
    }

    #[test]
    fn config_parser() {
        assert!(config_enforcing("SELINUX=enforcing\n"));
        assert!(!config_enforcing(
            "#SELINUX=enforcing\nSELINUX=permissive\n"
        ));
        assert!(!config_enforcing("SELINUX=disabled\n"));
    }

    #[test]
    fn enforcing_without_policy_fails_naming_both_packages() {
        let (_d, root, os) = rocky_enforcing();
        let sys = FakeSystem::new();
        let o = run(&root, &sys, &os, true).unwrap();
        assert_eq!(o.finding.level, Level::Fail, "{}", o.finding);
        assert!(!o.k3s_selinux());
        let advice = o.finding.advice.clone().unwrap();
        assert!(
            advice.contains("dnf install -y container-selinux")
                && advice.contains("k3s-selinux")
                && advice.contains(SELINUX_RPMS_DIR),
            "{advice}"
        );
        assert!(
            o.finding.detail.contains("Rocky Linux 9.4"),
            "{}",
            o.finding
        );
        assert!(
            sys.command_calls().is_empty(),
            "nothing to install: {:?}",
            sys.command_calls()
        );
    }

    #[test]
    fn baked_rpms_are_installed_with_dnf_from_the_image() {
        let (_d, root, os) = rocky_enforcing();
        let c = format!("{SELINUX_RPMS_DIR}/container-selinux-2.229.0-1.el9.noarch.rpm");
        let k = format!("{SELINUX_RPMS_DIR}/k3s-selinux-1.6-1.el9.noarch.rpm");
        write(&root, &c, "rpm");
        write(&root, &k, "rpm");
        write(&root, &format!("{SELINUX_RPMS_DIR}/README"), "not an rpm");
        // check: says what run would do, changes nothing.
        let sys = FakeSystem::new();
        let o = run(&root, &sys, &os, false).unwrap();
        assert_eq!(o.finding.level, Level::Warn, "{}", o.finding);
        assert!(sys.command_calls().is_empty());
        // run: dnf installs both, then the policy is there.
        let mut sys = FakeSystem::new();
        sys.files_on_command
            .push(("dnf install".into(), root.path(K3S_POLICY), "pp".into()));
        let o = run(&root, &sys, &os, true).unwrap();
        assert_eq!(
            sys.command_calls(),
            vec![format!(
                "dnf install -y --disablerepo=* --setopt=install_weak_deps=False {c} {k}"
            )]
        );
        assert_eq!(o.finding.level, Level::Pass, "{}", o.finding);
        assert!(
            o.k3s_selinux() && o.finding.detail.contains("installed"),
            "{}",
            o.finding
        );
    }

    #[test]
    fn a_failed_install_fails_with_dnfs_words() {
        let (_d, root, os) = rocky_enforcing();
        let k = format!("{SELINUX_RPMS_DIR}/k3s-selinux-1.6-1.el9.noarch.rpm");
        write(&root, &k, "rpm");
        let mut sys = FakeSystem::new();
        let line = format!("dnf install -y --disablerepo=* --setopt=install_weak_deps=False {k}");
        sys.command_answers.insert(
            line,
            crate::system::CommandOutput {
                success: false,
                stdout: String::new(),
                stderr: "Error:\n Problem: nothing provides container-selinux >= 3:2.191.0-1 needed by k3s-selinux-1.6-1.el9.noarch\n".into(),
            },
        );
        let o = run(&root, &sys, &os, true).unwrap();
        assert_eq!(o.finding.level, Level::Fail);
        assert!(
            o.finding
                .detail
                .contains("nothing provides container-selinux"),
            "{}",
            o.finding
        );
    }

    #[test]
    fn present_policy_permissive_and_off() {
        let (_d, root, os) = rocky_enforcing();
        write(&root, K3S_POLICY, "pp");
        let o = run(&root, &FakeSystem::new(), &os, true).unwrap();
        assert!(
            o.k3s_selinux() && o.finding.level == Level::Pass,
            "{}",
            o.finding
        );
        // Permissive without the policy: a warning, K3s without selinux.
        let (_d, root) = root_with(ROCKY);
        write(&root, ENFORCE, "0");
        let o = run(&root, &FakeSystem::new(), &os, true).unwrap();
        assert_eq!(o.finding.level, Level::Warn, "{}", o.finding);
        assert!(!o.k3s_selinux());
        // Permissive, enforcing from the next boot: fails.
        write(&root, CONFIG, "SELINUX=enforcing\n");
        let o = run(&root, &FakeSystem::new(), &os, true).unwrap();
        assert_eq!(o.finding.level, Level::Fail, "{}", o.finding);
        // A Rocky container on a host without SELinux: no selinuxfs.
        std::fs::remove_file(root.path(ENFORCE)).unwrap();
        let o = run(&root, &FakeSystem::new(), &os, true).unwrap();
        assert_eq!(o.finding.level, Level::Pass, "{}", o.finding);
        assert!(
            o.finding.detail.contains("runs no SELinux here"),
            "{}",
            o.finding
        );
        assert_eq!(o.mode, Mode::Off);
    }
}
