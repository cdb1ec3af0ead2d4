//! Which distribution a rootfs holds (Setup.pm `$autodetect_type` and the
//! plugins' `new`).

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::perl_num;
use crate::ctfs::Ct;

/// The OS type pct detected, with the version its plugin parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Distro {
    Debian {
        version: u32,
    },
    Ubuntu {
        version: String,
    },
    /// `version` from /etc/redhat-release (CentOS, Rocky, AlmaLinux)
    CentOS {
        version: String,
    },
}

impl Distro {
    /// pct's `ostype` (names /usr/share/lxc/config/<ostype>.common.conf).
    pub fn ostype(&self) -> &'static str {
        match self {
            Distro::Debian { .. } => "debian",
            Distro::Ubuntu { .. } => "ubuntu",
            Distro::CentOS { .. } => "centos",
        }
    }
}

/// Detect the distribution of `rootfs` as `pct create` does.
pub fn detect(rootfs: &Path) -> Result<Distro, String> {
    let ct = Ct::new(rootfs, None)?;
    detect_in(&ct)
}

pub(crate) fn detect_in(ct: &Ct) -> Result<Distro, String> {
    let os_release = get_ct_os_release(ct);
    match autodetect_type(ct, &os_release)?.as_str() {
        "debian" => debian_new(ct),
        "ubuntu" => ubuntu_new(ct),
        "centos" => centos_new(ct),
        other => Err(format!(
            "OS type '{other}' is not covered by this port of pct (debian, ubuntu, centos only)"
        )),
    }
}

// Setup.pm get_ct_os_release: /etc/os-release, else /usr/lib/os-release.
fn get_ct_os_release(ct: &Ct) -> BTreeMap<String, String> {
    for f in ["/etc/os-release", "/usr/lib/os-release"] {
        if ct.file_exists(f) {
            return parse_os_release(&ct.read(f).unwrap_or_default());
        }
    }
    BTreeMap::new()
}

// Setup.pm $parse_os_release: VAR='x', VAR="x" (with \ escapes) or VAR=word.
pub(crate) fn parse_os_release(data: &str) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for line in data.lines() {
        let line = line.trim_start();
        let Some((var, content)) = line.split_once('=') else {
            continue;
        };
        let mut chars = var.chars();
        let valid_name = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            continue;
        }
        let value = if let Some(rest) = content.strip_prefix('\'') {
            match rest.find('\'') {
                Some(end) => rest[..end].to_owned(),
                None => continue,
            }
        } else if let Some(rest) = content.strip_prefix('"') {
            let mut out = String::new();
            let mut it = rest.chars();
            let mut closed = false;
            while let Some(c) = it.next() {
                match c {
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\\' => match it.next() {
                        Some('n') => out.push('\n'),
                        Some('t') => out.push('\t'),
                        Some(e @ ('"' | '\'' | '`' | '$' | '\\')) => out.push(e),
                        Some(e) => {
                            out.push('\\');
                            out.push(e);
                        }
                        None => break,
                    },
                    c => out.push(c),
                }
            }
            if !closed {
                continue;
            }
            out
        } else {
            content
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect()
        };
        vars.insert(var.to_owned(), value);
    }
    vars
}

// Setup.pm $autodetect_type, for the plugins this port has. Setup.pm checks
// the fallback files from the host side (-f "$rootdir/etc/..."); here they
// are resolved inside the rootfs like everything else.
fn autodetect_type(ct: &Ct, os_release: &BTreeMap<String, String>) -> Result<String, String> {
    const PLUGINS: &[&str] = &[
        "alpine",
        "archlinux",
        "centos",
        "debian",
        "devuan",
        "fedora",
        "gentoo",
        "openeuler",
        "opensuse",
        "ubuntu",
        "nixos",
        "unmanaged",
    ];
    const ALIASES: &[(&str, &str)] = &[
        ("opensuse-leap", "opensuse"),
        ("opensuse-tumbleweed", "opensuse"),
        ("opensuse-slowroll", "opensuse"),
        ("openEuler", "openeuler"),
        ("arch", "archlinux"),
        ("sles", "opensuse"),
        ("rocky", "centos"),
        ("almalinux", "centos"),
    ];
    if let Some(id) = os_release.get("ID").filter(|id| !id.is_empty()) {
        if PLUGINS.contains(&id.as_str()) {
            return Ok(id.clone());
        }
        if let Some((_, t)) = ALIASES.iter().find(|(a, _)| a == id) {
            return Ok((*t).to_owned());
        }
        eprintln!(
            "pve-setup: warning: unknown ID '{id}' in /etc/os-release file, trying fallback detection"
        );
    }
    if ct.file_exists("/etc/lsb-release") {
        let data = ct.read("/etc/lsb-release")?;
        if data
            .lines()
            .any(|l| l.eq_ignore_ascii_case("DISTRIB_ID=Ubuntu"))
        {
            return Ok("ubuntu".into());
        }
    }
    let checks: &[(&[&str], &str)] = &[
        (&["/etc/debian_version"], "debian"),
        (&["/etc/devuan_version"], "devuan"),
        (&["/etc/SuSE-brand", "/etc/SuSE-release"], "opensuse"),
        (&["/etc/fedora-release"], "fedora"),
        (&["/etc/centos-release", "/etc/redhat-release"], "centos"),
        (&["/etc/arch-release"], "archlinux"),
        (&["/etc/alpine-release"], "alpine"),
        (&["/etc/gentoo-release"], "gentoo"),
    ];
    for (files, t) in checks {
        if files.iter().any(|f| ct.file_exists(f)) {
            return Ok((*t).to_owned());
        }
    }
    if ct.is_directory("/nix/store") {
        return Ok("nixos".into());
    }
    if ct.file_exists("/etc/openEuler-release") {
        return Ok("openeuler".into());
    }
    if ct.file_exists("/etc/os-release") {
        return Err("unable to detect OS distribution".into());
    }
    eprintln!(
        "pve-setup: warning: /etc/os-release file not found and autodetection failed, falling back to 'unmanaged'"
    );
    Ok("unmanaged".into())
}

