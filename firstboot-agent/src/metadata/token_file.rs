//! `k3s.token-file`: the cluster token in a file already on the node. The
//! agent writes only the path into config.yaml and K3s reads the file when it
//! starts — so without a check here a missing or empty file, or one the
//! whole node can read, would surface minutes later as a K3s that cannot
//! join, or never.
//!
//! Rules (checked in the metadata step, before anything is changed):
//! * the file must exist, be a regular file (symlinks are followed inside
//!   `--root`) and hold a valid token;
//! * it must be owned by root and have no group or other permissions
//!   (0600 or 0400). K3s's documentation asks for 0600. A token lets whoever
//!   reads it join the cluster — as a server, with full control — so a file
//!   any local user can read is refused, not merely warned about: a warning
//!   in result.json goes unread, while the node would stay exposed for its
//!   whole life. cloud-init's `write_files` creates files 0644 unless told
//!   otherwise, which makes this the common mistake; the message gives the
//!   fix. Owner-only modes other than 0600/0400 (0700, 0500) leak nothing
//!   and only raise a warning.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::checks::Finding;
use crate::message::io_cause;
use crate::metadata::{MetadataError, NodeConfig, Token};
use crate::rootfs::Root;

/// Largest token file read; tokens are about a hundred bytes.
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// Follow symlinks of `abs` inside `root` (absolute targets are taken as
/// paths on the node). Returns the node path and the real path.
fn resolve_in_root(root: &Root, abs: &str) -> (String, PathBuf) {
    let mut node_path = PathBuf::from(abs);
    for _ in 0..16 {
        let real = root.path(&node_path);
        match std::fs::read_link(&real) {
            Ok(target) if target.is_absolute() => node_path = target,
            Ok(target) => {
                node_path = node_path
                    .parent()
                    .unwrap_or_else(|| Path::new("/"))
                    .join(target)
            }
            Err(_) => break,
        }
    }
    let real = root.path(&node_path);
    (node_path.display().to_string(), real)
}

/// `0644` → "readable by group and others" and the like.
fn exposure(mode: u32) -> String {
    let mut who = Vec::new();
    for (shift, name) in [(3, "group"), (0, "others")] {
        let bits = (mode >> shift) & 0o7;
        let mut can = Vec::new();
        if bits & 4 != 0 {
            can.push("read");
        }
        if bits & 2 != 0 {
            can.push("write");
        }
        if bits & 1 != 0 {
            can.push("execute");
        }
        if !can.is_empty() {
            who.push(format!("{name} can {}", can.join(" and ")));
        }
    }
    who.join(", ")
}

