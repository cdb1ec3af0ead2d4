//! The contract on literal facts: each distro, each missing item, symlink
//! chains, and what the layer changes.

use std::path::PathBuf;

use super::*;
use crate::layer::{Content, Meta, Op};

fn meta(mode: u32) -> Meta {
    Meta {
        mode,
        uid: 0,
        gid: 0,
        mtime: 0,
    }
}

fn opts(distro: Distro, release: &str) -> ContractOptions {
    ContractOptions {
        distro,
        release: release.into(),
        require_network_stack: true,
    }
}

/// A merged-usr Debian 12 as mmdebstrap makes it.
fn debian() -> BaseFacts {
    BaseFacts::default()
        .dir("/etc")
        .dir("/usr")
        .dir("/usr/lib")
        .dir("/usr/sbin")
        .dir("/usr/lib/systemd")
        .symlink("/sbin", "usr/sbin")
        .symlink("/lib", "usr/lib")
        .symlink("/etc/os-release", "../usr/lib/os-release")
        .file(
            "/usr/lib/os-release",
            0o644,
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n",
        )
        .file("/etc/debian_version", 0o644, "12.5\n")
        .exe("/usr/lib/systemd/systemd")
        .symlink("/usr/sbin/init", "/lib/systemd/systemd")
        .exe("/usr/sbin/ifup")
        .exe("/usr/sbin/dhclient")
}

fn ubuntu() -> BaseFacts {
    BaseFacts::default()
        .dir("/etc")
        .dir("/usr/lib/systemd")
        .dir("/usr/sbin")
        .symlink("/sbin", "usr/sbin")
        .symlink("/lib", "usr/lib")
        .file(
            "/etc/os-release",
            0o644,
            "NAME=\"Ubuntu\"\nID=ubuntu\nID_LIKE=debian\n",
        )
        .file(
            "/etc/lsb-release",
            0o644,
            "DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=24.04\nDISTRIB_CODENAME=noble\n",
        )
        .file("/etc/debian_version", 0o644, "trixie/sid\n")
        .exe("/usr/lib/systemd/systemd")
        .exe("/usr/lib/systemd/systemd-networkd")
        .symlink("/usr/sbin/init", "../lib/systemd/systemd")
}

/// Rocky 9's release files, as both the template and the Docker base have them.
fn with_rocky_release(facts: BaseFacts) -> BaseFacts {
    facts
        .symlink("/etc/os-release", "../usr/lib/os-release")
        .file(
            "/usr/lib/os-release",
            0o644,
            "NAME=\"Rocky Linux\"\nID=\"rocky\"\n",
        )
        .symlink("/etc/redhat-release", "rocky-release")
        .file(
            "/etc/rocky-release",
            0o644,
            "Rocky Linux release 9.5 (Blue Onyx)\n",
        )
}

/// Rocky 9 as Proxmox's rockylinux-9-default template has it.
fn rocky() -> BaseFacts {
    with_rocky_release(
        BaseFacts::default()
            .dir("/etc")
            .dir("/usr/sbin")
            .dir("/usr/lib/systemd")
            .dir("/usr/lib64/NetworkManager/1.48.10-5.el9_5")
            .symlink("/sbin", "usr/sbin")
            .symlink("/lib", "usr/lib")
            .symlink("/lib64", "usr/lib64"),
    )
    .exe("/usr/lib/systemd/systemd")
    .symlink("/usr/sbin/init", "../lib/systemd/systemd")
    .exe("/usr/sbin/NetworkManager")
    .exe("/usr/lib64/NetworkManager/1.48.10-5.el9_5/libnm-settings-plugin-ifcfg-rh.so")
}

/// Rocky-9-Container-Base: a Docker base image. Has the release files and
/// /sbin, but no systemd and no NetworkManager.
fn rocky_container_base() -> BaseFacts {
    with_rocky_release(
        BaseFacts::default()
            .dir("/etc")
            .dir("/usr/sbin")
            .dir("/usr/bin")
            .symlink("/sbin", "usr/sbin")
            .symlink("/bin", "usr/bin"),
    )
    .exe("/usr/bin/bash")
}

