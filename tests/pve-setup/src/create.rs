//! Create.pm: unpack a template into the rootfs the way `pct create` does.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::cmd::{self, Input};
use crate::config::{parse_id_maps, userns_command, CtConfig};

/// PVE::Storage::Plugin `@COMMON_TAR_FLAGS`.
pub(crate) const COMMON_TAR_FLAGS: &[&str] = &[
    "--numeric-owner",
    "--acls",
    "--xattrs",
    "--xattrs-include=user.*",
    "--xattrs-include=security.capability",
    "--sparse",
];

// Create.pm tar_compression_option: GNU tar needs to be told.
pub(crate) fn tar_compression_option(archive: &str) -> Result<Option<&'static str>, String> {
    let Some(i) = archive.rfind(".tar") else {
        return Err(format!(
            "file does not look like a template archive: {archive}"
        ));
    };
    let ext = &archive[i + 4..];
    if ext.is_empty() {
        return Ok(None);
    }
    if !ext.starts_with('.') || ext[1..].contains('.') || ext.len() < 2 {
        return Err(format!(
            "file does not look like a template archive: {archive}"
        ));
    }
    match ext {
        ".gz" => Ok(Some("-z")),
        ".bz2" => Ok(Some("-j")),
        ".xz" => Ok(Some("-J")),
        ".lzo" => Ok(Some("--lzop")),
        ".zst" => Ok(Some("--zstd")),
        other => Err(format!("unrecognized compression format: {other}")),
    }
}

/// The facts `check_tar_archive` gathers from a `tar -tvf` listing.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Listing {
    pub members: usize,
    pub found_sbin: bool,
}

// Create.pm check_tar_archive's line parser: type, perms, uid/gid, size
// (maybe major,minor), date, time, then the name (and link info).
pub(crate) fn check_listing(text: &str) -> Result<Listing, String> {
    let mut l = Listing::default();
    for line in text.lines() {
        l.members += 1;
        let Some((kind, info)) = parse_tv_line(line) else {
            eprintln!("pve-setup: check tar: unable to parse line: {line}");
            continue;
        };
        if kind == 'M' {
            return Err("found multi-volume member in archive".into());
        }
        let info = info.strip_prefix("./").unwrap_or(info);
        if !l.found_sbin
            && ((kind == 'd' && info == "sbin/")
                || (kind == 'l' && info.starts_with("sbin ->"))
                || (kind == 'h' && info.starts_with("sbin link to")))
        {
            l.found_sbin = true;
        }
    }
    Ok(l)
}

fn parse_tv_line(line: &str) -> Option<(char, &str)> {
    let kind = line.chars().next()?;
    if !(kind.is_ascii_alphabetic() || kind == '-') {
        return None;
    }
    let mut rest = line;
    let mut fields = Vec::new();
    for _ in 0..5 {
        let t = rest.trim_start();
        let end = t.find(char::is_whitespace)?;
        fields.push(&t[..end]);
        rest = &t[end..];
    }
    let ids = fields[1].split_once('/')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if fields[0].len() < 2 || !digits(ids.0) || !digits(ids.1) {
        return None;
    }
    let size_ok = match fields[2].split_once(',') {
        Some((a, b)) => digits(a) && digits(b),
        None => digits(fields[2]),
    };
    if !size_ok {
        return None;
    }
    let info = rest.trim_start();
    if info.len() == rest.len() {
        return None;
    }
    Some((kind, info))
}

