//! What the tar-stream target refuses and how it stays inside the rootfs:
//! unsafe base members (the entry policy, applied by the rewrite, the
//! template and the contract pre-pass alike), layer entries below base
//! symlinks, layer paths that leave the image; and a cancel at level 19.

use super::*;

#[test]
fn added_entries_below_a_base_symlink_are_written_under_their_real_name() {
    // Merged /usr: ./lib is a symlink to usr/lib. Writing ./lib/… would go
    // through it (and a directory entry there would replace it).
    let layer = Layer {
        ops: vec![write_file(
            "/lib/systemd/system/firstboot.service",
            "[Unit]\n",
            0o644,
        )],
    };
    let (out, stats) = rewrite(&debian_like().finish(), &layer);
    let n = names(&out);
    assert_eq!(
        n[n.len() - 3..],
        [
            "./usr/lib/systemd/",
            "./usr/lib/systemd/system/",
            "./usr/lib/systemd/system/firstboot.service"
        ]
    );
    assert!(!n.iter().any(|n| n.starts_with("./lib/")), "{n:?}");
    assert_eq!(stats.parents_created, 2);

    let work = tempdir();
    let archive = work.path().join("t.tar");
    fs::write(&archive, &out).unwrap();
    extract_like_pct(&archive, &work.path().join("x"));
    let unit = work
        .path()
        .join("x/usr/lib/systemd/system/firstboot.service");
    assert_eq!(fs::read_to_string(unit).unwrap(), "[Unit]\n");
    assert!(fs::symlink_metadata(work.path().join("x/lib"))
        .unwrap()
        .file_type()
        .is_symlink());
    // The template itself passes the policy it applies to bases.
    rewrite(&out, &Layer::default());
}

#[test]
fn a_base_symlink_to_the_hosts_etc_cannot_carry_a_layer_file_out_of_the_rootfs() {
    let work = tempdir();
    let victim = work.path().join("victim");
    fs::create_dir(&victim).unwrap();
    let mut t = debian_like();
    // Absolute links are normal in a rootfs: this one is allowed.
    t.symlink("./etc/firstboot-agent", victim.to_str().unwrap());
    let layer = Layer {
        ops: vec![write_file(
            "/etc/firstboot-agent/defaults.yaml",
            "schema: 1\n",
            0o644,
        )],
    };
    let (out, _) = rewrite(&t.finish(), &layer);
    // Inside the rootfs, the link leads to <victim> below the root.
    let inside = format!(
        "./{}/defaults.yaml",
        victim.to_str().unwrap().trim_start_matches('/')
    );
    assert_eq!(names(&out).last().unwrap(), &inside);
    assert!(!names(&out)
        .iter()
        .any(|n| n.starts_with("./etc/firstboot-agent/")));
    let archive = work.path().join("t.tar");
    fs::write(&archive, &out).unwrap();
    let dest = work.path().join("x");
    extract_like_pct(&archive, &dest);
    assert_eq!(
        fs::read_to_string(dest.join(&inside[2..])).unwrap(),
        "schema: 1\n"
    );
    assert!(
        dir_entries(&victim).is_empty(),
        "{:?}",
        dir_entries(&victim)
    );
}

#[test]
fn a_layer_file_that_a_base_symlink_makes_a_base_file_is_a_layer_error() {
    // /lib/os-release is /usr/lib/os-release, which the base has: pct's
    // --skip-old-files would keep the base's.
    let layer = Layer {
        ops: vec![write_file("/lib/os-release", "ID=x\n", 0o644)],
    };
    let err = rewrite_tar(
        &debian_like().finish()[..],
        &layer,
        Vec::new(),
        &no_cancel(),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "layer entry /lib/os-release: through the base's symlinks it is /usr/lib/os-release, \
         which the base already holds and `pct create` would keep; name it /usr/lib/os-release \
         in the profile so the layer replaces it"
    );
}

