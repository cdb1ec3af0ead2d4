//! Step 4: the kernel and LXC settings K3s expects — `/dev/kmsg` in LXC,
//! shared mount propagation on `/`, sysctls, `br_netfilter`/`overlay`, swap
//! off — applied now and persisted for later boots. In a container, what only
//! the host can change is reported with the host-side fix instead.
//!
//! With `apply == false` (the `check` command) nothing is changed; each item
//! reports whether it is already as K3s wants it.

use crate::checks::Finding;
use crate::env::Environment;
use crate::rootfs::{symlink_atomic, FileError, Root};
use crate::system::System;

/// Sysctls K3s and the kubelet expect.
pub const SYSCTLS: [(&str, &str); 9] = [
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
    ("net.bridge.bridge-nf-call-iptables", "1"),
    ("net.bridge.bridge-nf-call-ip6tables", "1"),
    ("fs.inotify.max_user_instances", "8192"),
    ("fs.inotify.max_user_watches", "524288"),
    ("vm.overcommit_memory", "1"),
    ("kernel.panic", "10"),
    ("kernel.panic_on_oops", "1"),
];

pub const MODULES: [&str; 2] = ["br_netfilter", "overlay"];

pub const SYSCTL_FILE: &str = "/etc/sysctl.d/90-k3s.conf";
/// The builder's sysctl file; keys it sets are left to it.
pub const BUILDER_SYSCTL_FILE: &str = "/etc/sysctl.d/90-imgbuild.conf";
pub const MODULES_FILE: &str = "/etc/modules-load.d/k3s.conf";
pub const KMSG_TMPFILES: &str = "/etc/tmpfiles.d/firstboot-agent-kmsg.conf";
pub const KMSG_TMPFILES_TEXT: &str = "# Written by firstboot-agent: LXC rebuilds /dev on every start and has no\n# /dev/kmsg, which the kubelet reads. Point it at the console.\nL /dev/kmsg - - - - /dev/console\n";
pub const RSHARED_UNIT: &str = "firstboot-agent-rshared.service";
pub const RSHARED_UNIT_TEXT: &str =
    "# Written by firstboot-agent: K3s needs shared mount propagation on /.
[Unit]
Description=Make / a shared mount for K3s
DefaultDependencies=no
After=local-fs.target
Before=k3s.service k3s-agent.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/mount --make-rshared /

[Install]
WantedBy=multi-user.target
";

/// `key = value` pairs of a sysctl.d file.
pub fn parse_sysctl_conf(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
                return None;
            }
            let (k, v) = l.split_once('=')?;
            Some((
                k.trim().trim_start_matches('-').replace('/', "."),
                v.trim().to_owned(),
            ))
        })
        .collect()
}

/// Active swap devices from `/proc/swaps`.
pub fn parse_swaps(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Whether `/` is a shared mount, from `/proc/self/mountinfo`.
pub fn root_is_shared(mountinfo: &str) -> Option<bool> {
    mountinfo.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 6 && f[4] == "/").then(|| {
            f[6..]
                .iter()
                .take_while(|x| **x != "-")
                .any(|x| x.starts_with("shared:"))
        })
    })
}

/// Whether a module is loaded or built in (`/proc/modules`, `/sys/module`).
pub fn module_present(proc_modules: &str, sys_module_exists: bool, name: &str) -> bool {
    sys_module_exists
        || proc_modules
            .lines()
            .any(|l| l.split_whitespace().next() == Some(name))
}

/// Swap lines of /etc/fstab commented out; `None` if there are none.
pub fn fstab_without_swap(fstab: &str) -> Option<String> {
    let mut changed = false;
    let out: Vec<String> = fstab
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if !l.trim_start().starts_with('#') && f.len() >= 3 && f[2] == "swap" {
                changed = true;
                format!("# disabled by firstboot-agent (K3s): {l}")
            } else {
                l.to_owned()
            }
        })
        .collect();
    changed.then(|| out.join("\n") + "\n")
}

/// The sysctl.d file the agent writes, leaving keys the builder's file sets.
pub fn render_sysctl_conf(builder_keys: &[String]) -> String {
    let mut out =
        String::from("# Written by firstboot-agent: settings K3s and the kubelet expect.\n");
    for (k, v) in SYSCTLS {
        if builder_keys.iter().any(|b| b == k) {
            out.push_str(&format!("# {k} is set in {BUILDER_SYSCTL_FILE}\n"));
        } else {
            out.push_str(&format!("{k} = {v}\n"));
        }
    }
    out
}

