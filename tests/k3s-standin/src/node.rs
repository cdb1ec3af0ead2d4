//! `k3s server` and `k3s agent`: the startup work, up to the point where
//! K3s would notify systemd.
//!
//! Server: resolve or generate the token, write the fake CA, `node-token`,
//! `token`, `agent-token` and the kubeconfig, listen on the API port and
//! answer each connection with `k3s-standin server <node-name>\n`.
//! Agent (and a server joining with `server:`): dial the server URL's
//! host:port until it answers, then, if it is a stand-in, prove the token
//! (a sha256 of its secret) and learn the cluster CA.
//!
//! Either way the result is recorded in [`EFFECTIVE_CONFIG`].

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::config::{self, CommandLine, Merged, Role};
use crate::paths::Root;
use crate::token::{self, Token};
use crate::{log, sha256_hex};

pub const EFFECTIVE_CONFIG: &str = "/var/lib/rancher/k3s/standin/effective-config.json";
/// One JSON object a line per join attempt a server answered.
pub const JOINS_LOG: &str = "/var/lib/rancher/k3s/standin/joins.jsonl";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/rancher/k3s";
pub const DEFAULT_KUBECONFIG: &str = "/etc/rancher/k3s/k3s.yaml";
pub const DEFAULT_API_PORT: u16 = 6443;
/// Greeting prefix a stand-in server sends on every connection.
pub const GREETING: &str = "k3s-standin server";
/// Keys whose values never go into the record.
const SECRET_KEYS: [&str; 3] = ["token", "agent-token", "datastore-endpoint"];

/// How long and how often an agent dials its server.
#[derive(Debug, Clone, Copy)]
pub struct DialPolicy {
    pub timeout: Duration,
    pub interval: Duration,
}

impl Default for DialPolicy {
    fn default() -> Self {
        DialPolicy {
            timeout: Duration::from_secs(60),
            interval: Duration::from_secs(1),
        }
    }
}

/// What the stand-in is started with.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub root: Root,
    pub role: Role,
    pub command_line: CommandLine,
    pub argv: Vec<String>,
    pub dial: DialPolicy,
}

/// A started node: its record, and for a server the bound API address.
#[derive(Debug)]
pub struct Started {
    pub record: Value,
    pub record_path: PathBuf,
    pub api_addr: Option<SocketAddr>,
}

/// A failure K3s would report with `level=fatal`; the record was written
/// when the config could be read.
#[derive(Debug)]
pub struct Fatal(pub String);

/// The outcome of dialing a server.
#[derive(Debug, Clone, Default)]
pub struct DialResult {
    pub address: String,
    pub ok: bool,
    pub attempts: u32,
    pub elapsed_ms: u64,
    pub server_line: Option<String>,
    pub response: Option<String>,
    pub error: Option<String>,
    /// The cluster CA a stand-in server sent after accepting the token.
    pub cluster_ca: Option<String>,
}

impl DialResult {
    fn to_json(&self) -> Value {
        json!({
            "address": self.address,
            "ok": self.ok,
            "attempts": self.attempts,
            "elapsed_ms": self.elapsed_ms,
            "server_line": self.server_line,
            "response": self.response,
            "error": self.error,
        })
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.to_lowercase())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The token given by `token`/`token-file` (or `agent-token`/`agent-token-file`).
fn resolve_token(root: &Root, m: &Merged, key: &str) -> Result<Option<(Token, String)>, String> {
    if let Some(t) = m.string(key) {
        let src = m.sources.get(key).map(|s| s.join(",")).unwrap_or_default();
        return Ok(Some((Token::parse(&t), src)));
    }
    let file_key = format!("{key}-file");
    if let Some(f) = m.string(&file_key) {
        let text = std::fs::read_to_string(root.path(&f))
            .map_err(|e| format!("failed to read token file {f}: {e}"))?;
        if text.trim().is_empty() {
            return Err(format!("token file {f} is empty"));
        }
        return Ok(Some((Token::parse(&text), format!("{file_key}:{f}"))));
    }
    Ok(None)
}

fn token_json(t: Option<&(Token, String)>) -> Value {
    match t {
        None => json!({ "present": false }),
        Some((t, source)) => json!({
            "present": true,
            "source": source,
            "sha256": sha256_hex(t.raw.as_bytes()),
            "secret_sha256": sha256_hex(t.secret.as_bytes()),
            "ca_hash": t.ca_hash,
        }),
    }
}

/// `host:port` of an `https://host[:port][/…]` URL.
pub fn url_host_port(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("server url {url:?} must begin with https://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("server url {url:?} has no host"));
    }
    let has_port = match authority.rfind(']') {
        Some(i) => authority[i..].contains(':'),
        None => authority.contains(':'),
    };
    Ok(if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:{DEFAULT_API_PORT}")
    })
}

