//! The real end-to-end test, on the platform as Proxmox users have it:
//! build the server, worker and HA-server templates from a Debian 12 rootfs
//! (mmdebstrap, cached), create containers from them the way `pct create`
//! does (its extraction, its set-up code for the detected distro, the LXC
//! config `pct start` writes — see `tests/pve-setup`), privileged and
//! unprivileged (pct's default), with static addresses and with `ip=dhcp`
//! from a DHCP server on the lab bridge, push NoCloud seeds as the README
//! tells users to, boot them with `lxc-start` and check what systemd, the
//! network and firstboot-agent did — with the stand-in K3s release served
//! from the host's bridge address.
//!
//! Nodes: an unprivileged server on a static address (no host name in its
//! metadata: pct's names stay), a privileged HA first server on a static
//! address, a privileged worker on DHCP whose metadata renames it, and an
//! unprivileged worker on DHCP. The first worker boots while its server is
//! down and must fail its network preflight with a clear message after
//! retrying within its bound; it succeeds on its own once the server is up.
//! Restarting (with pct's pre-start set-up again) neither reinstalls K3s nor
//! loses `/dev/kmsg`, and the renamed worker keeps its K3s node name. The
//! server's seed carries an SSH key: the host logs in with it, and sshd
//! refuses passwords, before and after the restart. At the end, the renamed
//! worker's `k3s-agent-uninstall.sh` removes K3s and the agent's state, and
//! `firstboot-agent run` provisions it again.
//!
//! Needs root, `lxc`, `mmdebstrap`, `iproute2`, `zstd`, `dnsmasq`, the static
//! agent and the static stand-in (see `tests/k3s-standin/README.md`,
//! "End-to-end tests"). Everything it creates on the host (bridge,
//! containers, mirror, dnsmasq) is removed when it ends, also on failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod e2e;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use common::*;
use e2e::*;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The template carries no cluster secret: no seed, no K3s config or env
/// file, no node token, no `token` key in the baked defaults, and not the
/// token this run uses anywhere in its bytes.
fn assert_template_holds_no_token(template: &Path, token: &str) {
    let members = list(template);
    for m in &members {
        let p = m.trim_start_matches("./");
        assert!(
            !(p.starts_with("var/lib/cloud/seed/")
                && (p.ends_with("/meta-data") || p.ends_with("/user-data"))),
            "{}: a NoCloud seed is baked in: {m}",
            template.display()
        );
        for bad in [
            "etc/rancher/k3s/config.yaml",
            "etc/systemd/system/k3s.service.env",
            "etc/systemd/system/k3s-agent.service.env",
            "var/lib/rancher/k3s/server/node-token",
            "var/lib/rancher/k3s/server/token",
            "var/lib/firstboot-agent/state.json",
            "var/lib/firstboot-agent/done",
        ] {
            assert_ne!(p, bad, "{}: per-node file baked in", template.display());
        }
    }
    let defaults = run_ok(
        Command::new("tar")
            .arg("xOf")
            .arg(template)
            .args(["--zstd", "./etc/firstboot-agent/defaults.yaml"]),
    );
    let v: serde_yaml::Value = serde_yaml::from_str(&defaults).unwrap();
    fn keys_with_token(v: &serde_yaml::Value, path: &str, out: &mut Vec<String>) {
        if let serde_yaml::Value::Mapping(m) = v {
            for (k, v) in m {
                let k = k.as_str().unwrap_or_default();
                let p = format!("{path}.{k}");
                if k.contains("token") {
                    out.push(p.clone());
                }
                keys_with_token(v, &p, out);
            }
        }
    }
    let mut found = Vec::new();
    keys_with_token(&v, "", &mut found);
    assert!(
        found.is_empty(),
        "{}: the baked defaults hold token keys {found:?}:\n{defaults}",
        template.display()
    );
    // The whole decompressed template, byte for byte.
    let o = run(Command::new("sh")
        .arg("-c")
        .arg(r#"zstd -dc -- "$1" | grep -c -a -F -e "$2""#)
        .arg("sh")
        .arg(template)
        .arg(token));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "0",
        "{} contains this run's token: {}",
        template.display(),
        text(&o)
    );
}

/// The NoCloud seed of a node; `hostname: None` leaves the name to Proxmox;
/// `top` is more top-level user-data (e.g. `ssh_authorized_keys:`).
fn seed(node: &Node, instance_id: &str, hostname: Option<&str>, top: &str, k3s: &str) {
    node.push(
        "/var/lib/cloud/seed/nocloud/meta-data",
        &format!("instance-id: {instance_id}\n"),
        0o600,
    );
    let name = hostname
        .map(|h| format!("hostname: {h}\n"))
        .unwrap_or_default();
    node.push(
        "/var/lib/cloud/seed/nocloud/user-data",
        &format!("#cloud-config\n{name}{top}k3s:\n{k3s}"),
        0o600,
    );
}

/// `ssh OPTIONS root@<node> true` from the host, never prompting and never
/// reading the host's own ssh configuration or keys.
fn ssh(node: &Node, options: &[&str]) -> std::process::Output {
    run(Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
        ])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(options)
        .arg(format!("root@{}", node.ip))
        .arg("true"))
}

/// The log-in methods the node's sshd offers to a client without a key
/// (ssh -v prints the server's list), which must fail to log in.
fn offered_methods(node: &Node) -> Option<String> {
    let o = ssh(
        node,
        &[
            "-v",
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
            "-o",
            "PubkeyAuthentication=no",
        ],
    );
    assert!(
        !o.status.success(),
        "[{}] a log-in without a key worked",
        node.name
    );
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let offered = err
        .lines()
        .find_map(|l| l.split("Authentications that can continue: ").nth(1))?;
    Some(offered.trim().to_owned())
}

