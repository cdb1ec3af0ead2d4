use std::path::{Path, PathBuf};

use super::*;

const GOOD: &str = "\
name: k3s-worker
recipe: debian-12
k3s:
  version: v1.34.3+k3s1
  role: agent
";

fn err(text: &str) -> String {
    parse_profile(Path::new("profiles/p.yaml"), text)
        .unwrap_err()
        .to_string()
}

#[test]
fn good_profile_parses_with_defaults() {
    let p = parse_profile(Path::new("p.yaml"), GOOD).unwrap();
    assert_eq!(p.outputs, vec![OutputKind::Lxc]);
    assert_eq!(p.modules, vec!["overlay", "br_netfilter"]);
    assert!(p.bake.agent);
    assert_eq!(p.lxc.zstd_level, 3);
}

#[test]
fn bad_version_tag_names_file_line_column_key_and_example() {
    let e = err(&GOOD.replace("v1.34.3+k3s1", "\"1.34\""));
    assert!(e.starts_with("profiles/p.yaml:4:12: k3s.version: "), "{e}");
    assert!(e.contains("expected e.g. v1.34.3+k3s1"), "{e}");
}

#[test]
fn unknown_key_is_an_error() {
    let e = err(&GOOD.replace("  role: agent", "  role: agent\n  verison: x"));
    assert!(
        e.starts_with("profiles/p.yaml:6:3: k3s: unknown field `verison`"),
        "{e}"
    );
}

#[test]
fn bad_role_says_what_is_expected() {
    let e = err(&GOOD.replace("role: agent", "role: worker"));
    assert!(e.contains("profiles/p.yaml:5:9: k3s.role"), "{e}");
    assert!(e.contains("server") && e.contains("agent"), "{e}");
}

#[test]
fn wrong_type_is_located() {
    let e = err(&format!("{GOOD}outputs: lxc\n"));
    assert!(e.starts_with("profiles/p.yaml:6:10: outputs: "), "{e}");
}

#[test]
fn missing_required_key() {
    let e = err("name: x\nrecipe: debian-12\n");
    assert!(e.contains("missing field `k3s`"), "{e}");
}

#[test]
fn bad_sha256_is_located() {
    let e = err(&GOOD.replace("  role: agent", "  role: agent\n  sha256: abc"));
    assert!(e.starts_with("profiles/p.yaml:6:11: k3s.sha256: "), "{e}");
    assert!(e.contains("64 hex digits"), "{e}");
}

#[test]
fn tokens_are_never_baked() {
    let e = err(&format!("{GOOD}  config:\n    token: hunter2\n"));
    assert!(
        e.starts_with("profiles/p.yaml:7:5: k3s.config.token: secrets are never baked"),
        "{e}"
    );
}

#[test]
fn cross_field_rules_are_located() {
    let e = err(&GOOD.replace("  role: agent", "  role: agent\n  ha: true"));
    assert!(
        e.starts_with("profiles/p.yaml:6:3: k3s.ha: ha: true needs role: server"),
        "{e}"
    );

    let text = format!(
        "{GOOD}files:\n  - path: /etc/a\n    content: x\n  - path: etc/b\n    content: y\n    mode: \"999\"\n"
    );
    let e = err(&text);
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 2, "{e}");
    assert!(
        lines[0].starts_with("profiles/p.yaml:9:5: files[1].path: "),
        "{e}"
    );
    assert!(
        lines[1].starts_with("profiles/p.yaml:11:5: files[1].mode: "),
        "{e}"
    );
}

#[test]
fn download_without_digest_is_refused() {
    let e = err(&format!(
        "{GOOD}bake:\n  k3s-binary:\n    url: https://example.invalid/k3s\n"
    ));
    assert!(
        e.contains("bake.k3s-binary: a download needs a pinned sha256"),
        "{e}"
    );
}

#[test]
fn bom_and_crlf_are_accepted() {
    let text = format!("\u{feff}{}", GOOD.replace('\n', "\r\n"));
    assert!(parse_profile(Path::new("p.yaml"), &text).is_ok());
}

