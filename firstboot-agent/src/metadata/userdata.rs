//! Pure parsers for NoCloud `meta-data`, `user-data` and `vendor-data`.
//!
//! user-data may be `#cloud-config` YAML (optionally behind a
//! `## template: jinja` header with no Jinja in it), a MIME multipart archive
//! whose `text/cloud-config` parts are read, or a shell script (ignored: it is
//! cloud-init's business). Anything else is refused with the file and line.
//! vendor-data is read by the same rules (cloud-init handles it "exactly like
//! user data", docs.cloud-init.io explanation/vendordata); how the two are
//! layered is [`super::vendor`]'s business.

use std::collections::BTreeMap;

use node_spec::Role;
use serde::Deserialize;

use super::MetadataError;
use crate::message::shortened;

/// Largest meta-data or user-data file the agent reads. NoCloud seeds are a
/// few KiB; a bigger file is a mistake (or an attack), not configuration.
pub const MAX_METADATA_BYTES: u64 = 1024 * 1024;

/// `meta-data`: the instance id and maybe a host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaData {
    pub instance_id: String,
    pub local_hostname: Option<String>,
}

/// What the agent takes from user-data.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserData {
    pub hostname: Option<String>,
    pub fqdn: Option<String>,
    pub k3s: Option<K3sMeta>,
    /// Line of each key under `k3s:` (1-based), for error messages.
    pub k3s_lines: BTreeMap<String, usize>,
    /// Parts of the user-data the agent deliberately ignored.
    pub ignored: Vec<String>,
    /// The `k3s:` mapping as written, for layering user-data over
    /// vendor-data key by key.
    pub k3s_raw: Option<serde_yaml::Value>,
    /// Line (1-based) of each top-level key, for error messages.
    pub lines: BTreeMap<String, usize>,
    /// cloud-init's log-in settings, as written. They are cloud-init's
    /// keys, so they are only interpreted where cloud-init is absent
    /// ([`crate::ssh`]).
    pub ssh_authorized_keys: Option<serde_yaml::Value>,
    pub user: Option<serde_yaml::Value>,
    pub users: Option<serde_yaml::Value>,
    /// `vendor_data:` — cloud-init's switch for vendor-data.
    pub vendor_data: Option<serde_yaml::Value>,
}

/// The top-level `k3s:` mapping in `#cloud-config` user-data. Every field is
/// optional; unset fields fall back to the defaults baked into the image.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct K3sMeta {
    pub role: Option<Role>,
    /// `https://HOST:6443` of an existing server; makes the node join.
    pub server: Option<String>,
    /// Cluster join token: a bare password or `K10<ca-hash>::<user>:<pass>`.
    pub token: Option<String>,
    /// Path on the node of a file holding the token (instead of `token`).
    pub token_file: Option<String>,
    /// Start a new embedded-etcd cluster (first HA server).
    pub cluster_init: Option<bool>,
    pub node_name: Option<String>,
    #[serde(default)]
    pub node_label: Vec<String>,
    #[serde(default)]
    pub node_taint: Vec<String>,
    /// Taint servers `node-role.kubernetes.io/control-plane:NoSchedule`.
    pub control_plane_taint: Option<bool>,
    /// Release mirror (GitHub release layout).
    pub mirror: Option<String>,
    /// Another K3s release than the image's pin: installed (or upgraded to)
    /// by the next `firstboot-agent run`.
    pub version: Option<node_spec::K3sVersion>,
    /// sha256 of that release's amd64 `k3s` binary.
    pub sha256: Option<node_spec::Sha256Hex>,
    /// Extra host names that must resolve before installing.
    #[serde(default)]
    pub check_names: Vec<String>,
    /// Extra `host:port` endpoints that must accept TCP before installing.
    #[serde(default)]
    pub check_endpoints: Vec<String>,
    pub network_timeout_secs: Option<u64>,
    pub ready_timeout_secs: Option<u64>,
    /// Further K3s config keys, written to config.yaml as given.
    #[serde(default)]
    pub config: BTreeMap<String, serde_yaml::Value>,
    /// HTTP proxies for K3s (its env file) and the agent's downloads.
    pub proxy: Option<ProxyKeys>,
    /// `open`, `disable` or `leave` an active firewalld or ufw.
    pub firewall: Option<node_spec::FirewallPolicy>,
}

