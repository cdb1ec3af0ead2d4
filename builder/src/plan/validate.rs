//! Rules serde cannot express: exclusive keys, cross-field checks, and values
//! that must never be baked (tokens). Each failure is located in its file.

use std::path::Path;

use super::locate::{locate, Seg};
use super::schema::{
    Artifact, BootstrapTool, Distro, FileSpec, OutputKind, Profile, Recipe, SourceSpec,
};
use super::{PlanError, PlanErrors, PlanWarning};

/// Collects located errors and warnings for one file.
pub(super) struct Report<'a> {
    path: &'a Path,
    text: &'a str,
    errors: Vec<PlanError>,
    warnings: Vec<PlanWarning>,
}

impl<'a> Report<'a> {
    pub(super) fn new(path: &'a Path, text: &'a str) -> Self {
        Self {
            path,
            text,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn located(&self, at: &[Seg<'_>]) -> (usize, usize, String) {
        let (line, column) = locate(self.text, at);
        let key = at
            .iter()
            .map(|s| match s {
                // A hostile map key (`../../etc/passwd`, one with a newline)
                // is quoted, so the key path stays one readable word.
                Seg::Key(k)
                    if k.is_empty()
                        || !k
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) =>
                {
                    format!("{k:?}")
                }
                Seg::Key(k) => k.to_string(),
                Seg::Index(i) => format!("[{i}]"),
            })
            .collect::<Vec<_>>()
            .join(".")
            .replace(".[", "[");
        (line, column, key)
    }

    /// Whether the file spells out the key at `at` (it may be a default).
    fn written(&self, at: &[Seg<'_>]) -> bool {
        at.len() > 1 && locate(self.text, at) != locate(self.text, &at[..at.len() - 1])
    }

    pub(super) fn error(&mut self, at: &[Seg<'_>], message: impl Into<String>) {
        let (line, column, key) = self.located(at);
        self.errors.push(PlanError::Invalid {
            path: self.path.to_owned(),
            line,
            column,
            key,
            message: message.into(),
        });
    }

    /// Something a build goes on with but the user should hear about.
    pub(super) fn warn(&mut self, at: &[Seg<'_>], message: impl Into<String>) {
        let (line, column, key) = self.located(at);
        self.warnings.push(PlanWarning {
            path: self.path.to_owned(),
            line,
            column,
            key,
            message: message.into(),
        });
    }

    pub(super) fn finish(mut self) -> Result<Vec<PlanWarning>, PlanErrors> {
        // In file order, as an editor lists them (maps are checked in key order).
        let at = |e: &PlanError| match e {
            PlanError::Invalid { line, column, .. } => (*line, *column),
            PlanError::Read { .. } => (0, 0),
        };
        self.errors.sort_by_key(|e| at(e));
        self.warnings.sort_by_key(|w| (w.line, w.column));
        if self.errors.is_empty() {
            Ok(self.warnings)
        } else {
            Err(PlanErrors(self.errors))
        }
    }
}

/// K3s config keys that carry secrets. They must come from metadata at boot,
/// never from a profile that is baked into every node.
const SECRET_CONFIG_KEYS: &[&str] = &["token", "agent-token", "datastore-endpoint"];

/// Paths the builder itself writes (the layer in `layer/compute.rs`): a
/// profile file there would replace what the node needs, or be replaced.
/// `/etc/hostname` and `/etc/resolv.conf` are written too but may be
/// overridden on purpose. A unit test keeps this list in step with the layer.
pub(super) const RESERVED_PATHS: &[&str] = &[
    node_spec::DEFAULTS_PATH,
    node_spec::AGENT_BINARY_PATH,
    node_spec::BAKED_K3S_PATH,
    crate::layer::BUILD_INFO_PATH,
    "/usr/share/doc/imgbuild/agent.md",
    "/etc/sysctl.d/90-imgbuild.conf",
    "/etc/modules-load.d/imgbuild.conf",
    "/etc/systemd/system/firstboot-agent.service",
    "/etc/systemd/system/multi-user.target.wants/firstboot-agent.service",
    "/etc/systemd/system/imgbuild-ssh-keygen.service",
    "/etc/systemd/system/multi-user.target.wants/imgbuild-ssh-keygen.service",
    "/etc/systemd/system/systemd-firstboot.service",
    "/etc/systemd/system/sys-kernel-debug.mount.d/imgbuild-container.conf",
    "/etc/systemd/system/sys-kernel-tracing.mount.d/imgbuild-container.conf",
    "/etc/systemd/system/sys-kernel-config.mount.d/imgbuild-container.conf",
];

/// The first owner id an unprivileged Proxmox container cannot map: its
/// idmap is container 0..65535 → host 100000..165535.
const UNPRIVILEGED_ID_LIMIT: u32 = 65536;

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_url(s: &str) -> bool {
    s.starts_with("https://") || s.starts_with("http://")
}

/// Why `name` is not a sysctl.d(5) variable name, if it is not. A name is
/// components of letters, digits, `_`, `-` (and `*` globs) separated by `.`
/// or `/`, relative to /proc/sys, optionally after one `-` (sysctl.d's
/// "ignore a failure" prefix). Written as `name = value` on one line.
fn sysctl_name_problem(name: &str) -> Option<String> {
    const DO: &str = "write it the way sysctl.d(5) does, e.g. fs.inotify.max_user_watches";
    let bare = name.strip_prefix('-').unwrap_or(name);
    if bare.is_empty() {
        return Some(format!("empty sysctl name — {DO}"));
    }
    if bare.starts_with('/') {
        return Some(format!(
            "{name:?} starts with '/': a sysctl is named relative to /proc/sys — {DO}"
        ));
    }
    if bare.contains("..") || bare.split('/').any(|c| c == "..") {
        return Some(format!(
            "{name:?} contains '..': a sysctl name is dotted and cannot climb out of /proc/sys — {DO}"
        ));
    }
    if let Some(c) = bare
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '=')
    {
        return Some(format!(
            "{name:?} contains {c:?}: in /etc/sysctl.d/90-imgbuild.conf a name ends at whitespace or '=', and a newline starts another setting — {DO}"
        ));
    }
    if bare.split(['.', '/']).any(str::is_empty) {
        return Some(format!(
            "{name:?} has an empty component (a leading, trailing or doubled '.' or '/') — {DO}"
        ));
    }
    if let Some(c) = bare
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '*' | '.' | '/')))
    {
        return Some(format!(
            "{name:?} contains {c:?}; a sysctl name is letters, digits, '_' and '-' separated by '.' or '/' — {DO}"
        ));
    }
    None
}

/// Why `p` cannot be a `files[].path`, if it cannot.
fn file_path_problem(p: &str) -> Option<String> {
    const EG: &str = "e.g. /etc/motd";
    if !p.starts_with('/') {
        return Some(format!(
            "{p:?} is not an absolute path — write the path inside the image from /, {EG}"
        ));
    }
    if let Some(c) = p.chars().find(|c| c.is_control()) {
        return Some(format!("{p:?} contains the control character {c:?} — {EG}"));
    }
    if p == "/" || p.ends_with('/') {
        return Some(format!(
            "{p:?} ends with '/': files[].path names a file, not a directory — {EG}"
        ));
    }
    let parts: Vec<&str> = p.split('/').skip(1).collect();
    if parts.contains(&"..") {
        return Some(format!(
            "{p:?} contains '..' — write the normalized path without '..', {EG}"
        ));
    }
    if parts.iter().any(|c| c.is_empty() || *c == ".") {
        return Some(format!(
            "{p:?} is not normalized — write it without '//' or '/./', {EG}"
        ));
    }
    if parts.iter().any(|c| c.len() > 255) {
        return Some(format!(
            "{p:?} has a component longer than 255 bytes, which no Linux file system stores"
        ));
    }
    let why = match parts[0] {
        "proc" => "/proc is the kernel's procfs, mounted over the image at boot, so the file would be hidden — set kernel parameters with sysctls:",
        "sys" => "/sys is sysfs, mounted over the image at boot, so the file would be hidden — load modules with modules: or write a udev rule under /etc/udev/rules.d/",
        "dev" => "/dev is a devtmpfs at boot (and `pct create` skips ./dev/* when it extracts a template), so the file would never be seen — create device settings with a udev rule under /etc/udev/rules.d/",
        _ => return None,
    };
    Some(format!("{p} is under /{}: {why}", parts[0]))
}

/// Files whose content is a secret: readable by others, they leak it.
fn holds_secrets(p: &str) -> bool {
    let name = p.rsplit('/').next().unwrap_or(p);
    let lower = p.to_ascii_lowercase();
    matches!(
        p,
        "/etc/shadow" | "/etc/gshadow" | "/etc/shadow-" | "/etc/gshadow-"
    ) || (p.starts_with("/etc/ssh/") && name.ends_with("_key"))
        || p.starts_with("/etc/ssl/private/")
        || (lower.contains("/.ssh/id_") && !lower.ends_with(".pub"))
        || lower.contains("token")
        || lower.contains("secret")
}

/// Errors and warnings for one `files[i]` entry.
fn file_spec(r: &mut Report<'_>, i: usize, f: &FileSpec, lxc: bool) {
    let at = |k| [Seg::Key("files"), Seg::Index(i), Seg::Key(k)];
    if let Some(why) = file_path_problem(&f.path) {
        r.error(&at("path"), why);
    } else if RESERVED_PATHS.contains(&f.path.as_str()) {
        r.error(
            &at("path"),
            format!(
                "{} is written by imgbuild itself — choose another path",
                f.path
            ),
        );
    } else if f.path == "/etc/machine-id" {
        r.error(
            &at("path"),
            "/etc/machine-id is emptied by imgbuild so that each node makes its own at first boot; a baked one would be shared by every node — leave it out",
        );
    } else {
        if f.path.starts_with("/etc/ssh/ssh_host_") {
            r.warn(
                &at("path"),
                format!("{} is an ssh host key: every node made from this image would share it — leave it out; each node makes its own at first boot", f.path),
            );
        }
        if f.path.starts_with("/run/") || f.path.starts_with("/var/run/") {
            r.warn(
                &at("path"),
                format!("{} is under /run, a tmpfs mounted at boot, so the file is hidden on a running node — write it elsewhere, or create it at boot with a rule in /etc/tmpfiles.d/", f.path),
            );
        }
    }
    match (&f.content, &f.source) {
        (Some(_), Some(_)) => r.error(&at("source"), "give either content or source, not both"),
        (None, None) => r.error(
            &[Seg::Key("files"), Seg::Index(i)],
            "needs content (inline text) or source (a file next to the profile)",
        ),
        _ => {}
    }
    let Some(mode) = parse_mode(&f.mode) else {
        r.error(
            &at("mode"),
            format!(
                "{:?} is not a file mode; expected octal digits in quotes, e.g. \"0644\"",
                f.mode
            ),
        );
        return;
    };
    // A default mode is reported at the path, the line the user wrote.
    let (mode_at, default) = if r.written(&at("mode")) {
        (at("mode"), "")
    } else {
        (at("path"), " (the default)")
    };
    if holds_secrets(&f.path) && mode & 0o044 != 0 {
        let who = if mode & 0o004 != 0 {
            "every user"
        } else {
            "its group"
        };
        r.warn(
            &mode_at,
            format!(
                "mode {:04o}{default} lets {who} read {}, which holds secrets — use mode \"0600\"",
                mode, f.path
            ),
        );
    }
    if mode & 0o6000 != 0 && (f.uid == 0 || f.gid == 0) {
        let what = match (mode & 0o4000 != 0, mode & 0o2000 != 0) {
            (true, true) => "set-user-ID and set-group-ID",
            (true, false) => "set-user-ID",
            _ => "set-group-ID",
        };
        r.warn(
            &at("mode"),
            format!(
                "mode {:04o} makes {} {what} with root ownership: whoever runs it gets root's rights — drop the {:o} bits (e.g. \"{:04o}\") unless it must grant them",
                mode,
                f.path,
                mode & 0o6000,
                mode & 0o777
            ),
        );
    }
    if mode & 0o002 != 0 {
        r.warn(
            &at("mode"),
            format!(
                "mode {:04o} lets every user change {} — drop the world-write bit (e.g. \"{:04o}\")",
                mode,
                f.path,
                mode & 0o7775
            ),
        );
    }
    if lxc {
        for (key, id) in [("uid", f.uid), ("gid", f.gid)] {
            if id >= UNPRIVILEGED_ID_LIMIT {
                r.warn(
                    &at(key),
                    format!(
                        "{key} {id} is beyond what an unprivileged Proxmox container maps (ids 0-65535, to 100000-165535 on the host): there the file belongs to nobody (65534) — use an id below 65536"
                    ),
                );
            }
        }
    }
}

/// A DNS host name: labels of letters, digits, `-` (and `_`), 1–63 bytes
/// each, 253 in all, an optional final dot.
fn is_host_name(n: &str) -> bool {
    let n = n.strip_suffix('.').unwrap_or(n);
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

pub(super) fn profile(
    path: &Path,
    text: &str,
    p: &Profile,
) -> Result<Vec<PlanWarning>, PlanErrors> {
    let mut r = Report::new(path, text);
    if !is_name(&p.name) {
        r.error(
            &[Seg::Key("name")],
            format!(
                "{:?} is not a usable name; expected lowercase letters, digits and '-', e.g. k3s-worker",
                p.name
            ),
        );
    }
    if p.recipe.trim().is_empty() {
        r.error(
            &[Seg::Key("recipe")],
            "empty; expected a recipe name such as debian-12",
        );
    }

    let k = &p.k3s;
    if k.ha && k.role != node_spec::Role::Server {
        r.error(
            &[Seg::Key("k3s"), Seg::Key("ha")],
            "ha: true needs role: server (agents join any server; HA is a server setting)",
        );
    }
    if k.control_plane_taint && k.role != node_spec::Role::Server {
        r.error(
            &[Seg::Key("k3s"), Seg::Key("control-plane-taint")],
            "control-plane-taint only applies to role: server",
        );
    }
    if let Some(m) = &k.mirror {
        if !is_url(m) && !m.starts_with("file://") {
            r.error(
                &[Seg::Key("k3s"), Seg::Key("mirror")],
                format!("{m:?} is not a URL; expected e.g. https://github.com/k3s-io/k3s/releases/download"),
            );
        }
    }
    for key in k.config.keys() {
        let at = [Seg::Key("k3s"), Seg::Key("config"), Seg::Key(key.as_str())];
        if SECRET_CONFIG_KEYS.contains(&key.as_str()) {
            r.error(
                &at,
                "secrets are never baked into images; give the token in cloud-init user-data (k3s.token) at boot",
            );
        } else if key.starts_with('-') {
            r.error(
                &at,
                format!(
                    "write K3s flags without dashes, e.g. {:?}",
                    key.trim_start_matches('-')
                ),
            );
        } else if matches!(key.as_str(), "server" | "cluster-init") {
            r.error(
                &at,
                format!("{key} is decided per node at boot: set it in user-data (k3s.{key}), or use k3s.ha for HA servers"),
            );
        }
    }

    if let Some(a) = &p.bake.k3s_binary {
        artifact(&mut r, &[Seg::Key("bake"), Seg::Key("k3s-binary")], a);
        if let (Some(pin), Some(baked)) = (&k.sha256, &a.sha256) {
            if pin != baked {
                r.error(
                    &[Seg::Key("bake"), Seg::Key("k3s-binary"), Seg::Key("sha256")],
                    format!("{baked} differs from k3s.sha256 {pin}; the baked binary must be the pinned release"),
                );
            }
        }
    }
    for (i, a) in p.bake.airgap_images.iter().enumerate() {
        artifact(
            &mut r,
            &[Seg::Key("bake"), Seg::Key("airgap-images"), Seg::Index(i)],
            a,
        );
    }

    for (key, value) in &p.sysctls {
        let at = [Seg::Key("sysctls"), Seg::Key(key.as_str())];
        let v = value.to_string();
        if let Some(why) = sysctl_name_problem(key) {
            r.error(&at, why);
        } else if let Some(c) = v.chars().find(|c| c.is_control()) {
            r.error(
                &at,
                format!("the value {v:?} contains {c:?}; each sysctl is one line `name = value` — give the value on one line"),
            );
        } else if v.trim().is_empty() {
            r.error(&at, "the value is empty — give a number or a string");
        }
    }
    for (i, m) in p.modules.iter().enumerate() {
        if m.is_empty()
            || !m
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            r.error(
                &[Seg::Key("modules"), Seg::Index(i)],
                format!("{m:?} is not a kernel module name — modules-load.d(5) takes one name per line: letters, digits, '_' and '-', without '/', spaces or .ko, e.g. br_netfilter"),
            );
        }
    }

    let lxc = p.outputs.contains(&OutputKind::Lxc);
    for (i, f) in p.files.iter().enumerate() {
        file_spec(&mut r, i, f, lxc);
        for (j, g) in p.files[..i].iter().enumerate() {
            if g.path == f.path {
                r.error(
                    &[Seg::Key("files"), Seg::Index(i), Seg::Key("path")],
                    format!("{} is also files[{j}].path — give each file once", f.path),
                );
            } else if let Some((dir, file)) = nested(&g.path, &f.path) {
                r.error(
                    &[Seg::Key("files"), Seg::Index(i), Seg::Key("path")],
                    format!("{file} would be inside {dir}, which files[] also writes as a file — choose one of them"),
                );
            }
        }
    }
    for (i, n) in p.checks.dns_names.iter().enumerate() {
        if !is_host_name(n) {
            r.error(
                &[Seg::Key("checks"), Seg::Key("dns-names"), Seg::Index(i)],
                format!("{n:?} is not a host name — expected e.g. registry.lan"),
            );
        }
    }

    if p.outputs.is_empty() {
        r.error(
            &[Seg::Key("outputs")],
            "empty; expected at least one of lxc, qcow2",
        );
    }
    for (i, o) in p.outputs.iter().enumerate() {
        if p.outputs[..i].contains(o) {
            r.error(
                &[Seg::Key("outputs"), Seg::Index(i)],
                format!("{} listed twice", o.as_str()),
            );
        }
    }
    if let Some(size) = &p.qcow2.size {
        match super::parse_size(size) {
            Some(n) if n >= super::MIN_DISK_SIZE => {}
            Some(_) => r.error(
                &[Seg::Key("qcow2"), Seg::Key("size")],
                format!("{size} is too small; a disk needs at least 1G"),
            ),
            None => r.error(
                &[Seg::Key("qcow2"), Seg::Key("size")],
                format!("`{size}` is not a size; write e.g. 8G, 20GiB, 4096M or a byte count"),
            ),
        }
    }
    if !(1..=19).contains(&p.lxc.zstd_level) {
        r.error(
            &[Seg::Key("lxc"), Seg::Key("zstd-level")],
            format!("{} is out of range; expected 1 to 19", p.lxc.zstd_level),
        );
    }
    if p.checks.network_timeout_secs == 0 {
        r.error(
            &[Seg::Key("checks"), Seg::Key("network-timeout-secs")],
            "must be at least 1",
        );
    }
    if p.checks.ready_timeout_secs == 0 {
        r.error(
            &[Seg::Key("checks"), Seg::Key("ready-timeout-secs")],
            "must be at least 1",
        );
    }
    r.finish()
}

/// `(dir, file)` when one of two paths lies inside the other.
fn nested<'a>(a: &'a str, b: &'a str) -> Option<(&'a str, &'a str)> {
    let inside = |dir: &str, p: &str| p.strip_prefix(dir).is_some_and(|r| r.starts_with('/'));
    if inside(a, b) {
        Some((a, b))
    } else if inside(b, a) {
        Some((b, a))
    } else {
        None
    }
}

