//! `k3s-standin`: a stand-in for the K3s binary, for imgbuild's tests only.
//! It is **not K3s** and runs no Kubernetes component.
//!
//! It behaves enough like a K3s release for firstboot-agent's code path to
//! be exercised unchanged: it answers `--version` in K3s's format, reads
//! `/etc/rancher/k3s/config.yaml` (plus `config.yaml.d/*.yaml`, flags and
//! `K3S_*` env) the way K3s merges them, writes the node token and the
//! kubeconfig as a K3s server does, listens on (server) or dials (agent)
//! the API port, notifies systemd (`READY=1`) and records the configuration
//! it was started with in `/var/lib/rancher/k3s/standin/effective-config.json`.
//!
//! [`mirror`] lays out and serves a release directory in GitHub's layout
//! (`<version>/k3s`, `<version>/sha256sum-amd64.txt`) over loopback HTTP,
//! with optional faults for tests; [`http`] is the loopback server it and
//! the other suites' download tests answer through.

pub mod cli;
pub mod config;
pub mod http;
pub mod log;
pub mod mirror;
pub mod node;
pub mod notify;
pub mod paths;
pub mod token;
pub mod version;

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    node_spec::Sha256Hex::from_digest(&Sha256::digest(bytes)).to_string()
}

/// `n` bytes from the kernel's random source.
pub fn random_bytes(n: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}
