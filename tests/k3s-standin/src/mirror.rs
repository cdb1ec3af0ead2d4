//! A K3s release mirror on loopback, in GitHub's release layout:
//! `<base>/<version>/k3s` and `<base>/<version>/sha256sum-amd64.txt`, with
//! the version's `+` accepted raw or as `%2B`.
//!
//! [`prepare`] only writes the files (`<dir>/<version>/…`, `+` kept in the
//! directory name, so `python3 -m http.server` serves them too); [`serve`]
//! answers HTTP/1.1 `GET`/`HEAD` from a directory through the suites'
//! loopback [`Server`], with optional [`Faults`].

use std::io;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::http::{Request as HttpRequest, Response, Server};
use crate::{sha256_hex, version};

pub const SUMS_FILE: &str = node_spec::CHECKSUM_FILE;
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
    server: Server,
}

impl Mirror {
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> String {
        self.server.url("")
    }

    /// The requests answered so far.
    pub fn requests(&self) -> Vec<Request> {
        self.server
            .requests()
            .into_iter()
            .map(|l| Request {
                method: l.request.method,
                target: l.request.target,
                status: l.status,
            })
            .collect()
    }

    /// Block the calling thread while the mirror serves.
    pub fn wait(self) {
        self.server.wait()
    }
}

/// Serve `dir` on `listen` (e.g. `127.0.0.1:0`) until the [`Mirror`] is
/// dropped. `verbose` logs each request to stderr.
pub fn serve(dir: &Path, listen: &str, faults: Faults, verbose: bool) -> io::Result<Mirror> {
    let dir = dir.to_path_buf();
    let count = AtomicU64::new(0);
    let server = Server::start(listen, move |req| {
        let response = answer(&dir, &faults, count.fetch_add(1, Ordering::SeqCst), req);
        if verbose {
            crate::log::info(&format!(
                "{} {} {}",
                req.method, req.target, response.status
            ));
        }
        response
    })?;
    Ok(Mirror { server })
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

/// The mirror's answer to its `n`-th request (0-based).
fn answer(dir: &Path, faults: &Faults, n: u64, req: &HttpRequest) -> Response {
    let text = |status: u16, body: &str| {
        Response::new(status, body).header("Content-Type", "text/plain; charset=utf-8")
    };
    if n < faults.fail_first {
        return text(503, "injected failure\n");
    }
    if req.method != "GET" && req.method != "HEAD" {
        return text(405, "only GET and HEAD\n");
    }
    let Some(path) = resolve(dir, &req.target).filter(|p| p.is_file()) else {
        return text(404, "404 page not found\n");
    };
    let mut body = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => return text(500, &format!("reading {}: {e}\n", path.display())),
    };
    let mut response = Response::new(200, Vec::new());
    if path.file_name().is_some_and(|n| n == "k3s") {
        if faults.corrupt && !body.is_empty() {
            let at = body.len() / 2;
            body[at] ^= 0xff;
        }
        if let Some(cut) = faults.cut_after {
            response = response.cut_after(usize::try_from(cut).unwrap_or(usize::MAX));
        }
    }
    response.body = body;
    response.header("Content-Type", "application/octet-stream")
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
