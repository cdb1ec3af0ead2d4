//! Compute the layer for a plan. Pure: every host file it references was
//! hashed beforehand and arrives in [`LayerInputs`].

use std::path::PathBuf;

use node_spec::{
    AirgapImage, BakedBinary, Sha256Hex, AGENT_BINARY_PATH, AGENT_UNIT_NAME, AIRGAP_IMAGES_DIR,
    BAKED_K3S_PATH, DEFAULTS_PATH,
};

use super::{Content, Layer, Meta, Op};
use crate::plan::schema::SourceSpec;
use crate::plan::{OutputKind, Plan};

/// The agent's systemd unit, shipped with the agent crate.
pub const AGENT_UNIT: &str = include_str!("../../../firstboot-agent/dist/firstboot-agent.service");

/// The agent's manual, which its unit's `Documentation=` points at.
pub const AGENT_DOC: &str = include_str!("../../../docs/agent.md");

/// Where [`AGENT_DOC`] goes in the image.
pub const AGENT_DOC_PATH: &str = "/usr/share/doc/imgbuild/agent.md";

/// Marker describing what built the image, for `cat` on a running node.
pub const BUILD_INFO_PATH: &str = "/etc/imgbuild-release";

/// Per-machine state a base may carry that must not be cloned onto every
/// node: host keys, cloud-init instance data, K3s node identity, logs, seeds
/// (a seed left in the base would give every node its metadata — and maybe
/// its token).
pub const PER_MACHINE_STATE: &[&str] = &[
    "/etc/ssh/ssh_host_*",
    "/var/lib/cloud/seed/*/*",
    "/var/lib/cloud/instance",
    "/var/lib/cloud/instances/*",
    "/var/lib/cloud/data/*",
    "/var/lib/cloud/sem/*",
    "/etc/rancher/node",
    "/var/lib/rancher/k3s/server",
    "/var/lib/firstboot-agent",
    "/var/lib/systemd/random-seed",
    "/var/lib/systemd/credential.secret",
    "/var/lib/dhcp/*.leases",
    "/var/log/*.log",
    "/var/log/*.gz",
    "/var/log/journal/*",
    "/var/log/apt/*",
    "/root/.bash_history",
];

const SSH_KEYGEN_UNIT: &str = "imgbuild-ssh-keygen.service";

/// The NoCloud seed directory cloud-init and the agent read first.
pub const NOCLOUD_SEED_DIR: &str = "/var/lib/cloud/seed/nocloud";

/// Mount units skipped inside containers (see [`compute_layer`]).
pub const CONTAINER_SKIPPED_MOUNTS: &[&str] = &[
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-kernel-config.mount",
];

/// systemd's interactive first-boot wizard, masked in every image.
pub const FIRSTBOOT_WIZARD_UNIT: &str = "systemd-firstboot.service";

const SSH_KEYGEN_UNIT_TEXT: &str = "\
[Unit]
Description=Generate SSH host keys removed from the image at build time
ConditionFileIsExecutable=/usr/bin/ssh-keygen
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key
Before=ssh.service sshd.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
";

/// A host file whose size and digest were taken when inputs were fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBlob {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: Sha256Hex,
}

impl HostBlob {
    fn content(&self) -> Content {
        Content::HostFile {
            path: self.path.clone(),
            size: self.size,
            sha256: self.sha256.to_string(),
        }
    }
}

/// Host files the layer copies in, resolved by the source step.
#[derive(Debug, Clone, Default)]
pub struct LayerInputs {
    /// The firstboot-agent binary; `None` only when the profile says `bake.agent: false`.
    pub agent: Option<HostBlob>,
    pub k3s_binary: Option<HostBlob>,
    /// `(file name, blob)` for each air-gap archive.
    pub airgap_images: Vec<(String, HostBlob)>,
    /// For each `files[i]` with a `source`, its blob (same index as the profile's list).
    pub file_sources: Vec<Option<HostBlob>>,
    /// The K3s digest the build resolved ([`crate::k3s_digest`]); when
    /// `None` the profile's `k3s.sha256` is baked as it is.
    pub k3s_digest: Option<crate::k3s_digest::K3sDigest>,
}

