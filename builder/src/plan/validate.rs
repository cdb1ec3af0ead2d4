//! Rules serde cannot express: exclusive keys, cross-field checks, and values
//! that must never be baked (tokens). Each failure is located in its file.

use std::path::Path;

use super::locate::{locate, Seg};
use super::schema::{Artifact, BootstrapTool, Distro, OutputKind, Profile, Recipe, SourceSpec};
use super::{PlanError, PlanErrors};

/// Collects located errors for one file.
struct Report<'a> {
    path: &'a Path,
    text: &'a str,
    errors: Vec<PlanError>,
}

impl<'a> Report<'a> {
    fn new(path: &'a Path, text: &'a str) -> Self {
        Self {
            path,
            text,
            errors: Vec::new(),
        }
    }

    fn error(&mut self, at: &[Seg<'_>], message: impl Into<String>) {
        let (line, column) = locate(self.text, at);
        let key = at
            .iter()
            .map(|s| match s {
                Seg::Key(k) => k.to_string(),
                Seg::Index(i) => format!("[{i}]"),
            })
            .collect::<Vec<_>>()
            .join(".")
            .replace(".[", "[");
        self.errors.push(PlanError::Invalid {
            path: self.path.to_owned(),
            line,
            column,
            key,
            message: message.into(),
        });
    }

    fn finish(self) -> Result<(), PlanErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(PlanErrors(self.errors))
        }
    }
}

/// K3s config keys that carry secrets. They must come from metadata at boot,
/// never from a profile that is baked into every node.
const SECRET_CONFIG_KEYS: &[&str] = &["token", "agent-token", "datastore-endpoint"];

/// Paths the builder itself writes; a profile file there would be overwritten.
const RESERVED_PATHS: &[&str] = &[
    node_spec::DEFAULTS_PATH,
    node_spec::AGENT_BINARY_PATH,
    node_spec::BAKED_K3S_PATH,
];

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

fn clean_abs_path(p: &str) -> bool {
    p.starts_with('/')
        && p.len() > 1
        && !p.ends_with('/')
        && p.split('/')
            .skip(1)
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

pub(super) fn profile(path: &Path, text: &str, p: &Profile) -> Result<(), PlanErrors> {
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
        let ok = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
        let v = value.to_string();
        if !ok {
            r.error(
                &[Seg::Key("sysctls"), Seg::Key(key.as_str())],
                "not a sysctl name; expected e.g. fs.inotify.max_user_watches",
            );
        } else if v.contains('\n') || v.trim().is_empty() {
            r.error(
                &[Seg::Key("sysctls"), Seg::Key(key.as_str())],
                "value must be a single non-empty line",
            );
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
                format!("{m:?} is not a kernel module name; expected e.g. br_netfilter"),
            );
        }
    }

    for (i, f) in p.files.iter().enumerate() {
        let at = |k| [Seg::Key("files"), Seg::Index(i), Seg::Key(k)];
        if !clean_abs_path(&f.path) {
            r.error(
                &at("path"),
                format!(
                    "{:?} must be an absolute path without '.', '..' or a trailing '/'",
                    f.path
                ),
            );
        } else if RESERVED_PATHS.contains(&f.path.as_str()) {
            r.error(
                &at("path"),
                format!("{} is written by imgbuild itself", f.path),
            );
        }
        match (&f.content, &f.source) {
            (Some(_), Some(_)) => r.error(&at("source"), "give either content or source, not both"),
            (None, None) => r.error(
                &[Seg::Key("files"), Seg::Index(i)],
                "needs content (inline text) or source (a file next to the profile)",
            ),
            _ => {}
        }
        if parse_mode(&f.mode).is_none() {
            r.error(
                &at("mode"),
                format!(
                    "{:?} is not a file mode; expected octal digits in quotes, e.g. \"0644\"",
                    f.mode
                ),
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

pub(super) fn recipe(path: &Path, text: &str, rc: &Recipe) -> Result<(), PlanErrors> {
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
        }
    }
    r.finish()
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
) -> Result<(), PlanErrors> {
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