/// The key from the node's seed logs in as root; a password log-in is not
/// offered: the server lists only `publickey` (ssh -v shows the list), and
/// `sshd -T` inside says so. The reload after the drop-in is queued
/// (`--no-block`), so both are polled for a little while.
fn assert_ssh_login(node: &Node, key: &Path) {
    let key = key.to_str().unwrap();
    poll(
        &format!("ssh -i {key} root@{} to succeed", node.ip),
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            let o = ssh(node, &["-i", key, "-o", "IdentitiesOnly=yes"]);
            o.status.success().then_some(())
        },
    );
    let methods = poll(
        &format!("sshd in {} to refuse passwords", node.name),
        Duration::from_secs(30),
        Duration::from_millis(500),
        || offered_methods(node).filter(|m| m == "publickey"),
    );
    eprintln!(
        "[{}] ssh: key log-in works; the server offers only {methods}",
        node.name
    );
    let t = node.attach_ok(&["sshd", "-T"]);
    for want in [
        "passwordauthentication no",
        "kbdinteractiveauthentication no",
        "permitrootlogin without-password",
    ] {
        assert!(
            t.lines().any(|l| l == want),
            "[{}] sshd -T lacks {want:?}:\n{t}",
            node.name
        );
    }
    let ak = "/root/.ssh/authorized_keys";
    assert_eq!(mode(node, "/root/.ssh"), 0o700, "[{}]", node.name);
    assert_eq!(mode(node, ak), 0o600, "[{}]", node.name);
    assert_eq!(
        std::fs::metadata(node.path(ak)).unwrap().uid(),
        node.root_uid,
        "[{}] {ak} is not the container root's",
        node.name
    );
}

fn finished_or_failed(v: &Value) -> bool {
    v["finished"] == Value::Bool(true) || v["errors"].as_array().is_some_and(|e| !e.is_empty())
}

fn step<'a>(result: &'a Value, name: &str) -> &'a Value {
    result["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no step {name} in {result:#}"))
}

/// Journal lines of `unit` containing `needle`, logged since `since` (unix
/// seconds; 0: all). The boot id inside a container is the host's, so `-b`
/// cannot tell the container's boots apart.
fn journal_count(node: &Node, unit: &str, needle: &str, since: u64) -> usize {
    let since = format!("@{since}");
    node.attach_out(&[
        "journalctl",
        "--since",
        &since,
        "--no-pager",
        "-o",
        "cat",
        "-u",
        unit,
    ])
    .lines()
    .filter(|l| l.contains(needle))
    .count()
}

fn yaml_file(node: &Node, guest: &str) -> serde_yaml::Value {
    let t = node
        .read(guest)
        .unwrap_or_else(|| panic!("[{}] {guest} missing", node.name));
    serde_yaml::from_str(&t).unwrap_or_else(|e| panic!("[{}] {guest}: {e}\n{t}", node.name))
}

fn mode(node: &Node, guest: &str) -> u32 {
    std::fs::metadata(node.path(guest))
        .unwrap_or_else(|e| panic!("[{}] {guest}: {e}", node.name))
        .permissions()
        .mode()
        & 0o7777
}

fn machine_id(node: &Node) -> String {
    let id = node
        .attach_ok(&["cat", "/etc/machine-id"])
        .trim()
        .to_owned();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "[{}] machine-id {id:?} is not 32 hex digits",
        node.name
    );
    id
}

fn assert_kmsg(node: &Node) {
    let o = node.attach(&["test", "-e", "/dev/kmsg"]);
    assert!(
        o.status.success(),
        "[{}] /dev/kmsg is missing: {}\n{}",
        node.name,
        text(&o),
        node.attach_out(&["ls", "-la", "/dev"])
    );
}

fn assert_active(node: &Node, unit: &str) {
    let s = node.attach_out(&["systemctl", "is-active", unit]);
    assert_eq!(s, "active", "[{}] {unit} is {s}", node.name);
}

/// What identifies the installed K3s binary: inode, mtime and the agent's
/// install record.
fn install_fingerprint(node: &Node) -> (u64, i64, i64, Value) {
    let m = std::fs::metadata(node.path("/usr/local/bin/k3s")).unwrap();
    let state = node
        .read_json("/var/lib/firstboot-agent/state.json")
        .unwrap();
    (m.ino(), m.mtime(), m.mtime_nsec(), state["k3s"].clone())
}

/// The files pct writes at create and at every start and the agent must
/// leave alone unless the metadata names the node.
fn pct_names(node: &Node) -> [String; 3] {
    ["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"].map(|f| {
        node.read(f)
            .unwrap_or_else(|| panic!("[{}] pct wrote no {f}", node.name))
    })
}

/// What pct's Debian set-up wrote for eth0 (Setup/Debian.pm `setup_network`).
fn assert_interfaces_written_by_pct(node: &Node, lab: &Lab, ipv4: Ipv4) {
    let i = node
        .read("/etc/network/interfaces")
        .unwrap_or_else(|| panic!("[{}] pct wrote no /etc/network/interfaces", node.name));
    let want = match ipv4 {
        Ipv4::Static(o) => format!(
            "iface eth0 inet static\n\taddress {}.{o}/24\n\tgateway {}\n",
            lab.net,
            lab.host_ip()
        ),
        Ipv4::Dhcp => "iface eth0 inet dhcp\n".to_owned(),
    };
    assert!(
        i.contains("auto eth0\n") && i.contains(&want),
        "[{}] /etc/network/interfaces lacks {want:?}:\n{i}",
        node.name
    );
}

/// eth0 carries the address pct configured (static) or a lease dnsmasq
/// recorded for the node's MAC (DHCP); the default route goes to the host.
fn assert_network(node: &Node, lab: &Lab, ipv4: Ipv4) -> String {
    let ip = node.wait_ipv4(Duration::from_secs(60));
    match ipv4 {
        Ipv4::Static(o) => assert_eq!(ip, format!("{}.{o}", lab.net), "[{}]", node.name),
        Ipv4::Dhcp => {
            let last: u8 = ip.rsplit('.').next().unwrap().parse().unwrap();
            assert!(
                ip.starts_with(&format!("{}.", lab.net))
                    && (DHCP_FIRST..=DHCP_LAST).contains(&last),
                "[{}] eth0 has {ip}, not a lease from the lab's pool",
                node.name
            );
            let mac = node.ct.nets[0].hwaddr.to_lowercase();
            let leases = lab.leases();
            assert!(
                leases.iter().any(|(m, a, _)| *m == mac && *a == ip),
                "[{}] dnsmasq has no lease of {ip} for {mac}: {leases:?}",
                node.name
            );
        }
    }
    let route = node.attach_out(&["ip", "-4", "route", "show", "default"]);
    assert!(
        route.contains(&format!("via {} dev eth0", lab.host_ip())),
        "[{}] default route: {route:?}",
        node.name
    );
    ip
}

