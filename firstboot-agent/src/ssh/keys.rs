//! SSH public keys: checking one `ssh_authorized_keys` entry the way sshd
//! will read it, and putting keys into an `authorized_keys` file without
//! duplicating what is there. Pure functions.
//!
//! An entry is one authorized_keys line (sshd(8), AUTHORIZED_KEYS FILE
//! FORMAT): `[options] keytype base64-key [comment]`. A key sshd would
//! skip is refused here instead, with the reason: once keys are installed
//! the agent turns password log-in off, so a key that silently does not
//! work would lock the node.

use crate::message::{first_control, quoted};

/// Key types sshd accepts in authorized_keys (OpenSSH 9). `ssh-dss` is
/// left out on purpose: OpenSSH disabled DSA in 7.0 and removed it in 10.0.
pub const KEY_TYPES: [&str; 7] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Option names sshd(8) knows (compared without case).
const OPTIONS: [&str; 23] = [
    "agent-forwarding",
    "cert-authority",
    "command",
    "environment",
    "expiry-time",
    "from",
    "no-agent-forwarding",
    "no-port-forwarding",
    "no-pty",
    "no-user-rc",
    "no-x11-forwarding",
    "permitlisten",
    "permitopen",
    "port-forwarding",
    "principals",
    "pty",
    "no-touch-required",
    "verify-required",
    "restrict",
    "tunnel",
    "user-rc",
    "x11-forwarding",
    "touch-required",
];

/// OpenSSH refuses shorter RSA keys (`RequiredRSASize`, 1024 since 9.1).
const MIN_RSA_BITS: usize = 1024;

const NEW_KEY: &str =
    "make one with `ssh-keygen -t ed25519` and give the whole line of its .pub file";

/// One checked key line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedKey {
    /// The line as it goes into authorized_keys (trimmed).
    pub line: String,
    pub key_type: String,
    /// The base64 key data: what makes two lines the same key.
    pub blob: String,
}

/// Split a line into (options, key type, blob, comment) without checking
/// anything; `None` when no key type is found where one belongs.
fn split(line: &str) -> Option<(&str, &str, &str)> {
    let line = line.trim();
    let starts_with_type = |s: &str| {
        let first = s.split_whitespace().next().unwrap_or("");
        KEY_TYPES.contains(&first) || first == "ssh-dss"
    };
    let (options, rest) = if starts_with_type(line) {
        ("", line)
    } else {
        // Options end at the first white space outside double quotes.
        let mut in_quotes = false;
        let mut escaped = false;
        let mut end = line.len();
        for (i, c) in line.char_indices() {
            match c {
                '\\' if in_quotes && !escaped => {
                    escaped = true;
                    continue;
                }
                '"' if !escaped => in_quotes = !in_quotes,
                c if c.is_whitespace() && !in_quotes => {
                    end = i;
                    break;
                }
                _ => {}
            }
            escaped = false;
        }
        (&line[..end], line[end..].trim_start())
    };
    let mut words = rest.split_whitespace();
    let key_type = words.next()?;
    let blob = words.next().unwrap_or("");
    Some((options, key_type, blob))
}

/// The (type, blob) of an existing authorized_keys line, if it holds a
/// key; comments and lines sshd would not read give `None`.
pub fn key_of_line(line: &str) -> Option<(String, String)> {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    let (_, key_type, blob) = split(t)?;
    (KEY_TYPES.contains(&key_type) || key_type == "ssh-dss")
        .then(|| (key_type.to_owned(), blob.to_owned()))
}