/// The layer for `plan`'s `target` output, in application order: removals
/// first, then writes. Targets differ only where their bases do (see
/// `/etc/resolv.conf` below).
pub fn compute_layer(plan: &Plan, inputs: &LayerInputs, target: OutputKind) -> Layer {
    let mtime = plan.source_date_epoch;
    let meta = |mode| Meta {
        mode,
        uid: 0,
        gid: 0,
        mtime,
    };
    let mut ops: Vec<Op> = PER_MACHINE_STATE
        .iter()
        .map(|p| Op::Remove {
            pattern: (*p).to_owned(),
        })
        .collect();

    // Empty, not absent: systemd then generates a fresh id on first boot.
    ops.push(Op::WriteFile {
        path: "/etc/machine-id".into(),
        meta: meta(0o444),
        content: Content::Inline(Vec::new()),
    });

    // `pct create` deletes the empty machine-id (pve-container
    // src/PVE/LXC/Setup/Base.pm, clear_machine_id), so a container's first
    // start is a systemd first boot, where systemd-firstboot asks on the
    // console for whatever is unset (locale, keymap, timezone, root password)
    // and the boot waits for a key press. A node is configured by its
    // metadata and never interactively, so the wizard is masked: whichever
    // prompts a distro's systemd has, none can block a boot. The machine-id
    // itself is still generated per container by PID 1.
    ops.push(Op::Symlink {
        path: format!("/etc/systemd/system/{FIRSTBOOT_WIZARD_UNIT}"),
        target: "/dev/null".into(),
        meta: meta(0o777),
    });

    // Kernel debug/trace/config filesystems cannot be mounted from a user
    // namespace: in an unprivileged container (pct's default) their static
    // units fail and the system is `degraded`. pct's preset cannot disable
    // static units (Setup/Base.pm setup_systemd_preset), so they are skipped
    // in containers here; VMs mount them as before.
    for unit in CONTAINER_SKIPPED_MOUNTS {
        ops.push(Op::WriteFile {
            path: format!("/etc/systemd/system/{unit}.d/imgbuild-container.conf"),
            meta: meta(0o644),
            content: Content::Inline(
                b"# Written by imgbuild: nothing in a container mounts this; an unprivileged one cannot.
                  [Unit]
ConditionVirtualization=!container
"
                    .to_vec(),
            ),
        });
    }

    // Host keys were removed above; regenerate them on first boot where
    // nothing else does (Proxmox does on `pct create`, cloud-init on VMs,
    // plain lxc-start and Debian's openssh-server do not).
    ops.push(Op::WriteFile {
        path: format!("/etc/systemd/system/{SSH_KEYGEN_UNIT}"),
        meta: meta(0o644),
        content: Content::Inline(SSH_KEYGEN_UNIT_TEXT.as_bytes().to_vec()),
    });
    ops.push(Op::Symlink {
        path: format!("/etc/systemd/system/multi-user.target.wants/{SSH_KEYGEN_UNIT}"),
        target: format!("/etc/systemd/system/{SSH_KEYGEN_UNIT}"),
        meta: meta(0o777),
    });

    // A bootstrap copies the build host's name and resolvers into the rootfs.
    // Proxmox and cloud-init rewrite both, but a node must never start life
    // with the build host's identity; the agent sets the name from metadata.
    ops.push(Op::WriteFile {
        path: "/etc/hostname".into(),
        meta: meta(0o644),
        content: Content::Inline(b"localhost\n".to_vec()),
    });
    // Only a bootstrapped rootfs carries the host's resolv.conf; a vendor
    // base may have a symlink here (systemd-resolved) that must stay.
    if let Some(SourceSpec::Bootstrap(b)) = plan.recipe.source(target) {
        let resolved = b.packages.iter().any(|p| p == "systemd-resolved");
        ops.push(if resolved {
            // systemd-resolved's own link, which a bootstrap may have replaced
            // with the build host's file.
            Op::Symlink {
                path: "/etc/resolv.conf".into(),
                target: "../run/systemd/resolve/stub-resolv.conf".into(),
                meta: meta(0o777),
            }
        } else {
            Op::WriteFile {
                path: "/etc/resolv.conf".into(),
                meta: meta(0o644),
                content: Content::Inline(
                    b"# Written at build time; replaced by DHCP, cloud-init or Proxmox at boot.\n"
                        .to_vec(),
                ),
            }
        });
    }

    // Where a NoCloud seed goes. Shipped empty, so on a Proxmox host
    // `pct mount` + `install -o 100000 -g 100000 -m 0600 user-data meta-data
    // …/var/lib/cloud/seed/nocloud/` needs no directories of its own, whose
    // owner an unprivileged container would not map.
    ops.push(Op::Mkdir {
        path: NOCLOUD_SEED_DIR.into(),
        meta: meta(0o755),
    });

    let mut defaults = plan.baked_defaults();
    if let Some(d) = &inputs.k3s_digest {
        defaults.k3s.sha256 = d.sha256.clone();
    }

    if let Some(agent) = &inputs.agent {
        ops.push(Op::WriteFile {
            path: AGENT_BINARY_PATH.into(),
            meta: meta(0o755),
            content: agent.content(),
        });
        let unit_path = format!("/etc/systemd/system/{AGENT_UNIT_NAME}");
        ops.push(Op::WriteFile {
            path: unit_path.clone(),
            meta: meta(0o644),
            content: Content::Inline(AGENT_UNIT.as_bytes().to_vec()),
        });
        ops.push(Op::Symlink {
            path: format!("/etc/systemd/system/multi-user.target.wants/{AGENT_UNIT_NAME}"),
            target: unit_path,
            meta: meta(0o777),
        });
        ops.push(Op::WriteFile {
            path: AGENT_DOC_PATH.into(),
            meta: meta(0o644),
            content: Content::Inline(AGENT_DOC.as_bytes().to_vec()),
        });
    }

    if let Some(k3s) = &inputs.k3s_binary {
        ops.push(Op::WriteFile {
            path: BAKED_K3S_PATH.into(),
            meta: meta(0o755),
            content: k3s.content(),
        });
        defaults.k3s.binary = Some(BakedBinary {
            path: BAKED_K3S_PATH.into(),
            sha256: k3s.sha256.clone(),
        });
    }

    for (name, blob) in &inputs.airgap_images {
        let path = format!("{AIRGAP_IMAGES_DIR}/{name}");
        ops.push(Op::WriteFile {
            path: path.clone(),
            meta: meta(0o644),
            content: blob.content(),
        });
        defaults.k3s.airgap_images.push(AirgapImage {
            path,
            sha256: blob.sha256.clone(),
        });
    }

    ops.push(Op::WriteFile {
        path: DEFAULTS_PATH.into(),
        meta: meta(0o644),
        content: Content::Inline(defaults.to_yaml().into_bytes()),
    });

    if !plan.profile.sysctls.is_empty() {
        let mut text = String::from("# Written by imgbuild from the profile's sysctls.\n");
        for (k, v) in &plan.profile.sysctls {
            text.push_str(&format!("{k} = {v}\n"));
        }
        ops.push(Op::WriteFile {
            path: "/etc/sysctl.d/90-imgbuild.conf".into(),
            meta: meta(0o644),
            content: Content::Inline(text.into_bytes()),
        });
    }

    if !plan.profile.modules.is_empty() {
        let mut text = String::from("# Written by imgbuild from the profile's modules.\n");
        for m in &plan.profile.modules {
            text.push_str(m);
            text.push('\n');
        }
        ops.push(Op::WriteFile {
            path: "/etc/modules-load.d/imgbuild.conf".into(),
            meta: meta(0o644),
            content: Content::Inline(text.into_bytes()),
        });
    }

    for (i, f) in plan.profile.files.iter().enumerate() {
        let content = match (
            &f.content,
            inputs.file_sources.get(i).and_then(|b| b.as_ref()),
        ) {
            (Some(text), _) => Content::Inline(text.as_bytes().to_vec()),
            (None, Some(blob)) => blob.content(),
            // Validation guarantees content or source, and the fetch step
            // resolves every source; an unresolved one is skipped loudly.
            (None, None) => {
                tracing::warn!(path = %f.path, "file source was not resolved; skipped");
                continue;
            }
        };
        let mode = crate::plan::parse_mode(&f.mode).unwrap_or(0o644);
        ops.push(Op::WriteFile {
            path: f.path.clone(),
            meta: Meta {
                mode,
                uid: f.uid,
                gid: f.gid,
                mtime,
            },
            content,
        });
    }

    ops.push(Op::WriteFile {
        path: BUILD_INFO_PATH.into(),
        meta: meta(0o644),
        content: Content::Inline(build_info(plan).into_bytes()),
    });

    Layer { ops }
}

