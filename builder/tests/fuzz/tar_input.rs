//! Fuzz inputs for the tar reader: a real tarball (tests/fixtures/fuzz, made
//! by gen.sh there) with tar-aware edits — header fields rewritten in octal or
//! base-256, PAX records with lying lengths and sizes, GNU long names, sparse
//! extension blocks, missing or extra end blocks — then the generic byte
//! mutations, and (usually) the header checksums fixed up so the edits reach
//! past the checksum check.

#![allow(dead_code)]

use bolero::generator::TypeGenerator;

use super::mutate::{self, Mutation, Number};

const BLOCK: usize = 512;

pub const GNU_TAR: &[u8] = include_bytes!("../fixtures/fuzz/gnu.tar");
pub const PAX_TAR: &[u8] = include_bytes!("../fixtures/fuzz/pax.tar");

/// A header field, by offset and width (POSIX ustar, GNU extensions).
#[derive(Debug, Clone, Copy, TypeGenerator)]
pub enum Field {
    Name,
    Mode,
    Uid,
    Size,
    Mtime,
    Checksum,
    Typeflag,
    Linkname,
    Magic,
    DevMajor,
    Prefix,
    /// Old-GNU sparse map: first entry's offset and size, and `isextended`.
    SparseOffset,
    SparseSize,
    IsExtended,
    RealSize,
}

impl Field {
    fn span(self) -> (usize, usize) {
        match self {
            Field::Name => (0, 100),
            Field::Mode => (100, 8),
            Field::Uid => (108, 8),
            Field::Size => (124, 12),
            Field::Mtime => (136, 12),
            Field::Checksum => (148, 8),
            Field::Typeflag => (156, 1),
            Field::Linkname => (157, 100),
            Field::Magic => (257, 8),
            Field::DevMajor => (329, 8),
            Field::Prefix => (345, 155),
            Field::SparseOffset => (386, 12),
            Field::SparseSize => (398, 12),
            Field::IsExtended => (482, 1),
            Field::RealSize => (483, 12),
        }
    }
}

#[derive(Debug, Clone, TypeGenerator)]
pub enum FieldValue {
    Octal(Number),
    /// GNU base-256: high bit set, big-endian binary.
    Base256(Number),
    Bytes(Vec<u8>),
    /// One of the type flags tar knows, or any byte.
    Typeflag(u8),
}

/// A PAX record key: the ones the reader interprets, and others.
#[derive(Debug, Clone, TypeGenerator)]
pub enum PaxKey {
    Path,
    Linkpath,
    Size,
    SparseName,
    Xattr,
    Other(Vec<u8>),
}

#[derive(Debug, Clone, TypeGenerator)]
pub enum PaxValue {
    Number(Number),
    Bytes(Vec<u8>),
}

/// What a record's length prefix says.
#[derive(Debug, Clone, TypeGenerator)]
pub enum PaxLen {
    Exact,
    Off(i8),
    Says(Number),
    /// A prefix that is not a plain number (`+5`, `-1`, ` 5`, …).
    Text(Vec<u8>),
}

#[derive(Debug, Clone, TypeGenerator)]
pub struct PaxRecord {
    key: PaxKey,
    value: PaxValue,
    len: PaxLen,
}

/// Kinds of extension header to insert.
#[derive(Debug, Clone, Copy, TypeGenerator)]
pub enum ExtKind {
    PaxLocal,
    PaxGlobal,
    GnuLongName,
    GnuLongLink,
    /// A regular member.
    File,
    /// An old-GNU sparse member with `isextended` set and `n` extension blocks.
    Sparse(u8),
}

#[derive(Debug, Clone, TypeGenerator)]
pub enum TarEdit {
    /// Rewrite a field of the `member`-th header.
    Field {
        member: u8,
        field: Field,
        value: FieldValue,
    },
    /// Insert a header (with `data`, or PAX `records`) before the
    /// `member`-th header (after the last one when out of range).
    Insert {
        member: u8,
        kind: ExtKind,
        records: Vec<PaxRecord>,
        data: Vec<u8>,
        /// The size field says this instead of the data's length.
        size: Option<Number>,
    },
    /// Remove the `member`-th header block (its data stays).
    DropHeader { member: u8 },
    /// Replace what follows the last member: `zero_blocks` of zeros, then `tail`.
    End { zero_blocks: u8, tail: Vec<u8> },
}

/// Which tarball to start from.
#[derive(Debug, Clone, Copy, TypeGenerator)]
pub enum Seed {
    Gnu,
    Pax,
    /// No members: only the edits' own.
    Empty,
}

