//! What a base tarball may hold, member by member: one policy for every
//! place that reads a base (the template contract's pre-pass, the LXC
//! rewrite, the check before a disk is assembled from a rootfs).
//!
//! A template is unpacked by more than `pct create`'s careful GNU tar:
//! LXD, scripts, busybox or Python `tarfile`, and imgbuild itself when it
//! extracts a rootfs as root on the build host. So a member is refused when
//! any of them could be made to write outside the rootfs:
//! - its name escapes: absolute, a `..` component, NUL or empty — in the
//!   effective name and in every other name recorded for it (its own
//!   header's, a GNU long name, PAX `path`), since tools disagree about
//!   which record wins; the same for link targets. A PAX global header that
//!   renames or resizes the members after it is refused outright;
//! - it lies below a symlink that an earlier member created (`./etc/evil ->
//!   /etc`, then `./etc/evil/x`): a path that was ever a symlink stays one for
//!   this check, because `tar --skip-old-files` (pct) keeps the first member.
//!   Real bases never store members below their links: the 248 MB mmdebstrap
//!   bookworm rootfs has 1,361 symlinks (259 absolute, `./lib -> usr/lib` and
//!   friends) and no member below any of them;
//! - it is a hard link whose target is absolute, has `..`, or is not an
//!   earlier member that a link can name (a file, device or FIFO — not a
//!   directory, and not a symlink, which tools that link with
//!   `follow_symlinks` would resolve on the host);
//! - it is a symlink whose relative target climbs above the root from the
//!   link's own directory (`./x -> ../../../etc/passwd`): inside a rootfs such
//!   a link is a packaging mistake at best. Absolute targets
//!   (`/usr/share/zoneinfo/UTC`) are normal and allowed: the policy refuses
//!   writing *through* links, so where a link points cannot matter;
//! - it is a character or block device outside `/dev`. `pct create`
//!   excludes `./dev/*`, so device nodes there are never created (and the
//!   mmdebstrap base's eight in `./dev` are fine); one elsewhere would be
//!   created in the container's rootfs, and on the build host when a disk is
//!   assembled. FIFOs grant nothing and pass anywhere.
//!
//! Pure: the caller feeds members in archive order; nothing is read here.

use std::collections::HashMap;

use tar::EntryType;

use super::reader::Member;
use crate::layer::Op;
use crate::output::OutputError;

/// What to do about a refused base, appended to most refusals.
const RECREATE: &str = "a rootfs tarball names every member below ./ and never below a symlink; \
     re-create it from the rootfs directory (`tar --numeric-owner -C ROOTFS -cf base.tar .`) \
     or use a base from a source you trust";

/// One member as the policy sees it.
#[derive(Debug, Clone)]
pub(crate) struct MemberView<'a> {
    /// The effective name (PAX `path`, GNU long name, or the header's).
    pub name: &'a [u8],
    pub kind: EntryType,
    /// The effective link target of a symlink or hard link.
    pub link: Option<&'a [u8]>,
    /// The other names and links recorded for the member (its own header's,
    /// a GNU long name, PAX `path`) that differ from the effective ones.
    pub other_names: Vec<&'a [u8]>,
    pub other_links: Vec<&'a [u8]>,
}

impl<'a> MemberView<'a> {
    /// A member with nothing stored apart from its effective names.
    #[cfg(test)]
    pub fn new(name: &'a [u8], kind: EntryType, link: Option<&'a [u8]>) -> Self {
        MemberView {
            name,
            kind,
            link,
            other_names: Vec::new(),
            other_links: Vec::new(),
        }
    }
}

/// Why a member is refused, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Dir,
    Symlink,
    /// What a hard link may name: a file, device, FIFO or another hard link.
    Linkable,
}

#[derive(Debug)]
struct SymlinkSeen {
    index: u64,
    name: Vec<u8>,
    target: Vec<u8>,
}

/// The policy's memory of the archive so far.
#[derive(Debug, Default)]
pub(crate) struct EntryPolicy {
    /// Normalized path → what the latest member there is.
    seen: HashMap<Vec<u8>, Seen>,
    /// Every path that was a symlink at any point, with its first link.
    symlinks: HashMap<Vec<u8>, SymlinkSeen>,
}

