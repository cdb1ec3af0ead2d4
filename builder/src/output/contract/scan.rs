//! The read-only pre-pass: one walk over the base tarball that checks every
//! member against the entry policy and records its type, mode and link
//! target and the text of the few small distro files, writing nothing. An uncompressed base (what a bootstrap caches) is
//! walked by seeking from header to header, so file data is never read.

use std::io::{BufReader, Read, Seek};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use tar::EntryType;

use super::tree::{is_identity_file, BaseFacts, Kind, Node};
use crate::output::tar::base::{detect_compression, open_base, read_head, Compression};
use crate::output::tar::entry_policy::{unsafe_member, EntryPolicy};
use crate::output::tar::paths::normalize;
use crate::output::tar::reader::{Member, ReadFailure, TarReader};
use crate::output::OutputError;

/// Distro files larger than this are recorded without their text.
const MAX_TEXT: u64 = 64 << 10;

/// Small buffer: most members are skipped by a seek within it.
const SEEK_BUFFER: usize = 64 << 10;

/// Gathers [`BaseFacts`] from the base tarball at `path`.
pub fn scan_base(path: &Path, cancel: &AtomicBool) -> Result<BaseFacts, OutputError> {
    let (mut file, head) = read_head(path)?;
    let label = path.display().to_string();
    match detect_compression(&head) {
        Some(Compression::None) => {
            // Back to byte 0, where the reader starts.
            file.rewind().map_err(|source| OutputError::OpenBase {
                path: path.to_owned(),
                source,
            })?;
            let reader = TarReader::new(BufReader::with_capacity(SEEK_BUFFER, file));
            scan(reader, cancel, &label, |r, n| {
                let n = i64::try_from(n).map_err(|_| std::io::ErrorKind::InvalidData)?;
                r.seek_relative(n)
            })
        }
        // Compressed data can only be read through; the reader's own skip does.
        _ => scan(TarReader::new(open_base(path)?), cancel, &label, |r, n| {
            std::io::copy(&mut r.take(n), &mut std::io::sink()).map(|_| ())
        }),
    }
}

/// Checks every member of the base tarball at `path` against the entry
/// policy, reading nothing but headers when it is uncompressed: what runs
/// before a rootfs is extracted on the build host.
pub fn check_base_entries(path: &Path, cancel: &AtomicBool) -> Result<(), OutputError> {
    scan_base(path, cancel).map(drop)
}

/// Walks every member; `skip` passes over data nobody needs.
fn scan<R: Read>(
    mut reader: TarReader<R>,
    cancel: &AtomicBool,
    label: &str,
    mut skip: impl FnMut(&mut R, u64) -> std::io::Result<()>,
) -> Result<BaseFacts, OutputError> {
    let mut facts = BaseFacts::default();
    let mut policy = EntryPolicy::default();
    let mut index = 0u64;
    let mut last = "at the start of the archive".to_owned();
    let corrupt = |entry, member: &str, f: ReadFailure| OutputError::CorruptBase {
        base: label.to_owned(),
        entry,
        member: member.to_owned(),
        reason: f.reason,
    };
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(OutputError::Interrupted);
        }
        let member = match reader.next_member() {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(f) => return Err(corrupt(index + 1, &last, f)),
        };
        if member.is_global {
            EntryPolicy::check_global(&member)
                .map_err(|refusal| unsafe_member(label, index + 1, &member, refusal))?;
            continue;
        }
        index += 1;
        policy
            .check_member(index, &member)
            .map_err(|refusal| unsafe_member(label, index, &member, refusal))?;
        let path = normalize(&member.path);
        let text = record(&mut facts, &path, &member);
        if text {
            let mut data = Vec::with_capacity(member.data_len as usize);
            let mut buf = [0u8; 8 << 10];
            loop {
                let n = reader
                    .read_data(&mut buf)
                    .map_err(|f| corrupt(index, &path, f))?;
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
            }
            data.truncate(member.data_len as usize);
            facts
                .contents
                .entry(path.clone())
                .or_insert_with(|| String::from_utf8_lossy(&data).into_owned());
        } else {
            reader
                .skip_data_with(&mut skip)
                .map_err(|f| corrupt(index, &path, f))?;
        }
        last = format!("after {path}");
    }
    reader
        .finish()
        .map_err(|f| corrupt(index + 1, "after the end-of-archive marker", f))?;
    Ok(facts)
}

