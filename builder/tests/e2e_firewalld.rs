//! A real boot with firewalld running, as on a RHEL-family node or a
//! Debian one whose admin installed it: the debian-12 recipe's rootfs plus
//! Debian's `firewalld` package (enabled by its maintainer scripts, so it
//! starts at boot before the network, with its default `public` zone that
//! accepts ssh and dhcpv6-client only). A server and a worker are built
//! from the shipped profiles, created as `pct create` creates them
//! (unprivileged, pct's default, on static addresses) and booted on the
//! lab bridge with the stand-in K3s mirror.
//!
//! What it proves: firstboot-agent opens the role's ports and K3s's pod
//! and service networks in firewalld at runtime and permanently; the server's
//! firewall still rejects a port it did not open (a listener on 7777),
//! while 6443 is reachable, so the worker — whose network preflight and
//! stand-in agent dial the server's 6443 through that firewall — joins.
//! Without the opening the worker's preflight fails (its
//! network-timeout-secs is short so that failure would be quick).
//!
//! Needs root, `lxc`, `iproute2`, `zstd`, the static agent and stand-in,
//! and `mmdebstrap` the first time (the rootfs is cached by its package
//! list in the shared cache). Everything it creates on the host is removed
//! when it ends, also on failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod e2e;

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use common::*;
use e2e::*;

/// The debian-12 recipe with firewalld added to the container's packages.
fn firewalld_recipe(dir: &Path) -> PathBuf {
    let shipped = fs::read_to_string(repo_root().join("image-recipes/debian-12.yaml")).unwrap();
    let anchor = "      - apparmor\n";
    let at = shipped
        .find(anchor)
        .expect("the debian-12 recipe's lxc packages no longer end with apparmor");
    let recipe = format!(
        "{}{anchor}      # The host firewall this test boots with.\n      - firewalld\n{}",
        &shipped[..at],
        &shipped[at + anchor.len()..]
    );
    let path = dir.join("debian-12-firewalld.yaml");
    fs::write(&path, recipe).unwrap();
    path
}

fn seed(node: &Node, instance: &str, k3s: &str) {
    node.push(
        "/var/lib/cloud/seed/nocloud/meta-data",
        &format!("instance-id: {instance}\n"),
        0o600,
    );
    node.push(
        "/var/lib/cloud/seed/nocloud/user-data",
        &format!("#cloud-config\nk3s:\n{k3s}"),
        0o600,
    );
}

fn finished_or_failed(v: &Value) -> bool {
    v["finished"] == Value::Bool(true) || v["errors"].as_array().is_some_and(|e| !e.is_empty())
}

fn step_message(res: &Value, name: &str) -> String {
    res["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no step {name} in {res:#}"))["message"]
        .as_str()
        .unwrap_or_default()
        // The readiness run's result repeats a step done by the first run.
        .trim_start_matches("done earlier: ")
        .to_owned()
}

/// firewalld's runtime answer for `args` (the running firewall, not only
/// the permanent configuration).
fn firewall_cmd(node: &Node, args: &[&str]) -> String {
    let mut a = vec!["firewall-cmd"];
    a.extend(args);
    node.attach_ok(&a)
}

fn assert_opened(node: &Node, ports: &[&str]) {
    assert_eq!(
        firewall_cmd(node, &["--state"]).trim(),
        "running",
        "[{}]",
        node.name
    );
    for permanent in [false, true] {
        let p: &[&str] = if permanent { &["--permanent"] } else { &[] };
        let listed = firewall_cmd(node, &[p, &["--list-ports"]].concat());
        let listed: Vec<&str> = listed.split_whitespace().collect();
        for want in ports {
            assert!(
                listed.contains(want),
                "[{}] firewalld{} does not accept {want}: {listed:?}\n{}",
                node.name,
                if permanent { " (permanent)" } else { "" },
                firewall_cmd(node, &["--list-all"])
            );
        }
        let sources = firewall_cmd(node, &[p, &["--zone=trusted", "--list-sources"]].concat());
        for net in ["10.42.0.0/16", "10.43.0.0/16"] {
            assert!(
                sources.split_whitespace().any(|s| s == net),
                "[{}] {net} is not a trusted source: {sources:?}",
                node.name
            );
        }
    }
}

fn connects(ip: &str, port: u16) -> Result<(), String> {
    let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
    TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map(drop)
        .map_err(|e| e.to_string())
}