/// `done` when the system acts, `would` when it only records (a dry run).
fn said(system: &dyn System, done: String, would: String) -> String {
    if system.acts_on_host() {
        done
    } else {
        would
    }
}

fn read(root: &Root, p: &str) -> Result<String, FileError> {
    root.read_optional(p).map(Option::unwrap_or_default)
}

/// Apply (or with `apply == false`, only inspect) every tweak.
pub fn run(
    root: &Root,
    system: &dyn System,
    env: &Environment,
    apply: bool,
) -> Result<Vec<Finding>, FileError> {
    let mut out = Vec::new();
    kmsg(root, env, apply, &mut out)?;
    rshared(root, system, apply, &mut out)?;
    modules(root, system, env, apply, &mut out)?;
    sysctls(root, system, env, apply, &mut out)?;
    swap(root, system, env, apply, &mut out)?;
    Ok(out)
}

fn kmsg(
    root: &Root,
    env: &Environment,
    apply: bool,
    out: &mut Vec<Finding>,
) -> Result<(), FileError> {
    let exists = root.path("/dev/kmsg").symlink_metadata().is_ok();
    if !env.in_lxc() {
        out.push(if exists {
            Finding::pass("/dev/kmsg", "present")
        } else {
            Finding::warn(
                "/dev/kmsg",
                "missing",
                "the kubelet reads /dev/kmsg; check the container runtime's /dev",
            )
        });
        return Ok(());
    }
    let persisted = read(root, KMSG_TMPFILES)? == KMSG_TMPFILES_TEXT;
    if !apply {
        out.push(if exists && persisted {
            Finding::pass("/dev/kmsg", "present, recreated each boot by tmpfiles.d")
        } else {
            Finding::warn(
                "/dev/kmsg",
                "missing or not persisted in LXC",
                "`run` links it to /dev/console and adds a tmpfiles.d rule",
            )
        });
        return Ok(());
    }
    if !persisted {
        root.write_atomic(KMSG_TMPFILES, KMSG_TMPFILES_TEXT.as_bytes(), 0o644)?;
    }
    if !exists {
        root.create_dir_all("/dev")?;
        symlink_atomic(
            std::path::Path::new("/dev/console"),
            &root.path("/dev/kmsg"),
        )?;
    }
    out.push(Finding::pass(
        "/dev/kmsg",
        format!(
            "{}; {KMSG_TMPFILES} recreates it each boot",
            if exists {
                "present"
            } else {
                "linked to /dev/console"
            }
        ),
    ));
    Ok(())
}

fn enable_unit_link(root: &Root, unit: &str) -> Result<(), FileError> {
    let dir = root.create_dir_all("/etc/systemd/system/multi-user.target.wants")?;
    symlink_atomic(
        &std::path::Path::new("/etc/systemd/system").join(unit),
        &dir.join(unit),
    )
}

fn rshared(
    root: &Root,
    system: &dyn System,
    apply: bool,
    out: &mut Vec<Finding>,
) -> Result<(), FileError> {
    let shared = root_is_shared(&read(root, "/proc/self/mountinfo")?);
    let unit_path = format!("/etc/systemd/system/{RSHARED_UNIT}");
    if !apply {
        out.push(match shared {
            Some(true) => Finding::pass("mount propagation", "/ is shared"),
            Some(false) => Finding::warn(
                "mount propagation",
                "/ is private",
                "`run` makes it rshared now and at every boot",
            ),
            None => Finding::warn(
                "mount propagation",
                "/ not found in /proc/self/mountinfo",
                "check that /proc is mounted",
            ),
        });
        return Ok(());
    }
    if read(root, &unit_path)? != RSHARED_UNIT_TEXT {
        root.write_atomic(&unit_path, RSHARED_UNIT_TEXT.as_bytes(), 0o644)?;
        enable_unit_link(root, RSHARED_UNIT)?;
    }
    if shared == Some(true) {
        out.push(Finding::pass(
            "mount propagation",
            format!("/ is shared; {RSHARED_UNIT} keeps it so"),
        ));
        return Ok(());
    }
    match system.make_root_rshared() {
        Ok(()) => out.push(Finding::pass(
            "mount propagation",
            said(
                system,
                format!("made / rshared; {RSHARED_UNIT} repeats it each boot"),
                format!("would make / rshared now (dry run); {RSHARED_UNIT} does it each boot"),
            ),
        )),
        Err(e) => out.push(Finding::warn(
            "mount propagation",
            format!("could not make / rshared: {e}"),
            "in LXC allow it on the host (Proxmox: features nesting=1); K3s pods with mount propagation will fail otherwise",
        )),
    }
    Ok(())
}

