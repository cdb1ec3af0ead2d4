//! Package bootstraps: a rootfs tarball made by mmdebstrap, cached by a hash
//! of everything that shapes it, so a spec is bootstrapped once and later
//! builds (and `--offline` builds) reuse the tarball.
//!
//! The cache freezes package versions at the first run: that is what makes
//! rebuilds reproducible. To pick up updates, change the spec or delete
//! `bootstrap/<key>.json` from the cache.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget};
use node_spec::Sha256Hex;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::cache::{now_secs, BootstrapRecord};
use super::{hash_file, Cache, FetchOptions, Fetched, SourceError};
use crate::command::{display_command, find_in_path, run_command_observed, CommandError};
use crate::plan::schema::{BootstrapSpec, BootstrapTool};

/// Version of what goes into [`bootstrap_key`] and how the tool is invoked.
/// Bump it when either changes, so old cache entries are not reused for a
/// rootfs that would now be made differently.
pub const BOOTSTRAP_FORMAT: u32 = 1;

const MMDEBSTRAP_INSTALL: &str = "apt-get install -y mmdebstrap";

/// The spec in canonical form: lists sorted and deduplicated, since
/// neither package nor component order changes the result.
#[derive(Debug, Serialize)]
struct KeyInput<'a> {
    format: u32,
    tool: &'static str,
    suite: &'a str,
    mirror: Option<&'a str>,
    variant: &'a str,
    components: Vec<&'a str>,
    packages: Vec<&'a str>,
    arch: &'a str,
}

fn tool_name(tool: BootstrapTool) -> &'static str {
    match tool {
        BootstrapTool::Mmdebstrap => "mmdebstrap",
        BootstrapTool::Dnf => "dnf",
    }
}