#[test]
fn a_firewalld_node_opens_the_k3s_ports_and_the_worker_joins_through_it() {
    require_root("the LXC end-to-end test creates a bridge and containers");
    require_tool("lxc-start", "lxc");
    require_tool("lxc-attach", "lxc");
    require_tool("ip", "iproute2");
    require_tool("zstd", "zstd");
    agent_binary();
    let standin = standin_binary();
    let test_started = Instant::now();
    let mut lab = Lab::new();
    let pid = std::process::id();

    // 1. Templates from the rootfs with firewalld.
    let recipe = firewalld_recipe(&lab.dir);
    let out = lab.dir.join("out");
    let server_t = build_template("server", Some(&recipe), &out);
    let worker_t = build_template("worker", Some(&recipe), &out);

    // 2. The lab, and the two containers as pct creates them.
    lab.create_bridge();
    lab.start_mirror(&standin);
    let mirror = lab.mirror_url.clone();
    let server = lab.create_node(
        NodeSpec {
            name: &format!("ibt{pid}-fws"),
            hostname: "k3s-fw-server",
            unprivileged: true,
            ipv4: Ipv4::Static(20),
        },
        &server_t,
    );
    let worker = lab.create_node(
        NodeSpec {
            name: &format!("ibt{pid}-fww"),
            hostname: "k3s-fw-worker",
            unprivileged: true,
            ipv4: Ipv4::Static(21),
        },
        &worker_t,
    );
    assert!(
        server
            .path("/etc/systemd/system/multi-user.target.wants/firewalld.service")
            .symlink_metadata()
            .is_ok(),
        "firewalld is not enabled in the template"
    );
    let token = format!(
        "e2efw{pid:x}x{:08x}sec",
        SystemTime::UNIX_EPOCH.elapsed().unwrap().subsec_nanos()
    );
    seed(
        &server,
        &format!("iid-fw-server-{pid}"),
        &format!("  role: server\n  token: {token}\n  mirror: {mirror}\n"),
    );
    seed(
        &worker,
        &format!("iid-fw-worker-{pid}"),
        &format!(
            "  role: agent\n  server: https://{}:6443\n  token: {token}\n  mirror: {mirror}\n  network-timeout-secs: 90\n",
            server.ip
        ),
    );

    // 3. The server first.
    let since = SystemTime::now();
    server.start();
    let res = server.wait_result(since, Duration::from_secs(240), finished_or_failed);
    if res["finished"] != true {
        lab.dump_all();
    }
    assert_eq!(res["finished"], true, "the server did not finish: {res:#}");
    let fw = step_message(&res, "firewall");
    assert!(
        fw.starts_with("firewalld: opened 6443/tcp, 10250/tcp, 8472/udp, trusted 10.42.0.0/16, trusted 10.43.0.0/16"),
        "{fw}"
    );
    assert_opened(&server, &["6443/tcp", "10250/tcp", "8472/udp"]);
    // The firewall still filters: a listener on a port nobody opened is
    // rejected from the host, while the stand-in server's 6443 answers.
    server.attach_ok(&[
        "sh",
        "-c",
        "nohup python3 -c 'import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((\"0.0.0.0\", 7777)); s.listen(); time.sleep(600)' >/dev/null 2>&1 &",
    ]);
    poll(
        "the test listener on 7777 inside the server",
        Duration::from_secs(20),
        Duration::from_millis(250),
        || {
            server
                .attach_out(&["ss", "-ltnH", "sport = :7777"])
                .contains("7777")
                .then_some(())
        },
    );
    let blocked = connects(&server.ip, 7777);
    assert!(
        blocked.is_err(),
        "firewalld let the host reach port 7777, which nobody opened: is it filtering at all?"
    );
    connects(&server.ip, 6443)
        .unwrap_or_else(|e| panic!("6443 on the server is not reachable through firewalld: {e}"));
    eprintln!("server: 7777 {} ; 6443 reachable", blocked.unwrap_err());

    // 4. The worker joins through the server's firewall, with its own.
    let since = SystemTime::now();
    worker.start();
    let res = worker.wait_result(since, Duration::from_secs(240), finished_or_failed);
    if res["finished"] != true {
        lab.dump_all();
    }
    assert_eq!(res["finished"], true, "the worker did not finish: {res:#}");
    assert_eq!(res["errors"], Value::Array(vec![]), "{res:#}");
    let fw = step_message(&res, "firewall");
    assert!(
        fw.starts_with("firewalld: opened 10250/tcp, 8472/udp, trusted"),
        "a worker opens no 6443: {fw}"
    );
    assert_opened(&worker, &["10250/tcp", "8472/udp"]);
    let eff = worker
        .read_json("/var/lib/rancher/k3s/standin/effective-config.json")
        .expect("the stand-in agent recorded no effective config");
    assert_eq!(eff["role"], "agent", "{eff:#}");
    assert_eq!(eff["status"], "running", "{eff:#}");
    assert_eq!(
        eff["join"]["ok"], true,
        "the stand-in agent did not join: {eff:#}"
    );
    let joins = server
        .read("/var/lib/rancher/k3s/standin/joins.jsonl")
        .unwrap_or_default();
    assert!(
        !joins.trim().is_empty(),
        "the server logged no join through its firewall"
    );
    let snap = step_message(&res, "snapshotter");
    eprintln!(
        "firewalld: server and worker opened their ports, the worker joined; snapshotter: {snap}; test passed in {:.0} s",
        test_started.elapsed().as_secs_f64()
    );
}
