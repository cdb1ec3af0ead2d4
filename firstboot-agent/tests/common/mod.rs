//! Helpers shared by the integration tests: a node root in a temp dir and a
//! tiny HTTP server serving a fake K3s release.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

pub const VERSION: &str = "v1.34.3+k3s1";
pub const FAKE_K3S: &[u8] = b"#!/bin/sh\necho fake k3s\n";
pub const TOKEN: &str =
    "K10aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa::server:s3cret";

/// Real public keys (ssh-keygen output), for seeds.
pub const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPOPtOnFImdUeF5WsjLaNpBgqIUaDrkKM8ROv3r9AJd2 admin@laptop";
pub const SSH_KEY_2: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBJ45pw6UbK9ATIK4hGoNep13smYJSnnW1rRNmR8CjGpRGh1d8yvUzjmlthvz++EbzPogbHVlaC1KXP/+GUAphMA= ops";

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

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

#[derive(Clone, Default)]
pub struct Hits(pub Arc<Mutex<HashMap<String, usize>>>);

impl Hits {
    pub fn get(&self, path: &str) -> usize {
        self.0.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// Serve `routes` on 127.0.0.1; returns the base URL and the hit counter.
pub fn serve(routes: HashMap<String, Route>) -> (String, Hits) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let hits = Hits::default();
    let h = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            if reader.read_line(&mut first).is_err() {
                continue;
            }
            loop {
                let mut l = String::new();
                if reader.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                    break;
                }
            }
            let path = first.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let n = {
                let mut m = h.0.lock().unwrap();
                let c = m.entry(path.clone()).or_insert(0);
                *c += 1;
                *c
            };
            let route = routes.get(&path).cloned().unwrap_or(Route {
                status: 404,
                body: b"not found".to_vec(),
                cut_first: 0,
            });
            let head = format!(
                "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                route.status,
                route.body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            if n <= route.cut_first {
                let _ = stream.write_all(&route.body[..route.body.len() / 2]);
            } else {
                let _ = stream.write_all(&route.body);
            }
            let _ = stream.flush();
        }
    });
    (base, hits)
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
