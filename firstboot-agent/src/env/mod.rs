//! Step 2: what the node runs on — VM or container (LXC), privileged or not,
//! cgroup version and memory controller, memory/CPU/disk against what the
//! role needs. Pure parsers over literal file contents plus one loader.

use serde::Serialize;

use crate::checks::Finding;
use crate::rootfs::{FileError, Root};
use node_spec::Role;

const GIB: u64 = 1024 * 1024 * 1024;
const MIB: u64 = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Virtualization {
    Container,
    Vm,
    BareMetal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CgroupVersion {
    V1,
    V2,
}

/// The detected environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Environment {
    pub virtualization: Virtualization,
    /// Container manager name (`lxc`, `docker`, ...), when in a container.
    pub container: Option<String>,
    /// Runs in a user namespace that does not map host root.
    pub unprivileged: bool,
    pub cgroup: CgroupVersion,
    pub memory_controller: bool,
    pub memory_bytes: Option<u64>,
    pub cpus: Option<u32>,
    pub disk_free_bytes: Option<u64>,
}

impl Environment {
    pub fn in_container(&self) -> bool {
        self.virtualization == Virtualization::Container
    }
    pub fn in_lxc(&self) -> bool {
        self.container.as_deref() == Some("lxc")
    }
}

/// `container=NAME` from `/proc/1/environ` (NUL-separated).
pub fn container_from_environ(environ: &[u8]) -> Option<String> {
    environ
        .split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix("container="))
        .map(str::to_owned)
        .filter(|s| !s.is_empty())
}

/// Whether `/proc/self/uid_map` maps uid 0 to host uid 0 over the full range
/// (privileged) or not (a user namespace: unprivileged container).
pub fn uid_map_is_unprivileged(uid_map: &str) -> bool {
    let first: Vec<u64> = uid_map
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    match first.as_slice() {
        [0, 0, len] => *len < u64::from(u32::MAX),
        [] => false,
        _ => true,
    }
}

/// Whether the `memory` controller is available: cgroup v2 from
/// `cgroup.controllers`, v1 from `/proc/cgroups` (the `enabled` column).
pub fn memory_controller_v2(controllers: &str) -> bool {
    controllers.split_whitespace().any(|c| c == "memory")
}

pub fn memory_controller_v1(proc_cgroups: &str) -> bool {
    proc_cgroups.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 4 && f[0] == "memory" && f[3] == "1"
    })
}

/// `MemTotal` in bytes from `/proc/meminfo`.
pub fn mem_total(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix("MemTotal:")?;
        let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    })
}

