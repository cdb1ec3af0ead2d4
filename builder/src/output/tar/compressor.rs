//! zstd compression on a thread of its own, so a cancel takes effect at
//! once at any level.
//!
//! zstd's multi-threaded encoder cuts its input into jobs (32 MiB at level
//! 19) and cannot stop a job once a worker has it: a `write` blocks while
//! every worker is busy and `finish` until the last job is done — 35 to 104 s
//! at level 19 on two cores. Here the tar stream goes through a small
//! bounded queue to the thread that owns the encoder; whoever waits on that
//! thread (the writer when the queue is full, [`Compressor::finish`]) looks
//! at the cancel flag every [`POLL`]. On a cancel the thread is abandoned:
//! it stops at its next chunk and drops the encoder once zstd's workers
//! are through with the jobs they hold — CPU spent in the background, never
//! the caller's time. The caller deletes the temp file (the thread writes
//! into an unlinked inode until then), and a CLI exits at once anyway.
//!
//! The encoder and its input bytes are what they were without the thread,
//! so the output is the same byte for byte.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// How often a waiting caller looks at the cancel flag.
pub(in crate::output) const POLL: Duration = Duration::from_millis(50);
/// Bytes handed to the encoder at a time.
const CHUNK: usize = 1 << 20;
/// Chunks queued for the encoder: enough to keep it fed while the rewriter
/// reads a slow stretch of the base, small enough to hold little memory.
const DEPTH: usize = 8;

/// What the compressor thread wrote.
#[derive(Debug)]
pub(in crate::output) struct Compressed {
    pub sha256: node_spec::Sha256Hex,
    pub size: u64,
}

/// Why [`Compressor::finish`] or a write gave up.
#[derive(Debug)]
pub(in crate::output) enum Stop {
    /// The cancel flag was set.
    Interrupted,
    /// Compressing or writing the file failed.
    Io(io::Error),
}

#[derive(Debug, Default)]
struct State {
    queued: VecDeque<Vec<u8>>,
    /// Empty buffers handed back by the thread, for reuse.
    spare: Vec<Vec<u8>>,
    /// The writer is done: the thread finishes the frame after the queue.
    closed: bool,
    /// The caller went away: the thread stops.
    abandoned: bool,
    /// The thread stopped on an error (it sends the error itself).
    failed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The thread's next chunk; `None` once the writer closed and the queue
    /// is empty.
    fn next(&self) -> io::Result<Option<Vec<u8>>> {
        let mut state = self.lock();
        loop {
            if state.abandoned {
                return Err(io::Error::other("abandoned"));
            }
            if let Some(chunk) = state.queued.pop_front() {
                self.changed.notify_all();
                return Ok(Some(chunk));
            }
            if state.closed {
                return Ok(None);
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn recycle(&self, mut chunk: Vec<u8>) {
        chunk.clear();
        let mut state = self.lock();
        if state.spare.len() <= DEPTH {
            state.spare.push(chunk);
        }
    }

    fn set(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }
}

/// The writing end on the caller's thread; the encoder runs on another.
#[derive(Debug)]
pub(in crate::output) struct Compressor<'c> {
    shared: Arc<Shared>,
    current: Vec<u8>,
    result: Receiver<io::Result<Compressed>>,
    cancel: &'c AtomicBool,
    finished: bool,
}

impl<'c> Compressor<'c> {
    /// Starts a thread that compresses everything written to the returned
    /// writer into `file`, zstd at `level` with `workers` (≥ 1) workers and
    /// a content checksum, hashing what it writes.
    pub fn start(file: File, level: i32, workers: u32, cancel: &'c AtomicBool) -> io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let (tx, result) = mpsc::channel();
        let theirs = shared.clone();
        std::thread::Builder::new()
            .name("imgbuild-zstd".into())
            .spawn(move || {
                let outcome = compress(&theirs, file, level, workers);
                if outcome.is_err() {
                    theirs.set(|s| s.failed = true);
                }
                // The caller may have gone; then nobody wants the result.
                let _ = tx.send(outcome);
            })?;
        Ok(Compressor {
            shared,
            current: Vec::with_capacity(CHUNK),
            result,
            cancel,
            finished: false,
        })
    }

    /// Queues the current chunk, waiting (and watching the cancel flag)
    /// while the queue is full.
    fn push(&mut self) -> Result<(), Stop> {
        let shared = self.shared.clone();
        let mut state = shared.lock();
        loop {
            if state.failed {
                drop(state);
                return Err(self.thread_error());
            }
            if state.queued.len() < DEPTH {
                let fresh = state
                    .spare
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(CHUNK));
                state
                    .queued
                    .push_back(std::mem::replace(&mut self.current, fresh));
                shared.changed.notify_all();
                return Ok(());
            }
            if self.cancel.load(Ordering::Relaxed) {
                return Err(Stop::Interrupted);
            }
            state = shared
                .changed
                .wait_timeout(state, POLL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The error the thread stopped on.
    fn thread_error(&self) -> Stop {
        match self.result.recv() {
            Ok(Err(e)) => Stop::Io(e),
            Ok(Ok(_)) => Stop::Io(io::Error::other("the compressor stopped early")),
            Err(_) => Stop::Io(io::Error::other("the compressor thread panicked")),
        }
    }

    /// Ends the stream and waits for the file, giving up at a cancel.
    pub fn finish(mut self) -> Result<Compressed, Stop> {
        if !self.current.is_empty() {
            self.push()?;
        }
        self.shared.set(|s| s.closed = true);
        loop {
            match self.result.recv_timeout(POLL) {
                Ok(outcome) => {
                    self.finished = true;
                    return outcome.map_err(Stop::Io);
                }
                Err(RecvTimeoutError::Timeout) if self.cancel.load(Ordering::Relaxed) => {
                    return Err(Stop::Interrupted)
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Stop::Io(io::Error::other("the compressor thread panicked")))
                }
            }
        }
    }
}

impl Drop for Compressor<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.shared.set(|s| s.abandoned = true);
        }
    }
}