/// `"0644"` → `0o644`. Accepts 3 or 4 octal digits up to 07777.
pub fn parse_mode(s: &str) -> Option<u32> {
    if !(3..=4).contains(&s.len()) {
        return None;
    }
    u32::from_str_radix(s, 8).ok().filter(|m| *m <= 0o7777)
}

fn artifact(r: &mut Report<'_>, at: &[Seg<'_>], a: &Artifact) {
    let mut sub = at.to_vec();
    match (&a.path, &a.url) {
        (Some(_), Some(_)) => {
            sub.push(Seg::Key("url"));
            r.error(&sub, "give either path or url, not both");
        }
        (None, None) => r.error(at, "needs path (a local file) or url (http/https)"),
        (None, Some(u)) => {
            if !is_url(u) {
                sub.push(Seg::Key("url"));
                r.error(&sub, format!("{u:?} is not an http(s) URL"));
            } else if a.sha256.is_none() && a.sha256_url.is_none() {
                r.error(
                    at,
                    "a download needs a pinned sha256 (64 hex digits) or a sha256-url naming a checksum file",
                );
            }
        }
        (Some(_), None) => {}
    }
    if let Some(u) = &a.sha256_url {
        if !is_url(u) {
            let mut s = at.to_vec();
            s.push(Seg::Key("sha256-url"));
            r.error(&s, format!("{u:?} is not an http(s) URL"));
        }
    }
}

