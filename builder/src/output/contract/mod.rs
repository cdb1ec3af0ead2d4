//! The template contract: what Proxmox's `pct create` and `pct start` rely
//! on in a container's rootfs, per distro, checked before a template is
//! written. A base without these makes a template that looks complete but
//! never boots or never gets a network.
//!
//! Everything here follows pve-container's own set-up code
//! (`src/PVE/LXC/Create.pm`, `src/PVE/LXC/Setup.pm` and
//! `src/PVE/LXC/Setup/{Base,Debian,Ubuntu,CentOS}.pm`):
//! - `pct create` lists the archive and refuses it without an `sbin` member.
//! - `Setup.pm` picks the distro's set-up from `/etc/os-release` `ID`
//!   (falling back to `/etc/lsb-release`, `/etc/debian_version`,
//!   `/etc/redhat-release`); each plugin's `new` reads its version file and
//!   dies without it, so `pct create` fails.
//! - The container boots `/sbin/init`; pct sets it up for systemd (presets,
//!   getty, cgroup checks) only when that resolves to `…/systemd`
//!   (`Base.pm` `get_ct_init_path`; `Debian.pm` `setup_init` reads the link
//!   itself: `readlink('/sbin/init') =~ m@/systemd$@`).
//! - Network: Debian gets `/etc/network/interfaces` (ifupdown, plus a DHCP
//!   client for `inet dhcp`), Ubuntu `/etc/systemd/network/eth0.network`
//!   (systemd-networkd), Rocky 9 `/etc/sysconfig/network-scripts/ifcfg-eth0`
//!   (NetworkManager's ifcfg-rh plugin; from release 10 pct writes
//!   NetworkManager keyfiles instead).
//!
//! [`evaluate`] is pure: it works on [`BaseFacts`] (from [`scan_base`] or
//! written literally in tests) and the layer.

mod scan;
mod tree;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;

pub use scan::{check_base_entries, scan_base};
pub use tree::{
    is_identity_file, BaseFacts, Entry, Kind, Node, Origin, Resolved, Tree, Unresolved,
};

use crate::layer::Layer;
use crate::plan::schema::Distro;

/// What the contract is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractOptions {
    pub distro: Distro,
    /// The recipe's release (`"12"`, `"24.04"`, `"9"`): picks package names.
    pub release: String,
    /// `lxc.require-network-stack`: with `false`, a missing network stack is
    /// a warning.
    pub require_network_stack: bool,
}

/// One thing the template lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// What is needed, e.g. `systemd as init`, `ifupdown`.
    pub item: &'static str,
    /// What the base has instead, e.g. `/sbin/init is missing`.
    pub found: String,
    /// What pct needs it for.
    pub needed_for: String,
    pub fix: Fix,
    /// Part of the network stack: a warning with `require-network-stack: false`.
    pub network: bool,
}

/// How to provide a missing item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fix {
    /// The package(s) that provide it, e.g. `isc-dhcp-client (or dhcpcd-base, udhcpc)`.
    Install(String),
    /// Something other than a package.
    Advice(String),
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}; {}", self.item, self.found, self.needed_for)?;
        match &self.fix {
            Fix::Install(pkg) => write!(f, " — install {pkg}"),
            Fix::Advice(a) => write!(f, " — {a}"),
        }
    }
}

/// A network tool the template has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    /// e.g. `ifupdown`, `DHCP client dhclient`.
    pub what: String,
    /// Where it is, symlinks resolved.
    pub path: String,
}

/// The contract's verdict on one base with one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The pct set-up plugin the template gets (`debian`, `ubuntu`,
    /// `centos`), if pct can tell.
    pub plugin: Option<String>,
    /// What `/sbin/init` resolves to, when it is systemd.
    pub init: Option<String>,
    /// The network tools found.
    pub network_stack: Vec<Tool>,
    /// Missing items that fail the build.
    pub errors: Vec<Missing>,
    /// Missing items the profile accepts (`require-network-stack: false`).
    pub warnings: Vec<Missing>,
}