/// Check one entry. `Err` says what is wrong and what to do.
pub fn parse_key(entry: &str) -> Result<AuthorizedKey, String> {
    let line = entry.trim();
    let shown = quoted(line);
    if line.is_empty() {
        return Err(format!("is empty — remove it, or {NEW_KEY}"));
    }
    if let Some((pos, c)) = first_control(line) {
        return Err(format!(
            "{shown} contains {} at character {pos}; a key is one line of text — copy the whole line of the .pub file again, without line breaks",
            crate::message::describe_char(c)
        ));
    }
    let (options, key_type, blob) = split(line).ok_or_else(|| {
        if line.matches('"').count() % 2 == 1 {
            format!("{shown}: an option's quoted value is not closed — close the `\"`")
        } else {
            format!("{shown} has no key type — {NEW_KEY}")
        }
    })?;
    if key_type == "ssh-dss" {
        return Err(format!(
            "{shown} is a DSA key, which OpenSSH no longer accepts (disabled in 7.0, removed in 10.0) — {NEW_KEY}"
        ));
    }
    if !KEY_TYPES.contains(&key_type) {
        // Words that are not options are not options: name the first one.
        let what = if options.is_empty() || check_options(options).is_err() {
            let first = line.split_whitespace().next().unwrap_or(line);
            format!("starts with {}", quoted(first))
        } else {
            format!("has {} where the key type belongs", quoted(key_type))
        };
        return Err(format!(
            "{shown} {what}, not a key type sshd knows ({}) — {NEW_KEY}",
            KEY_TYPES.join(", ")
        ));
    }
    if !options.is_empty() {
        check_options(options).map_err(|m| format!("{shown}: {m}"))?;
    }
    if blob.is_empty() {
        return Err(format!(
            "{shown} has no key data after {key_type} — copy the whole line of the .pub file"
        ));
    }
    let data = decode_base64(blob).ok_or_else(|| {
        format!(
            "{shown}: the key data after {key_type} is not base64 — it was cut or changed when copied; copy the whole line of the .pub file again"
        )
    })?;
    let (embedded, rest) = ssh_string(&data).ok_or_else(|| {
        format!("{shown}: the key data is too short to be a key — copy the whole line of the .pub file again")
    })?;
    if embedded != key_type.as_bytes() {
        return Err(format!(
            "{shown}: the line says {key_type} but its key data holds a {} key — copy the line of the .pub file again, unchanged",
            quoted(&String::from_utf8_lossy(embedded))
        ));
    }
    if !complete(key_type, rest) {
        return Err(format!(
            "{shown}: the key data after {key_type} is cut short or has bytes too many — copy the whole line of the .pub file again"
        ));
    }
    if key_type == "ssh-rsa" {
        let bits = rsa_bits(rest).unwrap_or(0);
        if bits < MIN_RSA_BITS {
            return Err(format!(
                "{shown} is a {bits}-bit RSA key; OpenSSH refuses RSA keys under {MIN_RSA_BITS} bits — {NEW_KEY}"
            ));
        }
    }
    Ok(AuthorizedKey {
        line: line.to_owned(),
        key_type: key_type.to_owned(),
        blob: blob.to_owned(),
    })
}

/// Each comma-separated option must be one sshd knows.
fn check_options(options: &str) -> Result<(), String> {
    let mut in_quotes = false;
    let mut escaped = false;
    let mut names = Vec::new();
    let mut current = String::new();
    for c in options.chars() {
        match c {
            '\\' if in_quotes && !escaped => {
                escaped = true;
                continue;
            }
            '"' if !escaped => in_quotes = !in_quotes,
            ',' if !in_quotes => names.push(std::mem::take(&mut current)),
            _ if !in_quotes => current.push(c),
            _ => {}
        }
        escaped = false;
    }
    if in_quotes {
        return Err("an option's quoted value is not closed — close the `\"`".into());
    }
    names.push(current);
    for n in names {
        let name = n.split('=').next().unwrap_or("").to_ascii_lowercase();
        if !OPTIONS.contains(&name.as_str()) {
            return Err(format!(
                "{} is not an authorized_keys option sshd knows (from=, command=, no-pty, restrict, …; see sshd(8)) — fix it, or give the key without options",
                quoted(&n)
            ));
        }
    }
    Ok(())
}

/// Standard base64 with padding (as .pub files have it).
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let last = i == bytes.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|b| **b == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        let b = n.to_be_bytes();
        out.extend_from_slice(&b[1..4 - pad]);
    }
    Some(out)
}

/// An SSH wire-format string (u32 length, bytes) and what follows it.
fn ssh_string(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let body = data.get(4..4 + len)?;
    Some((body, &data[4 + len..]))
}

