//! Step: log-in keys, on nodes without cloud-init.
//!
//! A Proxmox LXC template has no cloud-init, so nothing would install the
//! `ssh_authorized_keys` of the seed (Proxmox's own user-data carries them
//! for VMs): the node could not be logged in to. Where cloud-init is
//! installed it does this itself, and the step leaves keys and sshd to it.
//! Otherwise the step
//!
//! * writes each account's keys ([`seed`] says who gets which) into
//!   `~/.ssh/authorized_keys` — directory 0700, file 0600, owned by the
//!   account's uid and gid from the node's `/etc/passwd`, written
//!   atomically, in a block of the agent's own so a re-run changes nothing
//!   and a key already in the file (pct's `--ssh-public-keys` block, or
//!   one added by hand) is not listed twice ([`keys`]);
//! * skips, with a warning, an account the node does not have: creating
//!   accounts (groups, sudo rights, shell, password state) is cloud-init's
//!   `users_groups` module, and half of it would be worse than none;
//! * once any key is in place, turns password log-in over SSH off with an
//!   sshd drop-in (Debian's and Ubuntu's sshd_config start with
//!   `Include /etc/ssh/sshd_config.d/*.conf`, and sshd keeps the first
//!   value it reads), makes sure sshd's runtime directory exists at every
//!   boot (tmpfiles.d) and now, and reloads (or, socket-activated,
//!   restarts) a running sshd.
//!
//! Host keys are never made here: pct and the image's first-boot keygen
//! unit make per-node ones. Every file is reached through `--root`; the
//! reload goes through [`System`], so a dry run records it.

pub mod keys;
pub mod seed;

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::Result;

use crate::checks::Finding;
use crate::metadata::merge::LoginSeed;
use crate::metadata::MetadataError;
use crate::rootfs::{write_atomic_owned, FileError, Root};
use crate::system::System;
use seed::{UserKeys, Wanted};

pub const SSHD_CONFIG: &str = "/etc/ssh/sshd_config";
pub const SSHD_DROPIN_DIR: &str = "/etc/ssh/sshd_config.d";
pub const SSHD_DROPIN: &str = "/etc/ssh/sshd_config.d/60-firstboot-agent.conf";
pub const SSHD_DROPIN_TEXT: &str = "\
# Written by firstboot-agent: this node's SSH keys came from its NoCloud seed
# (ssh_authorized_keys), so SSH takes keys only, no passwords. The console
# (`pct console`, `pct enter`, the VM console) still takes passwords.
# Remove this file and reload sshd to allow password log-in again.
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
";
/// The settings of the drop-in, as sshd's keywords (lower case) and values.
const DROPIN_SETTINGS: [(&str, &str); 3] = [
    ("passwordauthentication", "no"),
    ("kbdinteractiveauthentication", "no"),
    ("permitrootlogin", "prohibit-password"),
];
pub const SSHD_TMPFILES: &str = "/etc/tmpfiles.d/firstboot-agent-sshd.conf";
pub const SSHD_TMPFILES_TEXT: &str = "\
# Written by firstboot-agent: sshd needs its privilege-separation directory.
# ssh.service makes it itself; a socket-activated or hand-started sshd does not.
d /run/sshd 0755 root root -
";
const SSHD_RUN_DIR: &str = "/run/sshd";
/// The units sshd runs as (Debian/Ubuntu, RHEL).
const SSHD_UNITS: [&str; 2] = ["ssh.service", "sshd.service"];

/// What installs cloud-init, as its packages lay it out (cloud-init 24.3
/// renamed `cloud-init.service` to `cloud-init-network.service` and added
/// `cloud-init-main.service`).
const CLOUD_INIT_PATHS: [&str; 10] = [
    "/usr/bin/cloud-init",
    "/usr/lib/systemd/system/cloud-init.service",
    "/usr/lib/systemd/system/cloud-init-network.service",
    "/usr/lib/systemd/system/cloud-init-main.service",
    "/lib/systemd/system/cloud-init.service",
    "/lib/systemd/system/cloud-init-network.service",
    "/lib/systemd/system/cloud-init-main.service",
    "/etc/systemd/system/cloud-init.service",
    "/etc/systemd/system/cloud-init-network.service",
    "/etc/systemd/system/cloud-init-main.service",
];
/// cloud-init does not run when this file exists (its `ds-identify`).
const CLOUD_INIT_DISABLED: &str = "/etc/cloud/cloud-init.disabled";