fn check(base: &BaseFacts, o: &ContractOptions) -> Outcome {
    evaluate(base, &Layer::default(), o)
}

fn items(v: &[Missing]) -> Vec<&'static str> {
    v.iter().map(|m| m.item).collect()
}

/// Facts without one path (and everything below it).
fn without(mut f: BaseFacts, path: &str) -> BaseFacts {
    f.nodes
        .retain(|k, _| k != path && !k.starts_with(&format!("{path}/")));
    f.contents.retain(|k, _| k != path);
    if path == "/sbin" {
        f.sbin_listed = false;
    }
    f
}

fn label(bootstrapped: bool) -> BaseLabel {
    BaseLabel {
        recipe: PathBuf::from("image-recipes/r.yaml"),
        origin: "https://example.invalid/base.tar.xz".into(),
        bootstrapped,
    }
}

#[test]
fn a_complete_debian_base_passes_and_records_its_stack() {
    let o = check(&debian(), &opts(Distro::Debian, "12"));
    assert_eq!(o.errors, vec![]);
    assert_eq!(o.plugin.as_deref(), Some("debian"));
    // /sbin -> usr/sbin, /usr/sbin/init -> /lib/systemd/systemd, /lib -> usr/lib
    assert_eq!(o.init.as_deref(), Some("/usr/lib/systemd/systemd"));
    let stack: Vec<_> = o
        .network_stack
        .iter()
        .map(|t| (t.what.as_str(), t.path.as_str()))
        .collect();
    assert_eq!(
        stack,
        vec![
            ("ifupdown", "/usr/sbin/ifup"),
            ("DHCP client dhclient", "/usr/sbin/dhclient")
        ]
    );
}

#[test]
fn ubuntu_and_rocky_bases_pass() {
    let o = check(&ubuntu(), &opts(Distro::Ubuntu, "24.04"));
    assert_eq!(o.errors, vec![]);
    assert_eq!(o.plugin.as_deref(), Some("ubuntu"));
    assert_eq!(o.init.as_deref(), Some("/usr/lib/systemd/systemd"));
    assert_eq!(o.network_stack[0].path, "/usr/lib/systemd/systemd-networkd");

    let o = check(&rocky(), &opts(Distro::Rocky, "9"));
    assert_eq!(o.errors, vec![]);
    assert_eq!(o.plugin.as_deref(), Some("centos"));
    let whats: Vec<_> = o.network_stack.iter().map(|t| t.what.as_str()).collect();
    assert_eq!(whats, vec!["NetworkManager", "ifcfg-rh plugin"]);
}

#[test]
fn each_missing_debian_item_is_named_with_its_package() {
    let o = opts(Distro::Debian, "12");
    for (path, item, package) in [
        ("/etc/debian_version", "/etc/debian_version", "base-files"),
        ("/usr/sbin/ifup", "ifupdown", "ifupdown"),
        ("/usr/sbin/dhclient", "a DHCP client", "isc-dhcp-client"),
        ("/usr/sbin/init", "systemd as init", "systemd-sysv"),
        (
            "/usr/lib/systemd/systemd",
            "systemd as init",
            "systemd-sysv",
        ),
        ("/usr/lib/os-release", "os-release", "base-files"),
    ] {
        let out = check(&without(debian(), path), &o);
        assert_eq!(items(&out.errors), vec![item], "without {path}");
        let m = &out.errors[0];
        assert!(
            matches!(&m.fix, Fix::Install(p) if p.starts_with(package)),
            "{path}: {m}"
        );
    }
}

#[test]
fn a_dangling_init_link_says_where_it_leads() {
    let out = check(
        &without(debian(), "/usr/lib/systemd/systemd"),
        &opts(Distro::Debian, "12"),
    );
    let found = &out.errors[0].found;
    assert!(
        found.contains("/sbin/init leads through")
            && found.contains("/usr/sbin/init -> /lib/systemd/systemd")
            && found.ends_with("to /usr/lib/systemd/systemd, which is missing"),
        "{found}"
    );
    assert_eq!(out.init, None);
}