/// Names the base in the error: the recipe file, where the base came from,
/// and whether imgbuild bootstrapped it (then the fix is a package in the
/// recipe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseLabel {
    pub recipe: PathBuf,
    pub origin: String,
    pub bootstrapped: bool,
}

/// A base that does not make a template Proxmox can boot: every missing
/// item at once, so one fix round is enough.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ContractError {
    pub label: BaseLabel,
    pub distro: Distro,
    pub release: String,
    pub plugin: Option<String>,
    pub missing: Vec<Missing>,
}

impl Outcome {
    /// `Ok` (warnings and all) when nothing required is missing.
    pub fn into_result(
        self,
        label: &BaseLabel,
        opts: &ContractOptions,
    ) -> Result<Self, Box<ContractError>> {
        if self.errors.is_empty() {
            return Ok(self);
        }
        Err(Box::new(ContractError {
            label: label.clone(),
            distro: opts.distro,
            release: opts.release.clone(),
            plugin: self.plugin,
            missing: self.errors,
        }))
    }
}

impl ContractError {
    fn render(&self) -> String {
        let n = self.missing.len();
        let plugin = match &self.plugin {
            Some(p) => format!("pct's {p} set-up"),
            None => "pct".into(),
        };
        let mut s = format!(
            "{}: the lxc base {} ({} {}) cannot become a Proxmox template: {plugin} needs {} it lacks:",
            self.label.recipe.display(),
            self.label.origin,
            distro_name(self.distro),
            self.release,
            if n == 1 { "one thing".to_owned() } else { format!("{n} things") },
        );
        for m in &self.missing {
            s.push_str(&format!(
                "\n  - {}: {}; {} — ",
                m.item, m.found, m.needed_for
            ));
            s.push_str(&match &m.fix {
                Fix::Install(pkg) if self.label.bootstrapped => {
                    format!("add {pkg} to lxc.bootstrap.packages in the recipe")
                }
                Fix::Install(pkg) => {
                    format!("use a base with {pkg} installed")
                }
                Fix::Advice(a) => a.clone(),
            });
        }
        let lacks = |item: &str| self.missing.iter().any(|m| m.item == item);
        if self.distro == Distro::Rocky && (lacks(INIT) || lacks(NETWORK_MANAGER)) {
            s.push_str(
                "\n  Rocky's Container-Base tarball is a Docker base image: it has neither systemd \
                 nor NetworkManager. Use an LXC base that has both: Proxmox's template \
                 (`lxc: {pveam: {template: rockylinux-9-default}}` in the recipe, as the shipped \
                 rocky-9 recipe does) or the `default` variant of linuxcontainers' image \
                 (`lxc: {linuxcontainers: {image: rockylinux/9}}`).",
            );
        }
        if self.missing.iter().any(|m| m.network) {
            s.push_str(
                "\n  If the image brings its own network set-up, set `lxc: { require-network-stack: false }` \
                 in the profile to build with the network items as warnings.",
            );
        }
        s
    }
}

fn distro_name(d: Distro) -> &'static str {
    match d {
        Distro::Debian => "debian",
        Distro::Ubuntu => "ubuntu",
        Distro::Rocky => "rocky",
    }
}

/// The pct plugin that sets up each recipe distro (`Setup.pm`'s
/// `$plugin_alias`: rocky → centos).
pub fn expected_plugin(d: Distro) -> &'static str {
    match d {
        Distro::Debian => "debian",
        Distro::Ubuntu => "ubuntu",
        Distro::Rocky => "centos",
    }
}

const SBIN: &str = "an sbin member";
const OS_RELEASE: &str = "os-release";
const DETECTION: &str = "distro detection";
const INIT: &str = "systemd as init";
const DEBIAN_VERSION: &str = "/etc/debian_version";
const IFUPDOWN: &str = "ifupdown";
const DHCP: &str = "a DHCP client";
const LSB_RELEASE: &str = "/etc/lsb-release";
const NETWORKD: &str = "systemd-networkd";
const REDHAT_RELEASE: &str = "/etc/redhat-release";
const NETWORK_MANAGER: &str = "NetworkManager";
const IFCFG_RH: &str = "NetworkManager's ifcfg-rh plugin";