/// Whether cloud-init will look after the keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudInit {
    Absent,
    /// Installed; `evidence` is the path found.
    Installed {
        evidence: String,
    },
    /// Installed but switched off (`by`), so it does nothing.
    Disabled {
        evidence: String,
        by: String,
    },
}

/// Look for cloud-init in the root: its command or one of its units (a
/// unit masked to /dev/null does not count).
pub fn detect_cloud_init(root: &Root) -> Result<CloudInit, FileError> {
    let evidence = CLOUD_INIT_PATHS.iter().find(|p| {
        let real = root.resolve(p);
        real != Path::new("/dev/null") && root.path(&real).symlink_metadata().is_ok()
    });
    let Some(evidence) = evidence.map(|e| (*e).to_owned()) else {
        return Ok(CloudInit::Absent);
    };
    let cmdline = root.read_optional("/proc/cmdline")?.unwrap_or_default();
    let by = if root.real_path(CLOUD_INIT_DISABLED).exists() {
        Some(CLOUD_INIT_DISABLED.to_owned())
    } else if cmdline
        .split_whitespace()
        .any(|w| w == "cloud-init=disabled")
    {
        Some("cloud-init=disabled on the kernel command line".to_owned())
    } else {
        None
    };
    Ok(match by {
        Some(by) => CloudInit::Disabled { evidence, by },
        None => CloudInit::Installed { evidence },
    })
}

/// What the step will do, decided (and the keys checked) in the metadata
/// step, before anything is changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// cloud-init is installed: keys and sshd are its business.
    LeftToCloudInit { evidence: String },
    /// Apply these keys; `note` says why although cloud-init is installed.
    Apply {
        wanted: Wanted,
        note: Option<String>,
    },
}

/// Decide, from the seed's log-in settings and whether cloud-init is here.
/// Where cloud-init is installed the settings are its, and not checked.
pub fn plan(root: &Root, login: &LoginSeed) -> Result<Plan, MetadataError> {
    let note = match detect_cloud_init(root)? {
        CloudInit::Installed { evidence } => return Ok(Plan::LeftToCloudInit { evidence }),
        CloudInit::Disabled { evidence, by } => Some(format!(
            "cloud-init is installed ({evidence}) but switched off by {by}"
        )),
        CloudInit::Absent => None,
    };
    Ok(Plan::Apply {
        wanted: seed::wanted(login)?,
        note,
    })
}

/// One account of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// The accounts of an `/etc/passwd` (lines that do not parse are skipped).
pub fn parse_passwd(text: &str) -> Vec<Account> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 || f[0].is_empty() || f[0].starts_with(['#', '+', '-']) {
                return None;
            }
            Some(Account {
                name: f[0].to_owned(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_owned(),
            })
        })
        .collect()
}

/// `account` in `accounts`; root is 0:0 with /root even without a passwd
/// line (a bare test root).
fn find_account(accounts: &[Account], name: &str) -> Option<Account> {
    accounts
        .iter()
        .find(|a| a.name == name)
        .cloned()
        .or_else(|| {
            (name == "root").then(|| Account {
                name: "root".into(),
                uid: 0,
                gid: 0,
                home: "/root".into(),
            })
        })
}

/// What the step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub message: String,
    pub findings: Vec<Finding>,
}

fn warn(detail: String, advice: &str) -> Finding {
    Finding::warn("ssh-keys", detail, advice)
}

fn plural(n: usize, one: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {one}s")
    }
}

