//! Proxies through the pipeline: `k3s.proxy` in the metadata and the
//! agent's own environment end up in K3s's 0600 env file, as install.sh's
//! `create_env_file` puts them there; bad values are refused with the file
//! and key; a joining node whose server would be reached through the proxy
//! is warned about; a change after K3s was started restarts it.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use firstboot_agent::k3s::proxy::ProxyEnv;
use firstboot_agent::rootfs::Root;
use firstboot_agent::run::{run, RunOptions};
use firstboot_agent::system::CommandOutput;

const ENV_FILE: &str = "/etc/systemd/system/k3s-agent.service.env";

fn agent(k3s_extra: &str) -> String {
    format!("#cloud-config\nk3s:\n  role: agent\n  server: https://10.0.0.10:6443\n  token: {TOKEN}\n{k3s_extra}")
}

fn with_env(pairs: &[(&str, &str)]) -> RunOptions {
    RunOptions {
        env: ProxyEnv::from_pairs(pairs),
        ..RunOptions::default()
    }
}

#[test]
fn metadata_and_environment_proxies_go_into_the_env_file() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "");
    seed(
        r,
        "i1",
        &agent("  proxy:\n    https: http://proxy.lan:3128\n    no-proxy: [10.0.0.0/8, .lan]\n"),
    );
    let res = run(
        &Root::new(r),
        &fake_for(r),
        &with_env(&[
            ("HTTPS_PROXY", "http://from-env:1"),
            ("http_proxy", "http://env-proxy:8080"),
            ("CONTAINERD_HTTP_PROXY", "http://registry-proxy:3128"),
            ("K3S_URL", "https://not-copied:6443"),
        ]),
    )
    .unwrap();
    assert!(res.finished, "{res:#?}");
    assert_eq!(
        read(r, ENV_FILE),
        format!(
            "K3S_TOKEN='{TOKEN}'\n\
             http_proxy='http://env-proxy:8080'\n\
             HTTPS_PROXY='http://proxy.lan:3128'\n\
             NO_PROXY='10.0.0.0/8,.lan'\n\
             CONTAINERD_HTTP_PROXY='http://registry-proxy:3128'\n"
        )
    );
    let mode = std::fs::metadata(r.join(&ENV_FILE[1..]))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        res.proxy_from_environment,
        ["http_proxy", "CONTAINERD_HTTP_PROXY"]
    );
    assert!(res.k3s_settings_from.contains_key("k3s.proxy.https"));
    assert!(
        !res.warnings.iter().any(|w| w.contains("proxy")),
        "{:?}",
        res.warnings
    );
    let saved = read(r, "/var/lib/firstboot-agent/result.json");
    assert!(
        !saved.contains("env-proxy") && !saved.contains("proxy.lan"),
        "proxy values in result.json: {saved}"
    );
}

#[test]
fn an_empty_metadata_value_switches_the_environments_proxy_off() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "");
    seed(r, "i1", &agent("  proxy:\n    https: \"\"\n"));
    run(
        &Root::new(r),
        &fake_for(r),
        &with_env(&[("HTTPS_PROXY", "http://from-env:1"), ("https_proxy", "x:1")]),
    )
    .unwrap();
    assert_eq!(read(r, ENV_FILE), format!("K3S_TOKEN='{TOKEN}'\n"));
}

#[test]
fn bad_proxy_values_name_the_file_line_and_key_and_change_nothing() {
    for (extra, env, expect) in [
        (
            "  proxy:\n    http: \"http://a\\nb\"\n",
            &[][..],
            "/var/lib/cloud/seed/nocloud/user-data:6: k3s.proxy.http: contains a newline",
        ),
        (
            "  proxy:\n    https: ftp://u:secret@proxy.lan\n",
            &[],
            "user-data:6: k3s.proxy.https: \"ftp://u:***@proxy.lan\" has the scheme \"ftp\"",
        ),
        (
            "  proxy:\n    no-proxy: [\"a b\"]\n",
            &[],
            "user-data:6: k3s.proxy.no-proxy: \"a b\" contains white space",
        ),
        (
            "  proxy:\n    no-proxy: {a: 1}\n",
            &[],
            "k3s.proxy.no-proxy: expected a list",
        ),
        (
            "  proxy:\n    ftp: x\n",
            &[],
            "unknown field `ftp`, expected one of `http`, `https`, `no-proxy`",
        ),
        (
            "",
            &[("HTTPS_PROXY", "http://p'x")][..],
            "firstboot-agent's environment: HTTPS_PROXY: \"http://p'x\" contains white space, quotes or backslashes",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        node_root(r, "");
        seed(r, "i1", &agent(extra));
        let sys = fake_for(r);
        let e = format!(
            "{:#}",
            run(&Root::new(r), &sys, &with_env(env)).unwrap_err()
        );
        assert!(e.contains(expect), "{extra:?}:\n{e}");
        assert!(!e.contains("secret"), "{e}");
        assert!(sys.calls().is_empty());
        assert!(!r.join(&ENV_FILE[1..]).exists());
    }
}

#[test]
fn a_server_behind_the_proxy_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "");
    seed(
        r,
        "i1",
        &agent("  proxy:\n    https: http://u:pw@proxy.lan:3128\n"),
    );
    let res = run(&Root::new(r), &fake_for(r), &RunOptions::default()).unwrap();
    assert!(res.finished);
    let proxy: Vec<&String> = res
        .warnings
        .iter()
        .filter(|w| w.contains("proxy"))
        .collect();
    assert_eq!(
        proxy,
        ["metadata: proxy: K3s would reach its server https://10.0.0.10:6443 through the proxy http://u:***@proxy.lan:3128 (k3s.proxy.https), as 10.0.0.10 is not in NO_PROXY — add the nodes' network (e.g. 10.0.0.0/8) to k3s.proxy.no-proxy"]
    );
}

