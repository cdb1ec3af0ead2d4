//! Tokens, the fake cluster CA and the kubeconfig, in K3s's formats.
//!
//! K3s's "secure" token is `K10<sha256 of the cluster CA cert>::<user>:<secret>`;
//! a server given a plain token `abc` writes `K10<hash>::server:abc` to
//! `node-token`. The CA here is random bytes in PEM armour: it has the
//! right shape and a stable hash, and is not a certificate.

use crate::sha256_hex;

/// A token as given to K3s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The full string as given (plain or secure format).
    pub raw: String,
    /// The part that authenticates (after `::user:` in the secure format).
    pub secret: String,
    /// The CA hash of a secure-format token.
    pub ca_hash: Option<String>,
}

impl Token {
    pub fn parse(raw: &str) -> Token {
        let raw = raw.trim().to_owned();
        if let Some(rest) = raw.strip_prefix("K10") {
            if let Some((hash, cred)) = rest.split_once("::") {
                if let Some((_user, secret)) = cred.split_once(':') {
                    if !hash.is_empty() && !secret.is_empty() {
                        return Token {
                            secret: secret.to_owned(),
                            ca_hash: Some(hash.to_owned()),
                            raw,
                        };
                    }
                }
            }
        }
        Token {
            secret: raw.clone(),
            ca_hash: None,
            raw,
        }
    }

    /// The `node-token` line a server with CA hash `ca_hash` writes.
    pub fn node_token(&self, ca_hash: &str) -> String {
        format!("K10{ca_hash}::server:{}", self.secret)
    }
}

/// A new random token (K3s generates a random password when none is set).
pub fn generate() -> std::io::Result<String> {
    Ok(hex::encode(crate::random_bytes(16)?))
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A PEM-armoured block of `label` around `body`, 64 columns.
pub fn pem(label: &str, body: &[u8]) -> String {
    let b64 = base64(body);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A fake CA "certificate": random bytes that say what they are.
pub fn fake_ca() -> std::io::Result<String> {
    let mut body = b"k3s-standin fake cluster CA, not a certificate: ".to_vec();
    body.extend(crate::random_bytes(64)?);
    Ok(pem("CERTIFICATE", &body))
}

/// The hash K3s puts after `K10`: sha256 of the CA file's bytes.
pub fn ca_hash(ca_pem: &str) -> String {
    sha256_hex(ca_pem.as_bytes())
}

/// An admin kubeconfig like the one K3s writes to `/etc/rancher/k3s/k3s.yaml`.
pub fn kubeconfig(server_url: &str, ca_pem: &str, client_cert: &str, client_key: &str) -> String {
    format!(
        "apiVersion: v1\n\
         clusters:\n\
         - cluster:\n    certificate-authority-data: {}\n    server: {server_url}\n  name: default\n\
         contexts:\n\
         - context:\n    cluster: default\n    user: default\n  name: default\n\
         current-context: default\n\
         kind: Config\n\
         preferences: {{}}\n\
         users:\n\
         - name: default\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        base64(ca_pem.as_bytes()),
        base64(client_cert.as_bytes()),
        base64(client_key.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn token_formats() {
        let plain = Token::parse(" abc\n");
        assert_eq!(
            (
                plain.raw.as_str(),
                plain.secret.as_str(),
                plain.ca_hash.as_deref()
            ),
            ("abc", "abc", None)
        );
        let h = "a".repeat(64);
        let full = Token::parse(&format!("K10{h}::server:s3cret"));
        assert_eq!(full.secret, "s3cret");
        assert_eq!(full.ca_hash.as_deref(), Some(h.as_str()));
        assert_eq!(plain.node_token(&h), format!("K10{h}::server:abc"));
        assert_eq!(Token::parse("K10only").secret, "K10only");
    }

    #[test]
    fn kubeconfig_is_yaml() {
        let ca = fake_ca().unwrap();
        assert_eq!(ca_hash(&ca).len(), 64);
        let k = kubeconfig("https://127.0.0.1:6443", &ca, "c", "k");
        let v: serde_yaml::Value = serde_yaml::from_str(&k).unwrap();
        assert_eq!(
            v["clusters"][0]["cluster"]["server"].as_str(),
            Some("https://127.0.0.1:6443")
        );
        assert_eq!(v["current-context"].as_str(), Some("default"));
        assert_eq!(
            v["users"][0]["user"]["client-key-data"].as_str(),
            Some("aw==")
        );
    }
}