/// Apply the plan (see the module docs).
pub fn apply(root: &Root, system: &dyn System, plan: &Plan) -> Result<Applied> {
    let (wanted, note) = match plan {
        Plan::LeftToCloudInit { evidence } => {
            return Ok(Applied {
                message: format!(
                    "left to cloud-init ({evidence} is installed): it installs ssh_authorized_keys and configures sshd"
                ),
                findings: Vec::new(),
            })
        }
        Plan::Apply { wanted, note } => (wanted, note),
    };
    let mut findings = wanted.warnings.clone();
    let prefix = note.as_ref().map(|n| format!("{n}; ")).unwrap_or_default();
    if wanted.users.is_empty() {
        return Ok(Applied {
            message: format!("{prefix}no ssh_authorized_keys in the metadata; sshd left as it is"),
            findings,
        });
    }
    let passwd = root.read_optional("/etc/passwd")?.unwrap_or_default();
    let accounts = parse_passwd(&passwd);
    let mut done = Vec::new();
    let mut in_place = 0;
    for user in &wanted.users {
        let Some(account) = find_account(&accounts, &user.name) else {
            findings.push(no_such_user(user));
            continue;
        };
        if user.keys.is_empty() {
            continue;
        }
        match install_keys(root, &account, user)? {
            Ok(line) => {
                in_place += user.keys.len();
                done.push(line);
            }
            Err(why) => findings.push(warn(
                why,
                "fix the path by hand; the keys are installed on the next run",
            )),
        }
    }
    if in_place == 0 {
        return Ok(Applied {
            message: format!("{prefix}no key installed; sshd left as it is"),
            findings,
        });
    }
    let sshd = configure_sshd(root, system, &mut findings)?;
    Ok(Applied {
        message: format!("{prefix}{}; {sshd}", done.join("; ")),
        findings,
    })
}

fn no_such_user(user: &UserKeys) -> Finding {
    warn(
        format!(
            "user {} ({}) does not exist on this node, so {} not installed",
            user.name,
            user.named_by.join(", "),
            match user.keys.len() {
                0 => "it was".to_owned(),
                1 => "its key was".to_owned(),
                n => format!("its {n} keys were"),
            }
        ),
        "firstboot-agent does not create accounts (cloud-init's users_groups does): create it in the image or by hand and add the keys, or give them to the default user (top-level ssh_authorized_keys, root unless `user:` names another)",
    )
}

/// What [`apply`] would do, for `firstboot-agent check`; changes nothing.
pub fn inspect(root: &Root, plan: &Plan) -> Vec<Finding> {
    let (wanted, note) = match plan {
        Plan::LeftToCloudInit { evidence } => {
            return vec![Finding::pass(
                "ssh-keys",
                format!("left to cloud-init ({evidence} is installed)"),
            )]
        }
        Plan::Apply { wanted, note } => (wanted, note),
    };
    let mut out = wanted.warnings.clone();
    let prefix = note.as_ref().map(|n| format!("{n}; ")).unwrap_or_default();
    if wanted.users.is_empty() {
        out.push(Finding::pass(
            "ssh-keys",
            format!("{prefix}no ssh_authorized_keys in the metadata"),
        ));
        return out;
    }
    let accounts = match root.read_optional("/etc/passwd") {
        Ok(text) => parse_passwd(&text.unwrap_or_default()),
        Err(e) => {
            out.push(Finding::fail("ssh-keys", e.to_string(), "see the message"));
            return out;
        }
    };
    for user in &wanted.users {
        match find_account(&accounts, &user.name) {
            None => out.push(no_such_user(user)),
            Some(a) if !user.keys.is_empty() => out.push(Finding::pass(
                "ssh-keys",
                format!(
                    "{prefix}{} for {} go into {}/.ssh/authorized_keys; then SSH takes no passwords",
                    plural(user.keys.len(), "key"),
                    a.name,
                    a.home.trim_end_matches('/')
                ),
            )),
            Some(_) => {}
        }
    }
    out
}

