//! The archive check `pct create` runs before extracting (pve-container
//! `src/PVE/LXC/Create.pm`, `check_tar_archive`): it reads
//! `tar -tvf ARCHIVE --numeric-owner` line by line, counts every line as a
//! member, rejects multi-volume members, and needs an `sbin` directory,
//! symlink or hard link, and at least 10 members.

/// Members `pct create` requires at least.
pub const PCT_MIN_MEMBERS: usize = 10;

/// Applies Proxmox's check to the output of `tar -tvf ARCHIVE --numeric-owner`.
/// The error text is Proxmox's own message.
pub fn pct_listing_check(listing: &str) -> Result<(), String> {
    let mut members = 0usize;
    let mut found_sbin = false;
    for line in listing.lines() {
        members += 1;
        let Some(parsed) = parse_verbose_line(line) else {
            // Create.pm prints "unable to parse line" and goes on.
            continue;
        };
        if parsed.kind == 'M' {
            return Err("found multi-volume member in archive".into());
        }
        let info = parsed
            .file_info
            .strip_prefix("./")
            .unwrap_or(parsed.file_info);
        found_sbin |= (parsed.kind == 'd' && info == "sbin/")
            || (parsed.kind == 'l' && info.starts_with("sbin ->"))
            || (parsed.kind == 'h' && info.starts_with("sbin link to"));
    }
    if !found_sbin {
        return Err("no 'sbin' directory (or link) found in archive".into());
    }
    if members < PCT_MIN_MEMBERS {
        return Err("less than 10 members in archive".into());
    }
    Ok(())
}

/// One line of GNU `tar -tv --numeric-owner`, e.g.
/// `drwxr-xr-x 0/0 0 2024-01-01 00:00 ./sbin/`.
#[derive(Debug, PartialEq, Eq)]
struct VerboseLine<'a> {
    kind: char,
    file_info: &'a str,
}

/// Same acceptance as Create.pm's regex
/// `^([a-zA-Z\-])(\S+)\s+(\d+)/(\d+)\s+(\d+(?:,\d+)?)\s+(\S+)\s+(\S+)\s+(.*)$`.
fn parse_verbose_line(line: &str) -> Option<VerboseLine<'_>> {
    let mut rest = line;
    let mut field = || -> Option<&str> {
        let start = rest.trim_start_matches(char::is_whitespace);
        let end = start.find(char::is_whitespace)?;
        let (f, r) = start.split_at(end);
        rest = r;
        Some(f)
    };
    let mode = field()?;
    let owner = field()?;
    let size = field()?;
    let _date = field()?;
    let _time = field()?;
    // `\s+(.*)`: the greedy `\s+` eats all whitespace before the name.
    let file_info = rest.trim_start_matches(char::is_whitespace);
    if rest.len() == file_info.len() {
        return None;
    }

    let mut mode_chars = mode.chars();
    let kind = mode_chars.next()?;
    if !(kind.is_ascii_alphabetic() || kind == '-') || mode_chars.as_str().is_empty() {
        return None;
    }
    let (uid, gid) = owner.split_once('/')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(uid) || !digits(gid) {
        return None;
    }
    let size_ok = match size.split_once(',') {
        Some((major, minor)) => digits(major) && digits(minor),
        None => digits(size),
    };
    size_ok.then_some(VerboseLine { kind, file_info })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(extra: &[&str]) -> String {
        let mut lines = vec!["drwxr-xr-x 0/0               0 2024-05-01 10:00 ./".to_owned()];
        for i in 0..9 {
            lines.push(format!(
                "-rw-r--r-- 0/0              12 2024-05-01 10:00 ./etc/f{i}"
            ));
        }
        lines.extend(extra.iter().map(|s| s.to_string()));
        lines.join("\n")
    }

    #[test]
    fn sbin_directory_symlink_or_hard_link_is_accepted() {
        for sbin in [
            "drwxr-xr-x 0/0               0 2024-05-01 10:00 ./sbin/",
            "drwxr-xr-x 0/0               0 2024-05-01 10:00 sbin/",
            "lrwxrwxrwx 0/0               0 2024-05-01 10:00 ./sbin -> usr/sbin",
            "hrwxr-xr-x 0/0               0 2024-05-01 10:00 ./sbin link to ./usr/sbin",
        ] {
            assert_eq!(pct_listing_check(&listing(&[sbin])), Ok(()), "{sbin}");
        }
    }

    #[test]
    fn missing_sbin_is_rejected() {
        let err = pct_listing_check(&listing(&[])).unwrap_err();
        assert!(err.contains("no 'sbin'"), "{err}");
        // A directory listed without the trailing slash, or a file, does not count.
        for not_sbin in [
            "drwxr-xr-x 0/0               0 2024-05-01 10:00 ./sbin",
            "-rwxr-xr-x 0/0               5 2024-05-01 10:00 ./sbin/",
            "drwxr-xr-x 0/0               0 2024-05-01 10:00 ./usr/sbin/",
        ] {
            assert!(
                pct_listing_check(&listing(&[not_sbin])).is_err(),
                "{not_sbin}"
            );
        }
    }

    #[test]
    fn fewer_than_ten_members_is_rejected() {
        let short = "drwxr-xr-x 0/0 0 2024-05-01 10:00 ./\n\
                     drwxr-xr-x 0/0 0 2024-05-01 10:00 ./sbin/";
        assert_eq!(
            pct_listing_check(short),
            Err("less than 10 members in archive".into())
        );
    }

    #[test]
    fn multi_volume_member_is_rejected() {
        let m = "Mrw-r--r-- 0/0 100 2024-05-01 10:00 ./big";
        assert!(pct_listing_check(&listing(&[m]))
            .unwrap_err()
            .contains("multi-volume"));
    }

    #[test]
    fn device_sizes_and_odd_lines() {
        let dev = parse_verbose_line("crw-rw-rw- 0/0 1,3 2024-05-01 10:00 ./dev/null").unwrap();
        assert_eq!((dev.kind, dev.file_info), ('c', "./dev/null"));
        assert_eq!(parse_verbose_line("tar: Removing leading `/'"), None);
        assert_eq!(parse_verbose_line("drwxr-xr-x root/root 0 d t ./"), None);
    }
}
