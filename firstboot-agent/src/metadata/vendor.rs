//! vendor-data under user-data, layered as cloud-init layers them.
//!
//! What cloud-init does, and so what this module does:
//! * "User-supplied cloud-config is merged over cloud-config from
//!   vendor-data" (docs.cloud-init.io, explanation/vendordata). The merge is
//!   cloud-init's default `dict(no_replace)+list()+str()`
//!   (cloudinit/helpers.py `ConfigMerger`, which lists user-data before
//!   vendor-data, and `util.mergemanydict`: the earlier source wins):
//!   mappings are merged key by key, recursively; for any other value —
//!   lists included — user-data's replaces vendor-data's, lists are not
//!   appended.
//! * The user can switch vendor-data off with `vendor_data: {enabled:
//!   false}` in user-data (docs.cloud-init.io, module cc_scripts_vendor,
//!   example 3). cloud-init reads the switch from the configuration
//!   *without* vendor-data (cloudinit/stages.py `_consume_vendordata`,
//!   `include_vendor=False`), treats `enabled` with `util.is_true` (true,
//!   "true", "1", "on", "yes") and a `vendor_data` that is not a mapping as
//!   off.
//!
//! One deliberate difference, for the agent's own `k3s:` mapping only: a
//! key user-data leaves empty (`token:` with no value) does not hide
//! vendor-data's value. A single file reads such a key as unset, and so
//! does the layering.

use std::collections::BTreeMap;
use std::fmt;

use serde_yaml::{Mapping, Value};

use super::userdata::{K3sMeta, UserData};
use super::MetadataError;

/// The vendor-data file of a seed.
#[derive(Debug, Clone, PartialEq)]
pub struct VendorData {
    /// The file as messages name it.
    pub path: String,
    pub content: VendorContent,
}

#[derive(Debug, Clone, PartialEq)]
pub enum VendorContent {
    /// Nothing but white space: what Proxmox writes when no
    /// `cicustom vendor=` is set.
    Empty,
    /// Switched off by user-data (`by` is `file:line`); not parsed at all,
    /// as cloud-init does not read it either.
    Disabled {
        by: String,
    },
    Parsed(Box<UserData>),
}

/// How vendor-data took part, for the log and result.json.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum VendorUse {
    /// The seed has no vendor-data file.
    #[default]
    Absent,
    Empty {
        path: String,
    },
    Disabled {
        path: String,
        by: String,
    },
    Merged {
        path: String,
    },
}

impl VendorUse {
    /// One line for result.json and the metadata step; `None` without a
    /// vendor-data file.
    pub fn describe(&self) -> Option<String> {
        match self {
            VendorUse::Absent => None,
            VendorUse::Empty { path } => Some(format!("{path} is empty")),
            VendorUse::Disabled { path, by } => Some(format!(
                "{path} not read: vendor_data is switched off at {by}"
            )),
            VendorUse::Merged { path } => Some(format!("{path} merged under user-data")),
        }
    }
}

/// Where a setting was written: a seed file and, when known, the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub path: String,
    pub line: Option<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}", self.path),
            None => f.write_str(&self.path),
        }
    }
}

/// Which file each setting came from. Keys are `hostname`, `fqdn`,
/// `ssh_authorized_keys`, `user`, `users`, `vendor_data`, `k3s.<key>`,
/// `k3s.config.<key>` and `k3s.proxy.<key>`; anything not listed is
/// user-data's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins {
    user_data: String,
    keys: BTreeMap<String, Origin>,
}

impl Origins {
    /// Every key of user-data, from its lines.
    pub fn of_user_data(path: &str, user: &UserData) -> Self {
        let mut o = Origins {
            user_data: path.to_owned(),
            keys: BTreeMap::new(),
        };
        o.add_file(path, user, |_| true);
        o
    }

