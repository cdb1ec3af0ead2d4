//! A real boot of an Ubuntu template picked by name from a pveam index:
//! a base shaped like Proxmox's `ubuntu-22.04-standard` is served from a
//! signed loopback index, `imgbuild build --recipe` turns it into the server
//! template, and a container created from that the way `pct create` does
//! (pct's Ubuntu set-up, see `tests/pve-setup`), unprivileged and on DHCP,
//! boots with `lxc-start` on the lab bridge (`e2e/mod.rs`) and runs
//! firstboot-agent against the stand-in K3s mirror.
//!
//! What it proves, and what not: the base's userspace is Debian 12's (the
//! debian-12 recipe's bootstrap from the shared cache) dressed with
//! Ubuntu 22.04's `/etc/os-release`, `/etc/lsb-release` and
//! `/etc/debian_version`. So it proves what imgbuild and pct read and do
//! for Ubuntu — the pveam source (signed index, sha512, download), distro
//! detection, the template contract, pct's Ubuntu network set-up through
//! systemd-networkd (Debian's systemd ships it), a clean boot and the
//! agent — but not Ubuntu's own packages (its systemd, netplan,
//! cloud-init, snapd or AppArmor profiles).
//!
//! Needs root, `lxc`, `iproute2`, `zstd`, `dnsmasq`, `gnupg`/`gpgv`, the
//! static agent and the static stand-in (see `tests/k3s-standin/README.md`,
//! "End-to-end tests"); `mmdebstrap` only when the Debian bootstrap is not
//! cached yet. Everything it creates on the host is removed when it ends,
//! also on failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod catalog;
mod common;
mod e2e;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use imgbuild::plan::schema::SourceSpec;
use imgbuild::source::{bootstrap_rootfs, Cache, FetchOptions};
use serde_json::Value;

use catalog::{Catalog, Gpg, Template};
use common::*;
use e2e::*;

/// The index's Package, and the file name `pveam download` stores it under.
const PACKAGE: &str = "ubuntu-22.04-standard";
const TEMPLATE_FILE: &str = "ubuntu-22.04-standard_22.04-1_amd64.tar.zst";

