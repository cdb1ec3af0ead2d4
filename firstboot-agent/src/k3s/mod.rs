//! Step 5 and 6: install the pinned K3s and install.sh's killall and
//! uninstall scripts, write its config, unit and env file (proxies
//! included), place air-gap images, start it and wait until it is ready.

pub mod binary;
pub mod config;
pub mod proxy;
pub mod scripts;

use std::path::Path;
use std::time::Duration;

use node_spec::{Role, AIRGAP_IMAGES_DIR};

use crate::metadata::NodeConfig;
use crate::rootfs::{FileError, Root};
use crate::system::System;

pub const NODE_TOKEN: &str = "/var/lib/rancher/k3s/server/node-token";
pub const KUBECONFIG: &str = "/etc/rancher/k3s/k3s.yaml";

/// Errors of the install/start steps that are not download errors.
#[derive(Debug, thiserror::Error)]
pub enum K3sError {
    #[error("air-gap archive {path}: sha256 {actual}, expected {expected}; the image is damaged, rebuild it")]
    AirgapDigest {
        path: String,
        expected: String,
        actual: String,
    },
    #[error("air-gap archive {path} is missing from the image")]
    AirgapMissing { path: String },
    #[error("`systemctl {args}` failed{}{stderr} — see `systemctl status` and `journalctl -xe`", if stderr.is_empty() { "" } else { ": " })]
    Systemctl { args: String, stderr: String },
    #[error("{unit} failed to start; see `journalctl -u {unit}` and `systemctl status {unit}`")]
    UnitFailed { unit: String },
    #[error("{unit} was not ready after {secs} s ({missing}); see `journalctl -u {unit}`")]
    NotReady {
        unit: String,
        secs: u64,
        missing: String,
    },
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    System(#[from] crate::system::SystemError),
}

/// Write a file only when its content changes, so a rerun does not touch
/// what K3s already uses. Returns whether it was written.
fn write_if_changed(root: &Root, path: &str, content: &str, mode: u32) -> Result<bool, FileError> {
    if root.read_optional(path)?.as_deref() == Some(content) {
        let real = root.path(path);
        let current = std::fs::metadata(&real).map_err(|e| FileError::new("reading", &real, e))?;
        use std::os::unix::fs::PermissionsExt;
        if current.permissions().mode() & 0o7777 == mode {
            return Ok(false);
        }
    }
    root.write_atomic(path, content.as_bytes(), mode)?;
    Ok(true)
}

/// Env file (token, 0600) first, then config.yaml (0600: extra keys may hold
/// secrets), each written atomically — K3s never sees half a config.
pub fn write_config(
    root: &Root,
    cfg: &NodeConfig,
    extra_args: &[(&str, &str)],
) -> Result<Vec<String>, FileError> {
    let mut written = Vec::new();
    let env_path = config::env_file_path(cfg.role);
    if write_if_changed(root, &env_path, &config::render_env_file(cfg), 0o600)? {
        written.push(env_path);
    }
    if write_if_changed(
        root,
        config::CONFIG_PATH,
        &config::render_config(cfg, extra_args),
        0o600,
    )? {
        written.push(config::CONFIG_PATH.to_owned());
    }
    Ok(written)
}

/// The unit file for the role.
pub fn write_unit(root: &Root, role: Role) -> Result<bool, FileError> {
    write_if_changed(
        root,
        &config::unit_path(role),
        &config::render_unit(role),
        0o644,
    )
}

/// Verify the baked air-gap archives and make sure they sit in the
/// directory K3s imports from.
pub fn place_airgap_images(root: &Root, cfg: &NodeConfig) -> Result<Vec<String>, K3sError> {
    let mut placed = Vec::new();
    for img in &cfg.airgap_images {
        let src = root.path(&img.path);
        let actual = binary::file_sha256(&src)?.ok_or_else(|| K3sError::AirgapMissing {
            path: img.path.clone(),
        })?;
        if actual != img.sha256 {
            return Err(K3sError::AirgapDigest {
                path: img.path.clone(),
                expected: img.sha256.to_string(),
                actual: actual.to_string(),
            });
        }
        let name = Path::new(&img.path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dest_abs = format!("{AIRGAP_IMAGES_DIR}/{name}");
        if Path::new(&img.path).parent() != Some(Path::new(AIRGAP_IMAGES_DIR))
            && binary::file_sha256(&root.path(&dest_abs))?.as_ref() != Some(&img.sha256)
        {
            let bytes = std::fs::read(&src).map_err(|e| FileError::new("reading", &src, e))?;
            root.write_atomic(&dest_abs, &bytes, 0o644)?;
        }
        placed.push(dest_abs);
    }
    Ok(placed)
}

fn systemctl(system: &dyn System, args: &[&str]) -> Result<String, K3sError> {
    let out = system.systemctl(args)?;
    if !out.success {
        return Err(K3sError::Systemctl {
            args: args.join(" "),
            stderr: out.stderr.trim().to_owned(),
        });
    }
    Ok(out.stdout)
}

/// daemon-reload, enable, and queue the start (`--no-block`: the agent's
/// own unit is ordered before K3s, so a blocking start would wait on us).
pub fn enable_and_start(system: &dyn System, role: Role) -> Result<(), K3sError> {
    let unit = role.unit_name();
    systemctl(system, &["daemon-reload"])?;
    systemctl(system, &["enable", unit])?;
    systemctl(system, &["start", "--no-block", unit])?;
    Ok(())
}

/// Restart a K3s an earlier run started, so it reads what changed
/// (`--no-block`, as for the start).
pub fn restart(system: &dyn System, role: Role) -> Result<(), K3sError> {
    let unit = role.unit_name();
    systemctl(system, &["daemon-reload"])?;
    systemctl(system, &["restart", "--no-block", unit])?;
    Ok(())
}

/// Restart K3s and wait for systemd to report it started (`Type=notify`:
/// K3s's READY=1), for `firstboot-agent upgrade`, which no unit ordering
/// holds up.
pub fn restart_blocking(system: &dyn System, role: Role) -> Result<(), K3sError> {
    systemctl(system, &["daemon-reload"])?;
    systemctl(system, &["restart", role.unit_name()])?;
    Ok(())
}

/// Poll until K3s is ready, it fails, or `timeout` passes. Server: the node
/// token exists and the API port accepts TCP. Agent: the unit is active.
pub fn wait_ready(
    root: &Root,
    system: &dyn System,
    role: Role,
    timeout: Duration,
) -> Result<(), K3sError> {
    let unit = role.unit_name();
    let start = system.now();
    loop {
        let state = system
            .systemctl(&["is-active", unit])?
            .stdout
            .trim()
            .to_owned();
        if state == "failed" {
            return Err(K3sError::UnitFailed {
                unit: unit.to_owned(),
            });
        }
        let mut missing = Vec::new();
        if state != "active" {
            missing.push(format!(
                "unit is {}",
                if state.is_empty() { "unknown" } else { &state }
            ));
        }
        if role == Role::Server {
            if !root.exists(NODE_TOKEN) {
                missing.push(format!("no {NODE_TOKEN}"));
            }
            let api =
                std::net::SocketAddr::from(([127, 0, 0, 1], crate::metadata::merge::K3S_API_PORT));
            if let Err(e) = system.tcp_connect(api, Duration::from_secs(2)) {
                missing.push(format!("API port: {e}"));
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let elapsed = system.now().duration_since(start);
        if elapsed >= timeout {
            return Err(K3sError::NotReady {
                unit: unit.to_owned(),
                secs: timeout.as_secs(),
                missing: missing.join(", "),
            });
        }
        tracing::debug!("waiting for {unit}: {}", missing.join(", "));
        system.sleep(Duration::from_secs(2).min(timeout - elapsed));
    }
}
