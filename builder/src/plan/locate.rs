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
                        || quoted_key(body)
                            .is_some_and(|(key, rest)| key == *k && rest.starts_with(':'));
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

/// The first and second place a key occurs in one mapping, 1-based
/// (line, column) each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duplicate {
    pub first: (usize, usize),
    pub second: (usize, usize),
}

/// In the block mapping whose first key is at 1-based (`line`, `column`) —
/// where serde_yaml reports a duplicate key — find where `key` occurs first
/// and second. `None` for a flow mapping (`{a: 1, a: 2}`) or when not found.
pub fn find_duplicate(text: &str, line: usize, column: usize, key: &str) -> Option<Duplicate> {
    let start = line.checked_sub(1)?;
    let indent = column.checked_sub(1)?;
    let mut hits = Vec::new();
    for (i, l) in text.lines().enumerate().skip(start) {
        let trimmed = l.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let body = if i == start {
            // The first key may follow a "- " item marker.
            l.get(indent..)?
        } else {
            let ind = l.len() - trimmed.len();
            if ind < indent {
                break;
            }
            // Deeper lines belong to values; a "-" at the key's own
            // indentation is a sequence value of the key before it.
            if ind > indent || trimmed.starts_with('-') {
                continue;
            }
            trimmed
        };
        if key_of(body).as_deref() == Some(key) {
            hits.push((i + 1, indent + 1));
            if hits.len() == 2 {
                return Some(Duplicate {
                    first: hits[0],
                    second: hits[1],
                });
            }
        }
    }
    None
}

/// The key of a `key: value` line (plain, "double" or 'single' quoted).
fn key_of(body: &str) -> Option<std::borrow::Cow<'_, str>> {
    if let Some((key, rest)) = quoted_key(body) {
        return rest.starts_with(':').then_some(key.into());
    }
    let end = body
        .find(": ")
        .or_else(|| body.trim_end().strip_suffix(':').map(str::len))?;
    Some(body[..end].trim_end().into())
}

/// A quoted scalar at the start of `body`, unescaped, and the text after it.
/// Covers the escapes a key plausibly holds (`\n`, `\t`, `\e`, `\"`, `\\`,
/// `\xNN`, `\uNNNN`; `''` in single quotes); `None` for anything else.
fn quoted_key(body: &str) -> Option<(String, &str)> {
    if let Some(rest) = body.strip_prefix('\'') {
        let mut out = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '\'' {
                if rest[i + 1..].starts_with('\'') {
                    out.push('\'');
                    chars.next();
                } else {
                    return Some((out, &rest[i + 1..]));
                }
            } else {
                out.push(c);
            }
        }
        return None;
    }
    let rest = body.strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = rest.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &rest[i + 1..])),
            '\\' => {
                let (_, e) = chars.next()?;
                let hex = |n: usize, chars: &mut std::str::CharIndices<'_>| {
                    let digits: String = chars.by_ref().take(n).map(|(_, c)| c).collect();
                    u32::from_str_radix(&digits, 16)
                        .ok()
                        .and_then(char::from_u32)
                };
                out.push(match e {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    'e' => '\u{1b}',
                    '0' => '\0',
                    '"' | '\\' | '/' | ' ' => e,
                    'x' => hex(2, &mut chars)?,
                    'u' => hex(4, &mut chars)?,
                    _ => return None,
                });
            }
            c => out.push(c),
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
    fn finds_the_second_occurrence_of_a_duplicate_key() {
        let doc = "name: a\nk3s:\n  version: v\n  role: agent\n  config:\n    role: x\n  role: server\nname: b\n";
        assert_eq!(
            find_duplicate(doc, 3, 3, "role"),
            Some(Duplicate {
                first: (4, 3),
                second: (7, 3)
            })
        );
        assert_eq!(
            find_duplicate(doc, 1, 1, "name"),
            Some(Duplicate {
                first: (1, 1),
                second: (8, 1)
            })
        );
        let items = "files:\n  - path: /a\n    content: |\n      path: not a key\n    path: /b\n  - path: /c\n";
        assert_eq!(
            find_duplicate(items, 2, 5, "path"),
            Some(Duplicate {
                first: (2, 5),
                second: (5, 5)
            })
        );
        assert_eq!(find_duplicate("lxc: {a: 1, a: 2}\n", 1, 6, "a"), None);
        let quoted = "sysctls:\n  \"a.b\": 1\n  a.b: 2\n";
        assert_eq!(
            find_duplicate(quoted, 2, 3, "a.b").map(|d| d.second),
            Some((3, 3))
        );
    }

    #[test]
    fn falls_back_to_deepest_found() {
        assert_eq!(locate(DOC, &[Seg::Key("k3s"), Seg::Key("missing")]), (2, 1));
        assert_eq!(locate(DOC, &[Seg::Key("nope")]), (1, 1));
    }
}
