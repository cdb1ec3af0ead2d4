//! Setup/Debian.pm (Ubuntu.pm inherits from it).

use std::collections::{BTreeMap, HashSet};

use crate::base::Setup;
use crate::ctfs::perl_split_lines;
use crate::detect::Distro;
use crate::net::{is_ip_in_cidr, parse_ipv4_cidr, split_ipv6_cidr};

// Debian.pm snakeoil_unit
const SNAKEOIL_UNIT: &str = "[Unit]
Description=\"Regenerate pre-generated snakeoil certificate and key-pair once\"
ConditionPathExists=/etc/ssl/certs/ssl-cert-snakeoil.pem
ConditionFirstBoot=yes
Wants=first-boot-complete.target
Before=first-boot-complete.target

[Service]
Type=oneshot
ExecStart=make-ssl-cert -f generate-default-snakeoil
";

/// The addresses pct configures for one interface name.
#[derive(Debug, Default, Clone)]
struct IfaceNet {
    address: Option<String>,
    cidr: Option<String>,
    netmask: Option<String>,
    gateway: Option<String>,
    needsroute: bool,
    address6: Option<String>,
    netmask6: Option<String>,
    cidr6: Option<String>,
    gateway6: Option<String>,
    needsroute6: bool,
}

impl IfaceNet {
    fn is_empty(&self) -> bool {
        self.address.is_none()
            && self.netmask.is_none()
            && self.cidr.is_none()
            && self.gateway.is_none()
            && self.address6.is_none()
            && self.gateway6.is_none()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

#[derive(Debug)]
struct Section {
    family: Family,
    ifname: String,
    attr: Vec<String>,
}

/// The writer state of Debian.pm `setup_network` (`$print_section` and the
/// hashes it updates).
#[derive(Debug)]
struct Interfaces<'a> {
    networks: &'a BTreeMap<String, IfaceNet>,
    /// Debian >= 10 (and Alpine >= 3.13) take `address a.b.c.d/N`.
    cidr_form: bool,
    out: String,
    done_auto: HashSet<String>,
    done_v4: HashSet<String>,
    done_v6: HashSet<String>,
}

impl Interfaces<'_> {
    // Debian.pm $print_section
    fn print_section(&mut self, section: Option<Section>) {
        let Some(mut section) = section else {
            return;
        };
        let ifname = section.ifname.clone();
        let Some(net) = self.networks.get(&ifname) else {
            return;
        };
        if self.done_auto.insert(ifname.clone()) {
            self.out.push_str(&format!("auto {ifname}\n"));
        }
        let (done, address, cidr, netmask, gateway, needsroute, inet, methods): (
            _,
            _,
            _,
            _,
            _,
            _,
            _,
            &[&str],
        ) = match section.family {
            Family::V4 => (
                &mut self.done_v4,
                &net.address,
                &net.cidr,
                &net.netmask,
                &net.gateway,
                net.needsroute,
                "inet",
                &["dhcp", "manual"],
            ),
            Family::V6 => (
                &mut self.done_v6,
                &net.address6,
                &net.cidr6,
                &net.netmask6,
                &net.gateway6,
                net.needsroute6,
                "inet6",
                &["auto", "dhcp", "manual"],
            ),
        };
        done.insert(ifname.clone());
        let Some(address) = address else {
            // no address => no iface line
            return;
        };
        if methods.contains(&address.as_str()) {
            self.out
                .push_str(&format!("iface {ifname} {inet} {address}\n\n"));
            return;
        }
        self.out
            .push_str(&format!("iface {ifname} {inet} static\n"));
        if self.cidr_form {
            if let Some(c) = cidr {
                self.out.push_str(&format!("\taddress {c}\n"));
            }
        } else {
            self.out.push_str(&format!("\taddress {address}\n"));
            if let Some(m) = netmask {
                self.out.push_str(&format!("\tnetmask {m}\n"));
            }
        }
        remove_gateway_scripts(&mut section.attr);
        if let Some(gw) = gateway {
            if needsroute {
                self.out.push_str(&make_gateway_scripts(&ifname, gw));
            } else {
                self.out.push_str(&format!("\tgateway {gw}\n"));
            }
        }
        for a in &section.attr {
            self.out.push_str(&format!("\t{a}\n"));
        }
        self.out.push('\n');
    }
}

