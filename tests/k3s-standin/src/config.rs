//! Reading the configuration the way K3s does.
//!
//! K3s turns `/etc/rancher/k3s/config.yaml` and then each
//! `config.yaml.d/*.yaml|*.yml` (lexical order) into flags placed *before*
//! the command-line flags:
//! - across files, a later key replaces an earlier one, lists included;
//!   `key+:` appends to the earlier value instead;
//! - command-line flags come after the files: a scalar flag overrides the
//!   file's value, a list flag (`node-label`, `tls-san`, …, or any flag
//!   repeated on the command line) appends to it;
//! - env vars (`K3S_TOKEN`, `K3S_URL`, …) only apply to flags set neither
//!   in a file nor on the command line.
//!
//! The config file is `K3S_CONFIG_FILE`, else `--config`/`-c`, else the
//! default; a missing file is not an error.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::paths::Root;

pub const DEFAULT_CONFIG: &str = "/etc/rancher/k3s/config.yaml";

/// The same roles the agent installs; shared so the two cannot drift apart.
pub use node_spec::Role;

/// Env vars K3s binds to flags: (var, flag, only for this role).
const ENV_FLAGS: &[(&str, &str, Option<Role>)] = &[
    ("K3S_TOKEN", "token", None),
    ("K3S_TOKEN_FILE", "token-file", None),
    ("K3S_URL", "server", None),
    ("K3S_NODE_NAME", "node-name", None),
    ("K3S_SELINUX", "selinux", None),
    ("K3S_LB_SERVER_PORT", "lb-server-port", None),
    ("K3S_AGENT_TOKEN", "agent-token", Some(Role::Server)),
    (
        "K3S_AGENT_TOKEN_FILE",
        "agent-token-file",
        Some(Role::Server),
    ),
    (
        "K3S_KUBECONFIG_OUTPUT",
        "write-kubeconfig",
        Some(Role::Server),
    ),
    (
        "K3S_KUBECONFIG_MODE",
        "write-kubeconfig-mode",
        Some(Role::Server),
    ),
    ("K3S_CLUSTER_INIT", "cluster-init", Some(Role::Server)),
    ("K3S_CLUSTER_RESET", "cluster-reset", Some(Role::Server)),
    (
        "K3S_DATASTORE_ENDPOINT",
        "datastore-endpoint",
        Some(Role::Server),
    ),
];

/// One-letter aliases of K3s flags.
fn long_name(name: &str) -> &str {
    match name {
        "t" => "token",
        "s" => "server",
        "c" => "config",
        "o" => "write-kubeconfig",
        "d" => "data-dir",
        other => other,
    }
}

/// K3s string-slice flags: always lists, and command-line values append.
pub fn is_list_flag(name: &str) -> bool {
    matches!(
        name,
        "node-label"
            | "node-taint"
            | "tls-san"
            | "disable"
            | "node-ip"
            | "node-external-ip"
            | "node-internal-dns"
            | "node-external-dns"
            | "cluster-cidr"
            | "service-cidr"
            | "cluster-dns"
            | "kubelet-arg"
            | "kube-apiserver-arg"
            | "kube-controller-manager-arg"
            | "kube-scheduler-arg"
            | "kube-proxy-arg"
            | "kube-cloud-controller-manager-arg"
            | "etcd-arg"
            | "flannel-external-ip-arg"
    )
}

/// K3s boolean flags (take no separate value on the command line).
pub fn is_bool_flag(name: &str) -> bool {
    name.starts_with("disable-")
        || matches!(
            name,
            "cluster-init"
                | "cluster-reset"
                | "debug"
                | "secrets-encryption"
                | "protect-kernel-defaults"
                | "selinux"
                | "rootless"
                | "docker"
                | "prefer-bundled-bin"
                | "flannel-ipv6-masq"
                | "flannel-external-ip"
                | "embedded-registry"
                | "supervisor-metrics"
                | "etcd-expose-metrics"
                | "etcd-disable-snapshots"
                | "etcd-snapshot-compress"
                | "etcd-s3"
                | "etcd-s3-insecure"
                | "etcd-s3-skip-ssl-verify"
                | "with-node-id"
                | "enable-pprof"
        )
}

