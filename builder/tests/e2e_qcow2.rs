//! The qcow2 boot test: build the server profile's qcow2 (a GPT disk
//! assembled from the Debian 12 mmdebstrap rootfs with a kernel), then boot
//! it under `qemu-system-x86_64 -accel tcg` twice — SeaBIOS (legacy BIOS)
//! and OVMF (UEFI) — each time from a copy-on-write overlay, with a NoCloud
//! `cidata` ISO made by `imgbuild seed` and the stand-in K3s release served
//! on the host's loopback (the guest reaches it at 10.0.2.2 through qemu's
//! user networking; nothing leaves the machine).
//!
//! For each firmware: wait for firstboot-agent's final line on the serial
//! console, power the VM off through ACPI, then read the overlay's root
//! filesystem offline with debugfs and check what the agent did: result,
//! done marker, host name from the seed, and the stand-in K3s's effective
//! configuration (role, the seed's token). Boot-to-agent-done is printed.
//!
//! KVM is never used (`-accel tcg`): it hangs on the machines this runs on.
//! Needs root (the disk assembly keeps file owners), qemu-system-x86,
//! qemu-utils, ovmf, e2fsprogs, the static agent and the static stand-in.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;

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

/// Children killed on drop, so a failed assertion leaves no VM or mirror.
#[derive(Default)]
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
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

fn start_vm(fw: Firmware, disk: &Path, seed: &Path, dir: &Path) -> Vm {
    let serial = dir.join(format!("serial-{}.log", fw.name()));
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
        .args([
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0",
        ]);
    if let Firmware::Ovmf = fw {
        let vars = dir.join("OVMF_VARS.fd");
        fs::copy(OVMF_VARS, &vars).unwrap();
        cmd.args(["-machine", "q35"])
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()));
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(fs::File::create(dir.join(format!("qemu-{}.out", fw.name()))).unwrap())
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

/// Read a file from the root filesystem of a (powered-off) qcow2.
struct Offline {
    raw: PathBuf,
    offset: u64,
}

impl Offline {
    fn open(qcow2: &Path, offset: u64, dir: &Path) -> Self {
        let raw = dir.join("inspect.raw");
        let _ = fs::remove_file(&raw);
        run_checked(
            Command::new("qemu-img")
                .args(["convert", "-O", "raw"])
                .arg(qcow2)
                .arg(&raw),
        );
        Offline { raw, offset }
    }

    fn spec(&self) -> String {
        format!("{}?offset={}", self.raw.display(), self.offset)
    }

    fn read(&self, path: &str) -> Option<String> {
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

    fn json(&self, path: &str) -> Value {
        let t = self
            .read(path)
            .unwrap_or_else(|| panic!("{path} is missing from the guest's disk"));
        serde_json::from_str(&t).unwrap_or_else(|e| panic!("{path}: {e}\n{t}"))
    }
}

impl Drop for Offline {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.raw);
    }
}