/// Put `user`'s keys into the account's authorized_keys. `Ok(Err(why))`
/// when the place is not one to write to (a link, no home directory).
fn install_keys(
    root: &Root,
    account: &Account,
    user: &UserKeys,
) -> Result<Result<String, String>, FileError> {
    let home = account.home.trim_end_matches('/');
    let shown_dir = format!("{home}/.ssh");
    let shown = format!("{shown_dir}/authorized_keys");
    let home_real = root.real_path(if home.is_empty() { "/" } else { home });
    if !home_real.is_dir() {
        return Ok(Err(format!(
            "the home directory {home} of {} does not exist, so its keys were not installed",
            account.name
        )));
    }
    // As root the agent can give the files to the account; anyone else
    // (a dry run by a normal user) leaves them its own.
    let owner = nix::unistd::geteuid()
        .is_root()
        .then_some((account.uid, account.gid));
    let dir = home_real.join(".ssh");
    match dir.symlink_metadata() {
        Ok(m) if m.file_type().is_symlink() => {
            return Ok(Err(format!(
                "{shown_dir} is a symbolic link; firstboot-agent does not write through links"
            )))
        }
        Ok(m) if !m.is_dir() => {
            return Ok(Err(format!("{shown_dir} is not a directory")));
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| FileError::new("creating directory", &dir, e))?,
        Err(e) => return Err(FileError::new("reading", &dir, e)),
    }
    set_mode_and_owner(&dir, 0o700, owner)?;
    let file = dir.join("authorized_keys");
    let existing = match file.symlink_metadata() {
        Ok(m) if m.file_type().is_symlink() => {
            return Ok(Err(format!(
                "{shown} is a symbolic link; firstboot-agent does not write through links"
            )))
        }
        Ok(m) if !m.is_file() => return Ok(Err(format!("{shown} is not a regular file"))),
        Ok(_) => String::from_utf8_lossy(
            &std::fs::read(&file).map_err(|e| FileError::new("reading", &file, e))?,
        )
        .into_owned(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(FileError::new("reading", &file, e)),
    };
    let merged = keys::merge_authorized_keys(&existing, &user.keys);
    let what = match &merged.content {
        Some(content) => {
            write_atomic_owned(&file, content.as_bytes(), 0o600, owner)?;
            "written"
        }
        None => {
            set_mode_and_owner(&file, 0o600, owner)?;
            "unchanged"
        }
    };
    let there = if merged.already > 0 {
        format!(", {} there already", merged.already)
    } else {
        String::new()
    };
    Ok(Ok(format!(
        "{}: {} in {shown} ({what}{there})",
        account.name,
        plural(user.keys.len(), "key")
    )))
}

fn set_mode_and_owner(path: &Path, mode: u32, owner: Option<(u32, u32)>) -> Result<(), FileError> {
    let m = std::fs::symlink_metadata(path).map_err(|e| FileError::new("reading", path, e))?;
    if let Some((uid, gid)) = owner {
        if (m.uid(), m.gid()) != (uid, gid) {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid))
                .map_err(|e| FileError::new("setting the owner of", path, e))?;
        }
    }
    if m.permissions().mode() & 0o7777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| FileError::new("setting the mode of", path, e))?;
    }
    Ok(())
}

/// Settings that keep the drop-in from taking effect: no `Include` of
/// sshd_config.d in sshd_config, or the same keyword set earlier — in
/// sshd_config before the `Include`, or in a drop-in sorting before the
/// agent's — to another value (sshd keeps the first value it reads).
/// `earlier` is (node path, text) of those drop-ins, in sshd's order.
pub fn dropin_overridden(main: &str, earlier: &[(String, String)]) -> Vec<String> {
    fn settings(text: &str) -> Vec<(usize, String, String)> {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            let mut words = line.split(|c: char| c.is_whitespace() || c == '=');
            let Some(key) = words.next().filter(|k| !k.is_empty()) else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            if key == "match" {
                break; // what follows is conditional
            }
            let value = words
                .filter(|w| !w.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            out.push((i + 1, key, value));
        }
        out
    }
    fn same(key: &str, value: &str, ours: &str) -> bool {
        let v = value.to_ascii_lowercase();
        v == ours || (key == "permitrootlogin" && v == "without-password")
    }
    let mut out = Vec::new();
    let mut check = |path: &str, line: usize, key: &str, value: &str| {
        let key = if key == "challengeresponseauthentication" {
            "kbdinteractiveauthentication"
        } else {
            key
        };
        if let Some((_, ours)) = DROPIN_SETTINGS.iter().find(|(k, _)| *k == key) {
            if !same(key, value, ours) {
                out.push(format!(
                    "{path}:{line} sets {key} {value}, and sshd keeps that first value instead of the drop-in's {ours}"
                ));
            }
        }
    };
    let mut included = false;
    for (line, key, value) in settings(main) {
        if key == "include" {
            if value.contains("sshd_config.d/") {
                included = true;
                break;
            }
            continue;
        }
        check(SSHD_CONFIG, line, &key, &value);
    }
    if !included {
        return vec![format!(
            "{SSHD_CONFIG} has no `Include /etc/ssh/sshd_config.d/*.conf` before a `Match` block, so sshd does not read {SSHD_DROPIN}"
        )];
    }
    for (path, text) in earlier {
        for (line, key, value) in settings(text) {
            check(path, line, &key, &value);
        }
    }
    out
}