fn sorted(items: &[String]) -> Vec<&str> {
    let mut v: Vec<&str> = items.iter().map(String::as_str).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The cache key of a bootstrap: sha256 of the canonical spec plus `arch`
/// and [`BOOTSTRAP_FORMAT`].
pub fn bootstrap_key(spec: &BootstrapSpec, arch: &str) -> Sha256Hex {
    let input = KeyInput {
        format: BOOTSTRAP_FORMAT,
        tool: tool_name(spec.tool),
        suite: &spec.suite,
        mirror: spec.mirror.as_deref(),
        variant: &spec.variant,
        components: sorted(&spec.components),
        packages: sorted(&spec.packages),
        arch,
    };
    // Serializing plain strings and numbers cannot fail; the fallback keeps
    // this function total without an unwrap.
    let json = serde_json::to_vec(&input).unwrap_or_else(|e| format!("{input:?}/{e}").into_bytes());
    Sha256Hex::from_digest(&Sha256::digest(&json))
}

/// Make (or reuse from the cache) the rootfs tarball for `spec` on `arch`.
pub fn bootstrap_rootfs(
    spec: &BootstrapSpec,
    arch: &str,
    cache: &Cache,
    opts: &FetchOptions,
) -> Result<Fetched, SourceError> {
    bootstrap_with_path(spec, arch, cache, opts, std::env::var_os("PATH").as_deref())
}

/// [`bootstrap_rootfs`] with the PATH to search for the tool given explicitly,
/// so tests can run a stand-in tool or none at all.
fn bootstrap_with_path(
    spec: &BootstrapSpec,
    arch: &str,
    cache: &Cache,
    opts: &FetchOptions,
    path_var: Option<&OsStr>,
) -> Result<Fetched, SourceError> {
    if spec.tool == BootstrapTool::Dnf {
        return Err(SourceError::Unsupported {
            what: format!("bootstrap with dnf (release {})", spec.suite),
            advice: "dnf --installroot bootstrap; use a tarball source for Rocky".into(),
        });
    }
    validate(spec, arch)?;
    let key = bootstrap_key(spec, arch);
    let what = format!(
        "bootstrap {} {} ({arch}, key {key})",
        tool_name(spec.tool),
        spec.suite
    );

    if let Some(rec) = cache.lookup_bootstrap(&key)? {
        match cache.lookup_blob(&rec.sha256)? {
            Some((path, size)) => {
                tracing::info!(suite = %spec.suite, sha256 = %rec.sha256, "using cached bootstrap");
                return Ok(Fetched {
                    path,
                    sha256: rec.sha256,
                    size,
                    origin: rec.command,
                    from_cache: true,
                    catalog: None,
                });
            }
            None => {
                tracing::info!(%what, "indexed rootfs is no longer in the cache; bootstrapping again")
            }
        }
    }
    if opts.offline {
        return Err(SourceError::NotCached { what });
    }

    let tool =
        path_var
            .and_then(|p| find_in_path("mmdebstrap", p))
            .ok_or(SourceError::ToolMissing {
                tool: "mmdebstrap",
                install: MMDEBSTRAP_INSTALL,
            })?;
    // A temp directory rather than a temp file: mmdebstrap picks the output
    // format from the name and creates the file itself. Dropping the
    // directory on any error removes whatever it left.
    let work = cache.temp_dir("bootstrap-")?;
    let _registered = crate::output::leftovers::register(work.path());
    let out = work.path().join("rootfs.tar");
    let mut cmd = Command::new(&tool);
    cmd.args(mmdebstrap_args(spec, arch, &out));
    // SOURCE_DATE_EPOCH and proxy settings reach mmdebstrap through the
    // inherited environment; mmdebstrap honours SOURCE_DATE_EPOCH for mtimes.
    let shown = shown_command(spec, arch);

    let spinner = spinner(opts, &spec.suite);
    let line_sink = spinner.clone();
    let started = Instant::now();
    tracing::info!(command = %shown, "bootstrapping rootfs");
    let run = run_command_observed(&mut cmd, &opts.cancel, move |line| {
        line_sink.set_message(line.to_owned())
    });
    spinner.finish_and_clear();
    match run {
        Ok(_) => {}
        Err(CommandError::Interrupted { command }) => {
            return Err(SourceError::Interrupted {
                what: format!("running {command}"),
            })
        }
        Err(e) => return Err(e.into()),
    }

    let (sha256, size) = hash_file(&out, opts)?;
    let path = cache.commit_path(&out, &sha256)?;
    cache.record_bootstrap(&BootstrapRecord {
        key,
        sha256: sha256.clone(),
        size,
        command: shown.clone(),
        recorded_at: now_secs(),
    })?;
    tracing::info!(size, secs = started.elapsed().as_secs_f32(), %sha256, "bootstrap done");
    Ok(Fetched {
        path,
        sha256,
        size,
        origin: shown,
        from_cache: false,
        catalog: None,
    })
}

/// Arguments for mmdebstrap writing a tarball to `out`:
/// `--variant=V --arch=A [--components=a,b] [--include=p,q] SUITE OUT [MIRROR]`.
fn mmdebstrap_args(spec: &BootstrapSpec, arch: &str, out: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        format!("--variant={}", spec.variant).into(),
        format!("--arch={arch}").into(),
    ];
    let components = sorted(&spec.components);
    if !components.is_empty() {
        args.push(format!("--components={}", components.join(",")).into());
    }
    let packages = sorted(&spec.packages);
    if !packages.is_empty() {
        args.push(format!("--include={}", packages.join(",")).into());
    }
    args.push(spec.suite.clone().into());
    args.push(out.as_os_str().to_owned());
    if let Some(m) = &spec.mirror {
        args.push(m.into());
    }
    args
}

/// The command line for logs, errors and the manifest: the output path is a
/// temp name, so it is shown as `rootfs.tar` to keep the line stable.
fn shown_command(spec: &BootstrapSpec, arch: &str) -> String {
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(mmdebstrap_args(spec, arch, Path::new("rootfs.tar")));
    display_command(&cmd)
}

