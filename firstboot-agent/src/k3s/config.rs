//! Rendering /etc/rancher/k3s/config.yaml, the unit and its 0600 env file.
//! Pure functions of the [`NodeConfig`] and the environment's extra args.

use std::collections::BTreeMap;

use node_spec::Role;
use serde_yaml::Value;

use crate::metadata::merge::CONTROL_PLANE_TAINT;
use crate::metadata::{NodeConfig, Topology};

pub const CONFIG_PATH: &str = "/etc/rancher/k3s/config.yaml";

/// The env file install.sh writes next to the unit (holds the token).
pub fn env_file_path(role: Role) -> String {
    format!("/etc/systemd/system/{}.env", role.unit_name())
}

pub fn unit_path(role: Role) -> String {
    format!("/etc/systemd/system/{}", role.unit_name())
}

fn push_unique(map: &mut BTreeMap<String, Value>, key: &str, item: &str) {
    let entry = map
        .entry(key.to_owned())
        .or_insert(Value::Sequence(Vec::new()));
    if let Value::String(s) = entry {
        *entry = Value::Sequence(vec![Value::String(s.clone())]);
    }
    if let Value::Sequence(items) = entry {
        if !items.iter().any(|v| v.as_str() == Some(item)) {
            items.push(Value::String(item.to_owned()));
        }
    }
}

/// config.yaml: the merged defaults/metadata keys plus what the agent
/// manages. The token is never in here (see [`render_env_file`]).
pub fn render_config(cfg: &NodeConfig, extra_args: &[(&str, &str)]) -> String {
    let mut map = cfg.extra_config.clone();
    if cfg.topology == Topology::HaFirst {
        map.insert("cluster-init".into(), Value::Bool(true));
    }
    if let Some(s) = &cfg.server {
        map.insert("server".into(), Value::String(s.url.clone()));
    }
    if let Some(f) = &cfg.token_file {
        map.insert("token-file".into(), Value::String(f.clone()));
    }
    if let Some(n) = &cfg.node_name {
        map.insert("node-name".into(), Value::String(n.clone()));
    }
    for l in &cfg.node_labels {
        push_unique(&mut map, "node-label", l);
    }
    for t in &cfg.node_taints {
        push_unique(&mut map, "node-taint", t);
    }
    if cfg.control_plane_taint && cfg.role == Role::Server {
        push_unique(&mut map, "node-taint", CONTROL_PLANE_TAINT);
    }
    for (key, arg) in extra_args {
        push_unique(&mut map, key, arg);
    }
    let body = if map.is_empty() {
        String::new()
    } else {
        serde_yaml::to_string(&map).unwrap_or_default()
    };
    let token_note = if cfg.token.is_some() {
        format!(
            "# The cluster token is in {} (mode 0600).\n",
            env_file_path(cfg.role)
        )
    } else {
        String::new()
    };
    format!(
        "# Written by firstboot-agent for a K3s {} ({}), profile {:?}:\n# image defaults merged with cloud-init metadata.\n{token_note}{body}",
        cfg.role,
        cfg.topology.as_str(),
        cfg.profile
    )
}

/// The unit's env file, as install.sh's `create_env_file` writes it:
/// `K3S_TOKEN='…'`, then the proxy variables ([`super::proxy`]), one
/// `NAME='value'` a line. Validation guarantees no quote, backslash, white
/// space or control character in any value.
pub fn render_env_file(cfg: &NodeConfig) -> String {
    let mut out = String::new();
    if let Some(t) = &cfg.token {
        out.push_str(&format!("K3S_TOKEN='{}'\n", t.expose()));
    }
    for (name, value) in &cfg.proxy.env {
        out.push_str(&format!("{name}='{value}'\n"));
    }
    out
}

/// The systemd unit K3s's install script writes for this role.
pub fn render_unit(role: Role) -> String {
    let (env_file, cmd) = match role {
        Role::Server => ("k3s.service.env", "server"),
        Role::Agent => ("k3s-agent.service.env", "agent"),
    };
    format!(
        "[Unit]
Description=Lightweight Kubernetes
Documentation=https://k3s.io
Wants=network-online.target
After=network-online.target

[Install]
WantedBy=multi-user.target

[Service]
Type=notify
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-/etc/sysconfig/%N
EnvironmentFile=-/etc/systemd/system/{env_file}
KillMode=process
Delegate=yes
User=root
# Having non-zero Limit*s causes performance problems due to accounting overhead
# in the kernel. We recommend using cgroups to do container-local accounting.
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStartPre=/bin/sh -xc '! /usr/bin/systemctl is-enabled --quiet nm-cloud-setup.service 2>/dev/null'
ExecStartPre=-/sbin/modprobe br_netfilter
ExecStartPre=-/sbin/modprobe overlay
ExecStart=/usr/local/bin/k3s \\
    {cmd} \\

"
    )
}
