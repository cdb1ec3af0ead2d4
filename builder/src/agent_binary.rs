//! The firstboot-agent binary that is baked into images: where to find it,
//! and the check that it will run on every supported distro (a static
//! x86_64 ELF: Ubuntu 22.04 and Rocky 9 have older glibc than the build
//! host may). ELF headers are read with `goblin`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Where the statically linked agent is, in the order a user would expect:
/// `$IMGBUILD_AGENT`, next to `imgbuild`, then the static build's output in
/// this workspace's target directory.
pub fn find() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("IMGBUILD_AGENT") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("locating the imgbuild executable")?;
    let mut candidates = Vec::new();
    if let Some(dir) = exe.parent() {
        candidates.push(dir.join("firstboot-agent"));
        // target/{debug,release}/imgbuild → target/x86_64-unknown-linux-gnu/release/
        if let Some(target_dir) = dir.parent() {
            candidates.push(target_dir.join("x86_64-unknown-linux-gnu/release/firstboot-agent"));
        }
        // target/debug/deps/… when run from tests
        if let Some(target_dir) = dir.parent().and_then(Path::parent) {
            candidates.push(target_dir.join("x86_64-unknown-linux-gnu/release/firstboot-agent"));
        }
    }
    // Prefer the static build over a plain one next to imgbuild.
    candidates.rotate_left(1);
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "firstboot-agent binary not found (looked in {}); build it with `bash firstboot-agent/build-static.sh`, or pass --agent PATH",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// Refuse an agent that would not run on every supported distro: it must be
/// an x86_64 ELF without a program interpreter (statically linked).
pub fn check(path: &Path) -> Result<()> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading agent binary {}", path.display()))?;
    match elf_interpreter(&bytes) {
        Err(why) => bail!("{} is not a usable firstboot-agent: {why}", path.display()),
        Ok(Some(interp)) => bail!(
            "{} is dynamically linked (interpreter {interp}); it may not run on Rocky 9 or Ubuntu 22.04. Build it with `bash firstboot-agent/build-static.sh`",
            path.display()
        ),
        Ok(None) => Ok(()),
    }
}

/// The program interpreter (PT_INTERP) of an x86_64 ELF, if it has one.
pub fn elf_interpreter(b: &[u8]) -> std::result::Result<Option<String>, String> {
    use goblin::elf::{header, Elf};
    if b.get(0..4) != Some(b"\x7fELF") {
        return Err("not an ELF file".into());
    }
    let elf = Elf::parse(b).map_err(|e| format!("a damaged ELF file ({e})"))?;
    if !elf.is_64 || !elf.little_endian || elf.header.e_machine != header::EM_X86_64 {
        return Err("not an x86_64 (64-bit little-endian) ELF file".into());
    }
    Ok(elf.interpreter.map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_checks() {
        assert!(elf_interpreter(b"#!/bin/sh\n")
            .unwrap_err()
            .contains("not an ELF"));
        // The test binary itself is dynamically linked on this target.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let interp = elf_interpreter(&me).unwrap();
        assert!(interp.is_some_and(|i| i.contains("ld-linux")));
        let mut truncated = me[..64].to_vec();
        truncated.truncate(40);
        assert!(elf_interpreter(&truncated).is_err());
    }
}
