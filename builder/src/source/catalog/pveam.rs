//! Proxmox's appliance index, the list `pveam available` shows: how
//! `pveam update` fetches it and how pve-manager reads it
//! (proxmox/pve-manager `PVE/APLInfo.pm`):
//! - `download_aplinfo` fetches `<url>/<file>.gz` and the detached signature
//!   `<url>/<file>.asc` of the unpacked file, checks it with Proxmox's
//!   keyring (`/usr/share/doc/pve-manager/trustedkeys.gpg`) and stores the
//!   index as `/var/lib/pve-manager/apl-info/<host>`;
//! - `read_aplinfo_from_fh` reads blank-line separated records of
//!   `Key: value` lines (`Description:` may continue on indented lines),
//!   requires `Package`, `Type` (`lxc` or `openvz`), `OS`, `Version` and
//!   `Infopage`, and names the template after the last segment of
//!   `Location`, which is relative to `<url>` unless it has a scheme;
//! - the download (`apl_download` in `PVE/API2/Nodes.pm`) requires a hash
//!   and checks the record's `sha512sum` (or `md5sum`).

use std::collections::BTreeMap;

/// One template record of the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AplRecord {
    pub package: String,
    pub version: String,
    pub os: String,
    pub section: String,
    pub architecture: Option<String>,
    /// Absolute URL of the template.
    pub location: String,
    /// File name `pveam download` stores it under
    /// (`ubuntu-22.04-standard_22.04-1_amd64.tar.zst`).
    pub template: String,
    pub sha512: Option<String>,
    /// 1-based line of the record's first line in the index.
    pub line: usize,
}

/// The records of `text`, an index fetched from `base` (the directory its
/// relative `Location`s are below). A record that is not `Key: value` lines,
/// or a template record without the keys pveam requires, is an error (as
/// for `pveam update`): a truncated or damaged index must not silently lose
/// templates.
pub(crate) fn parse_aplinfo(text: &str, base: &str) -> Result<Vec<AplRecord>, String> {
    let mut records = Vec::new();
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    let mut first_line = 0;
    let mut last_key: Option<String> = None;
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().copied().chain(std::iter::once("")).enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            if !fields.is_empty() {
                if let Some(r) = record(std::mem::take(&mut fields), base, first_line)? {
                    records.push(r);
                }
            }
            last_key = None;
            continue;
        }
        if fields.is_empty() && last_key.is_none() {
            first_line = n;
        }
        if line.starts_with([' ', '\t']) {
            // A continuation line of the Description.
            if last_key.as_deref() != Some("description") {
                return Err(format!(
                    "line {n}: an indented line that continues no Description"
                ));
            }
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(format!(
                "line {n}: {:?} is not a `Key: value` line",
                super::shorten(line)
            ));
        };
        let key = key.trim().to_ascii_lowercase();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(format!("line {n}: a record line needs a key before `:`"));
        }
        fields.insert(key.clone(), value.trim().to_owned());
        last_key = Some(key);
    }
    Ok(records)
}

/// A finished record: `None` for pve-manager's news entry, which is no
/// template.
fn record(
    mut f: BTreeMap<String, String>,
    base: &str,
    line: usize,
) -> Result<Option<AplRecord>, String> {
    if f.get("package").map(String::as_str) == Some("pve-web-news") {
        return Ok(None);
    }
    let missing: Vec<&str> = ["package", "type", "os", "version", "location"]
        .into_iter()
        .filter(|k| f.get(*k).is_none_or(|v| v.is_empty()))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "line {line}: the record lacks {}: the index is incomplete (truncated, or not \
             an appliance index)",
            missing.join(", ")
        ));
    }
    let mut take = |k: &str| f.remove(k).unwrap_or_default();
    let package = take("package");
    let version = take("version");
    let os = take("os");
    let kind = take("type");
    if kind != "lxc" && kind != "openvz" {
        return Err(format!(
            "line {line}: {package} has the unknown type {kind:?}"
        ));
    }
    let location = take("location");
    let template = location.rsplit('/').next().unwrap_or("").to_owned();
    if template.is_empty() || template.contains("..") {
        return Err(format!(
            "line {line}: {package} has no template file name in its Location {location:?}"
        ));
    }
    let location = if location.contains("://") {
        location
    } else {
        format!(
            "{}/{}",
            base.trim_end_matches('/'),
            location.trim_start_matches('/')
        )
    };
    let section = f.remove("section").unwrap_or_else(|| "unknown".into());
    Ok(Some(AplRecord {
        package,
        version,
        os,
        section,
        architecture: f.remove("architecture"),
        location,
        template,
        sha512: f.remove("sha512sum").map(|s| s.to_ascii_lowercase()),
        line,
    }))
}

