//! serde_yaml's errors in the words of the YAML a user wrote: no Rust type
//! names (`struct K3sSpec`, `u32`, `untagged enum …`), the keys a mapping
//! takes, the line of a duplicate key, and the closest key for a typo.

use std::path::Path;

use serde::de::{self, DeserializeOwned, Visitor};

use super::locate;
use super::schema;
use super::{PlanError, PlanErrors};

/// Parse one YAML document into `T`, with errors located and in YAML words.
pub(super) fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, PlanErrors> {
    // A UTF-8 byte order mark is legal at the start of a YAML stream.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let fail = |e: &serde_yaml::Error| PlanErrors(vec![yaml_error(path, text, e)]);
    // A generic parse first: it refuses a key given twice in any mapping,
    // which deserializing a map (`sysctls`, `k3s.config`) into Rust would let
    // the last one win silently.
    let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| fail(&e))?;
    if value.is_null() {
        return Err(PlanErrors(vec![PlanError::Invalid {
            path: path.to_owned(),
            line: 1,
            column: 1,
            key: "(document)".into(),
            message: format!(
                "the file is empty; expected {} (see docs/schema.md)",
                probe::<T>().map_or_else(|| "a mapping".to_owned(), describe)
            ),
        }]));
    }
    serde_yaml::from_str(text).map_err(|e| fail(&e))
}

/// Turn serde_yaml's "key.path: message at line L column C" into our format.
fn yaml_error(path: &Path, text: &str, e: &serde_yaml::Error) -> PlanError {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((1, 1));
    let mut msg = e.to_string();
    if let Some(i) = msg.rfind(" at line ") {
        msg.truncate(i);
    }
    // serde_yaml prefixes the key path ("k3s.version: …") when it knows it.
    let (key, message) = match msg.split_once(": ") {
        Some((k, m)) if !k.contains(' ') && !k.is_empty() => (k.to_owned(), m.to_owned()),
        _ => ("(document)".to_owned(), msg.clone()),
    };
    // A key given twice is reported at the start of its mapping; point at
    // the second occurrence, which is the one to delete or rename.
    if let Some(dup) = duplicate_key(&message) {
        if let Some(d) = locate::find_duplicate(text, line, column, &dup) {
            let full = if key == "(document)" {
                dup.clone()
            } else {
                format!("{key}.{dup}")
            };
            return PlanError::Invalid {
                path: path.to_owned(),
                line: d.second.0,
                column: d.second.1,
                key: full,
                message: format!(
                    "`{dup}` is given twice (first on line {}) — keep one of them",
                    d.first.0
                ),
            };
        }
        return PlanError::Invalid {
            path: path.to_owned(),
            line,
            column,
            key,
            message: format!("`{dup}` is given twice in this mapping — keep one of them"),
        };
    }
    // A source's own check (exactly one kind) reaches serde_yaml without a
    // position; find the recipe key it is about.
    if key == "(document)" && message.starts_with("a source needs exactly one of") {
        if let Some((k, n)) = bad_source_key(text) {
            let (line, column) = locate::locate(text, &[locate::Seg::Key(k)]);
            let todo = if n == 0 {
                "add one"
            } else {
                "keep one of them"
            };
            return PlanError::Invalid {
                path: path.to_owned(),
                line,
                column,
                key: k.to_owned(),
                message: format!("{message} — {todo}"),
            };
        }
    }
    // Errors raised by a value's own validation (K3s tag, digest, role) are
    // reported by serde_yaml at the enclosing mapping; point at the value.
    let (key, line, column) = match quoted_value(&message) {
        Some(bad) => locate::find_value(text, &key, bad).unwrap_or((key, line, column)),
        None => (key, line, column),
    };
    let message = in_yaml_words(&message, &key);
    PlanError::Invalid {
        path: path.to_owned(),
        line,
        column,
        key,
        message,
    }
}

/// The recipe's `lxc` or `qcow2` whose mapping does not hold exactly one
/// source kind, and how many it holds.
fn bad_source_key(text: &str) -> Option<(&'static str, usize)> {
    // Parsed once more only to place the message; unparsable text has
    // already failed with its own error.
    let doc: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
    let kinds = ["tarball", "cloud-image", "bootstrap"];
    ["lxc", "qcow2"].into_iter().find_map(|k| {
        let m = doc.get(k)?.as_mapping()?;
        let n = m
            .keys()
            .filter(|key| key.as_str().is_some_and(|s| kinds.contains(&s)))
            .count();
        (n != 1).then_some((k, n))
    })
}

/// The key of serde_yaml's two duplicate messages: ``duplicate field `role` ``
/// (a struct) and `duplicate entry with key "a.b"` (a map).
fn duplicate_key(message: &str) -> Option<String> {
    if let Some(rest) = message.strip_prefix("duplicate field `") {
        return rest.strip_suffix('`').map(str::to_owned);
    }
    let rest = message.strip_prefix("duplicate entry with key ")?;
    match rest.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(quoted) => Some(quoted.replace("\\\"", "\"").replace("\\\\", "\\")),
        None => Some(rest.trim_matches('`').to_owned()),
    }
}