#[test]
fn recipe_rules() {
    let rc = "name: r\ndistro: rocky\nrelease: \"9\"\nlxc:\n  bootstrap:\n    tool: mmdebstrap\n    suite: bookworm\n";
    let e = parse_recipe(Path::new("r.yaml"), rc)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("r.yaml:6:5: lxc.bootstrap.tool: mmdebstrap bootstraps Debian"),
        "{e}"
    );

    let rc = "name: r\ndistro: debian\nrelease: \"12\"\narch: arm64\nlxc:\n  tarball:\n    path: x.tar\n";
    let e = parse_recipe(Path::new("r.yaml"), rc)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("r.yaml:4:1: arch: "), "{e}");

    let rc = "name: r\ndistro: debian\nrelease: \"12\"\nlxc:\n  tarball:\n    url: https://h/x.tar\n    sha256: abc\n";
    let e = parse_recipe(Path::new("r.yaml"), rc)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("r.yaml:7:13: lxc.tarball.sha256: "), "{e}");
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn every_shipped_profile_and_recipe_validates() {
    let mut profiles = 0;
    for entry in std::fs::read_dir(repo_root().join("profiles")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let plan = load(&path, &Overrides::default())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(plan.template_name().ends_with("_amd64.tar.zst"));
            profiles += 1;
        }
    }
    assert!(
        profiles >= 3,
        "expected server, worker and ha-server profiles"
    );
    let mut recipes = 0;
    for entry in std::fs::read_dir(repo_root().join("image-recipes")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        parse_recipe(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        recipes += 1;
    }
    assert!(recipes >= 4);
}

#[test]
fn missing_recipe_is_reported_at_the_recipe_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.yaml");
    std::fs::write(&p, GOOD.replace("debian-12", "nosuch")).unwrap();
    let e = load(&p, &Overrides::default()).unwrap_err().to_string();
    assert!(
        e.contains("p.yaml:2:1: recipe: recipe \"nosuch\" not found"),
        "{e}"
    );
}

