//! Memory-backed scratch space for the raw working copy, and the sweep of
//! what a killed build left there.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::output::leftovers;

/// Prefix of scratch directories in memory (`imgbuild-disk-PID-XXXXXX`);
/// [`sweep_stale_scratch`] finds them by it.
const SCRATCH_PREFIX: &str = "imgbuild-disk-";
/// The file naming the process that owns a scratch directory made before
/// the pid was part of the name.
const OWNER_FILE: &str = "owner.pid";

/// Memory-backed scratch space (`$IMGBUILD_SCRATCH_DIR`, else `/dev/shm`)
/// when it has room for `need` bytes with 2 GiB of the machine's available
/// memory to spare; `None` means "use the work directory beside the output".
pub fn scratch_dir(need: u64) -> Result<Option<tempfile::TempDir>> {
    let forced = std::env::var_os("IMGBUILD_SCRATCH_DIR").map(PathBuf::from);
    let dir = match &forced {
        Some(d) => d.clone(),
        None => {
            let shm = Path::new("/dev/shm");
            sweep_stale_scratch(shm);
            let room = mem_available().zip(free_space(shm));
            match room {
                Some((mem, free)) if mem > need.saturating_add(2 << 30) && free > need => {
                    shm.to_owned()
                }
                _ => {
                    tracing::debug!(need, "scratch on disk, beside the output");
                    return Ok(None);
                }
            }
        }
    };
    let made = tempfile::Builder::new()
        .prefix(&format!("{SCRATCH_PREFIX}{}-", std::process::id()))
        .tempdir_in(&dir);
    match made {
        Ok(t) => {
            tracing::debug!(dir = %t.path().display(), "scratch space");
            Ok(Some(t))
        }
        Err(e) if forced.is_some() => {
            Err(e).with_context(|| format!("creating scratch space in {}", dir.display()))
        }
        Err(e) => {
            tracing::debug!(error = %e, "no scratch space in memory; using the output directory");
            Ok(None)
        }
    }
}

/// Remove scratch directories in `dir` whose owning process is gone (an
/// imgbuild killed outright cannot clean up, and memory is not freed until
/// they are removed): by the pid in the name, else by an `owner.pid` file
/// (older builds), else by age.
fn sweep_stale_scratch(dir: &Path) {
    let owner = |name: &str| {
        let rest = name.strip_prefix(SCRATCH_PREFIX)?;
        let pid = leftovers::pid_after(rest, "", '-').or_else(|| {
            fs::read_to_string(dir.join(name).join(OWNER_FILE))
                .ok()
                .and_then(|p| p.trim().parse().ok())
        });
        Some(pid.map_or(leftovers::Owner::Unknown, leftovers::Owner::Pid))
    };
    if let Err(e) = leftovers::sweep(dir, owner) {
        tracing::warn!(dir = %dir.display(), "cannot remove scratch space left by an interrupted build: {e}");
    }
}

/// `MemAvailable` from /proc/meminfo, in bytes.
fn mem_available() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn free_space(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(st.blocks_available() as u64 * st.fragment_size() as u64)
}
