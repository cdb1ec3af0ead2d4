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
