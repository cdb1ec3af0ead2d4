//! Base tarballs that escape the rootfs or hold unsafe members: one tar-entry
//! policy for every target refuses them, naming the entry and what to do,
//! before anything is written. Also: what interrupted builds leave behind.
//!
//! The tarballs are made header by header: GNU tar refuses to create most
//! of these.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use tar::{EntryType, Header};

use super::*;

/// Members of [`debian_base`] before the ones a test adds.
const BASE_MEMBERS: u64 = 24;

/// A plain tar written header by header.
#[derive(Default)]
struct Tarball {
    bytes: Vec<u8>,
    members: u64,
}

impl Tarball {
    fn entry(&mut self, name: &[u8], kind: EntryType, mode: u32, link: &[u8], data: &[u8]) {
        let mut h = Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        if matches!(kind, EntryType::Block | EntryType::Char) {
            h.set_device_major(8).unwrap();
            h.set_device_minor(0).unwrap();
        }
        h.set_cksum();
        self.bytes.extend_from_slice(h.as_bytes());
        self.data(data);
        self.members += 1;
    }

    fn data(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        let padded = self.bytes.len().div_ceil(512) * 512;
        self.bytes.resize(padded, 0);
    }

    /// A PAX extended header for the next member.
    fn pax(&mut self, key: &str, value: &[u8]) -> &mut Self {
        self.pax_header(EntryType::XHeader, key, value)
    }

    /// A PAX global header: for the rest of the archive.
    fn pax_global(&mut self, key: &str, value: &[u8]) -> &mut Self {
        self.pax_header(EntryType::XGlobalHeader, key, value)
    }

    /// A GNU long-name header for the next member.
    fn gnu_long_name(&mut self, name: &str) -> &mut Self {
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(EntryType::GNULongName);
        h.set_size(name.len() as u64 + 1);
        h.set_mode(0o644);
        h.set_cksum();
        self.bytes.extend_from_slice(h.as_bytes());
        self.data(format!("{name}\0").as_bytes());
        self
    }

    fn pax_header(&mut self, kind: EntryType, key: &str, value: &[u8]) -> &mut Self {
        let rest = key.len() + value.len() + 3;
        let mut len = rest + rest.to_string().len();
        if len.to_string().len() + rest != len {
            len += 1;
        }
        let mut body = format!("{len} {key}=").into_bytes();
        body.extend_from_slice(value);
        body.push(b'\n');
        let mut h = Header::new_ustar();
        h.as_old_mut().name[..13].copy_from_slice(b"./PaxHeaders/");
        h.set_entry_type(kind);
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        self.bytes.extend_from_slice(h.as_bytes());
        self.data(&body);
        self
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(name.as_bytes(), EntryType::Directory, 0o755, b"", b"");
        self
    }

    fn file(&mut self, name: &str, data: &str) -> &mut Self {
        self.entry(
            name.as_bytes(),
            EntryType::Regular,
            0o644,
            b"",
            data.as_bytes(),
        );
        self
    }

    fn exe(&mut self, name: &str) -> &mut Self {
        self.entry(name.as_bytes(), EntryType::Regular, 0o755, b"", b"");
        self
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(
            name.as_bytes(),
            EntryType::Symlink,
            0o777,
            target.as_bytes(),
            b"",
        );
        self
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(
            name.as_bytes(),
            EntryType::Link,
            0o644,
            target.as_bytes(),
            b"",
        );
        self
    }

    fn device(&mut self, name: &str, kind: EntryType) -> &mut Self {
        self.entry(name.as_bytes(), kind, 0o666, b"", b"");
        self
    }