/// Processes whose command line holds one of `needles`, from `ps` inside.
fn processes(node: &Node, needles: &[&str]) -> Vec<String> {
    node.attach_ok(&["ps", "-e", "-o", "pid=,args="])
        .lines()
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .map(|l| l.trim().to_owned())
        .collect()
}

/// Mount points inside the node under K3s's and the kubelet's directories.
fn k3s_mounts(node: &Node) -> Vec<String> {
    node.attach_ok(&["cat", "/proc/self/mounts"])
        .lines()
        .filter(|l| {
            let at = l.split_whitespace().nth(1).unwrap_or_default();
            ["/run/k3s", "/var/lib/kubelet", "/var/lib/rancher/k3s"]
                .iter()
                .any(|d| at == *d || at.starts_with(&format!("{d}/")))
        })
        .map(str::to_owned)
        .collect()
}

/// Step 11 of the test (see there).
fn assert_uninstall_and_provision_again(worker: &Node, server: &Node, mirror: &str) {
    let uninstall = "/usr/local/bin/k3s-agent-uninstall.sh";
    for script in ["/usr/local/bin/k3s-killall.sh", uninstall] {
        assert_eq!(mode(worker, script), 0o755, "[{}] {script}", worker.name);
    }
    assert!(!worker.path("/usr/local/bin/k3s-uninstall.sh").exists());
    let shim = "/var/lib/rancher/k3s/data/e2e/bin/containerd-shim-runc-v2";
    let rootfs = "/run/k3s/containerd/io.containerd.runtime.v2.task/k8s.io/e2e/rootfs";
    let volume = "/var/lib/kubelet/pods/e2e/volumes/kubernetes.io~empty-dir/cache";
    worker.attach_ok(&[
        "sh",
        "-ec",
        &format!(
            "mkdir -p {dir} {rootfs} {volume}
printf '#!/bin/sh\\nsleep 7261 &\\nsleep 7261 &\\nwait\\n' > {shim}
chmod 755 {shim}
setsid {shim} </dev/null >/dev/null 2>&1 &
mount -t tmpfs e2e-rootfs {rootfs}
mount -t tmpfs e2e-volume {volume}
ip link add cni0 type bridge
ip link add vethe2e type veth peer name vethe2e-peer
ip link set vethe2e master cni0
ip link add flannel.1 type vxlan id 1 dev eth0 dstport 8472
iptables -N KUBE-E2E
iptables -A INPUT -j KUBE-E2E
iptables -A INPUT -s 192.0.2.1/32 -j ACCEPT",
            dir = Path::new(shim).parent().unwrap().display()
        ),
    ]);
    poll(
        &format!("the shim's two children in {}", worker.name),
        Duration::from_secs(10),
        Duration::from_millis(200),
        || (processes(worker, &["sleep 7261"]).len() == 2).then_some(()),
    );
    assert_eq!(k3s_mounts(worker).len(), 2, "{:?}", k3s_mounts(worker));
    let k3s_procs = ["/usr/local/bin/k3s", "containerd-shim", "sleep 7261"];
    assert!(
        !processes(worker, &["/usr/local/bin/k3s agent"]).is_empty(),
        "[{}] the stand-in agent is not running before the uninstall",
        worker.name
    );

    let uninstalled_at = unix_now();
    let o = worker.attach(&[uninstall]);
    let trace = text(&o);
    assert!(
        o.status.success(),
        "[{}] {uninstall} failed:\n{trace}",
        worker.name
    );
    let left = processes(worker, &k3s_procs);
    assert!(
        left.is_empty(),
        "[{}] still running: {left:?}\n{trace}",
        worker.name
    );
    let mounts = k3s_mounts(worker);
    assert!(
        mounts.is_empty(),
        "[{}] still mounted: {mounts:?}\n{trace}",
        worker.name
    );
    let links = worker.attach_ok(&["ip", "-o", "link", "show"]);
    for gone in ["cni0", "vethe2e", "flannel.1"] {
        assert!(
            !links.contains(&format!(": {gone}:")) && !links.contains(&format!(": {gone}@")),
            "[{}] {gone} is still there:\n{links}",
            worker.name
        );
    }
    let rules = worker.attach_ok(&["iptables-save"]);
    assert!(
        !rules.contains("KUBE-") && rules.contains("-A INPUT -s 192.0.2.1/32 -j ACCEPT"),
        "[{}] iptables after the uninstall:\n{rules}",
        worker.name
    );
    for gone in [
        "/var/lib/firstboot-agent/done",
        "/var/lib/firstboot-agent",
        "/usr/local/bin/k3s",
        "/usr/local/bin/kubectl",
        "/etc/systemd/system/k3s-agent.service",
        "/etc/systemd/system/k3s-agent.service.env",
        "/etc/rancher/k3s",
        "/var/lib/rancher/k3s",
        "/var/lib/kubelet",
        "/usr/local/bin/k3s-killall.sh",
        uninstall,
    ] {
        assert!(
            std::fs::symlink_metadata(worker.path(gone)).is_err(),
            "[{}] {gone} is still there\n{trace}",
            worker.name
        );
    }
    for kept in [
        "/usr/local/sbin/firstboot-agent",
        "/etc/systemd/system/firstboot-agent.service",
        "/etc/firstboot-agent/defaults.yaml",
        "/var/lib/cloud/seed/nocloud/meta-data",
        "/var/lib/cloud/seed/nocloud/user-data",
    ] {
        assert!(
            worker.path(kept).exists(),
            "[{}] {kept} was removed",
            worker.name
        );
    }
    assert_eq!(
        worker.attach_out(&["systemctl", "is-enabled", "firstboot-agent.service"]),
        "enabled"
    );
    assert_ne!(
        worker.attach_out(&["systemctl", "is-active", "k3s-agent.service"]),
        "active"
    );

    // The agent provisions the node again from its seed, K3s from the mirror.
    let o = worker.attach(&["firstboot-agent", "run"]);
    assert!(
        o.status.success(),
        "[{}] firstboot-agent run after the uninstall failed:\n{}",
        worker.name,
        text(&o)
    );
    let res = worker
        .read_json("/var/lib/firstboot-agent/result.json")
        .unwrap();
    assert_eq!(res["finished"], true, "{res:#}");
    assert_eq!(res["errors"], Value::Array(vec![]), "{res:#}");
    assert!(
        step(&res, "k3s-binary")["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("downloaded from {mirror}/"))),
        "{res:#}"
    );
    assert!(worker.path("/var/lib/firstboot-agent/done").exists());
    assert_active(worker, "k3s-agent.service");
    assert_eq!(mode(worker, uninstall), 0o755);
    let rec = "/var/lib/rancher/k3s/standin/effective-config.json";
    let eff = worker.read_json(rec).unwrap();
    assert_eq!(eff["status"], "running", "{eff:#}");
    assert!(
        eff["started_at_unix"].as_u64().unwrap_or(0) >= uninstalled_at,
        "{eff:#}"
    );
    assert_eq!(eff["join"]["ok"], true, "{eff:#}");
    assert_eq!(eff["node_name"], "k3s-e2e-worker", "{eff:#}");
    let joins = server
        .read("/var/lib/rancher/k3s/standin/joins.jsonl")
        .unwrap_or_default();
    let accepted = joins
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|j| j["node_name"] == "k3s-e2e-worker" && j["accepted"] == true)
        .count();
    assert!(
        accepted >= 2,
        "the server recorded {accepted} join(s) of the worker:\n{joins}"
    );
    eprintln!(
        "[{}] {uninstall} removed K3s and the agent's state; firstboot-agent run provisioned it again",
        worker.name
    );
}

