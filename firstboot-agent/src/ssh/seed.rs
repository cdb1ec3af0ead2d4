//! Who gets which key, from cloud-init's log-in settings in the seed — read
//! as cloud-init reads them (cloudinit/config/cc_ssh.py and
//! cc_users_groups.py, `ug_util.normalize_users_groups`):
//!
//! * top-level `ssh_authorized_keys` belong to the *default user*. Proxmox
//!   writes `user: <ciuser>` when one is set (qemu-server
//!   `Cloudinit.pm`, `cloudinit_userdata`); without it the default user is
//!   root here (cloud-init's would be the distribution's, e.g. `debian`,
//!   which these images do not have);
//! * `users` lists the accounts: `default` is the default user, a name or a
//!   mapping with `name` (and its own `ssh_authorized_keys`) another one.
//!   Without `users`, cloud-init configures `[default]`; a `users` list
//!   without `default` leaves the default user — and with it the top-level
//!   keys — out, here as in cloud-init.
//!
//! Pure: errors name the file, line and key; whether the users exist is
//! the step's business ([`super::apply`]).

use serde_yaml::Value;

use super::keys::{parse_key, AuthorizedKey};
use crate::checks::Finding;
use crate::message::{check_one_line, quoted};
use crate::metadata::merge::LoginSeed;
use crate::metadata::{MetadataError, Origin};

/// The keys one account should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserKeys {
    pub name: String,
    pub keys: Vec<AuthorizedKey>,
    /// Where the account was named (`ssh_authorized_keys`, `users[1]`).
    pub named_by: Vec<String>,
}

/// Every account the seed gives keys to or names, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    pub users: Vec<UserKeys>,
    pub warnings: Vec<Finding>,
}

impl Wanted {
    pub fn key_count(&self) -> usize {
        self.users.iter().map(|u| u.keys.len()).sum()
    }
}

fn invalid(at: &Origin, key: String, message: String) -> MetadataError {
    MetadataError::Invalid {
        path: at.path.clone(),
        line: at.line,
        key,
        message,
    }
}

/// A user name as useradd(8) takes it: letters, digits, `_`, `-`, `.`,
/// not starting with `-`, at most 32 characters.
fn check_user_name(name: &str) -> Result<(), String> {
    check_one_line(name)?;
    let ok = !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} is not a user name — use letters, digits, `_`, `-` and `.` (at most 32 characters)",
            quoted(name)
        ))
    }
}

fn key_list(value: &Value, at: &Origin, key: &str) -> Result<Vec<AuthorizedKey>, MetadataError> {
    let Value::Sequence(items) = value else {
        return Err(invalid(
            at,
            key.to_owned(),
            "expected a list of keys — write one `- ssh-ed25519 AAAA… comment` line per key".into(),
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let item_key = format!("{key}[{i}]");
            let text = item.as_str().ok_or_else(|| {
                invalid(
                    at,
                    item_key.clone(),
                    "is not a string — write the key as one line, `- ssh-ed25519 AAAA… comment`"
                        .into(),
                )
            })?;
            parse_key(text).map_err(|m| invalid(at, item_key, m))
        })
        .collect()
}

enum Entry {
    Default,
    Named {
        name: String,
        keys: Vec<AuthorizedKey>,
    },
}

fn entries(value: &Value, at: &Origin) -> Result<Vec<Entry>, MetadataError> {
    let named = |name: &str, key: String| -> Result<Entry, MetadataError> {
        if name == "default" {
            return Ok(Entry::Default);
        }
        check_user_name(name).map_err(|m| invalid(at, key, m))?;
        Ok(Entry::Named {
            name: name.to_owned(),
            keys: Vec::new(),
        })
    };
    match value {
        // cloud-init also takes `users: default, bob`.
        Value::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|n| named(n, "users".into()))
            .collect(),
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(n) => named(n.trim(), format!("users[{i}]")),
                Value::Mapping(m) => {
                    let name = m.get("name").and_then(Value::as_str).ok_or_else(|| {
                        invalid(
                            at,
                            format!("users[{i}]"),
                            "has no `name:` — give each user a name".into(),
                        )
                    })?;
                    let entry = named(name.trim(), format!("users[{i}].name"))?;
                    let keys = ["ssh_authorized_keys", "ssh-authorized-keys"]
                        .into_iter()
                        .find_map(|k| m.get(k).map(|v| (k, v)))
                        .map(|(k, v)| key_list(v, at, &format!("users[{i}].{k}")))
                        .transpose()?
                        .unwrap_or_default();
                    Ok(match entry {
                        Entry::Named { name, .. } => Entry::Named { name, keys },
                        Entry::Default => Entry::Default,
                    })
                }
                _ => Err(invalid(
                    at,
                    format!("users[{i}]"),
                    "is not `default`, a user name or a mapping with `name:` — write one of those"
                        .into(),
                )),
            })
            .collect(),
        _ => Err(invalid(
            at,
            "users".into(),
            "expected a list — write `users: [default]`, with a `- name: …` entry per further user"
                .into(),
        )),
    }
}