/// A K3s started by an earlier run is restarted when its env file changed
/// (install.sh restarts only on a change too); unchanged, it is left alone.
#[test]
fn a_changed_env_file_restarts_the_k3s_an_earlier_run_started() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "");
    seed(r, "i1", &agent(""));
    let mut sys = fake_for(r);
    sys.systemctl_answers.insert(
        "is-active k3s-agent.service".into(),
        CommandOutput {
            success: false,
            stdout: "failed\n".into(),
            stderr: String::new(),
        },
    );
    run(&Root::new(r), &sys, &RunOptions::default()).unwrap_err();

    // The fix is a proxy: the env file changes, K3s is restarted.
    seed(
        r,
        "i1",
        &agent("  proxy:\n    https: http://proxy.lan:3128\n    no-proxy: 10.0.0.0/8\n"),
    );
    let sys = fake_for(r);
    let res = run(&Root::new(r), &sys, &RunOptions::default()).unwrap();
    assert!(res.finished, "{res:#?}");
    assert_eq!(
        sys.systemctl_calls(),
        [
            "daemon-reload",
            "restart --no-block k3s-agent.service",
            "is-active k3s-agent.service"
        ]
    );
    let restart = res.steps.iter().find(|s| s.name == "k3s-restart").unwrap();
    assert_eq!(
        restart.message,
        format!("k3s-agent.service restarted: {ENV_FILE} changed")
    );
}

/// When K3s must be downloaded through a proxy, the preflight checks the
/// proxy (its name and port), not the mirror's name, which only the proxy
/// may be able to resolve; a failed download says which proxy it went
/// through.
#[test]
fn the_preflight_checks_the_proxy_the_download_goes_through() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "");
    std::fs::remove_file(r.join(&node_spec::BAKED_K3S_PATH[1..])).unwrap();
    seed(
        r,
        "i1",
        &agent("  proxy:\n    https: http://proxy.invalid:3128\n    no-proxy: 10.0.0.0/8\n"),
    );
    let sys = fake_for(r);
    let e = run_err(r, &sys);
    use firstboot_agent::system::Call;
    let calls = sys.calls();
    assert!(
        calls.contains(&Call::Resolve("proxy.invalid".into())),
        "{calls:?}"
    );
    assert!(calls.contains(&Call::TcpConnect("127.0.0.1:3128".parse().unwrap())));
    assert!(
        !calls.contains(&Call::Resolve("github.com".into())),
        "{calls:?}"
    );
    assert!(
        e.contains("step k3s-binary failed")
            && e.contains("through the proxy http://proxy.invalid:3128, k3s.proxy.https"),
        "{e}"
    );
}

/// The readiness run is firstboot-agent-ready.service, which does not get
/// the drop-ins of firstboot-agent.service: it writes the env file with the
/// proxies the first run found, and so does not restart K3s.
#[test]
fn the_readiness_run_keeps_the_proxies_of_the_first_runs_environment() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "");
    seed(r, "i1", &agent("  proxy:\n    no-proxy: 10.0.0.0/8\n"));
    let first = RunOptions {
        no_wait: true,
        env: ProxyEnv::from_pairs(&[("HTTPS_PROXY", "http://u:pw@proxy.lan:3128")]),
    };
    run(&Root::new(r), &fake_for(r), &first).unwrap();
    let env_file = read(r, ENV_FILE);
    assert!(
        env_file.contains("HTTPS_PROXY='http://u:pw@proxy.lan:3128'\n"),
        "{env_file}"
    );
    let state = std::fs::metadata(r.join("var/lib/firstboot-agent/state.json")).unwrap();
    assert_eq!(state.permissions().mode() & 0o777, 0o600);

    let sys = fake_for(r);
    let res = run(&Root::new(r), &sys, &RunOptions::default()).unwrap();
    assert!(res.finished, "{res:#?}");
    assert_eq!(read(r, ENV_FILE), env_file);
    assert_eq!(sys.systemctl_calls(), ["is-active k3s-agent.service"]);
    assert_eq!(res.proxy_from_environment, ["HTTPS_PROXY"]);
}

/// `k3s.proxy` is merged key by key, like `k3s.config`: a proxy every node
/// shares in vendor-data, a node's own no-proxy in user-data.
#[test]
fn vendor_data_and_user_data_proxies_merge_key_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    node_root(r, "");
    seed_with_vendor(
        r,
        "i1",
        &agent("  proxy:\n    no-proxy: [10.0.0.0/8]\n"),
        "#cloud-config\nk3s:\n  proxy:\n    https: http://shared-proxy:3128\n    no-proxy: [.lan]\n",
    );
    let res = run(&Root::new(r), &fake_for(r), &RunOptions::default()).unwrap();
    assert!(res.finished);
    assert_eq!(
        read(r, ENV_FILE),
        format!(
            "K3S_TOKEN='{TOKEN}'\nHTTPS_PROXY='http://shared-proxy:3128'\nNO_PROXY='10.0.0.0/8'\n"
        )
    );
    assert_eq!(
        res.k3s_settings_from["k3s.proxy.https"],
        "/var/lib/cloud/seed/nocloud/vendor-data:3"
    );
    assert_eq!(
        res.k3s_settings_from["k3s.proxy.no-proxy"],
        "/var/lib/cloud/seed/nocloud/user-data:6"
    );
}