// Debian.pm new
fn debian_new(ct: &Ct) -> Result<Distro, String> {
    const MAXIMUM: u32 = 14;
    let raw = ct
        .read_firstline("/etc/debian_version")
        .ok_or("unable to read version info")?;
    let mapped = match raw.as_str() {
        "stretch/sid" => "9.1",
        "buster/sid" => "10",
        "bullseye/sid" => "11",
        "bookworm/sid" => "12",
        "trixie/sid" => "13",
        "forky/sid" => "14",
        "duke/sid" => "15",
        "kali-rolling" => "12",
        other => other,
    };
    let digits: String = mapped.chars().take_while(char::is_ascii_digit).collect();
    let version: u32 = digits
        .parse()
        .map_err(|_| format!("unable to parse version info '{mapped}'"))?;
    if version < 4 {
        return Err(format!("Container Debian version '{version}' is too old"));
    }
    if version > MAXIMUM {
        eprintln!(
            "pve-setup: warning: The container's Debian version '{version}' is newer than the \
             tested version '{MAXIMUM}'. While everything may work fine, full compatibility \
             cannot be guaranteed. Please check for PVE system updates."
        );
    }
    Ok(Distro::Debian { version })
}

// Ubuntu.pm new
fn ubuntu_new(ct: &Ct) -> Result<Distro, String> {
    const KNOWN: &[&str] = &[
        "26.10", "26.04", "25.10", "25.04", "24.10", "24.04", "23.10", "23.04", "22.10", "22.04",
        "21.10", "21.04", "20.10", "20.04", "19.10", "19.04", "18.10", "18.04", "17.10", "17.04",
        "16.10", "16.04", "15.10", "15.04", "14.04", "12.04",
    ];
    let lsb = ct.read("/etc/lsb-release")?;
    if !lsb
        .lines()
        .any(|l| l.eq_ignore_ascii_case("DISTRIB_ID=Ubuntu"))
    {
        return Err("got unknown DISTRIB_ID".into());
    }
    // m/^DISTRIB_RELEASE=(\d+\.\d+)$/mi
    let version = lsb
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            k.eq_ignore_ascii_case("DISTRIB_RELEASE").then_some(v)
        })
        .find(|v| {
            v.split_once('.').is_some_and(|(a, b)| {
                !a.is_empty()
                    && !b.is_empty()
                    && a.bytes().all(|c| c.is_ascii_digit())
                    && b.bytes().all(|c| c.is_ascii_digit())
            })
        })
        .ok_or("unable to read version info")?
        .to_owned();
    if !KNOWN.contains(&version.as_str()) {
        if perl_num(&version) < 17.0 {
            return Err(format!("unsupported ancient Ubuntu version '{version}'"));
        }
        eprintln!(
            "pve-setup: warning: The container's Ubuntu version '{version}' is not in the known \
             version list. As it's newer than the minimum supported version it's likely to work \
             OK, but full compatibility cannot be guaranteed. Please check for PVE system updates."
        );
    }
    Ok(Distro::Ubuntu { version })
}

// CentOS.pm new
fn centos_new(ct: &Ct) -> Result<Distro, String> {
    let release = ct
        .read_firstline("/etc/redhat-release")
        .ok_or("unable to read version info")?;
    let version = centos_version(&release)?;
    let v = perl_num(&version);
    if !(5.0..11.0).contains(&v) {
        return Err(format!("unsupported centos version '{version}'"));
    }
    Ok(Distro::CentOS { version })
}

