//! MIME multipart user-data and vendor-data: the `text/cloud-config`
//! parts are read (plain, 7bit or 8bit), other parts ignored, and the
//! parts folded into one as cloud-init's part handler folds them.

use std::collections::BTreeMap;

use super::userdata::{parse_cloud_config, UserData};
use super::MetadataError;
use crate::message::shortened;

/// Headers of a MIME entity (folded lines joined, names lower-cased) and the
/// index of the first body line.
fn mime_headers(lines: &[&str], start: usize) -> (BTreeMap<String, String>, usize) {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    let mut last: Option<String> = None;
    let mut i = start;
    while i < lines.len() {
        let l = lines[i];
        i += 1;
        if l.trim().is_empty() {
            break;
        }
        if l.starts_with([' ', '\t']) {
            if let Some(v) = last.as_ref().and_then(|k| headers.get_mut(k)) {
                v.push(' ');
                v.push_str(l.trim());
            }
            continue;
        }
        if let Some((k, v)) = l.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            headers.insert(k.clone(), v.trim().to_owned());
            last = Some(k);
        }
    }
    (headers, i)
}

fn mime_param(value: &str, name: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().trim_matches('"').to_owned())
    })
}

pub(super) fn parse_multipart(
    path: &str,
    kind: &str,
    text: &str,
) -> Result<UserData, MetadataError> {
    let lines: Vec<&str> = text.lines().collect();
    let (headers, body_start) = mime_headers(&lines, 0);
    let ctype = headers.get("content-type").cloned().unwrap_or_default();
    let unsupported = |line: usize, message: String| MetadataError::Unsupported {
        path: path.to_owned(),
        line,
        message,
    };
    if !ctype.to_ascii_lowercase().starts_with("multipart/") {
        return Err(unsupported(
            1,
            format!(
                "MIME {kind} of type `{}` is not supported; expected multipart/mixed",
                shortened(&ctype)
            ),
        ));
    }
    let boundary = mime_param(&ctype, "boundary")
        .ok_or_else(|| unsupported(1, format!("multipart {kind} without a boundary")))?;
    let delimiter = format!("--{boundary}");
    let closing = format!("--{boundary}--");

    // Collect (first line index, lines) of each part.
    let mut parts: Vec<(usize, Vec<&str>)> = Vec::new();
    let mut current: Option<(usize, Vec<&str>)> = None;
    for (i, l) in lines.iter().enumerate().skip(body_start) {
        let t = l.trim_end();
        if t == delimiter || t == closing {
            parts.extend(current.take());
            if t == closing {
                break;
            }
            current = Some((i + 1, Vec::new()));
        } else if let Some((_, body)) = current.as_mut() {
            body.push(l);
        }
    }
    parts.extend(current.take());

    let mut out = UserData::default();
    let mut k3s_part_line: Option<usize> = None;
    for (first_line, part) in parts {
        let (h, body_idx) = mime_headers(&part, 0);
        let ptype = h
            .get("content-type")
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_else(|| "text/plain".into());
        let encoding = h
            .get("content-transfer-encoding")
            .map(|v| v.to_ascii_lowercase())
            .unwrap_or_default();
        let body_line = first_line + body_idx; // 0-based index of body start
        if ptype != "text/cloud-config" {
            out.ignored.push(format!(
                "{path}:{}: MIME part of type {}",
                first_line + 1,
                shortened(&ptype)
            ));
            continue;
        }
        if !encoding.is_empty() && !matches!(encoding.as_str(), "7bit" | "8bit" | "binary") {
            return Err(unsupported(
                first_line + 1,
                format!(
                    "text/cloud-config part with Content-Transfer-Encoding {} \
                     is not supported; include it as plain text",
                    shortened(&encoding)
                ),
            ));
        }
        let body = part[body_idx..].join("\n");
        let ud = parse_cloud_config(path, &body, body_line)?;
        if ud.k3s.is_some() {
            if let Some(prev) = k3s_part_line {
                return Err(unsupported(
                    first_line + 1,
                    format!(
                        "a second text/cloud-config part sets `k3s:` (the first is at line {prev}); \
                         keep the k3s settings in one part"
                    ),
                ));
            }
            k3s_part_line = Some(first_line + 1);
        }
        fold_part(&mut out, ud);
    }
    Ok(out)
}