/// Flags whose repeats on the command line replace (the last one wins)
/// rather than make a list.
fn is_scalar_flag(name: &str) -> bool {
    is_bool_flag(name)
        || matches!(
            name,
            "token"
                | "token-file"
                | "agent-token"
                | "agent-token-file"
                | "server"
                | "node-name"
                | "data-dir"
                | "write-kubeconfig"
                | "write-kubeconfig-mode"
                | "write-kubeconfig-group"
                | "bind-address"
                | "https-listen-port"
                | "advertise-address"
                | "advertise-port"
                | "lb-server-port"
                | "flannel-backend"
                | "cluster-domain"
                | "datastore-endpoint"
                | "default-local-storage-path"
                | "log"
                | "v"
                | "vmodule"
        )
}

/// The command line of `k3s server|agent`, split into K3s flags and the
/// stand-in's own options.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommandLine {
    /// `--root DIR` (hidden): run against DIR instead of `/`.
    pub root: Option<String>,
    /// `--config`/`-c`.
    pub config_file: Option<String>,
    /// Flags in order, names without dashes, aliases resolved.
    pub flags: Vec<(String, Value)>,
    pub help: bool,
    pub version: bool,
}

/// Parse `--flag value`, `--flag=value`, `-f value` and bare boolean flags.
pub fn parse_command_line(args: &[String]) -> Result<CommandLine, String> {
    let mut cl = CommandLine::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        let Some(stripped) = arg
            .strip_prefix("--")
            .or_else(|| arg.strip_prefix('-'))
            .filter(|s| !s.is_empty())
        else {
            return Err(format!(
                "unexpected argument {arg:?}: flags look like --name value or --name=value"
            ));
        };
        let (name, inline) = match stripped.split_once('=') {
            Some((n, v)) => (long_name(n).to_owned(), Some(v.to_owned())),
            None => (long_name(stripped).to_owned(), None),
        };
        match name.as_str() {
            "help" | "h" => {
                cl.help = true;
                continue;
            }
            "version" => {
                cl.version = true;
                continue;
            }
            _ => {}
        }
        let value = match inline {
            Some(v) if is_bool_flag(&name) => Value::Bool(
                parse_bool(&v)
                    .ok_or_else(|| format!("invalid boolean value {v:?} for --{name}"))?,
            ),
            Some(v) => Value::String(v),
            None if is_bool_flag(&name) => Value::Bool(true),
            None => match args.get(i) {
                Some(next) if !next.starts_with('-') || next == "-" => {
                    i += 1;
                    Value::String(next.clone())
                }
                // An unknown flag without a value: taken as a boolean.
                _ => Value::Bool(true),
            },
        };
        match name.as_str() {
            "root" => cl.root = Some(as_string(&value)),
            "config" => cl.config_file = Some(as_string(&value)),
            _ => cl.flags.push((name, value)),
        }
    }
    Ok(cl)
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" => Some(true),
        "0" | "f" | "false" => Some(false),
        _ => None,
    }
}

/// A value as K3s turns it into a flag argument.
pub fn as_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Array(items) => items.iter().map(as_string).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn to_list(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items,
        Value::Null => Vec::new(),
        other => vec![other],
    }
}

/// The merged configuration and where each key came from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Merged {
    pub values: BTreeMap<String, Value>,
    /// `file:<path>`, `flag`, or `env:<VAR>` per key, in merge order.
    pub sources: BTreeMap<String, Vec<String>>,
    /// The config files read, in order (paths as K3s sees them).
    pub files: Vec<String>,
    /// Things a real K3s would read differently or complain about.
    pub warnings: Vec<String>,
}

impl Merged {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.values.get(key)
    }

    /// A scalar as a string; empty strings count as unset.
    pub fn string(&self, key: &str) -> Option<String> {
        let s = match self.values.get(key)? {
            Value::Array(items) => as_string(items.last()?),
            v => as_string(v),
        };
        (!s.is_empty()).then_some(s)
    }

    pub fn bool(&self, key: &str) -> bool {
        match self.values.get(key) {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => parse_bool(s).unwrap_or(false),
            _ => false,
        }
    }

    pub fn list(&self, key: &str) -> Vec<String> {
        self.values
            .get(key)
            .cloned()
            .map(to_list)
            .unwrap_or_default()
            .iter()
            .map(as_string)
            .collect()
    }
}