#[test]
fn init_must_be_systemd_and_executable() {
    let o = opts(Distro::Debian, "12");
    let busybox = without(debian(), "/usr/sbin/init")
        .exe("/usr/bin/busybox")
        .symlink("/usr/sbin/init", "/usr/bin/busybox");
    let out = check(&busybox, &o);
    assert_eq!(items(&out.errors), vec!["systemd as init"]);
    assert!(
        out.errors[0]
            .found
            .contains("is /usr/bin/busybox, not systemd"),
        "{}",
        out.errors[0]
    );

    let not_exec =
        without(debian(), "/usr/lib/systemd/systemd").file("/usr/lib/systemd/systemd", 0o644, "");
    let out = check(&not_exec, &o);
    assert!(
        out.errors[0].found.contains("is not executable"),
        "{}",
        out.errors[0]
    );

    // A regular /sbin/init (e.g. sysvinit) is not systemd.
    let sysv = without(debian(), "/usr/sbin/init").exe("/usr/sbin/init");
    assert_eq!(items(&check(&sysv, &o).errors), vec!["systemd as init"]);

    // A chain whose first link does not name systemd: Debian.pm reads only
    // that first link.
    let chain = without(debian(), "/usr/sbin/init")
        .symlink("/usr/sbin/init", "/etc/alternatives/init")
        .dir("/etc/alternatives")
        .symlink("/etc/alternatives/init", "/lib/systemd/systemd");
    let out = check(&chain, &o);
    assert!(
        out.errors[0].found.contains("reads the link itself"),
        "{}",
        out.errors[0]
    );
    // CentOS.pm has no such test.
    let rocky_chain = without(rocky(), "/usr/sbin/init")
        .symlink("/usr/sbin/init", "/etc/alternatives/init")
        .dir("/etc/alternatives")
        .symlink("/etc/alternatives/init", "../../lib/systemd/systemd");
    let out = check(&rocky_chain, &opts(Distro::Rocky, "9"));
    assert_eq!(out.errors, vec![]);
    assert_eq!(out.init.as_deref(), Some("/usr/lib/systemd/systemd"));
}

#[test]
fn symlinks_resolve_absolute_relative_and_through_merged_usr() {
    let layer = Layer::default();
    let facts = debian()
        .symlink("/usr/sbin/loop-a", "loop-b")
        .symlink("/usr/sbin/loop-b", "/sbin/loop-a")
        .symlink(
            "/usr/lib/deep",
            "../../usr/./lib/systemd/../systemd/systemd",
        );
    let tree = Tree::new(&facts, &layer);
    // Classic non-merged layout too: /sbin/init -> /lib/systemd/systemd.
    let classic = BaseFacts::default()
        .dir("/sbin")
        .dir("/lib/systemd")
        .exe("/lib/systemd/systemd")
        .symlink("/sbin/init", "/lib/systemd/systemd");
    let classic_tree = Tree::new(&classic, &layer);
    let r = classic_tree.resolve("/sbin/init").unwrap();
    assert_eq!(r.path, "/lib/systemd/systemd");
    assert_eq!(r.hops, vec!["/sbin/init -> /lib/systemd/systemd"]);

    let r = tree.resolve("/sbin/init").unwrap();
    assert_eq!(r.path, "/usr/lib/systemd/systemd");
    assert_eq!(
        r.hops,
        vec![
            "/sbin -> usr/sbin",
            "/usr/sbin/init -> /lib/systemd/systemd",
            "/lib -> usr/lib"
        ]
    );
    assert_eq!(
        tree.readlink("/sbin/init").as_deref(),
        Some("/lib/systemd/systemd")
    );
    assert_eq!(
        tree.resolve("/usr/lib/deep").unwrap().path,
        "/usr/lib/systemd/systemd"
    );
    assert_eq!(tree.resolve("/etc/../../lib").unwrap().path, "/usr/lib");
    assert!(matches!(
        tree.resolve("/sbin/loop-a"),
        Err(Unresolved::Loop { .. })
    ));
    assert!(matches!(
        tree.resolve("/etc/debian_version/x"),
        Err(Unresolved::NotADirectory { .. })
    ));
    // A directory with no member of its own still resolves.
    let implicit = BaseFacts::default().exe("/opt/tool/bin/run");
    let t = Tree::new(&implicit, &layer);
    assert_eq!(
        t.resolve("/opt/tool/bin/run").unwrap().path,
        "/opt/tool/bin/run"
    );
}