/// Dial `url` until it answers or `policy.timeout` passes; with a stand-in
/// server, present the token.
pub fn join(url: &str, tok: &Token, node_name: &str, role: Role, policy: DialPolicy) -> DialResult {
    let start = Instant::now();
    let mut r = DialResult::default();
    let address = match url_host_port(url) {
        Ok(a) => a,
        Err(e) => {
            r.error = Some(e);
            return r;
        }
    };
    r.address = address.clone();
    loop {
        r.attempts += 1;
        let attempt = (|| -> Result<Result<(), String>, String> {
            let addrs: Vec<SocketAddr> = address
                .to_socket_addrs()
                .map_err(|e| format!("resolving {address}: {e}"))?
                .collect();
            let mut last = format!("{address} resolved to no address");
            for addr in addrs {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    Ok(stream) => return Ok(handshake(stream, tok, node_name, role, &mut r)),
                    Err(e) => last = format!("dial tcp {addr}: {e}"),
                }
            }
            Err(last)
        })();
        match attempt {
            Ok(Ok(())) => {
                r.ok = true;
                r.error = None;
                break;
            }
            // The server answered and refused: retrying will not help.
            Ok(Err(refused)) => {
                r.error = Some(refused);
                break;
            }
            Err(e) => {
                if r.attempts == 1 || r.attempts % 10 == 0 {
                    log::info(&format!("Waiting to connect to {address}: {e}"));
                }
                r.error = Some(e);
            }
        }
        if start.elapsed() + policy.interval > policy.timeout {
            break;
        }
        std::thread::sleep(policy.interval);
    }
    r.elapsed_ms = start.elapsed().as_millis() as u64;
    r
}

/// After connecting: read the greeting; a stand-in gets `join …` and
/// answers `ok …` or `denied: …`. Anything else counts as reached.
fn handshake(
    stream: TcpStream,
    tok: &Token,
    node_name: &str,
    role: Role,
    r: &mut DialResult,
) -> Result<(), String> {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return Ok(()),
    });
    let mut line = String::new();
    let _ = reader.by_ref().take(4096).read_line(&mut line);
    let line = line.trim_end().to_owned();
    r.server_line = (!line.is_empty()).then(|| line.clone());
    if !line.starts_with(GREETING) {
        return Ok(());
    }
    let mut w = &stream;
    let request = format!(
        "join {node_name} role={} secret-sha256={} ca-sha256={}\n",
        role.as_str(),
        sha256_hex(tok.secret.as_bytes()),
        tok.ca_hash.as_deref().unwrap_or("-")
    );
    if let Err(e) = w.write_all(request.as_bytes()) {
        return Err(format!("sending the join request: {e}"));
    }
    let mut resp = String::new();
    let _ = reader.take(64 * 1024).read_line(&mut resp);
    let resp = resp.trim_end();
    let mut words = resp.split(' ');
    match words.next() {
        Some("ok") => {
            r.cluster_ca = words
                .find_map(|w| w.strip_prefix("ca-pem-hex="))
                .and_then(|h| hex::decode(h).ok())
                .and_then(|b| String::from_utf8(b).ok());
            r.response = Some("ok".into());
            Ok(())
        }
        _ => {
            r.response = Some(resp.to_owned());
            Err(if resp.is_empty() {
                "the server closed the connection without answering the join request".to_owned()
            } else {
                format!("the server refused to join this node: {resp}")
            })
        }
    }
}

/// What a stand-in server checks joins against.
#[derive(Debug)]
struct ServerState {
    node_name: String,
    secret_hashes: Vec<String>,
    ca_pem: String,
    ca_hash: String,
    joins_log: PathBuf,
    log_lock: Mutex<()>,
}

fn serve_api(listener: TcpListener, state: Arc<ServerState>) {
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let state = Arc::clone(&state);
        std::thread::spawn(move || answer(stream, &state));
    }
}