fn build_info(plan: &Plan) -> String {
    format!(
        "IMGBUILD_VERSION={}\nIMGBUILD_PROFILE={}\nIMGBUILD_RECIPE={}\nK3S_VERSION={}\nK3S_ROLE={}\nSOURCE_DATE_EPOCH={}\n",
        env!("CARGO_PKG_VERSION"),
        plan.profile.name,
        plan.recipe.name,
        plan.profile.k3s.version,
        plan.profile.k3s.role,
        plan.source_date_epoch,
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::plan::{load, Overrides};

    fn plan(profile: &str) -> Plan {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut p = load(&root.join("profiles").join(profile), &Overrides::default()).unwrap();
        p.source_date_epoch = 1_700_000_000;
        p
    }

    fn blob(name: &str) -> HostBlob {
        HostBlob {
            path: format!("/host/{name}").into(),
            size: 42,
            sha256: "ab".repeat(32).parse().unwrap(),
        }
    }

    fn inline(layer: &Layer, path: &str) -> String {
        layer
            .ops
            .iter()
            .find_map(|op| match op {
                Op::WriteFile {
                    path: p,
                    content: Content::Inline(b),
                    ..
                } if p == path => Some(String::from_utf8(b.clone()).unwrap()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{path} not written"))
    }

    #[test]
    fn worker_layer_has_agent_unit_defaults_and_removals() {
        let inputs = LayerInputs {
            agent: Some(blob("firstboot-agent")),
            ..LayerInputs::default()
        };
        let layer = compute_layer(&plan("worker.yaml"), &inputs, OutputKind::Lxc);
        let written: Vec<&str> = layer.written_paths().collect();
        for p in [
            AGENT_BINARY_PATH,
            "/etc/systemd/system/firstboot-agent.service",
            "/etc/systemd/system/multi-user.target.wants/firstboot-agent.service",
            DEFAULTS_PATH,
            "/etc/machine-id",
            "/etc/sysctl.d/90-imgbuild.conf",
            "/etc/modules-load.d/imgbuild.conf",
            BUILD_INFO_PATH,
            AGENT_DOC_PATH,
        ] {
            assert!(written.contains(&p), "{p} missing from {written:?}");
        }
        assert!(layer.ops.iter().any(|op| matches!(op,
            Op::Mkdir { path, meta } if path == NOCLOUD_SEED_DIR && meta.mode == 0o755)));
        assert!(inline(
            &layer,
            "/etc/systemd/system/sys-kernel-debug.mount.d/imgbuild-container.conf"
        )
        .contains("\nConditionVirtualization=!container\n"));
        // The first-boot wizard cannot block a pct-created container's boot.
        assert!(layer.ops.iter().any(|op| matches!(op,
            Op::Symlink { path, target, .. }
                if path == "/etc/systemd/system/systemd-firstboot.service" && target == "/dev/null")));
        assert!(layer.is_removed("/etc/ssh/ssh_host_ed25519_key"));
        assert!(layer.is_removed("/var/lib/cloud/instances/i-1/sem/x"));
        assert!(layer.is_removed("/etc/rancher/node/password"));
        assert!(!layer.is_removed("/etc/ssh/sshd_config"));

        let defaults = node_spec::BakedDefaults::from_yaml(&inline(&layer, DEFAULTS_PATH)).unwrap();
        assert_eq!(defaults.k3s.role, node_spec::Role::Agent);
        assert_eq!(defaults.k3s.version.as_str(), "v1.34.3+k3s1");
        assert!(defaults.k3s.binary.is_none());
        assert_eq!(inline(&layer, "/etc/machine-id"), "");
        assert!(inline(&layer, "/etc/sysctl.d/90-imgbuild.conf")
            .contains("fs.inotify.max_user_watches = 524288"));
        assert_eq!(
            inline(&layer, "/etc/modules-load.d/imgbuild.conf")
                .lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>(),
            vec!["overlay", "br_netfilter"]
        );
    }

    #[test]
    fn all_added_entries_carry_source_date_epoch_and_root_owner() {
        let layer = compute_layer(
            &plan("server.yaml"),
            &LayerInputs::default(),
            OutputKind::Lxc,
        );
        for op in &layer.ops {
            match op {
                Op::WriteFile { meta, .. } | Op::Symlink { meta, .. } | Op::Mkdir { meta, .. } => {
                    assert_eq!(meta.mtime, 1_700_000_000);
                    assert_eq!((meta.uid, meta.gid), (0, 0));
                }
                Op::Remove { .. } => {}
            }
        }
        // No agent given: nothing refers to it.
        assert!(!layer.written_paths().any(|p| p == AGENT_BINARY_PATH));
    }

    #[test]
    fn baked_k3s_and_airgap_images_are_recorded_in_defaults() {
        let inputs = LayerInputs {
            agent: Some(blob("agent")),
            k3s_binary: Some(blob("k3s")),
            airgap_images: vec![("k3s-airgap-images-amd64.tar.zst".into(), blob("air"))],
            file_sources: vec![],
            k3s_digest: None,
        };
        let layer = compute_layer(&plan("server.yaml"), &inputs, OutputKind::Lxc);
        let d = node_spec::BakedDefaults::from_yaml(&inline(&layer, DEFAULTS_PATH)).unwrap();
        let bin = d.k3s.binary.unwrap();
        assert_eq!(bin.path, BAKED_K3S_PATH);
        assert_eq!(bin.sha256.as_str(), "ab".repeat(32));
        assert_eq!(
            d.k3s.airgap_images[0].path,
            "/var/lib/rancher/k3s/agent/images/k3s-airgap-images-amd64.tar.zst"
        );
        assert!(layer.written_paths().any(|p| p == BAKED_K3S_PATH));
    }

    #[test]
    fn resolv_conf_follows_each_targets_base() {
        let p = plan("worker.yaml");
        let find = |l: &Layer| {
            l.ops
                .iter()
                .find(|op| match op {
                    Op::WriteFile { path, .. } | Op::Symlink { path, .. } => {
                        path == "/etc/resolv.conf"
                    }
                    _ => false,
                })
                .cloned()
        };
        // The LXC rootfs has no resolver: the host's file is replaced by a stub.
        let lxc = compute_layer(&p, &LayerInputs::default(), OutputKind::Lxc);
        assert!(matches!(find(&lxc), Some(Op::WriteFile { .. })));
        // The VM rootfs has systemd-resolved: its link is restored.
        let vm = compute_layer(&p, &LayerInputs::default(), OutputKind::Qcow2);
        match find(&vm) {
            Some(Op::Symlink { target, .. }) => {
                assert_eq!(target, "../run/systemd/resolve/stub-resolv.conf")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn layer_is_deterministic_and_removals_come_first() {
        let inputs = LayerInputs {
            agent: Some(blob("agent")),
            ..LayerInputs::default()
        };
        let a = compute_layer(&plan("ha-server.yaml"), &inputs, OutputKind::Lxc);
        let b = compute_layer(&plan("ha-server.yaml"), &inputs, OutputKind::Lxc);
        assert_eq!(a, b);
        let first_write = a
            .ops
            .iter()
            .position(|o| !matches!(o, Op::Remove { .. }))
            .unwrap();
        assert!(a.ops[first_write..]
            .iter()
            .all(|o| !matches!(o, Op::Remove { .. })));
        let d = node_spec::BakedDefaults::from_yaml(&inline(&a, DEFAULTS_PATH)).unwrap();
        assert!(d.k3s.ha);
    }
}
