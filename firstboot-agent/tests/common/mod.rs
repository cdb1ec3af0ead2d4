//! Helpers shared by the integration tests: a node root in a temp dir and a
//! tiny HTTP server serving a fake K3s release.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;

use k3s_standin::http::{Reply, Routes, Server};

pub const VERSION: &str = "v1.34.3+k3s1";
pub const FAKE_K3S: &[u8] = b"#!/bin/sh\necho fake k3s\n";
pub const TOKEN: &str =
    "K10aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa::server:s3cret";

/// Real public keys (ssh-keygen output), for seeds.
pub const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPOPtOnFImdUeF5WsjLaNpBgqIUaDrkKM8ROv3r9AJd2 admin@laptop";
pub const SSH_KEY_2: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBJ45pw6UbK9ATIK4hGoNep13smYJSnnW1rRNmR8CjGpRGh1d8yvUzjmlthvz++EbzPogbHVlaC1KXP/+GUAphMA= ops";

/// Lowercase hex sha256 of `data`.
pub use k3s_standin::sha256_hex;

pub fn write(root: &Path, abs: &str, content: impl AsRef<[u8]>) {
    let p = root.join(abs.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

pub fn read(root: &Path, abs: &str) -> String {
    std::fs::read_to_string(root.join(abs.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("{abs}: {e}"))
}

/// A VM-like node: network up, enough memory, cgroup v2, a baked K3s.
pub fn node_root(root: &Path, defaults_extra: &str) {
    let sha = sha256_hex(FAKE_K3S);
    write(root, node_spec::BAKED_K3S_PATH, FAKE_K3S);
    write(
        root,
        node_spec::DEFAULTS_PATH,
        format!(
            "schema: 1\nprofile: test\nk3s:\n  version: {VERSION}\n  role: server\n  sha256: {sha}\n  binary:\n    path: {}\n    sha256: {sha}\n{defaults_extra}checks:\n  network-timeout-secs: 10\n  ready-timeout-secs: 30\n",
            node_spec::BAKED_K3S_PATH
        ),
    );
    write(
        root,
        "/proc/net/fib_trie",
        "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 10.0.0.15\n        /32 host LOCAL\n",
    );
    write(root, "/proc/net/route", "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\neth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n");
    write(root, "/etc/resolv.conf", "nameserver 10.0.0.1\n");
    write(root, "/proc/meminfo", "MemTotal: 4096000 kB\n");
    write(
        root,
        "/proc/cpuinfo",
        "processor : 0\nflags : fpu hypervisor\nprocessor : 1\nflags : fpu hypervisor\n",
    );
    write(
        root,
        "/sys/fs/cgroup/cgroup.controllers",
        "cpu io memory pids\n",
    );
    write(
        root,
        "/proc/self/mountinfo",
        "22 1 0:21 / / rw shared:1 - ext4 /dev/vda1 rw\n",
    );
    write(
        root,
        "/proc/modules",
        "overlay 1 0 - Live 0x0\nbr_netfilter 1 0 - Live 0x0\n",
    );
    write(root, "/proc/uptime", "42.50 80.00\n");
}

/// The recording fake for a node root: a server's start leaves a node token,
/// as K3s does.
pub fn fake_for(root: &Path) -> firstboot_agent::system::FakeSystem {
    let mut sys = firstboot_agent::system::FakeSystem::new();
    sys.files_on_start.push((
        root.join("var/lib/rancher/k3s/server/node-token"),
        "K10xx::server:yy\n".into(),
    ));
    sys
}

/// The whole error chain of a `firstboot-agent run` on `root` that must
/// fail.
pub fn run_err(root: &Path, sys: &firstboot_agent::system::FakeSystem) -> String {
    let opts = firstboot_agent::run::RunOptions::default();
    format!(
        "{:#}",
        firstboot_agent::run::run(&firstboot_agent::rootfs::Root::new(root), sys, &opts)
            .unwrap_err()
    )
}

pub fn seed(root: &Path, instance: &str, user_data: &str) {
    write(
        root,
        "/var/lib/cloud/seed/nocloud/meta-data",
        format!("instance-id: {instance}\n"),
    );
    write(root, "/var/lib/cloud/seed/nocloud/user-data", user_data);
}

/// `seed` plus the vendor-data file next to it.
pub fn seed_with_vendor(root: &Path, instance: &str, user_data: &str, vendor_data: &str) {
    seed(root, instance, user_data);
    write(root, "/var/lib/cloud/seed/nocloud/vendor-data", vendor_data);
}

/// How the server answers one path.
#[derive(Clone, Debug)]
pub struct Route {
    pub status: u16,
    pub body: Vec<u8>,
    /// Cut the body off (after half of it) on this many first requests.
    pub cut_first: usize,
}

/// The requests a [`serve`] server answered.
#[derive(Clone, Copy)]
pub struct Hits(&'static Server);

impl Hits {
    /// How many requests named `target` (a path, or an absolute URL when
    /// the request went through a proxy).
    pub fn get(&self, target: &str) -> usize {
        self.0
            .requests()
            .iter()
            .filter(|l| l.request.target == target)
            .count()
    }
}

/// Serve `routes` on 127.0.0.1 through the suites' loopback server, until
/// the test process exits; returns the base URL and the hit counter.
pub fn serve(routes: HashMap<String, Route>) -> (String, Hits) {
    let routes = routes.into_iter().map(|(target, r)| {
        let mut replies = vec![Reply::cut_off(&r.body, r.body.len() / 2); r.cut_first];
        replies.push(Reply::Status {
            code: r.status,
            body: r.body,
        });
        (target, replies)
    });
    let server: &'static Server = Box::leak(Box::new(Routes::new(routes).serve()));
    (server.url(""), Hits(server))
}

/// A release layout for `binary` under `/rel/<version>/`.
pub fn release_routes(binary: &[u8], listed_sha: &str) -> HashMap<String, Route> {
    let dir = format!("/rel/{}", VERSION.replace('+', "%2B"));
    let mut m = HashMap::new();
    m.insert(
        format!("{dir}/k3s"),
        Route {
            status: 200,
            body: binary.to_vec(),
            cut_first: 0,
        },
    );
    m.insert(
        format!("{dir}/sha256sum-amd64.txt"),
        Route {
            status: 200,
            body: format!(
                "{}  k3s-airgap-images-amd64.tar\n{listed_sha}  k3s\n",
                "0".repeat(64)
            )
            .into_bytes(),
            cut_first: 0,
        },
    );
    m
}
