//! Validated scalar values: each parses from a string, says what was expected
//! when it does not, and (de)serializes as that string.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a value was rejected; the message says what a valid value looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("{0:?} is not a K3s release tag; expected e.g. v1.34.3+k3s1")]
    K3sVersion(String),
    #[error("{0:?} is not a sha256 digest; expected 64 hex digits")]
    Sha256(String),
    #[error("{0:?} is not a node role; expected `server` or `agent`")]
    Role(String),
}

/// A K3s release tag such as `v1.34.3+k3s1` or `v1.35.0-rc1+k3s1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct K3sVersion(String);

impl K3sVersion {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tag as it appears in a release URL path (`+` becomes `%2B`).
    pub fn url_encoded(&self) -> String {
        self.0.replace('+', "%2B")
    }

    /// The Kubernetes minor version, e.g. `34` for `v1.34.3+k3s1`.
    pub fn minor(&self) -> u32 {
        self.0
            .trim_start_matches('v')
            .split('.')
            .nth(1)
            .and_then(|m| m.parse().ok())
            .unwrap_or(0)
    }
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

impl FromStr for K3sVersion {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ValueError::K3sVersion(s.to_owned());
        let rest = s.strip_prefix('v').ok_or_else(bad)?;
        let (core, build) = rest.split_once("+k3s").ok_or_else(bad)?;
        if !all_digits(build) {
            return Err(bad());
        }
        let (numbers, pre) = match core.split_once('-') {
            Some((n, p)) => (n, Some(p)),
            None => (core, None),
        };
        let parts: Vec<&str> = numbers.split('.').collect();
        if parts.len() != 3 || !parts.iter().all(|p| all_digits(p)) {
            return Err(bad());
        }
        if let Some(pre) = pre {
            let ok = pre
                .strip_prefix("rc")
                .or_else(|| pre.strip_prefix("alpha"))
                .or_else(|| pre.strip_prefix("beta"))
                .is_some_and(all_digits);
            if !ok {
                return Err(bad());
            }
        }
        Ok(Self(s.to_owned()))
    }
}

impl TryFrom<String> for K3sVersion {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<K3sVersion> for String {
    fn from(v: K3sVersion) -> String {
        v.0
    }
}

impl fmt::Display for K3sVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A sha256 digest as 64 lowercase hex digits (upper case input is accepted).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256Hex(String);

impl Sha256Hex {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Build from raw digest bytes (as returned by a hasher).
    pub fn from_digest(bytes: &[u8]) -> Self {
        use fmt::Write;
        let mut s = String::with_capacity(64);
        for b in bytes {
            let _ = write!(s, "{b:02x}");
        }
        Self(s)
    }
}

impl FromStr for Sha256Hex {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.strip_prefix("sha256:").unwrap_or(s);
        if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(t.to_ascii_lowercase()))
        } else {
            Err(ValueError::Sha256(s.to_owned()))
        }
    }
}

impl TryFrom<String> for Sha256Hex {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Sha256Hex> for String {
    fn from(v: Sha256Hex) -> String {
        v.0
    }
}

impl fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What K3s runs as on the node. An HA server is a `server` with embedded etcd
/// (see [`crate::K3sDefaults::ha`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Server,
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Agent => "agent",
        }
    }

    /// The systemd unit K3s's install script uses for this role.
    pub fn unit_name(self) -> &'static str {
        match self {
            Role::Server => "k3s.service",
            Role::Agent => "k3s-agent.service",
        }
    }
}

impl FromStr for Role {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "server" => Ok(Role::Server),
            "agent" => Ok(Role::Agent),
            _ => Err(ValueError::Role(s.to_owned())),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k3s_tags() {
        for ok in ["v1.34.3+k3s1", "v1.30.0+k3s12", "v1.35.0-rc1+k3s1"] {
            assert_eq!(ok.parse::<K3sVersion>().unwrap().as_str(), ok);
        }
        for bad in [
            "1.34",
            "v1.34",
            "v1.34.3",
            "1.34.3+k3s1",
            "v1.34.3+k3s",
            "v1.34.x+k3s1",
            "v1.34.3-foo+k3s1",
            "",
        ] {
            let err = bad.parse::<K3sVersion>().unwrap_err();
            assert!(
                err.to_string().contains("expected e.g. v1.34.3+k3s1"),
                "{bad}"
            );
        }
        let v: K3sVersion = "v1.34.3+k3s1".parse().unwrap();
        assert_eq!(v.url_encoded(), "v1.34.3%2Bk3s1");
        assert_eq!(v.minor(), 34);
    }

    #[test]
    fn sha256_values() {
        let upper = "A".repeat(64);
        assert_eq!(upper.parse::<Sha256Hex>().unwrap().as_str(), "a".repeat(64));
        let prefixed = format!("sha256:{}", "0".repeat(64));
        assert!(prefixed.parse::<Sha256Hex>().is_ok());
        assert!("abc".parse::<Sha256Hex>().is_err());
        assert!("g".repeat(64).parse::<Sha256Hex>().is_err());
        assert_eq!(Sha256Hex::from_digest(&[0xab, 0x01]).as_str(), "ab01");
    }

    #[test]
    fn roles() {
        assert_eq!("server".parse::<Role>().unwrap(), Role::Server);
        assert_eq!(Role::Agent.unit_name(), "k3s-agent.service");
        let e = "worker".parse::<Role>().unwrap_err().to_string();
        assert!(e.contains("`server` or `agent`"));
    }

    #[test]
    fn serde_rejects_bad_values() {
        let e = serde_yaml::from_str::<K3sVersion>("\"1.34\"").unwrap_err();
        assert!(e.to_string().contains("not a K3s release tag"), "{e}");
    }
}