#[test]
fn unsafe_base_members_are_refused_with_their_index_and_name() {
    type AddMembers = dyn Fn(&mut RawTar);
    let cases: [(&AddMembers, &str); 4] = [
        (
            &|t| {
                t.symlink("./etc/evil", "/etc").file("./etc/evil/x", "x");
            },
            "member N2 \"./etc/evil/x\": its parent \"./etc/evil\" is a symlink (member N1, -> /etc)",
        ),
        (
            &|t| {
                t.file("./etc/../../x", "x");
            },
            "member N1 \"./etc/../../x\": its name has a \"..\" component",
        ),
        (
            &|t| {
                t.symlink("./x", "../../../../etc/passwd");
            },
            "member N1 \"./x\": it is a symlink to ../../../../etc/passwd, which climbs above the rootfs from the root",
        ),
        (
            &|t| {
                t.hardlink("./h", "/etc/shadow");
            },
            "member N1 \"./h\": it is a hard link to \"/etc/shadow\", whose name is absolute",
        ),
    ];
    // Members of the base before the ones a case adds.
    let before = members(&debian_like().finish()).len();
    for (add, needle) in cases {
        let needle = needle
            .replace("N1", &(before + 1).to_string())
            .replace("N2", &(before + 2).to_string());
        let needle = needle.as_str();
        let mut t = debian_like();
        add(&mut t);
        let err = rewrite_tar(
            &t.finish()[..],
            &layer_for_template(),
            Vec::new(),
            &no_cancel(),
        )
        .unwrap_err();
        assert!(matches!(err, OutputError::UnsafeMember { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.starts_with("(input stream): "), "{msg}");
        assert!(msg.contains(needle), "{needle:?} not in {msg}");
        // The template and the contract pre-pass apply the same policy.
        let e = template_err(&t.finish(), "base.tar").to_string();
        assert!(e.contains(needle), "{e}");
        let work = tempdir();
        let base = work.path().join("base.tar");
        fs::write(&base, t.finish()).unwrap();
        let e = scan_base(&base, &no_cancel()).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: ", base.display())), "{e}");
        assert!(e.contains(needle), "{e}");
    }
}

#[test]
fn a_hard_link_to_a_file_the_layer_makes_a_symlink_becomes_that_symlink() {
    let mut t = debian_like();
    t.file("./etc/resolv.conf", "nameserver 1.1.1.1\n")
        .hardlink("./etc/resolv.conf.bak", "./etc/resolv.conf");
    let layer = Layer {
        ops: vec![Op::Symlink {
            path: "/etc/resolv.conf".into(),
            target: "../run/systemd/resolve/stub-resolv.conf".into(),
            meta: meta(0o777),
        }],
    };
    let (out, stats) = rewrite(&t.finish(), &layer);
    assert_eq!(stats.hard_links_deferred, 1);
    let m = members(&out);
    let pos = |p: &str| m.iter().position(|(n, _)| n == p).unwrap();
    assert_eq!(m[pos("./etc/resolv.conf.bak")].1, EntryType::Symlink);
    assert!(pos("./etc/resolv.conf") < pos("./etc/resolv.conf.bak"));
    rewrite(&out, &Layer::default());
}

#[test]
fn layer_paths_and_links_that_leave_the_image_are_rejected() {
    for (op, needle) in [
        (write_file("/etc/../../x", "", 0o644), "`..` component"),
        (
            Op::Symlink {
                path: "/etc/x".into(),
                target: "../../y".into(),
                meta: meta(0o777),
            },
            "climbs above the image's root",
        ),
    ] {
        let layer = Layer { ops: vec![op] };
        let err = rewrite_tar(
            &debian_like().finish()[..],
            &layer,
            Vec::new(),
            &no_cancel(),
        )
        .unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
    }
}

#[test]
fn absolute_member_names_are_refused() {
    // GNU tar strips the "/", but other tools that unpack templates do not.
    let mut t = RawTar::default();
    t.dir("/etc/").file("/etc/hostname", "base").dir("/sbin/");
    let err = rewrite_tar(&t.finish()[..], &Layer::default(), Vec::new(), &no_cancel())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("(input stream): member 1 \"/etc/\": its name is absolute"),
        "{err}"
    );
    assert!(
        err.contains("tar --numeric-owner -C ROOTFS -cf base.tar ."),
        "{err}"
    );
}

#[test]
fn a_cancel_at_zstd_level_19_returns_within_two_seconds() {
    // 48 MiB of noise: more than one 32 MiB level-19 job, which takes zstd's
    // one worker tens of seconds; without the compressor thread the build
    // would sit in `finish` until the last job is done.
    let work = tempdir();
    let mut t = debian_like();
    let mut seed = 0x9e37_79b9_u32;
    let blob: Vec<u8> = (0..48 << 20)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            b'a' + (seed % 16) as u8
        })
        .collect();
    t.add(Entry {
        data: &blob,
        ..Entry::new("./usr/lib/blob", EntryType::Regular)
    });
    let base = work.path().join("large.tar");
    fs::write(&base, t.finish()).unwrap();
    drop(blob);
    let out = work.path().join("out.tar.zst");
    let opts = LxcOptions {
        zstd_level: 19,
        threads: 1,
    };
    let cancel = AtomicBool::new(false);
    let (result, latency) = std::thread::scope(|s| {
        let build = s.spawn(|| write_template(&base, &layer_for_template(), &out, &opts, &cancel));
        // Long enough for the rewrite to be through and zstd to be busy;
        // far too short for level 19 to finish 48 MiB.
        std::thread::sleep(std::time::Duration::from_secs(3));
        let asked = std::time::Instant::now();
        cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        let result = build.join().unwrap();
        (result, asked.elapsed())
    });
    let err = result.unwrap_err();
    assert!(matches!(err, OutputError::Interrupted), "{err}");
    assert!(
        latency <= 2 * CANCEL_LATENCY,
        "the cancel took {latency:?} to stop the build"
    );
    assert_no_output(work.path(), &["large.tar"]);
}