// CentOS.pm get_centos_version: "release N.M" or "release N".
pub(crate) fn centos_version(release: &str) -> Result<String, String> {
    let mut rest = release;
    while let Some(i) = rest.find("release") {
        let after = &rest[i + "release".len()..];
        let trimmed = after.trim_start();
        if trimmed.len() < after.len() {
            let num: String = trimmed
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let mut parts = num.split('.');
            let major = parts.next().unwrap_or_default();
            if !major.is_empty() {
                return Ok(match parts.next() {
                    Some(minor) if !minor.is_empty() => format!("{major}.{minor}"),
                    _ => major.to_owned(),
                });
            }
        }
        rest = after;
    }
    Err(format!("unable to parse centos version '{release}'"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::fs;

    fn rootfs(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (p, c) in files {
            let p = d.path().join(p.trim_start_matches('/'));
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, c).unwrap();
        }
        d
    }

    #[test]
    fn debian_versions() {
        let d = rootfs(&[("/etc/debian_version", "12.7\n")]);
        assert_eq!(detect(d.path()).unwrap(), Distro::Debian { version: 12 });
        let d = rootfs(&[("/etc/debian_version", "trixie/sid\n")]);
        assert_eq!(detect(d.path()).unwrap(), Distro::Debian { version: 13 });
        let d = rootfs(&[("/etc/debian_version", "3.1\n")]);
        assert!(detect(d.path()).unwrap_err().contains("too old"));
        let d = rootfs(&[("/etc/debian_version", "")]);
        assert_eq!(detect(d.path()).unwrap_err(), "unable to read version info");
    }

    #[test]
    fn ubuntu_needs_lsb_release() {
        let d = rootfs(&[
            ("/etc/os-release", "ID=ubuntu\n"),
            ("/etc/lsb-release", "DISTRIB_ID=Debian\n"),
        ]);
        assert_eq!(detect(d.path()).unwrap_err(), "got unknown DISTRIB_ID");
        let d = rootfs(&[
            ("/etc/os-release", "ID=ubuntu\n"),
            ("/etc/lsb-release", "DISTRIB_ID=Ubuntu\n"),
        ]);
        assert_eq!(detect(d.path()).unwrap_err(), "unable to read version info");
        let d = rootfs(&[("/etc/os-release", "ID=ubuntu\n")]);
        assert!(detect(d.path())
            .unwrap_err()
            .contains("unable to open file"));
        let d = rootfs(&[
            ("/etc/os-release", "NAME=\"Ubuntu\"\nID=ubuntu\n"),
            (
                "/etc/lsb-release",
                "DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=24.04\n",
            ),
            ("/etc/debian_version", "trixie/sid\n"),
        ]);
        assert_eq!(
            detect(d.path()).unwrap(),
            Distro::Ubuntu {
                version: "24.04".into()
            }
        );
        let d = rootfs(&[
            ("/etc/os-release", "ID=ubuntu\n"),
            (
                "/etc/lsb-release",
                "DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=16.06\n",
            ),
        ]);
        assert!(detect(d.path()).unwrap_err().contains("ancient"));
    }

    #[test]
    fn centos_and_aliases() {
        let d = rootfs(&[
            ("/etc/os-release", "ID=\"rocky\"\n"),
            (
                "/etc/redhat-release",
                "Rocky Linux release 9.4 (Blue Onyx)\n",
            ),
        ]);
        assert_eq!(
            detect(d.path()).unwrap(),
            Distro::CentOS {
                version: "9.4".into()
            }
        );
        assert_eq!(
            centos_version("CentOS Linux release 7.9.2009 (Core)").unwrap(),
            "7.9"
        );
        assert_eq!(centos_version("CentOS Stream release 9").unwrap(), "9");
        let d = rootfs(&[("/etc/redhat-release", "Fake release 4.0\n")]);
        assert!(detect(d.path()).unwrap_err().contains("unsupported centos"));
        let d = rootfs(&[("/etc/os-release", "ID=alpine\n")]);
        assert!(detect(d.path()).unwrap_err().contains("not covered"));
        let d = rootfs(&[("/etc/os-release", "ID=foo\n")]);
        assert_eq!(
            detect(d.path()).unwrap_err(),
            "unable to detect OS distribution"
        );
    }

    #[test]
    fn os_release_quoting() {
        let v = parse_os_release("ID='a b'\nX=\"q\\\"x\"\nY=plain rest\n# c\n");
        assert_eq!(v["ID"], "a b");
        assert_eq!(v["X"], "q\"x");
        assert_eq!(v["Y"], "plain");
    }
}
