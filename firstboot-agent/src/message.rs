//! How the agent words what it tells people.
//!
//! **One convention for errors, crate-wide:** an error's `Display` is the
//! whole message — `where: what — what to do` — including the text of the
//! OS or library error that caused it, and no error exposes that cause
//! again through `std::error::Error::source`. Wrapping variants are
//! `#[error(transparent)]`. So `{e}`, `{e:#}` and anyhow's `{:#}` chain all
//! print each cause exactly once. (thiserror treats a field named `source`
//! as the source: fields holding a cause are called `cause` instead.)
//!
//! Messages never show Rust type names: serde's wording is turned into
//! YAML's words by [`plain_serde`].

use std::io;

/// The text of an I/O error without the `(os error N)` suffix.
pub fn io_text(e: &io::Error) -> String {
    let text = e.to_string();
    match e.raw_os_error() {
        Some(code) => text
            .strip_suffix(&format!(" (os error {code})"))
            .map(str::to_owned)
            .unwrap_or(text),
        None => text,
    }
}

/// What to do about an I/O error of this kind, when there is a general
/// answer.
pub fn io_advice(e: &io::Error) -> Option<&'static str> {
    use nix::errno::Errno;
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::EACCES | Errno::EPERM) => {
            Some("run firstboot-agent as root (the unit does), or check the owner and mode")
        }
        Some(Errno::EROFS) => Some("the filesystem is mounted read-only; remount it read-write"),
        Some(Errno::ENOSPC | Errno::EDQUOT) => Some("free some space on that filesystem"),
        Some(Errno::ENOTDIR) => Some("a part of the path is a file, not a directory"),
        Some(Errno::EISDIR) => Some("a directory is in the way; move it aside"),
        _ => None,
    }
}

/// `cause — advice` for an I/O error.
pub fn io_cause(e: &io::Error) -> String {
    match io_advice(e) {
        Some(a) => format!("{} — {a}", io_text(e)),
        None => io_text(e),
    }
}

