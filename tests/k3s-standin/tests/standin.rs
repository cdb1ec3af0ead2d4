//! The stand-in binary, run as a process against temporary roots.
// Test helpers panic on setup failures by design.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_k3s-standin");
const EFFECTIVE: &str = "var/lib/rancher/k3s/standin/effective-config.json";

fn sha256(s: &str) -> String {
    k3s_standin::sha256_hex(s.as_bytes())
}

/// A command with no K3S_* or NOTIFY_SOCKET leaking in from the caller.
fn standin() -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("K3S_") || k == "NOTIFY_SOCKET" {
            c.env_remove(k);
        }
    }
    c
}

/// A stand-in node started against its own root, with a notify socket.
struct Node {
    child: Child,
    dir: tempfile::TempDir,
    root: PathBuf,
    notify: UnixDatagram,
}

impl Node {
    fn root(&self) -> &Path {
        &self.root
    }

    fn spawn(role: &str, prepare: impl FnOnce(&Path), args: &[&str], env: &[(&str, &str)]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        prepare(&root);
        let sock = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&sock).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let stderr = std::fs::File::create(dir.path().join("stderr")).unwrap();
        let mut cmd = standin();
        cmd.arg(role)
            .arg("--root")
            .arg(&root)
            .args(args)
            .env("NOTIFY_SOCKET", &sock)
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        Node {
            child,
            dir,
            root,
            notify,
        }
    }

    /// Wait for READY=1 (panics with the log if the process exits instead).
    fn ready(&mut self) -> &mut Self {
        let mut buf = [0u8; 256];
        match self.notify.recv(&mut buf) {
            Ok(n) => assert_eq!(&buf[..n], b"READY=1"),
            Err(e) => panic!(
                "no READY=1 ({e}); exit {:?}; log:\n{}",
                self.child.try_wait(),
                self.log()
            ),
        }
        self
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    fn record(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.root().join(EFFECTIVE)).unwrap())
            .unwrap()
    }

    fn api_port(&self) -> u16 {
        self.record()["api_port"].as_u64().unwrap() as u16
    }

    fn read(&self, p: &str) -> String {
        std::fs::read_to_string(self.root().join(p.trim_start_matches('/'))).unwrap()
    }

    fn mode(&self, p: &str) -> u32 {
        std::fs::metadata(self.root().join(p.trim_start_matches('/')))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < limit,
                "still running after {limit:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn terminate(&mut self) -> ExitStatus {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).unwrap();
        self.wait_exit(Duration::from_secs(10))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write(root: &Path, p: &str, text: &str) {
    let path = root.join(p.trim_start_matches('/'));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

const LOCAL: [&str; 4] = ["--bind-address", "127.0.0.1", "--https-listen-port", "0"];

#[test]
fn version_and_help() {
    let out = standin().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "k3s version v1.34.3+k3s1 (abcdef12)\ngo version go1.24.4\n"
    );
    let out = standin()
        .arg("--version")
        .env("K3S_STANDIN_VERSION", "v1.33.1+k3s1")
        .output()
        .unwrap();
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .starts_with("k3s version v1.33.1+k3s1 (abcdef12)\n"));
    let out = standin().arg("--help").output().unwrap();
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .contains("stand-in for tests, not K3s"));
    let out = standin().arg("kubectl").output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn server_writes_token_kubeconfig_record_and_listens() {
    let mut s = Node::spawn(
        "server",
        |root| {
            write(root, "/etc/rancher/k3s/config.yaml", "token: s3cret\nwrite-kubeconfig-mode: \"0644\"\nnode-name: srv1\nnode-label: [a=1]\n");
            write(
                root,
                "/etc/rancher/k3s/config.yaml.d/50-extra.yaml",
                "node-label+: [b=2]\ncluster-init: true\n",
            );
        },
        &[&LOCAL[..], &["--node-label", "c=3"]].concat(),
        &[("K3S_NODE_NAME", "ignored-env")],
    );
    s.ready();
    let port = s.api_port();

    let node_token = s.read("/var/lib/rancher/k3s/server/node-token");
    let (prefix, rest) = node_token.split_at(3);
    assert_eq!(prefix, "K10");
    let (hash, cred) = rest.split_once("::").unwrap();
    assert_eq!(hash.len(), 64);
    assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(cred, "server:s3cret\n");
    assert_eq!(
        hash,
        sha256(&s.read("/var/lib/rancher/k3s/server/tls/server-ca.crt"))
    );
    assert_eq!(s.read("/var/lib/rancher/k3s/server/token"), node_token);
    assert_eq!(s.mode("/var/lib/rancher/k3s/server/node-token"), 0o600);
    assert_eq!(s.mode("/var/lib/rancher/k3s/server/token"), 0o600);

    assert_eq!(s.mode("/etc/rancher/k3s/k3s.yaml"), 0o644);
    let kc: serde_yaml::Value = serde_yaml::from_str(&s.read("/etc/rancher/k3s/k3s.yaml")).unwrap();
    assert_eq!(kc["kind"].as_str(), Some("Config"));
    assert_eq!(
        kc["clusters"][0]["cluster"]["server"].as_str(),
        Some(format!("https://127.0.0.1:{port}").as_str())
    );

    let rec = s.record();
    assert_eq!(s.mode(&format!("/{EFFECTIVE}")), 0o600);
    assert_eq!(rec["status"], "running");
    assert_eq!(rec["role"], "server");
    assert_eq!(rec["version"], "v1.34.3+k3s1");
    assert_eq!(rec["node_name"], "srv1");
    assert_eq!(rec["pid"].as_u64(), Some(u64::from(s.child.id())));
    assert_eq!(rec["cluster_init"], true);
    assert_eq!(
        rec["config"]["node-label"],
        serde_json::json!(["a=1", "b=2", "c=3"])
    );
    assert_eq!(
        rec["sources"]["node-name"][0],
        "file:/etc/rancher/k3s/config.yaml"
    );
    assert_eq!(rec["token"]["present"], true);
    assert_eq!(rec["token"]["secret_sha256"], sha256("s3cret"));
    assert_eq!(rec["node_token_sha256"], sha256(node_token.trim_end()));
    assert_eq!(rec["kubeconfig_mode"], "0644");
    assert_eq!(rec["argv"][1], "server");
    let text = s.read(&format!("/{EFFECTIVE}"));
    assert!(
        !text.contains("s3cret"),
        "the token leaked into the record:\n{text}"
    );

    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut line = String::new();
    BufReader::new(&mut conn).read_line(&mut line).unwrap();
    assert_eq!(line, "k3s-standin server srv1\n");

    assert_eq!(s.terminate().code(), Some(0), "{}", s.log());
    assert!(
        s.log()
            .contains("level=info msg=\"Received SIGTERM, shutting down\""),
        "{}",
        s.log()
    );
}

