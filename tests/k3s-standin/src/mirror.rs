//! A K3s release mirror on loopback, in GitHub's release layout:
//! `<base>/<version>/k3s` and `<base>/<version>/sha256sum-amd64.txt`, with
//! the version's `+` accepted raw or as `%2B`.
//!
//! [`prepare`] only writes the files (`<dir>/<version>/…`, `+` kept in the
//! directory name, so `python3 -m http.server` serves them too); [`serve`]
//! answers HTTP/1.1 `GET`/`HEAD` from a directory, one request per
//! connection, with optional [`Faults`].

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{sha256_hex, version};

pub const SUMS_FILE: &str = "sha256sum-amd64.txt";
/// Optional files listed in the sums file when present next to `k3s`.
pub const AIRGAP_FILES: [&str; 3] = [
    "k3s-airgap-images-amd64.tar.zst",
    "k3s-airgap-images-amd64.tar.gz",
    "k3s-airgap-images-amd64.tar",
];

/// A version as it appears in a release URL (`+` → `%2B`).
pub fn url_encode_version(v: &str) -> String {
    v.replace('+', "%2B")
}

/// A release written by [`prepare`].
#[derive(Debug, Clone)]
pub struct Prepared {
    pub version: String,
    pub release_dir: PathBuf,
    /// sha256 of `<version>/k3s`.
    pub sha256: String,
}

/// Write `<dir>/<version>/k3s` (a copy of `binary` that reports `version`,
/// see [`crate::version`]) and `<dir>/<version>/sha256sum-amd64.txt`.
pub fn prepare(dir: &Path, version: &str, binary: &Path) -> io::Result<Prepared> {
    version::validate(version).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let release_dir = dir.join(version);
    let bytes = std::fs::read(binary)
        .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", binary.display())))?;
    let bytes = version::with_trailer(&bytes, version);
    let sha256 = sha256_hex(&bytes);
    crate::paths::write_atomic(&release_dir.join("k3s"), &bytes, 0o755)?;
    let mut sums = format!("{sha256}  k3s\n");
    for name in AIRGAP_FILES {
        let p = release_dir.join(name);
        if p.is_file() {
            sums.push_str(&format!("{}  {name}\n", file_sha256(&p)?));
        }
    }
    crate::paths::write_atomic(&release_dir.join(SUMS_FILE), sums.as_bytes(), 0o644)?;
    Ok(Prepared {
        version: version.to_owned(),
        release_dir,
        sha256,
    })
}

fn file_sha256(p: &Path) -> io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    io::copy(&mut std::fs::File::open(p)?, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// Faults to inject, for download-failure tests.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Serve `k3s` with one byte changed (same length, wrong sha256).
    pub corrupt: bool,
    /// Close the connection after this many bytes of a `k3s` body (the
    /// `Content-Length` still announces the whole file).
    pub cut_after: Option<u64>,
    /// Answer the first N requests (any path) with 503.
    pub fail_first: u64,
}

/// One request the mirror answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub status: u16,
}

/// A running mirror; stops when dropped.
#[derive(Debug)]
pub struct Mirror {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Request>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Mirror {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests answered so far.
    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Block the calling thread while the mirror serves.
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Shared {
    dir: PathBuf,
    faults: Faults,
    count: AtomicU64,
    log: Arc<Mutex<Vec<Request>>>,
    verbose: bool,
}

/// Serve `dir` on `listen` (e.g. `127.0.0.1:0`) until the [`Mirror`] is
/// dropped. `verbose` logs each request to stderr.
pub fn serve(dir: &Path, listen: &str, faults: Faults, verbose: bool) -> io::Result<Mirror> {
    let listener = TcpListener::bind(listen)?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let shared = Arc::new(Shared {
        dir: dir.to_path_buf(),
        faults,
        count: AtomicU64::new(0),
        log: Arc::clone(&log),
        verbose,
    });
    let stop2 = Arc::clone(&stop);
    let thread = std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stop2.load(Ordering::SeqCst) {
                break;
            }
            let Ok(stream) = conn else { continue };
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                let _ = handle(stream, &shared);
            });
        }
    });
    Ok(Mirror {
        addr,
        stop,
        log,
        thread: Some(thread),
    })
}