fn modules(
    root: &Root,
    system: &dyn System,
    env: &Environment,
    apply: bool,
    out: &mut Vec<Finding>,
) -> Result<(), FileError> {
    let proc_modules = read(root, "/proc/modules")?;
    let filesystems = read(root, "/proc/filesystems")?;
    let mut wanted_file = String::from("# Written by firstboot-agent: modules K3s needs.\n");
    for m in MODULES {
        wanted_file.push_str(m);
        wanted_file.push('\n');
    }
    if apply && !env.in_container() && read(root, MODULES_FILE)? != wanted_file {
        root.write_atomic(MODULES_FILE, wanted_file.as_bytes(), 0o644)?;
    }
    for m in MODULES {
        let present = module_present(&proc_modules, root.path("/sys/module").join(m).exists(), m)
            || (m == "overlay"
                && filesystems
                    .lines()
                    .any(|l| l.split_whitespace().last() == Some("overlay")));
        let what = format!("module {m}");
        if present {
            out.push(Finding::pass(what, "loaded"));
        } else if env.in_container() {
            out.push(Finding::warn(
                what,
                "not loaded, and a container cannot load it",
                format!("on the host: modprobe {m} && echo {m} >> /etc/modules-load.d/k3s.conf"),
            ));
        } else if !apply {
            out.push(Finding::warn(
                what,
                "not loaded",
                "`run` loads it and adds it to /etc/modules-load.d/k3s.conf",
            ));
        } else {
            match system.modprobe(m) {
                Ok(()) => out.push(Finding::pass(
                    what,
                    said(
                        system,
                        format!("loaded now; persisted in {MODULES_FILE}"),
                        format!("would be loaded now (dry run); listed in {MODULES_FILE}"),
                    ),
                )),
                Err(e) => out.push(Finding::warn(what, format!("could not load: {e}"), "install the kernel modules package for the running kernel (e.g. linux-modules-extra)")),
            }
        }
    }
    Ok(())
}

fn sysctls(
    root: &Root,
    system: &dyn System,
    env: &Environment,
    apply: bool,
    out: &mut Vec<Finding>,
) -> Result<(), FileError> {
    let builder: Vec<(String, String)> = parse_sysctl_conf(&read(root, BUILDER_SYSCTL_FILE)?);
    let builder_keys: Vec<String> = builder.iter().map(|(k, _)| k.clone()).collect();
    let conf = render_sysctl_conf(&builder_keys);
    if apply && read(root, SYSCTL_FILE)? != conf {
        root.write_atomic(SYSCTL_FILE, conf.as_bytes(), 0o644)?;
    }
    let mut readonly = Vec::new();
    let mut changed = Vec::new();
    let mut pending = Vec::new();
    for (key, default_value) in SYSCTLS {
        let wanted = builder
            .iter()
            .find(|(k, _)| k == key)
            .map_or(default_value, |(_, v)| v.as_str());
        let proc_path = format!("/proc/sys/{}", key.replace('.', "/"));
        let current = root.read_optional(&proc_path)?;
        let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        if current.as_deref().map(norm).as_deref() == Some(&norm(wanted)) {
            continue;
        }
        if !apply {
            pending.push(format!("{key}={wanted}"));
            continue;
        }
        match system.write_sysctl(key, wanted) {
            Ok(()) => changed.push(format!("{key}={wanted}")),
            Err(e) => {
                tracing::debug!("sysctl {key}: {e}");
                readonly.push(format!("{key}={wanted}"));
            }
        }
    }
    if !pending.is_empty() {
        out.push(Finding::warn(
            "sysctl",
            format!("not yet set: {}", pending.join(" ")),
            format!("`run` sets them and writes {SYSCTL_FILE}"),
        ));
    } else if readonly.is_empty() {
        out.push(Finding::pass(
            "sysctl",
            if changed.is_empty() {
                "all as K3s expects".to_owned()
            } else {
                said(
                    system,
                    format!("set {}", changed.join(" ")),
                    format!("would set {} (dry run)", changed.join(" ")),
                )
            },
        ));
    }
    if !readonly.is_empty() {
        let advice = if env.in_container() {
            format!("these are read-only in a container; set them on the host: sysctl -w {} (and persist in the host's /etc/sysctl.d/)", readonly.join(" "))
        } else {
            "load br_netfilter for net.bridge.*; check the kernel for the others".to_owned()
        };
        out.push(Finding::warn(
            "sysctl",
            format!("could not set {}", readonly.join(" ")),
            advice,
        ));
    }
    Ok(())
}