/// A cgroup v2 `memory.max` limit (`max` means none).
pub fn cgroup_memory_max(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// CPUs from a cgroup v2 `cpu.max` quota (`200000 100000` → 2).
pub fn cgroup_cpu_max(text: &str) -> Option<u32> {
    let mut f = text.split_whitespace();
    let quota: u64 = f.next()?.parse().ok()?;
    let period: u64 = f.next()?.parse().ok()?;
    (period > 0).then(|| quota.div_ceil(period) as u32)
}

/// Processor count from `/proc/cpuinfo` (lxcfs shows the container's share).
pub fn cpuinfo_count(cpuinfo: &str) -> Option<u32> {
    let n = cpuinfo
        .lines()
        .filter(|l| l.split(':').next().map(str::trim) == Some("processor"))
        .count();
    (n > 0).then_some(n as u32)
}

/// Whether `/proc/cpuinfo` flags show a hypervisor.
pub fn cpuinfo_hypervisor(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor"))
}

fn free_bytes(path: &std::path::Path) -> Option<u64> {
    let mut p = path.to_owned();
    while !p.exists() {
        p = p.parent()?.to_owned();
    }
    let s = nix::sys::statvfs::statvfs(&p).ok()?;
    Some(s.blocks_available() as u64 * s.fragment_size() as u64)
}

/// Detect the environment from files under `root`.
pub fn detect(root: &Root) -> Result<Environment, FileError> {
    let read = |p: &str| root.read_optional(p).map(Option::unwrap_or_default);
    let environ = std::fs::read(root.path("/proc/1/environ")).unwrap_or_default();
    let container = read("/run/systemd/container")?.trim().to_owned();
    let container = Some(container)
        .filter(|c| !c.is_empty())
        .or_else(|| container_from_environ(&environ))
        .or_else(|| {
            (root.exists("/dev/.lxc") || root.exists("/dev/.lxc-boot-id")).then(|| "lxc".to_owned())
        });
    let cpuinfo = read("/proc/cpuinfo")?;
    let virtualization = if container.is_some() {
        Virtualization::Container
    } else if cpuinfo_hypervisor(&cpuinfo) {
        Virtualization::Vm
    } else {
        Virtualization::BareMetal
    };
    let unprivileged = uid_map_is_unprivileged(&read("/proc/self/uid_map")?);
    let (cgroup, memory_controller) =
        match root.read_optional("/sys/fs/cgroup/cgroup.controllers")? {
            Some(c) => (CgroupVersion::V2, memory_controller_v2(&c)),
            None => (
                CgroupVersion::V1,
                memory_controller_v1(&read("/proc/cgroups")?),
            ),
        };
    let mut memory_bytes = mem_total(&read("/proc/meminfo")?);
    if let Some(limit) = cgroup_memory_max(&read("/sys/fs/cgroup/memory.max")?) {
        memory_bytes = Some(memory_bytes.map_or(limit, |m| m.min(limit)));
    }
    let mut cpus = cpuinfo_count(&cpuinfo);
    if let Some(quota) = cgroup_cpu_max(&read("/sys/fs/cgroup/cpu.max")?) {
        cpus = Some(cpus.map_or(quota, |c| c.min(quota)));
    }
    Ok(Environment {
        virtualization,
        container,
        unprivileged,
        cgroup,
        memory_controller,
        memory_bytes,
        cpus,
        disk_free_bytes: free_bytes(&root.path("/var/lib/rancher")),
    })
}

fn human(bytes: u64) -> String {
    if bytes >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else {
        format!("{} MiB", bytes / MIB)
    }
}

/// Findings: what the environment means for a node of `role`.
pub fn assess(env: &Environment, role: Role) -> Vec<Finding> {
    let mut out = Vec::new();
    let kind = match (env.virtualization, &env.container) {
        (Virtualization::Container, Some(c)) => format!(
            "{c} container, {}",
            if env.unprivileged {
                "unprivileged"
            } else {
                "privileged"
            }
        ),
        (Virtualization::Vm, _) => "virtual machine".into(),
        _ => "bare metal (no hypervisor flag)".into(),
    };
    if env.in_container() && env.unprivileged {
        out.push(Finding::warn(
            "environment",
            kind,
            "K3s in an unprivileged container needs nesting and keyctl on the host (Proxmox: pct set ID --features nesting=1,keyctl=1); the agent adds KubeletInUserNamespace to the kubelet args",
        ));
    } else {
        out.push(Finding::pass("environment", kind));
    }
    let cg = match env.cgroup {
        CgroupVersion::V2 => "cgroup v2",
        CgroupVersion::V1 => "cgroup v1",
    };
    if env.memory_controller {
        out.push(Finding::pass(
            "cgroup",
            format!("{cg}, memory controller available"),
        ));
    } else {
        out.push(Finding::fail(
            "cgroup",
            format!("{cg} without the memory controller; the kubelet will not start"),
            if env.in_container() {
                "enable the memory controller for the container on the host (cgroup v2: it must be delegated to the container's cgroup)"
            } else {
                "add `cgroup_enable=memory cgroup_memory=1` to the kernel command line and reboot"
            },
        ));
    }
    let (min_mem, min_cpu, min_disk) = match role {
        Role::Server => (2 * GIB, 2, 4 * GIB),
        Role::Agent => (512 * MIB, 1, 2 * GIB),
    };
    let resize = if env.in_container() {
        "pct set ID"
    } else {
        "qm set ID"
    };
    match env.memory_bytes {
        Some(m) if m < min_mem * 95 / 100 => out.push(Finding::warn(
            "memory",
            format!(
                "{} (a K3s {role} wants at least {})",
                human(m),
                human(min_mem)
            ),
            format!(
                "raise the memory (Proxmox: {resize} --memory {})",
                min_mem / MIB
            ),
        )),
        Some(m) => out.push(Finding::pass("memory", human(m))),
        None => out.push(Finding::warn(
            "memory",
            "unknown (no /proc/meminfo)",
            "check that /proc is mounted",
        )),
    }
    match env.cpus {
        Some(c) if c < min_cpu => out.push(Finding::warn(
            "cpu",
            format!("{c} CPU (a K3s {role} wants at least {min_cpu})"),
            format!("add CPUs (Proxmox: {resize} --cores {min_cpu})"),
        )),
        Some(c) => out.push(Finding::pass("cpu", format!("{c} CPU"))),
        None => out.push(Finding::warn(
            "cpu",
            "unknown (no /proc/cpuinfo)",
            "check that /proc is mounted",
        )),
    }
    match env.disk_free_bytes {
        Some(d) if d < 300 * MIB => out.push(Finding::fail(
            "disk",
            format!(
                "{} free under /var/lib/rancher; K3s and its images do not fit",
                human(d)
            ),
            "grow the root disk (Proxmox: pct resize / qm disk resize) and the filesystem",
        )),
        Some(d) if d < min_disk => out.push(Finding::warn(
            "disk",
            format!(
                "{} free under /var/lib/rancher (recommended: {})",
                human(d),
                human(min_disk)
            ),
            "grow the root disk (Proxmox: pct resize / qm disk resize)",
        )),
        Some(d) => out.push(Finding::pass("disk", format!("{} free", human(d)))),
        None => out.push(Finding::warn(
            "disk",
            "free space unknown",
            "check the root filesystem",
        )),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::Level;

    #[test]
    fn parsers_on_literal_files() {
        assert_eq!(
            container_from_environ(b"PATH=/bin\0container=lxc\0TERM=linux\0"),
            Some("lxc".into())
        );
        assert_eq!(container_from_environ(b"PATH=/bin\0"), None);
        assert!(!uid_map_is_unprivileged(
            "         0          0 4294967295\n"
        ));
        assert!(uid_map_is_unprivileged(
            "         0     100000      65536\n"
        ));
        assert!(!uid_map_is_unprivileged(""));
        assert!(memory_controller_v2(
            "cpuset cpu io memory hugetlb pids rdma misc\n"
        ));
        assert!(!memory_controller_v2("cpuset cpu io pids\n"));
        let v1 =
            "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t2\t1\t1\nmemory\t0\t1\t0\n";
        assert!(!memory_controller_v1(v1));
        assert!(memory_controller_v1(
            &v1.replace("memory\t0\t1\t0", "memory\t4\t90\t1")
        ));
        assert_eq!(
            mem_total("MemTotal:        2048000 kB\nMemFree: 1 kB\n"),
            Some(2_097_152_000)
        );
        assert_eq!(cgroup_memory_max("max\n"), None);
        assert_eq!(cgroup_memory_max("1073741824\n"), Some(GIB));
        assert_eq!(cgroup_cpu_max("max 100000\n"), None);
        assert_eq!(cgroup_cpu_max("150000 100000\n"), Some(2));
        let cpuinfo =
            "processor\t: 0\nflags\t\t: fpu vme hypervisor\n\nprocessor\t: 1\nflags\t\t: fpu\n";
        assert_eq!(cpuinfo_count(cpuinfo), Some(2));
        assert!(cpuinfo_hypervisor(cpuinfo));
        assert!(!cpuinfo_hypervisor("flags\t: fpu vme\n"));
    }

    fn write(root: &Root, p: &str, t: &str) {
        let path = root.path(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, t).unwrap();
    }

    #[test]
    fn detects_unprivileged_lxc_with_limits() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        write(&root, "/run/systemd/container", "lxc\n");
        write(&root, "/proc/self/uid_map", "0 100000 65536\n");
        write(
            &root,
            "/sys/fs/cgroup/cgroup.controllers",
            "cpu memory pids\n",
        );
        write(&root, "/sys/fs/cgroup/memory.max", "1073741824\n");
        write(&root, "/sys/fs/cgroup/cpu.max", "100000 100000\n");
        write(&root, "/proc/meminfo", "MemTotal: 16000000 kB\n");
        write(
            &root,
            "/proc/cpuinfo",
            "processor : 0\nprocessor : 1\nprocessor : 2\n",
        );
        let env = detect(&root).unwrap();
        assert!(env.in_lxc() && env.unprivileged);
        assert_eq!(env.cgroup, CgroupVersion::V2);
        assert_eq!(env.memory_bytes, Some(GIB));
        assert_eq!(env.cpus, Some(1));
        let f = assess(&env, Role::Server);
        let text: Vec<String> = f.iter().map(ToString::to_string).collect();
        assert!(
            text.iter().any(|t| t.contains("nesting=1,keyctl=1")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|t| t.contains("pct set ID --memory 2048")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|t| t.contains("pct set ID --cores 2")),
            "{text:?}"
        );
        // An agent is fine with 1 GiB and one CPU.
        let agent = assess(&env, Role::Agent);
        assert!(agent
            .iter()
            .filter(|f| f.what == "memory" || f.what == "cpu")
            .all(|f| f.level == Level::Pass));
    }

    #[test]
    fn vm_without_memory_controller_fails() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        write(
            &root,
            "/proc/cpuinfo",
            "processor : 0\nflags : hypervisor\nprocessor : 1\n",
        );
        write(
            &root,
            "/proc/cgroups",
            "#subsys_name hierarchy num_cgroups enabled\nmemory 0 1 0\n",
        );
        write(&root, "/proc/meminfo", "MemTotal: 4000000 kB\n");
        let env = detect(&root).unwrap();
        assert_eq!(env.virtualization, Virtualization::Vm);
        assert_eq!(env.cgroup, CgroupVersion::V1);
        let f = assess(&env, Role::Server);
        let fail = crate::checks::failures(&f).unwrap();
        assert!(fail.contains("cgroup_enable=memory"), "{fail}");
    }
}