/// The leading `"…"` of a message such as `"1.34" is not a K3s release tag`.
fn quoted_value(message: &str) -> Option<&str> {
    let rest = message.strip_prefix('"')?;
    let end = rest.find("\" ")?;
    Some(&rest[..end])
}

/// Rewrite the parts of a serde message that name Rust types.
fn in_yaml_words(message: &str, key: &str) -> String {
    let mut m = message.to_owned();
    if message.starts_with("missing field") {
        m.push_str("; see docs/schema.md");
        return m;
    }
    if message.starts_with("data did not match any variant of untagged enum") {
        return "this value has none of the forms docs/schema.md lists for this key".into();
    }
    if message == "deserializing from YAML containing more than one document is not supported" {
        return "the file holds more than one YAML document (`---`) — put one per file".into();
    }
    // What was found: serde's words for YAML nodes.
    for (rust, yaml) in [
        ("invalid type: map,", "invalid type: mapping,"),
        ("invalid type: unit value,", "invalid type: an empty value,"),
        (
            "invalid type: floating point",
            "invalid type: decimal number",
        ),
    ] {
        if let Some(rest) = m.strip_prefix(rust) {
            m = format!("{yaml}{rest}");
        }
    }
    // What was expected.
    if let Some((head, expected)) = m.rsplit_once(", expected ") {
        let words = if expected == "a YAML tag starting with '!'" {
            // serde_yaml's phrase for an enum given a list or mapping.
            enum_for_key(key).map_or_else(
                || "a single word (see docs/schema.md)".to_owned(),
                |name| expected_shape(&format!("enum {name}")),
            )
        } else {
            expected_shape(expected)
        };
        m = format!("{head}, expected {words}");
    }
    if let Some(typo) = unknown_name(&m) {
        if let Some(best) = closest(typo, &listed_names(&m)) {
            m.push_str(&format!(" — did you mean `{best}`?"));
        }
    }
    m
}

/// `x` of "unknown field `x`, …" and "unknown variant `x`, …".
fn unknown_name(message: &str) -> Option<&str> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))?;
    rest.split_once('`').map(|(name, _)| name)
}

/// The back-quoted names after "expected" in an unknown-field message.
fn listed_names(message: &str) -> Vec<&str> {
    let Some((_, list)) = message.split_once("expected ") else {
        return Vec::new();
    };
    list.split('`').skip(1).step_by(2).collect()
}

/// serde's description of an expected value → YAML words.
fn expected_shape(expected: &str) -> String {
    if let Some(name) = expected.strip_prefix("struct ") {
        return shape_named(name).map_or_else(|| "a mapping (see docs/schema.md)".into(), describe);
    }
    if let Some(name) = expected.strip_prefix("enum ") {
        return shape_named(name)
            .map_or_else(|| "a single word (see docs/schema.md)".into(), describe);
    }
    let limit = |max: u64| format!("a whole number from 0 to {max}");
    match expected {
        "u8" => limit(u8::MAX.into()),
        "u16" => limit(u16::MAX.into()),
        "u32" => limit(u32::MAX.into()),
        "u64" | "usize" => "a whole number, 0 or more".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "a map" => "a mapping".into(),
        "a sequence" => "a sequence (a list of `- item` lines or `[a, b]`)".into(),
        "a borrowed string" | "a string" => "a string".into(),
        other => other.to_owned(),
    }
}

/// The enum a key takes, for serde_yaml's message that does not name it.
fn enum_for_key(key: &str) -> Option<&'static str> {
    let last = key.rsplit('.').next()?;
    let last = last.split('[').next()?;
    Some(match last {
        "role" => "Role",
        "outputs" => "OutputKind",
        "distro" => "Distro",
        "tool" => "BootstrapTool",
        _ => return None,
    })
}

/// The closest of `options` to `name`, if it is close enough to be a typo.
pub(super) fn closest<'a>(name: &str, options: &[&'a str]) -> Option<&'a str> {
    let name = name.to_ascii_lowercase().replace('_', "-");
    options
        .iter()
        .map(|o| (crate::edit_distance(&name, &o.to_ascii_lowercase()), *o))
        .filter(|(d, o)| *d <= (o.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, o)| o)
}

