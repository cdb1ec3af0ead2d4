//! Profile values that are paths or privileges in disguise, and the
//! messages bad profiles and recipes get.

use super::*;

/// The worker profile with `extra` appended (sysctls, files, …).
fn worker_with(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo_root().join("profiles/worker.yaml")).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, format!("{text}{extra}")).unwrap();
    p
}

/// The worker profile with `lines` added to its `sysctls:` mapping.
fn worker_with_sysctls(dir: &Path, lines: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo_root().join("profiles/worker.yaml")).unwrap();
    assert!(text.contains("\nsysctls:\n"), "{text}");
    let p = dir.join("p.yaml");
    std::fs::write(
        &p,
        text.replace("\nsysctls:\n", &format!("\nsysctls:\n{lines}")),
    )
    .unwrap();
    p
}

/// `imgbuild validate PROFILE` against the shipped debian-12 recipe (the
/// profile sits in a temporary directory, away from image-recipes/).
fn validate(profile: &Path) -> std::process::Output {
    let recipe = repo_root().join("image-recipes/debian-12.yaml");
    imgbuild(
        &[
            "validate",
            profile.to_str().unwrap(),
            "--recipe",
            recipe.to_str().unwrap(),
        ],
        &[],
    )
}

/// Line (1-based) of the first line of `path` containing `needle`.
fn line_of(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in {}", path.display()))
        + 1
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `imgbuild validate` and `imgbuild build` both refuse `profile` with
/// `message`, and the build writes nothing: no artifact, no cache entry.
fn refused_everywhere(dir: &Path, profile: &Path, message: &str) {
    let o = validate(profile);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        stderr(&o).contains(message),
        "{message:?} not in:\n{}",
        text(&o)
    );

    let base = make_base(dir);
    let recipe = write_recipe(dir, &base, None);
    let out = dir.join("out");
    let cache_before = tree(&dir.join("cache"));
    let o = build_profile(dir, profile, &recipe, &out);
    assert!(!o.status.success(), "{}", text(&o));
    let err = stderr(&o);
    assert!(err.contains(message), "{message:?} not in:\n{err}");
    assert_eq!(err.matches(message).count(), 1, "once: {err}");
    assert_nothing_written(dir, &out, &cache_before);
}

#[test]
fn a_sysctl_named_like_a_path_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let p = worker_with_sysctls(
        dir.path(),
        "  ../../../etc/passwd: \"root::0:0::/root:/bin/sh\"\n",
    );
    let line = line_of(&p, "../../../etc/passwd");
    refused_everywhere(
        dir.path(),
        &p,
        &format!(
            "p.yaml:{line}:3: sysctls.\"../../../etc/passwd\": \"../../../etc/passwd\" contains '..': a sysctl name is dotted and cannot climb out of /proc/sys — write it the way sysctl.d(5) does, e.g. fs.inotify.max_user_watches"
        ),
    );
}

#[test]
fn a_sysctl_value_with_a_newline_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = worker_with_sysctls(
        dir.path(),
        "  kernel.panic: \"10\\nkernel.core_pattern = |/bin/sh -c x\"\n",
    );
    let line = line_of(&p, "kernel.panic");
    refused_everywhere(
        dir.path(),
        &p,
        &format!("p.yaml:{line}:3: sysctls.kernel.panic: the value \"10\\nkernel.core_pattern = |/bin/sh -c x\" contains '\\n'; each sysctl is one line `name = value` — give the value on one line"),
    );
}

#[test]
fn a_module_name_with_a_slash_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = worker_with(dir.path(), "p.yaml", "modules:\n  - overlay\n  - ../../x\n");
    let line = line_of(&p, "../../x");
    refused_everywhere(
        dir.path(),
        &p,
        &format!("p.yaml:{line}:3: modules[1]: \"../../x\" is not a kernel module name — modules-load.d(5) takes one name per line"),
    );
}

#[test]
fn a_file_under_proc_or_climbing_with_dotdot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = worker_with(
        dir.path(),
        "p.yaml",
        "files:\n  - path: /proc/sys/kernel/core_pattern\n    content: x\n",
    );
    let line = line_of(&p, "/proc/sys");
    refused_everywhere(
        dir.path(),
        &p,
        &format!("p.yaml:{line}:5: files[0].path: /proc/sys/kernel/core_pattern is under /proc: /proc is the kernel's procfs, mounted over the image at boot, so the file would be hidden — set kernel parameters with sysctls:"),
    );

    let dir = tempfile::tempdir().unwrap();
    let p = worker_with(
        dir.path(),
        "p.yaml",
        "files:\n  - path: /etc/../etc/shadow\n    content: x\n",
    );
    let line = line_of(&p, "/etc/../etc/shadow");
    refused_everywhere(
        dir.path(),
        &p,
        &format!("p.yaml:{line}:5: files[0].path: \"/etc/../etc/shadow\" contains '..' — write the normalized path without '..', e.g. /etc/motd"),
    );
}

