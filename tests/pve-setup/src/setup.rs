//! Setup.pm: pick the plugin, run the hooks in pct's order.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use crate::base::{strip_domain, Setup};
use crate::cmd::{self, Input};
use crate::config::{parse_host_resolv, parse_id_maps, CtConfig, Host};
use crate::ctfs::Ct;
use crate::detect::{detect_in, Distro};

impl<'a> Setup<'a> {
    // Setup.pm new: detect the OS, cache the host's resolver settings and
    // pass on the id map (for the chown of everything written).
    pub fn new(rootfs: &Path, conf: &'a CtConfig, host: &Host) -> Result<Setup<'a>, String> {
        let (map, root_uid, root_gid) = parse_id_maps(conf)?;
        let owner = (!map.is_empty()).then_some((root_uid, root_gid));
        let ct = Ct::new(rootfs, owner)?;
        let distro = detect_in(&ct)?;
        Ok(Setup {
            ct,
            conf,
            distro,
            resolv: parse_host_resolv(&host.resolv_conf),
        })
    }

    fn template_fixup(&self) -> Result<(), String> {
        match self.distro {
            Distro::Debian { .. } => Ok(()),
            Distro::Ubuntu { .. } => self.ubuntu_template_fixup(),
            Distro::CentOS { .. } => self.centos_template_fixup(),
        }
    }

    fn snakeoil_fixup(&self) -> Result<(), String> {
        match self.distro {
            Distro::Debian { .. } | Distro::Ubuntu { .. } => self.debian_snakeoil_fixup(),
            Distro::CentOS { .. } => Ok(()),
        }
    }

    fn setup_init(&self) -> Result<(), String> {
        match self.distro {
            Distro::Debian { .. } => self.debian_setup_init(),
            Distro::Ubuntu { .. } => self.ubuntu_setup_init(),
            Distro::CentOS { .. } => self.centos_setup_init(),
        }
    }

    fn setup_network(&self) -> Result<(), String> {
        match self.distro {
            Distro::Debian { .. } => self.debian_setup_network(),
            Distro::Ubuntu { .. } => self.ubuntu_setup_network(),
            Distro::CentOS { .. } => self.centos_setup_network(),
        }
    }

    fn set_hostname(&self) -> Result<(), String> {
        match self.distro {
            Distro::CentOS { .. } => self.centos_set_hostname(),
            _ => self.set_hostname_base(),
        }
    }

    // Base.pm post_create_hook, in its order.
    pub fn post_create_hook(&self) -> Result<(), String> {
        step("clear_machine_id", {
            self.clear_machine_id();
            Ok(())
        })?;
        step("snakeoil_fixup", self.snakeoil_fixup())?;
        step("template_fixup", self.template_fixup())?;
        step("randomize_crontab", self.randomize_crontab())?;
        step(
            "set_user_password",
            self.set_user_password("root", self.conf.root_password.as_deref()),
        )?;
        if let Some(keys) = self
            .conf
            .ssh_public_keys
            .as_deref()
            .filter(|k| !k.is_empty())
        {
            step(
                "set_user_authorized_ssh_keys",
                self.set_user_authorized_ssh_keys("root", keys),
            )?;
        }
        self.common_hooks()
    }

    // Base.pm pre_start_hook
    pub fn pre_start_hook(&self) -> Result<(), String> {
        // skips fsck, among other things
        step("fastboot", self.ct.set_contents("/fastboot", "", None))?;
        self.common_hooks()
    }

    fn common_hooks(&self) -> Result<(), String> {
        step("setup_init", self.setup_init())?;
        step("setup_network", self.setup_network())?;
        step("set_hostname", self.set_hostname())?;
        step("set_dns", self.set_dns())?;
        step("set_timezone", self.set_timezone())
    }

    // Setup.pm rewrite_ssh_host_keys: new rsa/ecdsa/ed25519 host keys, made
    // with ssh-keygen on the host (Base.pm ssh_host_key_types_to_generate).
    pub fn rewrite_ssh_host_keys(&self) -> Result<(), String> {
        if !self.ct.is_directory("/etc/ssh") {
            return Ok(());
        }
        let comment = format!("root@{}", strip_domain(&self.hostname()));
        let tmp = tempdir()?;
        let mut files = Vec::new();
        for (kind, basename) in [
            ("rsa", "ssh_host_rsa_key"),
            ("ecdsa", "ssh_host_ecdsa_key"),
            ("ed25519", "ssh_host_ed25519_key"),
        ] {
            let file = tmp.join(format!(".tmp{}.{kind}", std::process::id()));
            let file_s = file.display().to_string();
            cmd::run(
                &cmd::argv(&[
                    "ssh-keygen",
                    "-f",
                    &file_s,
                    "-t",
                    kind,
                    "-N",
                    "",
                    "-E",
                    "sha256",
                    "-C",
                    &comment,
                ]),
                Input::Null,
            )?;
            let read = |p: &Path| {
                std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))
            };
            let private = read(&file)?;
            let public = read(Path::new(&format!("{file_s}.pub")))?;
            files.push((format!("/etc/ssh/{basename}"), private, 0o600));
            files.push((format!("/etc/ssh/{basename}.pub"), public, 0o644));
        }
        let _ = std::fs::remove_dir_all(&tmp);
        for (path, data, mode) in files {
            self.ct.set_contents(&path, &data, Some(mode))?;
        }
        Ok(())
    }

    // Setup.pm check_systemd_nesting / Base.pm check_systemd_nesting: a
    // warning for systemd > 241 without nesting. pct fails the hook if
    // objdump is missing; this port only warns.
    pub fn check_systemd_nesting(&self) {
        let Ok(features) = self.conf.features() else {
            return;
        };
        if features.nesting {
            return;
        }
        let Ok(init) = self.get_ct_init_path() else {
            return;
        };
        if !init.ends_with("/systemd") {
            return;
        }
        match self.get_systemd_version(&init) {
            Ok(Some(v)) if v > 241 => eprintln!(
                "pve-setup: warning: Systemd {v} detected. You may need to enable nesting."
            ),
            Ok(_) => {}
            Err(e) => eprintln!("pve-setup: warning: {e}"),
        }
    }

    // Base.pm get_ct_init_path
    fn get_ct_init_path(&self) -> Result<String, String> {
        let init = "/sbin/init";
        if self.ct.is_symlink(init) {
            self.ct.readlink_recursive(init)
        } else {
            Ok(init.to_owned())
        }
    }

    // Base.pm get_systemd_version: libsystemd-shared-<N>.so in `objdump -p`.
    fn get_systemd_version(&self, init: &str) -> Result<Option<u32>, String> {
        let binary = self
            .ct
            .resolve(init, true)
            .map_err(|e| format!("Could not construct path to systemd binary {init}: {e}"))?;
        let out = cmd::run(
            &cmd::argv(&["objdump", "-p", &binary.display().to_string()]),
            Input::Null,
        )
        .map_err(|e| format!("objdump on {init} failed: {e}"))?;
        Ok(parse_systemd_shared_version(&out.stdout))
    }
}