#[derive(Debug, Clone, TypeGenerator)]
pub struct TarInput {
    pub seed: Seed,
    pub edits: Vec<TarEdit>,
    pub mutations: Vec<Mutation>,
    /// Recompute header checksums after the edits (most inputs; without it
    /// nearly every edit stops at the checksum).
    pub fix_checksums: bool,
}

impl TarInput {
    pub fn bytes(&self) -> Vec<u8> {
        let seed: &[u8] = match self.seed {
            Seed::Gnu => GNU_TAR,
            Seed::Pax => PAX_TAR,
            Seed::Empty => &[0; 2 * BLOCK],
        };
        let mut data = seed.to_vec();
        for e in self.edits.iter().take(8) {
            apply_edit(&mut data, e);
        }
        let anchors = mutate::anchors(&data);
        for m in self.mutations.iter().take(8) {
            mutate::apply(&mut data, &anchors, m);
        }
        if self.fix_checksums {
            fix_checksums(&mut data);
        }
        data
    }
}

/// Round up to whole blocks, saturating (a walker over hostile input must
/// not panic itself).
fn padded(len: u64) -> u64 {
    len.saturating_add(BLOCK as u64 - 1) / BLOCK as u64 * BLOCK as u64
}

fn parse_number(field: &[u8]) -> u64 {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        return field[1..]
            .iter()
            .fold(0u64, |acc, &b| acc.wrapping_shl(8) | u64::from(b));
    }
    field
        .iter()
        .skip_while(|b| **b == b' ')
        .take_while(|b| (b'0'..=b'7').contains(b))
        .fold(0u64, |acc, &b| acc.wrapping_mul(8) + u64::from(b - b'0'))
}

/// Offsets of the header blocks, walking the archive as a reader would
/// (sizes from the size field, old-GNU sparse extension blocks skipped), and
/// where the first zero block (the end marker) sits.
pub fn headers(data: &[u8]) -> (Vec<usize>, usize) {
    let mut out = Vec::new();
    let mut p = 0usize;
    while p.checked_add(BLOCK).is_some_and(|e| e <= data.len()) && out.len() < 4096 {
        let block = &data[p..p + BLOCK];
        if block.iter().all(|&b| b == 0) {
            return (out, p);
        }
        out.push(p);
        let size = parse_number(&block[124..136]);
        let mut next = p + BLOCK;
        if block[156] == b'S' && block[482] != 0 {
            while next + BLOCK <= data.len() {
                let ext = data[next + 504];
                next += BLOCK;
                if ext == 0 {
                    break;
                }
            }
        }
        let skip = usize::try_from(padded(size)).unwrap_or(usize::MAX);
        p = next.saturating_add(skip);
    }
    (out, p.min(data.len()))
}

