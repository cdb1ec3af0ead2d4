//! firstboot-agent: provisions an imgbuild K3s node on its first boot.
//!
//! The pipeline ([`run::run`]) reads NoCloud metadata ([`metadata`]), sets
//! the host name ([`hostname`]), installs the seed's SSH keys where
//! cloud-init is absent ([`ssh`]), looks at the environment ([`env`]),
//! checks network and DNS ([`checks`]), applies the kernel/LXC tweaks
//! ([`tweaks`]), installs and starts K3s ([`k3s`]) and records every step
//! ([`state`]). Files are reached through `--root`
//! ([`rootfs`]); actions on the live system go through [`system::System`].

pub mod checks;
pub mod cli;
pub mod distro;
pub mod env;
pub mod hostname;
pub mod k3s;
pub mod leftovers;
pub mod message;
pub mod metadata;
pub mod rootfs;
pub mod run;
pub mod ssh;
pub mod state;
pub mod system;
pub mod tweaks;
pub mod upgrade;