// ---- What serde knows about the schema's types, asked rather than copied ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// A struct's name and its keys, as written in YAML.
    Struct(&'static str, &'static [&'static str]),
    /// An enum's name and its variants, as written in YAML.
    Enum(&'static str, &'static [&'static str]),
}

/// The shapes of every type the schema deserializes as a mapping or a word.
pub(super) fn shapes() -> Vec<Shape> {
    [
        probe::<schema::Profile>(),
        probe::<schema::K3sSpec>(),
        probe::<schema::BakeSpec>(),
        probe::<schema::Artifact>(),
        probe::<schema::FileSpec>(),
        probe::<node_spec::ChecksDefaults>(),
        probe::<schema::LxcSpec>(),
        probe::<schema::Qcow2Spec>(),
        probe::<schema::Recipe>(),
        probe::<schema::SourceSpec>(),
        probe::<schema::BootstrapSpec>(),
        probe::<schema::PveamSpec>(),
        probe::<schema::LinuxcontainersSpec>(),
        probe::<schema::OutputKind>(),
        probe::<schema::Distro>(),
        probe::<schema::BootstrapTool>(),
        probe::<schema::SelinuxMode>(),
        probe::<schema::AssembleRoot>(),
        probe::<node_spec::Role>(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// `a mapping with keys name, recipe, …` or `one of server, agent`.
fn describe(shape: Shape) -> String {
    match shape {
        Shape::Struct(_, keys) => format!("a mapping with keys {}", keys.join(", ")),
        Shape::Enum(_, variants) => format!("one of {}", variants.join(", ")),
    }
}

fn shape_named(name: &str) -> Option<Shape> {
    shapes().into_iter().find(|s| match s {
        Shape::Struct(n, _) | Shape::Enum(n, _) => *n == name,
    })
}

/// Ask `T`'s `Deserialize` impl for the struct or enum it expects, by
/// handing it a deserializer that records the request and stops.
fn probe<T: DeserializeOwned>() -> Option<Shape> {
    let mut found = None;
    let _ = T::deserialize(Probe(&mut found));
    found
}

struct Probe<'a>(&'a mut Option<Shape>);

#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("probe")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Stop
    }
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        *self.0 = Some(Shape::Struct(name, fields));
        Err(Stop)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        *self.0 = Some(Shape::Enum(name, variants));
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_type_is_known_by_its_keys() {
        let names: Vec<&str> = shapes()
            .iter()
            .map(|s| match s {
                Shape::Struct(n, _) | Shape::Enum(n, _) => *n,
            })
            .collect();
        // Each type schema.rs derives Deserialize for, by its own source.
        let src = include_str!("schema.rs");
        for chunk in src.split("#[derive(").skip(1) {
            if !chunk
                .split(')')
                .next()
                .unwrap_or("")
                .contains("Deserialize")
            {
                continue;
            }
            let decl = chunk
                .lines()
                .find(|l| l.starts_with("pub struct ") || l.starts_with("pub enum "))
                .or_else(|| {
                    chunk
                        .lines()
                        .find(|l| l.starts_with("struct ") || l.starts_with("enum "))
                });
            let Some(decl) = decl else { continue };
            let name = decl
                .trim_start_matches("pub ")
                .trim_start_matches("struct ")
                .trim_start_matches("enum ")
                .split([' ', '{', '('])
                .next()
                .unwrap_or("");
            // Types with a hand-written or untagged form take no keys.
            if chunk.contains("untagged") || name == "SourceSpec" {
                continue;
            }
            assert!(names.contains(&name), "{name} missing from shapes()");
        }
        assert!(names.contains(&"SourceSpecRepr"), "{names:?}");
        assert!(names.contains(&"Role"), "{names:?}");
    }

    #[test]
    fn keys_are_as_written_in_yaml() {
        let Some(Shape::Struct(_, keys)) = shape_named("K3sSpec") else {
            panic!("no K3sSpec");
        };
        assert!(keys.contains(&"control-plane-taint"), "{keys:?}");
        assert_eq!(
            shape_named("Role"),
            Some(Shape::Enum("Role", &["server", "agent"]))
        );
    }

    #[test]
    fn closest_names() {
        assert_eq!(
            closest("debain-12", &["debian-12", "rocky-9"]),
            Some("debian-12")
        );
        assert_eq!(closest("debian12", &["debian-12"]), Some("debian-12"));
        assert_eq!(
            closest("require_network_stack", &["require-network-stack"]),
            Some("require-network-stack")
        );
        assert_eq!(closest("fedora", &["debian-12", "rocky-9"]), None);
    }

    #[test]
    fn duplicate_messages_name_the_key() {
        assert_eq!(
            duplicate_key("duplicate field `role`").as_deref(),
            Some("role")
        );
        assert_eq!(
            duplicate_key("duplicate entry with key \"a.b\"").as_deref(),
            Some("a.b")
        );
        assert_eq!(duplicate_key("unknown field `x`"), None);
    }

    #[test]
    fn rust_words_are_translated() {
        let m = in_yaml_words("invalid type: integer `-1`, expected u32", "files[0].uid");
        assert_eq!(
            m,
            "invalid type: integer `-1`, expected a whole number from 0 to 4294967295"
        );
        let m = in_yaml_words("invalid type: map, expected a sequence", "files");
        assert!(
            m.starts_with("invalid type: mapping, expected a sequence"),
            "{m}"
        );
        let m = in_yaml_words(
            "invalid type: sequence, expected a YAML tag starting with '!'",
            "k3s.role",
        );
        assert_eq!(m, "invalid type: sequence, expected one of server, agent");
    }
}
