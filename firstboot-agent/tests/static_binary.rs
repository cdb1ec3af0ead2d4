//! The shipped binary must be static: no program interpreter (PT_INTERP) and
//! no shared-library dependencies (DT_NEEDED), so one file runs on every
//! supported distribution. Builds it with build-static.sh (slow the first
//! time) unless FIRSTBOOT_AGENT_STATIC_BIN points at a built one.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::PathBuf;
use std::process::Command;

const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;

fn u16le(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64le(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// (has PT_INTERP, number of DT_NEEDED entries) of an ELF64 LE file.
fn inspect(elf: &[u8]) -> (bool, usize) {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not ELF64");
    assert_eq!(elf[5], 1, "not little-endian");
    let phoff = u64le(elf, 0x20) as usize;
    let phentsize = u16le(elf, 0x36) as usize;
    let phnum = u16le(elf, 0x38) as usize;
    let mut interp = false;
    let mut needed = 0;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        match u32le(elf, ph) {
            PT_INTERP => interp = true,
            PT_DYNAMIC => {
                let off = u64le(elf, ph + 8) as usize;
                let size = u64le(elf, ph + 32) as usize;
                for d in (off..off + size).step_by(16) {
                    match u64le(elf, d) {
                        DT_NULL => break,
                        DT_NEEDED => needed += 1,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    (interp, needed)
}

fn static_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("FIRSTBOOT_AGENT_STATIC_BIN") {
        return p.into();
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("build-static.sh");
    let out = Command::new(&script)
        .output()
        .expect("running build-static.sh");
    assert!(
        out.status.success(),
        "build-static.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8(out.stdout).unwrap();
    PathBuf::from(
        path.lines()
            .last()
            .expect("build-static.sh printed no path")
            .trim(),
    )
}

#[test]
fn elf_inspection_tells_dynamic_from_static() {
    // The test binary itself is dynamically linked: the check must see that.
    let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let (interp, needed) = inspect(&me);
    assert!(
        interp && needed > 0,
        "expected the test binary to be dynamic"
    );
}

#[test]
fn shipped_binary_is_static_and_runs() {
    let bin = static_binary();
    let elf = std::fs::read(&bin).unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    let (interp, needed) = inspect(&elf);
    assert!(
        !interp,
        "{} has a program interpreter (PT_INTERP): not static",
        bin.display()
    );
    assert_eq!(
        needed,
        0,
        "{} needs shared libraries (DT_NEEDED)",
        bin.display()
    );
    let out = Command::new(&bin).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("firstboot-agent "));
}