// Debian.pm make_gateway_scripts: routes for a gateway outside the subnet.
fn make_gateway_scripts(ifname: &str, gw: &str) -> String {
    format!(
        "# --- BEGIN PVE ---\n\
         \tpost-up ip route add {gw} dev {ifname}\n\
         \tpost-up ip route add default via {gw} dev {ifname}\n\
         \tpre-down ip route del default via {gw} dev {ifname}\n\
         \tpre-down ip route del {gw} dev {ifname}\n\
         # --- END PVE ---\n"
    )
}

// Debian.pm remove_gateway_scripts: drop our marked block from a section's
// attributes; without markers, drop the four unmarked route lines older pct
// versions wrote.
fn remove_gateway_scripts(attr: &mut Vec<String>) {
    let mut found_section = false;
    let mut keep = true;
    attr.retain(|a| {
        if a == "# --- BEGIN PVE ---" {
            found_section = true;
            keep = false;
            false
        } else if a == "# --- END PVE ---" {
            found_section = true;
            keep = true;
            false
        } else {
            keep
        }
    });
    if found_section {
        return;
    }
    let route = |line: &str, head: &str| -> Option<(String, String)> {
        // ^\s*<head>\s+(\S+)\s+dev\s+(\S+)$ (for "default via" the (\S+) is the gw)
        let w: Vec<&str> = line.split_whitespace().collect();
        let hw: Vec<&str> = head.split(' ').collect();
        if w.len() != hw.len() + 3 || w[..hw.len()] != hw[..] || w[hw.len() + 1] != "dev" {
            return None;
        }
        if line.ends_with(char::is_whitespace) {
            return None;
        }
        Some((w[hw.len()].to_owned(), w[hw.len() + 2].to_owned()))
    };
    let mut i = 0;
    while i + 3 < attr.len() {
        let Some((ip, dev)) = route(&attr[i], "post-up ip route add") else {
            i += 1;
            continue;
        };
        let same = |l: &str, head: &str| route(l, head) == Some((ip.clone(), dev.clone()));
        if same(&attr[i + 1], "post-up ip route add default via")
            && same(&attr[i + 2], "pre-down ip route del default via")
            && same(&attr[i + 3], "pre-down ip route del")
        {
            attr.drain(i..i + 4);
        } else {
            i += 1;
        }
    }
}