impl EntryPolicy {
    /// Checks member number `index` (1-based, as errors count them) and
    /// records it.
    pub fn check(&mut self, index: u64, m: &MemberView<'_>) -> Result<(), Refusal> {
        let path = normalize_name(m.name).map_err(|why| Refusal(format!("{why}; {RECREATE}")))?;
        for other in &m.other_names {
            if let Some(escape) = escapes(other) {
                return Err(Refusal(format!(
                    "another name recorded for it (in its own header, a GNU long-name or a PAX \
                     record), \"{}\", {}: a tool that prefers that record would write there; \
                     {RECREATE}",
                    show(other),
                    escape.what()
                )));
            }
        }
        if path == b"/" && m.kind != EntryType::Directory {
            return Err(Refusal(format!(
                "it stores the rootfs root itself as {}, which must be a directory; {RECREATE}",
                describe(m.kind)
            )));
        }
        self.check_parents(&path)?;
        match m.kind {
            EntryType::Symlink => self.check_symlink(&path, m)?,
            EntryType::Link => self.check_hard_link(&path, m)?,
            EntryType::Char | EntryType::Block if !path.starts_with(b"/dev/") => {
                return Err(Refusal(format!(
                    "it is {} outside /dev: `pct create` leaves out only ./dev/*, so the node \
                     would be created in the container's rootfs (and on the build host when a \
                     disk is assembled from it), giving whoever reaches it that device; rootfs \
                     tarballs keep device nodes in ./dev or have none — remove it from the \
                     rootfs and re-create the tarball",
                    describe(m.kind)
                )));
            }
            _ => {}
        }
        let seen = match m.kind {
            EntryType::Directory => Seen::Dir,
            EntryType::Symlink => Seen::Symlink,
            _ => Seen::Linkable,
        };
        if seen == Seen::Symlink {
            self.symlinks.entry(path.clone()).or_insert(SymlinkSeen {
                index,
                name: m.name.to_vec(),
                target: m.link.unwrap_or_default().to_vec(),
            });
        }
        self.seen.insert(path, seen);
        Ok(())
    }

    /// [`Self::check`] for a member as the tar reader hands it out.
    pub fn check_member(&mut self, index: u64, member: &Member) -> Result<(), Refusal> {
        let view = MemberView {
            name: &member.path,
            kind: member.entry_type(),
            link: member.link.as_deref(),
            other_names: member.other_names.iter().map(Vec::as_slice).collect(),
            other_links: member.other_links.iter().map(Vec::as_slice).collect(),
        };
        self.check(index, &view)
    }

    /// A PAX global header may carry only records that do not rename or
    /// resize the members after it: tar readers disagree about applying
    /// those (GNU tar ignores a global `path`, others do not), so the
    /// members would land in different places for different consumers.
    pub fn check_global(member: &Member) -> Result<(), Refusal> {
        if member.global_overrides.is_empty() {
            return Ok(());
        }
        Err(Refusal(format!(
            "it is a PAX global header with {} records, which would rename or resize every \
             member after it for some tar readers and not for others; {RECREATE}",
            member.global_overrides.join(", ")
        )))
    }

    fn check_parents(&self, path: &[u8]) -> Result<(), Refusal> {
        for parent in ancestors(path) {
            if let Some(link) = self.symlinks.get(parent) {
                return Err(Refusal(format!(
                    "its parent \"{}\" is a symlink (member {}, -> {}): extracting it would \
                     write through the link, outside the rootfs or onto another file; {RECREATE}",
                    show(&link.name),
                    link.index,
                    show(&link.target)
                )));
            }
        }
        Ok(())
    }

    fn check_symlink(&self, path: &[u8], m: &MemberView<'_>) -> Result<(), Refusal> {
        let fix = "fix the link in the rootfs (inside a rootfs a link stays below /: \
                   write it absolute, or with fewer `..`) and re-create the tarball";
        if m.link.is_none() {
            return Err(Refusal(format!("it is a symlink without a target; {fix}")));
        }
        for target in m.link.iter().chain(&m.other_links).copied() {
            if target.is_empty() {
                return Err(Refusal(format!(
                    "it is a symlink with an empty target, which Linux cannot create; {fix}"
                )));
            }
            if target.contains(&0) {
                return Err(Refusal(format!(
                    "its symlink target contains a NUL byte, so tools disagree about where it \
                     points; {fix}"
                )));
            }
            if climbs_above_root(path, target) {
                return Err(Refusal(format!(
                    "it is a symlink to {}, which climbs above the rootfs from {}; {fix}",
                    show(target),
                    show_dir(parent_of(path))
                )));
            }
        }
        Ok(())
    }

