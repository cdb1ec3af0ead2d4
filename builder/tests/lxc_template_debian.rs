//! Integration: build the worker template from a real Debian 12 rootfs made by
//! mmdebstrap, extract it with Proxmox's flags and check what a node gets.
//! Slow (the first run bootstraps Debian, ~1 min); the rootfs is cached in
//! the target directory between runs.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;

#[test]
fn worker_template_from_mmdebstrap_is_proxmox_ready_and_reproducible() {
    require_tool("mmdebstrap", "mmdebstrap");
    require_tool("zstd", "zstd");
    let work = tempfile::tempdir().unwrap();
    let out1 = work.path().join("out1");
    let out2 = work.path().join("out2");
    let profile = repo_root().join("profiles/worker.yaml");
    let cache = cache_dir();
    let envs = [("SOURCE_DATE_EPOCH", "1700000000")];

    let build = |out: &Path| {
        let o = imgbuild(
            &[
                "build",
                profile.to_str().unwrap(),
                "--output",
                "lxc",
                "--out",
                out.to_str().unwrap(),
                "--cache-dir",
                cache.to_str().unwrap(),
            ],
            &envs,
        );
        assert!(o.status.success(), "build failed: {}", text(&o));
        o
    };
    build(&out1);
    let name = "debian-12-k3s-worker_1.34.3-k3s1-1_amd64.tar.zst";
    let template = out1.join(name);
    assert_eq!(
        files_in(&out1),
        vec![
            name.to_string(),
            format!("{name}.lxc.conf"),
            format!("{name}.manifest.json"),
            format!("{name}.pve-privileged.conf"),
            format!("{name}.pve-unprivileged.conf"),
        ]
    );

    // What `pct create` checks before extracting.
    let members = list(&template);
    assert!(members.len() >= 10, "only {} members", members.len());
    assert!(
        members.iter().any(|m| m == "./sbin" || m == "./sbin/"),
        "no ./sbin"
    );
    assert!(
        members.iter().all(|m| m.starts_with("./")),
        "mixed name styles"
    );

    let root = work.path().join("rootfs");
    pct_extract(&template, &root);

    let os_release = std::fs::read_to_string(root.join("etc/os-release")).unwrap();
    assert!(os_release.contains("ID=debian"), "{os_release}");

    let agent = root.join("usr/local/sbin/firstboot-agent");
    let meta = std::fs::metadata(&agent).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    assert_eq!(
        std::fs::read(&agent).unwrap(),
        std::fs::read(agent_binary()).unwrap()
    );
    assert_eq!(meta.mtime(), 1_700_000_000);

    let unit =
        std::fs::read_to_string(root.join("etc/systemd/system/firstboot-agent.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/sbin/firstboot-agent"),
        "{unit}"
    );
    let wants = root.join("etc/systemd/system/multi-user.target.wants/firstboot-agent.service");
    assert_eq!(
        std::fs::read_link(&wants).unwrap(),
        Path::new("/etc/systemd/system/firstboot-agent.service")
    );

    let defaults = std::fs::read_to_string(root.join("etc/firstboot-agent/defaults.yaml")).unwrap();
    let d = node_spec::BakedDefaults::from_yaml(&defaults).unwrap();
    assert_eq!(d.k3s.role, node_spec::Role::Agent);
    assert_eq!(d.k3s.version.as_str(), "v1.34.3+k3s1");
    assert!(!defaults.to_lowercase().contains("token"), "{defaults}");

    // Per-machine state is gone.
    assert_eq!(std::fs::read(root.join("etc/machine-id")).unwrap(), b"");
    let host_keys: Vec<String> = files_in(&root.join("etc/ssh"))
        .into_iter()
        .filter(|f| f.starts_with("ssh_host_"))
        .collect();
    assert!(host_keys.is_empty(), "host keys left: {host_keys:?}");
    assert!(!root.join("etc/rancher/node").exists());
    // The build host's identity is not copied into the node.
    assert_eq!(
        std::fs::read_to_string(root.join("etc/hostname")).unwrap(),
        "localhost\n"
    );
    let resolv = std::fs::read_to_string(root.join("etc/resolv.conf")).unwrap();
    assert!(!resolv.contains("nameserver"), "{resolv}");
    // The base's own files pass through (sshd installed its config).
    assert!(root.join("etc/ssh/sshd_config").is_file());
    assert!(root.join("usr/bin/systemctl").exists());
    let sysctl = std::fs::read_to_string(root.join("etc/sysctl.d/90-imgbuild.conf")).unwrap();
    assert!(sysctl.contains("fs.inotify.max_user_watches = 524288"));

    // Manifest and inspect agree with the file.
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out1.join(format!("{name}.manifest.json"))).unwrap(),
    )
    .unwrap();
    let o = imgbuild(&["inspect", template.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(shown.contains("matches manifest"), "{shown}");
    assert!(shown.contains(m["artifact"]["sha256"].as_str().unwrap()));
    assert!(shown.contains("v1.34.3+k3s1 as agent"), "{shown}");
    assert!(!shown.contains("MISSING"), "{shown}");
    assert_eq!(m["k3s"]["version"], "v1.34.3+k3s1");
    assert!(m["timings_ms"].is_object() || m["timings-ms"].is_object());

    // Same inputs and SOURCE_DATE_EPOCH: byte-identical template.
    build(&out2);
    let digest = |p: &Path| sha256_hex(&std::fs::read(p).unwrap());
    assert_eq!(digest(&template), digest(&out2.join(name)));
}