impl Setup<'_> {
    fn debian_version(&self) -> Option<u32> {
        match self.distro {
            Distro::Debian { version } => Some(version),
            _ => None,
        }
    }

    // Debian.pm setup_inittab
    fn setup_inittab(&self) -> Result<(), String> {
        let file = "/etc/inittab";
        if !self.ct.file_exists(file) {
            return Ok(());
        }
        let inittab = self.ct.read(file)?;
        let lines: Vec<String> = perl_split_lines(&inittab)
            .into_iter()
            .filter(|l| !is_getty_line(l) && !is_power_line(l))
            .collect();
        let mut out = lines.join("\n") + "\n";
        out.push_str("p0::powerfail:/sbin/init 0\n");
        let version = self.debian_version().unwrap_or(0);
        for id in 1..=self.conf.tty_count() {
            if id == 7 {
                continue; // reserved for X11
            }
            let levels = if id == 1 { "2345" } else { "23" };
            if version < 7 {
                out.push_str(&format!(
                    "{id}:{levels}:respawn:/sbin/getty -L 38400 tty{id}\n"
                ));
            } else {
                out.push_str(&format!(
                    "{id}:{levels}:respawn:/sbin/getty --noclear 38400 tty{id}\n"
                ));
            }
        }
        self.ct.set_contents(file, &out, None)
    }

    // Debian.pm setup_init: with systemd as /sbin/init, container-getty and
    // (Debian >= 12) the first-boot preset that keeps networkd off, as
    // Debian uses ifupdown; then inittab for sysvinit.
    pub fn debian_setup_init(&self) -> Result<(), String> {
        let systemd = self.ct.readlink("/sbin/init");
        if systemd.is_some_and(|s| s.ends_with("/systemd")) {
            self.setup_container_getty_service()?;
            if self.debian_version().unwrap_or(0) >= 12 {
                self.setup_systemd_preset(&[("systemd-networkd.service", false)])?;
            }
        }
        self.setup_inittab()
    }

    // Debian.pm snakeoil_fixup: regenerate a pre-installed ssl-cert key pair
    // on first boot, and delete the shipped key.
    pub fn debian_snakeoil_fixup(&self) -> Result<(), String> {
        let key = "/etc/ssl/private/ssl-cert-snakeoil.key";
        if !self.ct.file_exists(key) {
            return Ok(());
        }
        let systemd = self.ct.readlink("/sbin/init");
        if systemd.is_some_and(|s| s.ends_with("/systemd")) {
            let unit = "proxmox-regenerate-snakeoil.service";
            let unit_path = format!("/etc/systemd/system/{unit}");
            self.ct.set_contents(&unit_path, SNAKEOIL_UNIT, None)?;
            self.ct
                .make_path("/etc/systemd/system/first-boot-complete.target.wants")?;
            self.ct.symlink(
                &unit_path,
                &format!("/etc/systemd/system/first-boot-complete.target.wants/{unit}"),
            );
        } else {
            eprintln!("pve-setup: warning: Template contains pre-generated snakeoil certificate!");
        }
        self.ct.unlink(key);
        Ok(())
    }

    // Debian.pm setup_network: rewrite /etc/network/interfaces, keeping what
    // pct does not manage.
    pub fn debian_setup_network(&self) -> Result<(), String> {
        let mut networks: BTreeMap<String, IfaceNet> = BTreeMap::new();
        for d in &self.conf.nets {
            if d.name.is_empty() {
                continue;
            }
            let mut net = IfaceNet::default();
            let mut cidr = None;
            if let Some(ip) = &d.ip {
                if ip == "dhcp" || ip == "manual" {
                    net.address = Some(ip.clone());
                } else {
                    let info = parse_ipv4_cidr(ip)?;
                    net.address = Some(info.address);
                    net.netmask = Some(info.netmask);
                    net.cidr = Some(ip.clone());
                    cidr = Some(ip.clone());
                }
            }
            if let Some(gw) = &d.gw {
                net.gateway = Some(gw.clone());
                if cidr.as_deref().is_some_and(|c| !is_ip_in_cidr(gw, c, 4)) {
                    net.needsroute = true; // gateway outside the subnet
                }
            }
            let mut cidr6 = None;
            if let Some(ip6) = &d.ip6 {
                if matches!(ip6.as_str(), "auto" | "dhcp" | "manual") {
                    net.address6 = Some(ip6.clone());
                } else {
                    let (addr, bits) =
                        split_ipv6_cidr(ip6).ok_or("unable to parse ipv6 address/prefix")?;
                    net.address6 = Some(addr);
                    net.netmask6 = Some(bits);
                    net.cidr6 = Some(ip6.clone());
                    cidr6 = Some(ip6.clone());
                }
            }
            if let Some(gw6) = &d.gw6 {
                net.gateway6 = Some(gw6.clone());
                if cidr6.as_deref().is_some_and(|c| {
                    !is_ip_in_cidr(gw6, c, 6) && !is_ip_in_cidr(gw6, "fe80::/10", 6)
                }) {
                    net.needsroute6 = true;
                }
            }
            if !net.is_empty() {
                networks.insert(d.name.clone(), net);
            }
        }
        if networks.is_empty() {
            return Ok(());
        }
        let file = "/etc/network/interfaces";
        let cidr_form = matches!(self.distro, Distro::Debian { version } if version >= 10);
        let mut w = Interfaces {
            networks: &networks,
            cidr_form,
            out: String::new(),
            done_auto: HashSet::new(),
            done_v4: HashSet::new(),
            done_v6: HashSet::new(),
        };
        if let Ok(text) = self.ct.read(file) {
            parse_existing(&mut w, &text);
        }
        let mut need_separator = !w.out.is_empty() && !w.out.ends_with("\n\n");
        for (ifname, net) in &networks {
            if !w.done_v4.contains(ifname) && net.address.is_some() {
                if need_separator {
                    w.out.push('\n');
                    need_separator = false;
                }
                w.print_section(Some(Section {
                    family: Family::V4,
                    ifname: ifname.clone(),
                    attr: Vec::new(),
                }));
            }
            if !w.done_v6.contains(ifname) && net.address6.is_some() {
                if need_separator {
                    w.out.push('\n');
                    need_separator = false;
                }
                w.print_section(Some(Section {
                    family: Family::V6,
                    ifname: ifname.clone(),
                    attr: Vec::new(),
                }));
            }
        }
        // older templates (< Debian 8) do not bring up lo unless told to
        let mut out = w.out;
        if !w.done_auto.contains("lo") {
            out = format!("auto lo\niface lo inet loopback\niface lo inet6 loopback\n\n{out}");
        }
        self.ct.make_path("/etc/network")?;
        self.ct.set_contents(file, &out, None)
    }
}