/// Orders versions as people read them: runs of digits by value, the rest
/// by bytes (`22.04-10` after `22.04-9`, `20240912` after `20231118`).
pub(crate) fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn runs(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ra, rb) = (runs(a), runs(b));
    for (x, y) in ra.iter().zip(&rb) {
        let ord = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            ((_, x), (_, y)) => x.cmp(y),
        };
        if ord.is_ne() {
            return ord;
        }
    }
    ra.len().cmp(&rb.len())
}

/// The record for `template` (the index's Package) at `version`, or the
/// newest, for `arch`. `Err` says what the index has instead.
pub(crate) fn select<'r>(
    records: &'r [AplRecord],
    template: &str,
    version: Option<&str>,
    arch: &str,
) -> Result<&'r AplRecord, String> {
    let fits = |r: &&AplRecord| r.architecture.as_deref().is_none_or(|a| a == arch);
    let named: Vec<&AplRecord> = records
        .iter()
        .filter(|r| r.package == template)
        .filter(fits)
        .collect();
    if named.is_empty() {
        return Err(no_such_template(records, template, arch));
    }
    match version {
        Some(v) => named
            .iter()
            .copied()
            .find(|r| r.version == v)
            .ok_or_else(|| {
                let mut have: Vec<&str> = named.iter().map(|r| r.version.as_str()).collect();
                have.sort_by(|a, b| version_cmp(a, b));
                format!(
                    "{template} has no version {v:?}; the index lists {}",
                    have.join(", ")
                )
            }),
        None => Ok(named
            .iter()
            .copied()
            .max_by(|a, b| version_cmp(&a.version, &b.version))
            .expect("named is not empty")),
    }
}

