//! Checks of single metadata values that end up in files: host names,
//! Kubernetes node names, cluster tokens, server URLs, and the one-line
//! rule for every string in a YAML value. Pure functions; [`super::merge`]
//! locates the errors.

use std::fmt;

use serde::Serialize;

use super::merge::K3S_API_PORT;
use crate::message::{check_one_line, first_control, quoted};

/// A cluster token. Its value never appears in Debug output or messages.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Validate a K3s token: either the secure format
    /// `K10<sha256 of the cluster CA>::<user>:<password>` or a bare password.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let t = raw.trim();
        if t.is_empty() {
            return Err("is empty".into());
        }
        if let Some((pos, c)) = first_control(t) {
            return Err(format!(
                "contains {} at character {pos}; a K3s token is a single word — copy it again without it",
                crate::message::describe_char(c)
            ));
        }
        if t.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\'' || c == '"' || c == '\\')
        {
            return Err(
                "contains whitespace, quotes or backslashes; K3s tokens are a single word".into(),
            );
        }
        if let Some(rest) = t.strip_prefix("K10") {
            let (hash, creds) = rest.split_once("::").ok_or(
                "starts with K10 but is not `K10<ca-hash>::<user>:<password>` (missing `::`)",
            )?;
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "starts with K10 but its CA hash has {} characters; expected 64 hex digits \
                     (copy the whole line of /var/lib/rancher/k3s/server/node-token)",
                    hash.len()
                ));
            }
            match creds.split_once(':') {
                Some((user, pass)) if !user.is_empty() && !pass.is_empty() => {}
                _ => {
                    return Err(
                        "ends without `<user>:<password>` after `::`; copy the whole token".into(),
                    )
                }
            }
        }
        Ok(Self(t.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// A parsed `https://host:port` server URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerUrl {
    pub url: String,
    pub host: String,
    pub port: u16,
}

impl ServerUrl {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let hint = "expected e.g. https://10.0.0.10:6443";
        let shown = quoted(raw);
        let rest = raw.strip_prefix("https://").ok_or_else(|| {
            format!("{shown} is not an https URL; K3s serves its API over https, {hint}")
        })?;
        let authority = rest.split('/').next().unwrap_or("");
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{shown} has an unclosed IPv6 bracket; {hint}"))?;
            (h.to_owned(), after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (authority.to_owned(), None),
            }
        };
        if host.is_empty() {
            return Err(format!("{shown} has no host; {hint}"));
        }
        if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "{shown} has spaces or control characters in its host; {hint}"
            ));
        }
        let port = match port {
            None => K3S_API_PORT,
            Some(p) => p
                .parse()
                .map_err(|_| format!("{shown} has an invalid port {}; {hint}", quoted(p)))?,
        };
        Ok(Self {
            url: raw.to_owned(),
            host,
            port,
        })
    }
}

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
