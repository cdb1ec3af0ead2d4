//! Find the line and column of a key path in YAML text, for errors found after
//! parsing (cross-field rules) where serde no longer knows positions.
//!
//! This is a deliberately small indentation scanner for the block-style YAML
//! our profiles and recipes use; when it cannot find a key it returns the
//! nearest ancestor it found, so an error always points somewhere useful.

/// A segment of a key path: a mapping key or a sequence index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// 1-based (line, column) of the deepest segment of `path` that was found.
pub fn locate(text: &str, path: &[Seg<'_>]) -> (usize, usize) {
    let lines: Vec<&str> = text.lines().collect();
    // Current search window: lines [start, end) deeper than `parent_indent`.
    let mut start = 0usize;
    let mut end = lines.len();
    let mut parent_indent: isize = -1;
    let mut found = (1usize, 1usize);
    for seg in path {
        let mut hit = None;
        let mut seen_items = 0usize;
        let mut i = start;
        while i < end {
            let line = lines[i];
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                i += 1;
                continue;
            }
            let indent = (line.len() - trimmed.len()) as isize;
            if indent <= parent_indent {
                break;
            }
            match seg {
                Seg::Key(k) => {
                    // A key may follow a "- " list marker on the same line.
                    let (col, body) = match trimmed.strip_prefix("- ") {
                        Some(b) => (indent + 2, b.trim_start()),
                        None => (indent, trimmed),
                    };
                    let key_matches = body
                        .strip_prefix(k)
                        .is_some_and(|rest| rest.starts_with(':'))
                        || body
                            .strip_prefix('"')
                            .and_then(|b| b.strip_prefix(k))
                            .is_some_and(|rest| rest.starts_with("\":"));
                    if key_matches {
                        hit = Some((i, col));
                        break;
                    }
                }
                Seg::Index(n) => {
                    if trimmed.starts_with("- ") || trimmed == "-" {
                        if seen_items == *n {
                            hit = Some((i, indent));
                            break;
                        }
                        seen_items += 1;
                    }
                }
            }
            i += 1;
        }
        let Some((line_idx, col)) = hit else {
            return found;
        };
        found = (line_idx + 1, col as usize + 1);
        // The value block: following lines indented deeper than the key or
        // item marker, plus (for a key) a sequence written at the key's own
        // indentation, which YAML allows.
        let own_indent = col;
        let is_key = matches!(seg, Seg::Key(_));
        let mut child_end = line_idx + 1;
        while child_end < end {
            let l = lines[child_end];
            let t = l.trim_start();
            if !t.is_empty() && !t.starts_with('#') {
                let ind = (l.len() - t.len()) as isize;
                let same_level_seq = is_key && ind == own_indent && t.starts_with('-');
                if ind <= own_indent && !same_level_seq {
                    break;
                }
            }
            child_end += 1;
        }
        // An item's first key sits on the marker line ("- path: …").
        start = if is_key { line_idx + 1 } else { line_idx };
        end = child_end;
        parent_indent = own_indent - 1;
    }
    found
}

/// Parse serde_yaml's key path (`k3s`, `files[1]`, `lxc.tarball`) into segments.
pub fn parse_key_path(path: &str) -> Vec<Seg<'_>> {
    let mut segs = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        match part.split_once('[') {
            Some((name, idx)) => {
                if !name.is_empty() {
                    segs.push(Seg::Key(name));
                }
                for i in idx.split('[') {
                    if let Ok(n) = i.trim_end_matches(']').parse() {
                        segs.push(Seg::Index(n));
                    }
                }
            }
            None => segs.push(Seg::Key(part)),
        }
    }
    segs
}

/// Within the mapping at `parent` (a serde_yaml key path, empty for the
/// document), find the direct child key whose scalar value is `value`.
/// Returns the full key path and the 1-based line and column of the value.
pub fn find_value(text: &str, parent: &str, value: &str) -> Option<(String, usize, usize)> {
    let segs = if parent == "(document)" {
        Vec::new()
    } else {
        parse_key_path(parent)
    };
    let (start_line, parent_indent) = if segs.is_empty() {
        (0usize, -1isize)
    } else {
        let (line, col) = locate(text, &segs);
        (line, col as isize - 1)
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut child_indent: Option<usize> = None;
    let first = if segs.is_empty() { 0 } else { start_line };
    for (i, line) in lines.iter().enumerate().skip(first) {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        if (indent as isize) <= parent_indent {
            break;
        }
        let body = trimmed.strip_prefix("- ").unwrap_or(trimmed);
        let body_indent = indent + (trimmed.len() - body.len());
        if *child_indent.get_or_insert(body_indent) != body_indent {
            continue;
        }
        let Some((key, rest)) = body.split_once(':') else {
            continue;
        };
        let raw = rest.split(" #").next().unwrap_or("").trim();
        let unquoted = raw
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .or_else(|| raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
            .unwrap_or(raw);
        if unquoted == value && !raw.is_empty() {
            let col = body_indent + key.len() + 1 + (rest.len() - rest.trim_start().len()) + 1;
            let full = if segs.is_empty() {
                key.trim().to_owned()
            } else {
                format!("{parent}.{}", key.trim())
            };
            return Some((full, i + 1, col));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
name: w
k3s:
  version: v1.34.3+k3s1
  # comment
  config:
    token: abc
files:
  - path: /etc/a
    mode: \"0644\"
  - path: /etc/b
    mode: \"999\"
outputs:
- lxc
- qcow2
";

    #[test]
    fn finds_nested_keys() {
        assert_eq!(locate(DOC, &[Seg::Key("name")]), (1, 1));
        assert_eq!(locate(DOC, &[Seg::Key("k3s"), Seg::Key("version")]), (3, 3));
        assert_eq!(
            locate(
                DOC,
                &[Seg::Key("k3s"), Seg::Key("config"), Seg::Key("token")]
            ),
            (6, 5)
        );
    }

    #[test]
    fn finds_sequence_items() {
        assert_eq!(
            locate(DOC, &[Seg::Key("files"), Seg::Index(1), Seg::Key("mode")]),
            (11, 5)
        );
        assert_eq!(
            locate(DOC, &[Seg::Key("files"), Seg::Index(0), Seg::Key("path")]),
            (8, 5)
        );
        assert_eq!(locate(DOC, &[Seg::Key("outputs"), Seg::Index(1)]), (14, 1));
    }

    #[test]
    fn falls_back_to_deepest_found() {
        assert_eq!(locate(DOC, &[Seg::Key("k3s"), Seg::Key("missing")]), (2, 1));
        assert_eq!(locate(DOC, &[Seg::Key("nope")]), (1, 1));
    }
}
