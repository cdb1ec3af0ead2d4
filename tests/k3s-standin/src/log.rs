//! Log lines on stderr in the logrus text style K3s uses:
//! `time="2026-01-02T03:04:05Z" level=info msg="Starting k3s …"`.

use std::time::{SystemTime, UNIX_EPOCH};

/// `secs` since the epoch as RFC 3339 UTC (`2026-01-02T03:04:05Z`).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The logrus text-formatter line for `level` and `msg`.
pub fn line(level: &str, msg: &str) -> String {
    format!(
        "time=\"{}\" level={level} msg={}",
        rfc3339(now_secs()),
        quote(msg)
    )
}

/// Quote like logrus: a Go-style double-quoted string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub fn info(msg: &str) {
    eprintln!("{}", line("info", msg));
}

pub fn warn(msg: &str) {
    eprintln!("{}", line("warning", msg));
}

pub fn error(msg: &str) {
    eprintln!("{}", line("error", msg));
}

pub fn fatal(msg: &str) {
    eprintln!("{}", line("fatal", msg));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
    }

    #[test]
    fn line_is_logrus_style() {
        let l = line("fatal", "--server is \"required\"");
        assert!(l.starts_with("time=\""), "{l}");
        assert!(
            l.ends_with(" level=fatal msg=\"--server is \\\"required\\\"\""),
            "{l}"
        );
    }
}