/// The debian-12 recipe's LXC rootfs, by the same cache key its builds use:
/// the tarball e2e_lxc's builds already made, or (first run on this target
/// directory) one mmdebstrap run whose result they reuse in turn.
fn debian_bootstrap() -> PathBuf {
    let path = repo_root().join("image-recipes/debian-12.yaml");
    let text = fs::read_to_string(&path).unwrap();
    let recipe = imgbuild::plan::parse_recipe(&path, &text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let Some(SourceSpec::Bootstrap(spec)) = &recipe.lxc else {
        panic!("{}: the lxc base is no bootstrap any more", path.display());
    };
    // Not cached yet: mmdebstrap runs, or the error says how to install it.
    let t = Instant::now();
    let f = bootstrap_rootfs(
        spec,
        &recipe.arch,
        &Cache::new(cache_dir()),
        &FetchOptions::default(),
    )
    .unwrap_or_else(|e| panic!("the debian-12 bootstrap: {e}"));
    eprintln!(
        "debian-12 rootfs {} ({}, {:.1} s)",
        f.path.display(),
        if f.from_cache {
            "cached"
        } else {
            "bootstrapped now"
        },
        t.elapsed().as_secs_f64()
    );
    f.path
}

/// Debian's rootfs with the files Ubuntu 22.04's base-files ships in their
/// place (os-release, lsb-release, debian_version), packed as Proxmox's
/// template. Everything else stays Debian's: systemd (with networkd),
/// ifupdown (which pct gives nothing to do here), the packages.
fn dress_as_ubuntu_standard(rootfs_tar: &Path, dir: &Path) -> PathBuf {
    let root = dir.join("ubuntu-standard-root");
    fs::create_dir_all(&root).unwrap();
    run_ok(
        Command::new("tar")
            .args(["--numeric-owner", "-xpf"])
            .arg(rootfs_tar)
            .arg("-C")
            .arg(&root),
    );
    // As in both distros: /etc/os-release links to the real file.
    assert_eq!(
        fs::read_link(root.join("etc/os-release")).unwrap(),
        Path::new("../usr/lib/os-release")
    );
    let pretty = "Ubuntu 22.04.5 LTS";
    fs::write(
        root.join("usr/lib/os-release"),
        format!(
            "PRETTY_NAME=\"{pretty}\"\nNAME=\"Ubuntu\"\nVERSION_ID=\"22.04\"\n\
             VERSION=\"22.04.5 LTS (Jammy Jellyfish)\"\nVERSION_CODENAME=jammy\nID=ubuntu\n\
             ID_LIKE=debian\nHOME_URL=\"https://www.ubuntu.com/\"\n\
             SUPPORT_URL=\"https://help.ubuntu.com/\"\n\
             BUG_REPORT_URL=\"https://bugs.launchpad.net/ubuntu/\"\nUBUNTU_CODENAME=jammy\n"
        ),
    )
    .unwrap();
    fs::write(
        root.join("etc/lsb-release"),
        format!(
            "DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=22.04\nDISTRIB_CODENAME=jammy\n\
             DISTRIB_DESCRIPTION=\"{pretty}\"\n"
        ),
    )
    .unwrap();
    fs::write(root.join("etc/debian_version"), "bookworm/sid\n").unwrap();
    assert!(
        root.join("usr/lib/systemd/systemd-networkd").is_file(),
        "Debian's systemd no longer ships systemd-networkd"
    );
    let t = Instant::now();
    let template = catalog::pack(&root, dir, TEMPLATE_FILE);
    fs::remove_dir_all(&root).unwrap();
    eprintln!(
        "packed {TEMPLATE_FILE} ({} MB) in {:.1} s",
        fs::metadata(&template).unwrap().len() >> 20,
        t.elapsed().as_secs_f64()
    );
    template
}

#[test]
fn ubuntu_template_from_pveam_boots_with_networkd_and_the_agent_finishes() {
    require_root("the LXC end-to-end test creates a bridge and containers");
    require_tool("lxc-start", "lxc");
    require_tool("lxc-attach", "lxc");
    require_tool("ip", "iproute2");
    require_tool("zstd", "zstd");
    require_tool("gpg", "gnupg");
    require_tool("gpgv", "gpgv");
    // Fails with the command that builds it when the static agent is missing.
    agent_binary();
    let standin = standin_binary();
    let test_started = Instant::now();
    let mut lab = Lab::new();
    let pid = std::process::id();

    // 1. The Ubuntu-shaped base.
    let base = dress_as_ubuntu_standard(&debian_bootstrap(), &lab.dir);

    // 2. Served as pveam serves it, the index signed; the recipe names the
    // template and the signing key, and an empty template directory so the
    // host's own /var/lib/vz is never looked at.
    let catalog = Catalog::new(&lab.dir.join("catalog"));
    let gpg_dir = lab.dir.join("gpg");
    let gpg = Gpg::new(&gpg_dir);
    catalog.pveam(
        &[Template {
            package: PACKAGE,
            version: "22.04-1",
            os: "ubuntu-22.04",
            file: &base,
            sha512: None,
        }],
        Some(&gpg),
    );
    // The signing is done: dropping the key stops gpg's agent; the public
    // keyring stays for the build.
    let keyring = gpg.keyring.clone();
    drop(gpg);
    fs::remove_file(&base).unwrap();
    let template_dir = lab.dir.join("pve-template-cache");
    fs::create_dir_all(&template_dir).unwrap();
    let recipe = lab.dir.join("ubuntu-22.04.yaml");
    fs::write(
        &recipe,
        format!(
            "name: ubuntu-22.04\ndistro: ubuntu\nrelease: \"22.04\"\narch: amd64\nlxc:\n  pveam:\n    \
             template: {PACKAGE}\n    index: {}\n    keyring: {}\n    template-dir: {}\n",
            catalog.pveam_index(),
            keyring.display(),
            template_dir.display()
        ),
    )
    .unwrap();

    // 3. The server template. Its base comes from the catalog, not from a
    // cache: a private cache keeps this run's one-off template out of the
    // shared one.
    let t = Instant::now();
    let out = lab.dir.join("out");
    let profile = repo_root().join("profiles/server.yaml");
    let o = imgbuild(
        &[
            "build",
            profile.to_str().unwrap(),
            "--recipe",
            recipe.to_str().unwrap(),
            "--output",
            "lxc",
            "--cache-dir",
            lab.dir.join("cache").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "imgbuild build: {}", text(&o));
    let name = "ubuntu-22.04-k3s-server_1.34.3-k3s1-1_amd64.tar.zst";
    let template = out.join(name);
    assert!(
        template.is_file(),
        "{name} not built; {} holds: {}",
        out.display(),
        files_in(&out).join(", ")
    );
    eprintln!("built {name} in {:.1} s", t.elapsed().as_secs_f64());
    let fetched = catalog.requested();
    for want in [
        "/images/aplinfo-pve-9.dat.gz".to_owned(),
        "/images/aplinfo-pve-9.dat.asc".to_owned(),
        format!("/images/system/{TEMPLATE_FILE}"),
    ] {
        assert!(
            fetched.iter().any(|(p, s)| *p == want && *s == 200),
            "the build did not fetch {want} from the catalog: {fetched:?}"
        );
    }
    assert!(
        template_dir.read_dir().unwrap().next().is_none(),
        "the build wrote into the template directory"
    );
    let manifest: Value = serde_json::from_str(
        &fs::read_to_string(out.join(format!("{name}.manifest.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["distro"], "ubuntu", "{manifest:#}");
    assert_eq!(manifest["release"], "22.04", "{manifest:#}");
    assert_eq!(manifest["pct"]["plugin"], "ubuntu", "{manifest:#}");
    assert_eq!(manifest["os-release"]["ID"], "ubuntu", "{manifest:#}");
    assert_eq!(
        manifest["base"]["origin"],
        format!("{}/images/system/{TEMPLATE_FILE}", catalog.base_url()),
        "{manifest:#}"
    );
    let stack = manifest["pct"]["network-stack"].to_string();
    assert!(
        stack.contains("systemd-networkd"),
        "the contract found no systemd-networkd: {stack}"
    );
    drop(catalog);

    // 4. Bridge, mirror, DHCP; the container as `pct create … --net0
    // …,ip=dhcp --unprivileged 1` makes it.
    lab.create_bridge();
    lab.start_mirror(&standin);
    lab.start_dhcp();
    let mirror = lab.mirror_url.clone();
    let hostname = "k3s-ubuntu-server";
    let mut node = lab.create_node(
        NodeSpec {
            name: &format!("ibt{pid}-ubu"),
            hostname,
            unprivileged: true,
            ipv4: Ipv4::Dhcp,
        },
        &template,
    );
    assert_eq!(
        pve_setup::detect(&node.rootfs).unwrap(),
        pve_setup::Distro::Ubuntu {
            version: "22.04".into()
        },
        "pct does not take the container for Ubuntu 22.04"
    );
    // pct's Ubuntu set-up (not Debian's): eth0 goes to networkd, which it
    // enables below 23.04; /etc/network/interfaces gets nothing.
    let network_file = node
        .read("/etc/systemd/network/eth0.network")
        .unwrap_or_else(|| panic!("pct wrote no /etc/systemd/network/eth0.network"));
    assert!(
        network_file.contains("[Match]\nName = eth0\n") && network_file.contains("DHCP = ipv4\n"),
        "eth0.network is not pct's DHCP set-up:\n{network_file}"
    );
    assert_eq!(
        fs::read_link(
            node.path("/etc/systemd/system/multi-user.target.wants/systemd-networkd.service")
        )
        .ok(),
        Some(PathBuf::from(
            "/lib/systemd/system/systemd-networkd.service"
        )),
        "pct did not enable systemd-networkd"
    );
    let interfaces = node.read("/etc/network/interfaces").unwrap_or_default();
    assert!(
        !interfaces.contains("eth0"),
        "pct's Debian set-up ran on the Ubuntu template:\n{interfaces}"
    );

    // 5. The seed as the README places it, then boot.
    node.push(
        "/var/lib/cloud/seed/nocloud/meta-data",
        &format!("instance-id: iid-e2e-ubuntu-{pid}\n"),
        0o600,
    );
    let token = format!(
        "e2eubu{pid:x}x{:08x}sec",
        SystemTime::UNIX_EPOCH.elapsed().unwrap().subsec_nanos()
    );
    node.push(
        "/var/lib/cloud/seed/nocloud/user-data",
        &format!("#cloud-config\nk3s:\n  role: server\n  token: {token}\n  mirror: {mirror}\n"),
        0o600,
    );
    let since = SystemTime::now();
    let started = node.start();

    // 6. eth0's lease came from networkd applying pct's file.
    node.ip = node.wait_ipv4(Duration::from_secs(60));
    let mac = node.ct.nets[0].hwaddr.to_lowercase();
    assert!(
        lab.leases()
            .iter()
            .any(|(m, a, _)| *m == mac && *a == node.ip),
        "dnsmasq has no lease of {} for {mac}: {:?}",
        node.ip,
        lab.leases()
    );
    let last: u8 = node.ip.rsplit('.').next().unwrap().parse().unwrap();
    assert!(
        node.ip.starts_with(&format!("{}.", lab.net)) && (DHCP_FIRST..=DHCP_LAST).contains(&last),
        "eth0 has {}, not an address from the lab's pool",
        node.ip
    );
    let networkctl = poll(
        "networkd to report eth0 configured",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            let s = node.attach_out(&["networkctl", "status", "eth0", "--no-pager"]);
            s.contains("routable (configured)").then_some(s)
        },
    );
    assert!(
        networkctl.contains(&format!("(DHCP4 via {})", lab.host_ip())),
        "eth0's address is not from networkd's DHCP client:\n{networkctl}"
    );
    assert!(
        networkctl.contains("Network File: /etc/systemd/network/eth0.network"),
        "networkd did not configure eth0 from pct's file:\n{networkctl}"
    );
    let route = node.attach_out(&["ip", "-4", "route", "show", "default"]);
    assert!(
        route.contains(&format!("via {} dev eth0 proto dhcp", lab.host_ip())),
        "the default route is not networkd's DHCP route to the host: {route:?}"
    );
    let dhclient = node.attach(&["pgrep", "-a", "dhclient"]);
    assert!(
        !dhclient.status.success(),
        "a dhclient runs besides networkd: {}",
        text(&dhclient)
    );

    // 7. The agent finished, the system is fully up, K3s runs.
    let res = node.wait_result(since, Duration::from_secs(180), |v| {
        v["finished"] == true || v["errors"].as_array().is_some_and(|e| !e.is_empty())
    });
    let agent_secs = started.elapsed().as_secs_f64();
    assert_eq!(res["finished"], true, "the agent did not finish: {res:#}");
    assert_eq!(res["errors"], Value::Array(vec![]), "{res:#}");
    assert_eq!(res["role"], "server", "{res:#}");
    assert_eq!(res["unit"], "k3s.service", "{res:#}");
    assert_eq!(res["k3s-version"], K3S_VERSION, "{res:#}");
    let ready = res["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "k3s-ready"))
        .unwrap_or_else(|| panic!("no k3s-ready step in {res:#}"));
    assert_eq!(ready["status"], "done", "{res:#}");
    node.wait_running(Duration::from_secs(60));
    for unit in ["systemd-networkd.service", "k3s.service"] {
        let s = node.attach_out(&["systemctl", "is-active", unit]);
        assert_eq!(s, "active", "{unit} is {s}");
    }
    let uid_map = node.attach_out(&["cat", "/proc/self/uid_map"]);
    assert_eq!(
        uid_map.split_whitespace().collect::<Vec<_>>(),
        ["0", "100000", "65536"],
        "not unprivileged: uid_map {uid_map:?}"
    );
    let os_release = node.attach_ok(&["cat", "/etc/os-release"]);
    assert!(
        os_release.contains("\nID=ubuntu\n"),
        "the booted system is not Ubuntu-shaped:\n{os_release}"
    );
    assert_eq!(node.attach_out(&["hostname"]), hostname);
    let version = node.attach_ok(&["k3s", "--version"]);
    assert!(version.contains(K3S_VERSION), "k3s --version: {version}");
    let eff = node
        .read_json("/var/lib/rancher/k3s/standin/effective-config.json")
        .expect("the stand-in K3s recorded no effective config");
    assert_eq!(eff["status"], "running", "{eff:#}");
    assert_eq!(eff["role"], "server", "{eff:#}");

    eprintln!(
        "\nUbuntu-shaped pveam template: agent done {agent_secs:.1} s after lxc-start \
         (result.json boot-to-done-secs {}); test passed in {:.0} s",
        res["boot-to-done-secs"],
        test_started.elapsed().as_secs_f64()
    );
}