    fn add_file(&mut self, path: &str, data: &UserData, wanted: impl Fn(&str) -> bool) {
        let at = |line: Option<usize>| Origin {
            path: path.to_owned(),
            line,
        };
        for key in TOP_KEYS {
            if is_set(data, key) && wanted(key) {
                self.keys
                    .insert(key.to_owned(), at(data.lines.get(key).copied()));
            }
        }
        if let Some(Value::Mapping(m)) = &data.k3s_raw {
            for (k, v) in m {
                let Some(k) = k.as_str() else { continue };
                let name = format!("k3s.{k}");
                if v.is_null() {
                    continue;
                }
                if wanted(&name) {
                    let line = data.k3s_lines.get(k).or(data.lines.get("k3s")).copied();
                    self.keys.insert(name, at(line));
                }
                if let (Value::Mapping(sub), "config" | "proxy") = (v, k) {
                    for ck in sub.keys().filter_map(Value::as_str) {
                        let name = format!("k3s.{k}.{ck}");
                        if wanted(&name) {
                            self.keys.insert(name, at(data.k3s_lines.get(k).copied()));
                        }
                    }
                }
            }
        }
    }

    /// Where `key` came from (user-data when not recorded).
    pub fn of(&self, key: &str) -> Origin {
        self.keys.get(key).cloned().unwrap_or_else(|| Origin {
            path: self.user_data.clone(),
            line: None,
        })
    }

    /// `k3s.<key>` (and `k3s.config.<key>`) → `file:line`, for result.json.
    pub fn k3s_settings(&self) -> BTreeMap<String, String> {
        self.keys
            .iter()
            .filter(|(k, _)| k.starts_with("k3s."))
            .map(|(k, o)| (k.clone(), o.to_string()))
            .collect()
    }
}

/// The top-level keys the agent reads.
const TOP_KEYS: [&str; 6] = [
    "hostname",
    "fqdn",
    "ssh_authorized_keys",
    "user",
    "users",
    "vendor_data",
];

fn is_set(data: &UserData, key: &str) -> bool {
    match key {
        "hostname" => data.hostname.is_some(),
        "fqdn" => data.fqdn.is_some(),
        "ssh_authorized_keys" => data.ssh_authorized_keys.is_some(),
        "user" => data.user.is_some(),
        "users" => data.users.is_some(),
        "vendor_data" => data.vendor_data.is_some(),
        _ => false,
    }
}

/// `Some(file:line)` of the `vendor_data` setting in user-data when it
/// switches vendor-data off (rules in the module docs).
pub fn disabled_by(user: &UserData, user_path: &str) -> Option<String> {
    let setting = user.vendor_data.as_ref()?;
    let on = match setting {
        Value::Mapping(m) => m.get("enabled").is_none_or(is_true),
        _ => false,
    };
    (!on).then(|| {
        Origin {
            path: user_path.to_owned(),
            line: user.lines.get("vendor_data").copied(),
        }
        .to_string()
    })
}

/// cloud-init's `util.is_true`.
fn is_true(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.to_string() == "1",
        Value::String(s) => matches!(
            s.trim().to_ascii_lowercase().as_str(),
            "true" | "1" | "on" | "yes"
        ),
        _ => false,
    }
}

/// `over` layered on `under`: mappings key by key and recursively, any
/// other value from `over` (cloud-init's default merge, module docs). A
/// null in `over` leaves `under`'s value.
pub fn layered_value(over: &Value, under: &Value) -> Value {
    match (over, under) {
        (Value::Mapping(o), Value::Mapping(u)) => {
            let mut out = Mapping::new();
            for (k, v) in o {
                let merged = match u.get(k) {
                    Some(uv) if v.is_null() => uv.clone(),
                    Some(uv) => layered_value(v, uv),
                    None => v.clone(),
                };
                out.insert(k.clone(), merged);
            }
            for (k, v) in u {
                if !o.contains_key(k) {
                    out.insert(k.clone(), v.clone());
                }
            }
            Value::Mapping(out)
        }
        (Value::Null, u) => u.clone(),
        (o, _) => o.clone(),
    }
}

/// user-data and vendor-data as one: the effective settings, where each
/// came from, and how vendor-data took part.
#[derive(Debug, Clone, PartialEq)]
pub struct Layered {
    pub user: UserData,
    pub origins: Origins,
    pub vendor: VendorUse,
}

