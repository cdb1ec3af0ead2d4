use std::error::Error as _;
use std::fmt;
use std::path::PathBuf;

/// A problem with a profile or recipe, located in its file.
///
/// Crate-wide convention for wrapped errors: the message does not repeat its
/// cause; the cause is the `#[source]` and printers walk the chain (`{:#}`
/// for anyhow, [`PlanErrors`]'s `Display` here). Printing the cause in both
/// places is what made "No such file or directory (os error 2)" appear twice.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// `what` is `profile` or `recipe`.
    #[error("{}: cannot read the {what}", path.display())]
    Read {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// `path:line:column: key: message` — the format editors jump to.
    #[error("{}:{line}:{column}: {}: {}", path.display(), printable(key, false), printable(message, true))]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
}

impl PlanError {
    pub fn key(&self) -> Option<&str> {
        match self {
            PlanError::Invalid { key, .. } => Some(key),
            PlanError::Read { .. } => None,
        }
    }

    /// What to do about it, where the message itself cannot say (a read error
    /// ends with the OS's words).
    fn advice(&self) -> Option<&'static str> {
        let PlanError::Read { source, what, .. } = self else {
            return None;
        };
        use std::io::ErrorKind as K;
        // `ErrorKind::IsADirectory` is newer than the workspace's rust-version.
        if source.raw_os_error() == Some(nix::errno::Errno::EISDIR as i32) {
            return Some("name a YAML file, not a directory");
        }
        Some(match (source.kind(), *what) {
            (K::NotFound, "profile") => "check the path; the shipped profiles are in profiles/",
            (K::NotFound, _) => "check the path, or name a recipe in image-recipes/",
            (K::PermissionDenied, _) => "make the file readable by this user",
            (K::InvalidData, _) => "save the file as UTF-8 text",
            _ => return None,
        })
    }
}

/// `s` with control characters (an escape sequence in a hostile key, a
/// carriage return) written as Rust escapes, so a message cannot drive the
/// terminal it is printed on. Messages may keep newlines; keys may not.
fn printable(s: &str, newlines: bool) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| c.is_control() && !(newlines && c == '\n');
    if !s.chars().any(bad) {
        return s.into();
    }
    s.chars()
        .map(|c| {
            if bad(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// A located finding that does not stop a build: logged as a warning by
/// `imgbuild build`, listed by `imgbuild validate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanWarning {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for PlanWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.path.display(),
            self.line,
            self.column,
            printable(&self.key, false),
            printable(&self.message, true)
        )
    }
}

/// Several problems found in one pass, so a user fixes them all at once.
///
/// A collection has no single cause, so it is the end of the error chain and
/// its `Display` prints each error with its own cause, one per line.
#[derive(Debug)]
pub struct PlanErrors(pub Vec<PlanError>);

impl fmt::Display for PlanErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
            let mut cause = e.source();
            while let Some(c) = cause {
                write!(f, ": {c}")?;
                cause = c.source();
            }
            if let Some(advice) = e.advice() {
                write!(f, " — {advice}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for PlanErrors {}
