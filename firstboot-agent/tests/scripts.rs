//! install.sh's `k3s-killall.sh` and uninstall script, as the agent writes
//! them: names per role, mode 0755, rewritten only on change, written in a
//! dry run — and run with `sh` against a node root (the scripts' `ROOT`
//! line set to it, every command they call a logging stand-in except the
//! file and process tools), which must leave exactly what provisioning
//! the node again needs, and a run of the agent that does so.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use firstboot_agent::rootfs::Root;
use firstboot_agent::run::{run, RunOptions};
use firstboot_agent::state::RunResult;

const KILLALL: &str = "/usr/local/bin/k3s-killall.sh";
const AGENT_UNINSTALL: &str = "/usr/local/bin/k3s-agent-uninstall.sh";
const SERVER_UNINSTALL: &str = "/usr/local/bin/k3s-uninstall.sh";
const AIRGAP: &str = "/var/lib/rancher/k3s/agent/images/k3s-airgap-images-amd64.tar.zst";

fn agent_seed(r: &Path) {
    seed(
        r,
        "iid-w1",
        &format!("#cloud-config\nhostname: w1\nk3s:\n  role: agent\n  server: https://10.0.0.10:6443\n  token: {TOKEN}\n"),
    );
}

fn mode(r: &Path, abs: &str) -> u32 {
    std::fs::metadata(r.join(abs.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("{abs}: {e}"))
        .permissions()
        .mode()
        & 0o7777
}

fn step_message(res: &RunResult, name: &str) -> String {
    res.steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step {name}: {res:#?}"))
        .message
        .clone()
}

#[test]
fn each_role_gets_install_sh_scripts_written_once() {
    for (role, user_data, uninstall, other) in [
        (
            "agent",
            format!("#cloud-config\nk3s:\n  role: agent\n  server: https://10.0.0.10:6443\n  token: {TOKEN}\n"),
            AGENT_UNINSTALL,
            SERVER_UNINSTALL,
        ),
        ("server", "#cloud-config\n".to_owned(), SERVER_UNINSTALL, AGENT_UNINSTALL),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        node_root(r, "");
        seed(r, "i1", &user_data);
        let res = run(&Root::new(r), &fake_for(r), &RunOptions::default()).unwrap();
        assert!(res.finished, "{role}");
        assert_eq!(res.k3s_scripts, [KILLALL, uninstall], "{role}");
        assert!(!r.join(other.trim_start_matches('/')).exists(), "{role}");
        for s in [KILLALL, uninstall] {
            assert_eq!(mode(r, s), 0o755, "{role} {s}");
            assert!(read(r, s).starts_with("#!/bin/sh\n# Written by firstboot-agent:"));
        }
        let unit = if role == "agent" { "k3s-agent" } else { "k3s" };
        let text = read(r, uninstall);
        for want in [
            format!("systemctl disable {unit}\n"),
            format!("rm -f \"${{ROOT}}/etc/systemd/system/{unit}.service.env\""),
            "rm -rf \"${ROOT}/var/lib/firstboot-agent\"".to_owned(),
            "create_uninstall in k3s-io/k3s install.sh".to_owned(),
        ] {
            assert!(text.contains(&want), "{role}: {want} not in\n{text}");
        }
        assert!(read(r, KILLALL).contains("create_killall in k3s-io/k3s install.sh"));
        assert!(
            step_message(&res, "k3s-scripts").starts_with(&format!("wrote {KILLALL}, {uninstall} (mode 0755)")),
            "{res:#?}"
        );
        let status: RunResult =
            serde_json::from_str(&read(r, "/var/lib/firstboot-agent/result.json")).unwrap();
        assert_eq!(status.k3s_scripts, res.k3s_scripts);

        // Unchanged text is not written again; a wrong mode is put right.
        let ino = std::fs::metadata(r.join(&uninstall[1..])).unwrap().ino();
        std::fs::remove_file(r.join("var/lib/firstboot-agent/done")).unwrap();
        let mut state: serde_json::Value =
            serde_json::from_str(&read(r, "/var/lib/firstboot-agent/state.json")).unwrap();
        state["finished"] = false.into();
        write(r, "/var/lib/firstboot-agent/state.json", state.to_string());
        std::fs::set_permissions(
            r.join(&KILLALL[1..]),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        let res = run(&Root::new(r), &fake_for(r), &RunOptions::default()).unwrap();
        assert_eq!(
            step_message(&res, "k3s-scripts"),
            format!("wrote {KILLALL} (mode 0755)")
        );
        assert_eq!(std::fs::metadata(r.join(&uninstall[1..])).unwrap().ino(), ino);
        assert_eq!(mode(r, KILLALL), 0o755);
    }
}

#[test]
fn a_dry_run_writes_the_scripts_under_its_root_only() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "");
    agent_seed(r);
    let sys = firstboot_agent::system::DryRunSystem::new(r);
    let res = run(&Root::new(r), &sys, &RunOptions::default()).unwrap();
    assert!(res.dry_run);
    assert_eq!(res.k3s_scripts, [KILLALL, AGENT_UNINSTALL]);
    assert_eq!(mode(r, AGENT_UNINSTALL), 0o755);
    assert!(
        step_message(&res, "k3s-scripts").starts_with("wrote "),
        "{res:#?}"
    );
    assert!(
        res.would_run.iter().all(|w| !w.contains(".sh")),
        "{:?}",
        res.would_run
    );
}

/// Stand-ins for the commands the scripts run on the machine, each logging
/// its arguments; real file and process tools next to them.
fn tools(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = dir.join("calls.log");
    let stand_in = |name: &str, body: &str| {
        let p = bin.join(name);
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\necho \"{name} $*\" >> '{}'\n{body}",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    stand_in("systemctl", "");
    stand_in("umount", "");
    stand_in("sudo", "exit 1\n");
    stand_in("id", "echo 0\n");
    stand_in(
        "ip",
        "case \"$*\" in\n\
         'link show') printf '1: lo: <LOOPBACK,UP> mtu 65536\\n7: veth3f2a@if2: <BROADCAST,UP> mtu 1450 qdisc noqueue master cni0 state UP\\n2: eth0: <BROADCAST,UP> mtu 1500 state UP\\n' ;;\n\
         'netns show') printf 'cni-51b0c4e1 (id: 0)\\n' ;;\n\
         esac\n",
    );
    let rules = "*filter\n:INPUT ACCEPT [0:0]\n:KUBE-FIREWALL - [0:0]\n:CNI-FORWARD - [0:0]\n:FLANNEL-FWD - [0:0]\n-A INPUT -j KUBE-FIREWALL\n-A INPUT -s 192.0.2.1/32 -j ACCEPT\n-A FORWARD -j CNI-FORWARD\n-A FORWARD -m comment --comment \"flannel forwarding\" -j ACCEPT\nCOMMIT\n";
    for v in ["iptables", "ip6tables"] {
        stand_in(&format!("{v}-save"), &format!("printf '%s' '{rules}'\n"));
        stand_in(
            &format!("{v}-restore"),
            &format!("cat > '{}'\n", dir.join(format!("{v}.restored")).display()),
        );
    }
    for real in [
        "sh", "rm", "rmdir", "grep", "sed", "cut", "sort", "xargs", "basename", "ls", "cat",
        "readlink", "ps", "sleep",
    ] {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(real))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{real} is needed to run the scripts (coreutils, procps)"));
        std::os::unix::fs::symlink(found, bin.join(real)).unwrap();
    }
    bin
}

/// The script at `abs` in the node root, with its `ROOT` line set to `r`.
fn point_at(r: &Path, abs: &str) {
    let text = read(r, abs);
    assert_eq!(text.matches("\nROOT=''\n").count(), 1, "{abs}");
    let moved = text.replace("\nROOT=''\n", &format!("\nROOT='{}'\n", r.display()));
    std::fs::write(r.join(abs.trim_start_matches('/')), moved).unwrap();
}

/// Kills what a test started if it is still there when the test ends
/// (the scripts should have killed it; a failure must not leave it).
struct Reaper(Vec<u32>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in &self.0 {
            if alive(*pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

#[test]
fn the_uninstall_script_leaves_what_provisioning_again_needs() {
    let dir = tempfile::tempdir().unwrap();
    let r = &dir.path().join("node");
    let air = b"air-gap archive";
    node_root(
        r,
        &format!(
            "  airgap-images:\n  - path: {AIRGAP}\n    sha256: {}\n",
            sha256_hex(air)
        ),
    );
    agent_seed(r);
    // The image's and cloud-init's files, and the agent's own.
    write(r, AIRGAP, air);
    write(r, "/etc/rancher/k3s/registries.yaml", "mirrors: {}\n");
    write(
        r,
        "/etc/rancher/k3s/config.yaml.d/10-site.yaml",
        "disable: [traefik]\n",
    );
    write(
        r,
        "/var/lib/rancher/k3s/server/manifests/site.yaml",
        "kind: List\n",
    );
    write(r, node_spec::AGENT_BINARY_PATH, "agent");
    write(r, "/etc/systemd/system/firstboot-agent.service", "[Unit]\n");
    write(r, "/usr/local/bin/helm", "helm");
    // What an upgrade keeps for --rollback.
    write(r, "/usr/local/bin/k3s.previous", "old k3s");
    write(r, "/opt/kubectl", "#!/bin/sh\n");
    std::fs::set_permissions(
        r.join("opt/kubectl"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("/opt/kubectl", r.join("usr/local/bin/kubectl")).unwrap();

    let res = run(&Root::new(r), &fake_for(r), &RunOptions::default()).unwrap();
    assert!(res.finished, "{res:#?}");
    assert!(
        step_message(&res, "k3s-scripts").contains("the uninstall keeps 4 file(s)"),
        "{res:#?}"
    );
    let text = read(r, AGENT_UNINSTALL);
    assert!(
        text.contains(&format!(
            "KEEP='/etc/rancher/k3s/config.yaml.d/10-site.yaml\n/etc/rancher/k3s/registries.yaml\n{AIRGAP}\n/var/lib/rancher/k3s/server/manifests/site.yaml'\n"
        )),
        "{text}"
    );

    // What K3s makes while it runs, and a containerd shim with two children.
    for f in [
        "/etc/rancher/k3s/k3s.yaml",
        "/etc/rancher/node/password",
        "/var/lib/rancher/k3s/agent/containerd/meta.db",
        "/var/lib/rancher/k3s/agent/etc/containerd/config.toml",
        "/var/lib/rancher/k3s/server/token",
        "/var/lib/rancher/k3s/.hidden",
        "/var/lib/kubelet/pods/0a1b/volumes/x",
        "/run/k3s/containerd/containerd.sock",
        "/run/flannel/subnet.env",
        "/var/lib/cni/networks/cbr0/10.42.0.2",
    ] {
        write(r, f, "x");
    }
    let shim = "/var/lib/rancher/k3s/data/3f2a/bin/containerd-shim-runc-v2";
    write(r, shim, "#!/bin/sh\nsleep 600 &\nsleep 600 &\nwait\n");
    let mut shim_proc = Command::new("sh")
        .arg(r.join(&shim[1..]))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let children = loop {
        let o = Command::new("ps")
            .args(["-o", "pid=", "--ppid", &shim_proc.id().to_string()])
            .output()
            .unwrap();
        let pids: Vec<u32> = String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.len() == 2 {
            break pids;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the shim's children did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    };

    let _reaper = Reaper(
        std::iter::once(shim_proc.id())
            .chain(children.iter().copied())
            .collect(),
    );
    let bin = tools(dir.path());
    point_at(r, KILLALL);
    point_at(r, AGENT_UNINSTALL);
    let out = Command::new(bin.join("sh"))
        .arg(r.join(&AGENT_UNINSTALL[1..]))
        .env_clear()
        .env("PATH", &bin)
        .output()
        .unwrap();
    let trace = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{}\n{trace}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The shim and its children were killed.
    let t = Instant::now();
    let waited = loop {
        if let Some(s) = shim_proc.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the shim was not killed\n{trace}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&waited),
        Some(9),
        "{trace}"
    );
    for c in children {
        let t = Instant::now();
        while alive(c) && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!alive(c), "the shim's child {c} survived\n{trace}");
    }

    // What was asked of systemd, ip and iptables, in order.
    let calls = std::fs::read_to_string(dir.path().join("calls.log")).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    let pos = |c: &str| {
        calls
            .iter()
            .position(|l| *l == c)
            .unwrap_or_else(|| panic!("{c} not called: {calls:#?}"))
    };
    assert!(
        pos("systemctl stop firstboot-agent-ready.service firstboot-agent.service")
            < pos("systemctl stop k3s-agent.service")
    );
    assert!(pos("systemctl stop k3s-agent.service") < pos("systemctl disable k3s-agent"));
    pos("systemctl reset-failed k3s-agent");
    pos("systemctl daemon-reload");
    for c in [
        "ip link delete veth3f2a",
        "ip link delete cni0",
        "ip link delete flannel.1",
        "ip link delete flannel-v6.1",
        "ip link delete kube-ipvs0",
        "ip link delete flannel-wg",
        "ip link delete flannel-wg-v6",
        "ip netns delete cni-51b0c4e1",
    ] {
        pos(c);
    }
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("sudo") || c.starts_with("umount")),
        "{calls:#?}"
    );
    for v in ["iptables", "ip6tables"] {
        assert_eq!(
            std::fs::read_to_string(dir.path().join(format!("{v}.restored"))).unwrap(),
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s 192.0.2.1/32 -j ACCEPT\nCOMMIT\n"
        );
    }

    // Gone: K3s, its links, unit, env file, config and data, the agent's
    // state and the scripts themselves.
    for gone in [
        "/usr/local/bin/k3s",
        "/usr/local/bin/k3s.previous",
        "/usr/local/bin/crictl",
        "/usr/local/bin/ctr",
        "/etc/systemd/system/k3s-agent.service",
        "/etc/systemd/system/k3s-agent.service.env",
        "/etc/rancher/k3s/config.yaml",
        "/etc/rancher/k3s/k3s.yaml",
        "/var/lib/rancher/k3s/agent/containerd",
        "/var/lib/rancher/k3s/agent/etc",
        "/var/lib/rancher/k3s/server/token",
        "/var/lib/rancher/k3s/data",
        "/var/lib/rancher/k3s/.hidden",
        "/var/lib/kubelet",
        "/run/k3s",
        "/run/flannel",
        "/var/lib/cni",
        "/var/lib/firstboot-agent",
        "/etc/systemd/system/firstboot-agent-ready.service",
        KILLALL,
        AGENT_UNINSTALL,
    ] {
        assert!(
            std::fs::symlink_metadata(r.join(&gone[1..])).is_err(),
            "{gone} is still there\n{trace}"
        );
    }
    // Kept: the agent, its unit, the defaults, the baked K3s, the seed, what
    // the image put under K3s's directories, and what is not K3s's.
    for kept in [
        node_spec::AGENT_BINARY_PATH,
        "/etc/systemd/system/firstboot-agent.service",
        node_spec::DEFAULTS_PATH,
        node_spec::BAKED_K3S_PATH,
        "/var/lib/cloud/seed/nocloud/meta-data",
        "/var/lib/cloud/seed/nocloud/user-data",
        AIRGAP,
        "/etc/rancher/k3s/registries.yaml",
        "/etc/rancher/k3s/config.yaml.d/10-site.yaml",
        "/var/lib/rancher/k3s/server/manifests/site.yaml",
        "/etc/rancher/node/password",
        "/usr/local/bin/helm",
        "/usr/local/bin/kubectl",
    ] {
        assert!(
            std::fs::symlink_metadata(r.join(&kept[1..])).is_ok(),
            "{kept} was removed\n{trace}"
        );
    }
    assert_eq!(
        std::fs::read_link(r.join("usr/local/bin/kubectl")).unwrap(),
        Path::new("/opt/kubectl"),
        "somebody else's kubectl link"
    );

    // The node is provisioned again from the same seed.
    let sys = fake_for(r);
    let res = run(&Root::new(r), &sys, &RunOptions::default()).unwrap();
    assert!(res.finished, "{res:#?}");
    assert!(
        res.warnings
            .iter()
            .all(|w| !w.contains("instance-id changed")),
        "{:?}",
        res.warnings
    );
    assert!(sys
        .systemctl_calls()
        .contains(&"enable k3s-agent.service".to_owned()));
    assert_eq!(
        std::fs::read(r.join("usr/local/bin/k3s")).unwrap(),
        FAKE_K3S
    );
    assert!(r.join("var/lib/firstboot-agent/done").exists());
    let again = read(r, AGENT_UNINSTALL);
    assert!(again.contains(&format!("\n{AIRGAP}\n")), "{again}");
    assert_eq!(again, text, "the same files are kept the second time");
}