pub(super) fn recipe(path: &Path, text: &str, rc: &Recipe) -> Result<Vec<PlanWarning>, PlanErrors> {
    let mut r = Report::new(path, text);
    if !is_name(&rc.name.replace('.', "-")) {
        r.error(
            &[Seg::Key("name")],
            format!(
                "{:?} is not a usable name; expected e.g. debian-12",
                rc.name
            ),
        );
    }
    if rc.release.is_empty() || rc.release.contains(['/', '_', ' ']) {
        r.error(
            &[Seg::Key("release")],
            "expected a release such as \"12\" or \"24.04\"",
        );
    }
    if rc.arch != "amd64" {
        r.error(
            &[Seg::Key("arch")],
            format!(
                "{:?} is not supported; firstboot-agent is built for amd64 (x86_64) only",
                rc.arch
            ),
        );
    }
    if rc.lxc.is_none() && rc.qcow2.is_none() {
        r.error(
            &[Seg::Key("lxc")],
            "a recipe needs at least one source: lxc or qcow2",
        );
    }
    if let Some(s) = &rc.lxc {
        match s {
            SourceSpec::CloudImage(_) => r.error(
                &[Seg::Key("lxc"), Seg::Key("cloud-image")],
                "an LXC template is made from a rootfs tarball or a bootstrap, not a disk image",
            ),
            SourceSpec::Tarball(a) => artifact(&mut r, &[Seg::Key("lxc"), Seg::Key("tarball")], a),
            SourceSpec::Bootstrap(b) => bootstrap(&mut r, rc.distro, "lxc", b),
            SourceSpec::Pveam(p) => pveam(&mut r, p),
            SourceSpec::Linuxcontainers(l) => linuxcontainers(&mut r, l),
        }
    }
    if let Some(s) = &rc.qcow2 {
        match s {
            SourceSpec::Tarball(_) => r.error(
                &[Seg::Key("qcow2"), Seg::Key("tarball")],
                "a qcow2 disk is made from a cloud image or a bootstrap, not a rootfs tarball",
            ),
            SourceSpec::CloudImage(a) => {
                artifact(&mut r, &[Seg::Key("qcow2"), Seg::Key("cloud-image")], a)
            }
            SourceSpec::Bootstrap(b) => bootstrap(&mut r, rc.distro, "qcow2", b),
            SourceSpec::Pveam(_) | SourceSpec::Linuxcontainers(_) => r.error(
                &[Seg::Key("qcow2"), Seg::Key(s.key())],
                "container templates are LXC bases; a qcow2 disk is made from a cloud image or a \
                 bootstrap",
            ),
        }
    }
    r.finish()
}

