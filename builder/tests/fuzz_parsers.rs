//! Fuzz targets for the builder's parsers of untrusted bytes, through their
//! public entry points: the base tarball (rewrite and contract scan, both on
//! the tar reader) and the disk-image headers (GPT, ext superblock).
//!
//! bolero runs each for a fraction of a second under `cargo test`;
//! `scripts/fuzz.sh [SECONDS]` runs them for longer. A failure prints the
//! input (shrunk) and its BOLERO_RANDOM_SEED; the fix gets a plain unit test
//! next to the parser. Seeds: tests/fixtures/fuzz (gen.sh there).

#![allow(clippy::unwrap_used)]

#[path = "../../tests/fuzz/alloc_guard.rs"]
mod alloc_guard;
#[path = "../../tests/fuzz/mutate.rs"]
mod mutate;
#[path = "../../tests/fuzz/scratch.rs"]
mod scratch;
#[path = "fuzz/tar_input.rs"]
mod tar_input;

use std::io::Write;
use std::sync::atomic::AtomicBool;

use bolero::generator::TypeGenerator;
use imgbuild::layer::{Content, Layer, Meta, Op};
use imgbuild::output::disk::gpt::crc32;
use imgbuild::output::disk::{find_root, parse_gpt, probe_filesystem, SECTOR};
use imgbuild::output::{rewrite_tar, scan_base};
use mutate::{Mutation, Number};
use scratch::scratch_dir;
use tar_input::TarInput;

#[global_allocator]
static ALLOC: alloc_guard::Counting = alloc_guard::Counting;

const GPT_IMG: &[u8] = include_bytes!("fixtures/fuzz/gpt.img");
const EXT4_HEAD: &[u8] = include_bytes!("fixtures/fuzz/ext4.head");

/// Most heap a parser may hold for `input_len` bytes of input: its fixed
/// buffers (the base reader's and the decompressor's, 1 MiB each) plus a
/// small multiple of the input. A size field read from the input must never
/// decide an allocation on its own.
fn heap_bound(input_len: usize) -> usize {
    (4 << 20) + 4 * input_len
}

fn meta() -> Meta {
    Meta {
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 0,
    }
}

/// A layer that touches the fixtures' members: replaces the hard link's
/// target, removes the long-named directory, adds below a FIFO's parent.
fn touching_layer() -> Layer {
    Layer {
        ops: vec![
            Op::Remove {
                pattern: "/d*".into(),
            },
            Op::WriteFile {
                path: "/etc/os-release".into(),
                meta: meta(),
                content: Content::Inline(b"ID=fuzz\n".to_vec()),
            },
            Op::Mkdir {
                path: "/etc/new/dir".into(),
                meta: meta(),
            },
            Op::Symlink {
                path: "/sparse".into(),
                target: "etc/os-release".into(),
                meta: meta(),
            },
        ],
    }
}

#[test]
fn fuzz_rewrite_tar() {
    let layers = [Layer::default(), touching_layer()];
    bolero::check!()
        .with_type::<(TarInput, bool)>()
        .with_iterations(mutate::CI_ITERATIONS)
        .with_test_time(mutate::CI_TIME)
        .for_each(|(input, touch)| {
            let bytes = input.bytes();
            let layer = &layers[usize::from(*touch)];
            let (_, peak) = alloc_guard::peak_during(|| {
                let _ = rewrite_tar(&bytes[..], layer, std::io::sink(), &AtomicBool::new(false));
            });
            assert!(
                peak <= heap_bound(bytes.len()),
                "rewrite held {peak} bytes for {} bytes of input",
                bytes.len()
            );
        });
}

#[test]
fn fuzz_scan_base() {
    let dir = scratch_dir();
    let path = dir.path().join("base.tar");
    bolero::check!()
        .with_type::<(TarInput, bool)>()
        .with_iterations(mutate::CI_ITERATIONS)
        .with_test_time(mutate::CI_TIME)
        .for_each(|(input, gzip)| {
            let bytes = input.bytes();
            // As stored the scan seeks over data; gzip'd it reads through.
            let file_bytes = if *gzip {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(&bytes).unwrap();
                enc.finish().unwrap()
            } else {
                bytes.clone()
            };
            std::fs::write(&path, &file_bytes).unwrap();
            let (_, peak) = alloc_guard::peak_during(|| {
                let _ = scan_base(&path, &AtomicBool::new(false));
            });
            assert!(
                peak <= heap_bound(bytes.len()),
                "scan held {peak} bytes for {} bytes of input",
                bytes.len()
            );
        });
}

