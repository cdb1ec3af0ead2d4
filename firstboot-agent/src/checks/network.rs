//! Network and DNS preflight: a global address, a default route, the names
//! that matter resolving, and TCP reach of the server for joining nodes —
//! retried with backoff inside an overall timeout.
//!
//! Addresses and routes come from /proc (pure parsers below), so the check
//! needs no `ip` binary and works under `--root`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use node_spec::retry::{retry, Backoff, GaveUp};

use super::Finding;
use crate::metadata::merge::url_host_port;
use crate::metadata::NodeConfig;
use crate::rootfs::{FileError, Root};
use crate::system::System;

/// IPv4 addresses the kernel holds locally, from `/proc/net/fib_trie`
/// (the `/32 host LOCAL` leaves).
pub fn parse_fib_trie(text: &str) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(ip) = t.strip_prefix("|-- ") {
            last = ip.trim().parse().ok();
        } else if t.starts_with("/32 host LOCAL") {
            if let Some(ip) = last {
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
        }
    }
    out
}

/// IPv6 addresses with their scope and interface, from `/proc/net/if_inet6`.
pub fn parse_if_inet6(text: &str) -> Vec<(Ipv6Addr, u8, String)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 6 || f[0].len() != 32 {
                return None;
            }
            let bits = u128::from_str_radix(f[0], 16).ok()?;
            let scope = u8::from_str_radix(f[3], 16).ok()?;
            Some((Ipv6Addr::from(bits), scope, f[5].to_owned()))
        })
        .collect()
}

/// Interfaces with an IPv4 default route, from `/proc/net/route`.
pub fn parse_route_defaults(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let flags = u32::from_str_radix(f[3], 16).ok()?;
            (f[1] == "00000000" && f[7] == "00000000" && flags & 1 == 1).then(|| f[0].to_owned())
        })
        .collect()
}

/// Interfaces with an IPv6 default route, from `/proc/net/ipv6_route`
/// (the kernel's unreachable default on `lo` does not count).
pub fn parse_ipv6_route_defaults(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 10 {
                return None;
            }
            let flags = u32::from_str_radix(f[8], 16).ok()?;
            let up = flags & 0x1 != 0;
            let reject = flags & 0x200 != 0;
            (f[0].bytes().all(|b| b == b'0') && f[1] == "00" && up && !reject && f[9] != "lo")
                .then(|| f[9].to_owned())
        })
        .collect()
}

/// `nameserver` addresses in a resolv.conf.
pub fn parse_resolv_conf(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver"))
                .then(|| w.next().and_then(|a| a.split('%').next()?.parse().ok()))
                .flatten()
        })
        .collect()
}

fn global_v4(ip: &Ipv4Addr) -> bool {
    !(ip.is_loopback() || ip.is_link_local() || ip.is_unspecified())
}

fn global_v6(ip: &Ipv6Addr, scope: u8) -> bool {
    scope == 0 && !ip.is_loopback() && !ip.is_unspecified()
}

/// What the preflight must reach.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// Host names that must resolve, each with the reason it matters.
    pub names: Vec<(String, String)>,
    /// Endpoints that must accept TCP, with the reason.
    pub endpoints: Vec<(String, u16, String)>,
}

/// The names and endpoints that matter for this node. The mirror only
/// matters when the binary must be downloaded.
pub fn targets(cfg: &NodeConfig, needs_download: bool) -> Targets {
    let mut t = Targets::default();
    let mut add_name = |host: &str, why: &str| {
        if host.parse::<IpAddr>().is_err() && !t.names.iter().any(|(h, _)| h == host) {
            t.names.push((host.to_owned(), why.to_owned()));
        }
    };
    if let Some(s) = &cfg.server {
        add_name(&s.host, "K3s server");
    }
    // Through a proxy, only the proxy must resolve: it looks the mirror up.
    let mirror_proxy = needs_download
        .then(|| cfg.proxy.for_url(&format!("{}/", cfg.mirror)))
        .flatten()
        .and_then(|p| url_host_port(&proxy_url(&p.value)).map(|hp| (hp, p.from.clone())));
    if needs_download {
        match &mirror_proxy {
            Some(((h, _), from)) => {
                add_name(h, &format!("proxy for the K3s release mirror, {from}"))
            }
            None => {
                if let Some((h, _)) = url_host_port(&cfg.mirror) {
                    add_name(&h, "K3s release mirror");
                }
            }
        }
    }
    for n in &cfg.check_names {
        add_name(n, "checks");
    }
    for (h, _) in &cfg.check_endpoints {
        add_name(h, "check endpoint");
    }
    if let Some(s) = &cfg.server {
        t.endpoints
            .push((s.host.clone(), s.port, "K3s server API".into()));
    }
    for (h, p) in &cfg.check_endpoints {
        t.endpoints.push((h.clone(), *p, "check endpoint".into()));
    }
    if let Some(((h, p), from)) = mirror_proxy {
        t.endpoints
            .push((h, p, format!("proxy for the K3s release mirror, {from}")));
    }
    t
}