#[test]
fn server_defaults_generated_token_kept_across_restarts() {
    let mut s = Node::spawn("server", |_| {}, &LOCAL, &[]);
    s.ready();
    assert_eq!(s.mode("/etc/rancher/k3s/k3s.yaml"), 0o600);
    let first = s.read("/var/lib/rancher/k3s/server/node-token");
    assert_eq!(s.record()["token"]["source"], "generated");
    assert_eq!(s.terminate().code(), Some(0));

    // Same root again: the token and CA are reused, as K3s does.
    let root = s.root().to_path_buf();
    let mut again = Node::spawn(
        "server",
        |_| {},
        &[&["--root", root.to_str().unwrap()][..], &LOCAL].concat(),
        &[],
    );
    again.ready();
    assert_eq!(
        std::fs::read_to_string(root.join("var/lib/rancher/k3s/server/node-token")).unwrap(),
        first
    );
    let rec: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join(EFFECTIVE)).unwrap()).unwrap();
    assert!(
        rec["token"]["source"]
            .as_str()
            .unwrap()
            .starts_with("existing "),
        "{rec}"
    );
    assert_eq!(again.terminate().code(), Some(0));
}

#[test]
fn kubeconfig_path_and_mode_from_flags_and_env() {
    let mut s = Node::spawn(
        "server",
        |_| {},
        &[
            &LOCAL[..],
            &["--write-kubeconfig", "/root/kube.yaml", "--token=t"],
        ]
        .concat(),
        &[("K3S_KUBECONFIG_MODE", "640")],
    );
    s.ready();
    assert_eq!(s.mode("/root/kube.yaml"), 0o640);
    assert_eq!(
        s.record()["sources"]["write-kubeconfig-mode"][0],
        "env:K3S_KUBECONFIG_MODE"
    );
}

