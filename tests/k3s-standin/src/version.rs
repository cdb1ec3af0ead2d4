//! The version the stand-in reports.
//!
//! One build serves several pinned versions. The version is, first found:
//! 1. the runtime env `K3S_STANDIN_VERSION` (handy in a shell);
//! 2. a trailer appended to the executable by `prepare-mirror`
//!    (`\n#k3s-standin-version=<version>\n`): the copy served as
//!    `<version>/k3s` reports `<version>` even under systemd, where no test
//!    env reaches it, and each version's binary has its own sha256;
//! 3. the compile-time env `K3S_STANDIN_VERSION`;
//! 4. [`DEFAULT_VERSION`].

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

pub const DEFAULT_VERSION: &str = "v1.34.3+k3s1";
/// Shown in parentheses like K3s's git commit.
pub const COMMIT: &str = "abcdef12";
pub const GO_VERSION: &str = "go1.24.4";
/// Runtime and compile-time override.
pub const ENV: &str = "K3S_STANDIN_VERSION";
const TRAILER_MAGIC: &[u8] = b"\n#k3s-standin-version=";
const MAX_VERSION_LEN: usize = 100;

/// Where the reported version came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSource {
    RuntimeEnv,
    Embedded,
    CompileTime,
    Default,
}

impl VersionSource {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionSource::RuntimeEnv => "runtime env K3S_STANDIN_VERSION",
            VersionSource::Embedded => "trailer embedded in the executable",
            VersionSource::CompileTime => "compile-time env K3S_STANDIN_VERSION",
            VersionSource::Default => "built-in default",
        }
    }
}

/// A version string fit for a path component and one log word.
pub fn validate(v: &str) -> Result<(), String> {
    if v.is_empty()
        || v.len() > MAX_VERSION_LEN
        || v == "."
        || v == ".."
        || v.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/' || c == '%')
    {
        return Err(format!(
            "invalid version {v:?}: expected something like {DEFAULT_VERSION}"
        ));
    }
    Ok(())
}

/// The version and its source (see the module docs).
pub fn current() -> (String, VersionSource) {
    if let Ok(v) = std::env::var(ENV) {
        if validate(&v).is_ok() {
            return (v, VersionSource::RuntimeEnv);
        }
    }
    if let Some(v) = std::env::current_exe().ok().and_then(|p| embedded(&p)) {
        return (v, VersionSource::Embedded);
    }
    match option_env!("K3S_STANDIN_VERSION") {
        Some(v) if validate(v).is_ok() => (v.to_owned(), VersionSource::CompileTime),
        _ => (DEFAULT_VERSION.to_owned(), VersionSource::Default),
    }
}

/// What `k3s --version` prints.
pub fn version_text(version: &str) -> String {
    format!("k3s version {version} ({COMMIT})\ngo version {GO_VERSION}\n")
}

/// The version in the trailer of `tail` (the end of an executable), if any,
/// and where the trailer starts.
fn parse_trailer(tail: &[u8]) -> Option<(usize, String)> {
    let body = tail.strip_suffix(b"\n")?;
    let start = body
        .windows(TRAILER_MAGIC.len())
        .rposition(|w| w == TRAILER_MAGIC)?;
    let v = std::str::from_utf8(&body[start + TRAILER_MAGIC.len()..]).ok()?;
    validate(v).ok()?;
    Some((start, v.to_owned()))
}

/// The version embedded in the executable at `path`, if any.
pub fn embedded(path: &Path) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let n = len.min((TRAILER_MAGIC.len() + MAX_VERSION_LEN + 1) as u64);
    f.seek(SeekFrom::Start(len - n)).ok()?;
    let mut tail = Vec::with_capacity(n as usize);
    f.read_to_end(&mut tail).ok()?;
    parse_trailer(&tail).map(|(_, v)| v)
}

/// `binary` with its trailer (if any) replaced by one naming `version`.
pub fn with_trailer(binary: &[u8], version: &str) -> Vec<u8> {
    let keep_from = binary
        .len()
        .saturating_sub(TRAILER_MAGIC.len() + MAX_VERSION_LEN + 1);
    let end = match parse_trailer(&binary[keep_from..]) {
        Some((start, _)) => keep_from + start,
        None => binary.len(),
    };
    let mut out = Vec::with_capacity(end + TRAILER_MAGIC.len() + version.len() + 1);
    out.extend_from_slice(&binary[..end]);
    out.extend_from_slice(TRAILER_MAGIC);
    out.extend_from_slice(version.as_bytes());
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_text_is_k3s_format() {
        assert_eq!(
            version_text("v1.34.3+k3s1"),
            "k3s version v1.34.3+k3s1 (abcdef12)\ngo version go1.24.4\n"
        );
    }

    #[test]
    fn trailer_round_trip_and_replace() {
        let bin = b"\x7fELF some binary bytes".to_vec();
        let a = with_trailer(&bin, "v1.33.1+k3s1");
        let b = with_trailer(&a, "v1.34.3+k3s1");
        assert_eq!(b, with_trailer(&bin, "v1.34.3+k3s1"));
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k3s");
        std::fs::write(&p, &b).unwrap();
        assert_eq!(embedded(&p).as_deref(), Some("v1.34.3+k3s1"));
        std::fs::write(&p, &bin).unwrap();
        assert_eq!(embedded(&p), None);
    }

    #[test]
    fn validate_rejects_paths() {
        assert!(validate("v1.34.3+k3s1").is_ok());
        for bad in ["", "..", "a/b", "v1 2", "v1%2B"] {
            assert!(validate(bad).is_err(), "{bad}");
        }
    }
}