/// A proxy setting as a URL (Go reads a bare `host:port` as http).
fn proxy_url(value: &str) -> String {
    if value.contains("://") {
        value.to_owned()
    } else {
        format!("http://{value}")
    }
}

/// One pass over addresses, routes, DNS and TCP.
fn probe(root: &Root, system: &dyn System, targets: &Targets) -> Result<Vec<Finding>, FileError> {
    let mut out = Vec::new();
    let read = |p: &str| root.read_optional(p).map(Option::unwrap_or_default);

    let v4: Vec<Ipv4Addr> = parse_fib_trie(&read("/proc/net/fib_trie")?)
        .into_iter()
        .filter(global_v4)
        .collect();
    let v6: Vec<Ipv6Addr> = parse_if_inet6(&read("/proc/net/if_inet6")?)
        .into_iter()
        .filter(|(ip, scope, _)| global_v6(ip, *scope))
        .map(|(ip, _, _)| ip)
        .collect();
    if v4.is_empty() && v6.is_empty() {
        out.push(Finding::fail(
            "address",
            "no global IPv4 or IPv6 address",
            "check the network config (Proxmox: net0 ip=dhcp or ip=ADDR/PREFIX,gw=GW) and that DHCP answers",
        ));
    } else {
        let list: Vec<String> = v4
            .iter()
            .map(ToString::to_string)
            .chain(v6.iter().map(ToString::to_string))
            .collect();
        out.push(Finding::pass("address", list.join(", ")));
    }
    let r4 = parse_route_defaults(&read("/proc/net/route")?);
    let r6 = parse_ipv6_route_defaults(&read("/proc/net/ipv6_route")?);
    if r4.is_empty() && r6.is_empty() {
        out.push(Finding::fail(
            "default route",
            "no IPv4 or IPv6 default route",
            "set a gateway (Proxmox: gw=... on net0) or check DHCP",
        ));
    } else {
        let mut via: Vec<String> = r4.iter().map(|i| format!("IPv4 via {i}")).collect();
        via.extend(r6.iter().map(|i| format!("IPv6 via {i}")));
        out.push(Finding::pass("default route", via.join(", ")));
    }

    for (host, why) in &targets.names {
        match system.resolve(host, 0) {
            Ok(addrs) if !addrs.is_empty() => out.push(Finding::pass(
                format!("dns {host}"),
                format!(
                    "{} ({why})",
                    addrs.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>().join(", ")
                ),
            )),
            Ok(_) => out.push(Finding::fail(
                format!("dns {host}"),
                format!("{host} resolves to no address ({why}); {}", resolvers_asked(root, system)),
                "check those nameservers and the name's DNS record",
            )),
            Err(e) => out.push(Finding::fail(
                format!("dns {host}"),
                format!(
                    "{host} does not resolve ({why}): {}; {}",
                    e.reason(),
                    resolvers_asked(root, system)
                ),
                "check those nameservers (Proxmox: nameserver= in the cloud-init or container options) and the name",
            )),
        }
    }

    for (host, port, why) in &targets.endpoints {
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, *port)],
            Err(_) => match system.resolve(host, *port) {
                Ok(a) => a,
                Err(_) => continue, // already reported as a DNS failure
            },
        };
        let mut last_err = None;
        let ok = addrs
            .iter()
            .any(|a| match system.tcp_connect(*a, Duration::from_secs(5)) {
                Ok(()) => true,
                Err(e) => {
                    // The address is news only when a name was looked up.
                    last_err = Some(if host.parse::<IpAddr>().is_ok() {
                        e.reason()
                    } else {
                        format!("{a}: {}", e.reason())
                    });
                    false
                }
            });
        if ok {
            out.push(Finding::pass(
                format!("tcp {host}:{port}"),
                format!("reachable ({why})"),
            ));
        } else {
            out.push(Finding::fail(
                format!("tcp {host}:{port}"),
                format!(
                    "cannot connect ({why}): {}",
                    last_err.unwrap_or_else(|| "no address".into())
                ),
                if why.starts_with("proxy") {
                    "check the proxy's address and that it runs and accepts this node"
                } else {
                    "check that the server runs and that firewalls allow the port (K3s API: 6443/tcp)"
                },
            ));
        }
    }
    Ok(out)
}

