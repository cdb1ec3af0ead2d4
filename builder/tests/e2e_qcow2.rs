//! The qcow2 boot test: build the server profile's qcow2 (a GPT disk
//! assembled from the Debian 12 mmdebstrap rootfs with a kernel and
//! cloud-init), then boot it under `qemu-system-x86_64 -accel tcg` twice —
//! SeaBIOS (legacy BIOS) and OVMF (UEFI) — each time from a copy-on-write
//! overlay two GiB larger than the disk, on a tap device in a bridge the test
//! makes (dnsmasq for DHCP and DNS, the stand-in K3s release on the bridge
//! address; nothing leaves the machine), with a `cidata` ISO shaped exactly
//! like Proxmox's cloud-init drive (proxmox/qemu-server
//! `src/PVE/QemuServer/Cloudinit.pm`): user-data as `cloudinit_userdata`
//! writes it for `--ciuser k3sadmin --sshkeys …` (`--ciupgrade 0`),
//! network-config version 1 as `nocloud_network` writes it — a static
//! address matched by MAC for SeaBIOS (`--ipconfig0 ip=…/24,gw=…`), `dhcp4`
//! for OVMF — meta-data `instance-id: <sha1 of user-data and
//! network-config>`, and vendor-data (`cicustom vendor=…`) carrying `k3s:`.
//!
//! For each firmware: wait for firstboot-agent's final line on the serial
//! console; from the host, log in over SSH with the key and check the address
//! on the NIC, the host name and that the root filesystem fills the larger
//! disk; power the VM off through ACPI, then read the overlay's root
//! filesystem offline with debugfs and check what the agent did: result,
//! done marker, and the stand-in K3s's effective configuration (role, the
//! vendor-data's token). Boot-to-agent-done is printed.
//!
//! The same server is also assembled from the bootstrap with lvm2 and
//! xfsprogs added, once with an XFS root (`qcow2.assemble-root: xfs`) and
//! once with XFS on LV `imgbuild/root` (`lvm`): the shapes of Rocky 9
//! GenericCloud's root, whose layer imgbuild writes on a loop mount. The XFS
//! disk boots under OVMF, the LVM disk under SeaBIOS, and each is checked as
//! above (read back on a read-only loop mount); the LVM root is not grown
//! (cloud-init's growpart grows partitions only).
//!
//! The ext4 disk is then fed back as a vendor cloud image: the server
//! built from it is patched (the base's bytes kept, changed clusters
//! appended; the second build copies only the root's metadata) and that
//! disk boots under OVMF.
//!
//! KVM is never used (`-accel tcg`): it hangs on the machines this runs on.
//! Needs root (the disk assembly keeps file owners; loop mounts; the bridge
//! and tap), qemu-system-x86, qemu-utils, ovmf, e2fsprogs, xfsprogs, lvm2,
//! dnsmasq, openssh-client,
//! the static agent and the static stand-in.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod e2e;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;
use e2e::{poll, run_ok, Lab};

const K3S_VERSION: &str = "v1.34.3+k3s1";
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// Software emulation is slow; the agent finishes in about a minute here.
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(240);
/// The line firstboot-agent prints on the console when it is done.
const FINISHED: &str = "firstboot-agent: finished";

fn sha256_file(p: &Path) -> String {
    sha256_hex(&fs::read(p).unwrap())
}

#[derive(Clone, Copy, Debug)]
enum Firmware {
    SeaBios,
    Ovmf,
}

impl Firmware {
    fn name(self) -> &'static str {
        match self {
            Firmware::SeaBios => "SeaBIOS",
            Firmware::Ovmf => "OVMF",
        }
    }
}

struct Vm {
    child: Child,
    monitor: ChildStdin,
    serial: PathBuf,
}

/// A failed assertion must not leave qemu running (a powered-off VM has
/// exited already; killing it again is harmless).
impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tap device in the lab's bridge for one VM; deleted on drop.
struct Tap(String);