fn answer(mut stream: TcpStream, st: &ServerState) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    if stream
        .write_all(format!("{GREETING} {}\n", st.node_name).as_bytes())
        .is_err()
    {
        return;
    }
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    if BufReader::new(clone)
        .take(4096)
        .read_line(&mut line)
        .is_err()
        || !line.starts_with("join ")
    {
        return;
    }
    let mut words = line.split_whitespace().skip(1);
    let node = words.next().unwrap_or_default().to_owned();
    let (mut role, mut secret, mut ca) = (String::new(), String::new(), String::new());
    for w in words {
        if let Some(v) = w.strip_prefix("role=") {
            role = v.to_owned();
        } else if let Some(v) = w.strip_prefix("secret-sha256=") {
            secret = v.to_owned();
        } else if let Some(v) = w.strip_prefix("ca-sha256=") {
            ca = v.to_owned();
        }
    }
    let refusal = if !st.secret_hashes.contains(&secret) {
        Some("token mismatch")
    } else if ca != "-" && ca != st.ca_hash {
        Some("token CA hash does not match the cluster CA")
    } else {
        None
    };
    let reply = match refusal {
        None => format!("ok ca-pem-hex={}\n", hex::encode(st.ca_pem.as_bytes())),
        Some(why) => format!("denied: {why}\n"),
    };
    let _ = stream.write_all(reply.as_bytes());
    match refusal {
        None => log::info(&format!("Node {node} ({role}) joined from {peer}")),
        Some(why) => log::warn(&format!("Refused node {node} ({role}) from {peer}: {why}")),
    }
    let entry = json!({
        "time": log::rfc3339(log::now_secs()),
        "peer": peer,
        "node_name": node,
        "role": role,
        "secret_sha256": secret,
        "accepted": refusal.is_none(),
        "reason": refusal,
    });
    let _guard = st.log_lock.lock();
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&st.joins_log)
        .and_then(|mut f| writeln!(f, "{entry}"));
    if let Err(e) = appended {
        log::warn(&format!(
            "recording the join in {}: {e}",
            st.joins_log.display()
        ));
    }
}

/// The merged config with secret values replaced by their sha256.
fn redacted(m: &Merged) -> Value {
    let mut out = Map::new();
    for (k, v) in &m.values {
        let v = if SECRET_KEYS.contains(&k.as_str()) {
            json!(format!(
                "<redacted sha256:{}>",
                sha256_hex(config::as_string(v).as_bytes())
            ))
        } else {
            v.clone()
        };
        out.insert(k.clone(), v);
    }
    Value::Object(out)
}

fn write_record(root: &Root, record: &Value) -> std::io::Result<PathBuf> {
    let mut text = serde_json::to_string_pretty(record).unwrap_or_default();
    text.push('\n');
    root.write_atomic(EFFECTIVE_CONFIG, text.as_bytes(), 0o600)
}

/// Do the startup work of `inv.role` and record it. Failures are recorded
/// too (`"status": "failed"`) before they are returned.
pub fn start(inv: &Invocation, env: &dyn Fn(&str) -> Option<String>) -> Result<Started, Fatal> {
    let (version, version_source) = crate::version::current();
    let now = log::now_secs();
    let mut rec = Map::new();
    rec.insert(
        "standin".into(),
        json!("k3s-standin: a stand-in for tests, not K3s"),
    );
    rec.insert("status".into(), json!("starting"));
    rec.insert("role".into(), json!(inv.role.as_str()));
    rec.insert("version".into(), json!(version));
    rec.insert("version_source".into(), json!(version_source.as_str()));
    rec.insert("pid".into(), json!(std::process::id()));
    rec.insert("started_at".into(), json!(log::rfc3339(now)));
    rec.insert("started_at_unix".into(), json!(now));
    rec.insert("argv".into(), json!(inv.argv));
    rec.insert("root".into(), json!(inv.root.dir().display().to_string()));
    rec.insert("notify_socket".into(), json!(env("NOTIFY_SOCKET")));
    log::info(&format!(
        "Starting k3s {} {version} ({}) [k3s-standin: a stand-in for tests, not K3s]",
        inv.role.as_str(),
        crate::version::COMMIT
    ));

    let result = start_inner(inv, env, &mut rec);
    match result {
        Ok(api_addr) => {
            rec.insert("status".into(), json!("running"));
            let record = Value::Object(rec);
            let record_path = write_record(&inv.root, &record)
                .map_err(|e| Fatal(format!("writing {EFFECTIVE_CONFIG}: {e}")))?;
            Ok(Started {
                record,
                record_path,
                api_addr,
            })
        }
        Err(msg) => {
            rec.insert("status".into(), json!("failed"));
            rec.insert("error".into(), json!(msg));
            if let Err(e) = write_record(&inv.root, &Value::Object(rec)) {
                log::error(&format!("writing {EFFECTIVE_CONFIG}: {e}"));
            }
            Err(Fatal(msg))
        }
    }
}