#[test]
fn a_debian_base_without_a_network_stack_lists_both_items() {
    let base = without(without(debian(), "/usr/sbin/ifup"), "/usr/sbin/dhclient");
    let out = check(&base, &opts(Distro::Debian, "12"));
    assert_eq!(items(&out.errors), vec!["ifupdown", "a DHCP client"]);
    assert!(out.errors.iter().all(|m| m.network));
    // udhcpc (or dhcpcd) by ifupdown's own path also counts.
    let udhcpc = base
        .clone()
        .exe("/usr/sbin/ifup")
        .exe("/usr/bin/busybox")
        .symlink("/usr/sbin/udhcpc", "/usr/bin/busybox");
    let out = check(&udhcpc, &opts(Distro::Debian, "12"));
    assert_eq!(out.errors, vec![]);
    assert_eq!(out.network_stack[1].what, "DHCP client udhcpc");
}

#[test]
fn the_switch_turns_only_network_items_into_warnings() {
    let mut o = opts(Distro::Debian, "12");
    o.require_network_stack = false;
    let base = without(without(debian(), "/usr/sbin/ifup"), "/usr/sbin/dhclient");
    let out = check(&base, &o);
    assert_eq!(out.errors, vec![]);
    assert_eq!(items(&out.warnings), vec!["ifupdown", "a DHCP client"]);
    assert!(out.into_result(&label(true), &o).is_ok());

    // What pct itself needs stays an error.
    let out = check(&without(base, "/etc/debian_version"), &o);
    assert_eq!(items(&out.errors), vec!["/etc/debian_version"]);

    o.distro = Distro::Rocky;
    let out = check(&rocky_container_base(), &o);
    assert_eq!(items(&out.errors), vec!["systemd as init"]);
    assert_eq!(items(&out.warnings), vec!["NetworkManager"]);
}

#[test]
fn rocky_container_base_fails_with_one_error_naming_both_and_the_bases_to_use() {
    let o = opts(Distro::Rocky, "9");
    let out = check(&rocky_container_base(), &o);
    assert_eq!(
        items(&out.errors),
        vec!["systemd as init", "NetworkManager"]
    );
    let e = out.into_result(&label(false), &o).unwrap_err().to_string();
    assert!(
        e.starts_with(
            "image-recipes/r.yaml: the lxc base https://example.invalid/base.tar.xz (rocky 9) \
             cannot become a Proxmox template: pct's centos set-up needs 2 things it lacks:"
        ),
        "{e}"
    );
    for needle in [
        "systemd as init: /sbin/init is missing (no /usr/sbin/init, via /sbin -> usr/sbin)",
        "use a base with systemd installed",
        "NetworkManager: /usr/sbin/NetworkManager is missing",
        "ifcfg-eth0",
        "use a base with NetworkManager installed",
        "Container-Base tarball is a Docker base image",
        "rockylinux-9-default",
        "rockylinux/9",
        "`default` variant",
        "require-network-stack: false",
    ] {
        assert!(e.contains(needle), "{needle:?} not in:\n{e}");
    }
    assert_eq!(e.matches("\n  - ").count(), 2, "{e}");
}