    /// Writes the archive with its end-of-archive marker to `dir/base.tar`.
    fn write(&self, dir: &Path) -> PathBuf {
        let mut bytes = self.bytes.clone();
        bytes.extend_from_slice(&[0u8; 1024]);
        let path = dir.join("base.tar");
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

/// What [`make_base`] archives, member by member: a Debian rootfs that
/// satisfies pct's contract.
fn debian_base() -> Tarball {
    let mut t = Tarball::default();
    t.dir("./");
    for d in [
        "sbin",
        "etc",
        "etc/ssh",
        "usr",
        "usr/lib",
        "var",
        "var/log",
        "bin",
        "lib",
        "lib/systemd",
        "tmp",
        "root",
        "home",
        "srv",
    ] {
        t.dir(&format!("./{d}/"));
    }
    t.file("./usr/lib/os-release", "ID=debian\nVERSION_ID=\"12\"\n")
        .symlink("./etc/os-release", "../usr/lib/os-release")
        .file("./etc/debian_version", "12.5\n")
        .exe("./lib/systemd/systemd")
        .exe("./sbin/ifup")
        .exe("./sbin/dhclient")
        .symlink("./sbin/init", "/lib/systemd/systemd")
        .file("./etc/machine-id", "0123456789abcdef0123456789abcdef\n")
        .file("./var/log/dpkg.log", "log");
    assert_eq!(t.members, BASE_MEMBERS);
    t
}

/// A directory outside the build's out/ and cache that a hostile base
/// aims at; it must stay empty.
fn victim(dir: &Path) -> PathBuf {
    let v = dir.join("victim");
    std::fs::create_dir(&v).unwrap();
    v
}

/// Builds the template from `base` and checks the build was refused with
/// `base: member N "name": reason…` and wrote nothing: no artifact, no
/// manifest, no `.partial` in out/, nothing new in the cache, and the
/// victim directory untouched. Returns the error output.
fn refused(dir: &Path, base: &Path, member: u64, name: &str, reason: &str) -> String {
    let recipe = write_recipe(dir, base, None);
    let err = refused_build(dir, &recipe);
    let head = format!(
        "{}: member {member} \"{name}\": {reason}",
        base.canonicalize().unwrap().display()
    );
    assert!(err.contains(&head), "{head:?} not in:\n{err}");
    assert!(
        err.contains("re-create") || err.contains("remove it from the rootfs"),
        "no advice in:\n{err}"
    );
    if dir.join("victim").exists() {
        assert!(tree(&dir.join("victim")).is_empty(), "the victim changed");
    }
    err
}

#[test]
fn a_member_written_through_an_earlier_symlink_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let victim = victim(dir.path());
    let mut t = debian_base();
    t.symlink("./etc/evil", victim.to_str().unwrap())
        .file("./etc/evil/x", "owned");
    let base = t.write(dir.path());
    refused(
        dir.path(),
        &base,
        BASE_MEMBERS + 2,
        "./etc/evil/x",
        &format!(
            "its parent \"./etc/evil\" is a symlink (member {}, -> {}): extracting it would \
             write through the link, outside the rootfs or onto another file",
            BASE_MEMBERS + 1,
            victim.display()
        ),
    );
}

#[test]
fn a_member_below_a_relative_symlink_is_refused_and_so_is_a_climbing_one() {
    // Relative and inside the rootfs: still a write through a link.
    let dir = tempfile::tempdir().unwrap();
    let mut t = debian_base();
    t.symlink("./a", "etc").dir("./a/").file("./a/b/x", "x");
    let base = t.write(dir.path());
    refused(
        dir.path(),
        &base,
        BASE_MEMBERS + 3,
        "./a/b/x",
        &format!(
            "its parent \"./a\" is a symlink (member {}, -> etc)",
            BASE_MEMBERS + 1
        ),
    );

    // `./a -> ../..` is refused as soon as it appears.
    let dir = tempfile::tempdir().unwrap();
    let mut t = debian_base();
    t.symlink("./a", "../..").file("./a/x", "x");
    let base = t.write(dir.path());
    refused(
        dir.path(),
        &base,
        BASE_MEMBERS + 1,
        "./a",
        "it is a symlink to ../.., which climbs above the rootfs from the root; fix the link",
    );
}

#[test]
fn names_that_escape_the_rootfs_are_refused() {
    let cases: [(&[u8], &str); 3] = [
        (
            b"./etc/../../tmp/x",
            "its name has a \"..\" component, which leads out of the rootfs when it is extracted",
        ),
        (
            b"/etc/cron.d/evil",
            "its name is absolute: GNU tar strips the leading \"/\", but other tools that unpack \
             templates write it to that path on the host",
        ),
        (b"", "its name is empty"),
    ];
    for (name, reason) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut t = debian_base();
        t.entry(name, EntryType::Regular, 0o644, b"", b"* * * * * root sh");
        let base = t.write(dir.path());
        refused(
            dir.path(),
            &base,
            BASE_MEMBERS + 1,
            &String::from_utf8_lossy(name),
            reason,
        );
    }
}

