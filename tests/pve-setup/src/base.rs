//! Setup/Base.pm: what pct does to every managed distribution.

use crate::cmd::{self, Input};
use crate::config::{perl_true, split_list, CtConfig, HostResolv};
use crate::ctfs::{perl_split_lines, remove_pve_sections, Ct, Modify};
use crate::detect::Distro;
use crate::net::is_ip_in_cidr;

/// One setup run: the container, its config and the cached host facts
/// (Setup.pm `new` caches the host's resolv.conf and timezone).
#[derive(Debug)]
pub(crate) struct Setup<'a> {
    pub ct: Ct,
    pub conf: &'a CtConfig,
    pub distro: Distro,
    pub resolv: HostResolv,
}

impl Setup<'_> {
    // Base.pm lookup_dns_conf: the CT's settings, else the host's.
    pub fn lookup_dns_conf(&self) -> (Option<String>, String) {
        let nameserver = self
            .conf
            .nameserver
            .clone()
            .unwrap_or_else(|| self.resolv.dns.join(" "));
        let searchdomains = self
            .conf
            .searchdomain
            .clone()
            .or_else(|| self.resolv.search.clone());
        (searchdomains, nameserver)
    }

    // Base.pm update_etc_hosts
    pub fn update_etc_hosts(
        &self,
        hostip: Option<&str>,
        newname: &str,
        searchdomains: Option<&str>,
    ) -> Result<(), String> {
        let hosts = "/etc/hosts";
        if self.ct.is_file_ignored(hosts) {
            return Ok(());
        }
        let namepart = strip_domain(newname);
        let all_names = if newname.contains('.') {
            format!("{newname} {namepart}")
        } else {
            let mut names: Vec<String> = split_list(searchdomains.unwrap_or(""))
                .into_iter()
                .map(|d| format!("{newname}.{d}"))
                .collect();
            names.push(newname.to_owned());
            names.join(" ")
        };
        let lo4 = "127.0.0.1 localhost.localnet localhost\n";
        let lo6 = "::1 localhost.localnet localhost\n";
        let mut section = String::new();
        if self.ct.file_exists(hosts) {
            // localhost entries within our own section do not count
            let data = remove_pve_sections(&self.ct.read(hosts)?);
            let has = |prefix: &str| {
                data.lines().any(|l| {
                    l.trim_start_matches([' ', '\t'])
                        .strip_prefix(prefix)
                        .is_some_and(|r| r.starts_with([' ', '\t']))
                })
            };
            if !has("127.0.0.1") {
                section.push_str(lo4);
            }
            if !has("::1") {
                section.push_str(lo6);
            }
        } else {
            section.push_str(lo4);
            section.push_str(lo6);
        }
        match hostip {
            Some(ip) => section.push_str(&format!("{ip} {all_names}\n")),
            None if namepart != "localhost" => {
                section.push_str(&format!("127.0.1.1 {all_names}\n"))
            }
            None => section.push_str(&format!("127.0.1.1 {namepart}\n")),
        }
        self.ct.modify_file(hosts, &section, Modify::default())
    }

    // Base.pm set_dns: the PVE block replaces the whole resolv.conf (a
    // symlink there, e.g. to resolved's stub, is replaced by a file).
    pub fn set_dns(&self) -> Result<(), String> {
        let (searchdomains, nameserver) = self.lookup_dns_conf();
        let mut data = String::new();
        if let Some(sd) = searchdomains.as_deref().filter(|s| perl_true(s)) {
            data.push_str(&format!("search {}\n", split_list(sd).join(" ")));
        }
        for ns in split_list(&nameserver) {
            data.push_str(&format!("nameserver {ns}\n"));
        }
        let opts = Modify {
            replace: true,
            ..Modify::default()
        };
        self.ct.modify_file("/etc/resolv.conf", &data, opts)
    }

    // Base.pm set_hostname: /etc/hosts, then /etc/hostname with the short name.
    pub fn set_hostname_base(&self) -> Result<(), String> {
        let hostname = self.hostname();
        let namepart = strip_domain(&hostname);
        let hostip = self.primary_ip();
        let (searchdomains, _) = self.lookup_dns_conf();
        self.update_etc_hosts(hostip.as_deref(), &hostname, searchdomains.as_deref())?;
        self.ct
            .set_contents("/etc/hostname", &format!("{namepart}\n"), None)
    }

    pub fn hostname(&self) -> String {
        self.conf
            .hostname
            .clone()
            .filter(|h| perl_true(h))
            .unwrap_or_else(|| "localhost".to_owned())
    }

    // LXC.pm get_primary_ips (net0 only), then `$ipv4 || $ipv6`.
    pub fn primary_ip(&self) -> Option<String> {
        let net = self.conf.net0()?;
        let strip = |ip: &str| match ip.rsplit_once('/') {
            Some((a, b)) if !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit()) => a.to_owned(),
            _ => ip.to_owned(),
        };
        let v4 = net
            .ip
            .as_deref()
            .filter(|ip| perl_true(ip) && !matches!(*ip, "dhcp" | "manual"))
            .map(strip);
        let v6 = net
            .ip6
            .as_deref()
            .filter(|ip| perl_true(ip) && !matches!(*ip, "auto" | "dhcp" | "manual"))
            .map(strip);
        v4.filter(|s| perl_true(s)).or(v6).filter(|s| perl_true(s))
    }

    // Base.pm devttydir (Debian.pm and so Ubuntu.pm override it with '').
    pub fn devttydir(&self) -> &'static str {
        match self.distro {
            Distro::Debian { .. } | Distro::Ubuntu { .. } => "",
            Distro::CentOS { .. } if self.conf.unprivileged => "",
            Distro::CentOS { .. } => "lxc/",
        }
    }

    fn systemd_unit_dir(&self) -> &'static str {
        if self.ct.is_executable("/lib/systemd/systemd") {
            "/lib/systemd/system"
        } else {
            "/usr/lib/systemd/system"
        }
    }

    // Base.pm fixup_old_getty
    pub fn fixup_old_getty(&self) -> Result<(), String> {
        let dir = self.systemd_unit_dir();
        let getty = format!("{dir}/getty@.service");
        if !self.ct.file_exists(&getty) {
            return Ok(());
        }
        let raw = self.ct.read(&getty)?;
        let (from, to) = if !self
            .ct
            .file_exists(&format!("{dir}/container-getty@.service"))
        {
            // systemd too old for container-getty (CentOS 7.1)
            (
                "ConditionPathExists=/dev/tty0",
                "ConditionPathExists=/dev/tty",
            )
        } else {
            // undo the above after a systemd update
            (
                "ConditionPathExists=/dev/tty",
                "ConditionPathExists=/dev/tty0",
            )
        };
        if let Some(new) = replace_first_line(&raw, from, to) {
            self.ct.set_contents(&getty, &new, None)?;
        }
        Ok(())
    }

    // Base.pm setup_container_getty_service: point container-getty@ at
    // /dev/<devttydir>tty%I and enable one instance per configured tty.
    pub fn setup_container_getty_service(&self) -> Result<(), String> {
        let sd_dir = self.systemd_unit_dir();
        let mut template_path = format!("{sd_dir}/container-getty@.service");
        let mut instance_base = "container-getty@".to_owned();
        if !self.ct.file_exists(&template_path) {
            // Base.pm falls back to a *relative* "getty@.service" (so "/" in
            // the chroot) and instance name "{getty@}tty"; kept as is.
            template_path = "getty@.service".to_owned();
            instance_base = "{getty@}tty".to_owned();
            if !self.ct.file_exists(&template_path) {
                return Ok(());
            }
        }
        let raw = self.ct.read(&template_path)?;
        let ttyname = format!("{}tty%I", self.devttydir());
        let new = raw
            .replace("pts/%I", &ttyname)
            .replace("lxc/tty%I", &ttyname);
        if raw.contains("pts/%I") || raw.contains("lxc/tty%I") {
            // Perl's s///g reports a change even when the text stays equal.
            self.ct.set_contents(&template_path, &new, None)?;
        }
        let wants = "/etc/systemd/system/getty.target.wants/";
        for i in 1..7 {
            // never two gettys on one tty
            self.ct.unlink(&format!("{wants}/getty@tty{i}.service"));
            self.ct
                .unlink(&format!("{wants}/container-getty@{i}.service"));
            if i <= self.conf.tty_count() {
                self.ct.symlink(
                    &template_path,
                    &format!("{wants}/{instance_base}{i}.service"),
                );
            }
        }
        // getty.target must not be masked
        self.ct.unlink("/etc/systemd/system/getty.target");
        Ok(())
    }

    // Base.pm setup_systemd_networkd: /etc/systemd/network/<name>.network
    pub fn setup_systemd_networkd(&self) -> Result<(), String> {
        for d in &self.conf.nets {
            if d.name.is_empty() {
                continue;
            }
            let name = &d.name;
            let mut data = format!(
                "[Match]\nName = {name}\n\n[Network]\nDescription = Interface {name} autoconfigured by PVE\n"
            );
            let mut routes = String::new();
            let (mut has_v4, mut has_v6) = (false, false);
            let mut dhcp = 0usize;
            let mut accept_ra = "false";
            if let Some(ip) = &d.ip {
                if ip == "dhcp" {
                    dhcp |= 1;
                } else if ip != "manual" {
                    has_v4 = true;
                    data.push_str(&format!("Address = {ip}\n"));
                }
            }
            if let Some(gw) = &d.gw {
                data.push_str(&format!("Gateway = {gw}\n"));
                if has_v4 && !is_ip_in_cidr(gw, d.ip.as_deref().unwrap_or(""), 4) {
                    routes.push_str(&format!("\n[Route]\nDestination = {gw}/32\nScope = link\n"));
                }
            }
            if let Some(ip) = &d.ip6 {
                if ip == "dhcp" {
                    dhcp |= 2;
                    accept_ra = "true";
                } else if ip == "auto" {
                    accept_ra = "true";
                } else if ip != "manual" {
                    has_v6 = true;
                    data.push_str(&format!("Address = {ip}\n"));
                }
            }
            if let Some(gw) = &d.gw6 {
                accept_ra = "false";
                data.push_str(&format!("Gateway = {gw}\n"));
                if has_v6
                    && !is_ip_in_cidr(gw, d.ip6.as_deref().unwrap_or(""), 6)
                    && !is_ip_in_cidr(gw, "fe80::/10", 6)
                {
                    routes.push_str(&format!(
                        "\n[Route]\nDestination = {gw}/128\nScope = link\n"
                    ));
                }
            }
            let modes = ["no", "ipv4", "ipv6", "yes"];
            data.push_str(&format!("DHCP = {}\n", modes[dhcp]));
            data.push_str(&format!("IPv6AcceptRA = {accept_ra}\n"));
            data.push_str(&routes);
            self.ct.make_path("/etc/systemd/network")?;
            self.ct
                .set_contents(&format!("/etc/systemd/network/{name}.network"), &data, None)?;
        }
        Ok(())
    }

    // Base.pm setup_systemd_preset: 00-pve.preset, applied by systemd on the
    // first boot (no /etc/machine-id).
    pub fn setup_systemd_preset(&self, extra: &[(&str, bool)]) -> Result<(), String> {
        let mut preset = std::collections::BTreeMap::from([
            ("sys-kernel-config.mount", false),
            ("sys-kernel-debug.mount", false),
            ("getty@.service", false),
            ("container-getty@.service", true),
        ]);
        for (k, v) in extra {
            preset.insert(k, *v);
        }
        let mut data = "# Added by PVE at create-time for first-boot configuration.\n".to_owned();
        for (service, enable) in preset {
            let verb = if enable { "enable" } else { "disable" };
            data.push_str(&format!("{verb} {service}\n"));
        }
        self.ct.make_path("/etc/systemd/system-preset")?;
        self.ct
            .set_contents("/etc/systemd/system-preset/00-pve.preset", &data, None)
    }

    // Base.pm setup_systemd_disable_static_units: mask static units.
    pub fn setup_systemd_disable_static_units(&self) {
        for unit in ["sys-kernel-config.mount", "sys-kernel-debug.mount"] {
            let p = format!("/etc/systemd/system/{unit}");
            if !self.ct.file_exists(&p) {
                self.ct.symlink("/dev/null", &p);
            }
        }
    }

    // Base.pm setup_securetty
    pub fn setup_securetty(&self, add: &[&str]) -> Result<(), String> {
        let file = "/etc/securetty";
        if !self.ct.file_exists(file) {
            return Ok(());
        }
        let add: Vec<String> = if add.is_empty() {
            ["console", "tty1", "tty2", "tty3", "tty4"]
                .iter()
                .map(|d| format!("{}{d}", self.devttydir()))
                .collect()
        } else {
            add.iter().map(|s| (*s).to_owned()).collect()
        };
        let mut data = self.ct.read(file)?;
        if data.ends_with('\n') {
            data.pop();
        }
        data.push('\n');
        for dev in add {
            if !data.lines().any(|l| l.trim_end() == dev) {
                data.push_str(&format!("{dev}\n"));
            }
        }
        self.ct.set_contents(file, &data, None)
    }

    // Base.pm set_user_password (root): '*' without a password, a crypt(3)
    // SHA-512 hash of a clear-text one (made with `openssl passwd -6`),
    // pre-hashed ones as given.
    pub fn set_user_password(&self, user: &str, password: Option<&str>) -> Result<(), String> {
        let passwd = "/etc/passwd";
        if !self.ct.file_exists(passwd) {
            return Ok(());
        }
        let epw = match password {
            None => "*".to_owned(),
            Some(p) if is_crypted(p) => p.to_owned(),
            Some(p) => {
                let salt = salt_from_time();
                let out = cmd::run(
                    &cmd::argv(&["openssl", "passwd", "-6", "-salt", &salt, "-stdin"]),
                    Input::Text(&format!("{p}\n")),
                )?;
                out.stdout.trim().to_owned()
            }
        };
        let shadow = "/etc/shadow";
        if self.ct.file_exists(shadow) {
            self.replacepw(shadow, user, &epw, true)?;
            self.replacepw(passwd, user, "x", false)
        } else {
            self.replacepw(passwd, user, &epw, false)
        }
    }

    // Base.pm $replacepw: rewrite the user's password field, keeping the
    // file's mode and owner; in shadow also the last-change day.
    fn replacepw(&self, file: &str, user: &str, epw: &str, shadow: bool) -> Result<(), String> {
        let meta = self
            .ct
            .stat(file)
            .ok_or_else(|| format!("unable to stat file '{file}'"))?;
        let text = self.ct.read(file)?;
        let last_change = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() / 86400)
            .unwrap_or_default();
        let prefix = format!("{user}:");
        let mut out = String::new();
        for line in text.split_inclusive('\n') {
            let fields_needed = if shadow { 2 } else { 1 };
            let rest = line.strip_prefix(&prefix);
            let parts: Option<Vec<&str>> = rest.map(|r| r.splitn(fields_needed + 1, ':').collect());
            match parts {
                Some(p)
                    if p.len() == fields_needed + 1
                        && !p[..fields_needed].iter().any(|f| f.contains('\n')) =>
                {
                    if shadow {
                        out.push_str(&format!("{user}:{epw}:{last_change}:{}", p[2]));
                    } else {
                        out.push_str(&format!("{user}:{epw}:{}", p[1]));
                    }
                }
                _ => out.push_str(line),
            }
        }
        self.ct.replace_keeping_meta(file, &out, &meta)
    }

    // Base.pm set_user_authorized_ssh_keys: the keys as a PVE block in
    // <home>/.ssh/authorized_keys.
    pub fn set_user_authorized_ssh_keys(&self, user: &str, keys: &str) -> Result<(), String> {
        let passwd = "/etc/passwd";
        let mut home = if user == "root" {
            "/root/".to_owned()
        } else {
            format!("/home/{user}/")
        };
        if self.ct.file_exists(passwd) {
            // $parse_home_dir: the sixth field of the user's line
            home = self
                .ct
                .read(passwd)?
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("{user}:")))
                .map(|r| r.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 6)
                .map(|f| f[4].to_owned())
                .unwrap_or_default();
        }
        if !(self.ct.is_directory(&home) || self.ct.is_symlink(&home)) {
            return Err(format!("home directory '{home}' of {user} does not exist!"));
        }
        let ssh = format!("{home}/.ssh");
        if !self.ct.is_directory(&ssh) {
            self.ct.mkdir(&ssh, Some(0o700));
        }
        let opts = Modify {
            perms: Some(0o700),
            ..Modify::default()
        };
        self.ct
            .modify_file(&format!("{home}/.ssh/authorized_keys"), keys, opts)
    }

    // Base.pm $randomize_crontab: a new minute for root's entries in
    // /etc/crontab and /etc/cron.d/*. pct uses rand(); this port derives the
    // minute from the vmid and the line so runs are reproducible.
    pub fn randomize_crontab(&self) -> Result<(), String> {
        let mut files: Vec<String> = self
            .ct
            .read_dir("/etc/cron.d")
            .into_iter()
            .filter(|n| {
                !n.is_empty()
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
            .map(|n| format!("/etc/cron.d/{n}"))
            .collect();
        if self.ct.file_exists("/etc/crontab") {
            files.insert(0, "/etc/crontab".to_owned());
        }
        let mut seed = u64::from(self.conf.vmid).wrapping_mul(6364136223846793005);
        for file in files {
            let data = self.ct.read(&file)?;
            let mut new = String::new();
            for line in perl_split_lines(&data) {
                match root_cron_rest(&line) {
                    Some(rest) => {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let min = (seed >> 33) % 59;
                        new.push_str(&format!("{min}{rest}\n"));
                    }
                    None => new.push_str(&format!("{line}\n")),
                }
            }
            self.ct.set_contents(&file, &new, None)?;
        }
        Ok(())
    }

    // Base.pm set_timezone: /etc/localtime -> /usr/share/zoneinfo/<zone>,
    // and /etc/timezone where it exists. "host" takes the host's zone.
    pub fn set_timezone(&self) -> Result<(), String> {
        let Some(zone) = self.conf.timezone.as_deref() else {
            return Ok(());
        };
        let (tz_path, contents) = if zone == "host" {
            host_timezone()?
        } else {
            (format!("/usr/share/zoneinfo/{zone}"), zone.to_owned())
        };
        if self.ct.file_exists(&tz_path) {
            if self.ct.abs_path("/etc/localtime") != tz_path {
                let tmp = format!("localtime.{}.new.tmpfile", self.ct.pid());
                self.ct.symlink(&tz_path, &tmp);
                self.ct.rename(&tmp, "/etc/localtime");
            }
            if self.ct.file_exists("/etc/timezone") {
                self.ct
                    .set_contents("/etc/timezone", &format!("{contents}\n"), None)?;
            }
        } else {
            eprintln!(
                "pve-setup: warning: container does not have {tz_path}, timezone can not be modified"
            );
        }
        Ok(())
    }

    // Base.pm clear_machine_id (create, not clone): delete /etc/machine-id,
    // and a regular /var/lib/dbus/machine-id if systemd is the init.
    pub fn clear_machine_id(&self) {
        let uses_systemd = self.ct.is_executable("/lib/systemd/systemd")
            || self.ct.is_executable("/usr/lib/systemd/systemd");
        let dbus = "/var/lib/dbus/machine-id";
        let machine_id = "/etc/machine-id";
        let existed = self.ct.file_exists(machine_id);
        if self.ct.file_exists(dbus) && !self.ct.is_symlink(dbus) && uses_systemd {
            self.ct.unlink(dbus);
        }
        if existed {
            self.ct.unlink(machine_id);
        }
    }

    // Base.pm remove_lxc_name_from_etc_hosts (linuxcontainers.org images)
    pub fn remove_lxc_name_from_etc_hosts(&self) -> Result<(), String> {
        let Ok(p) = self.ct.resolve("/etc/hosts", true) else {
            return Ok(());
        };
        if !p.exists() {
            return Ok(());
        }
        let hosts = self.ct.read("/etc/hosts")?;
        let lines: Vec<String> = perl_split_lines(&hosts)
            .into_iter()
            .filter(|l| !is_lxc_name_line(l))
            .collect();
        self.ct
            .set_contents("/etc/hosts", &(lines.join("\n") + "\n"), None)
    }
}

/// The hostname without its domain (`s/\..*$//`).
pub(crate) fn strip_domain(name: &str) -> String {
    name.split('.').next().unwrap_or_default().to_owned()
}

/// `s!^FROM$!TO!m`: replace the first line equal to `from`.
pub(crate) fn replace_first_line(raw: &str, from: &str, to: &str) -> Option<String> {
    let mut done = false;
    let mut out = String::new();
    for line in raw.split_inclusive('\n') {
        let body = line.strip_suffix('\n').unwrap_or(line);
        if !done && body == from {
            done = true;
            out.push_str(to);
            if line.ends_with('\n') {
                out.push('\n');
            }
        } else {
            out.push_str(line);
        }
    }
    done.then_some(out)
}

// /^\$(?:1|2[axy]?|5|6)\$[a-zA-Z0-9.\/]{1,16}\$[a-zA-Z0-9.\/]+$/
fn is_crypted(p: &str) -> bool {
    let salt_char = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '/';
    let parts: Vec<&str> = p.split('$').collect();
    matches!(parts.as_slice(), ["", id, salt, hash]
        if matches!(*id, "1" | "2" | "2a" | "2x" | "2y" | "5" | "6")
            && (1..=16).contains(&salt.len())
            && salt.chars().all(salt_char)
            && !hash.is_empty()
            && hash.chars().all(salt_char))
}

// Base.pm: substr(sha1_base64(time), 0, 8); any 8 salt characters will do.
fn salt_from_time() -> String {
    const CHARS: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    (0..8)
        .map(|_| {
            t = t.wrapping_mul(6364136223846793005).wrapping_add(1);
            CHARS[((t >> 33) % 64) as usize] as char
        })
        .collect()
}

// m/^\d+(\s+\S+\s+\S+\s+\S+\s+\S+\s+root\s+\S.*)$/: the text after the
// minute of a root crontab entry.
fn root_cron_rest(line: &str) -> Option<&str> {
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let rest = &line[digits..];
    let mut s = rest;
    for _ in 0..4 {
        let t = s.trim_start();
        if t.len() == s.len() {
            return None;
        }
        let word = t.find(char::is_whitespace)?;
        s = &t[word..];
    }
    let t = s.trim_start();
    if t.len() == s.len() {
        return None;
    }
    let after = t.strip_prefix("root")?;
    let t2 = after.trim_start();
    if t2.len() == after.len() || t2.is_empty() {
        return None;
    }
    Some(rest)
}

// /^127.0.1.1\s+LXC_NAME$/ (unescaped dots match anything)
fn is_lxc_name_line(l: &str) -> bool {
    let pat = b"127.0.1.1";
    let b = l.as_bytes();
    if b.len() < pat.len() || !pat.iter().zip(b).all(|(p, c)| *p == b'.' || p == c) {
        return false;
    }
    let rest = &l[pat.len()..];
    let t = rest.trim_start();
    t.len() < rest.len() && t == "LXC_NAME"
}

// Setup.pm new caches abs_path('/etc/localtime') and PVE::Systemd's host
// timezone; read here from the host's /etc/localtime and /etc/timezone.
fn host_timezone() -> Result<(String, String), String> {
    let localtime = std::fs::canonicalize("/etc/localtime")
        .map_err(|e| format!("invalid /etc/localtime: {e}"))?
        .display()
        .to_string();
    let zone = std::fs::read_to_string("/etc/timezone")
        .ok()
        .and_then(|t| t.lines().next().map(str::to_owned))
        .or_else(|| {
            localtime
                .strip_prefix("/usr/share/zoneinfo/")
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "UTC".to_owned());
    Ok((localtime, zone))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crypt_detection() {
        assert!(is_crypted("$6$abcdefgh$xyz./"));
        assert!(!is_crypted("hunter2"));
        assert!(!is_crypted("$7$a$b"));
    }

    #[test]
    fn cron_lines() {
        assert_eq!(
            root_cron_rest("17 *\t* * *\troot    cd / && run-parts --report /etc/cron.hourly"),
            Some(" *\t* * *\troot    cd / && run-parts --report /etc/cron.hourly")
        );
        assert_eq!(root_cron_rest("17 * * * * user cmd"), None);
        assert_eq!(root_cron_rest("@reboot root cmd"), None);
        assert_eq!(root_cron_rest("SHELL=/bin/sh"), None);
    }

    #[test]
    fn lxc_name_lines() {
        assert!(is_lxc_name_line("127.0.1.1 LXC_NAME"));
        assert!(is_lxc_name_line("127x0x1x1\tLXC_NAME"));
        assert!(!is_lxc_name_line("127.0.1.1 host"));
    }
}