/// serde's messages in YAML's words: `expected struct K3sMeta` becomes
/// `expected a mapping`, `expected u64` `expected a whole number`,
/// `invalid type: sequence` `invalid type: a list`. Only the phrases after
/// `invalid type: `, `invalid value: ` and `expected ` are rewritten, and
/// text in backticks or quotes (the user's keys and values) never is.
pub fn plain_serde(message: &str) -> String {
    const MARKERS: [&str; 3] = ["invalid type: ", "invalid value: ", "expected "];
    let mut out = String::with_capacity(message.len());
    let mut quote: Option<char> = None;
    let mut i = 0;
    while i < message.len() {
        let rest = &message[i..];
        let c = rest.chars().next().unwrap_or(' ');
        if let Some(q) = quote {
            quote = (c != q).then_some(q);
        } else if c == '`' || c == '"' {
            quote = Some(c);
        } else {
            let word_start = message[..i]
                .chars()
                .last()
                .is_none_or(|p| !p.is_alphanumeric() && p != '_');
            if let Some(m) = MARKERS.iter().find(|m| word_start && rest.starts_with(**m)) {
                out.push_str(m);
                let phrase = &rest[m.len()..];
                let end = phrase.find([',', ';']).unwrap_or(phrase.len());
                out.push_str(&plain_phrase(&phrase[..end]));
                i += m.len() + end;
                continue;
            }
        }
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// One type phrase of a serde message (`struct K3sMeta`, `sequence`, `u64`).
fn plain_phrase(phrase: &str) -> String {
    const NAMED: [(&str, &str); 6] = [
        ("tuple struct ", "a list"),
        ("newtype struct ", "a value"),
        ("unit struct ", "an empty value"),
        ("struct ", "a mapping"),
        ("enum ", "one of the allowed words"),
        ("tuple variant ", "a list"),
    ];
    for (prefix, plain) in NAMED {
        if let Some(name) = phrase.strip_prefix(prefix) {
            if name.starts_with(|c: char| c.is_ascii_uppercase())
                && name.chars().all(|c| c.is_alphanumeric() || c == '_')
            {
                return plain.to_owned();
            }
        }
    }
    let plain = match phrase {
        "a YAML tag starting with '!'" => "a single word, not a list or mapping",
        "sequence" | "a sequence" => "a list",
        "map" | "a map" => "a mapping",
        "unit value" | "unit" => "an empty value",
        "boolean" | "a boolean" => "true or false",
        "option" => "a value",
        "variant identifier" => "one of the allowed words",
        "field identifier" => "a key",
        "a borrowed string" => "a string",
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        other => return other.to_owned(),
    };
    plain.to_owned()
}

/// The first character that cannot stand in a one-line value written into
/// a file (a control character, or a Unicode line or paragraph separator),
/// with its 1-based position.
pub fn first_control(value: &str) -> Option<(usize, char)> {
    value
        .chars()
        .enumerate()
        .find(|(_, c)| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
        .map(|(i, c)| (i + 1, c))
}

/// How to name a control character in a message.
pub fn describe_char(c: char) -> String {
    match c {
        '\n' => "a newline (\\n)".into(),
        '\r' => "a carriage return (\\r)".into(),
        '\t' => "a tab (\\t)".into(),
        '\u{1b}' => "an escape character (\\e)".into(),
        '\0' => "a NUL byte".into(),
        c => format!("the control character U+{:04X}", c as u32),
    }
}

/// `Err(message)` when `value` holds a control character; the message says
/// which one, where, and what to do.
pub fn check_one_line(value: &str) -> Result<(), String> {
    match first_control(value) {
        None => Ok(()),
        Some((pos, c)) => Err(format!(
            "contains {} at character {pos}; the value is written into a file where it must be a single line of text — remove it",
            describe_char(c)
        )),
    }
}

/// Longest part of a value a message quotes.
const QUOTE_MAX: usize = 60;

/// `text` cut to its first 60 characters (with `…`), so a long value —
/// maybe holding a secret further on — is not copied into logs whole.
pub fn shortened(text: &str) -> String {
    match text.char_indices().nth(QUOTE_MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// `value` quoted for a message: Rust-escaped so control characters show,
/// and cut like [`shortened`] with its length when long.
pub fn quoted(value: &str) -> String {
    match value.char_indices().nth(QUOTE_MAX) {
        Some((end, _)) => format!(
            "{:?}… ({} characters)",
            &value[..end],
            value.chars().count()
        ),
        None => format!("{value:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_quoted_shortened() {
        assert_eq!(quoted("a\nb"), "\"a\\nb\"");
        let long = "x".repeat(70);
        assert_eq!(
            quoted(&long),
            format!("\"{}\"… (70 characters)", "x".repeat(60))
        );
        assert_eq!(shortened(&long), format!("{}…", "x".repeat(60)));
        assert_eq!(shortened("é".repeat(60).as_str()), "é".repeat(60));
    }

    #[test]
    fn os_error_text_once_without_code() {
        let e = io::Error::from_raw_os_error(2);
        assert_eq!(io_text(&e), "No such file or directory");
        assert_eq!(io_cause(&e), "No such file or directory");
        let e = io::Error::from_raw_os_error(13);
        assert_eq!(
            io_cause(&e),
            "Permission denied — run firstboot-agent as root (the unit does), or check the owner and mode"
        );
        let e = io::Error::other("custom");
        assert_eq!(io_text(&e), "custom");
    }

    #[test]
    fn serde_words_become_yaml_words() {
        for (serde, plain) in [
            (
                "invalid type: sequence, expected struct K3sMeta",
                "invalid type: a list, expected a mapping",
            ),
            (
                "invalid type: string \"x\", expected u64",
                "invalid type: string \"x\", expected a whole number",
            ),
            (
                "invalid type: sequence, expected a YAML tag starting with '!'",
                "invalid type: a list, expected a single word, not a list or mapping",
            ),
            (
                "invalid type: map, expected a sequence",
                "invalid type: a mapping, expected a list",
            ),
            (
                "invalid type: integer `3`, expected a boolean",
                "invalid type: integer `3`, expected true or false",
            ),
            (
                "invalid type: unit value, expected a string",
                "invalid type: an empty value, expected a string",
            ),
            (
                "invalid value: integer `-1`, expected u32",
                "invalid value: integer `-1`, expected a whole number",
            ),
            (
                "invalid type: sequence, expected enum Role",
                "invalid type: a list, expected one of the allowed words",
            ),
        ] {
            assert_eq!(plain_serde(serde), plain, "{serde}");
        }
        // The user's words stay as they are.
        for kept in [
            "unknown field `map`, expected one of `role`, `server`",
            "unknown variant `struct Foo`, expected `server` or `agent`",
            "missing field `u64`",
            "duplicate field `option`",
            "mapping values are not allowed in this context",
            "block sequence entries are not allowed in this context",
            "did not find expected key while parsing a block mapping",
        ] {
            assert_eq!(plain_serde(kept), kept);
        }
    }

    /// The convention at work: no error of the crate repeats its cause
    /// through `source()`, so anyhow's `{:#}` prints the cause once.
    #[test]
    fn no_error_type_repeats_its_cause() {
        use crate::k3s::binary::DownloadError;
        use crate::k3s::K3sError;
        use crate::metadata::MetadataError;
        use crate::rootfs::FileError;
        use crate::state::StateError;
        use crate::system::SystemError;
        let enoent = || io::Error::from_raw_os_error(2);
        let file = || FileError::new("reading", "/x", enoent());
        let errors: Vec<Box<dyn std::error::Error + Send + Sync>> = vec![
            Box::new(file()),
            Box::new(MetadataError::from(file())),
            Box::new(K3sError::from(file())),
            Box::new(K3sError::from(SystemError::Io {
                action: "reading /x".into(),
                cause: enoent(),
            })),
            Box::new(DownloadError::from(file())),
            Box::new(StateError::from(file())),
            Box::new(SystemError::Spawn {
                command: "reading /x".into(),
                cause: enoent(),
            }),
        ];
        for e in errors {
            assert!(e.source().is_none(), "{e} has a source");
            let shown = format!("{:#}", anyhow::Error::from_boxed(e).context("step"));
            assert_eq!(
                shown.matches("No such file or directory").count(),
                1,
                "{shown}"
            );
            assert!(!shown.contains("os error"), "{shown}");
            assert!(
                shown.starts_with("step: ") && shown.contains("reading /x"),
                "{shown}"
            );
        }
    }

    #[test]
    fn control_characters_are_found_and_named() {
        assert_eq!(first_control("w1"), None);
        assert_eq!(first_control("w1\nevil"), Some((3, '\n')));
        assert_eq!(first_control("a\u{2028}"), Some((2, '\u{2028}')));
        assert_eq!(first_control("ä\u{85}"), Some((2, '\u{85}')));
        let e = check_one_line("w1\nevil: x").unwrap_err();
        assert!(
            e.starts_with("contains a newline (\\n) at character 3;"),
            "{e}"
        );
        assert!(check_one_line("x\u{1b}[31m")
            .unwrap_err()
            .contains("escape character"));
        assert!(check_one_line("ok-value_1.2").is_ok());
    }
}
