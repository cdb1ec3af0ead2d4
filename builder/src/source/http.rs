//! http(s) fetches into the cache: resolve the expected digest, serve from the
//! cache when possible, else download to a temp file while hashing, verify,
//! and commit.
//!
//! Resume: within one run, a body cut off mid-way is continued with an HTTP
//! `Range` request on the next attempt when the server answers `206` for the
//! right offset; a server that ignores `Range` is read again from the start.
//! Across runs nothing is resumed: a failed or interrupted download deletes
//! its temp file, so the cache never holds anything unverified.

use node_spec::retry::{retry, Backoff, GaveUp};
use std::io::{Read, Seek, Write};
use std::thread;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use node_spec::Sha256Hex;
use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

use super::cache::{now_secs, UrlRecord};
use super::checksums::{parse_checksums, select_checksum, url_file_name};
use super::{Cache, FetchOptions, Fetched, SourceError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Per read, not per download: a multi-GB image may take many minutes, but a
/// server silent for this long is gone.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const CHUNK: usize = 64 * 1024;
/// A checksum file is small; a body above this is not one (ureq's own cap
/// for `into_string` is 10 MB).
const CHECKSUM_FILE_MAX: usize = 10 * 1024 * 1024;

/// How one attempt failed: worth another try, or final.
enum Attempt {
    Retry(String),
    Fatal(SourceError),
}

impl From<SourceError> for Attempt {
    fn from(e: SourceError) -> Self {
        Attempt::Fatal(e)
    }
}

pub(super) fn fetch_url(
    url: &str,
    pinned: Option<&Sha256Hex>,
    sha256_url: Option<&str>,
    cache: &Cache,
    opts: &FetchOptions,
) -> Result<Fetched, SourceError> {
    check_scheme(url)?;
    if let Some(s) = sha256_url {
        check_scheme(s)?;
    }
    let agent = agent();

    let expected = match (pinned, sha256_url) {
        (Some(d), _) => d.clone(),
        (None, None) => return Err(SourceError::Unpinned { url: url.into() }),
        (None, Some(_)) if opts.offline => match cache.lookup_url(url)? {
            Some(rec) => {
                tracing::info!(%url, sha256 = %rec.sha256, "offline: using the digest recorded for this URL");
                rec.sha256
            }
            None => return Err(SourceError::NotCached { what: url.into() }),
        },
        (None, Some(sums)) => resolve_checksum(&agent, sums, url, opts)?,
    };

    if let Some((path, size)) = cache.lookup_blob(&expected)? {
        tracing::info!(%url, sha256 = %expected, "using cached copy");
        if !opts.offline {
            record(cache, url, &expected, size, sha256_url)?;
        }
        return Ok(Fetched {
            path,
            sha256: expected,
            size,
            origin: url.into(),
            from_cache: true,
            catalog: None,
        });
    }
    if opts.offline {
        return Err(SourceError::NotCached { what: url.into() });
    }

    let started = Instant::now();
    let (tmp, actual, size) = download(&agent, url, cache, opts)?;
    if actual != expected {
        // `tmp` is dropped here, which deletes it: nothing unverified stays.
        return Err(SourceError::Mismatch {
            origin: url.into(),
            expected,
            actual,
        });
    }
    let path = cache.commit_temp(tmp, &actual)?;
    record(cache, url, &actual, size, sha256_url)?;
    tracing::info!(%url, size, secs = started.elapsed().as_secs_f32(), "downloaded and verified");
    Ok(Fetched {
        path,
        sha256: actual,
        size,
        origin: url.into(),
        from_cache: false,
        catalog: None,
    })
}

/// An index (pveam's appliance list, a simplestreams stream) by URL: online
/// downloaded afresh into the cache (content-addressed, the URL recorded);
/// `--offline`, the copy the last online build fetched. Returns the blob.
pub(super) fn fetch_index(
    url: &str,
    cache: &Cache,
    opts: &FetchOptions,
) -> Result<std::path::PathBuf, SourceError> {
    check_scheme(url)?;
    if opts.offline {
        return offline_copy("the index", url, cache);
    }
    let (tmp, digest, size) = download(&agent(), url, cache, opts)?;
    let path = cache.commit_temp(tmp, &digest)?;
    record(cache, url, &digest, size, None)?;
    Ok(path)
}

/// Download `url` without a sha256 to check against and accept it if
/// `verify` (given the downloaded file) agrees: for a catalog that lists
/// another digest (pveam's sha512). The file is committed under its sha256
/// and the URL recorded with `note` (the digest `verify` checked), so a
/// later build finds it by [`cached_with_note`].
pub(super) fn fetch_verified_by(
    url: &str,
    note: &str,
    cache: &Cache,
    opts: &FetchOptions,
    verify: impl FnOnce(&std::path::Path) -> Result<(), SourceError>,
) -> Result<Fetched, SourceError> {
    check_scheme(url)?;
    let started = Instant::now();
    let (tmp, digest, size) = download(&agent(), url, cache, opts)?;
    // On failure `tmp` is dropped, which deletes it: nothing unverified stays.
    verify(tmp.path())?;
    let path = cache.commit_temp(tmp, &digest)?;
    cache.record_url(&UrlRecord {
        url: url.into(),
        sha256: digest.clone(),
        size,
        sha256_url: None,
        verified_by: Some(note.into()),
        recorded_at: now_secs(),
    })?;
    tracing::info!(%url, size, secs = started.elapsed().as_secs_f32(), "downloaded and verified");
    Ok(Fetched {
        path,
        sha256: digest,
        size,
        origin: url.into(),
        from_cache: false,
        catalog: None,
    })
}

/// The cached copy of `url` that [`fetch_verified_by`] stored with `note`.
pub(super) fn cached_with_note(
    url: &str,
    note: &str,
    cache: &Cache,
) -> Result<Option<Fetched>, SourceError> {
    let Some(rec) = cache.lookup_url(url)? else {
        return Ok(None);
    };
    if rec.verified_by.as_deref() != Some(note) {
        return Ok(None);
    }
    Ok(cache.lookup_blob(&rec.sha256)?.map(|(path, size)| Fetched {
        path,
        sha256: rec.sha256,
        size,
        origin: url.into(),
        from_cache: true,
        catalog: None,
    }))
}

fn record(
    cache: &Cache,
    url: &str,
    digest: &Sha256Hex,
    size: u64,
    sha256_url: Option<&str>,
) -> Result<(), SourceError> {
    cache.record_url(&UrlRecord {
        url: url.into(),
        sha256: digest.clone(),
        size,
        sha256_url: sha256_url.map(str::to_owned),
        verified_by: None,
        recorded_at: now_secs(),
    })
}

fn check_scheme(url: &str) -> Result<(), SourceError> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        Ok(())
    } else {
        Err(SourceError::UnsupportedUrl { url: url.into() })
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(CONNECT_TIMEOUT)
        .timeout_read(READ_TIMEOUT)
        .user_agent(concat!("imgbuild/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// The copy of `url` an earlier online fetch recorded, if still cached.
fn cached_copy(url: &str, cache: &Cache) -> Result<Option<std::path::PathBuf>, SourceError> {
    Ok(match cache.lookup_url(url)? {
        Some(rec) => cache.lookup_blob(&rec.sha256)?.map(|(path, _)| path),
        None => None,
    })
}

/// `--offline`: the cached copy of `url` (`what`, for the error), which the
/// last online build kept.
fn offline_copy(what: &str, url: &str, cache: &Cache) -> Result<std::path::PathBuf, SourceError> {
    cached_copy(url, cache)?.ok_or_else(|| SourceError::NotCached {
        what: format!(
            "{what} {url} (an online build keeps a copy in {})",
            cache.root().display()
        ),
    })
}

/// The digest a release's checksum file lists for `name`: the file is
/// fetched once (online afresh, and a copy kept in the cache only when it
/// arrived; `--offline` that copy) and parsed like any vendor checksum file.
pub(super) fn checksum_entry(
    sums_url: &str,
    name: &str,
    cache: &Cache,
    opts: &FetchOptions,
) -> Result<Sha256Hex, SourceError> {
    check_scheme(sums_url)?;
    let text = if opts.offline {
        let path = offline_copy("the checksum file", sums_url, cache)?;
        let bytes = std::fs::read(&path).map_err(|e| SourceError::io("reading", &path, e))?;
        String::from_utf8(bytes).map_err(|_| SourceError::BadChecksumFile {
            checksum_url: sums_url.into(),
            reason: "not UTF-8 text".into(),
        })?
    } else {
        let text = checksum_text(&agent(), sums_url, opts)?;
        let mut tmp = cache.temp_file("download-")?;
        tmp.write_all(text.as_bytes())
            .map_err(|e| SourceError::io("writing", tmp.path(), e))?;
        let digest = Sha256Hex::from_digest(&Sha256::digest(text.as_bytes()));
        cache.commit_temp(tmp, &digest)?;
        record(cache, sums_url, &digest, text.len() as u64, None)?;
        text
    };
    let entries = parse_checksums(&text);
    // Only an entry for `name` counts: a release's file lists many files,
    // and a lone bare digest could be for any of them.
    entries
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, d)| d.clone())
        .ok_or_else(|| SourceError::ChecksumEntryMissing {
            checksum_url: sums_url.into(),
            name: name.into(),
            available: entries.iter().map(|(n, _)| n.clone()).collect(),
        })
}

/// Fetch the checksum file and pick the entry for `artifact_url`'s file name.
fn resolve_checksum(
    agent: &ureq::Agent,
    sums_url: &str,
    artifact_url: &str,
    opts: &FetchOptions,
) -> Result<Sha256Hex, SourceError> {
    let text = checksum_text(agent, sums_url, opts)?;
    let name = url_file_name(artifact_url);
    let entries = parse_checksums(&text);
    select_checksum(&entries, &name).map_err(|available| SourceError::ChecksumEntryMissing {
        checksum_url: sums_url.into(),
        name,
        available,
    })
}

/// A checksum file's text, read into memory (nothing is written for it
/// here), with retries.
fn checksum_text(
    agent: &ureq::Agent,
    sums_url: &str,
    opts: &FetchOptions,
) -> Result<String, SourceError> {
    with_retries(sums_url, opts, |_| {
        let resp = request(agent, sums_url, None)?;
        let mut body = Vec::new();
        resp.into_reader()
            .take(CHECKSUM_FILE_MAX as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| Attempt::Retry(format!("reading the body: {e}")))?;
        if body.len() > CHECKSUM_FILE_MAX {
            return Err(Attempt::Fatal(SourceError::BadChecksumFile {
                checksum_url: sums_url.into(),
                reason: format!(
                    "larger than {CHECKSUM_FILE_MAX} bytes; is this really a checksum file?"
                ),
            }));
        }
        String::from_utf8(body).map_err(|_| {
            Attempt::Fatal(SourceError::BadChecksumFile {
                checksum_url: sums_url.into(),
                reason: "not UTF-8 text".into(),
            })
        })
    })
}

/// Run `attempt` up to `opts.retry.attempts` times, backing off between
/// tries ([`node_spec::retry`]); Ctrl-C stops before the next try.
fn with_retries<T>(
    url: &str,
    opts: &FetchOptions,
    mut attempt: impl FnMut(u32) -> Result<T, Attempt>,
) -> Result<T, SourceError> {
    let policy = Backoff::new(opts.retry.attempts, opts.retry.initial_backoff);
    let tried = retry(
        policy,
        |n| {
            if opts.cancelled() {
                return Err(Attempt::Fatal(SourceError::Interrupted {
                    what: format!("fetching {url}"),
                }));
            }
            attempt(n)
        },
        |a| matches!(a, Attempt::Retry(_)),
        |n, backoff, a| {
            if let Attempt::Retry(message) = a {
                tracing::warn!(%url, attempt = n, "{message}; retrying in {backoff:?}");
            }
            sleep_unless_cancelled(backoff, opts);
            true
        },
    );
    tried.map_err(|GaveUp { error, attempts }| match error {
        Attempt::Fatal(e) => e,
        Attempt::Retry(message) => SourceError::Network {
            url: url.into(),
            attempts,
            message,
        },
    })
}

fn sleep_unless_cancelled(d: Duration, opts: &FetchOptions) {
    let end = Instant::now() + d;
    while !opts.cancelled() {
        let now = Instant::now();
        if now >= end {
            break;
        }
        thread::sleep((end - now).min(Duration::from_millis(100)));
    }
}

/// One GET; classifies failures as retryable or not.
fn request(
    agent: &ureq::Agent,
    url: &str,
    range_from: Option<u64>,
) -> Result<ureq::Response, Attempt> {
    let mut req = agent.get(url);
    if let Some(from) = range_from {
        req = req.set("Range", &format!("bytes={from}-"));
    }
    match req.call() {
        Ok(resp) => Ok(resp),
        Err(ureq::Error::Status(status, _)) if status >= 500 || status == 408 || status == 429 => {
            Err(Attempt::Retry(format!("HTTP {status}")))
        }
        Err(ureq::Error::Status(status, _)) => Err(Attempt::Fatal(SourceError::HttpStatus {
            url: url.into(),
            status,
        })),
        Err(ureq::Error::Transport(t)) => match t.kind() {
            ureq::ErrorKind::InvalidUrl
            | ureq::ErrorKind::UnknownScheme
            | ureq::ErrorKind::InvalidProxyUrl => Err(Attempt::Fatal(SourceError::Network {
                url: url.into(),
                attempts: 1,
                message: transport_text(&t),
            })),
            _ => Err(Attempt::Retry(transport_text(&t))),
        },
    }
}

/// ureq's words for a transport error, without the URL it starts with:
/// the error that carries them names the URL already.
fn transport_text(t: &ureq::Transport) -> String {
    let text = t.to_string();
    match t.url() {
        Some(u) => text
            .strip_prefix(&format!("{u}: "))
            .map_or_else(|| text.clone(), str::to_owned),
        None => text,
    }
}

/// A download in progress; kept across attempts so a retry can resume.
struct Partial {
    tmp: NamedTempFile,
    hasher: Sha256,
    written: u64,
}

impl Partial {
    fn restart(&mut self) -> Result<(), SourceError> {
        let f = self.tmp.as_file_mut();
        f.set_len(0)
            .and_then(|()| f.rewind())
            .map_err(|e| SourceError::io("truncating", self.tmp.path(), e))?;
        self.hasher = Sha256::new();
        self.written = 0;
        Ok(())
    }
}

/// Download `url` into a cache temp file, returning it with its digest and size.
fn download(
    agent: &ureq::Agent,
    url: &str,
    cache: &Cache,
    opts: &FetchOptions,
) -> Result<(NamedTempFile, Sha256Hex, u64), SourceError> {
    let mut part = Partial {
        tmp: cache.temp_file("download-")?,
        hasher: Sha256::new(),
        written: 0,
    };
    // Removed by a second Ctrl-C's exit too; a killed process leaves it to
    // the next build's sweep (its name holds this pid).
    let _registered = crate::output::leftovers::register(part.tmp.path());
    let bar = progress_bar(opts, &url_file_name(url));
    tracing::info!(%url, "downloading");
    let result = with_retries(url, opts, |_| {
        attempt_download(agent, url, &mut part, &bar, opts)
    });
    bar.finish_and_clear();
    result?;
    let digest = Sha256Hex::from_digest(&part.hasher.finalize());
    Ok((part.tmp, digest, part.written))
}

fn attempt_download(
    agent: &ureq::Agent,
    url: &str,
    part: &mut Partial,
    bar: &ProgressBar,
    opts: &FetchOptions,
) -> Result<(), Attempt> {
    let resume_from = (part.written > 0).then_some(part.written);
    let resp = request(agent, url, resume_from)?;
    let content_length: Option<u64> = resp
        .header("Content-Length")
        .and_then(|v| v.trim().parse().ok());

    let total = match (resume_from, resp.status()) {
        (Some(from), 206) => match content_range_start(resp.header("Content-Range")) {
            Some((start, total)) if start == from => {
                tracing::info!(%url, from, "resuming download");
                total.or(content_length.map(|l| from + l))
            }
            _ => {
                // A 206 for another offset would splice wrong bytes in.
                part.restart()?;
                return Err(Attempt::Retry(
                    "server answered the resume request with another range".into(),
                ));
            }
        },
        (Some(_), _) => {
            tracing::info!(%url, "server does not resume; downloading again from the start");
            part.restart()?;
            content_length
        }
        (None, 200) => content_length,
        (None, status) => {
            return Err(Attempt::Retry(format!(
                "unexpected HTTP {status} for a plain GET"
            )));
        }
    };
    if let Some(t) = total {
        bar.set_length(t);
    }
    bar.set_position(part.written);

    let mut reader = resp.into_reader();
    let mut buf = vec![0u8; CHUNK];
    loop {
        if opts.cancelled() {
            return Err(Attempt::Fatal(SourceError::Interrupted {
                what: format!("downloading {url}"),
            }));
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Attempt::Retry(format!(
                    "connection lost after {} bytes: {e}",
                    part.written
                )))
            }
        };
        part.tmp
            .write_all(&buf[..n])
            .map_err(|e| SourceError::io("writing", part.tmp.path(), e))?;
        part.hasher.update(&buf[..n]);
        part.written += n as u64;
        bar.set_position(part.written);
    }
    match total {
        Some(t) if part.written != t => Err(Attempt::Retry(format!(
            "download ended early: got {} of {t} bytes",
            part.written
        ))),
        _ => Ok(()),
    }
}