/// `k3s.proxy`: written into the unit's env file as `HTTP_PROXY`,
/// `HTTPS_PROXY` and `NO_PROXY` ([`crate::k3s::proxy`]).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ProxyKeys {
    pub http: Option<String>,
    pub https: Option<String>,
    /// A list of entries, or one comma-separated string.
    pub no_proxy: Option<serde_yaml::Value>,
}

/// The subset of `#cloud-config` the agent reads; other keys belong to
/// cloud-init and are ignored.
#[derive(Debug, Default, Deserialize)]
struct CloudConfig {
    hostname: Option<String>,
    fqdn: Option<String>,
    k3s: Option<K3sMeta>,
    ssh_authorized_keys: Option<serde_yaml::Value>,
    user: Option<serde_yaml::Value>,
    users: Option<serde_yaml::Value>,
    vendor_data: Option<serde_yaml::Value>,
}

/// The `k3s:` mapping once more, untyped: layering needs to know which keys
/// a file sets, which the typed struct (lists default to empty) forgets.
#[derive(Debug, Default, Deserialize)]
struct RawK3s {
    k3s: Option<serde_yaml::Value>,
}

/// Decode bytes as text: size cap, UTF-8, no BOM, LF line ends (CRLF, a
/// lone CR and the Unicode breaks NEL, LS and PS all become LF).
pub fn decode_text(path: &str, bytes: &[u8]) -> Result<String, MetadataError> {
    if bytes.len() as u64 > MAX_METADATA_BYTES {
        return Err(MetadataError::TooLarge {
            path: path.to_owned(),
            size: bytes.len() as u64,
            limit: MAX_METADATA_BYTES,
        });
    }
    if bytes.starts_with(&[0x1f, 0x8b]) {
        return Err(MetadataError::Unsupported {
            path: path.to_owned(),
            line: 1,
            message: "gzip-compressed data; provide it uncompressed".into(),
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let valid = std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default();
        let line = 1 + lf_line_ends(valid).matches('\n').count();
        MetadataError::Unsupported {
            path: path.to_owned(),
            line,
            message: "not valid UTF-8 text".into(),
        }
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    Ok(lf_line_ends(text))
}

/// libyaml (and cloud-init's PyYAML) break lines at CRLF, CR, NEL, LS and PS
/// as well as LF; the line-based checks here (first line, comment-only, key
/// lines) must see the same lines, or such a file reads as one comment line
/// and its `k3s:` is ignored.
fn lf_line_ends(text: &str) -> String {
    text.replace("\r\n", "\n")
        .replace(['\r', '\u{85}', '\u{2028}', '\u{2029}'], "\n")
}

/// Turn a serde_yaml error into one naming the file and line (shifted by
/// `line_offset` when the YAML started further down a larger file).
fn yaml_error(path: &str, line_offset: usize, e: &serde_yaml::Error) -> MetadataError {
    let (line, column) = e
        .location()
        .map(|l| (l.line() + line_offset, l.column()))
        .unwrap_or((line_offset.max(1), 0));
    let mut message = e.to_string();
    if let Some(i) = message.rfind(" at line ") {
        message.truncate(i);
    }
    MetadataError::Parse {
        path: path.to_owned(),
        line,
        column,
        message: shorten_quoted(&message),
    }
}

/// serde quotes the offending value or key whole (`invalid type: string
/// "…"`, ``unknown field `…` ``); a long one (a block of text, a pasted
/// token) is cut to its first characters, so the message stays short and
/// does not copy the input into the journal.
fn shorten_quoted(message: &str) -> String {
    const KEEP: usize = 40;
    let mut out = String::with_capacity(message.len().min(1024));
    let mut quote: Option<char> = None;
    let (mut kept, mut escaped, mut cut) = (0usize, false, false);
    for c in message.chars() {
        match quote {
            None => {
                if c == '"' || c == '`' {
                    quote = Some(c);
                    (kept, escaped, cut) = (0, false, false);
                }
                out.push(c);
            }
            Some(q) if c == q && !escaped => {
                if cut {
                    out.push('…');
                }
                out.push(c);
                quote = None;
            }
            Some(q) => {
                escaped = q == '"' && c == '\\' && !escaped;
                if kept < KEEP {
                    out.push(c);
                    kept += 1;
                } else {
                    cut = true;
                }
            }
        }
    }
    out
}

/// Deepest run of unclosed `[` / `{` accepted before YAML parsing. serde_yaml
/// refuses nesting past 128 anyway, but only after libyaml has scanned it,
/// and that scan is quadratic in the depth: a megabyte of `x: [` lines took
/// over a minute. Counted without regard to quotes or comments, so only text
/// with a thousand unbalanced brackets in its strings could trip it.
const MAX_FLOW_DEPTH: usize = 1000;

fn check_flow_depth(path: &str, text: &str, line_offset: usize) -> Result<(), MetadataError> {
    let mut depth = 0usize;
    for (i, line) in text.lines().enumerate() {
        for (column, b) in line.bytes().enumerate() {
            match b {
                b'[' | b'{' => depth += 1,
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => continue,
            }
            if depth > MAX_FLOW_DEPTH {
                return Err(MetadataError::Parse {
                    path: path.to_owned(),
                    line: i + 1 + line_offset,
                    column: column + 1,
                    message: format!(
                        "more than {MAX_FLOW_DEPTH} nested `[` or `{{`; \
                         YAML nesting is limited to 128 levels"
                    ),
                });
            }
        }
    }
    Ok(())
}

/// True when the text holds nothing but comments and blank lines.
fn only_comments(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || t == "---" || t == "..."
    })
}

/// Parse `meta-data` (YAML or JSON).
pub fn parse_meta_data(path: &str, bytes: &[u8]) -> Result<MetaData, MetadataError> {
    let text = decode_text(path, bytes)?;
    let missing = || MetadataError::Invalid {
        path: path.to_owned(),
        line: None,
        key: "instance-id".into(),
        message: "meta-data has no instance-id; NoCloud needs a line such as `instance-id: node-1`"
            .into(),
    };
    if only_comments(&text) {
        return Err(missing());
    }
    check_flow_depth(path, &text, 0)?;
    let value: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| yaml_error(path, 0, &e))?;
    let map = value.as_mapping().ok_or_else(|| MetadataError::Parse {
        path: path.to_owned(),
        line: 1,
        column: 1,
        message: "meta-data must be a mapping of `key: value` lines".into(),
    })?;
    let scalar = |key: &str| -> Result<Option<String>, MetadataError> {
        match map.get(key) {
            None | Some(serde_yaml::Value::Null) => Ok(None),
            Some(serde_yaml::Value::String(s)) => Ok(Some(s.trim().to_owned())),
            Some(serde_yaml::Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(MetadataError::Invalid {
                path: path.to_owned(),
                line: key_line(&text, key, 0),
                key: key.to_owned(),
                message: format!("`{key}` must be a string"),
            }),
        }
    };
    let instance_id = scalar("instance-id")?
        .filter(|s| !s.is_empty())
        .ok_or_else(missing)?;
    let local_hostname = scalar("local-hostname")?.filter(|s| !s.is_empty());
    Ok(MetaData {
        instance_id,
        local_hostname,
    })
}

/// 1-based line of the first `key:` with the given indentation or deeper.
fn key_line(text: &str, key: &str, min_indent: usize) -> Option<usize> {
    text.lines()
        .position(|l| {
            let trimmed = l.trim_start();
            l.len() - trimmed.len() >= min_indent
                && trimmed
                    .strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
        .map(|i| i + 1)
}

/// Lines of the keys directly under the top-level `k3s:` mapping.
fn k3s_key_lines(text: &str, line_offset: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut lines = text.lines().enumerate();
    let Some(_) = lines.by_ref().find(|(_, l)| {
        l.strip_prefix("k3s")
            .is_some_and(|r| r.trim_start().starts_with(':'))
    }) else {
        return out;
    };
    let mut indent = None;
    for (i, l) in lines {
        let trimmed = l.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let this = l.len() - trimmed.len();
        if this == 0 {
            break;
        }
        if *indent.get_or_insert(this) != this {
            continue;
        }
        if let Some((key, _)) = trimmed.split_once(':') {
            out.entry(key.trim().to_owned())
                .or_insert(i + 1 + line_offset);
        }
    }
    out
}

/// Lines of the top-level (unindented) `key:` lines.
fn top_level_lines(text: &str, line_offset: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (i, l) in text.lines().enumerate() {
        if l.starts_with([' ', '\t', '#', '-']) {
            continue;
        }
        if let Some((key, _)) = l.split_once(':') {
            let key = key.trim().trim_matches(['"', '\'']);
            if !key.is_empty() {
                out.entry(key.to_owned()).or_insert(i + 1 + line_offset);
            }
        }
    }
    out
}

pub(super) fn parse_cloud_config(
    path: &str,
    text: &str,
    line_offset: usize,
) -> Result<UserData, MetadataError> {
    if only_comments(text) {
        return Ok(UserData::default());
    }
    check_flow_depth(path, text, line_offset)?;
    let cc: CloudConfig =
        serde_yaml::from_str(text).map_err(|e| yaml_error(path, line_offset, &e))?;
    let k3s_raw = if cc.k3s.is_some() {
        serde_yaml::from_str::<RawK3s>(text)
            .map_err(|e| yaml_error(path, line_offset, &e))?
            .k3s
    } else {
        None
    };
    Ok(UserData {
        hostname: cc
            .hostname
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty()),
        fqdn: cc
            .fqdn
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty()),
        k3s_lines: if cc.k3s.is_some() {
            k3s_key_lines(text, line_offset)
        } else {
            BTreeMap::new()
        },
        k3s: cc.k3s,
        ignored: Vec::new(),
        k3s_raw,
        lines: top_level_lines(text, line_offset),
        ssh_authorized_keys: cc.ssh_authorized_keys,
        user: cc.user,
        users: cc.users,
        vendor_data: cc.vendor_data,
    })
}

/// Parse `user-data`.
pub fn parse_user_data(path: &str, bytes: &[u8]) -> Result<UserData, MetadataError> {
    let text = decode_text(path, bytes)?;
    parse_user_data_text(path, "user-data", &text, 0)
}

/// Parse `vendor-data`: the same formats as user-data, named so in messages.
pub fn parse_vendor_data(path: &str, bytes: &[u8]) -> Result<UserData, MetadataError> {
    let text = decode_text(path, bytes)?;
    parse_user_data_text(path, "vendor-data", &text, 0)
}

/// `kind` is the file's name in messages (`user-data`, `vendor-data`).
fn parse_user_data_text(
    path: &str,
    kind: &str,
    text: &str,
    line_offset: usize,
) -> Result<UserData, MetadataError> {
    let first = text.lines().next().unwrap_or("").trim_end();
    let unsupported = |line: usize, message: String| MetadataError::Unsupported {
        path: path.to_owned(),
        line: line + line_offset,
        message,
    };
    if text.trim().is_empty() {
        return Ok(UserData::default());
    }
    if first.starts_with("#cloud-config") && !first.starts_with("#cloud-config-archive") {
        return parse_cloud_config(path, text, line_offset);
    }
    if first.trim() == "## template: jinja" {
        let second = text.lines().nth(1).unwrap_or("").trim_end();
        if !second.starts_with("#cloud-config") {
            return Err(unsupported(
                2,
                "a Jinja template must be followed by a `#cloud-config` line".into(),
            ));
        }
        if let Some(i) = text
            .lines()
            .position(|l| l.contains("{{") || l.contains("{%"))
        {
            return Err(unsupported(
                i + 1,
                "Jinja expressions are rendered by cloud-init, not by firstboot-agent; \
                 write the k3s values literally (and drop `## template: jinja`)"
                    .into(),
            ));
        }
        return parse_cloud_config(path, text, line_offset);
    }
    if first.starts_with("#!") {
        return Ok(UserData {
            ignored: vec![format!(
                "{path}: shell script (run by cloud-init, if present)"
            )],
            ..UserData::default()
        });
    }
    let lower = first.to_ascii_lowercase();
    if lower.starts_with("content-type:") || lower.starts_with("mime-version:") {
        return super::multipart::parse_multipart(path, kind, text);
    }
    if first.starts_with('#') {
        return Err(unsupported(
            1,
            format!(
                "{kind} type `{}` is not supported by firstboot-agent; \
                 use `#cloud-config` with a top-level `k3s:` mapping",
                shortened(first)
            ),
        ));
    }
    Err(unsupported(
        1,
        format!(
            "{kind} does not start with `#cloud-config`, so cloud-init would ignore it too; \
             make `#cloud-config` the first line"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/seed/user-data";

    fn err(text: &str) -> String {
        parse_user_data(P, text.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn proxmox_style_user_data() {
        let ud = parse_user_data(
            P,
            b"#cloud-config\nhostname: node-1\nmanage_etc_hosts: true\nfqdn: node-1.lan\nuser: root\n",
        )
        .unwrap();
        assert_eq!(ud.hostname.as_deref(), Some("node-1"));
        assert_eq!(ud.fqdn.as_deref(), Some("node-1.lan"));
        assert!(ud.k3s.is_none());
    }

    #[test]
    fn k3s_mapping_and_key_lines() {
        let text = "#cloud-config\nhostname: a\nk3s:\n  role: agent\n  server: https://10.0.0.1:6443\n  token: abc\n  node-label: [zone=a]\n  config:\n    node-ip: 10.0.0.5\n";
        let ud = parse_user_data(P, text.as_bytes()).unwrap();
        let k = ud.k3s.unwrap();
        assert_eq!(k.role, Some(Role::Agent));
        assert_eq!(k.node_label, vec!["zone=a"]);
        assert_eq!(k.config["node-ip"], serde_yaml::Value::from("10.0.0.5"));
        assert_eq!(ud.k3s_lines["token"], 6);
        assert_eq!(ud.k3s_lines["config"], 8);
        assert!(!ud.k3s_lines.contains_key("node-ip"));
    }

    #[test]
    fn crlf_and_bom_are_accepted() {
        let text = "\u{feff}#cloud-config\r\nk3s:\r\n  role: server\r\n";
        let ud = parse_user_data(P, text.as_bytes()).unwrap();
        assert_eq!(ud.k3s.unwrap().role, Some(Role::Server));
    }

    #[test]
    fn wrong_types_name_file_and_line() {
        let e = err("#cloud-config\nk3s:\n  role: worker\n");
        assert!(e.starts_with("/seed/user-data:3:"), "{e}");
        assert!(e.contains("worker"), "{e}");
        let e = err("#cloud-config\nk3s:\n  cluster-init: maybe\n");
        assert!(e.starts_with("/seed/user-data:3:"), "{e}");
        let e = err("#cloud-config\nk3s:\n  node-label: zone=a\n");
        assert!(e.contains(":3:") && e.contains("node-label"), "{e}");
        let e = err("#cloud-config\nk3s: [1, 2]\n");
        assert!(e.contains(":2:"), "{e}");
    }

    #[test]
    fn unknown_k3s_key_is_refused_with_the_list() {
        let e = err("#cloud-config\nk3s:\n  rol: agent\n");
        assert!(
            e.contains("unknown field `rol`") && e.contains("role"),
            "{e}"
        );
        assert!(e.starts_with("/seed/user-data:3:"), "{e}");
    }

    #[test]
    fn malformed_yaml_names_the_line() {
        let e = err("#cloud-config\nk3s:\n  role: agent\n  role: server\n");
        assert!(
            e.starts_with("/seed/user-data:3:") && e.contains("duplicate field `role`"),
            "{e}"
        );
        let e = err("#cloud-config\nhostname: a\n\tk3s: {}\n");
        assert!(e.starts_with("/seed/user-data:3:"), "{e}");
    }

    #[test]
    fn missing_header_is_explained() {
        let e = err("k3s:\n  role: agent\n");
        assert!(e.contains(":1:") && e.contains("#cloud-config"), "{e}");
    }

    #[test]
    fn empty_and_comment_only_user_data() {
        assert_eq!(parse_user_data(P, b"").unwrap(), UserData::default());
        assert_eq!(
            parse_user_data(P, b"#cloud-config\n# nothing\n").unwrap(),
            UserData::default()
        );
    }

    // Found by fuzz_meta_data (error lines past the end of a file with
    // lone CRs, then with U+2029): such a file was one line to the
    // line-based checks, so its `k3s:` was skipped as a comment and a Jinja
    // header went unseen.
    #[test]
    fn unicode_line_breaks_are_line_breaks() {
        for br in ["\u{85}", "\u{2028}", "\u{2029}"] {
            let text = ["#cloud-config", "k3s:", "  role: agent", ""].join(br);
            let ud = parse_user_data(P, text.as_bytes()).unwrap();
            assert_eq!(ud.k3s.unwrap().role, Some(Role::Agent), "{br:?}");
            assert_eq!(ud.k3s_lines["role"], 3);
        }
    }

    #[test]
    fn lone_cr_line_ends_are_line_breaks() {
        let ud = parse_user_data(P, b"#cloud-config\rk3s:\r  role: agent\r  token: pw\r").unwrap();
        assert_eq!(ud.k3s.unwrap().role, Some(Role::Agent));
        assert_eq!(ud.k3s_lines["token"], 4);
        let ud = parse_user_data(P, b"## template: jinja\r#cloud-config\rhostname: j\r").unwrap();
        assert_eq!(ud.hostname.as_deref(), Some("j"));
        let e = parse_meta_data("/m", b"instance-id: 42\r1local-hos")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/m:3:"), "{e}");
        let e = parse_meta_data("/m", b"a: 1\rb: \xff")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/m:2:") && e.contains("UTF-8"), "{e}");
    }

    // Found by fuzz_user_data_and_merge (a 2.7 KB message): serde_yaml
    // quotes a mistyped value whole, token and all.
    #[test]
    fn long_values_are_cut_in_messages() {
        let e = err(&format!("#cloud-config\nk3s: {}s3cret\n", "t".repeat(5000)));
        assert!(
            e.contains(&format!("string \"{}…\"", "t".repeat(40))),
            "{e}"
        );
        assert!(e.len() < 300 && !e.contains("s3cret"), "{e}");
        let e = err(&format!("#cloud-config\nk3s:\n  {}: 1\n", "k".repeat(500)));
        assert!(e.contains(&format!("`{}…`", "k".repeat(40))), "{e}");
        // Escapes inside a quoted value do not end it.
        assert_eq!(
            shorten_quoted(r#"invalid type: string "a\"b", expected x"#),
            r#"invalid type: string "a\"b", expected x"#
        );
    }

    // Found by fuzz_user_data_and_merge (a 10 KB message): indented lines
    // after a header fold into it, and the message quoted it whole.
    #[test]
    fn mime_header_values_are_quoted_short() {
        let body = "  token: s3cret\n".repeat(100);
        let e = err(&format!("Content-Type: text/cloud-config\n{body}"));
        assert!(
            e.contains("`text/cloud-config token: s3cret") && e.contains("…`"),
            "{e}"
        );
        assert!(e.len() < 300, "{e}");
        let text = format!(
            "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/x-{}\n\nx\n--b--\n",
            "y".repeat(500)
        );
        let ud = parse_user_data(P, text.as_bytes()).unwrap();
        assert!(ud.ignored[0].len() < 200, "{:?}", ud.ignored);
    }

    // Found by fuzz_meta_data (one input of 50 KB took 1.7 s): libyaml's
    // scan is quadratic in the flow nesting depth.
    #[test]
    fn deep_flow_nesting_is_refused_before_yaml_parsing() {
        let deep = "x: [\n".repeat(200_000);
        let e = parse_meta_data("/m", deep.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/m:1001:4: more than 1000 nested"), "{e}");
        let e = err(&format!(
            "#cloud-config\nhostname: a\nk3s: {}",
            "{".repeat(2000)
        ));
        assert!(
            e.starts_with("/seed/user-data:3:1006: more than 1000"),
            "{e}"
        );
        // Brackets that close again do not add up.
        let flat = format!(
            "#cloud-config\nk3s:\n  node-label: [{}]\n",
            ["a=b"; 2000].join(", ")
        );
        assert!(parse_user_data(P, flat.as_bytes()).is_ok());
    }

    #[test]
    fn unsupported_first_line_is_quoted_short() {
        let e = err(&format!(
            "#cloud-boothook {} token: s3cret\n",
            "x".repeat(80)
        ));
        assert!(
            e.contains("`#cloud-boothook xxx") && e.contains("…`"),
            "{e}"
        );
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn shell_script_is_ignored() {
        let ud = parse_user_data(P, b"#!/bin/sh\necho hi\n").unwrap();
        assert!(ud.k3s.is_none());
        assert_eq!(ud.ignored.len(), 1);
    }

    #[test]
    fn jinja_header() {
        let ud = parse_user_data(P, b"## template: jinja\n#cloud-config\nhostname: j\n").unwrap();
        assert_eq!(ud.hostname.as_deref(), Some("j"));
        let e = err("## template: jinja\n#cloud-config\nhostname: {{ v1.local_hostname }}\n");
        assert!(e.contains(":3:") && e.contains("Jinja"), "{e}");
    }

    #[test]
    fn huge_file_is_refused() {
        let mut text = String::from("#cloud-config\n");
        while text.len() as u64 <= MAX_METADATA_BYTES {
            text.push_str("# padding padding padding padding padding padding\n");
        }
        let e = err(&text);
        assert!(e.contains("limit") && e.contains(P), "{e}");
    }

    #[test]
    fn gzip_and_binary_are_refused() {
        let e = parse_user_data(P, &[0x1f, 0x8b, 8, 0])
            .unwrap_err()
            .to_string();
        assert!(e.contains("gzip"), "{e}");
        let e = parse_user_data(P, b"#cloud-config\n\xff\xfe\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains(":2:") && e.contains("UTF-8"), "{e}");
    }

    #[test]
    fn meta_data_variants() {
        let md = parse_meta_data("/m", b"instance-id: iid-1\nlocal-hostname: h1\n").unwrap();
        assert_eq!(md.instance_id, "iid-1");
        assert_eq!(md.local_hostname.as_deref(), Some("h1"));
        let md = parse_meta_data("/m", b"{\"instance-id\": 42}").unwrap();
        assert_eq!(md.instance_id, "42");
        let e = parse_meta_data("/m", b"local-hostname: x\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("instance-id") && e.contains("/m"), "{e}");
        let e = parse_meta_data("/m", b"").unwrap_err().to_string();
        assert!(e.contains("instance-id"), "{e}");
        let e = parse_meta_data("/m", b"instance-id: [a\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/m:"), "{e}");
    }
}