/// A GPT header field (UEFI spec, table 5-5), by offset and width.
#[derive(Debug, Clone, Copy, TypeGenerator)]
enum HeaderField {
    Signature,
    Revision,
    HeaderSize,
    HeaderCrc,
    MyLba,
    AlternateLba,
    FirstUsable,
    LastUsable,
    EntriesLba,
    EntryCount,
    EntrySize,
    EntriesCrc,
}

impl HeaderField {
    fn span(self) -> (usize, usize) {
        match self {
            HeaderField::Signature => (0, 8),
            HeaderField::Revision => (8, 4),
            HeaderField::HeaderSize => (12, 4),
            HeaderField::HeaderCrc => (16, 4),
            HeaderField::MyLba => (24, 8),
            HeaderField::AlternateLba => (32, 8),
            HeaderField::FirstUsable => (40, 8),
            HeaderField::LastUsable => (48, 8),
            HeaderField::EntriesLba => (72, 8),
            HeaderField::EntryCount => (80, 4),
            HeaderField::EntrySize => (84, 4),
            HeaderField::EntriesCrc => (88, 4),
        }
    }
}

/// A partition entry field.
#[derive(Debug, Clone, Copy, TypeGenerator)]
enum EntryField {
    TypeGuid,
    UniqueGuid,
    FirstLba,
    LastLba,
    Attributes,
    Name,
}

#[derive(Debug, Clone, TypeGenerator)]
enum GptEdit {
    Header(HeaderField, Number),
    /// Entry `index` (of the seed's 128-byte layout) gets a number or, for
    /// the type, one of the root types `find_root` looks for.
    Entry {
        index: u8,
        field: EntryField,
        value: Number,
        root_type: Option<u8>,
    },
    /// Grow (or cut) the image to this many sectors.
    Sectors(u8),
}