/// Fold one `text/cloud-config` part into the parts before it as
/// cloud-init's part handler does by default (`dict(replace)+list(append)`,
/// cloudinit/handlers/cloud_config.py): a later part's value replaces an
/// earlier one, lists are appended.
fn fold_part(out: &mut UserData, part: UserData) {
    use serde_yaml::Value;
    /// `true` when `later` replaced `earlier` (rather than adding to it).
    fn append(earlier: &mut Option<Value>, later: Option<Value>) -> bool {
        match (earlier.as_mut(), later) {
            (_, None) => false,
            (Some(Value::Sequence(a)), Some(Value::Sequence(b))) => {
                a.extend(b);
                false
            }
            (_, Some(v)) => {
                *earlier = Some(v);
                true
            }
        }
    }
    let UserData {
        hostname,
        fqdn,
        k3s,
        k3s_lines,
        ignored: _,
        k3s_raw,
        lines,
        ssh_authorized_keys,
        user,
        users,
        vendor_data,
    } = part;
    let mut replaced = vec![
        ("hostname", hostname.is_some()),
        ("fqdn", fqdn.is_some()),
        ("k3s", k3s.is_some()),
        ("user", user.is_some()),
        ("vendor_data", vendor_data.is_some()),
    ];
    if k3s.is_some() {
        out.k3s = k3s;
        out.k3s_raw = k3s_raw;
        out.k3s_lines = k3s_lines;
    }
    out.hostname = hostname.or(out.hostname.take());
    out.fqdn = fqdn.or(out.fqdn.take());
    out.user = user.or(out.user.take());
    out.vendor_data = vendor_data.or(out.vendor_data.take());
    replaced.push((
        "ssh_authorized_keys",
        append(&mut out.ssh_authorized_keys, ssh_authorized_keys),
    ));
    replaced.push(("users", append(&mut out.users, users)));
    for (key, line) in lines {
        let newer = replaced.iter().any(|(k, r)| *k == key && *r);
        if newer || !out.lines.contains_key(&key) {
            out.lines.insert(key, line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::userdata::parse_user_data;

    const P: &str = "/seed/user-data";

    fn err(text: &str) -> String {
        parse_user_data(P, text.as_bytes()).unwrap_err().to_string()
    }

    const MULTIPART: &str = "Content-Type: multipart/mixed; boundary=\"===XYZ==\"\nMIME-Version: 1.0\n\n--===XYZ==\nContent-Type: text/x-shellscript; charset=\"us-ascii\"\n\n#!/bin/sh\necho hi\n\n--===XYZ==\nContent-Type: text/cloud-config; charset=\"us-ascii\"\nMIME-Version: 1.0\n\n#cloud-config\nhostname: mp\nk3s:\n  role: agent\n  token: [oops\n--===XYZ==--\n";

    #[test]
    fn multipart_cloud_config_part_is_read() {
        let fixed = MULTIPART.replace("[oops", "abc");
        let ud = parse_user_data(P, fixed.as_bytes()).unwrap();
        assert_eq!(ud.hostname.as_deref(), Some("mp"));
        assert_eq!(ud.k3s.unwrap().token.as_deref(), Some("abc"));
        assert_eq!(ud.ignored.len(), 1);
        // Key lines count from the top of the whole file.
        assert_eq!(ud.k3s_lines["token"], 18);
    }

    #[test]
    fn multipart_error_lines_count_from_file_start() {
        let e = err(MULTIPART);
        assert!(
            e.starts_with("/seed/user-data:18:") || e.starts_with("/seed/user-data:19:"),
            "{e}"
        );
    }

    #[test]
    fn multipart_base64_part_is_refused() {
        let text = "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/cloud-config\nContent-Transfer-Encoding: base64\n\nI2Nsb3VkLWNvbmZpZwo=\n--b--\n";
        let e = err(text);
        assert!(e.contains("base64") && e.contains(":4:"), "{e}");
    }

    #[test]
    fn parts_fold_later_values_replace_and_lists_append() {
        let text = "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/cloud-config\n\n#cloud-config\nhostname: one\nssh_authorized_keys: [k1]\nusers: [default]\n--b\nContent-Type: text/cloud-config\n\n#cloud-config\nhostname: two\nssh_authorized_keys: [k2]\nuser: admin\n--b--\n";
        let ud = parse_user_data(P, text.as_bytes()).unwrap();
        assert_eq!(ud.hostname.as_deref(), Some("two"));
        assert_eq!(
            ud.ssh_authorized_keys,
            Some(serde_yaml::from_str("[k1, k2]").unwrap())
        );
        assert_eq!(ud.user, Some(serde_yaml::Value::from("admin")));
        assert_eq!(
            ud.lines["hostname"], 14,
            "the line of the value that counts"
        );
        assert_eq!(
            ud.lines["ssh_authorized_keys"], 8,
            "the first of an appended list"
        );
        assert_eq!(ud.lines["users"], 9);
    }
}