#[test]
fn a_nul_in_a_pax_name_and_an_escaping_header_name_behind_a_clean_pax_name_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = debian_base();
    t.pax("path", b"./etc/ok\0/../../x")
        .file("./etc/placeholder", "x");
    let base = t.write(dir.path());
    refused(
        dir.path(),
        &base,
        BASE_MEMBERS + 1,
        "./etc/ok\\u{0}/../../x",
        "its name contains a NUL byte, so tools disagree about where it goes",
    );

    // A reader that ignores PAX records would write to ../../x.
    let dir = tempfile::tempdir().unwrap();
    let mut t = debian_base();
    t.pax("path", b"./etc/fine").file("../../x", "x");
    let base = t.write(dir.path());
    refused(
        dir.path(),
        &base,
        BASE_MEMBERS + 1,
        "./etc/fine",
        "another name recorded for it (in its own header, a GNU long-name or a PAX record), \
         \"../../x\", has a \"..\" component",
    );

    // GNU tar takes the PAX path, readers without PAX support the long name.
    let mut t = debian_base();
    t.gnu_long_name("../../etc/cron.d/evil")
        .pax("path", b"./etc/fine")
        .file("./etc/fine", "x");
    let base = t.write(dir.path());
    refused(
        dir.path(),
        &base,
        BASE_MEMBERS + 1,
        "./etc/fine",
        "another name recorded for it (in its own header, a GNU long-name or a PAX record), \
         \"../../etc/cron.d/evil\", has a \"..\" component",
    );
}

#[test]
fn a_global_header_that_renames_the_members_after_it_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = debian_base();
    t.pax_global("path", b"/etc/cron.d/evil")
        .file("./etc/fine", "x");
    let base = t.write(dir.path());
    refused(
        dir.path(),
        &base,
        BASE_MEMBERS + 1,
        "./PaxHeaders/",
        "it is a PAX global header with path records, which would rename or resize every member",
    );

    // Times and charsets in a global header are harmless and pass.
    let mut t = debian_base();
    t.pax_global("mtime", b"1700000000").file("./etc/fine", "x");
    let base = t.write(dir.path());
    let recipe = write_recipe(dir.path(), &base, None);
    let o = build(dir.path(), &recipe, &dir.path().join("out"));
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn escaping_and_dangling_hard_links_are_refused() {
    let cases = [
        (
            "/etc/shadow",
            "it is a hard link to \"/etc/shadow\", whose name is absolute",
        ),
        (
            "../../etc/shadow",
            "it is a hard link to \"../../etc/shadow\", whose name has a \"..\" component",
        ),
        (
            "./etc/shadow",
            "it is a hard link to \"./etc/shadow\", which is nothing: no earlier member has that \
             name",
        ),
    ];
    for (target, reason) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut t = debian_base();
        t.hardlink("./etc/h", target);
        let base = t.write(dir.path());
        refused(dir.path(), &base, BASE_MEMBERS + 1, "./etc/h", reason);
    }
}