fn pveam(r: &mut Report<'_>, p: &super::schema::PveamSpec) {
    let at = |k| [Seg::Key("lxc"), Seg::Key("pveam"), Seg::Key(k)];
    if p.template.is_empty()
        || !p
            .template
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_+".contains(&b))
    {
        r.error(
            &at("template"),
            format!(
                "{:?} is not a template name; expected the index's Package, e.g. ubuntu-22.04-standard",
                p.template
            ),
        );
    }
    if let Some(v) = &p.version {
        if v.is_empty() || v.contains(['/', ' ', '_']) {
            r.error(
                &at("version"),
                format!("{v:?} is not a version; expected e.g. \"22.04-1\""),
            );
        }
    }
    if let Some(d) = &p.sha512 {
        if d.len() != 128 || !d.bytes().all(|b| b.is_ascii_hexdigit()) {
            r.error(
                &at("sha512"),
                "expected 128 hex digits (the index's sha512sum)",
            );
        }
    }
    if let Some(u) = &p.index {
        url_key(r, &at("index"), u);
    }
}

fn linuxcontainers(r: &mut Report<'_>, l: &super::schema::LinuxcontainersSpec) {
    let at = |k| [Seg::Key("lxc"), Seg::Key("linuxcontainers"), Seg::Key(k)];
    let word = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b))
    };
    match l.image.split_once('/') {
        Some((d, rel)) if word(d) && word(rel) => {}
        _ => r.error(
            &at("image"),
            format!(
                "{:?} is not distro/release; expected e.g. rockylinux/9",
                l.image
            ),
        ),
    }
    if !word(&l.variant) {
        r.error(
            &at("variant"),
            format!("{:?} is not a variant; expected e.g. default", l.variant),
        );
    }
    if let Some(u) = &l.server {
        url_key(r, &at("server"), u);
    }
}