#[test]
fn agent_joins_a_server_with_its_node_token() {
    let mut s = Node::spawn(
        "server",
        |_| {},
        &[&LOCAL[..], &["--node-name", "srv"]].concat(),
        &[],
    );
    s.ready();
    let port = s.api_port();
    let node_token = s.read("/var/lib/rancher/k3s/server/node-token");
    let url = format!("https://127.0.0.1:{port}");

    // As firstboot-agent sets it up: env file (token, URL) + config.yaml.
    let mut a = Node::spawn(
        "agent",
        |root| {
            write(
                root,
                "/etc/rancher/k3s/config.yaml",
                "node-name: worker1\nnode-label: [role=worker]\n",
            )
        },
        &[],
        &[
            ("K3S_URL", url.as_str()),
            ("K3S_TOKEN", node_token.trim_end()),
        ],
    );
    a.ready();
    let rec = a.record();
    assert_eq!(rec["status"], "running");
    assert_eq!(rec["role"], "agent");
    assert_eq!(rec["server_url"], url);
    assert_eq!(rec["join"]["ok"], true, "{rec}");
    assert_eq!(rec["join"]["server_line"], "k3s-standin server srv");
    assert_eq!(rec["join"]["response"], "ok");
    assert_eq!(rec["token"]["source"], "env:K3S_TOKEN");
    // "The worker used the server's token":
    assert_eq!(rec["token"]["sha256"], s.record()["node_token_sha256"]);
    assert_eq!(
        rec["token"]["secret_sha256"],
        s.record()["token"]["secret_sha256"]
    );

    let joins = s.read("/var/lib/rancher/k3s/standin/joins.jsonl");
    let entry: Value = serde_json::from_str(joins.lines().last().unwrap()).unwrap();
    assert_eq!(entry["node_name"], "worker1");
    assert_eq!(entry["role"], "agent");
    assert_eq!(entry["accepted"], true);
    assert_eq!(a.terminate().code(), Some(0));
}

#[test]
fn agent_with_a_wrong_token_is_refused() {
    let mut s = Node::spawn(
        "server",
        |_| {},
        &[&LOCAL[..], &["--token", "right"]].concat(),
        &[],
    );
    s.ready();
    let url = format!("https://127.0.0.1:{}", s.api_port());
    let mut a = Node::spawn(
        "agent",
        |_| {},
        &["--server", url.as_str(), "--token", "wrong"],
        &[],
    );
    assert!(!a.wait_exit(Duration::from_secs(20)).success());
    assert!(
        a.log()
            .contains("level=fatal msg=\"failed to join the cluster"),
        "{}",
        a.log()
    );
    assert!(a.log().contains("token mismatch"), "{}", a.log());
    let rec = a.record();
    assert_eq!(rec["status"], "failed");
    assert_eq!(rec["join"]["ok"], false);
    let joins = s.read("/var/lib/rancher/k3s/standin/joins.jsonl");
    assert!(joins.contains("\"accepted\":false"), "{joins}");
}

#[test]
fn ha_server_joins_the_first_server_and_shares_its_ca() {
    let mut first = Node::spawn(
        "server",
        |_| {},
        &[&LOCAL[..], &["--cluster-init", "--token", "ha"]].concat(),
        &[],
    );
    first.ready();
    let token = first.read("/var/lib/rancher/k3s/server/node-token");
    let url = format!("https://127.0.0.1:{}", first.api_port());
    let mut second = Node::spawn(
        "server",
        |root| {
            write(
                root,
                "/etc/rancher/k3s/config.yaml",
                &format!("server: {url}\ntoken: {}\n", token.trim_end()),
            )
        },
        &LOCAL,
        &[],
    );
    second.ready();
    assert_eq!(second.record()["join"]["ok"], true);
    assert_eq!(second.read("/var/lib/rancher/k3s/server/node-token"), token);
}

#[test]
fn agent_dials_a_plain_listener() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        c.write_all(b"hello from a test listener\n").unwrap();
    });
    let url = format!("https://127.0.0.1:{port}");
    let mut a = Node::spawn(
        "agent",
        |_| {},
        &["--server", url.as_str()],
        &[("K3S_TOKEN", "x")],
    );
    a.ready();
    server.join().unwrap();
    let rec = a.record();
    assert_eq!(rec["join"]["ok"], true);
    assert_eq!(rec["join"]["address"], format!("127.0.0.1:{port}"));
    assert_eq!(rec["join"]["server_line"], "hello from a test listener");
    assert_eq!(rec["token"]["sha256"], sha256("x"));
}