#[test]
fn rocky_items_each() {
    let o = opts(Distro::Rocky, "9");
    let out = check(
        &without(
            rocky(),
            "/usr/lib64/NetworkManager/1.48.10-5.el9_5/libnm-settings-plugin-ifcfg-rh.so",
        ),
        &o,
    );
    assert_eq!(items(&out.errors), vec!["NetworkManager's ifcfg-rh plugin"]);
    let out = check(&without(rocky(), "/etc/rocky-release"), &o);
    assert_eq!(items(&out.errors), vec!["/etc/redhat-release"]);
    assert!(
        out.errors[0]
            .found
            .contains("/etc/redhat-release leads through"),
        "{}",
        out.errors[0]
    );
    let bad = without(rocky(), "/etc/rocky-release").file("/etc/rocky-release", 0o644, "Rocky\n");
    assert!(check(&bad, &o).errors[0].found.contains("no `release N`"));
    // Release 10: pct writes NetworkManager keyfiles, no plugin needed.
    let ten = without(
        without(rocky(), "/etc/rocky-release"),
        "/usr/lib64/NetworkManager",
    )
    .file(
        "/etc/rocky-release",
        0o644,
        "Rocky Linux release 10.0 (Red Quartz)\n",
    );
    assert_eq!(check(&ten, &opts(Distro::Rocky, "10")).errors, vec![]);
}

#[test]
fn ubuntu_items_each() {
    let o = opts(Distro::Ubuntu, "24.04");
    let out = check(&without(ubuntu(), "/etc/lsb-release"), &o);
    assert_eq!(items(&out.errors), vec!["/etc/lsb-release"]);
    for (text, says) in [
        ("DISTRIB_RELEASE=24.04\n", "DISTRIB_ID=Ubuntu"),
        (
            "DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=noble\n",
            "DISTRIB_RELEASE=NN.NN",
        ),
        (
            "DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=16.04\n",
            "17.04 and later",
        ),
    ] {
        let base = without(ubuntu(), "/etc/lsb-release").file("/etc/lsb-release", 0o644, text);
        let out = check(&base, &o);
        assert!(
            out.errors[0].found.contains(says),
            "{text:?}: {}",
            out.errors[0]
        );
    }
    // A masked networkd is as good as none: pct's eth0.network is never applied.
    let masked = ubuntu().symlink("/etc/systemd/system/systemd-networkd.service", "/dev/null");
    let out = check(&masked, &o);
    assert_eq!(items(&out.errors), vec!["systemd-networkd"]);
    assert!(
        out.errors[0].found.contains("masks it"),
        "{}",
        out.errors[0]
    );
    let masked = rocky().symlink("/etc/systemd/system/NetworkManager.service", "/dev/null");
    let out = check(&masked, &opts(Distro::Rocky, "9"));
    assert_eq!(items(&out.errors), vec!["NetworkManager"]);
    let no_networkd = without(ubuntu(), "/usr/lib/systemd/systemd-networkd");
    let out = check(&no_networkd, &o);
    assert_eq!(items(&out.errors), vec!["systemd-networkd"]);
    assert_eq!(out.errors[0].fix, Fix::Install("systemd".into()));
    let out = check(&no_networkd, &opts(Distro::Ubuntu, "25.10"));
    assert_eq!(out.errors[0].fix, Fix::Install("systemd-networkd".into()));
}

#[test]
fn sbin_and_os_release_are_required_everywhere() {
    for (facts, d, r) in [
        (debian(), Distro::Debian, "12"),
        (ubuntu(), Distro::Ubuntu, "24.04"),
        (rocky(), Distro::Rocky, "9"),
    ] {
        // Without /sbin, /sbin/init is gone too.
        let out = check(&without(facts.clone(), "/sbin"), &opts(d, r));
        let missing = items(&out.errors);
        assert_eq!(missing[..2], ["an sbin member", "systemd as init"], "{d:?}");
        // ifupdown looks for its DHCP clients in /sbin only.
        let rest: &[&str] = if d == Distro::Debian {
            &["a DHCP client"]
        } else {
            &[]
        };
        assert_eq!(missing[2..], *rest, "{d:?}");
        let out = check(
            &without(without(facts, "/usr/lib/os-release"), "/etc/os-release"),
            &opts(d, r),
        );
        assert!(items(&out.errors).contains(&"os-release"), "{d:?}");
        assert!(out.errors[0]
            .found
            .contains("neither /etc/os-release nor /usr/lib/os-release"));
    }
    // A directory stored as `./sbin` (no slash) is not what pct's check sees.
    let mut f = debian();
    f.sbin_listed = false;
    assert_eq!(
        items(&check(&f, &opts(Distro::Debian, "12")).errors),
        vec!["an sbin member"]
    );
}