impl Write for Compressor<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.current.len();
        let n = room.min(buf.len());
        self.current.extend_from_slice(&buf[..n]);
        if self.current.len() == CHUNK {
            self.push().map_err(|stop| match stop {
                Stop::Io(e) => e,
                // Not `ErrorKind::Interrupted`: `write_all` retries that.
                Stop::Interrupted => io::Error::other("interrupted"),
            })?;
        }
        Ok(n)
    }

    /// Chunks go out when full or at [`Compressor::finish`]; nothing to do.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The thread's work: queue → encoder → hashing → file, then fsync.
fn compress(shared: &Shared, file: File, level: i32, workers: u32) -> io::Result<Compressed> {
    let hashing = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        written: 0,
    };
    let mut encoder = zstd::stream::write::Encoder::new(hashing, level)?;
    encoder.include_checksum(true)?;
    encoder.multithread(workers)?;
    while let Some(chunk) = shared.next()? {
        encoder.write_all(&chunk)?;
        shared.recycle(chunk);
    }
    let mut hashing = encoder.finish()?;
    hashing.flush()?;
    let HashingWriter {
        inner,
        hasher,
        written,
    } = hashing;
    let file = inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(Compressed {
        sha256: node_spec::Sha256Hex::from_digest(&hasher.finalize()),
        size: written,
    })
}

/// Hashes and counts what goes to the file, so the digest needs no second read.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn noise(len: usize, mut seed: u32) -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                b'a' + (seed % 16) as u8
            })
            .collect()
    }

    #[test]
    fn output_is_zstd_of_the_input_whatever_the_write_sizes() {
        let data = noise(5 << 20, 7);
        let mut digests = Vec::new();
        for piece in [1, 512, 300_000, CHUNK + 1] {
            let tmp = tempfile::tempfile().unwrap();
            let cancel = AtomicBool::new(false);
            let mut c = Compressor::start(tmp.try_clone().unwrap(), 3, 2, &cancel).unwrap();
            for part in data.chunks(piece) {
                c.write_all(part).unwrap();
            }
            let done = c.finish().unwrap();
            let mut packed = Vec::new();
            let mut f = tmp;
            std::io::Seek::rewind(&mut f).unwrap();
            f.read_to_end(&mut packed).unwrap();
            assert_eq!(done.size, packed.len() as u64);
            assert_eq!(zstd::decode_all(&packed[..]).unwrap(), data);
            digests.push(done.sha256);
        }
        assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    }

    #[test]
    fn output_is_what_the_encoder_writes_on_the_callers_thread() {
        // The bytes of a template must not depend on the thread.
        let data = noise(6 << 20, 11);
        let mut direct = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        direct.include_checksum(true).unwrap();
        direct.multithread(2).unwrap();
        direct.write_all(&data).unwrap();
        let direct = direct.finish().unwrap();
        let mut tmp = tempfile::tempfile().unwrap();
        let cancel = AtomicBool::new(false);
        let mut c = Compressor::start(tmp.try_clone().unwrap(), 3, 2, &cancel).unwrap();
        c.write_all(&data).unwrap();
        c.finish().unwrap();
        let mut threaded = Vec::new();
        std::io::Seek::rewind(&mut tmp).unwrap();
        tmp.read_to_end(&mut threaded).unwrap();
        assert!(threaded == direct, "the compressed bytes differ");
    }

    #[test]
    fn a_cancel_stops_a_writer_waiting_for_a_busy_level_19_encoder() {
        // The writer outruns level 19 by far: it is soon waiting for room in
        // the queue, which only a finished zstd job would make.
        let tmp = tempfile::tempfile().unwrap();
        let cancel = AtomicBool::new(false);
        let latency = std::thread::scope(|s| {
            let writer = s.spawn(|| {
                let mut c = Compressor::start(tmp, 19, 1, &cancel).unwrap();
                let mut seed = 1;
                loop {
                    let chunk = noise(1 << 20, seed);
                    seed += 1;
                    if let Err(e) = c.write_all(&chunk) {
                        return e;
                    }
                }
            });
            std::thread::sleep(Duration::from_secs(3));
            let asked = std::time::Instant::now();
            cancel.store(true, Ordering::Relaxed);
            let err = writer.join().unwrap();
            assert_eq!(err.to_string(), "interrupted");
            asked.elapsed()
        });
        assert!(latency < Duration::from_secs(2), "took {latency:?}");
    }

    #[test]
    fn a_failing_file_is_reported_to_the_writer() {
        // A read-only handle: the first write of compressed data fails.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro");
        std::fs::write(&path, "").unwrap();
        let file = File::open(&path).unwrap();
        let cancel = AtomicBool::new(false);
        let mut c = Compressor::start(file, 1, 1, &cancel).unwrap();
        let data = noise(40 << 20, 3);
        let err = match c.write_all(&data) {
            Err(e) => Stop::Io(e),
            Ok(()) => c.finish().unwrap_err(),
        };
        match err {
            Stop::Io(e) => assert_eq!(e.raw_os_error(), Some(9), "{e}"), // EBADF
            Stop::Interrupted => panic!("not cancelled"),
        }
    }
}