/// Drop-in, runtime directory, reload. Returns what was done, for the
/// step's message.
fn configure_sshd(root: &Root, system: &dyn System, findings: &mut Vec<Finding>) -> Result<String> {
    let Some(main) = root.read_optional(SSHD_CONFIG)? else {
        findings.push(warn(
            format!("{SSHD_CONFIG} does not exist: no SSH server is installed, so the keys are there for one, but nothing listens"),
            "install openssh-server in the image",
        ));
        return Ok("no SSH server to configure".into());
    };
    let mut earlier = Vec::new();
    let ours = Path::new(SSHD_DROPIN)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir(root.path(SSHD_DROPIN_DIR)) {
        let mut names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".conf") && *n < ours)
            .collect();
        names.sort();
        for n in names {
            let path = format!("{SSHD_DROPIN_DIR}/{n}");
            earlier.push((path.clone(), root.read_optional(&path)?.unwrap_or_default()));
        }
    }
    for problem in dropin_overridden(&main, &earlier) {
        findings.push(warn(
            problem,
            "password log-in over SSH may still be on; change that setting, or remove it",
        ));
    }
    let changed = root.read_optional(SSHD_DROPIN)?.as_deref() != Some(SSHD_DROPIN_TEXT);
    if changed {
        root.write_atomic(SSHD_DROPIN, SSHD_DROPIN_TEXT.as_bytes(), 0o644)?;
    }
    if root.read_optional(SSHD_TMPFILES)?.as_deref() != Some(SSHD_TMPFILES_TEXT) {
        root.write_atomic(SSHD_TMPFILES, SSHD_TMPFILES_TEXT.as_bytes(), 0o644)?;
    }
    // /run is the running system's: made now only on the node itself; the
    // tmpfiles.d line makes it at every boot.
    if root.is_live() && !Path::new(SSHD_RUN_DIR).is_dir() {
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(SSHD_RUN_DIR)
            .or_else(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|e| FileError::new("creating directory", SSHD_RUN_DIR, e))?;
    }
    let mut said = format!(
        "password log-in over SSH off ({SSHD_DROPIN} {})",
        if changed { "written" } else { "unchanged" }
    );
    if changed {
        said.push_str(&reload_sshd(system, findings));
    }
    Ok(said)
}

