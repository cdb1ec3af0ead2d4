//! What Proxmox's `pct create` and `pct start` do to a container's rootfs
//! and LXC config, re-implemented in Rust from pve-container's code, for
//! imgbuild's tests only. It is not pct: no storage, no locking, no
//! /etc/pve; only the effects on the rootfs and the LXC config.
//!
//! ```text
//! create()          = extract() + post_create_hook()      (API2/LXC.pm create_vm)
//! extract()         = Create.pm check_tar_archive + restore_tar_archive
//! post_create_hook  = Setup.pm post_create_hook (Base.pm order) + ssh host keys
//! lxc_config()      = LXC.pm update_lxc_config, adapted to this host
//! pre_start_hook()  = lxc-pve-prestart-hook -> Setup.pm pre_start_hook
//! ```
//!
//! pct runs the setup hooks chrooted into the rootfs; this crate resolves
//! every path inside the rootfs instead (see `ctfs`), so symlinks in a
//! template cannot make it write outside.
//!
//! Distributions: Debian, Ubuntu, CentOS/Rocky/AlmaLinux (the others pct
//! supports are refused by `detect`).

mod base;
mod centos;
mod cmd;
mod config;
mod create;
mod ctfs;
mod debian;
mod detect;
mod lxcconf;
mod net;
mod setup;
mod ubuntu;

use std::path::Path;

pub use config::{parse_pve_conf, pve_mac, CtConfig, Host, NetConfig};
pub use create::extract;
pub use detect::{detect, Distro};
pub use lxcconf::{render as render_lxc_config, HostFacts, LxcConfig};

use base::Setup;

/// Base.pm `post_create_hook` in its order (clear_machine_id,
/// snakeoil_fixup, template_fixup, randomize_crontab, root password, ssh
/// keys, setup_init, setup_network, set_hostname, set_dns, set_timezone),
/// then Setup.pm `rewrite_ssh_host_keys` and `check_systemd_nesting`.
pub fn post_create_hook(rootfs: &Path, conf: &CtConfig, host: &Host) -> Result<Distro, String> {
    let setup = Setup::new(rootfs, conf, host)?;
    setup.post_create_hook()?;
    setup.rewrite_ssh_host_keys()?;
    setup.check_systemd_nesting();
    Ok(setup.distro)
}

/// Base.pm `pre_start_hook` (/fastboot, setup_init, setup_network,
/// set_hostname, set_dns, set_timezone), as lxc-pve-prestart-hook runs it
/// before every start, then `check_systemd_nesting`.
pub fn pre_start_hook(rootfs: &Path, conf: &CtConfig, host: &Host) -> Result<(), String> {
    let setup = Setup::new(rootfs, conf, host)?;
    setup.pre_start_hook()?;
    setup.check_systemd_nesting();
    Ok(())
}

/// `pct create` from a template: unpack, then the post-create hook.
pub fn create(
    template: &Path,
    rootfs: &Path,
    conf: &CtConfig,
    host: &Host,
) -> Result<Distro, String> {
    extract(template, rootfs, conf)?;
    post_create_hook(rootfs, conf, host)
}

/// The LXC config pct would write for this container on this host
/// (LXC.pm `update_lxc_config`), with `lxc.rootfs.path = <rootfs>`. Files
/// the config refers to (an unprivileged container's `rules.seccomp`) are
/// written next to the rootfs, where pct keeps them
/// (/var/lib/lxc/<vmid>/).
///
/// Panics with pct's error if the config cannot be made (unknown feature,
/// missing bridge, OS not detected); `try_lxc_config` returns it instead.
pub fn lxc_config(conf: &CtConfig, rootfs: &Path) -> String {
    match try_lxc_config(conf, rootfs) {
        Ok(c) => c,
        Err(e) => panic!("lxc config for CT {}: {e}", conf.vmid),
    }
}

/// `lxc_config`, with errors returned.
pub fn try_lxc_config(conf: &CtConfig, rootfs: &Path) -> Result<String, String> {
    // pct stores the ostype it detected at create time.
    let ostype = match conf.pve_key("ostype") {
        Some(t) => t.to_owned(),
        None => detect(rootfs)?.ostype().to_owned(),
    };
    let facts = HostFacts::probe(conf, &ostype)?;
    let rendered = render_lxc_config(conf, &ostype, rootfs, &facts)?;
    for (path, data) in &rendered.files {
        std::fs::write(path, data).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(rendered.config)
}

#[cfg(test)]
mod tests;