/// Layer `vendor` under `user` (rules in the module docs).
pub fn layer(
    user: &UserData,
    user_path: &str,
    vendor: Option<&VendorData>,
) -> Result<Layered, MetadataError> {
    let mut origins = Origins::of_user_data(user_path, user);
    let mut out = user.clone();
    let vendor_use = match vendor {
        None => VendorUse::Absent,
        Some(v) => match &v.content {
            VendorContent::Empty => VendorUse::Empty {
                path: v.path.clone(),
            },
            VendorContent::Disabled { by } => VendorUse::Disabled {
                path: v.path.clone(),
                by: by.clone(),
            },
            VendorContent::Parsed(vd) => {
                // Keys user-data sets are user-data's; the rest vendor-data's.
                let user_keys = origins.clone();
                origins.add_file(&v.path, vd, |k| !user_keys.keys.contains_key(k));
                out.hostname = user.hostname.clone().or_else(|| vd.hostname.clone());
                out.fqdn = user.fqdn.clone().or_else(|| vd.fqdn.clone());
                out.ssh_authorized_keys = user
                    .ssh_authorized_keys
                    .clone()
                    .or_else(|| vd.ssh_authorized_keys.clone());
                out.user = user.user.clone().or_else(|| vd.user.clone());
                out.users = user.users.clone().or_else(|| vd.users.clone());
                out.ignored.extend(vd.ignored.iter().cloned());
                out.k3s_raw = match (&user.k3s_raw, &vd.k3s_raw) {
                    (Some(u), Some(v)) => Some(layered_value(u, v)),
                    (u, v) => u.clone().or_else(|| v.clone()),
                };
                out.k3s = out
                    .k3s_raw
                    .clone()
                    .filter(|v| !v.is_null())
                    .map(serde_yaml::from_value::<K3sMeta>)
                    .transpose()
                    .map_err(|e| MetadataError::Invalid {
                        path: format!("{user_path} over {}", v.path),
                        line: None,
                        key: "k3s".into(),
                        message: crate::message::plain_serde(&e.to_string()),
                    })?;
                VendorUse::Merged {
                    path: v.path.clone(),
                }
            }
        },
    };
    Ok(Layered {
        user: out,
        origins,
        vendor: vendor_use,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::userdata::{parse_user_data, parse_vendor_data};

    const UD: &str = "/seed/user-data";
    const VD: &str = "/seed/vendor-data";

    fn layered(user: &str, vendor: &str) -> Layered {
        let u = parse_user_data(UD, user.as_bytes()).unwrap();
        let v = VendorData {
            path: VD.into(),
            content: VendorContent::Parsed(Box::new(
                parse_vendor_data(VD, vendor.as_bytes()).unwrap(),
            )),
        };
        layer(&u, UD, Some(&v)).unwrap()
    }

    #[test]
    fn user_data_wins_key_by_key_and_lists_are_replaced() {
        let l = layered(
            "#cloud-config\nhostname: u1\nk3s:\n  role: agent\n  node-label: [zone=a]\n  config:\n    disable: [traefik]\n",
            "#cloud-config\nhostname: v1\nfqdn: v1.lan\nk3s:\n  role: server\n  server: https://10.0.0.1:6443\n  token: vendor-secret\n  node-label: [tier=v, zone=v]\n  config:\n    disable: [servicelb]\n    tls-san: [k8s.lan]\n",
        );
        let k = l.user.k3s.clone().unwrap();
        assert_eq!(k.role, Some(node_spec::Role::Agent));
        assert_eq!(k.server.as_deref(), Some("https://10.0.0.1:6443"));
        assert_eq!(k.token.as_deref(), Some("vendor-secret"));
        assert_eq!(k.node_label, vec!["zone=a"], "lists are replaced");
        assert_eq!(
            k.config["disable"],
            serde_yaml::from_str::<Value>("[traefik]").unwrap()
        );
        assert!(k.config.contains_key("tls-san"), "config merged key by key");
        assert_eq!(l.user.hostname.as_deref(), Some("u1"));
        assert_eq!(l.user.fqdn.as_deref(), Some("v1.lan"));
        assert_eq!(l.origins.of("k3s.role").to_string(), format!("{UD}:4"));
        assert_eq!(l.origins.of("k3s.token").to_string(), format!("{VD}:7"));
        assert_eq!(
            l.origins.of("k3s.config.tls-san").to_string(),
            format!("{VD}:9")
        );
        assert_eq!(
            l.origins.of("k3s.config.disable").to_string(),
            format!("{UD}:6")
        );
        assert_eq!(l.origins.of("fqdn").to_string(), format!("{VD}:3"));
        assert_eq!(l.vendor, VendorUse::Merged { path: VD.into() });
        let from = l.origins.k3s_settings();
        assert_eq!(from["k3s.server"], format!("{VD}:6"));
        assert_eq!(from["k3s.node-label"], format!("{UD}:5"));
    }

    #[test]
    fn an_empty_user_data_key_leaves_vendor_datas_value() {
        let l = layered(
            "#cloud-config\nk3s:\n  token:\n  node-name: w1\n",
            "#cloud-config\nk3s:\n  token: from-vendor\n",
        );
        let k = l.user.k3s.unwrap();
        assert_eq!(k.token.as_deref(), Some("from-vendor"));
        assert_eq!(k.node_name.as_deref(), Some("w1"));
        assert_eq!(l.origins.of("k3s.token").path, VD);
    }

    #[test]
    fn vendor_data_alone_and_user_data_alone() {
        let l = layered(
            "#cloud-config\nhostname: h\n",
            "#cloud-config\nk3s:\n  role: agent\n",
        );
        assert_eq!(l.user.k3s.unwrap().role, Some(node_spec::Role::Agent));
        let l = layered("#cloud-config\nk3s:\n  role: agent\n", "");
        assert_eq!(l.user.k3s.unwrap().role, Some(node_spec::Role::Agent));
        let l = layered(
            "#cloud-config\n",
            "#cloud-config\nssh_authorized_keys: [ssh-ed25519 AAAA v]\nusers: [default]\n",
        );
        assert!(l.user.ssh_authorized_keys.is_some() && l.user.users.is_some());
        assert_eq!(l.origins.of("ssh_authorized_keys").path, VD);
    }

    #[test]
    fn the_vendor_data_switch() {
        let ud = |text: &str| parse_user_data(UD, text.as_bytes()).unwrap();
        for off in [
            "vendor_data: {enabled: false}",
            "vendor_data: {enabled: \"no\"}",
            "vendor_data: {enabled: 0}",
            "vendor_data: {enabled: }",
            "vendor_data: false",
            "vendor_data: [x]",
        ] {
            let u = ud(&format!("#cloud-config\nhostname: h\n{off}\n"));
            assert_eq!(disabled_by(&u, UD), Some(format!("{UD}:3")), "{off}");
        }
        for on in [
            "",
            "vendor_data: {enabled: true}",
            "vendor_data: {enabled: \"yes\"}",
            "vendor_data: {enabled: 1}",
            "vendor_data: {prefix: []}",
        ] {
            let u = ud(&format!("#cloud-config\n{on}\n"));
            assert_eq!(disabled_by(&u, UD), None, "{on}");
        }
    }

    #[test]
    fn mappings_merge_recursively_and_other_values_are_replaced() {
        let v = |t: &str| serde_yaml::from_str::<Value>(t).unwrap();
        assert_eq!(
            layered_value(
                &v("{a: {x: 1}, l: [1], s: u}"),
                &v("{a: {x: 2, y: 3}, l: [2, 3], s: v, t: w}")
            ),
            v("{a: {x: 1, y: 3}, l: [1], s: u, t: w}")
        );
        assert_eq!(layered_value(&v("[1]"), &v("{a: 1}")), v("[1]"));
        assert_eq!(layered_value(&v("{a: 1}"), &v("x")), v("{a: 1}"));
    }
}
