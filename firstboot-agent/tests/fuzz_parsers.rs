//! Fuzz targets for what the agent reads from the NoCloud seed, which anyone
//! who can attach a drive or edit a VM's cloud-init settings controls:
//! user-data (cloud-config, Jinja header, MIME multipart) and its merge over
//! the baked defaults, vendor-data layered under user-data and the SSH keys
//! in them, meta-data, the cidata volume label, the kernel command line,
//! and the whole lookup (`metadata::load`) over a fake root.
//!
//! bolero runs each for a fraction of a second under `cargo test`;
//! `scripts/fuzz.sh [SECONDS]` runs them for longer. A failure prints the
//! input (shrunk) and its BOLERO_RANDOM_SEED; the fix gets a plain unit test
//! next to the parser. Seeds: tests/fixtures/fuzz (gen.sh there).

#![allow(clippy::unwrap_used)]

#[path = "../../tests/fuzz/alloc_guard.rs"]
mod alloc_guard;
#[path = "../../tests/fuzz/mutate.rs"]
mod mutate;
#[path = "../../tests/fuzz/scratch.rs"]
mod scratch;

use std::path::Path;

use bolero::generator::TypeGenerator;
use firstboot_agent::metadata::nocloud::{is_cidata, parse_cmdline, read_label, seed_dir_from};
use firstboot_agent::metadata::userdata::{parse_meta_data, parse_user_data, parse_vendor_data};
use firstboot_agent::metadata::{
    load, merge::merge, MetaData, Metadata, MetadataError, VendorContent, VendorData,
};
use firstboot_agent::rootfs::Root;
use firstboot_agent::system::FakeSystem;
use mutate::Mutation;
use node_spec::BakedDefaults;
use scratch::scratch_dir;

#[global_allocator]
static ALLOC: alloc_guard::Counting = alloc_guard::Counting;

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!("fixtures/fuzz/", $name)).as_slice()
    };
}

const USER_DATA: [&[u8]; 8] = [
    fixture!("user-data.cloud-config"),
    fixture!("user-data.jinja"),
    fixture!("user-data.multipart"),
    b"#!/bin/sh\necho hi\n",
    b"#cloud-config\n",
    b"",
    b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/cloud-config\n\
      Content-Transfer-Encoding: base64\n\nI2Nsb3VkLWNvbmZpZwo=\n--b--\n",
    b"#cloud-config\nk3s:\n  role: server\n  cluster-init: true\n  token: pw\n",
];
const META_DATA: [&[u8]; 3] = [
    fixture!("meta-data.yaml"),
    fixture!("meta-data.json"),
    b"instance-id: 42\n",
];
const VOLUME_HEADS: [&[u8]; 3] = [
    fixture!("cidata.iso.head"),
    fixture!("cidata.vfat.head"),
    fixture!("cidata.fat32.head"),
];

