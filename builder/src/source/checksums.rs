//! Checksum files as vendors publish them: GNU `sha256sum` output (Debian,
//! Ubuntu `SHA256SUMS`) and BSD tagged lines (Rocky `CHECKSUM`, `sha256sum
//! --tag`). Pure functions over the text, so they are tested on literal output.

use node_spec::Sha256Hex;

/// All sha256 entries of a checksum file, in file order, as `(name, digest)`.
///
/// Accepted lines:
/// - GNU: `<hex>  name` (text mode) and `<hex> *name` (binary mode), and the
///   escaped form `\<hex>  na\\me` sha256sum uses for names with `\` or newline;
/// - BSD: `SHA256 (name) = <hex>`;
/// - a bare `<hex>` (a `file.sha256` holding only the digest), with name `""`.
///
/// Everything else is skipped: `#` comments, blank lines, other algorithms
/// (`SHA512 (…)`, 128-digit digests) and the armour of a clear-signed file.
/// Names lose a leading `./`, so `./disk.qcow2` matches `disk.qcow2`.
pub fn parse_checksums(text: &str) -> Vec<(String, Sha256Hex)> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<(String, Sha256Hex)> {
    let line = line.trim_end_matches('\r').trim_start();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    if let Some(rest) = line.strip_prefix("SHA256 (") {
        // The name may itself contain ") = ", so split at the last one.
        let (name, hex) = rest.rsplit_once(") = ")?;
        let digest = hex.trim().parse().ok()?;
        return Some((normalize(name), digest));
    }
    let (escaped, line) = match line.strip_prefix('\\') {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let hex = line.get(..64)?;
    let rest = &line[64..];
    let digest: Sha256Hex = hex.parse().ok()?;
    if rest.trim().is_empty() {
        return Some((String::new(), digest));
    }
    // One space, then ' ' (text) or '*' (binary) before the name.
    let name = rest
        .strip_prefix(" *")
        .or_else(|| rest.strip_prefix("  "))?;
    let name = if escaped {
        unescape(name)
    } else {
        name.to_owned()
    };
    Some((normalize(&name), digest))
}

fn unescape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn normalize(name: &str) -> String {
    name.strip_prefix("./").unwrap_or(name).to_owned()
}

/// The digest for `name` (the artifact URL's last path segment). A file with a
/// single nameless entry (a bare digest) applies to whatever it was fetched
/// for. `Err` carries the names that were available, for the error message.
pub fn select_checksum(
    entries: &[(String, Sha256Hex)],
    name: &str,
) -> Result<Sha256Hex, Vec<String>> {
    let mut matches = entries.iter().filter(|(n, _)| n == name).map(|(_, d)| d);
    if let Some(first) = matches.next() {
        // The same name twice with different digests is ambiguous, not "the first".
        if matches.all(|d| d == first) {
            return Ok(first.clone());
        }
        return Err(vec![format!(
            "{name} (listed twice with different digests)"
        )]);
    }
    if let [(only, digest)] = entries {
        if only.is_empty() {
            return Ok(digest.clone());
        }
    }
    Err(entries.iter().map(|(n, _)| n.clone()).collect())
}

/// The last path segment of a URL, percent-decoded, without query or fragment:
/// the name a checksum file lists the artifact under.
pub fn url_file_name(url: &str) -> String {
    let no_frag = url.split('#').next().unwrap_or(url);
    let path = no_frag.split('?').next().unwrap_or(no_frag);
    let last = path.rsplit('/').next().unwrap_or(path);
    percent_decode(last)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            // Work on bytes: slicing the &str here could split a UTF-8 char.
            if let (Some(hi), Some(lo)) = (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|v| u8::try_from(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "5c7f8e8bd1c1e1b5c36c0e1a42d6b27a2aa7b6f5e2d1f4e6a0a5b9c8d7e6f5a4";
    const B: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn d(s: &str) -> Sha256Hex {
        s.parse().unwrap()
    }

    #[test]
    fn ubuntu_sha256sums_binary_mode() {
        let text = format!(
            "{A} *ubuntu-24.04-server-cloudimg-amd64-root.tar.xz\n\
             {B} *ubuntu-24.04-server-cloudimg-amd64.img\n"
        );
        assert_eq!(
            parse_checksums(&text),
            vec![
                (
                    "ubuntu-24.04-server-cloudimg-amd64-root.tar.xz".to_string(),
                    d(A)
                ),
                ("ubuntu-24.04-server-cloudimg-amd64.img".to_string(), d(B)),
            ]
        );
    }

    #[test]
    fn gnu_text_mode_with_comments_blank_lines_and_crlf() {
        let text = format!(
            "# made by sha256sum\n\n{A}  debian-12-generic-amd64.qcow2\r\n{B}  ./rootfs.tar.zst\n"
        );
        assert_eq!(
            parse_checksums(&text),
            vec![
                ("debian-12-generic-amd64.qcow2".to_string(), d(A)),
                ("rootfs.tar.zst".to_string(), d(B)),
            ]
        );
    }

    #[test]
    fn rocky_bsd_checksum_file() {
        let text = format!(
            "# Rocky-9-Container-Base.latest.x86_64.tar.xz: 46789012 bytes\n\
             SHA256 (Rocky-9-Container-Base.latest.x86_64.tar.xz) = {A}\n\
             SHA256 (Rocky-9-GenericCloud-Base.latest.x86_64.qcow2) = {}\n",
            B.to_uppercase()
        );
        assert_eq!(
            parse_checksums(&text),
            vec![
                (
                    "Rocky-9-Container-Base.latest.x86_64.tar.xz".to_string(),
                    d(A)
                ),
                (
                    "Rocky-9-GenericCloud-Base.latest.x86_64.qcow2".to_string(),
                    d(B)
                ),
            ]
        );
    }

    #[test]
    fn other_algorithms_and_signature_armour_are_skipped() {
        let sha512 = "ab".repeat(64);
        let text = format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n\
             SHA512 (a.img) = {sha512}\n{sha512}  a.img\n{A}  a.img\n\
             -----BEGIN PGP SIGNATURE-----\niQIzBAEBCAAdFiEE\n-----END PGP SIGNATURE-----\n"
        );
        assert_eq!(parse_checksums(&text), vec![("a.img".to_string(), d(A))]);
    }

    #[test]
    fn escaped_gnu_names_and_bare_digests() {
        let text = format!("\\{A}  odd\\\\name\\n.img\n");
        assert_eq!(
            parse_checksums(&text),
            vec![("odd\\name\n.img".to_string(), d(A))]
        );
        assert_eq!(
            parse_checksums(&format!("{B}\n")),
            vec![(String::new(), d(B))]
        );
    }

    #[test]
    fn malformed_lines_are_not_entries() {
        // One space only, a short digest, non-hex, BSD without " = ".
        let text = format!(
            "{A} a.img\n{}  b.img\n{}  c.img\nSHA256 (d.img) {A}\n",
            &A[..63],
            "g".repeat(64)
        );
        assert_eq!(parse_checksums(&text), vec![]);
    }

    #[test]
    fn select_picks_the_named_entry_or_lists_names() {
        let entries = vec![("a.img".to_string(), d(A)), ("b.img".to_string(), d(B))];
        assert_eq!(select_checksum(&entries, "b.img"), Ok(d(B)));
        assert_eq!(
            select_checksum(&entries, "c.img"),
            Err(vec!["a.img".to_string(), "b.img".to_string()])
        );
        let bare = vec![(String::new(), d(A))];
        assert_eq!(select_checksum(&bare, "whatever.img"), Ok(d(A)));
        let conflicting = vec![("a.img".to_string(), d(A)), ("a.img".to_string(), d(B))];
        assert!(select_checksum(&conflicting, "a.img").is_err());
    }

    #[test]
    fn url_file_name_strips_query_and_decodes() {
        assert_eq!(
            url_file_name("https://h.invalid/r/9/Rocky-9-Container-Base.latest.x86_64.tar.xz"),
            "Rocky-9-Container-Base.latest.x86_64.tar.xz"
        );
        assert_eq!(
            url_file_name("http://h.invalid/a%20b.img?x=1#frag"),
            "a b.img"
        );
        assert_eq!(url_file_name("http://h.invalid/bad%zz"), "bad%zz");
        assert_eq!(url_file_name("http://h.invalid/end%2"), "end%2");
        assert_eq!(url_file_name("http://h.invalid/%é.img"), "%é.img");
    }
}