/// Checks the template `layer` makes of `base` for `opts.distro`.
pub fn evaluate(base: &BaseFacts, layer: &Layer, opts: &ContractOptions) -> Outcome {
    let tree = Tree::new(base, layer);
    let mut out = Outcome {
        plugin: None,
        init: None,
        network_stack: Vec::new(),
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let mut missing = Vec::new();
    let base_files = match opts.distro {
        Distro::Debian | Distro::Ubuntu => "base-files",
        Distro::Rocky => "filesystem",
    };

    if !tree.sbin_listed() {
        missing.push(Missing {
            item: SBIN,
            found: "the archive has no `sbin/` directory or `sbin` symlink".into(),
            needed_for: "`pct create` lists the archive first and refuses it without one \
                         (\"no 'sbin' directory (or link) found in archive\", Create.pm)"
                .into(),
            fix: Fix::Install(base_files.into()),
            network: false,
        });
    }

    check_os_release(&tree, opts, &mut out, &mut missing);
    out.init = check_init(&tree, opts, &mut missing);

    match opts.distro {
        Distro::Debian => {
            check_debian_version(&tree, &mut missing);
            check_ifupdown(&tree, &mut out.network_stack, &mut missing);
        }
        Distro::Ubuntu => {
            check_lsb_release(&tree, &mut missing);
            check_networkd(&tree, opts, &mut out.network_stack, &mut missing);
        }
        Distro::Rocky => {
            let version =
                check_redhat_release(&tree, &mut missing).or_else(|| leading_number(&opts.release));
            check_network_manager(&tree, version, &mut out.network_stack, &mut missing);
        }
    }

    for m in missing {
        if m.network && !opts.require_network_stack {
            out.warnings.push(m);
        } else {
            out.errors.push(m);
        }
    }
    out
}

fn check_os_release(
    tree: &Tree<'_>,
    opts: &ContractOptions,
    out: &mut Outcome,
    missing: &mut Vec<Missing>,
) {
    let os_release = ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .find_map(|p| tree.text(p).ok());
    let package = match opts.distro {
        Distro::Debian | Distro::Ubuntu => "base-files",
        Distro::Rocky => "rocky-release",
    };
    let Some(text) = os_release else {
        missing.push(Missing {
            item: OS_RELEASE,
            found: match tree.text("/etc/os-release") {
                Err(e) if e == "/etc/os-release is missing" => {
                    "neither /etc/os-release nor /usr/lib/os-release exists".into()
                }
                Err(e) => format!("{e}; /usr/lib/os-release is missing too"),
                Ok(_) => "neither /etc/os-release nor /usr/lib/os-release exists".into(),
            },
            needed_for: "pct reads its ID to pick the distro's set-up (Setup.pm), and systemd reads it at boot"
                .into(),
            fix: Fix::Install(package.into()),
            network: false,
        });
        out.plugin = fallback_plugin(tree).map(str::to_owned);
        return;
    };
    let detected = match text.as_deref().map(os_release_id) {
        // Text not known (a host file the layer copies in): trust the recipe.
        None => Some(expected_plugin(opts.distro)),
        Some(Some(id)) if plugin_for_id(&id).is_some() => plugin_for_id(&id),
        Some(_) => fallback_plugin(tree),
    };
    out.plugin = detected.map(str::to_owned);
    let want = expected_plugin(opts.distro);
    if detected != Some(want) {
        let id = text
            .as_deref()
            .and_then(os_release_id)
            .map_or("no ID".to_owned(), |id| format!("ID={id}"));
        let found = match detected {
            Some(p) => format!("os-release has {id}, so pct would set the container up with its {p} plugin, not {want}"),
            None => format!("os-release has {id}, which pct does not recognise (\"unable to detect OS distribution\")"),
        };
        missing.push(Missing {
            item: DETECTION,
            found,
            needed_for: format!(
                "the recipe says distro {}, and pct's {want} set-up configures network, init and hostname for it",
                distro_name(opts.distro)
            ),
            fix: Fix::Advice(format!(
                "use a {} base, or set the recipe's `distro` to what the base is",
                distro_name(opts.distro)
            )),
            network: false,
        });
    }
}

/// `ID` of an os-release file (Setup.pm's `parse_os_release`).
fn os_release_id(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.trim_start().strip_prefix("ID=")?;
        let v = v.trim_end();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.split('"').next())
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.split('\'').next()))
            .unwrap_or(v);
        Some(v.to_owned())
    })
}