/// Whether the key data after the type is what a key of that type holds
/// (RFC 4253 6.6, RFC 5656 3.1, RFC 8709 4, OpenSSH PROTOCOL.u2f): the
/// right number of strings and nothing after them.
fn complete(key_type: &str, mut rest: &[u8]) -> bool {
    let mut strings = Vec::new();
    while !rest.is_empty() {
        match ssh_string(rest) {
            Some((s, after)) => {
                strings.push(s);
                rest = after;
            }
            None => return false,
        }
    }
    let curve = |s: &[u8]| key_type.ends_with(std::str::from_utf8(s).unwrap_or("?"));
    match (key_type, strings.as_slice()) {
        ("ssh-ed25519", [k]) => k.len() == 32,
        ("sk-ssh-ed25519@openssh.com", [k, app]) => k.len() == 32 && !app.is_empty(),
        ("ssh-rsa", [e, n]) => !e.is_empty() && !n.is_empty(),
        ("sk-ecdsa-sha2-nistp256@openssh.com", [c, q, app]) => {
            c == b"nistp256" && !q.is_empty() && !app.is_empty()
        }
        (t, [c, q]) if t.starts_with("ecdsa-sha2-") => curve(c) && !q.is_empty(),
        _ => false,
    }
}

/// Size in bits of an RSA public key's modulus (after the type: e, n).
fn rsa_bits(after_type: &[u8]) -> Option<usize> {
    let (_e, rest) = ssh_string(after_type)?;
    let (n, _) = ssh_string(rest)?;
    let n: Vec<u8> = n.iter().copied().skip_while(|b| *b == 0).collect();
    let first = *n.first()?;
    Some((n.len() - 1) * 8 + (8 - first.leading_zeros() as usize))
}

/// How the agent marks its lines in authorized_keys, as it marks its
/// block in `/etc/hosts`.
pub const BLOCK_BEGIN: &str = "# --- BEGIN firstboot-agent ---";
pub const BLOCK_END: &str = "# --- END firstboot-agent ---";

/// What putting keys into an authorized_keys file comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// The new file, or `None` when it stays as it is.
    pub content: Option<String>,
    /// Keys written into the agent's block.
    pub in_block: usize,
    /// Keys found elsewhere in the file already (pct's block, or added by
    /// hand), so not written again.
    pub already: usize,
}

