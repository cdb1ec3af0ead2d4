//! Checks of single metadata values that end up in files: host names,
//! Kubernetes node names, and the one-line rule for every string in a YAML
//! value. Pure functions; [`super::merge`] locates the errors.

use crate::message::check_one_line;

/// A host name for sethostname(2) and /etc/hosts: dot-separated labels of
/// letters, digits and `-`.
pub(crate) fn valid_hostname(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A Kubernetes node name (RFC 1123 subdomain): lower-case letters, digits,
/// `-` and `.`, starting and ending with a letter or digit, at most 253.
pub(crate) fn node_name_problem(name: &str) -> Option<String> {
    if let Err(m) = check_one_line(name) {
        return Some(m);
    }
    let ok = name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    (!ok).then(|| {
        format!(
            "{name:?} is not a Kubernetes node name — use lower-case letters, digits, `-` and `.` \
             (at most 253 characters, e.g. worker-1)"
        )
    })
}

/// The first string in a YAML value (keys included) that is not one line,
/// as `(where, message)`; `at` names the value (`config.tls-san`).
pub(crate) fn multi_line_in(value: &serde_yaml::Value, at: &str) -> Option<(String, String)> {
    use serde_yaml::Value;
    match value {
        Value::String(s) => check_one_line(s).err().map(|m| (at.to_owned(), m)),
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| multi_line_in(v, &format!("{at}[{i}]"))),
        Value::Mapping(map) => map.iter().find_map(|(k, v)| {
            let name = k.as_str().map_or_else(
                || {
                    serde_yaml::to_string(k)
                        .map(|t| t.trim().to_owned())
                        .unwrap_or_else(|_| "?".into())
                },
                str::to_owned,
            );
            if let Some(bad) = multi_line_in(k, &format!("{at} (a key)")) {
                return Some(bad);
            }
            multi_line_in(v, &format!("{at}.{name}"))
        }),
        Value::Tagged(t) => multi_line_in(&t.value, at),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_hostname("node-1.lan") && !valid_hostname("a_b") && !valid_hostname("-a"));
        assert!(node_name_problem("worker-1").is_none());
        assert!(node_name_problem("Worker")
            .unwrap()
            .contains("e.g. worker-1"));
        assert!(node_name_problem("w\n1").unwrap().contains("newline"));
    }

    #[test]
    fn nested_strings_are_located() {
        let v: serde_yaml::Value =
            serde_yaml::from_str("a: [ok, \"x\\ty\"]\n1: {\"k\\n\": v}\n").unwrap();
        let (at, m) = multi_line_in(&v, "config").unwrap();
        assert_eq!(at, "config.a[1]");
        assert!(m.contains("a tab"), "{m}");
        let v: serde_yaml::Value = serde_yaml::from_str("1: {\"k\\n\": v}\n").unwrap();
        assert_eq!(multi_line_in(&v, "config").unwrap().0, "config.1 (a key)");
        assert!(multi_line_in(&serde_yaml::from_str("a: [1, b]").unwrap(), "c").is_none());
    }
}
