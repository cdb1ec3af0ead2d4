//! imgbuild: turn a node profile and an OS recipe into ready-to-boot K3s node
//! images. The pipeline, top to bottom, is [`build::run_build`]:
//! resolve the plan → fetch the base → compute the layer → apply it to the
//! base (target) → emit the artifact and its manifest.

pub mod agent_binary;
pub mod build;
pub mod cli;
pub mod command;
pub mod emit;
pub mod k3s_digest;
pub mod layer;
pub mod output;
pub mod plan;
pub mod seed;
pub mod source;

/// The directory a path is in: its parent, or `.` for a bare file name
/// (whose `parent()` is empty). Where temp files go so a rename into
/// `path` stays on one filesystem.
pub fn parent_dir(path: &std::path::Path) -> &std::path::Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    }
}

/// Levenshtein distance over chars.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}