#[test]
fn agent_without_server_or_token_fails_clearly() {
    let mut a = Node::spawn("agent", |_| {}, &["--token", "x"], &[]);
    assert_eq!(a.wait_exit(Duration::from_secs(10)).code(), Some(1));
    assert!(
        a.log().contains("level=fatal msg=\"--server is required\""),
        "{}",
        a.log()
    );
    assert_eq!(a.record()["status"], "failed");

    let mut a = Node::spawn("agent", |_| {}, &["--server", "https://127.0.0.1:1"], &[]);
    assert_eq!(a.wait_exit(Duration::from_secs(10)).code(), Some(1));
    assert!(
        a.log().contains("level=fatal msg=\"--token is required\""),
        "{}",
        a.log()
    );

    let mut a = Node::spawn(
        "agent",
        |_| {},
        &["--server", "http://127.0.0.1:1", "--token", "x"],
        &[],
    );
    assert_eq!(a.wait_exit(Duration::from_secs(10)).code(), Some(1));
    assert!(a.log().contains("must begin with https://"), "{}", a.log());

    let mut s = Node::spawn(
        "server",
        |root| {
            write(
                root,
                "/etc/rancher/k3s/config.yaml",
                "write-kubeconfig-mode: rw\n",
            )
        },
        &LOCAL,
        &[],
    );
    assert_eq!(s.wait_exit(Duration::from_secs(10)).code(), Some(1));
    assert!(
        s.log().contains("invalid write-kubeconfig-mode"),
        "{}",
        s.log()
    );
}

#[test]
fn agent_gives_up_when_nothing_listens() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("https://127.0.0.1:{port}");
    let start = Instant::now();
    let mut a = Node::spawn(
        "agent",
        |root| write(root, "/var/lib/rancher/token", "K10abc::server:x\n"),
        &["--server", url.as_str()],
        &[
            ("K3S_TOKEN_FILE", "/var/lib/rancher/token"),
            ("K3S_STANDIN_DIAL_TIMEOUT", "1.5"),
        ],
    );
    assert_eq!(a.wait_exit(Duration::from_secs(15)).code(), Some(1));
    assert!(start.elapsed() < Duration::from_secs(10));
    let rec = a.record();
    assert_eq!(rec["join"]["ok"], false);
    assert!(rec["join"]["attempts"].as_u64().unwrap() >= 2, "{rec}");
    assert_eq!(rec["token"]["source"], "token-file:/var/lib/rancher/token");
    assert_eq!(rec["token"]["secret_sha256"], sha256("x"));
}

// ---- the mirror -------------------------------------------------------

/// One HTTP/1.1 GET: (status, Content-Length, body received).
fn get(base: &str, path: &str) -> (u16, Option<usize>, Vec<u8>) {
    let addr = base.strip_prefix("http://").unwrap();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: test\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = c.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .map(|v| v.trim().parse().unwrap());
    (status, len, raw[split + 4..].to_vec())
}