/// Arguments go to mmdebstrap without a shell, but a value starting with `-`
/// would still be read as an option, and a `,` would split a list.
fn validate(spec: &BootstrapSpec, arch: &str) -> Result<(), SourceError> {
    let bad = |field: &str, value: &str, why: &str| SourceError::InvalidBootstrap {
        what: format!("{field} {value:?}"),
        reason: why.to_owned(),
    };
    for (field, value) in [
        ("suite", spec.suite.as_str()),
        ("variant", &spec.variant),
        ("arch", arch),
    ] {
        if value.is_empty() || value.starts_with('-') || value.contains(char::is_whitespace) {
            return Err(bad(
                field,
                value,
                "must be a non-empty word not starting with '-'",
            ));
        }
    }
    for (field, list) in [("package", &spec.packages), ("component", &spec.components)] {
        for value in list {
            if value.is_empty()
                || value.starts_with('-')
                || value.contains(|c: char| c == ',' || c.is_whitespace())
            {
                return Err(bad(
                    field,
                    value,
                    "must be one name without ',', spaces or a leading '-'",
                ));
            }
        }
    }
    if let Some(m) = &spec.mirror {
        if m.starts_with('-') {
            return Err(bad(
                "mirror",
                m,
                "must be a URL or a sources line, not an option",
            ));
        }
    }
    Ok(())
}