#[test]
fn the_distro_pct_detects_must_be_the_recipes() {
    let fedora =
        without(debian(), "/usr/lib/os-release").file("/usr/lib/os-release", 0o644, "ID=fedora\n");
    let out = check(&fedora, &opts(Distro::Debian, "12"));
    assert_eq!(items(&out.errors), vec!["distro detection"]);
    assert!(
        out.errors[0].found.contains("fedora plugin, not debian"),
        "{}",
        out.errors[0]
    );
    assert_eq!(out.plugin.as_deref(), Some("fedora"));
    // An unknown ID falls back to the version files, as Setup.pm does.
    let raspbian = without(debian(), "/usr/lib/os-release").file(
        "/usr/lib/os-release",
        0o644,
        "ID=raspbian\n",
    );
    let out = check(&raspbian, &opts(Distro::Debian, "12"));
    assert_eq!(out.errors, vec![]);
    assert_eq!(out.plugin.as_deref(), Some("debian"));
    assert_eq!(os_release_id("ID='rocky'\n").as_deref(), Some("rocky"));
}

#[test]
fn the_layer_is_applied_before_checking() {
    let o = opts(Distro::Debian, "12");
    // The layer can provide what the base lacks…
    let base = without(debian(), "/etc/debian_version");
    let layer = Layer {
        ops: vec![Op::WriteFile {
            path: "/etc/debian_version".into(),
            meta: meta(0o644),
            content: Content::Inline(b"12.5\n".to_vec()),
        }],
    };
    assert_eq!(evaluate(&base, &layer, &o).errors, vec![]);
    // …and take away what the base has.
    let layer = Layer {
        ops: vec![Op::Remove {
            pattern: "/usr/sbin/if*".into(),
        }],
    };
    assert_eq!(
        items(&evaluate(&debian(), &layer, &o).errors),
        vec!["ifupdown"]
    );
    // A removal undone by a later write, and a file written over a directory.
    let layer = Layer {
        ops: vec![
            Op::Remove {
                pattern: "/usr/lib/systemd".into(),
            },
            Op::Symlink {
                path: "/usr/lib/systemd".into(),
                target: "/opt/sd".into(),
                meta: meta(0o777),
            },
            Op::WriteFile {
                path: "/opt/sd/systemd".into(),
                meta: meta(0o755),
                content: Content::Inline(Vec::new()),
            },
        ],
    };
    let out = evaluate(&debian(), &layer, &o);
    assert_eq!(out.init.as_deref(), Some("/opt/sd/systemd"));
    let layer = Layer {
        ops: vec![Op::WriteFile {
            path: "/usr/lib/systemd".into(),
            meta: meta(0o644),
            content: Content::Inline(Vec::new()),
        }],
    };
    assert_eq!(
        items(&evaluate(&debian(), &layer, &o).errors),
        vec!["systemd as init"]
    );
}

#[test]
fn the_fix_names_the_recipe_key_for_a_bootstrap() {
    let o = opts(Distro::Debian, "12");
    let out = check(&without(debian(), "/usr/sbin/ifup"), &o);
    let e = out.into_result(&label(true), &o).unwrap_err().to_string();
    assert!(e.contains("needs one thing it lacks:"), "{e}");
    assert!(
        e.contains("— add ifupdown (or ifupdown2) to lxc.bootstrap.packages in the recipe"),
        "{e}"
    );
    assert!(!e.contains("Container-Base"), "{e}");
}