/// Check the token file of `cfg`, if it names one. Errors name the
/// user-data file, the line of `token-file` and the fix; warnings are
/// returned as findings.
pub fn check(root: &Root, cfg: &NodeConfig) -> Result<Vec<Finding>, MetadataError> {
    let Some(file) = &cfg.token_file else {
        return Ok(Vec::new());
    };
    // The file that named it: user-data, or vendor-data under it.
    let at = cfg.origins.of("k3s.token-file");
    let invalid = |message: String| MetadataError::Invalid {
        path: at.path.clone(),
        line: at.line,
        key: "k3s.token-file".into(),
        message,
    };
    let (node_path, real) = resolve_in_root(root, file);
    let shown = if node_path == *file {
        file.clone()
    } else {
        format!("{file} (a link to {node_path})")
    };
    let create = format!(
        "create it with the cluster token (the contents of /var/lib/rancher/k3s/server/node-token \
         on a server), owned by root, mode 0600 (cloud-init: a write_files entry with \
         `path: {file}` and `permissions: '0600'`), or put the token in `k3s.token` instead"
    );
    let meta = match std::fs::metadata(&real) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let looked = if root.is_live() {
                String::new()
            } else {
                format!(" (looked for {})", real.display())
            };
            return Err(invalid(format!(
                "{shown} does not exist on the node{looked} — {create}"
            )));
        }
        Err(e) => return Err(invalid(format!("{shown}: {}", io_cause(&e)))),
    };
    if !meta.is_file() {
        return Err(invalid(format!("{shown} is not a regular file — {create}")));
    }
    let mode = meta.permissions().mode() & 0o7777;
    let me = nix::unistd::geteuid().as_raw();
    // On a node the agent runs as root, so this is "owned by root"; a
    // non-root user checking a directory of its own cannot make root files.
    if meta.uid() != 0 && meta.uid() != me {
        return Err(invalid(format!(
            "{shown} is owned by uid {}, not root, so that user can read and change the cluster token — run `chown root:root {file}`",
            meta.uid()
        )));
    }
    if mode & 0o077 != 0 {
        return Err(invalid(format!(
            "{shown} has mode {mode:04o} ({}), but it holds the cluster token, which lets whoever reads it join the cluster — run `chmod 0600 {file}` (cloud-init write_files: `permissions: '0600'`)",
            exposure(mode)
        )));
    }
    let mut warnings = Vec::new();
    if mode != 0o600 && mode != 0o400 {
        warnings.push(Finding::warn(
            "token-file",
            format!("{shown} has mode {mode:04o}; K3s expects 0600"),
            format!("run `chmod 0600 {file}`"),
        ));
    }
    if meta.len() > MAX_TOKEN_FILE_BYTES {
        return Err(invalid(format!(
            "{shown} has {} bytes; a token is one line of about a hundred — is this the right file?",
            meta.len()
        )));
    }
    let text = std::fs::read(&real).map_err(|e| invalid(format!("{shown}: {}", io_cause(&e))))?;
    let text = String::from_utf8_lossy(&text);
    if text.trim().is_empty() {
        return Err(invalid(format!("{shown} is empty — {create}")));
    }
    Token::parse(&text).map_err(|m| invalid(format!("the token in {shown} {m}")))?;
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::merge::merge;
    use crate::metadata::userdata::{parse_user_data, MetaData};
    use crate::metadata::Metadata;

    const TOKEN: &str =
        "K10aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa::server:secret";

    fn cfg(token_file: &str) -> NodeConfig {
        let d = node_spec::BakedDefaults::from_yaml(
            "schema: 1\nprofile: t\nk3s:\n  version: v1.34.3+k3s1\n  role: server\n",
        )
        .unwrap();
        let ud = format!(
            "#cloud-config\nk3s:\n  role: agent\n  server: https://s:6443\n  token-file: {token_file}\n"
        );
        let md = Metadata {
            source: "/seed".into(),
            user_data_path: "/seed/user-data".into(),
            meta: MetaData {
                instance_id: "i".into(),
                local_hostname: None,
            },
            user: parse_user_data("/seed/user-data", ud.as_bytes()).unwrap(),
            vendor: None,
        };
        merge(&d, &md, "/seed/user-data").unwrap()
    }

    fn put(root: &Root, abs: &str, text: &str, mode: u32) {
        let p = root.path(abs);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_private_file_with_a_token_passes() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        put(&root, "/etc/k3s-token", &format!("{TOKEN}\n"), 0o600);
        assert!(check(&root, &cfg("/etc/k3s-token")).unwrap().is_empty());
        put(&root, "/etc/k3s-token", "bare-password\n", 0o400);
        assert!(check(&root, &cfg("/etc/k3s-token")).unwrap().is_empty());
    }

    #[test]
    fn a_missing_file_is_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        let e = check(&root, &cfg("/etc/k3s-token"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "/seed/user-data:5: k3s.token-file: /etc/k3s-token does not exist on the node"
            ),
            "{e}"
        );
        assert!(
            e.contains("permissions: '0600'") && e.contains("k3s.token"),
            "{e}"
        );
    }

    #[test]
    fn group_or_world_access_is_refused_with_the_chmod() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        for (mode, who) in [
            (0o644, "group can read, others can read"),
            (0o640, "group can read"),
            (0o602, "others can write"),
        ] {
            put(&root, "/etc/k3s-token", TOKEN, mode);
            let e = check(&root, &cfg("/etc/k3s-token"))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!(
                    "/seed/user-data:5: k3s.token-file: /etc/k3s-token has mode {mode:04o} ({who})"
                )) && e.contains("run `chmod 0600 /etc/k3s-token`"),
                "{e}"
            );
            assert!(!e.contains("secret"), "token leaked: {e}");
        }
        put(&root, "/etc/k3s-token", TOKEN, 0o700);
        let w = check(&root, &cfg("/etc/k3s-token")).unwrap();
        assert_eq!(w.len(), 1);
        assert!(w[0].to_string().contains("chmod 0600"), "{:?}", w);
    }

    #[test]
    fn empty_bad_or_odd_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        put(&root, "/etc/k3s-token", "\n", 0o600);
        let e = check(&root, &cfg("/etc/k3s-token"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/etc/k3s-token is empty"), "{e}");
        put(&root, "/etc/k3s-token", "K10abc::x\n", 0o600);
        let e = check(&root, &cfg("/etc/k3s-token"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the token in /etc/k3s-token starts with K10"),
            "{e}"
        );
        assert!(!e.contains("K10abc"), "token leaked: {e}");
        std::fs::create_dir_all(root.path("/etc/dir-token")).unwrap();
        let e = check(&root, &cfg("/etc/dir-token"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a regular file"), "{e}");
    }

    #[test]
    fn links_are_followed_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        put(&root, "/run/secrets/token", TOKEN, 0o644);
        std::fs::create_dir_all(root.path("/etc")).unwrap();
        std::os::unix::fs::symlink("/run/secrets/token", root.path("/etc/k3s-token")).unwrap();
        let e = check(&root, &cfg("/etc/k3s-token"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/etc/k3s-token (a link to /run/secrets/token) has mode 0644"),
            "{e}"
        );
    }
}