// The read loop of Debian.pm setup_network over the existing file.
fn parse_existing(w: &mut Interfaces<'_>, text: &str) {
    let mut section: Option<Section> = None;
    for line in text.split_inclusive('\n') {
        let line = line.strip_suffix('\n').unwrap_or(line);
        if line.starts_with("# --- BEGIN PVE ---") || line.starts_with("# --- END PVE ---") {
            // kept for remove_gateway_scripts
            if let Some(s) = section.as_mut() {
                s.attr.push(line.to_owned());
            }
            continue;
        }
        if line.starts_with('#') {
            w.out.push_str(&format!("{line}\n"));
            continue;
        }
        if line.trim().is_empty() {
            if section.is_some() {
                w.print_section(section.take());
            } else {
                w.out.push_str(&format!("{line}\n"));
            }
            continue;
        }
        if let Some((ifname, family)) = iface_line(line) {
            w.print_section(section.take());
            if !w.networks.contains_key(&ifname) {
                w.out.push_str(&format!("{line}\n"));
                continue;
            }
            section = Some(Section {
                family,
                ifname,
                attr: Vec::new(),
            });
            continue;
        }
        if let Some(rest) = line.trim_start().strip_prefix("auto") {
            for iface in rest.split_whitespace() {
                w.done_auto.insert(iface.to_owned());
            }
            w.print_section(section.take());
            w.out.push_str(&format!("{line}\n"));
            continue;
        }
        let t = line.trim_start();
        if t.starts_with("allow-")
            || ["mapping", "source", "source-directory"].iter().any(|k| {
                t.strip_prefix(k)
                    .is_some_and(|r| r.starts_with(char::is_whitespace))
            })
        {
            w.print_section(section.take());
            w.out.push_str(&format!("{line}\n"));
            continue;
        }
        if let Some(s) = section.as_mut() {
            // ^\s*((\S+)\s(.*))$
            if let Some(i) = t.find(char::is_whitespace) {
                if i > 0 {
                    let name = &t[..i];
                    if !matches!(name, "address" | "netmask" | "gateway" | "broadcast") {
                        s.attr.push(t.to_owned());
                    }
                    continue;
                }
            }
        }
        w.out.push_str(&format!("{line}\n"));
    }
    w.print_section(section.take());
}

// ^\s*iface\s+(\S+)\s+inet6?\s+(\S+)\s*$
fn iface_line(line: &str) -> Option<(String, Family)> {
    let t = line.trim_start();
    let rest = t.strip_prefix("iface")?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let words: Vec<&str> = rest.split_whitespace().collect();
    match words.as_slice() {
        [name, "inet", _] => Some(((*name).to_owned(), Family::V4)),
        [name, "inet6", _] => Some(((*name).to_owned(), Family::V6)),
        _ => None,
    }
}

// /^\s*\d+:\d*:[^:]*:.*getty/
fn is_getty_line(l: &str) -> bool {
    let t = l.trim_start();
    let mut parts = t.splitn(4, ':');
    let (Some(id), Some(lv), Some(_), Some(rest)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_digit())
        && lv.bytes().all(|b| b.is_ascii_digit())
        && rest.contains("getty")
}

// /^\s*p[fno0]:/
fn is_power_line(l: &str) -> bool {
    let b = l.trim_start().as_bytes();
    b.len() >= 3 && b[0] == b'p' && b"fno0".contains(&b[1]) && b[2] == b':'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_scripts_round_trip() {
        let mut attr: Vec<String> = make_gateway_scripts("eth0", "10.0.0.1")
            .lines()
            .map(|l| l.trim_start().to_owned())
            .collect();
        attr.insert(0, "mtu 1400".into());
        remove_gateway_scripts(&mut attr);
        assert_eq!(attr, vec!["mtu 1400"]);
        let mut old: Vec<String> = [
            "post-up ip route add 10.0.0.1 dev eth0",
            "post-up ip route add default via 10.0.0.1 dev eth0",
            "pre-down ip route del default via 10.0.0.1 dev eth0",
            "pre-down ip route del 10.0.0.1 dev eth0",
            "up echo hi",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        remove_gateway_scripts(&mut old);
        assert_eq!(old, vec!["up echo hi"]);
    }

    #[test]
    fn inittab_lines() {
        assert!(is_getty_line("1:2345:respawn:/sbin/getty 38400 tty1"));
        assert!(!is_getty_line("ca:12345:ctrlaltdel:/sbin/shutdown"));
        assert!(is_power_line("pf::powerwait:/etc/init.d/powerfail start"));
        assert!(!is_power_line("si::sysinit:/etc/init.d/rcS"));
    }
}