/// Make a running sshd read the drop-in now; one not running reads it when
/// it starts. sshd reloads by re-executing itself on SIGHUP and binding its
/// port again, which fails — and sshd exits — when systemd holds the port
/// for `ssh.socket` and passed it in (Debian's socket activation; systemd's
/// first-boot preset enables ssh.socket in a container pct creates). So
/// with its socket active, sshd is restarted instead (sessions survive:
/// `KillMode=process`, and systemd keeps the socket open). `--no-block`:
/// a unit ordered after this one must not wait for it.
fn reload_sshd(system: &dyn System, findings: &mut Vec<Finding>) -> String {
    let state = |unit: &str| -> Result<String, String> {
        system
            .systemctl(&["is-active", unit])
            .map(|out| out.stdout.trim().to_owned())
            .map_err(|e| format!("could not ask systemd about {unit}: {e}"))
    };
    let by_hand = "restart sshd by hand (`systemctl restart ssh`) so the drop-in applies; until then it accepts passwords";
    for unit in SSHD_UNITS {
        let running = match state(unit) {
            Ok(s) => matches!(s.as_str(), "active" | "activating" | "reloading"),
            Err(e) => {
                findings.push(warn(e, by_hand));
                return String::new();
            }
        };
        if !running {
            continue;
        }
        let socket = unit.replace(".service", ".socket");
        let verb = match state(&socket) {
            Ok(s) if s == "active" => "restart",
            Ok(_) => "reload-or-restart",
            Err(e) => {
                findings.push(warn(e, by_hand));
                return String::new();
            }
        };
        return match system.systemctl(&[verb, "--no-block", unit]) {
            Ok(out) if out.success => format!(
                "; {unit} {}",
                if verb == "restart" {
                    "restarted (its socket is systemd's, so it cannot reload)"
                } else {
                    "reloaded"
                }
            ),
            Ok(out) => {
                findings.push(warn(
                    format!("`systemctl {verb} {unit}` failed: {}", out.stderr.trim()),
                    by_hand,
                ));
                String::new()
            }
            Err(e) => {
                findings.push(warn(format!("`systemctl {verb} {unit}`: {e}"), by_hand));
                String::new()
            }
        };
    }
    "; sshd is not running, it reads the drop-in when it starts".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lines() {
        let a = parse_passwd("root:x:0:0:root:/root:/bin/bash\n#c\nbob:x:1000:1001::/home/bob:/bin/sh\nbad:x:y:0::/:/bin/sh\n");
        assert_eq!(a.len(), 2);
        assert_eq!(
            (a[1].uid, a[1].gid, a[1].home.as_str()),
            (1000, 1001, "/home/bob")
        );
        assert_eq!(find_account(&[], "root").unwrap().home, "/root");
        assert!(find_account(&a, "ann").is_none());
    }

    #[test]
    fn debian_sshd_config_takes_the_drop_in() {
        let debian = "# comment\nInclude /etc/ssh/sshd_config.d/*.conf\n\n#PermitRootLogin prohibit-password\nPasswordAuthentication yes\nKbdInteractiveAuthentication no\nUsePAM yes\n";
        assert!(dropin_overridden(debian, &[]).is_empty());
        let before = "PasswordAuthentication yes\nInclude /etc/ssh/sshd_config.d/*.conf\n";
        let p = dropin_overridden(before, &[]);
        assert!(
            p[0].starts_with("/etc/ssh/sshd_config:1 sets passwordauthentication yes"),
            "{p:?}"
        );
        let no_include = "PasswordAuthentication no\n";
        assert!(dropin_overridden(no_include, &[])[0].contains("has no `Include"));
        let in_match = "Match User x\nInclude /etc/ssh/sshd_config.d/*.conf\n";
        assert!(dropin_overridden(in_match, &[])[0].contains("has no `Include"));
        let earlier = vec![(
            "/etc/ssh/sshd_config.d/50-cloud-init.conf".to_owned(),
            "PasswordAuthentication yes\nChallengeResponseAuthentication no\nPermitRootLogin without-password\n".to_owned(),
        )];
        let p = dropin_overridden(debian, &earlier);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("/etc/ssh/sshd_config.d/50-cloud-init.conf:1"),
            "{p:?}"
        );
    }

    #[test]
    fn cloud_init_is_found_as_its_packages_install_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        assert_eq!(detect_cloud_init(&root).unwrap(), CloudInit::Absent);
        // A masked unit is not cloud-init.
        std::fs::create_dir_all(root.path("/etc/systemd/system")).unwrap();
        std::os::unix::fs::symlink(
            "/dev/null",
            root.path("/etc/systemd/system/cloud-init.service"),
        )
        .unwrap();
        assert_eq!(detect_cloud_init(&root).unwrap(), CloudInit::Absent);
        // Merged /usr: /lib is a link.
        std::fs::create_dir_all(root.path("/usr/lib/systemd/system")).unwrap();
        std::os::unix::fs::symlink("usr/lib", root.path("/lib")).unwrap();
        std::fs::write(
            root.path("/usr/lib/systemd/system/cloud-init-main.service"),
            "",
        )
        .unwrap();
        assert_eq!(
            detect_cloud_init(&root).unwrap(),
            CloudInit::Installed {
                evidence: "/usr/lib/systemd/system/cloud-init-main.service".into()
            }
        );
        std::fs::create_dir_all(root.path("/etc/cloud")).unwrap();
        std::fs::write(root.path(CLOUD_INIT_DISABLED), "").unwrap();
        assert!(matches!(
            detect_cloud_init(&root).unwrap(),
            CloudInit::Disabled { .. }
        ));
    }
}
