//! Where the fuzz targets that go through files write their inputs: a
//! directory in memory when the machine has /dev/shm, else the usual temp
//! directory. Shared by the builder's and the agent's fuzz targets.

/// A fresh temporary directory, removed when dropped.
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("creating a temporary directory")
}