fn swap(
    root: &Root,
    system: &dyn System,
    env: &Environment,
    apply: bool,
    out: &mut Vec<Finding>,
) -> Result<(), FileError> {
    let active = parse_swaps(&read(root, "/proc/swaps")?);
    if apply {
        if let Some(fstab) = fstab_without_swap(&read(root, "/etc/fstab")?) {
            root.write_atomic("/etc/fstab", fstab.as_bytes(), 0o644)?;
        }
    }
    if active.is_empty() {
        out.push(Finding::pass("swap", "off"));
        return Ok(());
    }
    if !apply {
        out.push(Finding::warn(
            "swap",
            format!("on: {}", active.join(", ")),
            "`run` turns it off and comments it out of /etc/fstab",
        ));
        return Ok(());
    }
    match system.swapoff_all() {
        Ok(()) => out.push(Finding::pass(
            "swap",
            said(
                system,
                format!("turned off {}", active.join(", ")),
                format!("would turn off {} (dry run)", active.join(", ")),
            ),
        )),
        Err(e) if env.in_container() => out.push(Finding::warn(
            "swap",
            format!("container sees swap and cannot turn it off: {e}"),
            "limit the container's swap on the host (Proxmox: pct set ID --swap 0)",
        )),
        Err(e) => out.push(Finding::warn(
            "swap",
            format!("could not turn swap off: {e}"),
            "run `swapoff -a` and remove swap from /etc/fstab",
        )),
    }
    Ok(())
}