/// `existing` with `keys` in it: the agent's earlier block is replaced by
/// one holding the keys no other line of the file has, so a re-run changes
/// nothing and a key is never listed twice. Lines outside the block are
/// kept as they are.
pub fn merge_authorized_keys(existing: &str, keys: &[AuthorizedKey]) -> Merged {
    let mut kept = String::with_capacity(existing.len() + 256);
    let mut elsewhere: Vec<(String, String)> = Vec::new();
    let mut in_block = false;
    for line in existing.lines() {
        let t = line.trim();
        if t == BLOCK_BEGIN {
            in_block = true;
            continue;
        }
        if in_block {
            in_block = t != BLOCK_END;
            continue;
        }
        elsewhere.extend(key_of_line(line));
        kept.push_str(line);
        kept.push('\n');
    }
    let mut block: Vec<&AuthorizedKey> = Vec::new();
    let mut already = 0;
    for k in keys {
        if elsewhere
            .iter()
            .any(|(t, b)| *t == k.key_type && *b == k.blob)
        {
            already += 1;
        } else if !block.iter().any(|b| b.blob == k.blob) {
            block.push(k);
        }
    }
    if !block.is_empty() {
        kept.push_str(BLOCK_BEGIN);
        kept.push('\n');
        for k in &block {
            kept.push_str(&k.line);
            kept.push('\n');
        }
        kept.push_str(BLOCK_END);
        kept.push('\n');
    }
    Merged {
        content: (kept != existing).then_some(kept),
        in_block: block.len(),
        already,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A real ed25519 public key (ssh-keygen output).
    pub(crate) const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPOPtOnFImdUeF5WsjLaNpBgqIUaDrkKM8ROv3r9AJd2 admin@laptop";
    /// A real ecdsa-sha2-nistp256 public key.
    pub(crate) const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBJ45pw6UbK9ATIK4hGoNep13smYJSnnW1rRNmR8CjGpRGh1d8yvUzjmlthvz++EbzPogbHVlaC1KXP/+GUAphMA= ops";

    fn ssh_key(key_type: &str, rest: &[u8]) -> String {
        let mut data = (key_type.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(key_type.as_bytes());
        data.extend_from_slice(rest);
        format!("{key_type} {} t", encode(&data))
    }

    fn encode(data: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let mut b = [0u8; 3];
            b[..chunk.len()].copy_from_slice(chunk);
            let n = u32::from_be_bytes([0, b[0], b[1], b[2]]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    fn rsa(bits: usize) -> String {
        let mut rest = Vec::new();
        for part in [vec![1u8, 0, 1], {
            let mut n = vec![0u8];
            n.push(0x80);
            n.extend(std::iter::repeat_n(0x11, bits / 8 - 1));
            n
        }] {
            rest.extend_from_slice(&(part.len() as u32).to_be_bytes());
            rest.extend_from_slice(&part);
        }
        ssh_key("ssh-rsa", &rest)
    }

    #[test]
    fn good_keys_pass() {
        for k in [ED25519, ECDSA, &rsa(3072), &rsa(1024)] {
            let parsed = parse_key(k).unwrap_or_else(|e| panic!("{k}: {e}"));
            assert_eq!(parsed.line, k.trim());
        }
        let with_options =
            format!("from=\"10.0.0.0/8,192.168.1.1\",no-pty,command=\"echo a b\" {ED25519}");
        let k = parse_key(&format!("  {with_options}  ")).unwrap();
        assert_eq!(
            (k.key_type.as_str(), k.line.as_str()),
            ("ssh-ed25519", with_options.as_str())
        );
        assert_eq!(decode_base64("YQ==").unwrap(), b"a");
        assert_eq!(decode_base64("YWI=").unwrap(), b"ab");
        assert_eq!(decode_base64("YWJj").unwrap(), b"abc");
    }

    #[test]
    fn bad_keys_are_refused_with_the_reason() {
        let cut = &ED25519[..41];
        for (key, expect) in [
            ("", "is empty"),
            ("ssh-ed25519", "has no key data"),
            ("AAAAC3NzaC1lZDI1NTE5 x", "not a key type sshd knows"),
            ("ssh-ed448 AAAA", "not a key type sshd knows"),
            (cut, "not base64"),
            (&ED25519[..40], "cut short"),
            ("ssh-dss AAAAB3NzaC1kc3M= x", "DSA key"),
            (&format!("{ED25519}\nssh-rsa AAAA"), "contains a newline"),
            (
                &ED25519.replace("ssh-ed25519", "ssh-rsa"),
                "holds a \"ssh-ed25519\" key",
            ),
            (&rsa(768), "768-bit RSA key"),
            (
                &format!("no-pty,bogus {ED25519}"),
                "\"bogus\" is not an authorized_keys option",
            ),
            (&format!("command=\"x {ED25519}"), "not closed"),
            ("ssh-ed25519 AAAA", "too short"),
        ] {
            let e = parse_key(key).unwrap_err();
            assert!(e.contains(expect), "{key:?}: {e}");
            assert!(
                e.contains(" — ") || e.contains("copy"),
                "says what to do: {e}"
            );
        }
    }

    #[test]
    fn keys_go_into_a_block_of_their_own_once() {
        let a = parse_key(ED25519).unwrap();
        let b = parse_key(ECDSA).unwrap();
        let pct = format!("# --- BEGIN PVE ---\n{ECDSA}\n# --- END PVE ---\n");
        let m = merge_authorized_keys(&pct, &[a.clone(), b.clone(), a.clone()]);
        let new = m.content.unwrap();
        assert_eq!(
            new,
            format!("{pct}{BLOCK_BEGIN}\n{ED25519}\n{BLOCK_END}\n"),
            "the key pct wrote is not repeated"
        );
        assert_eq!((m.in_block, m.already), (1, 1));
        // Idempotent.
        let again = merge_authorized_keys(&new, &[a.clone(), b.clone()]);
        assert_eq!(again.content, None);
        assert_eq!((again.in_block, again.already), (1, 1));
        // A key dropped from the metadata leaves the agent's block only.
        let fewer = merge_authorized_keys(&new, &[b]).content.unwrap();
        assert_eq!(fewer, pct);
        // The same key with other options or comment counts as there.
        let hand = format!(
            "restrict {} other-comment\n",
            &ED25519[..ED25519.len() - 13]
        );
        assert_eq!(merge_authorized_keys(&hand, &[a]).content, None);
        assert_eq!(key_of_line("# ssh-ed25519 AAAA"), None);
    }
}