/// Which resolver a failed lookup asked: the nameservers of the
/// resolv.conf behind [`System::resolve`] (the node's, or this machine's
/// for a dry run). Static glibc reads /etc/hosts first, then asks these.
pub fn resolvers_asked(root: &Root, system: &dyn System) -> String {
    let (path, shown) = system.resolv_conf(root.dir());
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let ns = parse_resolv_conf(&text);
            if ns.is_empty() {
                format!("{shown} lists no nameserver, so the resolver asked 127.0.0.1")
            } else {
                format!(
                    "the resolver asked {} (nameservers in {shown}) after /etc/hosts",
                    ns.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            format!("{shown} does not exist, so the resolver asked 127.0.0.1")
        }
        Err(e) => format!(
            "{shown} could not be read ({}), so the resolver's nameservers are unknown",
            crate::message::io_text(&e)
        ),
    }
}

/// A warning when resolv.conf lists only loopback resolvers and systemd-resolved's
/// upstream file does not help: K3s then hands pods 8.8.8.8.
pub fn resolv_conf_finding(root: &Root) -> Result<Finding, FileError> {
    let main = parse_resolv_conf(&root.read_optional("/etc/resolv.conf")?.unwrap_or_default());
    if main.is_empty() {
        return Ok(Finding::warn(
            "resolv.conf",
            "/etc/resolv.conf lists no nameserver",
            "set a nameserver (Proxmox: nameserver= option); K3s falls back to 8.8.8.8 for pods",
        ));
    }
    if main.iter().all(IpAddr::is_loopback) {
        let upstream = parse_resolv_conf(
            &root
                .read_optional("/run/systemd/resolve/resolv.conf")?
                .unwrap_or_default(),
        );
        if upstream.is_empty() || upstream.iter().all(IpAddr::is_loopback) {
            return Ok(Finding::warn(
                "resolv.conf",
                format!(
                    "only loopback resolvers ({}); K3s will give pods 8.8.8.8 instead",
                    main.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                ),
                "point /etc/resolv.conf at a reachable resolver or set `resolv-conf:` in k3s.config",
            ));
        }
        return Ok(Finding::pass(
            "resolv.conf",
            "loopback stub; K3s uses /run/systemd/resolve/resolv.conf",
        ));
    }
    Ok(Finding::pass(
        "resolv.conf",
        main.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    ))
}