#[test]
fn template_name_follows_pveam_convention() {
    let plan = load(
        &repo_root().join("profiles/worker.yaml"),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(
        plan.template_name(),
        "debian-12-k3s-worker_1.34.3-k3s1-1_amd64.tar.zst"
    );
}

#[test]
fn baked_defaults_hold_no_token() {
    let plan = load(
        &repo_root().join("profiles/server.yaml"),
        &Overrides::default(),
    )
    .unwrap();
    let yaml = plan.baked_defaults().to_yaml();
    assert!(!yaml.contains("token"), "{yaml}");
    assert!(yaml.contains("write-kubeconfig-mode: '0644'"), "{yaml}");
    // `k3s.firewall` reaches the agent; the default (open) is not written.
    assert!(!yaml.contains("firewall"), "{yaml}");
    let mut plan = plan;
    plan.profile.k3s.firewall = node_spec::FirewallPolicy::Disable;
    let yaml = plan.baked_defaults().to_yaml();
    assert!(yaml.contains("\n  firewall: disable\n"), "{yaml}");
    assert_eq!(
        node_spec::BakedDefaults::from_yaml(&yaml)
            .unwrap()
            .k3s
            .firewall,
        node_spec::FirewallPolicy::Disable
    );
}

#[test]
fn disk_name_and_sizes() {
    let plan = load(
        &repo_root().join("profiles/worker.yaml"),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(
        plan.disk_name(),
        "debian-12-k3s-worker_1.34.3-k3s1-1_amd64.qcow2"
    );
    assert_eq!(plan.disk_size(), None);
    assert_eq!(parse_size("8G"), Some(8 << 30));
    assert_eq!(parse_size("20GiB"), Some(20 << 30));
    assert_eq!(parse_size("4096M"), Some(4 << 30));
    assert_eq!(parse_size(" 1t "), Some(1 << 40));
    assert_eq!(parse_size("1073741824"), Some(1 << 30));
    assert_eq!(parse_size("8 GB"), Some(8 << 30));
    assert_eq!(parse_size("8.5G"), None);
    assert_eq!(parse_size("G"), None);
    assert_eq!(parse_size("8X"), None);
    assert_eq!(parse_size("99999999999T"), None);
}

#[test]
fn bad_disk_sizes_are_located() {
    let e = err(&format!("{GOOD}qcow2:\n  size: 8 bananas\n"));
    assert!(
        e.contains("p.yaml:7:3: qcow2.size: `8 bananas` is not a size"),
        "{e}"
    );
    let e = err(&format!("{GOOD}qcow2:\n  size: 512M\n"));
    assert!(e.contains("qcow2.size: 512M is too small"), "{e}");
}

#[test]
fn require_network_stack_defaults_to_true_and_is_checked_like_other_keys() {
    let p = parse_profile(Path::new("p.yaml"), GOOD).unwrap();
    assert!(p.lxc.require_network_stack);
    let p = parse_profile(
        Path::new("p.yaml"),
        &format!("{GOOD}lxc:\n  require-network-stack: false\n"),
    )
    .unwrap();
    assert!(!p.lxc.require_network_stack);
    assert_eq!(p.lxc.zstd_level, 3);

    let e = err(&format!("{GOOD}lxc:\n  require-network-stack: maybe\n"));
    assert!(e.starts_with("profiles/p.yaml:7:"), "{e}");
    assert!(e.contains("lxc.require-network-stack"), "{e}");
    let e = err(&format!("{GOOD}lxc:\n  require-networkstack: false\n"));
    assert!(
        e.starts_with("profiles/p.yaml:7:3: lxc: unknown field `require-networkstack`"),
        "{e}"
    );
    assert!(e.contains("require-network-stack"), "{e}");
}

// ---- Profile values that are paths or privileges in disguise ----

fn warnings(text: &str) -> Vec<String> {
    let (_, w) = parse_profile_with_warnings(Path::new("profiles/p.yaml"), text)
        .unwrap_or_else(|e| panic!("{e}"));
    w.iter().map(ToString::to_string).collect()
}

#[test]
fn sysctl_names_are_dotted_names_not_paths() {
    for (name, why) in [
        ("../../../etc/passwd", "contains '..'"),
        ("net/../../etc/passwd", "contains '..'"),
        ("/proc/sys/net/ipv4/ip_forward", "starts with '/'"),
        ("net.ipv4..ip_forward", "contains '..'"),
        (".net.ipv4", "empty component"),
        ("net.ipv4.", "empty component"),
        ("\"net ipv4\"", "contains ' '"),
        ("\"net.ipv4=1\\nkernel.x\"", "contains '='"),
        ("\"kernel.x\\nvm.y\"", "contains '\\n'"),
        ("\"a\\tb\"", "contains '\\t'"),
        ("net.ipv4.ip_forward;x", "contains ';'"),
    ] {
        let e = err(&format!("{GOOD}sysctls:\n  {name}: 1\n"));
        assert!(e.starts_with("profiles/p.yaml:7:"), "{name}: {e}");
        assert!(e.contains(why), "{name}: {e}");
        assert!(e.contains("— write it the way sysctl.d(5) does"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
    // What sysctl.d(5) allows: dots or slashes (a dot inside a slashed
    // component is part of an interface name), globs, the "-" prefix.
    let ok = format!(
        "{GOOD}sysctls:\n  net.ipv4.ip_forward: 1\n  net/ipv4/conf/eth0.100/forwarding: 1\n  net.ipv4.conf.*.rp_filter: 2\n  -net.ipv6.conf.all.disable_ipv6: 1\n  net.ipv4.tcp_rmem: \"4096 87380 6291456\"\n"
    );
    parse_profile(Path::new("p.yaml"), &ok).unwrap();
}

#[test]
fn sysctl_values_are_one_line() {
    let e = err(&format!(
        "{GOOD}sysctls:\n  kernel.x: \"1\\nkernel.core_pattern = |/tmp/x\"\n"
    ));
    assert!(
        e.starts_with("profiles/p.yaml:7:3: sysctls.kernel.x: the value \"1\\nkernel.core_pattern"),
        "{e}"
    );
    assert!(e.contains("give the value on one line"), "{e}");
    let e = err(&format!("{GOOD}sysctls:\n  kernel.x: \"\"\n"));
    assert!(e.contains("sysctls.kernel.x: the value is empty"), "{e}");
    let e = err(&format!("{GOOD}sysctls:\n  kernel.x: [1]\n"));
    assert!(e.contains("expected a whole number or a string"), "{e}");
    assert!(!e.contains("untagged") && !e.contains("SysctlValue"), "{e}");
}

#[test]
fn module_names_are_single_names() {
    for m in ["../x", "a/b", "\"a b\"", "overlay.ko", "\"\"", "\"x\\ny\""] {
        let e = err(&format!("{GOOD}modules:\n  - overlay\n  - {m}\n"));
        assert!(
            e.starts_with("profiles/p.yaml:8:3: modules[1]: "),
            "{m}: {e}"
        );
        assert!(
            e.contains("is not a kernel module name — modules-load.d(5)"),
            "{e}"
        );
    }
    parse_profile(
        Path::new("p.yaml"),
        &format!("{GOOD}modules: [overlay, br_netfilter, nf-conntrack]\n"),
    )
    .unwrap();
}

#[test]
fn file_paths_are_absolute_normalized_and_outside_kernel_filesystems() {
    for (path, why) in [
        ("etc/motd", "is not an absolute path"),
        ("/etc/../etc/passwd", "contains '..'"),
        ("/../etc/passwd", "contains '..'"),
        ("/etc//motd", "is not normalized"),
        ("/etc/./motd", "is not normalized"),
        ("/etc/motd/", "ends with '/'"),
        ("/", "ends with '/'"),
        ("/proc/sys/kernel/core_pattern", "is under /proc"),
        ("/proc", "is under /proc"),
        ("/sys/module/x", "is under /sys"),
        ("/dev/kmsg", "is under /dev"),
        ("\"/etc/a\\nb\"", "control character"),
        ("/etc/machine-id", "shared by every node"),
        ("/etc/imgbuild-release", "written by imgbuild itself"),
        (
            "/etc/sysctl.d/90-imgbuild.conf",
            "written by imgbuild itself",
        ),
        (
            "/etc/systemd/system/firstboot-agent.service",
            "written by imgbuild itself",
        ),
    ] {
        let e = err(&format!("{GOOD}files:\n  - path: {path}\n    content: x\n"));
        assert!(
            e.starts_with("profiles/p.yaml:7:5: files[0].path: "),
            "{path}: {e}"
        );
        assert!(e.contains(why), "{path}: {e}");
        assert!(e.contains(" — "), "says what to do: {e}");
    }
}

#[test]
fn a_path_given_twice_or_inside_another_file_is_refused() {
    let e = err(&format!(
        "{GOOD}files:\n  - {{path: /etc/a, content: x}}\n  - {{path: /etc/a, content: y}}\n  - {{path: /etc/a/b, content: z}}\n"
    ));
    assert!(
        e.contains("files[1].path: /etc/a is also files[0].path"),
        "{e}"
    );
    assert!(
        e.contains("files[2].path: /etc/a/b would be inside /etc/a"),
        "{e}"
    );
}

#[test]
fn the_layers_own_paths_are_reserved() {
    use crate::layer::{compute_layer, HostBlob, LayerInputs};
    let blob = || HostBlob {
        path: "/host/x".into(),
        size: 1,
        sha256: "ab".repeat(32).parse().unwrap(),
    };
    let inputs = LayerInputs {
        agent: Some(blob()),
        k3s_binary: Some(blob()),
        ..LayerInputs::default()
    };
    let plan = load(
        &repo_root().join("profiles/worker.yaml"),
        &Overrides::default(),
    )
    .unwrap();
    // Replaced on purpose by some users; machine-id has its own error.
    let overridable = ["/etc/hostname", "/etc/resolv.conf", "/etc/machine-id"];
    for kind in [OutputKind::Lxc, OutputKind::Qcow2] {
        let layer = compute_layer(&plan, &inputs, kind);
        for p in layer.written_paths() {
            if overridable.contains(&p) || p.starts_with("/var/lib/cloud/seed/") {
                continue;
            }
            assert!(
                validate::RESERVED_PATHS.contains(&p),
                "the layer writes {p}; add it to RESERVED_PATHS"
            );
        }
    }
}

#[test]
fn readable_secrets_are_warned_about_and_still_build() {
    let text = format!(
        "{GOOD}files:\n  - path: /etc/shadow\n    content: x\n  - path: /etc/ssh/sshd_host_rsa_key\n    content: x\n    mode: \"0640\"\n  - path: /etc/rancher/k3s/join-token\n    content: x\n    mode: \"0600\"\n  - path: /opt/app/secret.env\n    content: x\n    mode: \"0604\"\n"
    );
    let w = warnings(&text);
    assert_eq!(w.len(), 3, "{w:#?}");
    assert_eq!(
        w[0],
        "profiles/p.yaml:7:5: files[0].path: mode 0644 (the default) lets every user read /etc/shadow, which holds secrets — use mode \"0600\""
    );
    assert!(
        w[1].starts_with("profiles/p.yaml:11:5: files[1].mode: mode 0640 lets its group read /etc/ssh/sshd_host_rsa_key"),
        "{w:#?}"
    );
    assert!(
        w[2].contains("files[3].mode: mode 0604 lets every user read /opt/app/secret.env"),
        "{w:#?}"
    );
}

#[test]
fn setuid_root_and_unmappable_owners_are_warned_about() {
    let text = format!(
        "{GOOD}files:\n  - path: /usr/local/bin/helper\n    content: x\n    mode: \"4755\"\n  - path: /usr/local/bin/group-helper\n    content: x\n    mode: \"2755\"\n    uid: 1000\n  - path: /srv/data\n    content: x\n    uid: 65536\n    gid: 100000\n  - path: /srv/ok\n    content: x\n    mode: \"4755\"\n    uid: 1000\n    gid: 1000\n"
    );
    let w = warnings(&text);
    assert_eq!(w.len(), 4, "{w:#?}");
    assert!(w[0].starts_with("profiles/p.yaml:9:5: files[0].mode: mode 4755 makes /usr/local/bin/helper set-user-ID with root ownership"), "{w:#?}");
    assert!(
        w[0].contains("— drop the 4000 bits (e.g. \"0755\")"),
        "{w:#?}"
    );
    assert!(
        w[1].contains("files[1].mode: mode 2755 makes /usr/local/bin/group-helper set-group-ID"),
        "{w:#?}"
    );
    assert!(w[2].starts_with("profiles/p.yaml:16:5: files[2].uid: uid 65536 is beyond what an unprivileged Proxmox container maps"), "{w:#?}");
    assert!(
        w[2].contains("nobody (65534) — use an id below 65536"),
        "{w:#?}"
    );
    assert!(
        w[3].starts_with("profiles/p.yaml:17:5: files[2].gid: gid 100000"),
        "{w:#?}"
    );

    // The idmap concerns containers only.
    let vm = format!("{text}outputs: [qcow2]\n");
    assert_eq!(warnings(&vm).len(), 2, "{:#?}", warnings(&vm));
}

#[test]
fn dns_names_are_host_names() {
    let e = err(&format!(
        "{GOOD}checks:\n  dns-names:\n    - registry.lan\n    - \"bad name\"\n"
    ));
    assert!(
        e.starts_with("profiles/p.yaml:9:5: checks.dns-names[1]: \"bad name\" is not a host name"),
        "{e}"
    );
}

#[test]
fn hostile_keys_cannot_drive_the_terminal() {
    let e = err(&format!("{GOOD}sysctls:\n  \"\\e[2Jx\": 1\n"));
    assert!(!e.contains('\u{1b}'), "{e:?}");
    assert!(e.contains("\\u{1b}[2Jx"), "{e}");
}

// ---- Messages in YAML words ----

#[test]
fn no_rust_type_names_in_type_errors() {
    let cases = [
        // k3s given as a list, the top level a scalar, a list, nothing.
        "name: x\nrecipe: debian-12\nk3s:\n  - v1.34.3+k3s1\n  - agent\n".to_owned(),
        "just a string\n".to_owned(),
        "- name: x\n".to_owned(),
        String::new(),
        format!("{GOOD}bake: yes\n"),
        format!("{GOOD}files:\n  - /etc/motd\n"),
        format!("{GOOD}lxc:\n  zstd-level: high\n"),
        format!("{GOOD}files:\n  - {{path: /a, content: x, uid: -1}}\n"),
        format!("{GOOD}checks:\n  ready-timeout-secs: -1\n"),
        GOOD.replace("role: agent", "role: [agent]"),
        format!("{GOOD}outputs: [[lxc]]\n"),
        format!("{GOOD}sysctls: [a]\n"),
    ];
    for text in &cases {
        let e = err(text);
        for leak in [
            "struct", "enum", "Spec", "u32", "u64", "i32", "YAML tag", "a map,", "Option",
        ] {
            assert!(
                !e.contains(leak),
                "{leak:?} leaks in: {e}\n--- for:\n{text}"
            );
        }
        assert_eq!(e.lines().count(), 1, "{e}");
    }
    let e = err(&cases[0]);
    assert_eq!(
        e,
        "profiles/p.yaml:4:3: k3s: invalid type: sequence, expected a mapping with keys version, role, ha, control-plane-taint, sha256, mirror, trust-mirror-checksums, config, firewall"
    );
    let e = err(&cases[1]);
    assert_eq!(
        e,
        "profiles/p.yaml:1:1: (document): invalid type: string \"just a string\", expected a mapping with keys name, description, recipe, k3s, bake, sysctls, modules, files, checks, outputs, lxc, qcow2"
    );
    let e = err(&cases[3]);
    assert!(e.contains("(document): the file is empty; expected a mapping with keys name, description, recipe, k3s"), "{e}");
    let e = err(&cases[9]);
    assert!(
        e.ends_with("k3s.role: invalid type: sequence, expected one of server, agent"),
        "{e}"
    );
    let e = err(&cases[7]);
    assert!(
        e.ends_with("expected a whole number from 0 to 4294967295"),
        "{e}"
    );

    let rc = "name: r\ndistro: debian\nrelease: \"12\"\nlxc: [tarball]\n";
    let e = parse_recipe(Path::new("r.yaml"), rc)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "r.yaml:4:6: lxc: invalid type: sequence, expected a mapping with keys tarball, cloud-image, bootstrap, pveam, linuxcontainers"
    );
}

#[test]
fn typos_get_the_closest_key() {
    let e = err(&format!("{GOOD}lxc:\n  require_network_stack: false\n"));
    assert!(
        e.ends_with("— did you mean `require-network-stack`?"),
        "{e}"
    );
    let e = err(&format!("{GOOD}outputs: [lxc, qcow]\n"));
    assert!(e.ends_with("— did you mean `qcow2`?"), "{e}");
}

#[test]
fn a_duplicate_key_is_reported_where_it_is_given_again() {
    let e = err(&GOOD.replace(
        "  role: agent\n",
        "  role: agent\n  ha: false\n  role: server\n",
    ));
    assert_eq!(
        e,
        "profiles/p.yaml:7:3: k3s.role: `role` is given twice (first on line 5) — keep one of them"
    );
    let e = err(&format!("{GOOD}name: other\n"));
    assert_eq!(
        e,
        "profiles/p.yaml:6:1: name: `name` is given twice (first on line 1) — keep one of them"
    );
    // Maps deserialized into Rust would keep the last value silently.
    let e = err(&format!(
        "{GOOD}sysctls:\n  vm.swappiness: 1\n  fs.file-max: 2\n  vm.swappiness: 3\n"
    ));
    assert_eq!(
        e,
        "profiles/p.yaml:9:3: sysctls.vm.swappiness: `vm.swappiness` is given twice (first on line 7) — keep one of them"
    );
    let e = err(&format!(
        "{GOOD}  config:\n    node-label: a\n    node-label: b\n"
    ));
    assert!(
        e.starts_with("profiles/p.yaml:8:5: k3s.config.node-label: `node-label` is given twice"),
        "{e}"
    );
    let e = err(&format!(
        "{GOOD}files:\n  - path: /etc/a\n    content: x\n    path: /etc/b\n"
    ));
    assert!(
        e.starts_with(
            "profiles/p.yaml:9:5: files[0].path: `path` is given twice (first on line 7)"
        ),
        "{e}"
    );
}

#[test]
fn more_than_one_document_is_refused() {
    let e = err(&format!("{GOOD}---\nname: other\n"));
    assert!(e.contains("more than one YAML document"), "{e}");
}

#[test]
fn missing_recipe_lists_the_recipes_and_the_closest_name() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = dir.path().join("image-recipes");
    std::fs::create_dir_all(&recipes).unwrap();
    std::fs::create_dir_all(dir.path().join("profiles")).unwrap();
    for r in ["debian-12", "rocky-9"] {
        std::fs::write(recipes.join(format!("{r}.yaml")), "name: x\n").unwrap();
    }
    let p = dir.path().join("profiles/p.yaml");
    std::fs::write(&p, GOOD.replace("debian-12", "debain-12")).unwrap();
    let e = load(&p, &Overrides::default()).unwrap_err().to_string();
    let shown = recipes.canonicalize().unwrap();
    assert_eq!(
        e,
        format!(
            "{}:2:1: recipe: recipe \"debain-12\" not found in {} or {}/profiles/image-recipes (no such directory) — did you mean debian-12? {} holds debian-12, rocky-9; or give the path of a recipe ending in .yaml",
            p.display(),
            shown.display(),
            dir.path().canonicalize().unwrap().display(),
            shown.display()
        )
    );
    assert!(!e.contains("such as"), "{e}");

    std::fs::write(
        &p,
        GOOD.replace("debian-12", "../image-recipes/rocky9.yaml"),
    )
    .unwrap();
    let e = load(&p, &Overrides::default()).unwrap_err().to_string();
    assert!(
        e.contains("recipe file \"../image-recipes/rocky9.yaml\" not found: there is no "),
        "{e}"
    );
    assert!(
        e.contains("did you mean ../image-recipes/rocky-9.yaml?"),
        "{e}"
    );
}

#[test]
fn a_read_error_prints_its_cause_once_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("none.yaml");
    let e = load(&p, &Overrides::default()).unwrap_err();
    let shown = format!("{:#}", anyhow::Error::from(e));
    assert_eq!(
        shown,
        format!(
            "{}: cannot read the profile: No such file or directory (os error 2) — check the path; the shipped profiles are in profiles/",
            p.display()
        )
    );
    let e = load(dir.path(), &Overrides::default())
        .unwrap_err()
        .to_string();
    assert_eq!(e.matches("os error").count(), 1, "{e}");
    assert!(e.ends_with("— name a YAML file, not a directory"), "{e}");
}

#[test]
fn shipped_profiles_have_no_warnings() {
    for p in ["server", "worker", "ha-server"] {
        let plan = resolve(
            &repo_root().join(format!("profiles/{p}.yaml")),
            &Overrides::default(),
        )
        .unwrap();
        assert!(plan.warnings.is_empty(), "{p}: {:?}", plan.warnings);
    }
}

#[test]
fn a_source_with_two_kinds_is_reported_at_its_key() {
    let rc = "name: r\ndistro: debian\nrelease: \"12\"\nlxc:\n  tarball:\n    path: x.tar\n  bootstrap:\n    tool: mmdebstrap\n    suite: bookworm\n";
    let e = parse_recipe(Path::new("r.yaml"), rc)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "r.yaml:4:1: lxc: a source needs exactly one of `tarball`, `cloud-image`, `bootstrap`, `pveam` or `linuxcontainers` — keep one of them"
    );
}