/// The config file and its drop-ins that exist, in K3s's order.
pub fn config_files(root: &Root, config: &str) -> Result<Vec<String>, String> {
    let mut files = Vec::new();
    if root.path(config).is_file() {
        files.push(config.to_owned());
    }
    let dot_d = format!("{config}.d");
    match std::fs::read_dir(root.path(&dot_d)) {
        Ok(entries) => {
            let mut names: Vec<String> = entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().map(|t| !t.is_dir()).unwrap_or(false))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    let l = n.to_ascii_lowercase();
                    l.ends_with(".yaml") || l.ends_with(".yml")
                })
                .collect();
            names.sort();
            files.extend(names.into_iter().map(|n| format!("{dot_d}/{n}")));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("reading {dot_d}: {e}")),
    }
    Ok(files)
}

fn yaml_key(k: &serde_yaml::Value) -> String {
    match k {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        serde_yaml::Value::Number(n) => n.to_string(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

/// Whether `key` is written in `text` as a plain scalar like `0644`, which
/// YAML 1.1 (K3s's parser) reads as an octal integer.
fn unquoted_leading_zero(text: &str, key: &str) -> bool {
    text.lines().any(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.trim_start().strip_prefix(':'))
            .map(|v| v.split('#').next().unwrap_or_default().trim())
            .is_some_and(|v| {
                v.len() > 1 && v.starts_with('0') && v.bytes().all(|b| b.is_ascii_digit())
            })
    })
}

/// Merge config files, command-line flags and env for `role` (see the
/// module docs). `env` looks up an environment variable.
pub fn merge(
    root: &Root,
    role: Role,
    cl: &CommandLine,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Merged, String> {
    let mut m = Merged::default();
    let config = env("K3S_CONFIG_FILE")
        .filter(|s| !s.is_empty())
        .or_else(|| cl.config_file.clone())
        .unwrap_or_else(|| DEFAULT_CONFIG.to_owned());

    for file in config_files(root, &config)? {
        let text = std::fs::read_to_string(root.path(&file))
            .map_err(|e| format!("reading {file}: {e}"))?;
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&text).map_err(|e| format!("parsing {file}: {e}"))?;
        let map = match doc {
            serde_yaml::Value::Null => serde_yaml::Mapping::new(),
            serde_yaml::Value::Mapping(map) => map,
            _ => {
                return Err(format!(
                    "parsing {file}: expected a mapping of flag names to values"
                ))
            }
        };
        for (k, v) in map {
            let raw = yaml_key(&k);
            let append = raw.ends_with('+');
            let key = long_name(raw.trim_end_matches('+')).to_owned();
            let value =
                serde_json::to_value(&v).map_err(|e| format!("parsing {file}: key {key}: {e}"))?;
            if key == "write-kubeconfig-mode" && unquoted_leading_zero(&text, &raw) {
                m.warnings.push(format!(
                    "{file}: write-kubeconfig-mode is an unquoted number with a leading 0; K3s reads YAML 1.1, \
                     where 0644 is octal (= 420), and then parses \"420\" as octal (mode 0420): quote it, e.g. \"0644\""
                ));
            }
            let source = format!("file:{file}");
            match m.values.remove(&key) {
                Some(old) if append => {
                    let mut items = to_list(old);
                    items.extend(to_list(value));
                    m.values.insert(key.clone(), Value::Array(items));
                    m.sources.entry(key).or_default().push(source);
                }
                _ => {
                    m.values.insert(key.clone(), value);
                    m.sources.insert(key, vec![source]);
                }
            }
        }
        m.files.push(file);
    }

    let mut order: Vec<&str> = Vec::new();
    let mut by_key: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for (k, v) in &cl.flags {
        if !by_key.contains_key(k.as_str()) {
            order.push(k);
        }
        by_key.entry(k).or_default().push(v.clone());
    }
    for key in order {
        let vals = by_key.remove(key).unwrap_or_default();
        let existing = m.values.remove(key);
        let listy = is_list_flag(key)
            || (!is_scalar_flag(key)
                && (vals.len() > 1 || matches!(existing, Some(Value::Array(_)))));
        if listy {
            let mut items = existing.map(to_list).unwrap_or_default();
            items.extend(vals);
            m.values.insert(key.to_owned(), Value::Array(items));
            m.sources
                .entry(key.to_owned())
                .or_default()
                .push("flag".into());
        } else {
            m.values.insert(
                key.to_owned(),
                vals.into_iter().last().unwrap_or(Value::Null),
            );
            m.sources.insert(key.to_owned(), vec!["flag".into()]);
        }
    }

    for (var, key, only) in ENV_FLAGS {
        if only.is_some_and(|r| r != role) || m.values.contains_key(*key) {
            continue;
        }
        if let Some(val) = env(var).filter(|v| !v.is_empty()) {
            let value = if is_bool_flag(key) {
                Value::Bool(parse_bool(&val).unwrap_or(false))
            } else {
                Value::String(val)
            };
            m.values.insert((*key).to_owned(), value);
            m.sources
                .insert((*key).to_owned(), vec![format!("env:{var}")]);
        }
    }

    for (key, v) in m.values.iter_mut() {
        if is_list_flag(key) && !v.is_array() {
            *v = Value::Array(to_list(v.take()));
        }
    }
    Ok(m)
}

/// `write-kubeconfig-mode` as K3s parses it: the value as a string, read
/// as octal (`"0644"`, `"644"` and the YAML number `644` all give 0o644).
pub fn parse_mode(v: &Value) -> Result<u32, String> {
    let s = as_string(v);
    let mode = u32::from_str_radix(s.trim(), 8).map_err(|_| {
        format!("invalid write-kubeconfig-mode {s:?}: expected octal like \"0644\"")
    })?;
    if mode > 0o7777 {
        return Err(format!(
            "invalid write-kubeconfig-mode {s:?}: more than 0o7777"
        ));
    }
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| (*s).to_owned()).collect()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn command_line_forms() {
        let cl = parse_command_line(&args(&[
            "--node-label",
            "a=1",
            "--node-label=b=2",
            "--cluster-init",
            "-t",
            "tok",
            "--root",
            "/tmp/r",
            "-c=/x.yaml",
            "--disable-network-policy",
            "--write-kubeconfig-mode",
            "0644",
            "--debug=false",
        ]))
        .unwrap();
        assert_eq!(cl.root.as_deref(), Some("/tmp/r"));
        assert_eq!(cl.config_file.as_deref(), Some("/x.yaml"));
        assert_eq!(
            cl.flags,
            vec![
                ("node-label".into(), json!("a=1")),
                ("node-label".into(), json!("b=2")),
                ("cluster-init".into(), json!(true)),
                ("token".into(), json!("tok")),
                ("disable-network-policy".into(), json!(true)),
                ("write-kubeconfig-mode".into(), json!("0644")),
                ("debug".into(), json!(false)),
            ]
        );
        assert!(parse_command_line(&args(&["positional"])).is_err());
        assert!(parse_command_line(&args(&["--help"])).unwrap().help);
    }

    fn write(root: &Root, p: &str, text: &str) {
        let path = root.path(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn files_drop_ins_flags_and_env() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::new(d.path());
        write(&root, DEFAULT_CONFIG, "node-label: [zone=a]\ntls-san: [one]\nnode-name: base\nfoo-list: [x]\nwrite-kubeconfig-mode: \"0644\"\n");
        write(
            &root,
            "/etc/rancher/k3s/config.yaml.d/20-b.yaml",
            "tls-san: [three]\nnode-label+: [rack=2]\n",
        );
        write(
            &root,
            "/etc/rancher/k3s/config.yaml.d/10-a.yml",
            "tls-san: [two]\nnode-name: from-dropin\n",
        );
        write(
            &root,
            "/etc/rancher/k3s/config.yaml.d/30-c.txt",
            "node-name: ignored\n",
        );
        std::fs::create_dir_all(root.path("/etc/rancher/k3s/config.yaml.d/40-dir.yaml")).unwrap();
        let cl = parse_command_line(&args(&[
            "--node-label",
            "cli=1",
            "--node-name",
            "from-flag",
            "--foo-list",
            "y",
            "--kubelet-arg=max-pods=50",
        ]))
        .unwrap();
        let env = |k: &str| match k {
            "K3S_TOKEN" => Some("envtok".to_owned()),
            "K3S_NODE_NAME" => Some("from-env".to_owned()),
            "K3S_KUBECONFIG_MODE" => Some("0600".to_owned()),
            _ => None,
        };
        let m = merge(&root, Role::Server, &cl, &env).unwrap();
        assert_eq!(
            m.files,
            vec![
                DEFAULT_CONFIG.to_owned(),
                "/etc/rancher/k3s/config.yaml.d/10-a.yml".to_owned(),
                "/etc/rancher/k3s/config.yaml.d/20-b.yaml".to_owned(),
            ]
        );
        // Later file replaces a list; `+` appends; flags append to lists.
        assert_eq!(m.values["tls-san"], json!(["three"]));
        assert_eq!(m.values["node-label"], json!(["zone=a", "rack=2", "cli=1"]));
        assert_eq!(m.values["foo-list"], json!(["x", "y"]));
        assert_eq!(m.values["kubelet-arg"], json!(["max-pods=50"]));
        // Flag beats file beats env for scalars.
        assert_eq!(m.string("node-name").as_deref(), Some("from-flag"));
        assert_eq!(m.sources["node-name"], vec!["flag".to_owned()]);
        assert_eq!(m.string("write-kubeconfig-mode").as_deref(), Some("0644"));
        assert_eq!(m.string("token").as_deref(), Some("envtok"));
        assert_eq!(m.sources["token"], vec!["env:K3S_TOKEN".to_owned()]);
        assert_eq!(
            m.sources["node-label"],
            vec![
                format!("file:{DEFAULT_CONFIG}"),
                "file:/etc/rancher/k3s/config.yaml.d/20-b.yaml".to_owned(),
                "flag".to_owned()
            ]
        );
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    }

    #[test]
    fn env_for_other_role_ignored_and_config_env() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::new(d.path());
        write(&root, "/custom.yaml", "server: https://s:6443\n");
        write(&root, DEFAULT_CONFIG, "server: https://default:6443\n");
        let env = |k: &str| match k {
            "K3S_CONFIG_FILE" => Some("/custom.yaml".to_owned()),
            "K3S_KUBECONFIG_MODE" => Some("0644".to_owned()),
            "K3S_URL" => Some("https://env:6443".to_owned()),
            _ => None,
        };
        let m = merge(&root, Role::Agent, &CommandLine::default(), &env).unwrap();
        assert_eq!(m.files, vec!["/custom.yaml".to_owned()]);
        assert_eq!(m.string("server").as_deref(), Some("https://s:6443"));
        assert!(m.get("write-kubeconfig-mode").is_none());
    }

    #[test]
    fn bad_yaml_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::new(d.path());
        write(&root, DEFAULT_CONFIG, "- just\n- a list\n");
        let e = merge(&root, Role::Server, &CommandLine::default(), &no_env).unwrap_err();
        assert!(e.contains("expected a mapping"), "{e}");
        write(&root, DEFAULT_CONFIG, "a: [unclosed\n");
        assert!(merge(&root, Role::Server, &CommandLine::default(), &no_env).is_err());
        write(&root, DEFAULT_CONFIG, "");
        assert!(merge(&root, Role::Server, &CommandLine::default(), &no_env)
            .unwrap()
            .values
            .is_empty());
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode(&json!("0644")).unwrap(), 0o644);
        assert_eq!(parse_mode(&json!("600")).unwrap(), 0o600);
        assert_eq!(parse_mode(&json!(644)).unwrap(), 0o644);
        assert!(parse_mode(&json!("0999")).is_err());
        assert!(parse_mode(&json!("rw")).is_err());
    }

    #[test]
    fn unquoted_mode_warns() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::new(d.path());
        write(&root, DEFAULT_CONFIG, "write-kubeconfig-mode: 0644\n");
        let m = merge(&root, Role::Server, &CommandLine::default(), &no_env).unwrap();
        assert_eq!(m.warnings.len(), 1, "{:?}", m.warnings);
        // serde_yaml (YAML 1.2) keeps 0644 as written; the stand-in reads it as 0o644.
        assert_eq!(
            parse_mode(m.get("write-kubeconfig-mode").unwrap()).unwrap(),
            0o644
        );
        for quiet in [
            "write-kubeconfig-mode: \"0644\"\n",
            "write-kubeconfig-mode: 644\n",
            "write-kubeconfig-mode: '0600' # x\n",
        ] {
            write(&root, DEFAULT_CONFIG, quiet);
            let m = merge(&root, Role::Server, &CommandLine::default(), &no_env).unwrap();
            assert!(m.warnings.is_empty(), "{quiet}: {:?}", m.warnings);
        }
    }
}
