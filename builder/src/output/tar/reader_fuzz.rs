//! Fuzz targets for [`TarReader`], which is private to `target`, so they sit
//! beside it instead of in `tests/fuzz_parsers.rs` (which fuzzes the public
//! entry points built on it). Under `cargo test` each runs for a fraction of
//! a second; `scripts/fuzz.sh` runs them for longer.

#[path = "../../../../tests/fuzz/mutate.rs"]
mod mutate;
#[path = "../../../tests/fuzz/tar_input.rs"]
mod tar_input;

use std::io::{self, Cursor, Read, Seek, SeekFrom};

use bolero::generator::TypeGenerator;

use super::{padded_len, TarReader, BLOCK};

/// How the caller passes over one member's data: read in chunks of this
/// size, seek (a base read as stored), copy through (a compressed base, where
/// the copy stops short at the end of input), or leave it to `next_member`.
#[derive(Debug, Clone, Copy, TypeGenerator)]
enum Consume {
    Read(u16),
    Seek,
    CopyThrough,
    Skip,
}

/// Walks `bytes` as the rewrite and the contract scan do and checks what
/// must hold for any input: no panic, every member consumes input (so no
/// endless loop), no member holds more than it read, the data read is the
/// padded length the header promised, and `finish` reads to the end.
fn drive(bytes: &[u8], consume: &[Consume]) {
    let len = bytes.len() as u64;
    let mut reader = TarReader::new(Cursor::new(bytes));
    let mut buf = vec![0u8; 1 << 16];
    for i in 0.. {
        assert!(i <= bytes.len() / BLOCK, "member {i} from {len} bytes");
        let before = reader.offset();
        let member = match reader.next_member() {
            Ok(Some(m)) => m,
            Ok(None) => {
                if reader.finish().is_ok() {
                    assert_eq!(reader.offset(), len, "finish() stopped early");
                }
                return;
            }
            Err(_) => return,
        };
        let after = reader.offset();
        assert!(
            after > before && after <= len,
            "{before} -> {after} of {len}"
        );
        assert!(member.raw_head.len() as u64 <= after - before);
        assert_eq!(member.raw_head.len() % BLOCK, 0);
        let how = match consume {
            [] => Consume::Skip,
            c => c[i % c.len()],
        };
        match how {
            Consume::Read(chunk) => {
                let chunk = usize::from(chunk).clamp(1, buf.len());
                let mut total = 0u64;
                loop {
                    match reader.read_data(&mut buf[..chunk]) {
                        Ok(0) => break,
                        Ok(n) => total += n as u64,
                        Err(_) => return,
                    }
                }
                assert_eq!(total, padded_len(member.data_len));
            }
            Consume::Seek => {
                let seek = |c: &mut Cursor<&[u8]>, n: u64| {
                    let n = i64::try_from(n).map_err(|_| io::ErrorKind::InvalidData)?;
                    c.seek(SeekFrom::Current(n)).map(|_| ())
                };
                if reader.skip_data_with(seek).is_err() {
                    return;
                }
            }
            Consume::CopyThrough => {
                let copy = |c: &mut Cursor<&[u8]>, n: u64| {
                    io::copy(&mut c.take(n), &mut io::sink()).map(|_| ())
                };
                if reader.skip_data_with(copy).is_err() {
                    return;
                }
            }
            Consume::Skip => {}
        }
    }
}

#[test]
fn fuzz_tar_reader_edited_tarballs() {
    bolero::check!()
        .with_type::<(tar_input::TarInput, Vec<Consume>)>()
        .with_iterations(mutate::CI_ITERATIONS)
        .with_test_time(mutate::CI_TIME)
        .for_each(|(input, consume)| drive(&input.bytes(), consume));
}

#[test]
fn fuzz_tar_reader_random_bytes() {
    bolero::check!()
        .with_iterations(mutate::CI_ITERATIONS)
        .with_test_time(mutate::CI_TIME)
        .for_each(|bytes| drive(bytes, &[Consume::Read(4096), Consume::Seek]));
}