/// Unpack `template` into `rootfs` with pct's tar command line.
pub fn extract(template: &Path, rootfs: &Path, conf: &CtConfig) -> Result<(), String> {
    let archive = template.display().to_string();
    let compression = tar_compression_option(&archive)?;
    check_tar_archive(&archive, compression)?;
    let (map, root_uid, root_gid) = parse_id_maps(conf)?;
    prepare_rootfs(rootfs, root_uid, root_gid)?;

    // Create.pm restore_tar_archive_command
    let mut argv = userns_command(&map);
    argv.extend(cmd::argv(&["tar", "xpf", "-"]));
    if let Some(c) = compression {
        argv.push(c.to_owned());
    }
    argv.push("--totals".to_owned());
    argv.extend(cmd::argv(COMMON_TAR_FLAGS));
    argv.extend(["-C".to_owned(), rootfs.display().to_string()]);
    // --skip-old-files: bsdtar's -k, existing files are kept silently
    argv.extend(cmd::argv(&[
        "--skip-old-files",
        "--anchored",
        "--exclude",
        "./dev/*",
    ]));
    // restore_tar_archive: the archive is tar's stdin, opened by the host,
    // so the mapped root need not be able to read it.
    let input = File::open(template).map_err(|e| format!("failed to open '{archive}': {e}"))?;
    cmd::run(&argv, Input::File(input)).map_err(|e| {
        if !map.is_empty() && e.contains("newuidmap") {
            format!(
                "{e}\nlxc-usernsexec needs root's subordinate ids: add `root:100000:65536` to \
                 /etc/subuid and /etc/subgid (as on a Proxmox VE host)"
            )
        } else {
            e
        }
    })?;
    Ok(())
}

// Create.pm check_tar_archive. pct runs it only for archives from untrusted
// sources (backup providers); this port checks every template.
fn check_tar_archive(archive: &str, compression: Option<&str>) -> Result<(), String> {
    let mut argv = cmd::argv(&["tar", "-tvf", archive]);
    if let Some(c) = compression {
        argv.push(c.to_owned());
    }
    argv.push("--numeric-owner".to_owned());
    let out = cmd::run(&argv, Input::Null)?;
    let l = check_listing(&out.stdout)?;
    if !l.found_sbin {
        return Err(format!(
            "no 'sbin' directory (or link) found in archive '{archive}'"
        ));
    }
    if l.members < 10 {
        return Err(format!("less than 10 members in archive '{archive}'"));
    }
    Ok(())
}

// The rootfs directory as pct's storage makes it: a subvol/dir volume is
// chown'd to the mapped root (LXC.pm create_disks), a new ext4 gets
// root_owner=uid:gid (LXC.pm mkfs); both 0755.
fn prepare_rootfs(rootfs: &Path, uid: u32, gid: u32) -> Result<(), String> {
    std::fs::create_dir_all(rootfs)
        .map_err(|e| format!("creating rootfs {}: {e}", rootfs.display()))?;
    std::fs::set_permissions(rootfs, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", rootfs.display()))?;
    std::os::unix::fs::chown(rootfs, Some(uid), Some(gid))
        .map_err(|e| format!("chown {uid}:{gid} {}: {e}", rootfs.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_options() {
        assert_eq!(tar_compression_option("a.tar.zst").unwrap(), Some("--zstd"));
        assert_eq!(tar_compression_option("a.tar").unwrap(), None);
        assert_eq!(tar_compression_option("a.tar.gz").unwrap(), Some("-z"));
        assert!(tar_compression_option("a.tar.rar")
            .unwrap_err()
            .contains("unrecognized"));
        assert!(tar_compression_option("a.zip").is_err());
    }

    #[test]
    fn listing_checks() {
        let text = "drwxr-xr-x 0/0               0 2026-12-01 12:50 ./\n\
                    lrwxrwxrwx 0/0               0 2026-12-01 12:50 ./sbin -> usr/sbin\n\
                    crw-rw-rw- 0/0             5,1 2026-12-01 12:50 ./dev/console\n\
                    -rw-r--r-- 0/0            3040 2023-05-25 15:54 ./etc/a b\n";
        let l = check_listing(text).unwrap();
        assert_eq!(
            l,
            Listing {
                members: 4,
                found_sbin: true
            }
        );
        let l = check_listing("drwxr-xr-x 0/0 0 2026-12-01 12:50 ./sbin/\n").unwrap();
        assert!(l.found_sbin);
        let l = check_listing("drwxr-xr-x 0/0 0 2026-12-01 12:50 ./sbin/x/\n").unwrap();
        assert!(!l.found_sbin);
        assert!(check_listing("M--------- 0/0 0 2026-12-01 12:50 x\n").is_err());
    }
}