#[test]
fn risky_files_build_with_warnings_in_validate_and_in_the_build_log() {
    let dir = tempfile::tempdir().unwrap();
    let p = worker_with(
        dir.path(),
        "p.yaml",
        "files:\n  - path: /etc/shadow\n    content: \"root:*:19000:0:99999:7:::\\n\"\n  - path: /usr/local/bin/helper\n    content: \"#!/bin/sh\\n\"\n    mode: \"4755\"\n  - path: /srv/data\n    content: x\n    uid: 70000\n",
    );
    let expected = [
        format!(
            "p.yaml:{}:5: files[0].path: mode 0644 (the default) lets every user read /etc/shadow, which holds secrets — use mode \"0600\"",
            line_of(&p, "/etc/shadow")
        ),
        format!(
            "p.yaml:{}:5: files[1].mode: mode 4755 makes /usr/local/bin/helper set-user-ID with root ownership: whoever runs it gets root's rights — drop the 4000 bits (e.g. \"0755\") unless it must grant them",
            line_of(&p, "\"4755\"")
        ),
        format!(
            "p.yaml:{}:5: files[2].uid: uid 70000 is beyond what an unprivileged Proxmox container maps (ids 0-65535, to 100000-165535 on the host): there the file belongs to nobody (65534) — use an id below 65536",
            line_of(&p, "uid: 70000")
        ),
    ];

    let o = validate(&p);
    assert!(o.status.success(), "{}", text(&o));
    let err = stderr(&o);
    for w in &expected {
        assert!(
            err.contains(&format!(
                "warning: {}",
                p.parent().unwrap().join(w).display()
            )),
            "{w:?} not in:\n{}",
            text(&o)
        );
    }
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(", 3 warnings)"),
        "{}",
        text(&o)
    );

    let base = make_base(dir.path());
    let recipe = write_recipe(dir.path(), &base, None);
    let out = dir.path().join("out");
    let o = build_profile(dir.path(), &p, &recipe, &out);
    assert!(o.status.success(), "{}", text(&o));
    let log = stderr(&o);
    for w in &expected {
        let shown = format!("WARN {}", p.parent().unwrap().join(w).display());
        assert_eq!(log.matches(&shown).count(), 1, "{shown:?} once in:\n{log}");
    }
    let t = out.join("debian-12-k3s-worker_1.34.3-k3s1-1_amd64.tar.zst");
    assert!(list(&t).contains(&"./usr/local/bin/helper".to_string()));
    // The manifest keeps what the build went on with.
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            out.join("debian-12-k3s-worker_1.34.3-k3s1-1_amd64.tar.zst.manifest.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let recorded: Vec<String> = m["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_owned())
        // Where the release's checksum file cannot be fetched, the shipped
        // profile's K3s digest is a warning of its own (k3s_digest.rs).
        .filter(|w| !w.starts_with("no sha256 pinned for K3s"))
        .collect();
    let wanted: Vec<String> = expected
        .iter()
        .map(|w| p.parent().unwrap().join(w).display().to_string())
        .collect();
    assert_eq!(recorded, wanted);
}