/// "no template X for amd64; close matches: …" from the index's names.
fn no_such_template(records: &[AplRecord], template: &str, arch: &str) -> String {
    let mut names: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| r.architecture.as_deref().is_none_or(|a| a == arch))
        .map(|r| (r.package.as_str(), r.version.as_str()))
        .collect();
    names.sort_by(|a, b| a.0.cmp(b.0).then_with(|| version_cmp(b.1, a.1)));
    names.dedup_by(|a, b| a.0 == b.0);
    let close = super::close_matches(template, names.iter().map(|(p, _)| *p));
    let shown: Vec<String> = close
        .iter()
        .map(|p| {
            let v = names.iter().find(|(n, _)| n == p).map_or("", |(_, v)| v);
            format!("{p} ({v})")
        })
        .collect();
    let count = names.len();
    match shown.is_empty() {
        true => format!(
            "no template {template:?} for {arch} among its {count} templates; `pveam available \
             --section system` lists them"
        ),
        false => format!(
            "no template {template:?} for {arch}; close matches: {}",
            shown.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records as in Proxmox's aplinfo-pve-9.dat (fields and their order
    /// from the live index; digests shortened).
    pub(crate) const INDEX: &str = "\
Package: pve-web-news
Version: 1.0
Type: lxc
OS: none
Section: none
Maintainer: Proxmox Support Team <support@proxmox.com>
Infopage: https://www.proxmox.com/en/news
Description: news
 longer text
  over lines

Package: ubuntu-22.04-standard
Version: 22.04-1
Type: lxc
OS: ubuntu-22.04
Section: system
Maintainer: Proxmox Support Team <support@proxmox.com>
Architecture: amd64
Location: system/ubuntu-22.04-standard_22.04-1_amd64.tar.zst
md5sum: 00000000000000000000000000000000
sha512sum: AA
Infopage: https://pve.proxmox.com/wiki/Linux_Container#pct_supported_distributions
Description: Ubuntu 22.04 Jammy (standard)
 A small Ubuntu 22.04 Jammy Jellyfish system including all standard packages.

Package: ubuntu-24.04-standard
Version: 24.04-2
Type: lxc
OS: ubuntu-24.04
Section: system
Architecture: amd64
Location: system/ubuntu-24.04-standard_24.04-2_amd64.tar.zst
sha512sum: bb
Infopage: https://pve.proxmox.com/wiki/Linux_Container
Description: Ubuntu 24.04 Noble (standard)

Package: rockylinux-9-default
Version: 20240912
Type: lxc
OS: rockylinux-9
Section: system
Architecture: amd64
Location: https://mirror.example/rockylinux-9-default_20240912_amd64.tar.xz
sha512sum: cc
Infopage: https://linuxcontainers.org
Description: LXC default image for rockylinux 9 (20240912)
";

    #[test]
    fn records_are_read_as_pveam_reads_them() {
        let r = parse_aplinfo(INDEX, "http://download.proxmox.com/images").unwrap();
        assert_eq!(r.len(), 3, "the news entry is not a template");
        assert_eq!(r[0].package, "ubuntu-22.04-standard");
        assert_eq!(r[0].template, "ubuntu-22.04-standard_22.04-1_amd64.tar.zst");
        assert_eq!(
            r[0].location,
            "http://download.proxmox.com/images/system/ubuntu-22.04-standard_22.04-1_amd64.tar.zst"
        );
        assert_eq!(r[0].sha512.as_deref(), Some("aa"));
        assert_eq!(r[0].line, 12);
        assert_eq!(r[0].os, "ubuntu-22.04");
        assert_eq!(r[0].section, "system");
        assert_eq!(
            r[2].location,
            "https://mirror.example/rockylinux-9-default_20240912_amd64.tar.xz"
        );
    }

    #[test]
    fn a_truncated_record_is_an_error_with_its_line() {
        let cut = &INDEX[..INDEX.find("Location: system/ubuntu-24.04").unwrap()];
        let e = parse_aplinfo(cut, "http://x").unwrap_err();
        assert!(e.starts_with("line 26: the record lacks location"), "{e}");
        let e = parse_aplinfo("<html>\n<body>", "http://x").unwrap_err();
        assert!(e.contains("is not a `Key: value` line"), "{e}");
    }

    #[test]
    fn newest_or_pinned_version_and_close_matches() {
        let mut r = parse_aplinfo(INDEX, "http://x").unwrap();
        let mut older = r[0].clone();
        older.version = "22.04-0".into();
        r.push(older);
        assert_eq!(
            select(&r, "ubuntu-22.04-standard", None, "amd64")
                .unwrap()
                .version,
            "22.04-1"
        );
        assert_eq!(
            select(&r, "ubuntu-22.04-standard", Some("22.04-0"), "amd64")
                .unwrap()
                .version,
            "22.04-0"
        );
        let e = select(&r, "ubuntu-22.04-standard", Some("22.04-7"), "amd64").unwrap_err();
        assert_eq!(
            e,
            "ubuntu-22.04-standard has no version \"22.04-7\"; the index lists 22.04-0, 22.04-1"
        );
        let e = select(&r, "ubuntu-22.04-standrd", None, "amd64").unwrap_err();
        assert_eq!(
            e,
            "no template \"ubuntu-22.04-standrd\" for amd64; close matches: ubuntu-22.04-standard (22.04-1), ubuntu-24.04-standard (24.04-2)"
        );
        let e = select(&r, "ubuntu-22.04-standard", None, "arm64").unwrap_err();
        assert!(
            e.starts_with("no template \"ubuntu-22.04-standard\" for arm64 among its 0"),
            "{e}"
        );
    }

    #[test]
    fn versions_order_by_number() {
        use std::cmp::Ordering::*;
        assert_eq!(version_cmp("22.04-10", "22.04-9"), Greater);
        assert_eq!(version_cmp("20240912", "20231118"), Greater);
        assert_eq!(version_cmp("12.7-1", "12.7-1"), Equal);
        assert_eq!(version_cmp("12.7", "12.7-1"), Less);
    }
}