/// The default user's name: `user:` (a name, or a mapping with `name`),
/// else root.
fn default_user(seed: &LoginSeed) -> Result<String, MetadataError> {
    let Some((value, at)) = &seed.user else {
        return Ok("root".into());
    };
    let name = match value {
        Value::String(s) => s.trim(),
        Value::Mapping(m) => m.get("name").and_then(Value::as_str).ok_or_else(|| {
            invalid(
                at,
                "user".into(),
                "has no `name:` — write `user: <name>`".into(),
            )
        })?,
        _ => {
            return Err(invalid(
                at,
                "user".into(),
                "expected a user name — write `user: <name>`, e.g. `user: root`".into(),
            ))
        }
    };
    check_user_name(name).map_err(|m| invalid(at, "user".into(), m))?;
    Ok(name.to_owned())
}

/// Every account with the keys the seed gives it (rules in the module
/// docs). Keys are checked here, so a bad one fails the metadata step
/// before anything is changed.
pub fn wanted(seed: &LoginSeed) -> Result<Wanted, MetadataError> {
    let mut out = Wanted::default();
    let default = default_user(seed)?;
    let top = seed
        .ssh_authorized_keys
        .as_ref()
        .map(|(v, at)| key_list(v, at, "ssh_authorized_keys").map(|k| (k, at)))
        .transpose()?;
    let listed = match &seed.users {
        None => vec![Entry::Default],
        Some((v, at)) => entries(v, at)?,
    };
    let mut add = |name: &str, keys: Vec<AuthorizedKey>, by: String| {
        let i = match out.users.iter().position(|u| u.name == name) {
            Some(i) => i,
            None => {
                out.users.push(UserKeys {
                    name: name.to_owned(),
                    keys: Vec::new(),
                    named_by: Vec::new(),
                });
                out.users.len() - 1
            }
        };
        let user = &mut out.users[i];
        for k in keys {
            if !user.keys.iter().any(|have| have.blob == k.blob) {
                user.keys.push(k);
            }
        }
        user.named_by.push(by);
    };
    let default_listed = listed.iter().any(|e| matches!(e, Entry::Default));
    if let Some((keys, at)) = top {
        if default_listed {
            add(&default, keys, "ssh_authorized_keys".into());
        } else if !keys.is_empty() {
            out.warnings.push(Finding::warn(
                "ssh-keys",
                format!(
                    "{at}: ssh_authorized_keys go to the default user, but `users` does not list `default`, so cloud-init installs them for nobody — and so does firstboot-agent"
                ),
                "add `- default` to `users`, or move the keys under a user's own `ssh_authorized_keys`",
            ));
        }
    }
    for (i, e) in listed.into_iter().enumerate() {
        if let Entry::Named { name, keys } = e {
            add(&name, keys, format!("users[{i}]"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::keys::tests::{ECDSA, ED25519};
    use super::*;

    fn seed(top: Option<&str>, user: Option<&str>, users: Option<&str>) -> LoginSeed {
        let at = |line| Origin {
            path: "/seed/user-data".into(),
            line: Some(line),
        };
        let v = |t: &str| serde_yaml::from_str::<Value>(t).unwrap();
        LoginSeed {
            ssh_authorized_keys: top.map(|t| (v(t), at(3))),
            user: user.map(|t| (v(t), at(4))),
            users: users.map(|t| (v(t), at(5))),
        }
    }

    #[test]
    fn proxmox_user_data_gives_keys_to_the_default_user() {
        // Proxmox without ciuser: `ssh_authorized_keys` and `users: [default]`.
        let w = wanted(&seed(
            Some(&format!("[\"{ED25519}\"]")),
            None,
            Some("[default]"),
        ))
        .unwrap();
        assert_eq!(w.users.len(), 1);
        assert_eq!(w.users[0].name, "root");
        assert_eq!(w.users[0].keys[0].line, ED25519);
        // With `ciuser admin`: `user: admin`.
        let w = wanted(&seed(
            Some(&format!("[\"{ED25519}\"]")),
            Some("admin"),
            Some("[default]"),
        ))
        .unwrap();
        assert_eq!(w.users[0].name, "admin");
        // With `ciuser root`: no `users` at all.
        let w = wanted(&seed(Some(&format!("[\"{ED25519}\"]")), Some("root"), None)).unwrap();
        assert_eq!((w.users[0].name.as_str(), w.key_count()), ("root", 1));
    }

    #[test]
    fn named_users_get_their_own_keys_once() {
        let users = format!(
            "[default, {{name: ops, ssh_authorized_keys: [\"{ECDSA}\", \"{ECDSA}\"]}}, bob, {{name: root, ssh-authorized-keys: [\"{ED25519}\"]}}]"
        );
        let w = wanted(&seed(Some(&format!("[\"{ED25519}\"]")), None, Some(&users))).unwrap();
        let names: Vec<_> = w
            .users
            .iter()
            .map(|u| (u.name.as_str(), u.keys.len()))
            .collect();
        assert_eq!(names, vec![("root", 1), ("ops", 1), ("bob", 0)]);
        assert_eq!(w.users[0].named_by, vec!["ssh_authorized_keys", "users[3]"]);
        assert!(w.warnings.is_empty());
        let w = wanted(&seed(None, None, Some("default, bob"))).unwrap();
        assert_eq!(
            w.users.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
            vec!["bob"]
        );
    }

    #[test]
    fn keys_without_a_default_user_go_nowhere_with_a_warning() {
        let w = wanted(&seed(
            Some(&format!("[\"{ED25519}\"]")),
            None,
            Some("[bob]"),
        ))
        .unwrap();
        assert_eq!(w.key_count(), 0);
        assert!(
            w.warnings[0]
                .detail
                .contains("/seed/user-data:3: ssh_authorized_keys go to the default user"),
            "{:?}",
            w.warnings
        );
    }

    #[test]
    fn bad_entries_name_file_line_and_key() {
        for (s, expect) in [
            (seed(Some("\"ssh-ed25519 AAAA\""), None, None), "/seed/user-data:3: ssh_authorized_keys: expected a list"),
            (seed(Some("[\"ssh-ed25519 AAAA\"]"), None, None), "/seed/user-data:3: ssh_authorized_keys[0]: \"ssh-ed25519 AAAA\": the key data is too short"),
            (seed(Some("[[1]]"), None, None), "ssh_authorized_keys[0]: is not a string"),
            (seed(None, Some("\"bad name\""), None), "/seed/user-data:4: user: \"bad name\" is not a user name"),
            (seed(None, None, Some("[{groups: x}]")), "/seed/user-data:5: users[0]: has no `name:`"),
            (seed(None, None, Some("[{name: ops, ssh_authorized_keys: [\"ssh-dss AAAAB3NzaC1kc3M=\"]}]")), "users[0].ssh_authorized_keys[0]: \"ssh-dss AAAAB3NzaC1kc3M=\" is a DSA key"),
            (seed(None, None, Some("{a: 1}")), "users: expected a list"),
        ] {
            let e = wanted(&s).unwrap_err().to_string();
            assert!(e.starts_with(expect) || e.contains(expect), "{e}\nexpected {expect}");
        }
    }
}
