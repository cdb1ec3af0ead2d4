use std::path::PathBuf;

/// A problem with a profile or recipe, located in its file.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `path:line:column: key: message` — the format editors jump to.
    #[error("{}:{line}:{column}: {key}: {message}", path.display())]
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
}

/// Several problems found in one pass, so a user fixes them all at once.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct PlanErrors(pub Vec<PlanError>);