/// `files[].source` reads the build host: its own secrets and live state are
/// refused however they are named (absolute, `..`, a symlink next to the
/// profile); a file the host keeps private builds with a warning.
#[test]
fn a_files_source_never_bakes_the_build_hosts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // DIR is each case's directory, where its profile is.
    let cases = [
        (
            "/etc/shadow",
            "/etc/shadow is the build host's password hashes",
        ),
        (
            "UP/etc/gshadow",
            "/etc/gshadow (DIR/UP/etc/gshadow resolves to it) is the build host's password hashes",
        ),
        (
            "innocent",
            "/etc/shadow (DIR/innocent resolves to it) is the build host's password hashes",
        ),
        (
            "/dev/zero",
            "/dev/zero is under /dev, the build host's live state",
        ),
        (
            "/proc/version",
            "/proc/version is under /proc, the build host's live state",
        ),
        (".", "DIR is a directory; a source is one regular file"),
        (
            "absent",
            "DIR/absent cannot be read: No such file or directory",
        ),
    ];
    for (i, (source, message)) in cases.iter().enumerate() {
        let case = d.join(format!("case{i}"));
        std::fs::create_dir_all(&case).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", case.join("innocent")).unwrap();
        let up = vec![".."; case.components().count() - 1].join("/");
        let source = source.replace("UP", &up);
        let p = worker_with(
            &case,
            "p.yaml",
            &format!("files:\n  - path: /etc/x\n    source: {source:?}\n"),
        );
        // UP first: the temporary directory's random name may contain "UP".
        let message = message
            .replace("UP", &up)
            .replace("DIR", &case.display().to_string());
        refused_everywhere(&case, &p, &format!("files[0].source: {message}"));
    }

    // A private file of the host's, not a known secret: a warning.
    let private = d.join("wg.conf");
    std::fs::write(&private, "PrivateKey = x\n").unwrap();
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let p = worker_with(
        d,
        "p.yaml",
        "files:\n  - path: /etc/wg.conf\n    source: wg.conf\n",
    );
    let o = validate(&p);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        stderr(&o).contains(&format!(
            "files[0].source: the build host keeps {} from other users (mode 0600, owner uid 0); it is copied into every image made from this profile, and mode 0644 lets every user of every node read it",
            private.display()
        )),
        "{}",
        text(&o)
    );
}

#[test]
fn type_errors_speak_yaml_not_rust() {
    let dir = tempfile::tempdir().unwrap();
    let k3s_list = dir.path().join("k3s-list.yaml");
    std::fs::write(
        &k3s_list,
        "name: x\nrecipe: debian-12\nk3s:\n  - v1.34.3+k3s1\n  - agent\n",
    )
    .unwrap();
    let scalar = dir.path().join("scalar.yaml");
    std::fs::write(&scalar, "k3s-worker\n").unwrap();
    let o = imgbuild(
        &[
            "validate",
            k3s_list.to_str().unwrap(),
            scalar.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{}:4:3: k3s: invalid type: sequence, expected a mapping with keys version, role, ha, control-plane-taint, sha256, mirror, trust-mirror-checksums, config, firewall\n", k3s_list.display())),
        "{err}"
    );
    assert!(
        err.contains(&format!("{}:1:1: (document): invalid type: string \"k3s-worker\", expected a mapping with keys name, description, recipe, k3s, bake, sysctls, modules, files, checks, outputs, lxc, qcow2\n", scalar.display())),
        "{err}"
    );
    for leak in ["struct", "enum", "K3sSpec", "Profile"] {
        assert!(!err.contains(leak), "{leak} in {err}");
    }
}

#[test]
fn a_duplicate_key_points_at_its_second_occurrence() {
    let dir = tempfile::tempdir().unwrap();
    let p = worker_with_sysctls(dir.path(), "  fs.inotify.max_user_watches: 1\n");
    let first = line_of(&p, "fs.inotify.max_user_watches");
    let second = std::fs::read_to_string(&p)
        .unwrap()
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("fs.inotify.max_user_watches"))
        .nth(1)
        .unwrap()
        .0
        + 1;
    let o = validate(&p);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&format!("p.yaml:{second}:3: sysctls.fs.inotify.max_user_watches: `fs.inotify.max_user_watches` is given twice (first on line {first}) — keep one of them")),
        "{}",
        text(&o)
    );
}

#[test]
fn a_missing_recipe_lists_the_recipes_there_and_the_closest() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    let recipes = dir.path().join("image-recipes");
    std::fs::create_dir_all(&profiles).unwrap();
    std::fs::create_dir_all(&recipes).unwrap();
    for r in ["debian-12", "ubuntu-24.04"] {
        std::fs::copy(
            repo_root().join(format!("image-recipes/{r}.yaml")),
            recipes.join(format!("{r}.yaml")),
        )
        .unwrap();
    }
    let text_in = std::fs::read_to_string(repo_root().join("profiles/worker.yaml"))
        .unwrap()
        .replace("recipe: debian-12", "recipe: debian12");
    let p = profiles.join("p.yaml");
    std::fs::write(&p, &text_in).unwrap();
    let o = imgbuild(&["validate", p.to_str().unwrap()], &[]);
    assert!(!o.status.success());
    let shown = recipes.canonicalize().unwrap();
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "recipe: recipe \"debian12\" not found in {} or ",
            shown.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "— did you mean debian-12? {} holds debian-12, ubuntu-24.04; or give the path of a recipe ending in .yaml",
            shown.display()
        )),
        "{err}"
    );
}