fn url_key(r: &mut Report<'_>, at: &[Seg<'_>], u: &str) {
    let lower = u.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        r.error(at, format!("{u:?} is not an http(s) URL"));
    }
}

fn bootstrap(
    r: &mut Report<'_>,
    distro: Distro,
    output: &'static str,
    b: &super::schema::BootstrapSpec,
) {
    let at = [Seg::Key(output), Seg::Key("bootstrap"), Seg::Key("tool")];
    match (b.tool, distro) {
        (BootstrapTool::Mmdebstrap, Distro::Rocky) => r.error(
            &at,
            "mmdebstrap bootstraps Debian and Ubuntu; use dnf for Rocky",
        ),
        (BootstrapTool::Dnf, Distro::Debian | Distro::Ubuntu) => r.error(
            &at,
            "dnf bootstraps Rocky; use mmdebstrap for Debian and Ubuntu",
        ),
        _ => {}
    }
    if b.suite.is_empty() {
        r.error(
            &[Seg::Key(output), Seg::Key("bootstrap"), Seg::Key("suite")],
            "empty; expected e.g. bookworm",
        );
    }
    for (i, p) in b.packages.iter().enumerate() {
        if p.is_empty() || p.contains([',', ' ']) {
            r.error(
                &[
                    Seg::Key(output),
                    Seg::Key("bootstrap"),
                    Seg::Key("packages"),
                    Seg::Index(i),
                ],
                format!("{p:?} is not a package name"),
            );
        }
    }
}

/// Rules that need both files and the chosen outputs.
pub(super) fn combination(
    profile_path: &Path,
    profile_text: &str,
    p: &Profile,
    recipe_path: &Path,
    rc: &Recipe,
    outputs: &[OutputKind],
) -> Result<Vec<PlanWarning>, PlanErrors> {
    let mut r = Report::new(profile_path, profile_text);
    for (i, o) in outputs.iter().enumerate() {
        if rc.source(*o).is_none() {
            r.error(
                &[Seg::Key("outputs"), Seg::Index(i)],
                format!(
                    "recipe {} ({}) has no {} source; add one there or drop this output",
                    rc.name,
                    recipe_path.display(),
                    o.as_str()
                ),
            );
        }
        if !p.outputs.contains(o) {
            r.error(
                &[Seg::Key("outputs")],
                format!(
                    "--output {} is not among this profile's outputs",
                    o.as_str()
                ),
            );
        }
    }
    r.finish()
}