fn start_inner(
    inv: &Invocation,
    env: &dyn Fn(&str) -> Option<String>,
    rec: &mut Map<String, Value>,
) -> Result<Option<SocketAddr>, String> {
    let root = &inv.root;
    let m = config::merge(root, inv.role, &inv.command_line, env)?;
    for w in &m.warnings {
        log::warn(w);
    }
    rec.insert("config_files".into(), json!(m.files));
    rec.insert("config".into(), redacted(&m));
    rec.insert("sources".into(), json!(m.sources));
    rec.insert("warnings".into(), json!(m.warnings));
    let node_name = m.string("node-name").unwrap_or_else(hostname);
    rec.insert("node_name".into(), json!(node_name));
    let server_url = m.string("server");
    rec.insert("server_url".into(), json!(server_url));
    let given = resolve_token(root, &m, "token")?;
    rec.insert("token".into(), token_json(given.as_ref()));

    match inv.role {
        Role::Agent => {
            let url = server_url.ok_or("--server is required")?;
            let (tok, _) = given.ok_or("--token is required")?;
            url_host_port(&url)?;
            log::info(&format!("Connecting to server {url} as node {node_name}"));
            let dial = join(&url, &tok, &node_name, Role::Agent, inv.dial);
            rec.insert("join".into(), dial.to_json());
            if !dial.ok {
                return Err(format!(
                    "failed to join the cluster at {url}: {}",
                    dial.error.unwrap_or_else(|| "no answer".into())
                ));
            }
            log::info(&format!(
                "Connected to server {} ({})",
                dial.address,
                dial.server_line.as_deref().unwrap_or("no greeting")
            ));
            Ok(None)
        }
        Role::Server => start_server(inv, &m, &node_name, server_url, given, rec).map(Some),
    }
}