fn set_checksum(block: &mut [u8]) {
    block[148..156].fill(b' ');
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

pub fn fix_checksums(data: &mut [u8]) {
    let (offsets, _) = headers(data);
    for p in offsets {
        set_checksum(&mut data[p..p + BLOCK]);
    }
}

fn write_field(block: &mut [u8], field: Field, value: &FieldValue) {
    let (at, width) = field.span();
    let slot = &mut block[at..at + width];
    match value {
        FieldValue::Octal(n) => {
            let text = format!("{:0w$o}", n.value(), w = width.saturating_sub(1));
            let text = text.as_bytes();
            let n = text.len().min(width);
            slot.fill(0);
            slot[..n].copy_from_slice(&text[text.len() - n..]);
        }
        FieldValue::Base256(n) => {
            slot.fill(0);
            let be = n.value().to_be_bytes();
            let n = be.len().min(width - 1);
            slot[width - n..].copy_from_slice(&be[be.len() - n..]);
            slot[0] |= 0x80;
        }
        FieldValue::Bytes(b) => {
            let n = b.len().min(width);
            slot[..n].copy_from_slice(&b[..n]);
        }
        FieldValue::Typeflag(t) => {
            const KNOWN: &[u8] = b"0123456789\0xgLKSMNVDA";
            slot[0] = KNOWN.get(usize::from(*t)).copied().unwrap_or(*t);
        }
    }
}

fn pax_data(records: &[PaxRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records.iter().take(8) {
        let key: &[u8] = match &r.key {
            PaxKey::Path => b"path",
            PaxKey::Linkpath => b"linkpath",
            PaxKey::Size => b"size",
            PaxKey::SparseName => b"GNU.sparse.name",
            PaxKey::Xattr => b"SCHILY.xattr.security.capability",
            PaxKey::Other(k) => k,
        };
        let value = match &r.value {
            PaxValue::Number(n) => n.value().to_string().into_bytes(),
            PaxValue::Bytes(b) => b.clone(),
        };
        let body_len = 1 + key.len() + 1 + value.len() + 1; // " key=value\n"
                                                            // The length counts its own digits.
        let mut exact = body_len + 1;
        while exact.to_string().len() + body_len != exact {
            exact = exact.to_string().len() + body_len;
        }
        let prefix = match &r.len {
            PaxLen::Exact => exact.to_string().into_bytes(),
            PaxLen::Off(d) => exact
                .saturating_add_signed(isize::from(*d))
                .to_string()
                .into_bytes(),
            PaxLen::Says(n) => n.value().to_string().into_bytes(),
            PaxLen::Text(t) => t.clone(),
        };
        out.extend_from_slice(&prefix);
        out.push(b' ');
        out.extend_from_slice(key);
        out.push(b'=');
        out.extend_from_slice(&value);
        out.push(b'\n');
    }
    out
}

fn header_block(typeflag: u8, name: &[u8], size: u64) -> Vec<u8> {
    let mut h = vec![0u8; BLOCK];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    if size <= 0o777_7777_7777 {
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    } else {
        write_field(&mut h, Field::Size, &FieldValue::Base256(Number::Any(size)));
    }
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = typeflag;
    h[257..265].copy_from_slice(b"ustar\x0000");
    set_checksum(&mut h);
    h
}

fn apply_edit(data: &mut Vec<u8>, edit: &TarEdit) {
    let (offsets, end) = headers(data);
    let pick = |member: u8| offsets.get(usize::from(member)).copied();
    match edit {
        TarEdit::Field {
            member,
            field,
            value,
        } => {
            if let Some(p) = pick(*member) {
                write_field(&mut data[p..p + BLOCK], *field, value);
            }
        }
        TarEdit::Insert {
            member,
            kind,
            records,
            data: payload,
            size,
        } => {
            let at = pick(*member).unwrap_or(end);
            let (flag, body) = match kind {
                ExtKind::PaxLocal => (b'x', pax_data(records)),
                ExtKind::PaxGlobal => (b'g', pax_data(records)),
                ExtKind::GnuLongName => (b'L', payload.clone()),
                ExtKind::GnuLongLink => (b'K', payload.clone()),
                ExtKind::File | ExtKind::Sparse(_) => (b'0', payload.clone()),
            };
            let declared = size.map_or(body.len() as u64, Number::value);
            let mut block = header_block(flag, b"././@Fuzz", declared);
            let mut ext_blocks = Vec::new();
            if let ExtKind::Sparse(n) = kind {
                block[156] = b'S';
                block[482] = 1;
                for i in 0..(n % 4) + 1 {
                    let mut ext = vec![0u8; BLOCK];
                    ext[..12].copy_from_slice(b"00000001000\0");
                    ext[12..24].copy_from_slice(b"00000000001\0");
                    ext[504] = u8::from(i < n % 4);
                    ext_blocks.extend_from_slice(&ext);
                }
                set_checksum(&mut block);
            }
            let mut insert = block;
            insert.extend_from_slice(&ext_blocks);
            insert.extend_from_slice(&body);
            insert.resize(insert.len().next_multiple_of(BLOCK), 0);
            if data.len() + insert.len() <= mutate::MAX_INPUT {
                data.splice(at..at, insert);
            }
        }
        TarEdit::DropHeader { member } => {
            if let Some(p) = pick(*member) {
                data.drain(p..p + BLOCK);
            }
        }
        TarEdit::End { zero_blocks, tail } => {
            data.truncate(end);
            data.resize(end + usize::from(zero_blocks % 4) * BLOCK, 0);
            data.extend_from_slice(tail);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walker_finds_every_header_of_the_fixtures() {
        let (gnu, end) = headers(GNU_TAR);
        assert_eq!(gnu.len(), 11, "{gnu:?}");
        assert_eq!(end, GNU_TAR.len() - 2 * BLOCK);
        let (pax, end) = headers(PAX_TAR);
        assert_eq!(pax.len(), 13, "{pax:?}");
        assert_eq!(end, PAX_TAR.len() - 2 * BLOCK);
    }

    #[test]
    fn exact_pax_length_counts_its_digits() {
        let r = PaxRecord {
            key: PaxKey::Path,
            value: PaxValue::Bytes(vec![b'a'; 95]),
            len: PaxLen::Exact,
        };
        let d = pax_data(&[r]);
        assert!(
            d.starts_with(b"105 path="),
            "{}",
            String::from_utf8_lossy(&d)
        );
        assert_eq!(d.len(), 105);
    }
}