fn spinner(opts: &FetchOptions, suite: &str) -> ProgressBar {
    if !opts.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_prefix(format!("mmdebstrap {suite}"));
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{spinner} {prefix} {elapsed} {wide_msg}")
    {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::Ordering;

    fn spec() -> BootstrapSpec {
        BootstrapSpec {
            tool: BootstrapTool::Mmdebstrap,
            suite: "bookworm".into(),
            mirror: None,
            variant: "apt".into(),
            components: vec![],
            packages: vec!["systemd-sysv".into(), "iproute2".into()],
        }
    }

    /// Empty files in the cache's `tmp/` and `sha256/`.
    fn leftovers(cache: &Cache, dir: &str) -> usize {
        fs::read_dir(cache.root().join(dir))
            .map(|rd| rd.count())
            .unwrap_or(0)
    }

    #[test]
    fn key_is_stable_and_ignores_list_order() {
        let a = spec();
        assert_eq!(
            bootstrap_key(&a, "amd64"),
            bootstrap_key(&a.clone(), "amd64")
        );

        let mut reordered = spec();
        reordered.packages = vec!["iproute2".into(), "systemd-sysv".into(), "iproute2".into()];
        assert_eq!(
            bootstrap_key(&a, "amd64"),
            bootstrap_key(&reordered, "amd64")
        );

        // A pinned value, so an accidental change of the key input (which
        // would orphan every user's cached rootfs) is caught here.
        assert_eq!(
            bootstrap_key(&a, "amd64").as_str(),
            Sha256Hex::from_digest(&Sha256::digest(
                br#"{"format":1,"tool":"mmdebstrap","suite":"bookworm","mirror":null,"variant":"apt","components":[],"packages":["iproute2","systemd-sysv"],"arch":"amd64"}"#
            ))
            .as_str()
        );
    }

    #[test]
    fn key_changes_with_anything_that_shapes_the_rootfs() {
        let base = bootstrap_key(&spec(), "amd64");
        let mut variants = Vec::new();
        let mut s = spec();
        s.suite = "trixie".into();
        variants.push(s);
        let mut s = spec();
        s.mirror = Some("http://127.0.0.1/debian".into());
        variants.push(s);
        let mut s = spec();
        s.variant = "minbase".into();
        variants.push(s);
        let mut s = spec();
        s.components = vec!["main".into(), "contrib".into()];
        variants.push(s);
        let mut s = spec();
        s.packages.push("udev".into());
        variants.push(s);
        for v in &variants {
            assert_ne!(bootstrap_key(v, "amd64"), base, "{v:?}");
        }
        assert_ne!(bootstrap_key(&spec(), "arm64"), base);
    }

    #[test]
    fn mmdebstrap_command_line() {
        let mut s = spec();
        s.components = vec!["non-free-firmware".into(), "main".into()];
        s.mirror = Some("http://127.0.0.1:3142/debian".into());
        assert_eq!(
            shown_command(&s, "amd64"),
            "mmdebstrap --variant=apt --arch=amd64 --components=main,non-free-firmware \
             --include=iproute2,systemd-sysv bookworm rootfs.tar http://127.0.0.1:3142/debian"
        );
        let mut bare = spec();
        bare.packages.clear();
        assert_eq!(
            shown_command(&bare, "amd64"),
            "mmdebstrap --variant=apt --arch=amd64 bookworm rootfs.tar"
        );
    }

    #[test]
    fn option_like_values_are_rejected() {
        let mut s = spec();
        s.packages.push("--hook-dir=/tmp".into());
        let dir = tempfile::tempdir().unwrap();
        let err = bootstrap_with_path(
            &s,
            "amd64",
            &Cache::new(dir.path()),
            &FetchOptions::default(),
            None,
        )
        .unwrap_err();
        assert!(matches!(err, SourceError::InvalidBootstrap { .. }), "{err}");
        assert!(err.to_string().contains("--hook-dir"), "{err}");

        let mut s = spec();
        s.packages = vec!["a,b".into()];
        assert!(validate(&s, "amd64").is_err());
        assert!(validate(&spec(), "-x").is_err());
        assert!(validate(&spec(), "amd64").is_ok());
    }

    #[test]
    fn cache_hit_does_not_run_the_tool() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        let content = b"pretend rootfs";
        let digest = Sha256Hex::from_digest(&Sha256::digest(content));
        let mut tmp = cache.temp_file("t-").unwrap();
        tmp.write_all(content).unwrap();
        cache.commit_temp(tmp, &digest).unwrap();
        cache
            .record_bootstrap(&BootstrapRecord {
                key: bootstrap_key(&spec(), "amd64"),
                sha256: digest.clone(),
                size: content.len() as u64,
                command: "mmdebstrap --variant=apt bookworm rootfs.tar".into(),
                recorded_at: 0,
            })
            .unwrap();

        // An empty PATH: running the tool would fail with ToolMissing.
        for offline in [false, true] {
            let opts = FetchOptions {
                offline,
                ..FetchOptions::default()
            };
            let got =
                bootstrap_with_path(&spec(), "amd64", &cache, &opts, Some(OsStr::new(""))).unwrap();
            assert!(got.from_cache);
            assert_eq!(got.sha256, digest);
            assert_eq!(got.size, content.len() as u64);
            assert_eq!(got.path, cache.blob_path(&digest));
            assert_eq!(got.origin, "mmdebstrap --variant=apt bookworm rootfs.tar");
        }
    }

    #[test]
    fn offline_miss_and_missing_tool_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let offline = FetchOptions {
            offline: true,
            ..FetchOptions::default()
        };
        let err = bootstrap_with_path(&spec(), "amd64", &cache, &offline, None).unwrap_err();
        assert!(matches!(err, SourceError::NotCached { .. }), "{err}");
        assert!(err.to_string().contains("bookworm"), "{err}");
        assert!(
            err.to_string().contains("run once without --offline"),
            "{err}"
        );

        let err = bootstrap_with_path(
            &spec(),
            "amd64",
            &cache,
            &FetchOptions::default(),
            Some(OsStr::new("/nonexistent")),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "mmdebstrap not found; install it with: apt-get install -y mmdebstrap"
        );
    }

    #[test]
    fn dnf_is_a_clear_unsupported_error() {
        let mut s = spec();
        s.tool = BootstrapTool::Dnf;
        s.suite = "9".into();
        let dir = tempfile::tempdir().unwrap();
        let err = bootstrap_rootfs(
            &s,
            "amd64",
            &Cache::new(dir.path()),
            &FetchOptions::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains(
                "not supported yet: dnf --installroot bootstrap; use a tarball source for Rocky"
            ),
            "{err}"
        );
    }

    /// A stand-in mmdebstrap in its own directory, used as the whole PATH.
    fn fake_tool(dir: &Path, script: &str) -> OsString {
        let bin = dir.join("bin");
        fs::create_dir(&bin).unwrap();
        let tool = bin.join("mmdebstrap");
        fs::write(&tool, script).unwrap();
        fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).unwrap();
        bin.into_os_string()
    }

    #[test]
    fn miss_runs_the_tool_once_then_hits() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        let log = dir.path().join("calls.log");
        // Records its arguments, checks stdin is not a pipe it could read
        // sources from, and writes the tarball to the argument ending in .tar.
        let script = format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\n\
             if read -r line; then echo 'stdin was not empty' >&2; exit 9; fi\n\
             for a in \"$@\"; do case \"$a\" in *.tar) out=\"$a\";; esac; done\n\
             printf 'fake rootfs' > \"$out\"\n",
            log.display()
        );
        let path = fake_tool(dir.path(), &script);

        let first = bootstrap_with_path(
            &spec(),
            "amd64",
            &cache,
            &FetchOptions::default(),
            Some(&path),
        )
        .unwrap();
        assert!(!first.from_cache);
        assert_eq!(
            first.sha256,
            Sha256Hex::from_digest(&Sha256::digest(b"fake rootfs"))
        );
        assert_eq!(first.size, 11);
        assert_eq!(first.path, cache.blob_path(&first.sha256));
        assert_eq!(
            first.origin,
            "mmdebstrap --variant=apt --arch=amd64 --include=iproute2,systemd-sysv bookworm rootfs.tar"
        );
        let calls = fs::read_to_string(&log).unwrap();
        assert_eq!(calls.lines().count(), 1);
        assert!(
            calls.starts_with(
                "--variant=apt --arch=amd64 --include=iproute2,systemd-sysv bookworm /"
            ),
            "{calls}"
        );
        assert_eq!(leftovers(&cache, "tmp"), 0);

        let second = bootstrap_with_path(
            &spec(),
            "amd64",
            &cache,
            &FetchOptions::default(),
            Some(&path),
        )
        .unwrap();
        assert!(second.from_cache);
        assert_eq!(second.sha256, first.sha256);
        assert_eq!(
            fs::read_to_string(&log).unwrap().lines().count(),
            1,
            "no second run"
        );
    }

    #[test]
    fn tool_failure_shows_command_and_stderr_and_caches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        let path = fake_tool(
            dir.path(),
            "#!/bin/sh\nfor a in \"$@\"; do case \"$a\" in *.tar) : > \"$a\";; esac; done\n\
             echo 'E: cannot find a source for bookworm' >&2\nexit 25\n",
        );
        let err = bootstrap_with_path(
            &spec(),
            "amd64",
            &cache,
            &FetchOptions::default(),
            Some(&path),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("--include=iproute2,systemd-sysv bookworm"),
            "{msg}"
        );
        assert!(
            msg.contains("E: cannot find a source for bookworm"),
            "{msg}"
        );
        assert!(msg.contains("exit status: 25"), "{msg}");
        assert_eq!(leftovers(&cache, "tmp"), 0);
        assert_eq!(leftovers(&cache, "sha256"), 0);
        assert_eq!(
            cache
                .lookup_bootstrap(&bootstrap_key(&spec(), "amd64"))
                .unwrap(),
            None
        );
    }

    #[test]
    fn cancel_stops_the_tool_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        let path = fake_tool(dir.path(), "#!/bin/sh\nexec sleep 30\n");
        let opts = FetchOptions::default();
        let flag = opts.cancel.clone();
        let setter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            flag.store(true, Ordering::SeqCst);
        });
        let started = Instant::now();
        let err = bootstrap_with_path(&spec(), "amd64", &cache, &opts, Some(&path)).unwrap_err();
        setter.join().unwrap();
        assert!(matches!(err, SourceError::Interrupted { .. }), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(leftovers(&cache, "tmp"), 0);
    }
}