#[derive(Debug, Clone, TypeGenerator)]
struct GptInput {
    edits: Vec<GptEdit>,
    mutations: Vec<Mutation>,
    /// Recompute the entry-array and header CRCs after the edits, so they
    /// reach the checks behind them.
    fix_crcs: bool,
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn put_le(data: &mut [u8], at: usize, width: usize, value: u64) {
    if at + width > data.len() {
        return;
    }
    data[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
}

fn fix_gpt_crcs(data: &mut [u8]) {
    if data.len() < 2 * SECTOR {
        return;
    }
    let hdr = SECTOR;
    let lba = u64::from_le_bytes(data[hdr + 72..hdr + 80].try_into().unwrap());
    let len = u64::from(u32_at(data, hdr + 80)) * u64::from(u32_at(data, hdr + 84));
    let start = lba.saturating_mul(SECTOR as u64);
    if let Some(end) = start.checked_add(len).filter(|e| *e <= data.len() as u64) {
        let crc = crc32(&data[start as usize..end as usize]);
        put_le(data, hdr + 88, 4, u64::from(crc));
    }
    let size = (u32_at(data, hdr + 12) as usize).clamp(92, SECTOR);
    data[hdr + 16..hdr + 20].fill(0);
    let crc = crc32(&data[hdr..hdr + size]);
    put_le(data, hdr + 16, 4, u64::from(crc));
}

const ROOT_TYPES: [[u8; 16]; 3] = [
    // 4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, B921B045-…, 0FC63DAF-…, mixed-endian.
    [
        0xE3, 0xBC, 0x68, 0x4F, 0xCD, 0xE8, 0xB1, 0x4D, 0x96, 0xE7, 0xFB, 0xCA, 0xF9, 0x84, 0xB7,
        0x09,
    ],
    [
        0x45, 0xB0, 0x21, 0xB9, 0xF0, 0x1D, 0xC3, 0x4C, 0xAF, 0x0B, 0xDF, 0xF7, 0xFB, 0x1A, 0xF4,
        0xDE,
    ],
    [
        0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D,
        0xE4,
    ],
];

impl GptInput {
    fn bytes(&self) -> Vec<u8> {
        let mut data = GPT_IMG.to_vec();
        for e in self.edits.iter().take(8) {
            match e {
                GptEdit::Header(field, n) => {
                    let (at, width) = field.span();
                    put_le(&mut data, SECTOR + at, width, n.value());
                }
                GptEdit::Entry {
                    index,
                    field,
                    value,
                    root_type,
                } => {
                    let base = 2 * SECTOR + usize::from(*index % 128) * 128;
                    if base + 128 > data.len() {
                        continue;
                    }
                    let (at, width) = match field {
                        EntryField::TypeGuid => (0, 8),
                        EntryField::UniqueGuid => (16, 8),
                        EntryField::FirstLba => (32, 8),
                        EntryField::LastLba => (40, 8),
                        EntryField::Attributes => (48, 8),
                        EntryField::Name => (56, 8),
                    };
                    put_le(&mut data, base + at, width, value.value());
                    if let (EntryField::TypeGuid, Some(t)) = (field, root_type) {
                        data[base..base + 16]
                            .copy_from_slice(&ROOT_TYPES[usize::from(*t) % ROOT_TYPES.len()]);
                    }
                }
                GptEdit::Sectors(n) => data.resize(usize::from(*n) * SECTOR, 0),
            }
        }
        let anchors = mutate::anchors(&data);
        for m in self.mutations.iter().take(8) {
            mutate::apply(&mut data, &anchors, m);
        }
        if self.fix_crcs {
            fix_gpt_crcs(&mut data);
        }
        data
    }
}

#[test]
fn fuzz_gpt() {
    bolero::check!()
        .with_type::<GptInput>()
        .with_iterations(mutate::CI_ITERATIONS)
        .with_test_time(mutate::CI_TIME)
        .for_each(|input| {
            let data = input.bytes();
            let (parts, peak) = alloc_guard::peak_during(|| parse_gpt(&data));
            assert!(
                peak <= heap_bound(data.len()),
                "parse_gpt held {peak} bytes"
            );
            if let Ok(parts) = parts {
                for (i, p) in parts.iter().enumerate() {
                    assert!(i == 0 || p.index > parts[i - 1].index);
                    let _ = (p.offset_bytes(), p.size_bytes());
                }
                if let Ok(root) = find_root(&parts) {
                    assert!(parts.contains(root));
                }
            }
        });
}

#[test]
fn fuzz_ext4_probe() {
    let anchors = mutate::anchors(EXT4_HEAD);
    bolero::check!()
        .with_type::<(Vec<Mutation>, u32)>()
        .with_iterations(mutate::CI_ITERATIONS)
        .with_test_time(mutate::CI_TIME)
        .for_each(|(mutations, index)| {
            let data = mutate::mutated(EXT4_HEAD, &anchors, mutations);
            if let Ok(info) = probe_filesystem(&data, *index) {
                assert!(info.block_size >= 1024);
            }
        });
}

// What fuzz_rewrite_tar found, through the public entry point: a long-name
// header claiming 16 MiB in a file of 1.5 KiB cost 16 MiB of heap.
#[test]
fn short_extension_header_costs_what_it_holds() {
    let mut archive = vec![0u8; 512];
    archive[..13].copy_from_slice(b"././@LongLink");
    archive[100..108].copy_from_slice(b"0000644\0");
    archive[124..136].copy_from_slice(format!("{:011o}\0", 16 << 20).as_bytes());
    archive[156] = b'L';
    archive[257..265].copy_from_slice(b"ustar  \0");
    archive[148..156].fill(b' ');
    let sum: u32 = archive.iter().map(|&b| u32::from(b)).sum();
    archive[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    archive.resize(3 * 512, b'a');
    let (result, peak) = alloc_guard::peak_during(|| {
        rewrite_tar(
            &archive[..],
            &Layer::default(),
            std::io::sink(),
            &AtomicBool::new(false),
        )
    });
    assert!(result.is_err());
    assert!(peak < 1 << 20, "held {peak} bytes");
}

/// The seeds themselves parse: a target whose seed is rejected up front
/// would fuzz only the first check.
#[test]
fn seeds_are_valid() {
    let parts = parse_gpt(GPT_IMG).unwrap();
    assert_eq!(find_root(&parts).unwrap().name, "root");
    assert_eq!(
        probe_filesystem(EXT4_HEAD, 1).unwrap().label,
        "cloudimg-rootfs"
    );
    for seed in [tar_input::GNU_TAR, tar_input::PAX_TAR] {
        let stats = rewrite_tar(
            seed,
            &Layer::default(),
            std::io::sink(),
            &AtomicBool::new(false),
        )
        .unwrap();
        assert_eq!(stats.entries_in, 9);
    }
}