#[test]
fn a_symlink_that_climbs_above_the_root_is_refused_an_absolute_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = debian_base();
    t.symlink("./etc/x", "../../../../etc/passwd");
    let base = t.write(dir.path());
    refused(
        dir.path(),
        &base,
        BASE_MEMBERS + 1,
        "./etc/x",
        "it is a symlink to ../../../../etc/passwd, which climbs above the rootfs from ./etc",
    );

    let dir = tempfile::tempdir().unwrap();
    let mut t = debian_base();
    t.symlink("./etc/localtime", "/usr/share/zoneinfo/Etc/UTC");
    let base = t.write(dir.path());
    let recipe = write_recipe(dir.path(), &base, None);
    let o = build(dir.path(), &recipe, &dir.path().join("out"));
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_device_node_outside_dev_is_refused_one_in_dev_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = debian_base();
    t.device("./root/sda", EntryType::Block);
    let base = t.write(dir.path());
    refused(
        dir.path(),
        &base,
        BASE_MEMBERS + 1,
        "./root/sda",
        "it is a block device outside /dev: `pct create` leaves out only ./dev/*",
    );

    let dir = tempfile::tempdir().unwrap();
    let mut t = debian_base();
    t.dir("./dev/").device("./dev/null", EntryType::Char);
    let base = t.write(dir.path());
    let recipe = write_recipe(dir.path(), &base, None);
    let o = build(dir.path(), &recipe, &dir.path().join("out"));
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn the_layer_is_written_inside_the_rootfs_below_a_base_symlink_that_points_at_the_host() {
    // An absolute link is allowed in a base; the agent the layer writes to
    // /usr/local/sbin must still land inside the rootfs, never in the
    // link's target on the host that unpacks the template.
    let dir = tempfile::tempdir().unwrap();
    let victim = victim(dir.path());
    let mut t = debian_base();
    t.symlink("./usr/local", victim.to_str().unwrap());
    let base = t.write(dir.path());
    let recipe = write_recipe(dir.path(), &base, None);
    let out = dir.path().join("out");
    let o = build(dir.path(), &recipe, &out);
    assert!(o.status.success(), "{}", text(&o));
    let template = out.join("debian-12-k3s-worker_1.34.3-k3s1-1_amd64.tar.zst");
    let members = list(&template);
    assert!(
        !members.iter().any(|m| m.starts_with("./usr/local/")),
        "{members:?}"
    );
    let root = dir.path().join("x");
    pct_extract(&template, &root);
    let inside = root
        .join(victim.strip_prefix("/").unwrap())
        .join("sbin/firstboot-agent");
    assert!(inside.is_file(), "{members:?}");
    assert!(tree(&victim).is_empty(), "the victim changed");
}

#[test]
fn a_hostile_rootfs_is_refused_before_it_is_extracted_on_the_build_host() {
    // The qcow2 disk is assembled from a bootstrapped rootfs extracted with
    // tar, as root, on this host. Seed the cache with a hostile "bootstrap".
    require_root("the qcow2 disk is assembled from a rootfs extracted with its owners");
    let dir = tempfile::tempdir().unwrap();
    let victim = victim(dir.path());
    let mut t = debian_base();
    t.symlink("./etc/evil", victim.to_str().unwrap())
        .file("./etc/evil/x", "owned");
    let base = t.write(dir.path());
    let spec_yaml = "tool: mmdebstrap\nsuite: bookworm\npackages: [systemd-sysv]\n";
    let spec: imgbuild::plan::schema::BootstrapSpec = serde_yaml::from_str(spec_yaml).unwrap();
    let cache = imgbuild::source::Cache::new(dir.path().join("cache"));
    let bytes = std::fs::read(&base).unwrap();
    let digest: node_spec::Sha256Hex = sha256_hex(&bytes).parse().unwrap();
    std::fs::create_dir_all(dir.path().join("cache/sha256")).unwrap();
    let blob = dir.path().join("cache/sha256").join(digest.as_str());
    std::fs::copy(&base, &blob).unwrap();
    cache
        .record_bootstrap(&imgbuild::source::BootstrapRecord {
            key: imgbuild::source::bootstrap_key(&spec, "amd64"),
            sha256: digest,
            size: bytes.len() as u64,
            command: "a hostile rootfs".into(),
            recorded_at: 0,
        })
        .unwrap();
    let recipe = dir.path().join("disk.yaml");
    let indented: String = spec_yaml.lines().map(|l| format!("    {l}\n")).collect();
    std::fs::write(
        &recipe,
        format!("name: d\ndistro: debian\nrelease: \"12\"\nqcow2:\n  bootstrap:\n{indented}"),
    )
    .unwrap();
    let out = dir.path().join("out");
    let cache_before = tree(&dir.path().join("cache"));
    let o = imgbuild(
        &[
            "build",
            repo_root().join("profiles/worker.yaml").to_str().unwrap(),
            "--output",
            "qcow2",
            "--offline",
            "--recipe",
            recipe.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--cache-dir",
            dir.path().join("cache").to_str().unwrap(),
        ],
        &[("SOURCE_DATE_EPOCH", "1700000000")],
    );
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    for needle in [
        format!(
            "refusing to extract {} on this host to assemble the disk",
            blob.display()
        ),
        format!(
            "{}: member {} \"./etc/evil/x\": its parent \"./etc/evil\" is a symlink",
            blob.display(),
            BASE_MEMBERS + 2
        ),
    ] {
        assert!(err.contains(&needle), "{needle:?} not in:\n{err}");
    }
    assert_nothing_written(dir.path(), &out, &cache_before);
    assert!(tree(&victim).is_empty(), "the victim changed");
}