    fn check_hard_link(&self, path: &[u8], m: &MemberView<'_>) -> Result<(), Refusal> {
        let Some(target) = m.link else {
            return Err(Refusal(format!(
                "it is a hard link without a target; {RECREATE}"
            )));
        };
        for t in std::iter::once(target).chain(m.other_links.iter().copied()) {
            if let Some(escape) = escapes(t) {
                return Err(Refusal(format!(
                    "it is a hard link to \"{}\", whose name {}: a tool that takes it as it \
                     stands links a file from outside the rootfs in; hard links name an earlier \
                     member (./etc/x); {RECREATE}",
                    show(t),
                    escape.what()
                )));
            }
        }
        let normalized = normalize_name(target).map_err(|why| {
            Refusal(format!(
                "it is a hard link whose target is not a member: {why}; {RECREATE}"
            ))
        })?;
        // A path that was ever a symlink may still be one (pct keeps the
        // first member), whatever came later.
        let seen = match self.symlinks.contains_key(&normalized) {
            true => Some(&Seen::Symlink),
            false => self.seen.get(&normalized),
        };
        let what = match seen {
            Some(Seen::Linkable) if normalized != path => return Ok(()),
            Some(Seen::Linkable) => "itself".to_owned(),
            Some(Seen::Dir) => "a directory".to_owned(),
            Some(Seen::Symlink) => {
                let link = &self.symlinks[&normalized];
                format!(
                    "a symlink (member {}, -> {}), which a tool that follows links when it makes \
                     hard links would resolve outside the rootfs",
                    link.index,
                    show(&link.target)
                )
            }
            None => "nothing: no earlier member has that name, so tar cannot create it and a tool \
                     that tries links whatever the host has there"
                .to_owned(),
        };
        Err(Refusal(format!(
            "it is a hard link to \"{}\", which is {what}; {RECREATE}",
            show(target)
        )))
    }
}

/// The error for a refused member of the base labelled `base`.
pub(crate) fn unsafe_member(
    base: &str,
    index: u64,
    member: &Member,
    refusal: Refusal,
) -> OutputError {
    OutputError::UnsafeMember {
        base: base.to_owned(),
        entry: index,
        member: show(&member.path),
        reason: refusal.0,
    }
}

/// A layer path must stay inside the image, and a layer symlink inside the
/// rootfs, as the entry policy demands of a base: the template must pass it.
pub(crate) fn check_layer_entry(raw: &str, op: &Op) -> Result<(), OutputError> {
    let refuse = |reason: String| OutputError::Layer {
        path: show(raw.as_bytes()),
        reason,
    };
    if raw.contains('\0') {
        return Err(refuse("the path contains a NUL byte".into()));
    }
    if raw.split('/').any(|c| c == "..") {
        return Err(refuse(
            "the path has a `..` component; name the path inside the image directly".into(),
        ));
    }
    if let Op::Symlink { target, .. } = op {
        if target.is_empty() || target.contains('\0') {
            return Err(refuse(format!(
                "the symlink target {:?} is empty or contains a NUL byte",
                show(target.as_bytes())
            )));
        }
        let path = super::paths::normalize(raw.as_bytes());
        if climbs_above_root(path.as_bytes(), target.as_bytes()) {
            return Err(refuse(format!(
                "the symlink target {target} climbs above the image's root; write it as an \
                 absolute path"
            )));
        }
    }
    Ok(())
}