#[test]
fn server_qcow2_boots_under_seabios_and_ovmf() {
    require_root("the qcow2 boot test assembles a disk from a rootfs (file owners)");
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    require_tool("qemu-img", "qemu-utils");
    require_tool("debugfs", "e2fsprogs");
    require_tool("mmdebstrap", "mmdebstrap");
    for f in [OVMF_CODE, OVMF_VARS] {
        assert!(
            Path::new(f).is_file(),
            "{f} not found; install it with: apt-get install -y ovmf"
        );
    }
    let standin = standin_binary();
    let agent = agent_binary();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let mut procs = Procs::default();

    // 1. Build the qcow2.
    let out = dir.join("out");
    let t = Instant::now();
    let o = imgbuild(
        &[
            "build",
            repo_root().join("profiles/server.yaml").to_str().unwrap(),
            "--output",
            "qcow2",
            "--agent",
            agent.to_str().unwrap(),
            "--cache-dir",
            cache_dir().to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "imgbuild build: {}", text(&o));
    let disk = out.join("debian-12-k3s-server_1.34.3-k3s1-1_amd64.qcow2");
    assert!(disk.is_file(), "{} not built: {}", disk.display(), text(&o));
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
    let manifest: Value = serde_json::from_slice(
        &fs::read(out.join("debian-12-k3s-server_1.34.3-k3s1-1_amd64.qcow2.manifest.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["kind"], "qcow2");
    assert_eq!(manifest["disk"]["base-format"], "assembled");
    assert_eq!(manifest["disk"]["root-label"], "cloudimg-rootfs");
    assert_eq!(manifest["disk"]["virtual-size"], 4u64 << 30);
    assert_eq!(manifest["artifact"]["sha256"], sha256_file(&disk));
    let root_offset = manifest["disk"]["root-offset"].as_u64().unwrap();
    let disk_sha = sha256_file(&disk);

    // 2. The stand-in release mirror on loopback, and the seed.
    let mirror_dir = dir.join("mirror");
    let mut mirror = Command::new(&standin)
        .arg("serve-mirror")
        .arg("--dir")
        .arg(&mirror_dir)
        .args(["--listen", "127.0.0.1:0", "--version", K3S_VERSION])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(dir.join("mirror.log")).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(mirror.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    procs.0.push(mirror);
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("serve-mirror printed {line:?}"));
    // qemu's user network: the host's loopback is 10.0.2.2 in the guest.
    let guest_mirror = format!("http://10.0.2.2:{port}");

    let token = format!("qcow2-e2e-{}", std::process::id());
    let hostname = "k3s-qcow2-e2e";
    let user_data = dir.join("user-data");
    fs::write(
        &user_data,
        format!(
            "#cloud-config\nhostname: {hostname}\nk3s:\n  role: server\n  token: {token}\n  mirror: {guest_mirror}\n"
        ),
    )
    .unwrap();
    let seed = dir.join("seed.iso");
    let o = imgbuild(
        &[
            "seed",
            seed.to_str().unwrap(),
            "--user-data",
            user_data.to_str().unwrap(),
            "--instance-id",
            "iid-qcow2-e2e",
            "--hostname",
            hostname,
        ],
        &[],
    );
    assert!(o.status.success(), "imgbuild seed: {}", text(&o));

    // 3. Boot each firmware from its own overlay.
    let mut timings = Vec::new();
    for fw in [Firmware::SeaBios, Firmware::Ovmf] {
        let overlay = dir.join(format!("overlay-{}.qcow2", fw.name()));
        run_checked(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
                .arg(&disk)
                .arg(&overlay),
        );
        let started = Instant::now();
        let mut vm = start_vm(fw, &overlay, &seed, dir);
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
                    fw.name(),
                    tail(&s, 6000)
                );
            }
            if started.elapsed() > BOOT_TIMEOUT {
                let _ = vm.child.kill();
                panic!(
                    "{}: no `{FINISHED}` line within {:?}; serial:\n{}",
                    fw.name(),
                    BOOT_TIMEOUT,
                    tail(&s, 8000)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        let wall = started.elapsed().as_secs_f64();
        eprintln!("{}: {done_line}", fw.name());

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
                    fw.name(),
                    POWEROFF_TIMEOUT,
                    tail(&serial_text(&vm), 4000)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        assert!(status.success(), "{}: qemu exited with {status}", fw.name());
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
        let guest = Offline::open(&overlay, root_offset, dir);
        let result = guest.json("/var/lib/firstboot-agent/result.json");
        assert_eq!(result["finished"], true, "{}: {result:#}", fw.name());
        assert!(
            guest.read("/var/lib/firstboot-agent/done").is_some(),
            "{}: no done marker",
            fw.name()
        );
        assert_eq!(
            guest.read("/etc/hostname").unwrap().trim(),
            hostname,
            "{}: host name not taken from the seed",
            fw.name()
        );
        // DNS from DHCP: systemd-resolved ran and owns /etc/resolv.conf.
        assert!(
            serial
                .lines()
                // systemd shortens the unit name on the console; the
                // description is whole.
                .any(|l| l.contains("Started") && l.contains("Network Name Resolution")),
            "{}: systemd-resolved did not start:\n{}",
            fw.name(),
            tail(&serial, 3000)
        );
        let o = run_checked(
            Command::new("debugfs")
                .args(["-R", "stat /etc/resolv.conf"])
                .arg(guest.spec()),
        );
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("stub-resolv.conf"),
            "{}: /etc/resolv.conf is not systemd-resolved's link: {}",
            fw.name(),
            text(&o)
        );
        let eff = guest.json("/var/lib/rancher/k3s/standin/effective-config.json");
        assert_eq!(eff["role"], "server", "{}: {eff:#}", fw.name());
        assert_eq!(eff["status"], "running", "{}: {eff:#}", fw.name());
        let token_sha = sha256_hex(token.as_bytes());
        assert_eq!(
            eff["token"]["sha256"],
            token_sha.as_str(),
            "{}: K3s did not start with the seed's token: {eff:#}",
            fw.name()
        );
        let installed = guest
            .read("/usr/local/bin/k3s")
            .expect("/usr/local/bin/k3s missing");
        assert!(
            installed.contains(&format!("#k3s-standin-version={K3S_VERSION}")),
            "{}: /usr/local/bin/k3s is not the mirror's release",
            fw.name()
        );
        timings.push((fw.name(), wall, result["boot-to-done-secs"].clone()));
    }

    // The built disk itself was never written to.
    assert_eq!(sha256_file(&disk), disk_sha, "the artifact changed");
    eprintln!("\nboot-to-agent-done (qemu TCG, software emulation):");
    for (fw, wall, boot) in timings {
        eprintln!(
            "  {fw:<8} {wall:6.1} s wall from qemu start; result.json boot-to-done-secs {boot}"
        );
    }
}