/// Percent-decode a URL path; `None` on malformed escapes or non-UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The file under `dir` a request target names, refusing `..`.
fn resolve(dir: &Path, target: &str) -> Option<PathBuf> {
    let path = target.split(['?', '#']).next()?;
    let decoded = percent_decode(path)?;
    let rel = Path::new(decoded.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(dir.join(rel))
}

fn handle(stream: TcpStream, sh: &Shared) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.by_ref().take(8192).read_line(&mut request_line)?;
    // Drain the headers.
    let mut total = 0usize;
    loop {
        let mut h = String::new();
        let n = reader.by_ref().take(8192).read_line(&mut h)?;
        total += n;
        if n == 0 || h == "\r\n" || h == "\n" || total > 64 * 1024 {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut out = stream;
    let record = |status: u16| {
        if sh.verbose {
            crate::log::info(&format!("{method} {target} {status}"));
        }
        if let Ok(mut l) = sh.log.lock() {
            l.push(Request {
                method: method.clone(),
                target: target.clone(),
                status,
            });
        }
    };
    let n = sh.count.fetch_add(1, Ordering::SeqCst);
    if n < sh.faults.fail_first {
        record(503);
        return respond(
            &mut out,
            503,
            "Service Unavailable",
            b"injected failure\n",
            method == "HEAD",
        );
    }
    if method != "GET" && method != "HEAD" {
        record(405);
        return respond(
            &mut out,
            405,
            "Method Not Allowed",
            b"only GET and HEAD\n",
            false,
        );
    }
    let Some(path) = resolve(&sh.dir, &target).filter(|p| p.is_file()) else {
        record(404);
        return respond(
            &mut out,
            404,
            "Not Found",
            b"404 page not found\n",
            method == "HEAD",
        );
    };
    let is_k3s = path.file_name().is_some_and(|n| n == "k3s");
    let len = std::fs::metadata(&path)?.len();
    record(200);
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )?;
    if method == "HEAD" {
        return out.flush();
    }
    let limit = if is_k3s {
        sh.faults.cut_after.unwrap_or(u64::MAX)
    } else {
        u64::MAX
    };
    let mut file = std::fs::File::open(&path)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent: u64 = 0;
    let corrupt_at = len / 2;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = &mut buf[..n];
        if is_k3s && sh.faults.corrupt && (sent..sent + n as u64).contains(&corrupt_at) {
            chunk[(corrupt_at - sent) as usize] ^= 0xff;
        }
        let room = limit.saturating_sub(sent);
        if (n as u64) >= room {
            out.write_all(&chunk[..room as usize])?;
            out.flush()?;
            if room < n as u64 || sent + room < len {
                // Cut: close mid-body.
                return out.shutdown(std::net::Shutdown::Both);
            }
        } else {
            out.write_all(chunk)?;
        }
        sent += n as u64;
    }
    out.flush()
}

fn respond(
    out: &mut TcpStream,
    code: u16,
    reason: &str,
    body: &[u8],
    head: bool,
) -> io::Result<()> {
    write!(
        out,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if !head {
        out.write_all(body)?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_and_resolve() {
        assert_eq!(
            percent_decode("/v1.34.3%2Bk3s1/k3s").as_deref(),
            Some("/v1.34.3+k3s1/k3s")
        );
        assert_eq!(percent_decode("/a%2"), None);
        let d = Path::new("/srv");
        assert_eq!(
            resolve(d, "/v1+k/k3s?x=1").unwrap(),
            PathBuf::from("/srv/v1+k/k3s")
        );
        assert!(resolve(d, "/../etc/passwd").is_none());
        assert!(resolve(d, "/a/%2E%2E/%2E%2E/x").is_none());
        assert_eq!(url_encode_version("v1.34.3+k3s1"), "v1.34.3%2Bk3s1");
    }
}