/// `./etc//x/` → `/etc/x`, the root → `/`; refuses what escapes the rootfs.
pub(crate) fn normalize_name(raw: &[u8]) -> Result<Vec<u8>, String> {
    if raw.is_empty() {
        return Err("its name is empty".into());
    }
    if let Some(escape) = escapes(raw) {
        return Err(match escape {
            Escape::Nul => "its name contains a NUL byte, so tools disagree about where it goes",
            Escape::Absolute => {
                "its name is absolute: GNU tar strips the leading \"/\", but other tools that \
                 unpack templates write it to that path on the host"
            }
            Escape::DotDot => {
                "its name has a \"..\" component, which leads out of the rootfs when it is \
                 extracted"
            }
        }
        .into());
    }
    let mut out = Vec::with_capacity(raw.len() + 1);
    for comp in raw.split(|&b| b == b'/') {
        if comp.is_empty() || comp == b"." {
            continue;
        }
        out.push(b'/');
        out.extend_from_slice(comp);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    Ok(out)
}

/// How a stored name leads out of the rootfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    Nul,
    Absolute,
    DotDot,
}

impl Escape {
    fn what(self) -> &'static str {
        match self {
            Escape::Nul => "contains a NUL byte",
            Escape::Absolute => "is absolute",
            Escape::DotDot => "has a \"..\" component",
        }
    }
}

/// How `raw` leads out of the rootfs, if it does.
fn escapes(raw: &[u8]) -> Option<Escape> {
    if raw.contains(&0) {
        Some(Escape::Nul)
    } else if raw.starts_with(b"/") {
        Some(Escape::Absolute)
    } else if raw.split(|&b| b == b'/').any(|c| c == b"..") {
        Some(Escape::DotDot)
    } else {
        None
    }
}

/// Whether a relative symlink `target` at normalized `path` climbs above
/// the root, read lexically from the link's own directory.
pub(crate) fn climbs_above_root(path: &[u8], target: &[u8]) -> bool {
    if target.starts_with(b"/") {
        return false;
    }
    let mut depth = parent_of(path)
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .count();
    for comp in target.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." if depth == 0 => return true,
            b".." => depth -= 1,
            _ => depth += 1,
        }
    }
    false
}

fn parent_of(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(0) | None => b"/",
        Some(i) => &path[..i],
    }
}

/// Proper ancestors of a normalized path, shallowest first, root excluded.
fn ancestors(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'/' && i > 0)
        .map(move |(i, _)| &path[..i])
}

fn describe(kind: EntryType) -> &'static str {
    match kind {
        EntryType::Directory => "a directory",
        EntryType::Symlink => "a symlink",
        EntryType::Link => "a hard link",
        EntryType::Char => "a character device",
        EntryType::Block => "a block device",
        EntryType::Fifo => "a FIFO",
        _ => "a file",
    }
}