/// Setup.pm's `$plugins` and `$plugin_alias`.
fn plugin_for_id(id: &str) -> Option<&'static str> {
    Some(match id {
        "debian" => "debian",
        "ubuntu" => "ubuntu",
        "centos" | "rocky" | "almalinux" => "centos",
        "alpine" => "alpine",
        "archlinux" | "arch" => "archlinux",
        "devuan" => "devuan",
        "fedora" => "fedora",
        "gentoo" => "gentoo",
        "openeuler" | "openEuler" => "openeuler",
        "opensuse" | "opensuse-leap" | "opensuse-tumbleweed" | "opensuse-slowroll" | "sles" => {
            "opensuse"
        }
        "nixos" => "nixos",
        _ => return None,
    })
}

/// Setup.pm's fallback when os-release has no known ID, for the files that
/// matter to the distros imgbuild builds.
fn fallback_plugin(tree: &Tree<'_>) -> Option<&'static str> {
    if let Ok(Some(lsb)) = tree.text("/etc/lsb-release") {
        if lsb
            .lines()
            .any(|l| l.eq_ignore_ascii_case("DISTRIB_ID=Ubuntu"))
        {
            return Some("ubuntu");
        }
    }
    if tree.text("/etc/debian_version").is_ok() {
        return Some("debian");
    }
    if tree.text("/etc/centos-release").is_ok() || tree.text("/etc/redhat-release").is_ok() {
        return Some("centos");
    }
    None
}

fn check_init(
    tree: &Tree<'_>,
    opts: &ContractOptions,
    missing: &mut Vec<Missing>,
) -> Option<String> {
    let package = match opts.distro {
        Distro::Debian | Distro::Ubuntu => "systemd-sysv",
        Distro::Rocky => "systemd",
    };
    let found = match tree.resolve("/sbin/init") {
        Err(u) => Some(u.describe("/sbin/init")),
        Ok(r) if r.entry.kind != Kind::File => Some(format!(
            "/sbin/init resolves to {}, which is not a file",
            r.path
        )),
        Ok(r) if !r.path.ends_with("/systemd") => Some(format!(
            "/sbin/init {}is {}, not systemd",
            via(&r.hops),
            r.path
        )),
        Ok(r) if r.entry.mode & 0o111 == 0 => Some(format!("{} is not executable", r.path)),
        Ok(r) => {
            let link = tree.readlink("/sbin/init").unwrap_or_default();
            if matches!(opts.distro, Distro::Debian | Distro::Ubuntu) && !link.ends_with("/systemd")
            {
                // Debian.pm/Ubuntu.pm `setup_init` test the link itself.
                Some(format!(
                    "/sbin/init is a link to {link}, which reaches systemd only through further \
                     links; pct's Debian set-up reads the link itself and wants it to end in /systemd"
                ))
            } else {
                return Some(r.path);
            }
        }
    };
    missing.push(Missing {
        item: INIT,
        found: found.unwrap_or_default(),
        needed_for: "the container boots /sbin/init, and pct sets it up for systemd (presets, \
                     getty, cgroup checks; Setup/Base.pm get_ct_init_path) only when it \
                     resolves to …/systemd"
            .into(),
        fix: Fix::Install(package.into()),
        network: false,
    });
    None
}

fn via(hops: &[String]) -> String {
    if hops.is_empty() {
        String::new()
    } else {
        format!("(via {}) ", hops.join(", "))
    }
}

/// The version in the first line of `/etc/debian_version` as Debian.pm reads it.
fn check_debian_version(tree: &Tree<'_>, missing: &mut Vec<Missing>) {
    let found = match tree.text(DEBIAN_VERSION) {
        Err(e) => e,
        Ok(None) => return,
        Ok(Some(text)) => {
            let first = text.lines().next().unwrap_or("").trim_end();
            match debian_major(first) {
                Some(v) if v >= 4 => return,
                Some(v) => format!("it says Debian {v}; pct supports 4 and later"),
                None => format!("its first line {first:?} is not a Debian version (pct: \"unable to parse version info\")"),
            }
        }
    };
    missing.push(Missing {
        item: DEBIAN_VERSION,
        found,
        needed_for: "pct's Debian set-up reads the version from it and fails `pct create` without \
                     it (\"unable to read version info\", Setup/Debian.pm)"
            .into(),
        fix: Fix::Install("base-files".into()),
        network: false,
    });
}

/// Debian.pm: testing code names map to a release; otherwise `^\d+`.
fn debian_major(line: &str) -> Option<u32> {
    let mapped = match line {
        "stretch/sid" => "9",
        "buster/sid" => "10",
        "bullseye/sid" => "11",
        "bookworm/sid" | "kali-rolling" => "12",
        "trixie/sid" => "13",
        "forky/sid" => "14",
        "duke/sid" => "15",
        other => other,
    };
    leading_number(mapped)
}

fn leading_number(s: &str) -> Option<u32> {
    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn check_ifupdown(tree: &Tree<'_>, stack: &mut Vec<Tool>, missing: &mut Vec<Missing>) {
    let ifup = ["/sbin/ifup", "/usr/sbin/ifup"]
        .iter()
        .map(|p| tree.executable(p))
        .collect::<Vec<_>>();
    match ifup.iter().find_map(|r| r.as_ref().ok()) {
        Some(path) => stack.push(Tool {
            what: "ifupdown".into(),
            path: path.clone(),
        }),
        None => missing.push(Missing {
            item: IFUPDOWN,
            found: either_missing(&["/sbin/ifup", "/usr/sbin/ifup"], &ifup),
            needed_for: "pct writes eth0's address to /etc/network/interfaces and keeps \
                         systemd-networkd off (Setup/Debian.pm); networking.service brings it up \
                         with ifup, so without ifupdown eth0 stays down"
                .into(),
            fix: Fix::Install("ifupdown (or ifupdown2)".into()),
            network: true,
        }),
    }

    // ifupdown 0.8's `inet dhcp` runs the first of these it finds
    // executable, by these exact paths (inet.defn).
    const CLIENTS: [(&str, &str); 4] = [
        ("/sbin/dhclient", "dhclient"),
        ("/sbin/pump", "pump"),
        ("/sbin/udhcpc", "udhcpc"),
        ("/sbin/dhcpcd", "dhcpcd"),
    ];
    match CLIENTS
        .iter()
        .find_map(|(p, name)| tree.executable(p).ok().map(|r| (r, name)))
    {
        Some((path, name)) => stack.push(Tool {
            what: format!("DHCP client {name}"),
            path,
        }),
        None => missing.push(Missing {
            item: DHCP,
            found: "none of /sbin/dhclient, /sbin/udhcpc, /sbin/dhcpcd (what ifupdown looks for) is there".into(),
            needed_for: "for `ip=dhcp` pct writes `iface eth0 inet dhcp`, which ifupdown hands to a \
                         DHCP client; without one eth0 gets no address (\"No DHCP client software found!\")"
                .into(),
            fix: Fix::Install("isc-dhcp-client (or dhcpcd-base, udhcpc)".into()),
            network: true,
        }),
    }
}

/// Why none of `paths` worked: "neither a nor b exists", or each reason.
fn either_missing(paths: &[&str; 2], results: &[Result<String, String>]) -> String {
    let reasons: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let plain = reasons
        .iter()
        .zip(paths)
        .all(|(r, p)| r.starts_with(&format!("{p} is missing")));
    if plain {
        format!("neither {} nor {} exists", paths[0], paths[1])
    } else {
        reasons
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Ubuntu.pm `new`: `DISTRIB_ID=Ubuntu` and `DISTRIB_RELEASE=NN.NN` lines.
fn check_lsb_release(tree: &Tree<'_>, missing: &mut Vec<Missing>) {
    let found = match tree.text(LSB_RELEASE) {
        Err(e) => e,
        Ok(None) => return,
        Ok(Some(text)) => {
            let id_ok = text
                .lines()
                .any(|l| l.eq_ignore_ascii_case("DISTRIB_ID=Ubuntu"));
            let release = text.lines().find_map(|l| {
                let (k, v) = l.split_once('=')?;
                let (major, minor) = v.split_once('.')?;
                let num = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
                (k.eq_ignore_ascii_case("DISTRIB_RELEASE") && num(major) && num(minor))
                    .then(|| major.parse::<u32>().unwrap_or(0))
            });
            match (id_ok, release) {
                (true, Some(major)) if major >= 17 => return,
                (true, Some(major)) => format!(
                    "it says Ubuntu {major}; pct supports 17.04 and later (older systemd is not cgroup v2 ready)"
                ),
                (false, _) => "it has no `DISTRIB_ID=Ubuntu` line (pct: \"got unknown DISTRIB_ID\")".into(),
                (true, None) => "it has no `DISTRIB_RELEASE=NN.NN` line (pct: \"unable to read version info\")".into(),
            }
        }
    };
    missing.push(Missing {
        item: LSB_RELEASE,
        found,
        needed_for:
            "pct's Ubuntu set-up reads DISTRIB_ID and DISTRIB_RELEASE from it, and `pct create` \
                     fails without them (Setup/Ubuntu.pm)"
                .into(),
        fix: Fix::Install("base-files (it ships /etc/lsb-release on Ubuntu)".into()),
        network: false,
    });
}

fn check_networkd(
    tree: &Tree<'_>,
    opts: &ContractOptions,
    stack: &mut Vec<Tool>,
    missing: &mut Vec<Missing>,
) {
    let paths = [
        "/lib/systemd/systemd-networkd",
        "/usr/lib/systemd/systemd-networkd",
    ];
    if let Some(path) = paths.iter().find_map(|p| tree.executable(p).ok()) {
        if let Some(found) = masked(tree, "systemd-networkd.service") {
            missing.push(Missing {
                item: NETWORKD,
                found,
                needed_for: "pct writes eth0's address to /etc/systemd/network/eth0.network and \
                             enables systemd-networkd (Setup/Ubuntu.pm), but systemd never starts \
                             a masked unit; eth0 stays down"
                    .into(),
                fix: Fix::Advice(
                    "unmask it in the rootfs (`systemctl unmask systemd-networkd.service`) and \
                     re-create the tarball"
                        .into(),
                ),
                network: true,
            });
            return;
        }
        stack.push(Tool {
            what: "systemd-networkd".into(),
            path,
        });
        return;
    }
    // Ubuntu ships networkd in `systemd` up to 24.04, in its own package after.
    let split = ubuntu_version(&opts.release).is_some_and(|v| v > (24, 4));
    missing.push(Missing {
        item: NETWORKD,
        found: "neither /lib/systemd/systemd-networkd nor /usr/lib/systemd/systemd-networkd exists".into(),
        needed_for: "pct writes eth0's address to /etc/systemd/network/eth0.network (Setup/Base.pm \
                     setup_systemd_networkd), which only systemd-networkd applies; without it eth0 stays down"
            .into(),
        fix: Fix::Install(if split { "systemd-networkd" } else { "systemd" }.into()),
        network: true,
    });
}

/// "…/UNIT is masked (-> /dev/null)" when the base masks `unit` in
/// /etc/systemd/system (where `systemctl mask` puts the link).
fn masked(tree: &Tree<'_>, unit: &str) -> Option<String> {
    let path = format!("/etc/systemd/system/{unit}");
    match tree.entry(&path)?.kind {
        Kind::Symlink(target) if target == "/dev/null" => {
            Some(format!("{path} masks it (-> /dev/null)"))
        }
        _ => None,
    }
}

fn ubuntu_version(release: &str) -> Option<(u32, u32)> {
    let (major, minor) = release.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// CentOS.pm `new`: `release N` in the first line, 5 ≤ N < 11. Returns N.
fn check_redhat_release(tree: &Tree<'_>, missing: &mut Vec<Missing>) -> Option<u32> {
    let found = match tree.text(REDHAT_RELEASE) {
        Err(e) => e,
        Ok(None) => return None,
        Ok(Some(text)) => {
            let first = text.lines().next().unwrap_or("");
            // `release\s+(\d+)`
            let version = first.match_indices("release").find_map(|(i, w)| {
                let rest = &first[i + w.len()..];
                let trimmed = rest.trim_start();
                (trimmed.len() < rest.len()).then(|| leading_number(trimmed))?
            });
            match version {
                Some(v) if (5..11).contains(&v) => return Some(v),
                Some(v) => format!("it says release {v}; pct supports 5 to 10"),
                None => format!("its first line {first:?} has no `release N` (pct: \"unable to parse centos version\")"),
            }
        }
    };
    missing.push(Missing {
        item: REDHAT_RELEASE,
        found,
        needed_for: "pct's CentOS set-up (used for Rocky) reads the version from it and fails \
                     `pct create` without it (Setup/CentOS.pm)"
            .into(),
        fix: Fix::Install("rocky-release".into()),
        network: false,
    });
    None
}

fn check_network_manager(
    tree: &Tree<'_>,
    version: Option<u32>,
    stack: &mut Vec<Tool>,
    missing: &mut Vec<Missing>,
) {
    let keyfiles = version.is_some_and(|v| v >= 10);
    let writes = if keyfiles {
        "/etc/NetworkManager/system-connections/eth0.nmconnection"
    } else {
        "/etc/sysconfig/network-scripts/ifcfg-eth0"
    };
    let masked_unit = masked(tree, "NetworkManager.service");
    match tree.executable("/usr/sbin/NetworkManager") {
        Ok(_) if masked_unit.is_some() => {
            missing.push(Missing {
                item: NETWORK_MANAGER,
                found: masked_unit.unwrap_or_default(),
                needed_for: format!(
                    "pct writes eth0's address to {writes} (Setup/CentOS.pm) for NetworkManager, \
                     but systemd never starts a masked unit; eth0 stays down"
                ),
                fix: Fix::Advice(
                    "unmask it in the rootfs (`systemctl unmask NetworkManager.service`) and \
                     re-create the tarball"
                        .into(),
                ),
                network: true,
            });
            return;
        }
        Ok(path) => stack.push(Tool {
            what: "NetworkManager".into(),
            path,
        }),
        Err(found) => {
            missing.push(Missing {
                item: NETWORK_MANAGER,
                found,
                needed_for: format!(
                    "pct writes eth0's address to {writes} (Setup/CentOS.pm), which only NetworkManager{} \
                     applies; without it eth0 stays down",
                    if keyfiles { "" } else { " with its ifcfg-rh plugin" }
                ),
                fix: Fix::Install("NetworkManager".into()),
                network: true,
            });
            return;
        }
    }
    if keyfiles {
        return;
    }
    // EL9 builds the ifcfg-rh settings plugin into the NetworkManager package
    // (`%{_libdir}/NetworkManager/%{version}-%{release}/…`); Fedora 36+ moved it
    // to NetworkManager-initscripts-ifcfg-rh, EL10 dropped it. lxc-ci's
    // rockylinux/9 image relies on the same: it installs NetworkManager and
    // writes ifcfg-eth0.
    const PLUGIN: &str = "libnm-settings-plugin-ifcfg-rh.so";
    let found: Vec<String> = ["/usr/lib64/NetworkManager", "/usr/lib/NetworkManager"]
        .iter()
        .flat_map(|d| tree.find_below(d, 1, PLUGIN))
        .collect();
    match found.first() {
        Some(path) => stack.push(Tool {
            what: "ifcfg-rh plugin".into(),
            path: path.clone(),
        }),
        None => missing.push(Missing {
            item: IFCFG_RH,
            found: format!("there is no /usr/lib64/NetworkManager/<version>/{PLUGIN}"),
            needed_for: format!(
                "NetworkManager reads pct's {writes} only through this plugin; without it eth0 stays down"
            ),
            fix: Fix::Install(
                "NetworkManager (Rocky 9 ships the plugin in it; Fedora-style splits call it NetworkManager-initscripts-ifcfg-rh)"
                    .into(),
            ),
            network: true,
        }),
    }
}