fn start_server(
    inv: &Invocation,
    m: &Merged,
    node_name: &str,
    server_url: Option<String>,
    given: Option<(Token, String)>,
    rec: &mut Map<String, Value>,
) -> Result<SocketAddr, String> {
    let root = &inv.root;
    let data_dir = m
        .string("data-dir")
        .unwrap_or_else(|| DEFAULT_DATA_DIR.to_owned());
    let server_dir = format!("{}/server", data_dir.trim_end_matches('/'));
    let token_path = format!("{server_dir}/token");
    let node_token_path = format!("{server_dir}/node-token");
    let agent_token_path = format!("{server_dir}/agent-token");
    let ca_path = format!("{server_dir}/tls/server-ca.crt");
    let io = |what: &str, p: &str, e: std::io::Error| format!("{what} {p}: {e}");

    // Joining another server: dial it first, as an agent would.
    let mut cluster_ca = None;
    if let Some(url) = &server_url {
        let (tok, _) = given
            .as_ref()
            .ok_or("--token is required to join a cluster (--server is set)")?;
        url_host_port(url)?;
        log::info(&format!(
            "Joining the cluster at {url} as server {node_name}"
        ));
        let dial = join(url, tok, node_name, Role::Server, inv.dial);
        rec.insert("join".into(), dial.to_json());
        if !dial.ok {
            return Err(format!(
                "failed to join the cluster at {url}: {}",
                dial.error.unwrap_or_else(|| "no answer".into())
            ));
        }
        cluster_ca = dial.cluster_ca;
    }

    // The token: given, else the one from an earlier start, else new.
    let existing = std::fs::read_to_string(root.path(&token_path))
        .ok()
        .filter(|t| !t.trim().is_empty());
    let (tok, source) = match (given, existing) {
        (Some(g), _) => g,
        (None, Some(t)) => (Token::parse(&t), format!("existing {token_path}")),
        (None, None) => (
            Token::parse(&token::generate().map_err(|e| format!("generating a token: {e}"))?),
            "generated".to_owned(),
        ),
    };
    rec.insert("token".into(), token_json(Some(&(tok.clone(), source))));

    // The CA: the cluster's when joined, else kept across restarts.
    let ca_pem = match cluster_ca {
        Some(ca) => ca,
        None => match std::fs::read_to_string(root.path(&ca_path)) {
            Ok(ca) if !ca.is_empty() => ca,
            _ => token::fake_ca().map_err(|e| format!("generating the CA: {e}"))?,
        },
    };
    root.write_atomic(&ca_path, ca_pem.as_bytes(), 0o644)
        .map_err(|e| io("writing", &ca_path, e))?;
    let ca_hash = token::ca_hash(&ca_pem);
    if let Some(h) = tok.ca_hash.as_deref().filter(|h| *h != ca_hash) {
        log::warn(&format!(
            "token CA hash {h} does not match this server's CA {ca_hash}"
        ));
    }
    let node_token = format!("{}\n", tok.node_token(&ca_hash));
    for p in [&token_path, &node_token_path] {
        root.write_atomic(p, node_token.as_bytes(), 0o600)
            .map_err(|e| io("writing", p, e))?;
    }
    let agent_tok = resolve_token(root, m, "agent-token")?;
    let agent_line = match &agent_tok {
        Some((t, _)) => format!("K10{ca_hash}::node:{}\n", t.secret),
        None => node_token.clone(),
    };
    root.write_atomic(&agent_token_path, agent_line.as_bytes(), 0o600)
        .map_err(|e| io("writing", &agent_token_path, e))?;
    rec.insert("agent_token".into(), token_json(agent_tok.as_ref()));
    rec.insert("ca_hash".into(), json!(ca_hash));
    rec.insert("node_token_path".into(), json!(node_token_path));
    rec.insert(
        "node_token_sha256".into(),
        json!(sha256_hex(node_token.trim_end().as_bytes())),
    );

    // The API port.
    let bind = m
        .string("bind-address")
        .unwrap_or_else(|| "0.0.0.0".to_owned());
    let port = match m.string("https-listen-port") {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("invalid https-listen-port {p:?}"))?,
        None => DEFAULT_API_PORT,
    };
    let bind_host = if bind.contains(':') && !bind.starts_with('[') {
        format!("[{bind}]")
    } else {
        bind.clone()
    };
    let listener = TcpListener::bind(format!("{bind_host}:{port}"))
        .map_err(|e| format!("starting the API listener on {bind_host}:{port}: {e}"))?;
    let api_addr = listener
        .local_addr()
        .map_err(|e| format!("API listener: {e}"))?;
    rec.insert("listen".into(), json!(api_addr.to_string()));
    rec.insert("api_port".into(), json!(api_addr.port()));
    rec.insert("cluster_init".into(), json!(m.bool("cluster-init")));

    // The kubeconfig.
    let kubeconfig_path = m
        .string("write-kubeconfig")
        .unwrap_or_else(|| DEFAULT_KUBECONFIG.to_owned());
    let mode = match m.get("write-kubeconfig-mode") {
        Some(v) => config::parse_mode(v)?,
        None => 0o600,
    };
    let client_cert = token::pem(
        "CERTIFICATE",
        &crate::random_bytes(48).map_err(|e| e.to_string())?,
    );
    let client_key = token::pem(
        "EC PRIVATE KEY",
        &crate::random_bytes(32).map_err(|e| e.to_string())?,
    );
    let server = format!("https://127.0.0.1:{}", api_addr.port());
    let kc = token::kubeconfig(&server, &ca_pem, &client_cert, &client_key);
    root.write_atomic(&kubeconfig_path, kc.as_bytes(), mode)
        .map_err(|e| io("writing", &kubeconfig_path, e))?;
    rec.insert("kubeconfig_path".into(), json!(kubeconfig_path));
    rec.insert("kubeconfig_mode".into(), json!(format!("{mode:04o}")));
    rec.insert("kubeconfig_server".into(), json!(server));
    log::info(&format!(
        "Wrote kubeconfig {kubeconfig_path} (mode {mode:04o})"
    ));

    let mut secret_hashes = vec![sha256_hex(tok.secret.as_bytes())];
    if let Some((t, _)) = &agent_tok {
        secret_hashes.push(sha256_hex(t.secret.as_bytes()));
    }
    let joins_log = root.path(JOINS_LOG);
    if let Some(dir) = joins_log.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("creating", &dir.display().to_string(), e))?;
    }
    let state = Arc::new(ServerState {
        node_name: node_name.to_owned(),
        secret_hashes,
        ca_pem,
        ca_hash,
        joins_log,
        log_lock: Mutex::new(()),
    });
    std::thread::spawn(move || serve_api(listener, state));
    log::info(&format!(
        "Listening on {api_addr} (k3s-standin answers with one line, it is not an API server)"
    ));
    Ok(api_addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_of_urls() {
        assert_eq!(
            url_host_port("https://10.0.0.1:6443").unwrap(),
            "10.0.0.1:6443"
        );
        assert_eq!(url_host_port("https://srv.lan").unwrap(), "srv.lan:6443");
        assert_eq!(
            url_host_port("https://srv.lan:7443/x").unwrap(),
            "srv.lan:7443"
        );
        assert_eq!(
            url_host_port("https://[fd00::1]").unwrap(),
            "[fd00::1]:6443"
        );
        assert_eq!(
            url_host_port("https://[fd00::1]:7443").unwrap(),
            "[fd00::1]:7443"
        );
        assert!(url_host_port("http://srv:6443").is_err());
        assert!(url_host_port("https://").is_err());
    }
}