/// A stored name for a message: lossy UTF-8, control characters escaped.
pub(crate) fn show(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .chars()
        .flat_map(|c| {
            let escape = c.is_control() || c == '"' || c == '\\';
            let shown: Vec<char> = if escape {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            shown
        })
        .collect()
}

fn show_dir(dir: &[u8]) -> String {
    if dir == b"/" {
        "the root".into()
    } else {
        format!(".{}", show(dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the policy over `(name, kind, link)` members; the first refusal
    /// as `(index, message)`.
    fn first_refusal(members: &[(&str, EntryType, Option<&str>)]) -> Option<(u64, String)> {
        let mut policy = EntryPolicy::default();
        for (i, (name, kind, link)) in members.iter().enumerate() {
            let view = MemberView::new(name.as_bytes(), *kind, link.map(str::as_bytes));
            if let Err(Refusal(why)) = policy.check(i as u64 + 1, &view) {
                return Some((i as u64 + 1, why));
            }
        }
        None
    }

    use EntryType::{Block, Char, Directory as D, Fifo, Link, Regular as F, Symlink as L};

    type Members<'a> = [(&'a str, EntryType, Option<&'a str>)];

    /// What real merged-usr bases hold: links at the top, absolute links,
    /// devices in /dev, hard links to earlier files, links into /proc.
    fn merged_usr() -> Vec<(&'static str, EntryType, Option<&'static str>)> {
        vec![
            ("./", D, None),
            ("./dev/", D, None),
            ("./dev/null", Char, None),
            ("./dev/loop0", Block, None),
            ("./dev/fd", L, Some("/proc/self/fd")),
            ("./bin", L, Some("usr/bin")),
            ("./lib", L, Some("usr/lib")),
            ("./sbin", L, Some("usr/sbin")),
            ("./usr/", D, None),
            ("./usr/bin/", D, None),
            ("./usr/bin/perl", F, None),
            ("./usr/bin/perl5.36.0", Link, Some("./usr/bin/perl")),
            ("./usr/lib/", D, None),
            ("./usr/lib/os-release", F, None),
            ("./etc/", D, None),
            ("./etc/os-release", L, Some("../usr/lib/os-release")),
            ("./etc/localtime", L, Some("/usr/share/zoneinfo/Etc/UTC")),
            ("./var/", D, None),
            ("./var/run", L, Some("/run")),
            ("./run/", D, None),
            ("./run/initctl", Fifo, None),
            (
                "./usr/lib/jvm/cacerts",
                L,
                Some("../../../etc/ssl/certs/java/cacerts"),
            ),
        ]
    }

    #[test]
    fn real_bases_pass() {
        assert_eq!(first_refusal(&merged_usr()), None);
        // Bare names, and a trailing slash on directories, are the same.
        assert_eq!(
            first_refusal(&[
                ("etc/", D, None),
                ("etc/a", F, None),
                ("etc/b", Link, Some("etc/a"))
            ]),
            None
        );
    }

    #[test]
    fn escaping_names_are_refused() {
        for name in [
            "../etc/passwd",
            "./etc/../../x",
            "etc/..",
            "/etc/passwd",
            "",
            "./a\0b",
        ] {
            let mut members = merged_usr();
            members.push((name, F, None));
            let (at, why) = first_refusal(&members).unwrap_or_else(|| panic!("{name:?}"));
            assert_eq!(at, members.len() as u64, "{name:?}");
            assert!(why.contains("re-create it"), "{why}");
        }
        let why = first_refusal(&[("/etc/passwd", F, None)]).unwrap().1;
        assert!(why.starts_with("its name is absolute"), "{why}");
        let why = first_refusal(&[("./a/../../x", F, None)]).unwrap().1;
        assert!(why.contains("\"..\" component"), "{why}");
        let why = first_refusal(&[("", F, None)]).unwrap().1;
        assert!(why.starts_with("its name is empty"), "{why}");
    }

    #[test]
    fn a_header_name_that_escapes_is_refused_even_behind_a_clean_pax_name() {
        let mut policy = EntryPolicy::default();
        let view = MemberView {
            other_names: vec![b"../../etc/cron.d/x"],
            ..MemberView::new(b"./etc/ok", F, None)
        };
        let why = policy.check(1, &view).unwrap_err().0;
        assert!(why.contains("another name recorded for it"), "{why}");
        // A header name that is only a truncation of the effective one is fine.
        let view = MemberView {
            other_names: vec![b"./usr/share/doc/very-long"],
            ..MemberView::new(b"./usr/share/doc/very-long-name", F, None)
        };
        policy.check(2, &view).unwrap();
    }

    #[test]
    fn members_below_an_earlier_symlink_are_refused() {
        let (at, why) = first_refusal(&[
            ("./etc/", D, None),
            ("./etc/evil", L, Some("/etc")),
            ("./etc/evil/x", F, None),
        ])
        .unwrap();
        assert_eq!(at, 3);
        assert!(
            why.starts_with("its parent \"./etc/evil\" is a symlink (member 2, -> /etc)"),
            "{why}"
        );
        // Deeper below, a relative link, and a directory member re-stating
        // the path (pct's --skip-old-files keeps the link) change nothing.
        assert_eq!(
            first_refusal(&[
                ("./a", L, Some("b")),
                ("./a/", D, None),
                ("./a/c/d", F, None)
            ])
            .unwrap()
            .0,
            3
        );
        // Merged-usr names through /lib are just as refused.
        let mut members = merged_usr();
        members.push(("./lib/x", F, None));
        assert!(first_refusal(&members).is_some());
    }

    #[test]
    fn symlinks_that_climb_above_the_root_are_refused() {
        let (at, why) = first_refusal(&[("./a", L, Some("../.."))]).unwrap();
        assert_eq!(at, 1);
        assert!(
            why.contains("symlink to ../.., which climbs above the rootfs from the root"),
            "{why}"
        );
        let why = first_refusal(&[("./etc/x", L, Some("../../../../etc/passwd"))])
            .unwrap()
            .1;
        assert!(why.contains("from ./etc"), "{why}");
        assert!(first_refusal(&[("./a/b", L, Some("c/../../.."))]).is_some());
        assert!(first_refusal(&[("./a", L, Some(""))]).is_some());
        // Staying at or below the root is fine, however it gets there.
        assert_eq!(
            first_refusal(&[
                ("./a/b/c", L, Some("../../x")),
                ("./a/b/d", L, Some("../x/../../y")),
                ("./e", L, Some("./f")),
                ("./g", L, Some("/../../abs-is-fine"))
            ]),
            None
        );
    }

    #[test]
    fn hard_links_must_name_an_earlier_linkable_member() {
        let cases: [(&Members, &str); 6] = [
            (&[("./h", Link, Some("/etc/shadow"))], "is absolute"),
            (&[("./h", Link, Some("../etc/shadow"))], "\"..\" component"),
            (&[("./h", Link, Some("./etc/shadow"))], "no earlier member"),
            (
                &[("./etc/", D, None), ("./h", Link, Some("./etc"))],
                "a directory",
            ),
            (
                &[("./s", L, Some("/etc/shadow")), ("./h", Link, Some("./s"))],
                "a symlink (member 1, -> /etc/shadow)",
            ),
            (&[("./h", Link, None)], "without a target"),
        ];
        for (members, needle) in cases {
            let (at, why) = first_refusal(members).unwrap();
            assert_eq!(at, members.len() as u64, "{members:?}");
            assert!(why.contains(needle), "{needle:?} not in {why}");
        }
        // A path that was a symlink stays one for pct, which keeps the first.
        let (at, why) = first_refusal(&[
            ("./s", L, Some("/etc/shadow")),
            ("./s", F, None),
            ("./h", Link, Some("./s")),
        ])
        .unwrap();
        assert_eq!(at, 3);
        assert!(why.contains("a symlink (member 1"), "{why}");
        // The target may be any earlier non-directory, link or not.
        assert_eq!(
            first_refusal(&[
                ("./a", F, None),
                ("./b", Link, Some("a")),
                ("./c", Link, Some("./b")),
                ("./dev/", D, None),
                ("./dev/n", Char, None),
                ("./dev/m", Link, Some("./dev/n")),
            ]),
            None
        );
    }

    #[test]
    fn devices_outside_dev_are_refused_fifos_pass() {
        let why = first_refusal(&[("./root/sda", Block, None)]).unwrap().1;
        assert!(
            why.starts_with("it is a block device outside /dev"),
            "{why}"
        );
        assert!(first_refusal(&[("./devx/null", Char, None)]).is_some());
        assert!(first_refusal(&[("./dev", Char, None)]).is_some());
        assert_eq!(first_refusal(&[("./var/spool/fifo", Fifo, None)]), None);
    }

    #[test]
    fn the_root_must_be_a_directory() {
        let why = first_refusal(&[("./", L, Some("/etc"))]).unwrap().1;
        assert!(why.contains("the rootfs root itself as a symlink"), "{why}");
        assert_eq!(
            first_refusal(&[(".", D, None), ("/", D, None)]).unwrap().0,
            2
        );
    }

    #[test]
    fn names_in_messages_are_escaped() {
        assert_eq!(show(b"./a\0b\n\"c\""), "./a\\u{0}b\\n\\\"c\\\"");
        assert_eq!(show(b"./caf\xc3\xa9"), "./café");
    }

    #[test]
    fn normalization_and_climbing() {
        assert_eq!(normalize_name(b"./etc//x/").unwrap(), b"/etc/x");
        assert_eq!(normalize_name(b"./").unwrap(), b"/");
        assert_eq!(normalize_name(b".").unwrap(), b"/");
        // Not UTF-8 and still exact: no lossy collisions.
        assert_ne!(
            normalize_name(b"./a\xff").unwrap(),
            normalize_name(b"./a\xfe").unwrap()
        );
        assert!(!climbs_above_root(b"/usr/lib/x", b"../../etc/y"));
        assert!(climbs_above_root(b"/usr/lib/x", b"../../../etc/y"));
        assert!(!climbs_above_root(b"/x", b"/../.."));
    }
}