#[test]
fn leftovers_of_killed_builds_are_swept_at_the_start_of_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let base = make_base(dir.path());
    let recipe = write_recipe(dir.path(), &base, None);
    let out = dir.path().join("out");
    let tmp = dir.path().join("cache/tmp");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::create_dir_all(&tmp).unwrap();
    // Beyond the kernel's pid_max: a build that is certainly gone.
    let dead = 1u32 << 30;
    let name = "debian-12-k3s-worker_1.34.3-k3s1-1_amd64.tar.zst";
    let stale = [
        out.join(format!(".{name}.{dead}.AbCdEf.partial")),
        out.join(format!(".imgbuild-disk-{dead}-AbCdEf")),
        out.join(format!(".imgbuild-{dead}-AbCdEf.tmp")),
        tmp.join(format!("download-{dead}-AbCdEf.partial")),
        tmp.join(format!("bootstrap-{dead}-AbCdEf")),
    ];
    for p in &stale {
        if p.extension().is_some_and(|e| e == "partial" || e == "tmp") {
            std::fs::write(p, "half").unwrap();
        } else {
            std::fs::create_dir(p).unwrap();
            std::fs::write(p.join("disk.raw"), "half").unwrap();
        }
    }
    // The same shape, owned by a running imgbuild (a stand-in by its
    // name): kept.
    let standin = dir.path().join("imgbuild-standin");
    std::fs::copy("/bin/sleep", &standin).unwrap();
    let mut running = Command::new(&standin).arg("60").spawn().unwrap();
    let live = out.join(format!(".{name}.{}.AbCdEf.partial", running.id()));
    std::fs::write(&live, "in progress").unwrap();
    let o = build(dir.path(), &recipe, &out);
    running.kill().unwrap();
    running.wait().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let log = String::from_utf8_lossy(&o.stderr);
    for p in &stale {
        assert!(!p.exists(), "{} was not swept", p.display());
        assert!(log.contains(&p.display().to_string()), "{log}");
    }
    assert!(
        log.contains(&format!(
            "removed a leftover of an interrupted build: its build (pid {dead}) is gone"
        )),
        "{log}"
    );
    assert!(live.exists());
}

/// A base big enough that level-19 compression runs for minutes.
fn slow_base(dir: &Path) -> PathBuf {
    let mut t = debian_base();
    let mut seed = 0x2545_f491_u32;
    let noise: Vec<u8> = (0..40 << 20)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            b'a' + (seed % 16) as u8
        })
        .collect();
    t.entry(b"./srv/noise", EntryType::Regular, 0o644, b"", &noise);
    t.write(dir)
}