/// Run the preflight until everything passes or `timeout` is spent, with
/// exponential backoff (1 s doubling to 15 s). Returns the findings of the
/// last attempt and the number of attempts.
pub fn preflight(
    root: &Root,
    system: &dyn System,
    targets: &Targets,
    timeout: Duration,
) -> Result<(Vec<Finding>, u32), FileError> {
    let start = system.now();
    let policy = Backoff::new(u32::MAX, Duration::from_secs(1)).capped(Duration::from_secs(15));
    let mut tries = 0;
    let tried = retry(
        policy,
        |n| {
            tries = n;
            let findings = probe(root, system, targets).map_err(Err)?;
            match super::failures(&findings) {
                None => Ok(findings),
                Some(failed) => Err(Ok((findings, failed))),
            }
        },
        // A file that cannot be read is not retried; a failed probe is.
        |e| e.is_ok(),
        |attempts, delay, e| {
            let elapsed = system.now().duration_since(start);
            if elapsed + delay > timeout {
                return false;
            }
            if let Ok((_, failed)) = e {
                tracing::info!(
                    attempts,
                    "network not ready yet, retrying in {delay:?}: {failed}"
                );
            }
            system.sleep(delay);
            true
        },
    );
    let (mut findings, attempts) = match tried {
        Ok(findings) => (findings, tries),
        Err(GaveUp {
            error: Ok((findings, _)),
            attempts,
        }) => {
            let elapsed = system.now().duration_since(start);
            // The failures themselves are reported once, by the step.
            tracing::warn!(attempts, "network preflight gave up after {elapsed:?}");
            (findings, attempts)
        }
        Err(GaveUp { error: Err(e), .. }) => return Err(e),
    };
    findings.push(resolv_conf_finding(root)?);
    Ok((findings, attempts))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::checks::Level;
    use crate::system::FakeSystem;

    pub(crate) const FIB_TRIE: &str = "Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.0.0.0/24 2 0 2
        |-- 10.0.0.0
           /24 link UNICAST
        |-- 10.0.0.15
           /32 host LOCAL
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
           |-- 10.0.0.15
              /32 host LOCAL
";
    pub(crate) const ROUTE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
";
    const IF_INET6: &str = "00000000000000000000000000000001 01 80 10 80       lo
fe80000000000000021e67fffe3a4b5c 02 40 20 80     eth0
20010db8000000000000000000000015 02 40 00 80     eth0
";
    const IPV6_ROUTE: &str = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
";

    #[test]
    fn parsers() {
        assert_eq!(
            parse_fib_trie(FIB_TRIE),
            vec![Ipv4Addr::new(10, 0, 0, 15), Ipv4Addr::LOCALHOST]
        );
        assert_eq!(parse_route_defaults(ROUTE), vec!["eth0"]);
        assert!(parse_route_defaults("Iface\tDestination\n").is_empty());
        let v6 = parse_if_inet6(IF_INET6);
        assert_eq!(v6.len(), 3);
        assert_eq!(v6[2].0, "2001:db8::15".parse::<Ipv6Addr>().unwrap());
        assert_eq!(v6.iter().filter(|(ip, s, _)| global_v6(ip, *s)).count(), 1);
        assert_eq!(parse_ipv6_route_defaults(IPV6_ROUTE), vec!["eth0"]);
        assert!(parse_ipv6_route_defaults(IPV6_ROUTE.lines().nth(1).unwrap()).is_empty());
        assert_eq!(
            parse_resolv_conf("# x\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nsearch lan\n"),
            vec![
                "127.0.0.53".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
    }

    pub(crate) fn net_root(root: &Root) {
        for (p, t) in [
            ("/proc/net/fib_trie", FIB_TRIE),
            ("/proc/net/route", ROUTE),
            ("/etc/resolv.conf", "nameserver 10.0.0.1\n"),
        ] {
            let path = root.path(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, t).unwrap();
        }
    }

    fn targets_for(server: bool) -> Targets {
        Targets {
            names: vec![("server.lan".into(), "K3s server".into())],
            endpoints: if server {
                vec![("server.lan".into(), 6443, "K3s server API".into())]
            } else {
                vec![]
            },
        }
    }

    #[test]
    fn all_pass_in_one_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        net_root(&root);
        let sys = FakeSystem::new();
        let (f, attempts) =
            preflight(&root, &sys, &targets_for(true), Duration::from_secs(30)).unwrap();
        assert_eq!(attempts, 1);
        assert!(f.iter().all(|f| f.level == Level::Pass), "{f:?}");
    }

    #[test]
    fn dns_failure_retries_within_timeout_then_says_what_failed() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        net_root(&root);
        let mut sys = FakeSystem::new();
        sys.unresolvable.insert("server.lan".into());
        let (f, attempts) =
            preflight(&root, &sys, &targets_for(true), Duration::from_secs(30)).unwrap();
        assert!(attempts > 2, "{attempts}");
        assert!(sys.slept() <= Duration::from_secs(30), "{:?}", sys.slept());
        let msg = crate::checks::failures(&f).unwrap();
        assert!(
            msg.contains(
                "server.lan does not resolve (K3s server): Name or service not known; \
                 the resolver asked 10.0.0.1 (nameservers in /etc/resolv.conf) after /etc/hosts — check those nameservers"
            ),
            "{msg}"
        );
        std::fs::write(root.path("/etc/resolv.conf"), "search lan\n").unwrap();
        assert_eq!(
            resolvers_asked(&root, &sys),
            "/etc/resolv.conf lists no nameserver, so the resolver asked 127.0.0.1"
        );
        let dry = crate::system::DryRunSystem::new(root.dir());
        assert!(
            resolvers_asked(&root, &dry).contains("this machine's /etc/resolv.conf"),
            "a dry run asks this machine's resolver"
        );
    }

    #[test]
    fn unreachable_server_and_no_network() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        let mut sys = FakeSystem::new();
        sys.refuse_all_tcp = true;
        let (f, _) = preflight(&root, &sys, &targets_for(true), Duration::from_secs(3)).unwrap();
        let msg = crate::checks::failures(&f).unwrap();
        assert!(msg.contains("no global IPv4 or IPv6 address"), "{msg}");
        assert!(msg.contains("no IPv4 or IPv6 default route"), "{msg}");
        assert!(
            msg.contains("tcp server.lan:6443") && msg.contains("6443/tcp"),
            "{msg}"
        );
    }

    #[test]
    fn loopback_only_resolvers_warn() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        net_root(&root);
        std::fs::write(root.path("/etc/resolv.conf"), "nameserver 127.0.0.53\n").unwrap();
        let f = resolv_conf_finding(&root).unwrap();
        assert_eq!(f.level, Level::Warn);
        assert!(f.detail.contains("8.8.8.8"));
        std::fs::create_dir_all(root.path("/run/systemd/resolve")).unwrap();
        std::fs::write(
            root.path("/run/systemd/resolve/resolv.conf"),
            "nameserver 10.0.0.1\n",
        )
        .unwrap();
        assert_eq!(resolv_conf_finding(&root).unwrap().level, Level::Pass);
    }
}