/// Lines that steer the parsers into their branches: headers, MIME
/// boundaries, every `k3s:` key with good and bad values, Jinja, YAML
/// aliases that multiply, deep nesting, tabs, tags, documents, BOMs.
const SNIPPETS: [&str; 63] = [
    "ssh_authorized_keys:",
    "  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPOPtOnFImdUeF5WsjLaNpBgqIUaDrkKM8ROv3r9AJd2 a@b",
    "  - from=\"10.0.0.0/8\",no-pty ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQ== x",
    "users: [default, {name: ops, ssh_authorized_keys: [ssh-ed25519 AAAA]}]",
    "users:\n  - default\n  - name: root",
    "user: admin",
    "vendor_data: {enabled: false}",
    "#cloud-config",
    "## template: jinja",
    "#!/bin/sh",
    "#cloud-config-archive",
    "#include https://x",
    "Content-Type: multipart/mixed; boundary=\"b\"",
    "Content-Type: text/cloud-config; charset=us-ascii",
    "Content-Type: text/x-shellscript",
    "Content-Transfer-Encoding: base64",
    "Content-Transfer-Encoding: 8bit",
    "MIME-Version: 1.0",
    " folded; boundary=b",
    "--b",
    "--b--",
    "--===XYZ==",
    "--===XYZ==--",
    "",
    "k3s:",
    "  role: agent",
    "  role: server",
    "  server: https://10.0.0.1:6443",
    "  server: https://[fd00::1]:99999",
    "  token: K10aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa::server:secret",
    "  token: K10abc::",
    "  token-file: /etc/k3s-token",
    "  cluster-init: true",
    "  node-name: n1",
    "  node-label: [zone=a, bad]",
    "  node-taint: [k=v:NoSchedule]",
    "  control-plane-taint: true",
    "  check-names: [a.lan]",
    "  check-endpoints: [\"a.lan:6443\", \"[::1]:1\", nope]",
    "  network-timeout-secs: 0",
    "  ready-timeout-secs: 18446744073709551615",
    "  mirror: file:///srv/mirror/",
    "  config:",
    "    node-ip: 10.0.0.5",
    "    server: https://x",
    "hostname: node-1",
    "fqdn: node-1.example.lan",
    "hostname: {{ v1.local_hostname }}",
    "{% if true %}",
    "a: &a [x, x, x, x, x, x, x, x, x, x]",
    "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]",
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]",
    "d: [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]",
    "x: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "\tk3s: {}",
    "- item",
    "? complex",
    "key: !!binary aGk=",
    "---",
    "...",
    "instance-id: iid-1",
    "local-hostname: h-1",
    "{\"instance-id\": {\"a\": 1}}",
];

#[derive(Debug, Clone, TypeGenerator)]
enum LineEdit {
    Insert { at: u16, snippet: u8, indent: u8 },
    Replace { at: u16, snippet: u8 },
    Delete { at: u16 },
    Duplicate { at: u16, times: u8 },
    Append { at: u16, text: String },
}

/// A text seed with line edits, then (sometimes) byte mutations, which
/// also produce invalid UTF-8, BOMs and CRs.
#[derive(Debug, Clone, TypeGenerator)]
struct TextInput {
    seed: u8,
    lines: Vec<LineEdit>,
    bytes: Vec<Mutation>,
    crlf: bool,
}

impl TextInput {
    fn build(&self, seeds: &[&[u8]]) -> Vec<u8> {
        let seed = seeds[usize::from(self.seed) % seeds.len()];
        let text = String::from_utf8_lossy(seed);
        let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
        let snippet = |i: &u8| SNIPPETS[usize::from(*i) % SNIPPETS.len()];
        for e in self.lines.iter().take(12) {
            let at = |i: &u16| usize::from(*i) % (lines.len() + 1);
            match e {
                LineEdit::Insert {
                    at: i,
                    snippet: s,
                    indent,
                } => {
                    let line = format!("{}{}", " ".repeat(usize::from(indent % 8)), snippet(s));
                    let i = at(i);
                    lines.insert(i, line);
                }
                LineEdit::Replace { at: i, snippet: s } => {
                    let i = at(i).min(lines.len().saturating_sub(1));
                    if let Some(l) = lines.get_mut(i) {
                        *l = snippet(s).to_owned();
                    }
                }
                LineEdit::Delete { at: i } => {
                    let i = at(i);
                    if i < lines.len() {
                        lines.remove(i);
                    }
                }
                LineEdit::Duplicate { at: i, times } => {
                    let i = at(i);
                    if let Some(l) = lines.get(i).cloned() {
                        for _ in 0..(times % 16) {
                            lines.insert(i, l.clone());
                        }
                    }
                }
                LineEdit::Append { at: i, text } => {
                    let i = at(i);
                    if let Some(l) = lines.get_mut(i) {
                        l.push_str(text);
                    }
                }
            }
        }
        let mut bytes = lines
            .join(if self.crlf { "\r\n" } else { "\n" })
            .into_bytes();
        let anchors = mutate::anchors(&bytes);
        for m in self.bytes.iter().take(3) {
            mutate::apply(&mut bytes, &anchors, m);
        }
        bytes
    }
}