/// The version in a `NEEDED libsystemd-shared-252.so` line of `objdump -p`.
pub(crate) fn parse_systemd_shared_version(objdump: &str) -> Option<u32> {
    let mut version = None;
    for line in objdump.lines() {
        let line = line.trim_end().trim_end_matches(':');
        let Some(i) = line.find("libsystemd-shared-") else {
            continue;
        };
        let rest = &line[i + "libsystemd-shared-".len()..];
        if !rest.ends_with(".so") {
            continue;
        }
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(v) = digits.parse() {
            version = Some(v);
        }
    }
    version
}

fn step(name: &str, r: Result<(), String>) -> Result<(), String> {
    r.map_err(|e| format!("error in setup task {name}: {e}"))
}

fn tempdir() -> Result<std::path::PathBuf, String> {
    let base = std::env::temp_dir();
    for i in 0..100u32 {
        let p = base.join(format!("pve-setup-keys.{}.{i}", std::process::id()));
        // private keys pass through here
        match std::fs::DirBuilder::new().mode(0o700).create(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("creating {}: {e}", p.display())),
        }
    }
    Err("cannot create a temporary directory for ssh host keys".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_version_from_objdump() {
        let out = "Dynamic Section:\n  NEEDED               libsystemd-shared-252.so\n  NEEDED               libc.so.6\n";
        assert_eq!(parse_systemd_shared_version(out), Some(252));
        assert_eq!(
            parse_systemd_shared_version("  NEEDED libsystemd-shared-257.6-1.so\n"),
            Some(257)
        );
        assert_eq!(parse_systemd_shared_version("NEEDED libc.so.6\n"), None);
    }
}