/// Starts a level-19 build and returns once its `.partial` exists.
fn start_slow_build(dir: &Path, out: &Path) -> std::process::Child {
    let base = slow_base(dir);
    let recipe = write_recipe(dir, &base, None);
    let profile = dir.join("level19.yaml");
    let text_in = std::fs::read_to_string(repo_root().join("profiles/worker.yaml")).unwrap();
    std::fs::write(&profile, format!("{text_in}lxc:\n  zstd-level: 19\n")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_imgbuild"))
        .args(build_args(dir, &profile, &recipe, out))
        .env("IMGBUILD_AGENT", agent_binary())
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !tree(out).iter().any(|f| f.ends_with(".partial")) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no .partial appeared"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Into the compression proper.
    std::thread::sleep(Duration::from_secs(2));
    child
}

fn interrupt(child: &std::process::Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
}

#[test]
fn ctrl_c_at_zstd_level_19_stops_the_build_within_two_seconds_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let child = start_slow_build(dir.path(), &out);
    let asked = Instant::now();
    interrupt(&child);
    let o = child.wait_with_output().unwrap();
    let took = asked.elapsed();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(took < Duration::from_secs(2), "Ctrl-C took {took:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("interrupted; no output was written"), "{err}");
    assert!(tree(&out).is_empty(), "left in out/: {:?}", tree(&out));
}

/// A second Ctrl-C must not leave a program running on: children lead
/// their own process groups, so the terminal's SIGINT never reaches them.
/// The stand-in mmdebstrap ignores SIGTERM, as a tool busy in a clean-up
/// may, so only a SIGKILL after the grace second stops it.
#[test]
fn a_second_ctrl_c_stops_a_running_bootstrap_and_removes_its_work_dir() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let pid_file = dir.path().join("mmdebstrap.pid");
    let script = format!(
        "#!/bin/sh\ntrap '' TERM\necho $$ > {}\nwhile :; do sleep 0.05; done\n",
        pid_file.display()
    );
    let fake = bin.join("mmdebstrap");
    std::fs::write(&fake, script).unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let recipe = dir.path().join("boot.yaml");
    std::fs::write(
        &recipe,
        "name: b\ndistro: debian\nrelease: \"12\"\nlxc:\n  bootstrap:\n    tool: mmdebstrap\n    \
         suite: bookworm\n    packages: [systemd-sysv]\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let child = Command::new(env!("CARGO_BIN_EXE_imgbuild"))
        .args(build_args(
            dir.path(),
            &repo_root().join("profiles/worker.yaml"),
            &recipe,
            &out,
        ))
        .env("IMGBUILD_AGENT", agent_binary())
        .env("PATH", path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let pid = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            break pid;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "mmdebstrap never ran"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let tmp = dir.path().join("cache/tmp");
    assert!(
        tree(&tmp).iter().any(|f| f.contains("bootstrap-")),
        "no work dir in {:?}",
        tree(&tmp)
    );
    interrupt(&child);
    std::thread::sleep(Duration::from_millis(200));
    interrupt(&child);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", text(&o));
    assert!(
        text(&o).contains("stopped 1 running program(s)"),
        "{}",
        text(&o)
    );
    // Gone, or a zombie waiting for whoever adopted it to reap it.
    let gone = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true)
    };
    let asked = Instant::now();
    while !gone() {
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "the bootstrap (pid {pid}) still runs after the second Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !tree(&tmp).iter().any(|f| f.contains("bootstrap-")),
        "left in cache/tmp: {:?}",
        tree(&tmp)
    );
    assert!(tree(&out).is_empty(), "left in out/: {:?}", tree(&out));
}

#[test]
fn a_second_ctrl_c_exits_at_once_and_still_removes_the_partial() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let child = start_slow_build(dir.path(), &out);
    interrupt(&child);
    std::thread::sleep(Duration::from_millis(20));
    interrupt(&child);
    let o = child.wait_with_output().unwrap();
    // 130 from the second Ctrl-C, or 1 if the first had already finished.
    assert!(
        o.status.code() == Some(130) || o.status.code() == Some(1),
        "{:?} {}",
        o.status.signal(),
        text(&o)
    );
    assert!(tree(&out).is_empty(), "left in out/: {:?}", tree(&out));
}