impl Tap {
    fn new(name: String, bridge: &str) -> Tap {
        run_ok(Command::new("ip").args(["tuntap", "add", "dev", &name, "mode", "tap"]));
        let tap = Tap(name);
        run_ok(Command::new("ip").args(["link", "set", &tap.0, "master", bridge, "up"]));
        tap
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

#[allow(clippy::too_many_arguments)]
fn start_vm(
    fw: Firmware,
    tag: &str,
    disk: &Path,
    seed: &Path,
    tap: &Tap,
    mac: &str,
    dir: &Path,
) -> Vm {
    let serial = dir.join(format!("serial-{tag}.log"));
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-m", "2048", "-smp", "2", "-no-reboot"])
        .args(["-display", "none", "-monitor", "stdio"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2", disk.display()))
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=raw,readonly=on",
            seed.display()
        ))
        .arg("-netdev")
        .arg(format!(
            "tap,id=n0,ifname={},script=no,downscript=no",
            tap.0
        ))
        .arg("-device")
        .arg(format!("virtio-net-pci,netdev=n0,mac={mac}"));
    if let Firmware::Ovmf = fw {
        let vars = dir.join(format!("OVMF_VARS-{tag}.fd"));
        fs::copy(OVMF_VARS, &vars).unwrap();
        cmd.args(["-machine", "q35"])
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()));
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(fs::File::create(dir.join(format!("qemu-{tag}.out"))).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting qemu-system-x86_64");
    let monitor = child.stdin.take().unwrap();
    Vm {
        child,
        monitor,
        serial,
    }
}

fn serial_text(vm: &Vm) -> String {
    String::from_utf8_lossy(&fs::read(&vm.serial).unwrap_or_default()).into_owned()
}

fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Where a disk's root filesystem lies, from its manifest.
#[derive(Clone, Debug)]
struct GuestRoot {
    fs: String,
    offset: u64,
    size: u64,
}

impl GuestRoot {
    fn from_manifest(m: &Value) -> Self {
        GuestRoot {
            fs: m["disk"]["root-fs"].as_str().unwrap().to_owned(),
            offset: m["disk"]["root-offset"].as_u64().unwrap(),
            size: m["disk"]["root-size"].as_u64().unwrap(),
        }
    }
}

/// Read files from the root filesystem of a (powered-off) qcow2: ext4 with
/// debugfs, XFS on a read-only loop mount of a raw copy.
struct Offline {
    raw: PathBuf,
    root: GuestRoot,
    /// XFS: the loop device and the mount point.
    mounted: Option<(String, PathBuf)>,
}

impl Offline {
    fn open(qcow2: &Path, root: &GuestRoot, dir: &Path) -> Self {
        let raw = dir.join("inspect.raw");
        let _ = fs::remove_file(&raw);
        run_checked(
            Command::new("qemu-img")
                .args(["convert", "-O", "raw"])
                .arg(qcow2)
                .arg(&raw),
        );
        let mut o = Offline {
            raw,
            root: root.clone(),
            mounted: None,
        };
        if root.fs == "xfs" {
            // No size limit: the guest's growpart and xfs_growfs have grown
            // a partition root past the size the manifest recorded (the
            // root is the disk's last partition, the LV its PV's).
            let dev = run_ok(
                Command::new("losetup")
                    .args(["--find", "--show", "--read-only"])
                    .arg(format!("--offset={}", root.offset))
                    .arg(&o.raw),
            )
            .trim()
            .to_owned();
            let mnt = dir.join("inspect-mnt");
            fs::create_dir_all(&mnt).unwrap();
            o.mounted = Some((dev.clone(), mnt.clone()));
            run_checked(
                Command::new("mount")
                    .args(["-t", "xfs", "-o", "ro,nouuid,norecovery", &dev])
                    .arg(&mnt),
            );
        }
        o
    }

    fn spec(&self) -> String {
        format!("{}?offset={}", self.raw.display(), self.root.offset)
    }

    fn read(&self, path: &str) -> Option<String> {
        if let Some((_, mnt)) = &self.mounted {
            return match fs::read(mnt.join(path.trim_start_matches('/'))) {
                Ok(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => panic!("reading {path} from the guest's XFS root: {e}"),
            };
        }
        let o = run_checked(
            Command::new("debugfs")
                .arg("-R")
                .arg(format!("cat {path}"))
                .arg(self.spec()),
        );
        let err = String::from_utf8_lossy(&o.stderr);
        if err.contains("File not found") {
            return None;
        }
        // Anything else on stderr but the version banner is a failure
        // (e.g. a filesystem debugfs could not open), not a file.
        let problems: Vec<&str> = err
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
            .collect();
        assert!(problems.is_empty(), "debugfs cat {path}: {problems:?}");
        Some(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// What `path` (a symbolic link) points to, as a line of text.
    fn link(&self, path: &str) -> String {
        if let Some((_, mnt)) = &self.mounted {
            return fs::read_link(mnt.join(path.trim_start_matches('/')))
                .map(|t| t.display().to_string())
                .unwrap_or_else(|e| format!("not a link: {e}"));
        }
        let o = run_checked(
            Command::new("debugfs")
                .args(["-R", &format!("stat {path}")])
                .arg(self.spec()),
        );
        text(&o)
    }

    fn json(&self, path: &str) -> Value {
        let t = self
            .read(path)
            .unwrap_or_else(|| panic!("{path} is missing from the guest's disk"));
        serde_json::from_str(&t).unwrap_or_else(|e| panic!("{path}: {e}\n{t}"))
    }
}

impl Drop for Offline {
    fn drop(&mut self) {
        if let Some((dev, mnt)) = &self.mounted {
            let _ = Command::new("umount").arg(mnt).output();
            let _ = Command::new("losetup").args(["-d", dev]).output();
        }
        let _ = fs::remove_file(&self.raw);
    }
}

/// SeaBIOS boots with a static address, OVMF with DHCP.
fn fw_is_static(fw: Firmware) -> bool {
    matches!(fw, Firmware::SeaBios)
}

/// The `cidata` ISO Proxmox writes for `qm set --ciuser k3sadmin --sshkeys
/// KEY --ciupgrade 0 --ipconfig0 ip=IP/24,gw=HOST (or ip=dhcp) --nameserver
/// HOST --searchdomain lab.internal --cicustom vendor=…`, byte for byte as
/// `cloudinit_userdata`, `nocloud_network` and `nocloud_gen_metadata` make
/// the files (Cloudinit.pm), written with `imgbuild seed`. With a search
/// domain, `get_hostname_fqdn` makes the fqdn `<name>.<searchdomain>`.
#[allow(clippy::too_many_arguments)]
fn proxmox_seed(
    dir: &Path,
    tag: &str,
    hostname: &str,
    public_key: &str,
    mac: &str,
    static_ip: Option<&str>,
    host_ip: &str,
    vendor_data: &Path,
) -> PathBuf {
    let user_data = format!(
        "#cloud-config\nhostname: {hostname}\nmanage_etc_hosts: true\nfqdn: {hostname}.lab.internal\n\
         user: k3sadmin\nssh_authorized_keys:\n  - {}\nchpasswd:\n  expire: False\n\
         users:\n  - default\n",
        public_key.trim()
    );
    let subnet = match static_ip {
        Some(ip) => format!(
            "      - type: static\n        address: '{ip}'\n        netmask: '255.255.255.0'\n\
             \x20       gateway: '{host_ip}'\n"
        ),
        None => "      - type: dhcp4\n".to_owned(),
    };
    let network = format!(
        "version: 1\nconfig:\n    - type: physical\n      name: eth0\n      mac_address: '{mac}'\n\
         \x20     subnets:\n{subnet}    - type: nameserver\n      address:\n      - '{host_ip}'\n\
         \x20     search:\n      - 'lab.internal'\n"
    );
    // nocloud_gen_metadata: sha1 of user-data and network-config.
    let ud = dir.join(format!("user-data-{tag}"));
    let nc = dir.join(format!("network-config-{tag}"));
    fs::write(&ud, &user_data).unwrap();
    fs::write(&nc, &network).unwrap();
    let both = dir.join(format!("ud-nc-{tag}"));
    fs::write(&both, format!("{user_data}{network}")).unwrap();
    let sha1 = run_ok(Command::new("sha1sum").arg(&both));
    let md = dir.join(format!("meta-data-{tag}"));
    fs::write(
        &md,
        format!("instance-id: {}\n", sha1.split_whitespace().next().unwrap()),
    )
    .unwrap();
    let seed = dir.join(format!("seed-{tag}.iso"));
    let o = imgbuild(
        &[
            "seed",
            seed.to_str().unwrap(),
            "--user-data",
            ud.to_str().unwrap(),
            "--meta-data",
            md.to_str().unwrap(),
            "--network-config",
            nc.to_str().unwrap(),
            "--vendor-data",
            vendor_data.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "imgbuild seed: {}", text(&o));
    seed
}

/// The manifest of the server disk in `out`.
fn server_manifest(out: &Path) -> Value {
    let path = out.join("debian-12-k3s-server_1.34.3-k3s1-1_amd64.qcow2.manifest.json");
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// `imgbuild build PROFILE [--recipe RECIPE] --output qcow2` into `out`;
/// the server disk it wrote.
fn build_server(profile: &Path, recipe: Option<&Path>, agent: &Path, out: &Path) -> PathBuf {
    let mut args = vec!["build", profile.to_str().unwrap()];
    if let Some(r) = recipe {
        args.extend(["--recipe", r.to_str().unwrap()]);
    }
    let cache = cache_dir();
    args.extend([
        "--output",
        "qcow2",
        "--agent",
        agent.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let o = imgbuild(&args, &[]);
    assert!(
        o.status.success(),
        "imgbuild build {}: {}",
        profile.display(),
        text(&o)
    );
    let disk = out.join("debian-12-k3s-server_1.34.3-k3s1-1_amd64.qcow2");
    assert!(disk.is_file(), "{} not built: {}", disk.display(), text(&o));
    disk
}

#[test]
fn server_qcow2_boots_under_seabios_and_ovmf() {
    require_root("the qcow2 boot test assembles a disk from a rootfs (file owners)");
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    require_tool("qemu-img", "qemu-utils");
    require_tool("debugfs", "e2fsprogs");
    require_tool("mkfs.xfs", "xfsprogs");
    require_tool("lvm", "lvm2");
    require_tool("mmdebstrap", "mmdebstrap");
    require_tool("ssh", "openssh-client");
    require_tool("ssh-keygen", "openssh-client");
    require_tool("dnsmasq", "dnsmasq-base");
    for f in [OVMF_CODE, OVMF_VARS] {
        assert!(
            Path::new(f).is_file(),
            "{f} not found; install it with: apt-get install -y ovmf"
        );
    }
    let standin = standin_binary();
    let agent = agent_binary();
    let work = tempfile::tempdir().unwrap();
    // IMGBUILD_E2E_KEEP=1 keeps the disks, seeds and serial logs for a look.
    let dir = &if std::env::var_os("IMGBUILD_E2E_KEEP").is_some() {
        let kept = work.keep();
        eprintln!("keeping {}", kept.display());
        kept
    } else {
        work.path().to_owned()
    };

    // 1. Build the qcow2.
    let out = dir.join("out");
    let t = Instant::now();
    let disk = build_server(
        &repo_root().join("profiles/server.yaml"),
        None,
        &agent,
        &out,
    );
    eprintln!(
        "built {} in {:.1} s",
        disk.display(),
        t.elapsed().as_secs_f64()
    );
    assert_eq!(
        files_in(&out),
        vec![
            "debian-12-k3s-server_1.34.3-k3s1-1_amd64.qcow2".to_string(),
            "debian-12-k3s-server_1.34.3-k3s1-1_amd64.qcow2.manifest.json".to_string(),
        ],
        "only the disk and its manifest, no leftovers"
    );
    let check = run_checked(
        Command::new("qemu-img")
            .args(["check", "-f", "qcow2"])
            .arg(&disk),
    );
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("No errors were found"),
        "{}",
        text(&check)
    );
    let manifest = server_manifest(&out);
    assert_eq!(manifest["kind"], "qcow2");
    assert_eq!(manifest["disk"]["base-format"], "assembled");
    assert_eq!(manifest["disk"]["root-label"], "cloudimg-rootfs");
    assert_eq!(manifest["disk"]["virtual-size"], 4u64 << 30);
    assert_eq!(manifest["artifact"]["sha256"], sha256_file(&disk));
    let ext4_root = GuestRoot::from_manifest(&manifest);
    assert_eq!(ext4_root.fs, "ext4");

    // The same server from the Debian bootstrap with lvm2 and xfsprogs
    // added, assembled once with an XFS root and once with XFS on an LVM LV
    // (Rocky GenericCloud's two shapes): the layer goes in through the loop
    // mount, and the guest's initramfs must find the root.
    let recipe = dir.join("debian-12-xfs-lvm.yaml");
    let base_recipe = fs::read_to_string(repo_root().join("image-recipes/debian-12.yaml")).unwrap();
    // The qcow2 bootstrap's package list ends the file: append to it.
    assert!(
        base_recipe
            .trim_end()
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("      - ")),
        "debian-12.yaml no longer ends with the qcow2 bootstrap's packages"
    );
    fs::write(
        &recipe,
        format!(
            "{}\n      - lvm2\n      - xfsprogs\n",
            base_recipe.trim_end()
        ),
    )
    .unwrap();
    let server = fs::read_to_string(repo_root().join("profiles/server.yaml")).unwrap();
    assert!(
        !server.contains("\nqcow2:"),
        "profiles/server.yaml has a qcow2 section now"
    );
    let mut disks = vec![("ext4", disk.clone(), ext4_root, sha256_file(&disk))];
    for root in ["xfs", "lvm"] {
        let profile = dir.join(format!("server-{root}.yaml"));
        fs::write(
            &profile,
            format!("{server}qcow2:\n  assemble-root: {root}\n"),
        )
        .unwrap();
        let out = dir.join(format!("out-{root}"));
        let t = Instant::now();
        let d = build_server(&profile, Some(&recipe), &agent, &out);
        eprintln!(
            "built {} in {:.1} s",
            d.display(),
            t.elapsed().as_secs_f64()
        );
        let m = server_manifest(&out);
        let g = GuestRoot::from_manifest(&m);
        assert_eq!(g.fs, "xfs", "{root}: {m:#}");
        assert_eq!(m["disk"]["root-label"], "cloudimg-xfs");
        assert_eq!(
            m["disk"]["root-lv"].as_str(),
            (root == "lvm").then_some("imgbuild/root"),
            "{m:#}"
        );
        assert_eq!(m["disk"]["selinux"]["method"], "none");
        assert_eq!(m["artifact"]["sha256"], sha256_file(&d));
        let sha = sha256_file(&d);
        disks.push((root, d, g, sha));
    }

    // The ext4 disk as a vendor cloud image: the server built from it is
    // patched (its bytes kept, the changed clusters appended) rather than
    // converted; the second build copies only the root's metadata, from the
    // map the first one kept. That disk boots too.
    let cloud_recipe = dir.join("debian-12-cloud.yaml");
    fs::write(
        &cloud_recipe,
        format!(
            "name: debian-12-cloud\ndistro: debian\nrelease: \"12\"\nqcow2:\n  cloud-image:\n    path: {}\n",
            disk.display()
        ),
    )
    .unwrap();
    for (round, copy) in [(0, "full"), (1, "metadata")] {
        let out = dir.join(format!("out-patched-{round}"));
        let d = build_server(
            &repo_root().join("profiles/server.yaml"),
            Some(&cloud_recipe),
            &agent,
            &out,
        );
        let m = server_manifest(&out);
        assert_eq!(m["disk"]["base-format"], "qcow2", "{m:#}");
        assert_eq!(m["disk"]["written"], "patched", "{m:#}");
        assert_eq!(m["disk"]["working-copy"], copy, "{m:#}");
        assert_eq!(m["artifact"]["sha256"], sha256_file(&d));
        run_checked(
            Command::new("qemu-img")
                .args(["check", "-f", "qcow2"])
                .arg(&d),
        );
        if round == 1 {
            let g = GuestRoot::from_manifest(&m);
            let sha = sha256_file(&d);
            disks.push(("patched", d, g, sha));
        }
    }

    // 2. The lab: bridge, dnsmasq, the stand-in release on the bridge.
    let mut lab = Lab::new();
    lab.create_bridge();
    lab.start_mirror(&standin);
    lab.start_dhcp();
    let key = dir.join("id_ed25519");
    run_checked(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "qcow2-e2e", "-f"])
            .arg(&key),
    );
    let public_key = fs::read_to_string(key.with_extension("pub")).unwrap();
    let token = format!("qcow2-e2e-{}", std::process::id());
    let hostname = "k3s-qcow2-e2e";
    // vendor-data (`cicustom vendor=local:snippets/k3s.yaml`) carries the
    // K3s settings; Proxmox keeps generating user-data.
    let vendor_data = dir.join("vendor-data");
    fs::write(
        &vendor_data,
        format!(
            "#cloud-config\nk3s:\n  role: server\n  token: {token}\n  mirror: {}\n",
            lab.mirror_url
        ),
    )
    .unwrap();

    // 3. Boot each firmware from its own overlay.
    // 3. Boot each firmware from its own overlay.
    // ext4 under both firmwares; the XFS root under OVMF and the LVM root
    // under SeaBIOS: each root shape and each firmware boots at least once,
    // in four TCG boots instead of six. The patched disk boots under OVMF.
    let cases = [
        (0, Firmware::SeaBios),
        (0, Firmware::Ovmf),
        (1, Firmware::Ovmf),
        (2, Firmware::SeaBios),
        (3, Firmware::Ovmf),
    ];
    let mut timings = Vec::new();
    for (n, (which, fw)) in cases.into_iter().enumerate() {
        let (root_kind, disk, root, _) = &disks[which];
        let tag = format!("{root_kind}-{}", fw.name());
        let tag = tag.as_str();
        let mac = format!("52:54:00:12:34:{:02x}", 0x10 + n);
        let static_ip = (fw_is_static(fw)).then(|| format!("{}.{}", lab.net, 20 + n));
        let seed = proxmox_seed(
            dir,
            tag,
            hostname,
            &public_key,
            &mac,
            static_ip.as_deref(),
            &lab.host_ip(),
            &vendor_data,
        );
        let overlay = dir.join(format!("overlay-{tag}.qcow2"));
        // Two GiB more than the disk, as `qm resize` would make it.
        run_checked(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
                .arg(disk)
                .arg(&overlay)
                .arg(format!("{}", (4u64 << 30) + (2u64 << 30))),
        );
        let tap = Tap::new(
            format!("ibtap{}{n}", std::process::id() % 1_000_000),
            &lab.bridge,
        );
        let started = Instant::now();
        let mut vm = start_vm(fw, tag, &overlay, &seed, &tap, &mac, dir);
        let done_line = loop {
            let s = serial_text(&vm);
            if let Some(l) = s.lines().find(|l| l.contains(FINISHED)) {
                break l.to_owned();
            }
            if let Ok(Some(status)) = vm.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = vm.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                panic!(
                    "{}: qemu exited ({status}) before the agent finished: {err}\nserial:\n{}",
                    tag,
                    tail(&s, 6000)
                );
            }
            if started.elapsed() > BOOT_TIMEOUT {
                let _ = vm.child.kill();
                panic!(
                    "{}: no `{FINISHED}` line within {:?}; serial:\n{}",
                    tag,
                    BOOT_TIMEOUT,
                    tail(&s, 8000)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        let wall = started.elapsed().as_secs_f64();
        eprintln!("{}: {done_line}", tag);

        // Logged in with the seed's key, over the bridge: the address
        // network-config gave (or dnsmasq's lease), cloud-init's host name,
        // and the root grown to the larger disk.
        let ip = match &static_ip {
            Some(ip) => ip.clone(),
            None => lab
                .leases()
                .into_iter()
                .find(|(m, _, _)| *m == mac)
                .map(|(_, ip, _)| ip)
                .unwrap_or_else(|| panic!("{}: no DHCP lease for {mac}: {:?}", tag, lab.leases())),
        };
        let login = poll(
            &format!("{}: SSH log-in as k3sadmin@{ip} with the seed's key", tag),
            Duration::from_secs(120),
            Duration::from_secs(2),
            || {
                let o = run(Command::new("ssh")
                    .arg("-i")
                    .arg(&key)
                    .args([
                        "-o", "BatchMode=yes",
                        "-o", "StrictHostKeyChecking=no",
                        "-o", "UserKnownHostsFile=/dev/null",
                        "-o", "ConnectTimeout=5",
                        "-o", "LogLevel=ERROR",
                    ])
                    .arg(format!("k3sadmin@{ip}"))
                    .arg("hostname; ip -4 -o addr show dev eth0; findmnt -bno SIZE /; cat /sys/class/net/eth0/address"));
                o.status
                    .success()
                    .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
            },
        );
        let mut lines = login.lines();
        assert_eq!(lines.next(), Some(hostname), "{}: {login}", tag);
        assert!(
            lines
                .next()
                .is_some_and(|l| l.contains(&format!("inet {ip}/24"))),
            "{}: eth0 does not have {ip}/24: {login}",
            tag
        );
        let root_size: u64 = lines
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("{}: {login}", tag));
        if *root_kind == "lvm" {
            // cloud-init's growpart grows partitions, not an LV on one: the
            // LV keeps the size it was made with (docs/qcow2.md).
            // `findmnt SIZE` is the filesystem's (the LV less XFS's log).
            assert!(
                root_size <= root.size && root_size > root.size / 10 * 9,
                "{tag}: the root ({root_size} bytes) is not the {}-byte LV's filesystem",
                root.size
            );
        } else {
            assert!(
                root_size > (5u64 << 30) + (512u64 << 20),
                "{tag}: the root ({root_size} bytes) was not grown to the 6 GiB disk",
            );
        }
        assert_eq!(lines.next(), Some(mac.as_str()), "{}: {login}", tag);
        // Password log-in is not offered.
        let o = run(Command::new("ssh")
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "PubkeyAuthentication=no",
                "-o",
                "PreferredAuthentications=password,keyboard-interactive",
                "-o",
                "ConnectTimeout=5",
            ])
            .arg(format!("k3sadmin@{ip}"))
            .arg("true"));
        assert!(!o.status.success(), "{}: logged in without the key", tag);

        // A clean ACPI power-off, so the journal is flushed to the disk.
        vm.monitor.write_all(b"system_powerdown\n").unwrap();
        vm.monitor.flush().unwrap();
        let off = Instant::now();
        let status = loop {
            if let Some(s) = vm.child.try_wait().unwrap() {
                break s;
            }
            if off.elapsed() > POWEROFF_TIMEOUT {
                let _ = vm.child.kill();
                panic!(
                    "{}: the VM did not power off within {:?}; serial:\n{}",
                    tag,
                    POWEROFF_TIMEOUT,
                    tail(&serial_text(&vm), 4000)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        assert!(status.success(), "{}: qemu exited with {status}", tag);
        let serial = serial_text(&vm);
        match fw {
            Firmware::SeaBios => assert!(
                !serial.contains("EFI stub"),
                "SeaBIOS boot went through EFI?\n{}",
                tail(&serial, 3000)
            ),
            Firmware::Ovmf => assert!(
                serial.contains("EFI stub") || serial.contains("efi: EFI v"),
                "the OVMF boot shows no sign of UEFI:\n{}",
                tail(&serial, 3000)
            ),
        }

        // 4. What the agent did, read from the powered-off disk.
        let guest = Offline::open(&overlay, root, dir);
        let result = guest.json("/var/lib/firstboot-agent/result.json");
        assert_eq!(result["finished"], true, "{}: {result:#}", tag);
        assert!(
            guest.read("/var/lib/firstboot-agent/done").is_some(),
            "{}: no done marker",
            tag
        );
        assert_eq!(
            guest.read("/etc/hostname").unwrap().trim(),
            hostname,
            "{}: host name not taken from the seed",
            tag
        );
        drop(tap);
        // DNS from DHCP: systemd-resolved ran and owns /etc/resolv.conf.
        assert!(
            serial
                .lines()
                // systemd shortens the unit name on the console; the
                // description is whole.
                .any(|l| l.contains("Started") && l.contains("Network Name Resolution")),
            "{}: systemd-resolved did not start:\n{}",
            tag,
            tail(&serial, 3000)
        );
        let link = guest.link("/etc/resolv.conf");
        assert!(
            link.contains("stub-resolv.conf"),
            "{tag}: /etc/resolv.conf is not systemd-resolved's link: {link}"
        );
        assert!(
            !serial.contains("Failed to start"),
            "{}: a unit failed:\n{}",
            tag,
            serial
                .lines()
                .filter(|l| l.contains("Failed to start"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let eff = guest.json("/var/lib/rancher/k3s/standin/effective-config.json");
        assert_eq!(eff["role"], "server", "{}: {eff:#}", tag);
        assert_eq!(eff["status"], "running", "{}: {eff:#}", tag);
        let token_sha = sha256_hex(token.as_bytes());
        assert_eq!(
            eff["token"]["sha256"],
            token_sha.as_str(),
            "{}: K3s did not start with the vendor-data's token: {eff:#}",
            tag
        );
        let installed = guest
            .read("/usr/local/bin/k3s")
            .expect("/usr/local/bin/k3s missing");
        assert!(
            installed.contains(&format!("#k3s-standin-version={K3S_VERSION}")),
            "{}: /usr/local/bin/k3s is not the mirror's release",
            tag
        );
        drop(guest);
        timings.push((tag.to_owned(), wall, result["boot-to-done-secs"].clone()));
    }

    // The built disks themselves were never written to.
    for (kind, d, _, sha) in &disks {
        assert_eq!(&sha256_file(d), sha, "the {kind} artifact changed");
    }
    eprintln!("\nboot-to-agent-done (qemu TCG, software emulation):");
    for (fw, wall, boot) in timings {
        eprintln!(
            "  {fw:<14} {wall:6.1} s wall from qemu start; result.json boot-to-done-secs {boot}"
        );
    }
}