/// Heap a metadata parser may hold: fixed costs plus a multiple of the input
/// (serde_yaml builds a tree, and may replay aliases up to its limit).
fn heap_bound(input_len: usize) -> usize {
    (4 << 20) + 256 * input_len
}

/// Whether [`check_error`] bounds the message length.
#[derive(Clone, Copy, PartialEq)]
enum Message {
    Short,
    /// merge.rs quotes values whole in its messages (a host name, a label, a
    /// URL; each up to the 1 MiB file limit). Bound these too once it
    /// shortens them as the parser's messages are.
    AnyLength,
}

/// Error lines must point into the file (1-based; one past the end for
/// "ends early"), and parser messages stay short.
fn check_error(e: &MetadataError, bytes: &[u8], message: Message) {
    let text_lines = line_count(bytes);
    let line = match e {
        MetadataError::Parse { line, .. } | MetadataError::Unsupported { line, .. } => Some(*line),
        MetadataError::Invalid { line, .. } => *line,
        _ => None,
    };
    // Messages quote the input only in short pieces (they go to the journal).
    let shown = e.to_string();
    if message == Message::Short {
        assert!(
            shown.len() <= 2048,
            "{} byte message: {shown:.300}",
            shown.len()
        );
    }
    if let Some(line) = line {
        assert!(
            (1..=text_lines + 1).contains(&line),
            "error at line {line} of a {text_lines}-line file: {e}\ninput: {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

/// Lines as the parsers count them: LF, CRLF, a lone CR, NEL, LS and PS
/// each end one.
fn line_count(bytes: &[u8]) -> usize {
    let text = String::from_utf8_lossy(bytes).replace("\r\n", "\n");
    text.split(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}'])
        .count()
}

fn defaults(i: u8) -> BakedDefaults {
    let extra = [
        "",
        "  ha: true\n",
        "  config:\n    server: https://10.0.0.1:6443\n    node-label: [a=b]\n    cluster-init: true\n",
    ];
    BakedDefaults::from_yaml(&format!(
        "schema: 1\nprofile: fuzz\nk3s:\n  version: v1.34.3+k3s1\n  role: server\n{}",
        extra[usize::from(i) % extra.len()]
    ))
    .unwrap()
}

#[test]
fn fuzz_user_data_and_merge() {
    bolero::check!()
        .with_type::<(TextInput, u8)>()
        .with_iterations(mutate::CI_ITERATIONS)
        .with_test_time(mutate::CI_TIME)
        .for_each(|(input, which_defaults)| {
            let bytes = input.build(&USER_DATA);
            let (parsed, peak) =
                alloc_guard::peak_during(|| parse_user_data("/seed/user-data", &bytes));
            assert!(
                peak <= heap_bound(bytes.len()),
                "parse_user_data held {peak} bytes for {} bytes",
                bytes.len()
            );
            let user = match parsed {
                Ok(u) => u,
                Err(e) => return check_error(&e, &bytes, Message::Short),
            };
            let md = Metadata {
                source: "fuzz".into(),
                user_data_path: "/seed/user-data".into(),
                meta: MetaData {
                    instance_id: "iid".into(),
                    local_hostname: Some("meta-host".into()),
                },
                user,
                vendor: None,
            };
            match merge(&defaults(*which_defaults), &md, "/seed/user-data") {
                Ok(cfg) => {
                    // The token never shows in Debug output (it ends up in logs).
                    if let Some(t) = &cfg.token {
                        let shown = format!("{cfg:?}");
                        assert!(t.expose().len() < 8 || !shown.contains(t.expose()));
                    }
                }
                Err(e) => check_error(&e, &bytes, Message::AnyLength),
            }
        });
}

#[test]
fn fuzz_meta_data() {
    bolero::check!()
        .with_type::<TextInput>()
        .with_iterations(mutate::CI_ITERATIONS)
        .with_test_time(mutate::CI_TIME)
        .for_each(|input| {
            let bytes = input.build(&META_DATA);
            let (parsed, peak) =
                alloc_guard::peak_during(|| parse_meta_data("/seed/meta-data", &bytes));
            assert!(peak <= heap_bound(bytes.len()), "held {peak} bytes");
            match parsed {
                Ok(md) => assert!(!md.instance_id.is_empty()),
                Err(e) => check_error(&e, &bytes, Message::Short),
            }
        });
}

#[test]
fn fuzz_volume_label() {
    let anchors: Vec<Vec<usize>> = VOLUME_HEADS.iter().map(|h| mutate::anchors(h)).collect();
    bolero::check!()
        .with_type::<(u8, Vec<Mutation>)>()
        .with_iterations(mutate::CI_ITERATIONS)
        .with_test_time(mutate::CI_TIME)
        .for_each(|(seed, mutations)| {
            let i = usize::from(*seed) % VOLUME_HEADS.len();
            let head = mutate::mutated(VOLUME_HEADS[i], &anchors[i], mutations);
            if let Some((_, label)) = read_label(&head) {
                // ISO volume ids are 32 bytes, FAT labels 11; lossy UTF-8
                // may widen each byte to 3.
                assert!(label.len() <= 3 * 32, "{label:?}");
                let _ = is_cidata(&label);
            }
        });
}

#[derive(Debug, Clone, TypeGenerator)]
enum CmdValue {
    Known(u8),
    Text(String),
}

impl CmdValue {
    fn text(&self) -> &str {
        const KNOWN: [&str; 8] = [
            "file:///srv/seed/",
            "file://seed-host/srv/seed/",
            "file://",
            "/var/lib/cloud/seed/nocloud/",
            "seed/",
            "http://10.0.0.1/seed/",
            "iid-1",
            "node-1",
        ];
        match self {
            CmdValue::Known(i) => KNOWN[usize::from(*i) % KNOWN.len()],
            CmdValue::Text(t) => t,
        }
    }
}

#[derive(Debug, Clone, TypeGenerator)]
enum CmdWord {
    Ds(u8),
    Field(u8, CmdValue),
    Quote(u8),
    Text(String),
}

#[test]
fn fuzz_kernel_cmdline() {
    const DS: [&str; 5] = [
        "ds=nocloud",
        "ds=nocloud-net",
        "ds=",
        "ds=ec2",
        "ds=NoCloud",
    ];
    const KEYS: [&str; 8] = [
        "s",
        "seedfrom",
        "i",
        "instance-id",
        "h",
        "local-hostname",
        "",
        "x",
    ];
    const QUOTES: [&str; 4] = ["'", "\"", ";", " "];
    bolero::check!()
        .with_type::<Vec<CmdWord>>()
        .with_iterations(mutate::CI_ITERATIONS)
        .with_test_time(mutate::CI_TIME)
        .for_each(|words| {
            let mut line = String::from("BOOT_IMAGE=/vmlinuz root=/dev/vda1 ");
            for w in words {
                match w {
                    CmdWord::Ds(i) => line.push_str(DS[usize::from(*i) % DS.len()]),
                    CmdWord::Field(k, v) => {
                        line.push(';');
                        line.push_str(KEYS[usize::from(*k) % KEYS.len()]);
                        line.push('=');
                        line.push_str(v.text());
                    }
                    CmdWord::Quote(i) => line.push_str(QUOTES[usize::from(*i) % QUOTES.len()]),
                    CmdWord::Text(t) => line.push_str(t),
                }
            }
            let Some(seed) = parse_cmdline(&line) else {
                return;
            };
            if let Some(from) = &seed.seed_from {
                if let Ok(dir) = seed_dir_from(from) {
                    // Shown as a node path and joined under the root.
                    assert!(dir.starts_with('/'), "{from:?} gave seed dir {dir:?}");
                }
            }
        });
}

/// Where the seed comes from in [`fuzz_load`].
#[derive(Debug, Clone, TypeGenerator)]
enum SeedPlace {
    SeedDir(u8),
    CmdlineDir,
    Volume { head: u8, mutations: Vec<Mutation> },
}

fn write(root: &Root, path: &str, bytes: &[u8]) {
    let p = root.path(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

#[test]
fn fuzz_load() {
    const SEED_DIRS: [&str; 2] = [
        "/var/lib/cloud/seed/nocloud",
        "/var/lib/cloud/seed/nocloud-net",
    ];
    let anchors: Vec<Vec<usize>> = VOLUME_HEADS.iter().map(|h| mutate::anchors(h)).collect();
    bolero::check!()
        .with_type::<(SeedPlace, TextInput, TextInput, Vec<CmdWord>)>()
        .with_iterations(mutate::CI_ITERATIONS / 4)
        .with_test_time(mutate::CI_TIME)
        .for_each(|(place, meta, user, cmd)| {
            let dir = scratch_dir();
            let root = Root::new(dir.path());
            let meta = meta.build(&META_DATA);
            let user = user.build(&USER_DATA);
            let mut cmdline = String::from("quiet");
            for w in cmd.iter().take(4) {
                if let CmdWord::Field(k, v) = w {
                    let key = ["i", "h"][usize::from(k % 2)];
                    cmdline.push_str(&format!(" ds=nocloud;{key}={}", v.text()));
                }
            }
            let mut system = FakeSystem::new();
            match place {
                SeedPlace::SeedDir(i) => {
                    let d = SEED_DIRS[usize::from(*i) % 2];
                    write(&root, &format!("{d}/meta-data"), &meta);
                    write(&root, &format!("{d}/user-data"), &user);
                }
                SeedPlace::CmdlineDir => {
                    cmdline.push_str(" ds=nocloud;s=file:///srv/seed/");
                    write(&root, "/srv/seed/meta-data", &meta);
                    write(&root, "/srv/seed/user-data", &user);
                }
                SeedPlace::Volume { head, mutations } => {
                    let i = usize::from(*head) % VOLUME_HEADS.len();
                    let bytes = mutate::mutated(VOLUME_HEADS[i], &anchors[i], mutations);
                    write(&root, "/dev/sr0", &bytes);
                    std::fs::create_dir_all(root.path("/sys/class/block/sr0")).unwrap();
                    let dev = std::fs::canonicalize(root.path("/dev/sr0")).unwrap();
                    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                    system.volume_files.insert(
                        dev,
                        vec![
                            ("meta-data".into(), text(&meta)),
                            ("user-data".into(), text(&user)),
                        ],
                    );
                }
            }
            write(&root, "/proc/cmdline", cmdline.as_bytes());
            if let Ok(md) = load(&root, &system) {
                let _ = merge(&defaults(0), &md, "/seed/user-data");
            }
            // A volume is never left mounted on the scratch directory.
            assert!(!Path::new(&root.path("/run/firstboot-agent/cidata")).exists());
        });
}

/// vendor-data layered under the user-data Proxmox generates, merged, and
/// the SSH keys of the result read as the ssh-keys step reads them.
#[test]
fn fuzz_vendor_data_under_user_data() {
    const PROXMOX_USER_DATA: &[u8] = b"#cloud-config\nhostname: n1\nmanage_etc_hosts: true\nfqdn: n1\nchpasswd:\n  expire: False\nusers:\n  - default\npackage_upgrade: true\n";
    let user = parse_user_data("/seed/user-data", PROXMOX_USER_DATA).unwrap();
    bolero::check!()
        .with_type::<(TextInput, u8)>()
        .with_iterations(mutate::CI_ITERATIONS)
        .with_test_time(mutate::CI_TIME)
        .for_each(|(input, which_defaults)| {
            let bytes = input.build(&USER_DATA);
            let vendor = match parse_vendor_data("/seed/vendor-data", &bytes) {
                Ok(v) => v,
                Err(e) => return check_error(&e, &bytes, Message::Short),
            };
            let md = Metadata {
                source: "fuzz".into(),
                user_data_path: "/seed/user-data".into(),
                meta: MetaData {
                    instance_id: "iid".into(),
                    local_hostname: None,
                },
                user: user.clone(),
                vendor: Some(VendorData {
                    path: "/seed/vendor-data".into(),
                    content: VendorContent::Parsed(Box::new(vendor)),
                }),
            };
            match merge(&defaults(*which_defaults), &md, "/seed/user-data") {
                Ok(cfg) => {
                    if let Some(t) = &cfg.token {
                        let shown = format!("{cfg:?}");
                        assert!(t.expose().len() < 8 || !shown.contains(t.expose()));
                    }
                    if let Err(e) = firstboot_agent::ssh::seed::wanted(&cfg.login) {
                        check_error(&e, &bytes, Message::Short);
                    }
                }
                Err(e) => {
                    if e.to_string().starts_with("/seed/vendor-data") {
                        check_error(&e, &bytes, Message::AnyLength);
                    }
                }
            }
        });
}

/// One `ssh_authorized_keys` entry: any text is refused or accepted with a
/// short message, never a panic.
#[test]
fn fuzz_ssh_key_entries() {
    const KEYS: [&str; 4] = [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPOPtOnFImdUeF5WsjLaNpBgqIUaDrkKM8ROv3r9AJd2 admin@laptop",
        "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBJ45pw6UbK9ATIK4hGoNep13smYJSnnW1rRNmR8CjGpRGh1d8yvUzjmlthvz++EbzPogbHVlaC1KXP/+GUAphMA= ops",
        "from=\"10.0.0.0/8\",command=\"echo \\\"x\\\"\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPOPtOnFImdUeF5WsjLaNpBgqIUaDrkKM8ROv3r9AJd2",
        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQ==",
    ];
    bolero::check!()
        .with_type::<(u8, Vec<Mutation>)>()
        .with_iterations(mutate::CI_ITERATIONS)
        .with_test_time(mutate::CI_TIME)
        .for_each(|(seed, mutations)| {
            let mut bytes = KEYS[usize::from(*seed) % KEYS.len()].as_bytes().to_vec();
            let anchors = mutate::anchors(&bytes);
            for m in mutations.iter().take(4) {
                mutate::apply(&mut bytes, &anchors, m);
            }
            let text = String::from_utf8_lossy(&bytes);
            match firstboot_agent::ssh::keys::parse_key(&text) {
                Ok(k) => {
                    assert!(!k.line.contains('\n'), "{k:?}");
                    let merged = firstboot_agent::ssh::keys::merge_authorized_keys(
                        "",
                        std::slice::from_ref(&k),
                    );
                    let again = merged.content.unwrap_or_default();
                    assert_eq!(
                        firstboot_agent::ssh::keys::merge_authorized_keys(&again, &[k]).content,
                        None
                    );
                }
                Err(e) => assert!(e.len() < 1024, "{} byte message: {e:.200}", e.len()),
            }
        });
}

/// The seeds themselves parse: a target whose seed is rejected up front
/// would fuzz only the first check.
#[test]
fn seeds_are_valid() {
    for head in VOLUME_HEADS {
        let (_, label) = read_label(head).unwrap();
        assert!(is_cidata(&label), "{label:?}");
    }
    for (i, seed) in USER_DATA.iter().enumerate() {
        let parsed = parse_user_data("/seed/user-data", seed);
        assert!(parsed.is_ok(), "seed {i}: {parsed:?}");
    }
    for seed in META_DATA {
        parse_meta_data("/seed/meta-data", seed).unwrap();
    }
}