/// Extra kubelet / kube-proxy args this environment needs.
pub fn extra_k3s_args(env: &Environment) -> Vec<(&'static str, &'static str)> {
    let mut args = Vec::new();
    if env.in_container() && env.unprivileged {
        args.push(("kubelet-arg", "feature-gates=KubeletInUserNamespace=true"));
    }
    if env.in_container() {
        // conntrack sysctls are read-only in a container; 0 makes kube-proxy
        // leave nf_conntrack_max alone.
        args.push(("kube-proxy-arg", "conntrack-max-per-core=0"));
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::Level;
    use crate::env::{CgroupVersion, Virtualization};
    use crate::system::{Call, FakeSystem};

    pub(crate) fn lxc_env(unprivileged: bool) -> Environment {
        Environment {
            virtualization: Virtualization::Container,
            container: Some("lxc".into()),
            unprivileged,
            cgroup: CgroupVersion::V2,
            memory_controller: true,
            memory_bytes: Some(4 << 30),
            cpus: Some(2),
            disk_free_bytes: Some(20 << 30),
        }
    }

    fn vm_env() -> Environment {
        Environment {
            virtualization: Virtualization::Vm,
            container: None,
            unprivileged: false,
            ..lxc_env(false)
        }
    }

    fn write(root: &Root, p: &str, t: &str) {
        let path = root.path(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, t).unwrap();
    }

    #[test]
    fn parsers() {
        assert_eq!(
            parse_swaps("Filename\tType\tSize\tUsed\tPriority\n/swap.img file 1 0 -2\n"),
            vec!["/swap.img"]
        );
        assert!(parse_swaps("Filename\tType\tSize\tUsed\tPriority\n").is_empty());
        let mi = "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n23 22 0:5 / /dev rw - devtmpfs udev rw\n";
        assert_eq!(root_is_shared(mi), Some(true));
        assert_eq!(root_is_shared(&mi.replace("shared:1 ", "")), Some(false));
        assert_eq!(root_is_shared(""), None);
        assert!(module_present(
            "overlay 151552 0 - Live 0x0\n",
            false,
            "overlay"
        ));
        assert!(!module_present(
            "overlayfs 1 0 - Live 0x0\n",
            false,
            "overlay"
        ));
        assert_eq!(
            parse_sysctl_conf("# c\nvm.overcommit_memory=1\n-net/ipv4/ip_forward = 0\n"),
            vec![
                ("vm.overcommit_memory".into(), "1".into()),
                ("net.ipv4.ip_forward".into(), "0".into())
            ]
        );
        let f =
            fstab_without_swap("UUID=1 / ext4 defaults 0 1\n/swap.img none swap sw 0 0\n").unwrap();
        assert!(
            f.contains("# disabled by firstboot-agent (K3s): /swap.img"),
            "{f}"
        );
        assert!(fstab_without_swap("UUID=1 / ext4 defaults 0 1\n").is_none());
    }

    #[test]
    fn lxc_unprivileged_reports_host_side_fixes() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        write(&root, "/proc/sys/net/ipv4/ip_forward", "0\n");
        write(&root, "/proc/sys/vm/overcommit_memory", "1\n");
        write(
            &root,
            "/proc/swaps",
            "Filename Type Size Used Priority\n/dev/sda2 partition 1 0 -2\n",
        );
        write(&root, BUILDER_SYSCTL_FILE, "kernel.panic = 30\n");
        let mut sys = FakeSystem::new();
        sys.readonly_sysctls.insert("kernel.panic".into());
        sys.readonly_sysctls
            .insert("net.bridge.bridge-nf-call-iptables".into());
        sys.fail_swapoff = true;
        let env = lxc_env(true);
        let f = run(&root, &sys, &env, true).unwrap();
        let text = f
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        // kmsg: linked now, and persisted.
        assert_eq!(
            std::fs::read_link(root.path("/dev/kmsg")).unwrap(),
            std::path::Path::new("/dev/console")
        );
        assert_eq!(
            std::fs::read_to_string(root.path(KMSG_TMPFILES)).unwrap(),
            KMSG_TMPFILES_TEXT
        );
        assert!(root
            .path("/etc/systemd/system/multi-user.target.wants")
            .join(RSHARED_UNIT)
            .is_symlink());
        // Modules are reported for the host, never modprobed in a container.
        assert!(
            text.contains("on the host: modprobe br_netfilter"),
            "{text}"
        );
        assert!(!sys.calls().iter().any(|c| matches!(c, Call::Modprobe(_))));
        // The builder's kernel.panic=30 wins and is what gets applied.
        let conf = std::fs::read_to_string(root.path(SYSCTL_FILE)).unwrap();
        assert!(
            conf.contains("# kernel.panic is set in") && !conf.contains("kernel.panic = 10"),
            "{conf}"
        );
        assert!(sys
            .calls()
            .contains(&Call::WriteSysctl("kernel.panic".into(), "30".into())));
        assert!(!sys.calls().contains(&Call::WriteSysctl(
            "vm.overcommit_memory".into(),
            "1".into()
        )));
        assert!(
            text.contains("read-only in a container; set them on the host: sysctl -w")
                && text.contains("kernel.panic=30"),
            "{text}"
        );
        assert!(text.contains("pct set ID --swap 0"), "{text}");
        assert_eq!(extra_k3s_args(&env).len(), 2);
    }

    #[test]
    fn vm_loads_modules_and_turns_swap_off() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        write(
            &root,
            "/proc/swaps",
            "Filename Type Size Used Priority\n/swap.img file 1 0 -2\n",
        );
        write(&root, "/etc/fstab", "/swap.img none swap sw 0 0\n");
        write(&root, "/proc/modules", "overlay 1 0 - Live 0x0\n");
        let sys = FakeSystem::new();
        let f = run(&root, &sys, &vm_env(), true).unwrap();
        assert!(f.iter().all(|f| f.level != Level::Fail));
        let calls = sys.calls();
        assert!(calls.contains(&Call::Modprobe("br_netfilter".into())));
        assert!(!calls.contains(&Call::Modprobe("overlay".into())));
        assert!(calls.contains(&Call::SwapoffAll) && calls.contains(&Call::MakeRootRshared));
        assert!(std::fs::read_to_string(root.path("/etc/fstab"))
            .unwrap()
            .starts_with("# disabled"));
        assert!(std::fs::read_to_string(root.path(MODULES_FILE))
            .unwrap()
            .contains("br_netfilter"));
        assert!(
            !root.path("/dev/kmsg").exists(),
            "kmsg is only linked in LXC"
        );
        assert!(extra_k3s_args(&vm_env()).is_empty());
    }

    #[test]
    fn check_mode_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        write(&root, "/proc/sys/net/ipv4/ip_forward", "0\n");
        write(
            &root,
            "/proc/swaps",
            "Filename Type Size Used Priority\n/swap.img file 1 0 -2\n",
        );
        let sys = FakeSystem::new();
        let f = run(&root, &sys, &lxc_env(false), false).unwrap();
        assert!(sys.calls().is_empty(), "{:?}", sys.calls());
        assert!(!root.path("/etc").exists() && !root.path("/dev").exists());
        assert!(f
            .iter()
            .any(|f| f.what == "sysctl" && f.level == Level::Warn));
    }
}