fn fake_binary(dir: &Path) -> PathBuf {
    let p = dir.join("fake-k3s");
    std::fs::write(
        &p,
        (0..200_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    p
}

#[test]
fn mirror_serves_both_url_forms_with_matching_sums() {
    let d = tempfile::tempdir().unwrap();
    let bin = fake_binary(d.path());
    let release = d.path().join("mirror/v1.34.3+k3s1");
    std::fs::create_dir_all(&release).unwrap();
    std::fs::write(release.join("k3s-airgap-images-amd64.tar.zst"), b"images").unwrap();
    let p = k3s_standin::mirror::prepare(&d.path().join("mirror"), "v1.34.3+k3s1", &bin).unwrap();
    let m = k3s_standin::mirror::serve(
        &d.path().join("mirror"),
        "127.0.0.1:0",
        Default::default(),
        false,
    )
    .unwrap();
    let base = m.base_url();

    let (status, _, sums) = get(&base, "/v1.34.3%2Bk3s1/sha256sum-amd64.txt");
    assert_eq!(status, 200);
    let sums = String::from_utf8(sums).unwrap();
    assert_eq!(
        sums,
        format!(
            "{}  k3s\n{}  k3s-airgap-images-amd64.tar.zst\n",
            p.sha256,
            sha256("images")
        )
    );
    for path in ["/v1.34.3%2Bk3s1/k3s", "/v1.34.3+k3s1/k3s"] {
        let (status, len, body) = get(&base, path);
        assert_eq!(status, 200, "{path}");
        assert_eq!(len, Some(body.len()));
        assert_eq!(k3s_standin::sha256_hex(&body), p.sha256, "{path}");
    }
    assert_eq!(get(&base, "/v9.9.9%2Bk3s1/k3s").0, 404);
    assert_eq!(get(&base, "/../../etc/passwd").0, 404);
    assert_eq!(m.requests().len(), 5);
}

#[test]
fn mirror_faults() {
    use k3s_standin::mirror::{prepare, serve, Faults};
    let d = tempfile::tempdir().unwrap();
    let bin = fake_binary(d.path());
    let dir = d.path().join("mirror");
    let p = prepare(&dir, "v1.34.3+k3s1", &bin).unwrap();
    let url = "/v1.34.3%2Bk3s1/k3s";

    let m = serve(
        &dir,
        "127.0.0.1:0",
        Faults {
            corrupt: true,
            ..Faults::default()
        },
        false,
    )
    .unwrap();
    let (status, len, body) = get(&m.base_url(), url);
    assert_eq!((status, len), (200, Some(body.len())));
    assert_ne!(k3s_standin::sha256_hex(&body), p.sha256);
    assert_eq!(
        get(&m.base_url(), "/v1.34.3+k3s1/sha256sum-amd64.txt").2,
        format!("{}  k3s\n", p.sha256).into_bytes()
    );

    let m = serve(
        &dir,
        "127.0.0.1:0",
        Faults {
            cut_after: Some(70_000),
            ..Faults::default()
        },
        false,
    )
    .unwrap();
    let (status, len, body) = get(&m.base_url(), url);
    assert_eq!(status, 200);
    assert!(len.unwrap() > 200_000);
    assert_eq!(body.len(), 70_000);

    let m = serve(
        &dir,
        "127.0.0.1:0",
        Faults {
            fail_first: 2,
            ..Faults::default()
        },
        false,
    )
    .unwrap();
    let statuses: Vec<u16> = (0..3).map(|_| get(&m.base_url(), url).0).collect();
    assert_eq!(statuses, vec![503, 503, 200]);
    assert_eq!(
        m.requests().iter().map(|r| r.status).collect::<Vec<_>>(),
        statuses
    );
}

#[test]
fn serve_mirror_and_prepare_mirror_commands() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("mirror");
    let out = standin()
        .args([
            "prepare-mirror",
            "--dir",
            dir.to_str().unwrap(),
            "--version",
            "v1.33.1+k3s1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (v, sum) = stdout.trim_end().split_once(' ').unwrap();
    assert_eq!(v, "v1.33.1+k3s1");
    // The copy reports the version it is served as.
    let copy = dir.join("v1.33.1+k3s1/k3s");
    assert_eq!(k3s_standin::sha256_hex(&std::fs::read(&copy).unwrap()), sum);
    assert_eq!(
        std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let mut cmd = Command::new(&copy);
    cmd.env_remove("K3S_STANDIN_VERSION");
    let version = cmd.arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8(version.stdout).unwrap(),
        "k3s version v1.33.1+k3s1 (abcdef12)\ngo version go1.24.4\n"
    );

    let mut child = standin()
        .args([
            "serve-mirror",
            "--dir",
            dir.to_str().unwrap(),
            "--version",
            "v1.34.3+k3s1",
            "--fail-first",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let base = first.trim_end().to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    assert_eq!(get(&base, "/v1.34.3%2Bk3s1/sha256sum-amd64.txt").0, 503);
    let (status, _, sums) = get(&base, "/v1.34.3%2Bk3s1/sha256sum-amd64.txt");
    assert_eq!(status, 200);
    let listed = String::from_utf8(sums).unwrap();
    let (_, _, body) = get(&base, "/v1.33.1+k3s1/k3s");
    assert_eq!(k3s_standin::sha256_hex(&body), sum);
    let (_, _, body) = get(&base, "/v1.34.3+k3s1/k3s");
    assert_eq!(listed, format!("{}  k3s\n", k3s_standin::sha256_hex(&body)));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn sigterm_while_an_agent_is_still_dialing() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("https://127.0.0.1:{port}");
    let mut a = Node::spawn(
        "agent",
        |_| {},
        &["--server", url.as_str(), "--token", "x"],
        &[],
    );
    let start = Instant::now();
    while !a.log().contains("Waiting to connect") {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", a.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(a.terminate().code(), Some(0), "{}", a.log());
    assert!(start.elapsed() < Duration::from_secs(10));
}