/// A recipe whose lxc base is a URL (never fetched: the test is offline).
fn url_recipe(dir: &Path, pin: &str) -> PathBuf {
    let p = dir.join("url.yaml");
    std::fs::write(
        &p,
        format!("name: tiny\ndistro: debian\nrelease: \"12\"\nlxc:\n  tarball:\n    url: http://127.0.0.1:9/base.tar.gz\n{pin}"),
    )
    .unwrap();
    p
}

fn build_offline(dir: &Path, recipe: &Path, out: &Path) -> std::process::Output {
    let profile = repo_root().join("profiles/worker.yaml");
    let mut args = build_args(dir, &profile, recipe, out);
    args.push("--offline".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    imgbuild(&args, &[])
}

#[test]
fn offline_with_a_cold_cache_names_the_url_the_digest_and_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let digest = "ab".repeat(32);
    let recipe = url_recipe(dir.path(), &format!("    sha256: {digest}\n"));
    let out = dir.path().join("out");
    let cache = dir.path().join("cache");
    let o = build_offline(dir.path(), &recipe, &out);
    assert!(!o.status.success(), "{}", text(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "error: building {}: fetching the lxc base of recipe tiny: http://127.0.0.1:9/base.tar.gz (pinned sha256 {digest}; looked for {}/sha256/{digest}): not in cache; run once without --offline\n",
            repo_root().join("profiles/worker.yaml").display(),
            cache.display()
        )),
        "{err}"
    );
    assert_nothing_written(dir.path(), &out, &[]);

    // Without a pin there is nothing to look for.
    let dir = tempfile::tempdir().unwrap();
    let recipe = url_recipe(
        dir.path(),
        "    sha256-url: http://127.0.0.1:9/SHA256SUMS\n",
    );
    let out = dir.path().join("out");
    let o = build_offline(dir.path(), &recipe, &out);
    assert!(!o.status.success(), "{}", text(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "http://127.0.0.1:9/base.tar.gz (no sha256 is pinned and none is recorded for this URL in {}, so offline mode has no digest to look for: pin `sha256:` in the recipe to build offline): not in cache; run once without --offline\n",
            dir.path().join("cache").display()
        )),
        "{err}"
    );
    assert_nothing_written(dir.path(), &out, &[]);
}

/// Each OS error is printed once, in one `error:` line.
fn os_error_once(o: &std::process::Output, expected: &str) {
    assert!(!o.status.success(), "{}", text(o));
    let err = stderr(o);
    assert_eq!(err.matches("(os error").count(), 1, "{err}");
    assert!(err.contains(expected), "{expected:?} not in:\n{err}");
    assert_eq!(err.matches("error:").count(), 1, "{err}");
}

#[test]
fn os_errors_are_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let missing = dir.path().join("missing.yaml");

    // A missing profile.
    let o = imgbuild(
        &[
            "build",
            missing.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    os_error_once(
        &o,
        &format!(
            "error: {}: cannot read the profile: No such file or directory (os error 2) — check the path; the shipped profiles are in profiles/\n",
            missing.display()
        ),
    );

    // A missing recipe file.
    let o = build(dir.path(), &missing, &out);
    os_error_once(
        &o,
        &format!(
            "error: {}: cannot read the recipe: No such file or directory (os error 2) — check the path, or name a recipe in image-recipes/\n",
            missing.display()
        ),
    );

    // A base that cannot be read (a directory where the tarball should be).
    let not_a_file = dir.path().join("base.tar.gz");
    std::fs::create_dir(&not_a_file).unwrap();
    let recipe = write_recipe(dir.path(), &not_a_file, None);
    let o = build(dir.path(), &recipe, &out);
    os_error_once(
        &o,
        &format!(
            "reading {}: Is a directory (os error 21)\n",
            not_a_file.display()
        ),
    );
    assert!(tree(&out).is_empty(), "{:?}", tree(&out));
}

#[test]
fn no_colour_escapes_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let p = worker_with(
        dir.path(),
        "p.yaml",
        "files:\n  - path: /etc/shadow\n    content: x\n",
    );
    let recipe = repo_root().join("image-recipes/debian-12.yaml");
    for args in [
        vec!["no-such-command"],
        vec!["build"],
        vec!["validate", "/nonexistent.yaml"],
        vec![
            "validate",
            p.to_str().unwrap(),
            "--recipe",
            recipe.to_str().unwrap(),
        ],
    ] {
        let o = imgbuild(&args, &[]);
        assert!(
            !o.stderr.contains(&0x1b) && !o.stdout.contains(&0x1b),
            "{args:?}: {}",
            text(&o)
        );
    }
}