/// `firstboot-agent upgrade --version NEXT --sha256 …` inside the worker:
/// downloaded from the mirror, verified, K3s restarted on the new release
/// and joined again, the old binary kept; `--rollback` brings the old
/// release back. The digest is read from the mirror's files on the host,
/// as an operator reads it from the release page.
fn assert_upgrade_and_rollback(worker: &Node, lab: &Lab, mirror: &str) {
    let rec = "/var/lib/rancher/k3s/standin/effective-config.json";
    let sums = std::fs::read_to_string(
        lab.dir
            .join("mirror")
            .join(K3S_NEXT_VERSION)
            .join("sha256sum-amd64.txt"),
    )
    .unwrap();
    let sha = sums
        .lines()
        .find_map(|l| l.strip_suffix("  k3s"))
        .unwrap_or_else(|| panic!("no k3s line in {sums}"))
        .to_owned();
    let running = |version: &str, after: u64| {
        poll(
            &format!("[{}] K3s {version} running", worker.name),
            Duration::from_secs(90),
            Duration::from_millis(500),
            || {
                let e = worker.read_json(rec)?;
                (e["status"] == "running"
                    && e["version"] == version
                    && e["started_at_unix"].as_u64().unwrap_or(0) >= after
                    && e["join"]["ok"] == true)
                    .then_some(())
            },
        )
    };
    // A wrong digest changes nothing.
    let bad = worker.attach(&[
        "firstboot-agent",
        "upgrade",
        "--version",
        K3S_NEXT_VERSION,
        "--sha256",
        &"0".repeat(64),
    ]);
    assert!(!bad.status.success(), "{}", text(&bad));
    assert!(text(&bad).contains("checksum mismatch"), "{}", text(&bad));
    assert!(!worker.path("/usr/local/bin/k3s.previous").exists());

    let upgrade_to_next = || {
        worker.attach_ok(&[
            "firstboot-agent",
            "upgrade",
            "--version",
            K3S_NEXT_VERSION,
            "--sha256",
            &sha,
        ])
    };
    let at = unix_now();
    let out = upgrade_to_next();
    assert!(
        out.contains(&format!(
            "K3s {K3S_VERSION} → {K3S_NEXT_VERSION}: downloaded from {mirror}/"
        )) && out.contains("k3s-agent.service restarted and ready"),
        "{out}"
    );
    running(K3S_NEXT_VERSION, at);
    assert!(
        worker
            .attach_out(&["k3s", "--version"])
            .starts_with(&format!("k3s version {K3S_NEXT_VERSION}")),
        "{}",
        worker.attach_out(&["k3s", "--version"])
    );
    assert!(worker.path("/usr/local/bin/k3s.previous").exists());
    // Asked again: nothing to do, K3s left running as it is.
    let pid = worker.read_json(rec).unwrap()["pid"].clone();
    let again = upgrade_to_next();
    assert!(
        again.contains("installed already; nothing to do"),
        "{again}"
    );
    assert_eq!(
        worker.read_json(rec).unwrap()["pid"],
        pid,
        "K3s was restarted"
    );

    let at = unix_now();
    let back = worker.attach_ok(&["firstboot-agent", "upgrade", "--rollback"]);
    assert!(
        back.contains(&format!(
            "K3s {K3S_NEXT_VERSION} → {K3S_VERSION}: rolled back"
        )),
        "{back}"
    );
    running(K3S_VERSION, at);
    assert_ne!(
        worker.read_json(rec).unwrap()["pid"],
        pid,
        "K3s was not restarted"
    );
    let status = worker.attach_ok(&["firstboot-agent", "status"]);
    assert!(
        status.contains(&format!(
            "upgraded:  {K3S_VERSION} → {K3S_NEXT_VERSION} by firstboot-agent upgrade, restarted"
        )) && status.contains(&format!(
            "previous:  {K3S_NEXT_VERSION} kept as /usr/local/bin/k3s.previous"
        )),
        "{status}"
    );
    eprintln!(
        "[{}] upgraded to {K3S_NEXT_VERSION} and rolled back to {K3S_VERSION}",
        worker.name
    );
}