/// `bytes <start>-<end>/<total|*>` → (start, total).
fn content_range_start(header: Option<&str>) -> Option<(u64, Option<u64>)> {
    let rest = header?.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

const BAR_TEMPLATE: &str = "{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}";

fn progress_bar(opts: &FetchOptions, name: &str) -> ProgressBar {
    if !opts.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    match ProgressStyle::with_template(BAR_TEMPLATE) {
        Ok(style) => bar.set_style(style.progress_chars("=> ")),
        // The template is a constant covered by a test; keep the default look.
        Err(e) => tracing::debug!("progress template: {e}"),
    }
    bar.set_message(name.to_owned());
    bar
}

#[cfg(test)]
mod tests {
    use k3s_standin::http::{Reply, Routes, Server};

    fn serve(routes: Vec<(&str, Vec<Reply>)>) -> Server {
        Routes::new(routes).serve()
    }
    use super::super::{fetch_artifact, RetryPolicy};
    use super::*;
    use crate::plan::schema::Artifact;
    use std::path::Path;
    use std::sync::atomic::Ordering;

    fn sha(data: &[u8]) -> Sha256Hex {
        Sha256Hex::from_digest(&Sha256::digest(data))
    }

    fn body(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn opts() -> FetchOptions {
        FetchOptions {
            retry: RetryPolicy {
                attempts: 3,
                initial_backoff: Duration::from_millis(10),
            },
            ..FetchOptions::default()
        }
    }

    fn offline() -> FetchOptions {
        FetchOptions {
            offline: true,
            ..opts()
        }
    }

    fn pinned(url: String, digest: Sha256Hex) -> Artifact {
        Artifact {
            path: None,
            url: Some(url),
            sha256: Some(digest),
            sha256_url: None,
        }
    }

    fn by_sums(url: String, sums: String) -> Artifact {
        Artifact {
            path: None,
            url: Some(url),
            sha256: None,
            sha256_url: Some(sums),
        }
    }

    fn fetch(art: &Artifact, cache: &Cache, o: &FetchOptions) -> Result<Fetched, SourceError> {
        fetch_artifact(art, Path::new("/nonexistent"), cache, o)
    }

    /// Every file under the cache root except index JSON, relative.
    fn blobs_and_temps(cache: &Cache) -> Vec<String> {
        let mut out = Vec::new();
        for dir in ["sha256", "tmp"] {
            if let Ok(rd) = std::fs::read_dir(cache.root().join(dir)) {
                for e in rd {
                    out.push(format!(
                        "{dir}/{}",
                        e.unwrap().file_name().to_string_lossy()
                    ));
                }
            }
        }
        out
    }

    #[test]
    fn download_verifies_caches_and_second_fetch_makes_no_request() {
        let data = body(300_000);
        let server = serve(vec![("/rootfs.tar.xz", vec![Reply::ok(&data)])]);
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let art = pinned(server.url("/rootfs.tar.xz"), sha(&data));

        let first = fetch(&art, &cache, &opts()).unwrap();
        assert!(!first.from_cache);
        assert_eq!(first.sha256, sha(&data));
        assert_eq!(first.size, 300_000);
        assert_eq!(first.path, cache.blob_path(&sha(&data)));
        assert_eq!(first.origin, server.url("/rootfs.tar.xz"));
        assert_eq!(std::fs::read(&first.path).unwrap(), data);
        assert_eq!(server.requests().len(), 1);

        let second = fetch(&art, &cache, &opts()).unwrap();
        assert!(second.from_cache);
        assert_eq!(second.path, first.path);
        assert_eq!(
            server.requests().len(),
            1,
            "cache hit must not touch the network"
        );

        // Pinned + cached also works offline.
        let third = fetch(&art, &cache, &offline()).unwrap();
        assert!(third.from_cache);
        assert_eq!(server.requests().len(), 1);
        assert_eq!(
            blobs_and_temps(&cache),
            vec![format!("sha256/{}", sha(&data))]
        );
    }

    #[test]
    fn wrong_digest_reports_both_and_caches_nothing() {
        let data = body(10_000);
        let server = serve(vec![("/a.img", vec![Reply::ok(&data)])]);
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let wrong = sha(b"not it");

        let err = fetch(
            &pinned(server.url("/a.img"), wrong.clone()),
            &cache,
            &opts(),
        )
        .unwrap_err();

        let msg = err.to_string();
        assert!(matches!(err, SourceError::Mismatch { .. }), "{msg}");
        assert!(msg.contains(wrong.as_str()), "{msg}");
        assert!(msg.contains(sha(&data).as_str()), "{msg}");
        assert!(msg.contains(&server.url("/a.img")), "{msg}");
        assert_eq!(blobs_and_temps(&cache), Vec::<String>::new());
        assert_eq!(cache.lookup_url(&server.url("/a.img")).unwrap(), None);
        assert_eq!(server.requests().len(), 1, "a mismatch is not retried");
    }

    #[test]
    fn cut_off_download_fails_after_retries_and_caches_nothing() {
        let data = body(50_000);
        let server = serve(vec![("/a.img", vec![Reply::cut_off(&data, 20_000)])]);
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());

        let err = fetch(&pinned(server.url("/a.img"), sha(&data)), &cache, &opts()).unwrap_err();

        let msg = err.to_string();
        assert!(
            matches!(err, SourceError::Network { attempts: 3, .. }),
            "{msg}"
        );
        assert!(msg.contains(&server.url("/a.img")), "{msg}");
        assert_eq!(blobs_and_temps(&cache), Vec::<String>::new());
        assert_eq!(server.requests().len(), 3);
    }

    #[test]
    fn cut_off_download_resumes_with_range() {
        let data = body(50_000);
        let server = serve(vec![(
            "/a.img",
            vec![Reply::cut_off(&data, 20_000), Reply::ok(&data)],
        )]);
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());

        let got = fetch(&pinned(server.url("/a.img"), sha(&data)), &cache, &opts()).unwrap();

        assert_eq!(std::fs::read(&got.path).unwrap(), data);
        let reqs = server.requests();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].request.header("range"), None);
        assert_eq!(reqs[1].request.header("range"), Some("bytes=20000-"));
    }

    #[test]
    fn server_ignoring_range_is_read_again_from_the_start() {
        let data = body(50_000);
        let server = serve(vec![(
            "/a.img",
            vec![
                Reply::cut_off(&data, 20_000),
                Reply::ok(&data).without_ranges(),
            ],
        )]);
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());

        let got = fetch(&pinned(server.url("/a.img"), sha(&data)), &cache, &opts()).unwrap();
        assert_eq!(got.size, 50_000);
        assert_eq!(std::fs::read(&got.path).unwrap(), data);
    }

    #[test]
    fn server_error_is_retried() {
        let data = body(1000);
        let server = serve(vec![("/a.img", vec![Reply::status(500), Reply::ok(&data)])]);
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());

        let got = fetch(&pinned(server.url("/a.img"), sha(&data)), &cache, &opts()).unwrap();
        assert_eq!(got.sha256, sha(&data));
        assert_eq!(server.requests().len(), 2);
    }

    #[test]
    fn not_found_is_not_retried() {
        let server = serve(vec![]);
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());

        let err = fetch(&pinned(server.url("/gone.img"), sha(b"x")), &cache, &opts()).unwrap_err();
        assert!(
            matches!(err, SourceError::HttpStatus { status: 404, .. }),
            "{err}"
        );
        assert!(err.to_string().contains(&server.url("/gone.img")), "{err}");
        assert_eq!(server.requests().len(), 1);
        assert_eq!(blobs_and_temps(&cache), Vec::<String>::new());
    }

    #[test]
    fn connection_refused_gives_up_after_bounded_attempts() {
        // Bind then drop to get a port with nothing listening.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let url = format!("http://127.0.0.1:{port}/a.img");

        let err = fetch(&pinned(url.clone(), sha(b"x")), &cache, &opts()).unwrap_err();
        assert!(
            matches!(err, SourceError::Network { attempts: 3, .. }),
            "{err}"
        );
        assert!(err.to_string().contains(&url), "{err}");
        assert_eq!(err.to_string().matches(&url).count(), 1, "{err}");
    }

    #[test]
    fn gnu_sha256_url_resolves_and_offline_reuses_the_index() {
        let data = body(4096);
        let sums = format!(
            "{}  other.img\n{} *ubuntu-24.04-server-cloudimg-amd64-root.tar.xz\n",
            sha(b"other"),
            sha(&data)
        );
        let server = serve(vec![
            (
                "/r/ubuntu-24.04-server-cloudimg-amd64-root.tar.xz",
                vec![Reply::ok(&data)],
            ),
            ("/r/SHA256SUMS", vec![Reply::ok(sums.as_bytes())]),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let url = server.url("/r/ubuntu-24.04-server-cloudimg-amd64-root.tar.xz");
        let art = by_sums(url.clone(), server.url("/r/SHA256SUMS"));

        let got = fetch(&art, &cache, &opts()).unwrap();
        assert_eq!(got.sha256, sha(&data));
        assert!(!got.from_cache);
        assert_eq!(server.requests().len(), 2);
        let rec = cache.lookup_url(&url).unwrap().unwrap();
        assert_eq!(rec.sha256, sha(&data));
        assert_eq!(rec.sha256_url, Some(server.url("/r/SHA256SUMS")));

        let again = fetch(&art, &cache, &offline()).unwrap();
        assert!(again.from_cache);
        assert_eq!(again.sha256, sha(&data));
        assert_eq!(server.requests().len(), 2, "offline makes no request");

        // Online again: the checksum file is re-read (it may have moved on),
        // but the blob is not downloaded twice.
        let online = fetch(&art, &cache, &opts()).unwrap();
        assert!(online.from_cache);
        let paths: Vec<_> = server
            .requests()
            .into_iter()
            .map(|r| r.request.target)
            .collect();
        assert_eq!(
            paths.iter().filter(|p| p.ends_with("SHA256SUMS")).count(),
            2
        );
        assert_eq!(paths.iter().filter(|p| p.ends_with(".tar.xz")).count(), 1);
    }

    #[test]
    fn bsd_sha256_url_resolves() {
        let data = body(5000);
        let sums = format!(
            "# Rocky-9-Container-Base.latest.x86_64.tar.xz: 5000 bytes\n\
             SHA256 (Rocky-9-Container-Base.latest.x86_64.tar.xz) = {}\n",
            sha(&data)
        );
        let server = serve(vec![
            (
                "/Rocky-9-Container-Base.latest.x86_64.tar.xz",
                vec![Reply::ok(&data)],
            ),
            (
                "/Rocky-9-Container-Base.latest.x86_64.tar.xz.CHECKSUM",
                vec![Reply::ok(sums.as_bytes())],
            ),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let art = by_sums(
            server.url("/Rocky-9-Container-Base.latest.x86_64.tar.xz"),
            server.url("/Rocky-9-Container-Base.latest.x86_64.tar.xz.CHECKSUM"),
        );
        let got = fetch(&art, &cache, &opts()).unwrap();
        assert_eq!(got.sha256, sha(&data));
        assert_eq!(std::fs::read(got.path).unwrap(), data);
    }

    #[test]
    fn checksum_file_without_the_entry_lists_what_it_has() {
        let sums = format!("{}  a.img\n{}  b.img\n", sha(b"a"), sha(b"b"));
        let server = serve(vec![("/SHA256SUMS", vec![Reply::ok(sums.as_bytes())])]);
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let art = by_sums(server.url("/c.img"), server.url("/SHA256SUMS"));

        let err = fetch(&art, &cache, &opts()).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, SourceError::ChecksumEntryMissing { .. }),
            "{msg}"
        );
        assert!(
            msg.contains("\"c.img\"") && msg.contains("a.img, b.img"),
            "{msg}"
        );
        assert!(msg.contains(&server.url("/SHA256SUMS")), "{msg}");
        assert_eq!(
            server.requests().len(),
            1,
            "the artifact itself is not fetched"
        );
    }

    #[test]
    fn offline_miss_is_a_clear_error_without_requests() {
        let server = serve(vec![]);
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());

        for art in [
            pinned(server.url("/a.img"), sha(b"a")),
            by_sums(server.url("/a.img"), server.url("/SHA256SUMS")),
        ] {
            let err = fetch(&art, &cache, &offline()).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, SourceError::NotCached { .. }), "{msg}");
            assert!(
                msg.contains("not in cache; run once without --offline"),
                "{msg}"
            );
            assert!(msg.contains(&server.url("/a.img")), "{msg}");
        }
        assert_eq!(server.requests().len(), 0);
    }

    #[test]
    fn offline_with_index_but_evicted_blob_is_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let url = "http://127.0.0.1:9/a.img".to_string();
        cache
            .record_url(&UrlRecord {
                url: url.clone(),
                sha256: sha(b"gone"),
                size: 4,
                sha256_url: None,
                verified_by: None,
                recorded_at: 0,
            })
            .unwrap();
        let err = fetch(
            &by_sums(url, "http://127.0.0.1:9/SUMS".into()),
            &cache,
            &offline(),
        )
        .unwrap_err();
        assert!(matches!(err, SourceError::NotCached { .. }), "{err}");
    }

    #[test]
    fn url_needs_a_digest_and_an_http_scheme() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let unpinned = Artifact {
            path: None,
            url: Some("https://example.invalid/a.img".into()),
            sha256: None,
            sha256_url: None,
        };
        let err = fetch(&unpinned, &cache, &opts()).unwrap_err();
        assert!(
            err.to_string().contains("pin a sha256 or give sha256-url"),
            "{err}"
        );
        assert!(
            err.to_string().contains("https://example.invalid/a.img"),
            "{err}"
        );

        let ftp = pinned("ftp://example.invalid/a.img".into(), sha(b"a"));
        let err = fetch(&ftp, &cache, &opts()).unwrap_err();
        assert!(matches!(err, SourceError::UnsupportedUrl { .. }), "{err}");
    }

    #[test]
    fn cancel_interrupts_the_download_and_leaves_no_temp_file() {
        let data = body(200_000);
        let server = serve(vec![("/a.img", vec![Reply::ok(&data)])]);
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let o = opts();
        o.cancel.store(true, Ordering::SeqCst);

        let err = fetch(&pinned(server.url("/a.img"), sha(&data)), &cache, &o).unwrap_err();
        assert!(matches!(err, SourceError::Interrupted { .. }), "{err}");
        assert!(err.to_string().contains(&server.url("/a.img")), "{err}");
        assert_eq!(blobs_and_temps(&cache), Vec::<String>::new());
    }

    #[test]
    fn user_agent_names_the_tool() {
        let data = body(10);
        let server = serve(vec![("/a", vec![Reply::ok(&data)])]);
        let dir = tempfile::tempdir().unwrap();
        fetch(
            &pinned(server.url("/a"), sha(&data)),
            &Cache::new(dir.path()),
            &opts(),
        )
        .unwrap();
        assert_eq!(
            server.requests()[0].request.header("user-agent"),
            Some(concat!("imgbuild/", env!("CARGO_PKG_VERSION")))
        );
    }

    #[test]
    fn content_range_parsing() {
        assert_eq!(
            content_range_start(Some("bytes 100-199/200")),
            Some((100, Some(200)))
        );
        assert_eq!(content_range_start(Some("bytes 5-9/*")), Some((5, None)));
        assert_eq!(content_range_start(Some("items 1-2/3")), None);
        assert_eq!(content_range_start(None), None);
    }

    #[test]
    fn progress_template_is_valid() {
        assert!(ProgressStyle::with_template(BAR_TEMPLATE).is_ok());
    }
}
