//! NetworkManager's nm-cloud-setup (RHEL and its rebuilds on clouds) adds
//! policy routes that break K3s's pod network. K3s's requirements page:
//! "If enabled, it is required to disable nm-cloud-setup and reboot the
//! node: `systemctl disable nm-cloud-setup.service nm-cloud-setup.timer`";
//! the unit install.sh writes (and the agent too) refuses to start while it
//! is enabled (`ExecStartPre=/bin/sh -xc '! /usr/bin/systemctl is-enabled
//! --quiet nm-cloud-setup.service'`). So it is disabled (and stopped)
//! before K3s starts; when it already ran this boot, the finding says that
//! its routes stay until a reboot.

use super::said;
use crate::checks::Finding;
use crate::rootfs::Root;
use crate::system::System;

pub const SERVICE: &str = "nm-cloud-setup.service";
pub const TIMER: &str = "nm-cloud-setup.timer";
/// Where the unit file is when NetworkManager-cloud-setup is installed.
pub const UNIT_DIRS: [&str; 3] = [
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
    "/etc/systemd/system",
];

fn installed(root: &Root) -> bool {
    UNIT_DIRS
        .iter()
        .any(|d| root.exists(format!("{d}/{SERVICE}")))
}

fn enabled(system: &dyn System, unit: &str) -> bool {
    system
        .systemctl(&["is-enabled", "--quiet", unit])
        .is_ok_and(|o| o.success)
}

pub fn run(root: &Root, system: &dyn System, apply: bool) -> Finding {
    const WHAT: &str = "nm-cloud-setup";
    if !installed(root) {
        return Finding::pass(WHAT, "not installed");
    }
    let units: Vec<&str> = [SERVICE, TIMER]
        .into_iter()
        .filter(|u| enabled(system, u))
        .collect();
    if units.is_empty() {
        return Finding::pass(WHAT, "installed, not enabled");
    }
    if !apply {
        return Finding::warn(
            WHAT,
            format!(
                "{} enabled: K3s's unit refuses to start while it is",
                units.join(", ")
            ),
            "`run` disables and stops it before K3s starts",
        );
    }
    let ran = system
        .systemctl(&["is-active", "--quiet", SERVICE])
        .is_ok_and(|o| o.success);
    let mut args = vec!["disable", "--now"];
    args.extend(&units);
    let fix = format!("run `systemctl mask {SERVICE} {TIMER}` and reboot");
    match system.systemctl(&args) {
        Ok(o) if o.success => {}
        Ok(o) => {
            return Finding::fail(
                WHAT,
                format!("`systemctl {}` failed: {}", args.join(" "), o.stderr.trim()),
                fix,
            )
        }
        Err(e) => return Finding::fail(WHAT, format!("`systemctl {}`: {e}", args.join(" ")), fix),
    }
    if system.acts_on_host() && enabled(system, SERVICE) {
        return Finding::fail(
            WHAT,
            format!(
                "{SERVICE} is still enabled after `systemctl {}`",
                args.join(" ")
            ),
            fix,
        );
    }
    let done = said(
        system,
        format!("disabled and stopped {}", units.join(", ")),
        format!("would disable and stop {} (dry run)", units.join(", ")),
    );
    if ran && system.acts_on_host() {
        Finding::warn(
            WHAT,
            format!("{done}; it ran during this boot"),
            "the routes it set stay until the next boot: reboot the node when convenient (K3s's requirements ask for it)",
        )
    } else {
        Finding::pass(WHAT, done)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;
    use crate::checks::Level;
    use crate::system::{CommandOutput, FakeSystem};

    fn no() -> CommandOutput {
        CommandOutput {
            success: false,
            stdout: "disabled\n".into(),
            stderr: String::new(),
        }
    }

    #[test]
    fn enabled_on_rocky_is_disabled_and_stopped() {
        let (_d, root) = root_with(ROCKY);
        write(
            &root,
            &format!("/usr/lib/systemd/system/{SERVICE}"),
            "[Unit]\n",
        );
        let mut sys = FakeSystem::new();
        // Enabled until disabled: is-enabled answers "disabled" after that.
        sys.systemctl_answers
            .insert(format!("is-enabled --quiet {TIMER}"), no());
        sys.systemctl_answers
            .insert(format!("is-active --quiet {SERVICE}"), no());
        let f = run(&root, &sys, false);
        assert_eq!(f.level, Level::Warn, "{f}");
        assert_eq!(
            sys.systemctl_calls(),
            vec![
                format!("is-enabled --quiet {SERVICE}"),
                format!("is-enabled --quiet {TIMER}")
            ]
        );
        let sys = {
            let mut s = FakeSystem::new();
            s.systemctl_answers = sys.systemctl_answers.clone();
            s
        };
        // The fake answers is-enabled yes both times: a disable that did not
        // take is a failure.
        let f = run(&root, &sys, true);
        assert_eq!(f.level, Level::Fail, "{f}");
        assert!(
            sys.systemctl_calls()
                .contains(&format!("disable --now {SERVICE}")),
            "{:?}",
            sys.systemctl_calls()
        );
    }

    #[test]
    fn absent_or_disabled_is_left_alone() {
        let (_d, root) = root_with(DEBIAN);
        let sys = FakeSystem::new();
        assert_eq!(run(&root, &sys, true).detail, "not installed");
        assert!(sys.systemctl_calls().is_empty());
        write(&root, &format!("/lib/systemd/system/{SERVICE}"), "[Unit]\n");
        let mut sys = FakeSystem::new();
        sys.systemctl_answers
            .insert(format!("is-enabled --quiet {SERVICE}"), no());
        sys.systemctl_answers
            .insert(format!("is-enabled --quiet {TIMER}"), no());
        assert_eq!(run(&root, &sys, true).detail, "installed, not enabled");
        assert_eq!(sys.systemctl_calls().len(), 2);
    }
}