#[test]
fn nodes_created_as_proxmox_creates_them_boot_get_their_network_and_join() {
    // 1. Tools and binaries: fail with the command that provides them.
    require_root("the LXC end-to-end test creates a bridge and containers");
    require_tool("lxc-start", "lxc");
    require_tool("lxc-attach", "lxc");
    require_tool("lxc-usernsexec", "lxc");
    require_tool("mmdebstrap", "mmdebstrap");
    require_tool("ip", "iproute2");
    require_tool("zstd", "zstd");
    require_tool("ssh-keygen", "openssh-client");
    require_tool("ssh", "openssh-client");
    let agent = agent_binary();
    assert!(
        agent.is_file(),
        "IMGBUILD_AGENT={} does not exist; build it with `bash firstboot-agent/build-static.sh`",
        agent.display()
    );
    let standin = standin_binary();
    let test_started = Instant::now();

    let mut lab = Lab::new();
    let pid = std::process::id();
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let token = format!("e2etok{pid:x}x{nanos:08x}sec");

    // 2. Templates (the Debian rootfs comes from the shared cache).
    let out = lab.dir.join("out");
    let server_t = build_template("server", None, &out);
    let worker_t = build_template("worker", None, &out);
    let ha_t = build_template("ha-server", None, &out);
    for t in [&server_t, &worker_t, &ha_t] {
        assert_template_holds_no_token(t, &token);
    }

    // 3. Bridge, mirror, DHCP.
    lab.create_bridge();
    lab.start_mirror(&standin);
    lab.start_dhcp();
    let mirror = lab.mirror_url.clone();

    // 4. `pct create`, as a user would run it for each node.
    let (server_ip4, ha_ip4, worker_ip4, worker2_ip4) =
        (Ipv4::Static(10), Ipv4::Static(11), Ipv4::Dhcp, Ipv4::Dhcp);
    let server = lab.create_node(
        NodeSpec {
            name: &format!("ibt{pid}-srv"),
            hostname: "k3s-e2e-server",
            unprivileged: true,
            ipv4: server_ip4,
        },
        &server_t,
    );
    let ha = lab.create_node(
        NodeSpec {
            name: &format!("ibt{pid}-ha"),
            hostname: "k3s-e2e-ha",
            unprivileged: false,
            ipv4: ha_ip4,
        },
        &ha_t,
    );
    // pct names it ct-worker; its metadata calls it k3s-e2e-worker.
    let mut worker = lab.create_node(
        NodeSpec {
            name: &format!("ibt{pid}-wrk"),
            hostname: "ct-worker",
            unprivileged: false,
            ipv4: worker_ip4,
        },
        &worker_t,
    );
    let mut worker2 = lab.create_node(
        NodeSpec {
            name: &format!("ibt{pid}-wrk2"),
            hostname: "k3s-e2e-worker-2",
            unprivileged: true,
            ipv4: worker2_ip4,
        },
        &worker_t,
    );
    let server_url = format!("https://{}:6443", server.ip);
    for (n, ipv4) in [
        (&server, server_ip4),
        (&ha, ha_ip4),
        (&worker, worker_ip4),
        (&worker2, worker2_ip4),
    ] {
        assert_interfaces_written_by_pct(n, &lab, ipv4);
        assert!(
            !n.path("/etc/machine-id").exists(),
            "[{}] pct create removes the empty machine-id",
            n.name
        );
    }
    let pct_files: Vec<[String; 3]> = [&server, &ha, &worker, &worker2]
        .iter()
        .map(|n| pct_names(n))
        .collect();
    assert!(
        pct_files[0][2].contains(&format!("nameserver {}\n", lab.host_ip())),
        "{:?}",
        pct_files[0]
    );

    // 5. NoCloud seeds, placed as the README says (`pct mount` + `install`).
    // The server's carries an SSH key, as Proxmox's user-data does.
    let login_key = lab.dir.join("id_e2e");
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "e2e-login", "-f"])
            .arg(&login_key),
    );
    let login_pub = std::fs::read_to_string(login_key.with_extension("pub")).unwrap();
    seed(
        &server,
        &format!("iid-e2e-server-{pid}"),
        None,
        &format!(
            "ssh_authorized_keys:\n  - {}\nusers:\n  - default\n",
            login_pub.trim()
        ),
        &format!("  role: server\n  token: {token}\n  mirror: {mirror}\n"),
    );
    seed(
        &ha,
        &format!("iid-e2e-ha-{pid}"),
        None,
        "",
        &format!("  token: {token}\n  mirror: {mirror}\n"),
    );
    // A short network budget so the failure is seen quickly.
    let net_timeout = 30;
    seed(
        &worker,
        &format!("iid-e2e-worker-{pid}"),
        Some("k3s-e2e-worker"),
        "",
        &format!(
            "  role: agent\n  server: {server_url}\n  token: {token}\n  mirror: {mirror}\n  network-timeout-secs: {net_timeout}\n"
        ),
    );
    seed(
        &worker2,
        &format!("iid-e2e-worker2-{pid}"),
        None,
        "",
        &format!("  role: agent\n  server: {server_url}\n  token: {token}\n  mirror: {mirror}\n"),
    );

    // 6. The worker boots while its server is down: the preflight retries
    // within its bound, then fails with a message that says what to fix.
    let since = SystemTime::now();
    let worker_started = worker.start();
    worker.ip = assert_network(&worker, &lab, worker_ip4);
    let failed = worker.wait_result(
        since,
        Duration::from_secs(net_timeout + 120),
        finished_or_failed,
    );
    assert_eq!(
        failed["finished"], false,
        "worker finished without its server: {failed:#}"
    );
    let errors: Vec<String> = failed["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap_or_default().to_owned())
        .collect();
    let net_err = errors
        .iter()
        .find(|e| e.starts_with("network:"))
        .unwrap_or_else(|| panic!("no network error in {failed:#}"));
    eprintln!("worker without server: {net_err}");
    assert!(
        net_err.contains(&format!("tcp {}:6443", server.ip)) && net_err.contains("cannot connect"),
        "the preflight failure does not name the server endpoint: {net_err}"
    );
    assert!(
        net_err.contains("6443/tcp") || net_err.contains("server runs"),
        "the preflight failure gives no advice: {net_err}"
    );
    assert!(
        !net_err.contains(&token),
        "the failure message leaks the token: {net_err}"
    );
    let net_step = step(&failed, "network");
    assert_eq!(net_step["status"], "failed", "{failed:#}");
    let spent = net_step["duration-ms"].as_u64().unwrap();
    assert!(
        spent >= (net_timeout - 16) * 1000 && spent <= (net_timeout + 20) * 1000,
        "the network step gave up after {spent} ms, not within its {net_timeout} s bound"
    );
    let retries = journal_count(
        &worker,
        "firstboot-agent.service",
        "network not ready yet, retrying",
        0,
    );
    assert!(retries >= 3, "only {retries} retries logged in the journal");
    assert_eq!(
        journal_count(
            &worker,
            "firstboot-agent.service",
            "network preflight gave up",
            0
        ),
        1
    );
    let status: Value =
        serde_json::from_str(&worker.attach_ok(&["firstboot-agent", "status", "--json"])).unwrap();
    assert_eq!(status["result"]["finished"], false);
    assert_eq!(status["state"]["steps"]["network"]["status"], "failed");
    assert!(
        !worker.path("/usr/local/bin/k3s").exists(),
        "K3s was installed although the preflight failed"
    );
    assert_ne!(
        worker.attach_out(&["systemctl", "is-active", "k3s-agent"]),
        "active"
    );
    // The unit retries a failed run by itself (Restart=on-failure).
    assert_eq!(
        worker.attach_out(&[
            "systemctl",
            "show",
            "-p",
            "SubState",
            "--value",
            "firstboot-agent.service"
        ]),
        "auto-restart",
        "a failed first-boot run is not retried on its own"
    );

    // 7. Without anyone touching the worker, its agent runs again while the
    // server is still down, and keeps retrying until the server has booted.
    let since = SystemTime::now();
    let since_unix = unix_now();
    poll(
        "the worker's agent to retry the unreachable server on its own",
        Duration::from_secs(90),
        Duration::from_millis(300),
        || {
            (journal_count(
                &worker,
                "firstboot-agent.service",
                "network not ready yet",
                since_unix,
            ) > 0)
                .then_some(())
        },
    );
    let others_since = SystemTime::now();
    let server_started = server.start();
    let ha_started = ha.start();
    let worker2_started = worker2.start();
    let sres = server.wait_result(others_since, Duration::from_secs(180), finished_or_failed);
    let server_secs = server_started.elapsed().as_secs_f64();
    assert_eq!(sres["finished"], true, "server did not finish: {sres:#}");
    let boot_secs = sres["boot-to-done-secs"].as_f64().unwrap_or(f64::MAX);
    assert!(
        boot_secs < server_secs + 5.0,
        "boot-to-done-secs {boot_secs} is not measured from the container's boot ({server_secs:.1} s wall)"
    );
    let hres = ha.wait_result(others_since, Duration::from_secs(180), finished_or_failed);
    let ha_secs = ha_started.elapsed().as_secs_f64();
    assert_eq!(hres["finished"], true, "HA server did not finish: {hres:#}");
    let w2res = worker2.wait_result(others_since, Duration::from_secs(180), finished_or_failed);
    let worker2_secs = worker2_started.elapsed().as_secs_f64();
    assert_eq!(
        w2res["finished"], true,
        "worker 2 did not finish: {w2res:#}"
    );
    let wres = worker.wait_result(since, Duration::from_secs(180), finished_or_failed);
    let worker_secs = worker_started.elapsed().as_secs_f64();
    assert_eq!(wres["finished"], true, "worker did not finish: {wres:#}");
    let wstate = worker
        .read_json("/var/lib/firstboot-agent/state.json")
        .unwrap();
    let attempts = wstate["steps"]["network"]["attempts"].as_u64().unwrap();
    assert!(
        attempts >= 2,
        "the worker's preflight passed at once ({attempts} attempt); the retry was not exercised"
    );
    eprintln!("worker preflight passed after {attempts} attempts");

    // 8. Timings.
    eprintln!("\nboot-to-agent-done:");
    for (n, res, wall, what) in [
        (&server, &sres, server_secs, "from lxc-start"),
        (&ha, &hres, ha_secs, "from lxc-start"),
        (&worker2, &w2res, worker2_secs, "from lxc-start"),
        (
            &worker,
            &wres,
            worker_secs,
            "from its lxc-start, incl. a failed run and waiting for the server",
        ),
    ] {
        eprintln!(
            "  {:<22} {wall:6.1} s wall {what}; result.json boot-to-done-secs {}",
            n.name, res["boot-to-done-secs"]
        );
    }
    let timings = serde_json::json!({
        "server": {"container": server.name, "unprivileged": true, "wall-secs-from-lxc-start": server_secs,
                   "boot-to-done-secs": sres["boot-to-done-secs"]},
        "ha-server": {"container": ha.name, "unprivileged": false, "wall-secs-from-lxc-start": ha_secs,
                   "boot-to-done-secs": hres["boot-to-done-secs"]},
        "worker": {"container": worker.name, "unprivileged": false, "wall-secs-from-lxc-start": worker_secs,
                   "boot-to-done-secs": wres["boot-to-done-secs"],
                   "network-attempts": attempts},
        "worker-2": {"container": worker2.name, "unprivileged": true, "wall-secs-from-lxc-start": worker2_secs,
                   "boot-to-done-secs": w2res["boot-to-done-secs"]},
    });
    let timings_file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e_lxc-timings.json");
    std::fs::write(&timings_file, format!("{timings:#}\n")).unwrap();
    eprintln!("  (recorded in {})", timings_file.display());

    // 9. What each node got: a fully booted system, the network pct
    // configured, pct's names unless the metadata gave one, and K3s.
    worker2.ip = assert_network(&worker2, &lab, worker2_ip4);
    assert_network(&server, &lab, server_ip4);
    assert_network(&ha, &lab, ha_ip4);
    for (i, (n, res, role, unit, host, renamed)) in [
        (
            &server,
            &sres,
            "server",
            "k3s.service",
            "k3s-e2e-server",
            false,
        ),
        (&ha, &hres, "server", "k3s.service", "k3s-e2e-ha", false),
        (
            &worker,
            &wres,
            "agent",
            "k3s-agent.service",
            "k3s-e2e-worker",
            true,
        ),
        (
            &worker2,
            &w2res,
            "agent",
            "k3s-agent.service",
            "k3s-e2e-worker-2",
            false,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        eprintln!("{} warnings: {:#}", n.name, res["warnings"]);
        n.wait_running(Duration::from_secs(60));
        // Unprivileged: the container's root is the host's 100000.
        let uid_map = n.attach_out(&["cat", "/proc/self/uid_map"]);
        let mapped = uid_map.split_whitespace().collect::<Vec<_>>() == ["0", "100000", "65536"];
        assert_eq!(
            mapped,
            n.root_uid == 100_000,
            "[{}] uid_map {uid_map:?}",
            n.name
        );
        assert_eq!(res["role"], role, "{res:#}");
        assert_eq!(res["unit"], unit, "{res:#}");
        assert_eq!(res["k3s-version"], K3S_VERSION, "{res:#}");
        assert_eq!(res["errors"], Value::Array(vec![]), "{res:#}");
        assert_eq!(step(res, "k3s-ready")["status"], "done", "{res:#}");
        let status: Value =
            serde_json::from_str(&n.attach_ok(&["firstboot-agent", "status", "--json"])).unwrap();
        assert_eq!(status["result"]["finished"], true, "{status:#}");
        assert!(n.path("/var/lib/firstboot-agent/done").exists());
        assert_active(n, unit);
        // The binary came from the mirror on the bridge (the first run says
        // so; the readiness run records "already installed") and is the
        // pinned one, installed by the container's own root.
        assert_eq!(
            journal_count(
                n,
                "firstboot-agent.service",
                &format!("downloaded from {mirror}/"),
                0
            ),
            1,
            "[{}] K3s was not downloaded from {mirror} once",
            n.name
        );
        let v = n.attach_ok(&["k3s", "--version"]);
        assert!(v.contains(K3S_VERSION), "[{}] k3s --version: {v}", n.name);
        assert_eq!(
            std::fs::metadata(n.path("/usr/local/bin/k3s"))
                .unwrap()
                .uid(),
            n.root_uid,
            "[{}] k3s is not owned by the container's root",
            n.name
        );
        // Names: pct's stay unless the metadata gives one.
        let [pct_hostname, pct_hosts, pct_resolv] = &pct_files[i];
        assert_eq!(n.attach_out(&["hostname"]), host, "[{}]", n.name);
        assert_eq!(n.read("/etc/hostname").unwrap().trim(), host);
        let resolv = n.read("/etc/resolv.conf").unwrap();
        if n.ct.nets[0].ip.as_deref() == Some("dhcp") {
            // dhclient's hook replaces pct's file with the lease's name
            // servers (dnsmasq gives the host), as on a real Proxmox node.
            assert!(
                resolv.contains(&format!("nameserver {}\n", lab.host_ip())),
                "[{}] resolv.conf after DHCP:\n{resolv}",
                n.name
            );
        } else {
            assert_eq!(
                &resolv, pct_resolv,
                "[{}] resolv.conf is not pct's any more",
                n.name
            );
        }
        let hosts = n.read("/etc/hosts").unwrap();
        if renamed {
            assert_eq!(pct_hostname.trim(), "ct-worker");
            assert!(
                hosts.starts_with(pct_hosts.as_str())
                    && hosts.contains(&format!("\n127.0.1.1 {host}\n")),
                "[{}] /etc/hosts:\n{hosts}",
                n.name
            );
            assert!(
                res["warnings"].as_array().unwrap().iter().any(|w| w
                    .as_str()
                    .unwrap_or_default()
                    .contains(&format!("pct set <vmid> --hostname {host}"))),
                "[{}] no advice on pct's host name: {:#}",
                n.name,
                res["warnings"]
            );
        } else {
            assert_eq!(pct_hostname.trim(), host);
            assert_eq!(
                &hosts, pct_hosts,
                "[{}] /etc/hosts is not pct's any more",
                n.name
            );
        }
        assert_kmsg(n);
        // The secret is in the 0600 env file only.
        let env_file = format!("/etc/systemd/system/{unit}.env");
        assert_eq!(mode(n, &env_file), 0o600);
        assert_eq!(
            n.read(&env_file).unwrap().trim(),
            format!("K3S_TOKEN='{token}'")
        );
        assert_eq!(mode(n, "/etc/rancher/k3s/config.yaml"), 0o600);
        assert!(!n
            .read("/etc/rancher/k3s/config.yaml")
            .unwrap()
            .contains(&token));
    }

    // The server's seed gave a key: it logs in, passwords do not; the other
    // nodes' seeds gave none, so their sshd is left as it was.
    assert_eq!(step(&sres, "ssh-keys")["status"], "done", "{sres:#}");
    assert_ssh_login(&server, &login_key);
    for n in [&ha, &worker, &worker2] {
        assert!(
            !n.path("/etc/ssh/sshd_config.d/60-firstboot-agent.conf")
                .exists(),
            "[{}] an sshd drop-in without keys",
            n.name
        );
    }
    // The control: Debian's sshd as it comes offers passwords.
    let ha_methods = offered_methods(&ha);
    assert!(
        ha_methods
            .as_deref()
            .is_some_and(|m| m.split(',').any(|x| x == "password")),
        "[{}] offers {ha_methods:?}; the password check above proves nothing",
        ha.name
    );

    // config.yaml holds the profile's and the seed's settings.
    let scfg = yaml_file(&server, "/etc/rancher/k3s/config.yaml");
    assert_eq!(
        scfg["write-kubeconfig-mode"].as_str(),
        Some("0644"),
        "{scfg:?}"
    );
    assert_eq!(scfg["disable"][0].as_str(), Some("traefik"), "{scfg:?}");
    assert!(scfg.get("server").is_none(), "{scfg:?}");
    let hcfg = yaml_file(&ha, "/etc/rancher/k3s/config.yaml");
    assert_eq!(hcfg["cluster-init"].as_bool(), Some(true), "{hcfg:?}");
    for (w, name) in [(&worker, "k3s-e2e-worker"), (&worker2, "k3s-e2e-worker-2")] {
        let wcfg = yaml_file(w, "/etc/rancher/k3s/config.yaml");
        assert_eq!(
            wcfg["server"].as_str(),
            Some(server_url.as_str()),
            "{wcfg:?}"
        );
        assert!(
            wcfg["node-label"].as_sequence().is_some_and(|l| l
                .iter()
                .any(|x| x.as_str() == Some("node.kubernetes.io/pool=workers"))),
            "{wcfg:?}"
        );
        assert_eq!(
            wcfg["kube-proxy-arg"][0].as_str(),
            Some("conntrack-max-per-core=0"),
            "{wcfg:?}"
        );
        // The renamed worker's K3s name is pinned; the other keeps pct's.
        let pinned = wcfg.get("node-name").and_then(|v| v.as_str());
        if w.name == worker.name {
            assert_eq!(pinned, Some(name), "{wcfg:?}");
        } else {
            assert_eq!(pinned, None, "{wcfg:?}");
        }
    }

    // The server's node token, and the workers joined with the same secret
    // through the addresses pct configured.
    let rec = "/var/lib/rancher/k3s/standin/effective-config.json";
    let seff = server.read_json(rec).unwrap();
    assert_eq!(seff["status"], "running", "{seff:#}");
    assert_eq!(seff["role"], "server");
    let heff = ha.read_json(rec).unwrap();
    assert_eq!(heff["status"], "running", "{heff:#}");
    let node_token_path = "/var/lib/rancher/k3s/server/node-token";
    assert_eq!(mode(&server, node_token_path), 0o600);
    let node_token = server.read(node_token_path).unwrap();
    let node_token = node_token.trim_end();
    assert!(
        node_token.starts_with("K10") && node_token.ends_with(&format!("::server:{token}")),
        "node-token is not K10<ca hash>::server:<the seed's token>"
    );
    assert_eq!(seff["node_token_sha256"], sha256_hex(node_token.as_bytes()));
    let joins = server
        .read("/var/lib/rancher/k3s/standin/joins.jsonl")
        .unwrap_or_default();
    for (w, name) in [(&worker, "k3s-e2e-worker"), (&worker2, "k3s-e2e-worker-2")] {
        let weff = w.read_json(rec).unwrap();
        assert_eq!(weff["status"], "running", "{weff:#}");
        assert_eq!(weff["role"], "agent");
        assert_eq!(weff["node_name"], name, "{weff:#}");
        assert_eq!(
            weff["token"]["sha256"], seff["token"]["sha256"],
            "{weff:#}\n{seff:#}"
        );
        assert_eq!(
            weff["token"]["secret_sha256"],
            seff["token"]["secret_sha256"]
        );
        assert_eq!(weff["token"]["sha256"], sha256_hex(token.as_bytes()));
        assert_eq!(weff["server_url"], server_url.as_str());
        assert_eq!(weff["join"]["ok"], true, "{weff:#}");
        assert!(
            weff["join"]["server_line"]
                .as_str()
                .is_some_and(|l| l.contains("k3s-standin server k3s-e2e-server")),
            "{weff:#}"
        );
        let join: Value = joins
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|j| j["node_name"] == name)
            .unwrap_or_else(|| panic!("the server recorded no join of {name}:\n{joins}"));
        assert_eq!(join["accepted"], true, "{join}");
        assert!(
            join["peer"]
                .as_str()
                .unwrap_or_default()
                .starts_with(&format!("{}:", w.ip)),
            "{name} joined from {}, not its address {}",
            join["peer"],
            w.ip
        );
    }
    assert_eq!(mode(&server, "/etc/rancher/k3s/k3s.yaml"), 0o644);

    // Distinct machine identities, each generated in its container.
    let ids: Vec<String> = [&server, &ha, &worker, &worker2]
        .iter()
        .map(|n| machine_id(n))
        .collect();
    for (i, a) in ids.iter().enumerate() {
        assert!(
            !ids[i + 1..].contains(a),
            "two containers share machine-id {a}"
        );
    }

    // 10. Restart the server and the renamed worker the way `pct start`
    // does (its pre-start set-up again): K3s is not reinstalled, the agent
    // stays done, K3s comes back, and so does /dev/kmsg. pct puts its own
    // name back on the worker; K3s keeps the pinned one.
    let before = [install_fingerprint(&server), install_fingerprint(&worker)];
    let mirror_log = lab.mirror_log();
    let restart_at = unix_now();
    worker.stop();
    server.stop();
    assert_eq!(worker.state(), "STOPPED");
    server.start();
    worker.start();
    for (n, unit) in [(&server, "k3s.service"), (&worker, "k3s-agent.service")] {
        n.wait_running(Duration::from_secs(120));
        poll(
            &format!("{unit} in {} after the restart", n.name),
            Duration::from_secs(90),
            Duration::from_millis(500),
            || {
                let e = n.read_json(rec)?;
                (e["status"] == "running"
                    && e["started_at_unix"].as_u64().unwrap_or(0) >= restart_at
                    && n.attach_out(&["systemctl", "is-active", unit]) == "active")
                    .then_some(())
            },
        );
        assert_eq!(
            n.attach_out(&[
                "systemctl",
                "show",
                "-P",
                "ConditionResult",
                "firstboot-agent.service"
            ]),
            "no",
            "[{}] firstboot-agent.service ran again after the restart",
            n.name
        );
        assert_kmsg(n);
    }
    assert_eq!(
        [install_fingerprint(&server), install_fingerprint(&worker)],
        before,
        "K3s was reinstalled by the restart"
    );
    assert_eq!(lab.mirror_log(), mirror_log, "the mirror was asked again");
    assert_eq!(
        machine_id(&server),
        ids[0],
        "the server's machine-id changed"
    );
    assert_eq!(
        machine_id(&worker),
        ids[2],
        "the worker's machine-id changed"
    );
    assert_eq!(worker.attach_out(&["hostname"]), "ct-worker");
    // sshd starts with the drop-in (and /run/sshd) on its own after a restart.
    assert_ssh_login(&server, &login_key);
    let weff2 = worker.read_json(rec).unwrap();
    assert_eq!(weff2["join"]["ok"], true, "{weff2:#}");
    assert_eq!(weff2["node_name"], "k3s-e2e-worker", "{weff2:#}");

    // 11. K3s's uninstall script on the renamed worker, as a runbook runs
    // it — after giving the node what a real K3s leaves behind and the
    // stand-in does not make: a containerd shim with its children, a
    // container's rootfs and a pod volume mounted, cni0 with a pod's veth,
    // flannel.1, and KUBE- rules. Then nothing of K3s is left (process,
    // mount, link, rule, file, the agent's state), the agent, its unit,
    // defaults and seed are, and `firstboot-agent run` provisions the node
    // again: it joins once more.
    assert_uninstall_and_provision_again(&worker, &server, &mirror);

    // 12. A pinned upgrade of the second worker, as an operator runs it on
    // the node, then a rollback.
    assert_upgrade_and_rollback(&worker2, &lab, &mirror);

    eprintln!(
        "\nend-to-end LXC test passed in {:.0} s (server {server_secs:.1} s, HA server {ha_secs:.1} s, \
         worker {worker_secs:.1} s, worker 2 {worker2_secs:.1} s to agent done)",
        test_started.elapsed().as_secs_f64()
    );
}