/// Records one member; `true` when its text is wanted.
fn record(facts: &mut BaseFacts, path: &str, member: &Member) -> bool {
    let et = member.entry_type();
    let link = || {
        member
            .link
            .as_deref()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .unwrap_or_default()
    };
    let kind = match et {
        EntryType::Directory => Kind::Dir,
        EntryType::Symlink => Kind::Symlink(link()),
        EntryType::Link => {
            facts
                .hard_links
                .entry(path.to_owned())
                .or_insert_with(|| normalize(link().as_bytes()));
            Kind::File
        }
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Kind::File,
        _ => Kind::Other,
    };
    // `pct create` greps `tar -tv` output, which prints names as stored.
    let raw = member.path.strip_prefix(b"/").unwrap_or(&member.path);
    let raw = raw.strip_prefix(b"./").unwrap_or(raw);
    facts.sbin_listed |= match et {
        EntryType::Directory => raw == b"sbin/",
        EntryType::Symlink | EntryType::Link => raw == b"sbin",
        _ => false,
    };
    let first = !facts.nodes.contains_key(path);
    let wanted = first
        && kind == Kind::File
        && et != EntryType::Link
        && member.data_len <= MAX_TEXT
        && is_identity_file(path);
    let mode = member.header.mode().unwrap_or(0);
    facts
        .nodes
        .entry(path.to_owned())
        .or_insert(Node { kind, mode });
    wanted
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::process::Command;

    use super::*;

    fn sh(cmd: &mut Command) {
        let o = cmd.output().unwrap();
        assert!(
            o.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// A merged-usr rootfs archived by GNU tar, plain and compressed.
    fn bases(work: &Path) -> Vec<std::path::PathBuf> {
        let root = work.join("root");
        for d in ["etc", "usr/sbin", "usr/lib/systemd", "var"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        symlink("usr/sbin", root.join("sbin")).unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        symlink("/lib/systemd/systemd", root.join("usr/sbin/init")).unwrap();
        symlink("../usr/lib/os-release", root.join("etc/os-release")).unwrap();
        std::fs::write(root.join("usr/lib/os-release"), "ID=debian\n").unwrap();
        std::fs::write(root.join("etc/debian_version"), "12.5\n").unwrap();
        std::fs::write(root.join("usr/lib/systemd/systemd"), vec![7u8; 200_000]).unwrap();
        std::fs::set_permissions(
            root.join("usr/lib/systemd/systemd"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::hard_link(
            root.join("etc/debian_version"),
            root.join("var/version-link"),
        )
        .unwrap();
        // Large, so data is skipped; named like a distro file, so not captured.
        std::fs::write(root.join("etc/big-release"), vec![b'x'; 100_000]).unwrap();
        let plain = work.join("base.tar");
        sh(Command::new("tar")
            .args(["--numeric-owner", "-cf"])
            .arg(&plain)
            .arg("-C")
            .arg(&root)
            .arg("."));
        sh(Command::new("gzip").args(["-k", "-f"]).arg(&plain));
        sh(Command::new("zstd").args(["-q", "-f"]).arg(&plain));
        vec![
            plain.clone(),
            plain.with_extension("tar.gz"),
            plain.with_extension("tar.zst"),
        ]
    }

    #[test]
    fn facts_are_the_same_from_plain_and_compressed_bases() {
        let work = tempfile::tempdir().unwrap();
        let mut seen = Vec::new();
        for base in bases(work.path()) {
            let facts = scan_base(&base, &AtomicBool::new(false)).unwrap();
            assert!(facts.sbin_listed, "{base:?}");
            assert_eq!(facts.nodes["/sbin"].kind, Kind::Symlink("usr/sbin".into()));
            assert_eq!(
                facts.nodes["/usr/sbin/init"].kind,
                Kind::Symlink("/lib/systemd/systemd".into())
            );
            assert_eq!(facts.nodes["/usr/lib/systemd/systemd"].mode, 0o755);
            assert_eq!(facts.nodes["/usr/lib/systemd"].kind, Kind::Dir);
            assert_eq!(facts.contents["/usr/lib/os-release"], "ID=debian\n");
            assert_eq!(facts.contents["/etc/debian_version"], "12.5\n");
            assert!(!facts.contents.contains_key("/etc/big-release"));
            assert!(!facts.contents.contains_key("/usr/lib/systemd/systemd"));
            // GNU tar stores the second name of a hard-linked pair as the link.
            assert_eq!(facts.hard_links.len(), 1, "{:?}", facts.hard_links);
            seen.push(facts);
        }
        assert!(seen.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn a_truncated_plain_base_is_reported_even_when_data_is_seeked_over() {
        let work = tempfile::tempdir().unwrap();
        let plain = &bases(work.path())[0];
        let bytes = std::fs::read(plain).unwrap();
        // Cut inside the big file's data, which the scan seeks over.
        let at = bytes.windows(8).position(|w| w == [7u8; 8]).unwrap() + 1000;
        let cut = work.path().join("cut.tar");
        std::fs::write(&cut, &bytes[..at]).unwrap();
        let err = scan_base(&cut, &AtomicBool::new(false)).unwrap_err();
        assert!(matches!(err, OutputError::CorruptBase { .. }), "{err}");
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn cancel_and_not_a_tarball() {
        let work = tempfile::tempdir().unwrap();
        let plain = &bases(work.path())[0];
        let err = scan_base(plain, &AtomicBool::new(true)).unwrap_err();
        assert!(matches!(err, OutputError::Interrupted));
        let txt = work.path().join("notes.txt");
        std::fs::write(&txt, "hello").unwrap();
        assert!(matches!(
            scan_base(&txt, &AtomicBool::new(false)),
            Err(OutputError::NotTar { .. })
        ));
    }
}
