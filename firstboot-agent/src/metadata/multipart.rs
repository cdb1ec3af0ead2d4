//! MIME multipart user-data and vendor-data: the `text/cloud-config`
//! parts are read (nested multiparts walked into, base64 and
//! quoted-printable decoded), other parts ignored, and the parts folded
//! into one as cloud-init's part handler folds them. MIME itself is parsed
//! by `mailparse`.

use mailparse::{body::Body, ParsedMail};

use super::userdata::{parse_cloud_config, UserData};
use super::MetadataError;
use crate::message::shortened;

/// 0-based line of `inner`, a slice of `whole`.
fn line_of(whole: &[u8], inner: &[u8]) -> usize {
    let at = (inner.as_ptr() as usize)
        .saturating_sub(whole.as_ptr() as usize)
        .min(whole.len());
    whole[..at].iter().filter(|&&b| b == b'\n').count()
}

/// The leaf parts in order, nested multiparts walked into as cloud-init's
/// `email.message.walk()` does.
fn leaves<'m, 'a>(mail: &'m ParsedMail<'a>, out: &mut Vec<&'m ParsedMail<'a>>) {
    if mail.ctype.mimetype.starts_with("multipart/") {
        for sub in &mail.subparts {
            leaves(sub, out);
        }
    } else {
        out.push(mail);
    }
}

pub(super) fn parse_multipart(
    path: &str,
    kind: &str,
    text: &str,
) -> Result<UserData, MetadataError> {
    let raw = text.as_bytes();
    let unsupported = |line: usize, message: String| MetadataError::Unsupported {
        path: path.to_owned(),
        line,
        message,
    };
    let mail = mailparse::parse_mail(raw)
        .map_err(|e| unsupported(1, format!("MIME {kind} does not parse: {e}")))?;
    if !mail.ctype.mimetype.starts_with("multipart/") {
        return Err(unsupported(
            1,
            format!(
                "MIME {kind} of type `{}` is not supported; expected multipart/mixed",
                shortened(&mail.ctype.mimetype)
            ),
        ));
    }
    if !mail.ctype.params.contains_key("boundary") {
        return Err(unsupported(
            1,
            format!("multipart {kind} without a boundary"),
        ));
    }
    let mut parts = Vec::new();
    leaves(&mail, &mut parts);

    let mut out = UserData::default();
    let mut k3s_part_line: Option<usize> = None;
    for part in parts {
        let first_line = line_of(raw, part.raw_bytes) + 1;
        let ptype = &part.ctype.mimetype;
        if ptype != "text/cloud-config" {
            out.ignored.push(format!(
                "{path}:{first_line}: MIME part of type {}",
                shortened(ptype)
            ));
            continue;
        }
        // cloud-init reads a part with `get_payload(decode=True)`: base64
        // and quoted-printable are decoded, any other transfer encoding is
        // taken as written; mailparse's `Body` makes the same choice.
        // Kept as written, so errors and provenance name lines of the file.
        let as_written = |body: &[u8]| {
            let text = std::str::from_utf8(body).map_err(|_| {
                unsupported(first_line, "text/cloud-config part is not UTF-8".into())
            })?;
            parse_cloud_config(path, text, line_of(raw, body))
        };
        let ud = match part.get_body_encoded() {
            Body::SevenBit(b) | Body::EightBit(b) => as_written(b.get_raw())?,
            Body::Binary(b) => as_written(b.get_raw())?,
            // Decoded first; lines then count within the decoded part.
            Body::Base64(b) | Body::QuotedPrintable(b) => {
                let decoded = b.get_decoded_as_string().map_err(|e| {
                    unsupported(
                        first_line,
                        format!("text/cloud-config part does not decode: {e}"),
                    )
                })?;
                let label = format!("{path} (part at line {first_line}, decoded)");
                parse_cloud_config(&label, &decoded, 0)?
            }
        };
        if ud.k3s.is_some() {
            if let Some(prev) = k3s_part_line {
                return Err(unsupported(
                    first_line,
                    format!(
                        "a second text/cloud-config part sets `k3s:` (the first is at line {prev}); \
                         keep the k3s settings in one part"
                    ),
                ));
            }
            k3s_part_line = Some(first_line);
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
    fn base64_and_quoted_printable_parts_are_decoded() {
        // "#cloud-config\nhostname: b64\n"
        let text = "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/cloud-config\nContent-Transfer-Encoding: base64\n\nI2Nsb3VkLWNvbmZpZwpob3N0bmFtZTogYjY0Cg==\n--b\nContent-Type: text/cloud-config\nContent-Transfer-Encoding: quoted-printable\n\n#cloud-config\nfqdn: q=3Dp.example\n--b--\n";
        let ud = parse_user_data(P, text.as_bytes()).unwrap();
        assert_eq!(ud.hostname.as_deref(), Some("b64"));
        assert_eq!(ud.fqdn.as_deref(), Some("q=p.example"));
        // A YAML error in a decoded part names the part.
        let bad = text.replace(
            "I2Nsb3VkLWNvbmZpZwpob3N0bmFtZTogYjY0Cg==",
            "I2Nsb3VkLWNvbmZpZwpob3N0bmFtZTogW29vcHMK",
        );
        let e = err(&bad);
        assert!(e.contains("(part at line 4, decoded)"), "{e}");
    }

    #[test]
    fn nested_multipart_and_crlf_are_read() {
        let text = "Content-Type: multipart/mixed; boundary=outer\r\n\r\n--outer\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n--inner\r\nContent-Type: text/cloud-config\r\n\r\n#cloud-config\r\nhostname: nested\r\n--inner--\r\n--outer\r\nContent-Type: text/x-shellscript\r\n\r\n#!/bin/sh\r\n--outer--\r\n";
        let ud = parse_user_data(P, text.as_bytes()).unwrap();
        assert_eq!(ud.hostname.as_deref(), Some("nested"));
        assert_eq!(
            ud.ignored,
            vec![format!("{P}:13: MIME part of type text/x-shellscript")]
        );
        let e = err("Content-Type: multipart/mixed\n\n--b\n--b--\n");
        assert!(e.contains("without a boundary"), "{e}");
        let e = err("Content-Type: text/plain\n\nhello\n");
        assert!(e.contains("expected multipart/mixed"), "{e}");
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
