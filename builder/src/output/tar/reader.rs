//! A tar reader that hands out each member's raw blocks instead of
//! interpreting them, so a member can be copied to the output byte for byte:
//! GNU long names, PAX records (xattrs, ACLs, long paths, sparse maps), GNU
//! sparse extension blocks and device numbers all survive without this code
//! knowing about them.
//!
//! The `tar` crate's iterator is not used for reading because it folds
//! extension headers into the entry (they could not be re-emitted verbatim),
//! splits PAX records on newlines (binary `security.capability` values may
//! contain one) and treats a stream that simply stops as a complete archive.
//! Here the end of the archive must be the zero-block marker, and the input is
//! read to its very end so a decompressor verifies its trailer and checksum.

use std::io::{self, Read};

use tar::{EntryType, Header};

pub(in crate::output) const BLOCK: usize = 512;

/// Extension headers larger than this are treated as corruption instead of
/// being buffered (real ones are a few hundred bytes; ACL-heavy ones a few KB).
const MAX_EXTENSION_SIZE: u64 = 16 << 20;

/// Largest member size accepted: a signed 64-bit count, GNU tar's own limit.
/// Anything larger is a corrupt size field (or a lying PAX `size` record),
/// and its padded length would not even fit in a `u64`.
const MAX_MEMBER_SIZE: u64 = i64::MAX as u64;

/// Offset of the GNU `isextended` flag in an old-GNU sparse header, and in
/// each following sparse extension block.
const GNU_SPARSE_ISEXTENDED: usize = 482;
const GNU_EXT_SPARSE_ISEXTENDED: usize = 504;

/// Why the input could not be read as a tar stream.
#[derive(Debug)]
pub(in crate::output) struct ReadFailure {
    pub reason: String,
}

impl From<io::Error> for ReadFailure {
    fn from(e: io::Error) -> Self {
        let reason = if e.kind() == io::ErrorKind::UnexpectedEof {
            format!("the data ends early ({e})")
        } else {
            e.to_string()
        };
        ReadFailure { reason }
    }
}

fn failure(reason: impl Into<String>) -> ReadFailure {
    ReadFailure {
        reason: reason.into(),
    }
}

/// One archive member, up to (not including) its data.
#[derive(Debug)]
pub(in crate::output) struct Member {
    /// Every block read for this member so far: preceding GNU long name/link
    /// and PAX headers with their data, the member's own header, and GNU
    /// sparse extension blocks.
    pub raw_head: Vec<u8>,
    /// The member's own header.
    pub header: Header,
    /// Effective path: PAX `GNU.sparse.name` / `path`, GNU long name, or the header.
    pub path: Vec<u8>,
    /// Effective link target (symlinks and hard links).
    pub link: Option<Vec<u8>>,
    /// Bytes of data that follow (excluding padding to the block size).
    pub data_len: u64,
    /// Every other name recorded for this member (the header's own name, a
    /// GNU long name, PAX `path`) that differs from `path`: another tar
    /// reader may prefer any of them, so each must be as safe as `path`.
    pub other_names: Vec<Vec<u8>>,
    /// The same for the link target.
    pub other_links: Vec<Vec<u8>>,
    /// A PAX global header: applies to the rest of the archive, not a file
    /// (`path` is then the header's own name).
    pub is_global: bool,
    /// The keys of a global header that would rename or resize every
    /// following member (`path`, `linkpath`, `size`, `GNU.sparse.*`).
    pub global_overrides: Vec<String>,
}

impl Member {
    pub fn entry_type(&self) -> EntryType {
        self.header.entry_type()
    }
}

/// Reads members from a decompressed tar stream.
pub(in crate::output) struct TarReader<R> {
    inner: R,
    /// Bytes consumed from `inner`.
    offset: u64,
    /// Padded data bytes of the current member not yet read.
    data_left: u64,
    ended: bool,
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R) -> Self {
        TarReader {
            inner,
            offset: 0,
            data_left: 0,
            ended: false,
        }
    }

    /// Bytes read from the input so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next member, or `None` at the end-of-archive marker. Data of the
    /// previous member that the caller did not read is skipped.
    pub fn next_member(&mut self) -> Result<Option<Member>, ReadFailure> {
        if self.ended {
            return Ok(None);
        }
        self.skip_data()?;
        let mut raw_head = Vec::new();
        let mut long_path: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax = PaxFields::default();
        loop {
            let mut block = [0u8; BLOCK];
            if !self.read_block(&mut block)? {
                return Err(failure(format!(
                    "the archive stops at byte {} without the end-of-archive marker \
                     (two zero blocks): the file is truncated",
                    self.offset
                )));
            }
            if block.iter().all(|&b| b == 0) {
                if !raw_head.is_empty() {
                    return Err(failure(
                        "extension headers (long name or PAX) are not followed by a member",
                    ));
                }
                self.ended = true;
                return Ok(None);
            }
            let header = Header::from_byte_slice(&block).clone();
            verify_checksum(&header)?;
            let entry_type = header.entry_type();
            let size = header
                .entry_size()
                .map_err(|e| failure(format!("bad size field: {e}")))?;
            let is_extension = entry_type.is_gnu_longname()
                || entry_type.is_gnu_longlink()
                || entry_type.is_pax_local_extensions();
            if is_extension || entry_type.is_pax_global_extensions() {
                if size > MAX_EXTENSION_SIZE {
                    return Err(failure(format!(
                        "extension header of {size} bytes is implausibly large"
                    )));
                }
                raw_head.extend_from_slice(&block);
                let start = raw_head.len();
                self.read_append(&mut raw_head, padded_len(size) as usize)?;
                let data = &raw_head[start..start + size as usize];
                if entry_type.is_pax_global_extensions() {
                    if start != BLOCK {
                        return Err(failure(
                            "a PAX global header sits between a member's extension headers",
                        ));
                    }
                    let global_overrides = global_overrides(data)?;
                    // Its own name (GNU tar writes `pax_global_header`),
                    // for messages only.
                    let path = header.path_bytes().into_owned();
                    return Ok(Some(Member {
                        raw_head,
                        header,
                        path,
                        link: None,
                        data_len: 0,
                        other_names: Vec::new(),
                        other_links: Vec::new(),
                        is_global: true,
                        global_overrides,
                    }));
                }
                if entry_type.is_gnu_longname() {
                    long_path = Some(until_nul(data).to_vec());
                } else if entry_type.is_gnu_longlink() {
                    long_link = Some(until_nul(data).to_vec());
                } else {
                    pax.merge(data)?;
                }
                continue;
            }

            raw_head.extend_from_slice(&block);
            if entry_type.is_gnu_sparse() && block[GNU_SPARSE_ISEXTENDED] != 0 {
                // Old-GNU sparse maps continue in extension blocks before the data.
                loop {
                    let mut ext = [0u8; BLOCK];
                    self.read_exact(&mut ext)?;
                    raw_head.extend_from_slice(&ext);
                    if ext[GNU_EXT_SPARSE_ISEXTENDED] == 0 {
                        break;
                    }
                }
            }
            let data_len = pax.size.unwrap_or(size);
            if data_len > MAX_MEMBER_SIZE {
                return Err(failure(format!(
                    "member size {data_len} is more than a tar archive can hold: \
                     the header (or its PAX `size` record) is corrupt"
                )));
            }
            self.data_left = padded_len(data_len);
            let stored_name = header.path_bytes().into_owned();
            let stored_link = header.link_name_bytes().map(|l| l.into_owned());
            let names = [pax.sparse_name, pax.path, long_path, Some(stored_name)];
            let (path, other_names) = first_and_others(names);
            let links = [pax.linkpath, long_link, stored_link];
            let (link, other_links) = first_and_others(links);
            let path = path.unwrap_or_default();
            return Ok(Some(Member {
                raw_head,
                header,
                path,
                link,
                data_len,
                other_names,
                other_links,
                is_global: false,
                global_overrides: Vec::new(),
            }));
        }
    }

    /// Reads the current member's data (including the zero padding to the
    /// block size) into `buf`; `Ok(0)` once all of it was read.
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, ReadFailure> {
        let want = buf
            .len()
            .min(usize::try_from(self.data_left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        self.read_exact(&mut buf[..want])?;
        self.data_left -= want as u64;
        Ok(want)
    }

    /// Skips the rest of the current member's data with `skip` (a seek, for
    /// a file read as stored) instead of reading it. A seek past the end of a
    /// truncated file goes unnoticed here; the next [`Self::next_member`]
    /// then finds the end of input and reports the truncation.
    pub fn skip_data_with(
        &mut self,
        skip: impl FnOnce(&mut R, u64) -> io::Result<()>,
    ) -> Result<(), ReadFailure> {
        if self.data_left > 0 {
            skip(&mut self.inner, self.data_left)?;
            // Saturating: a copy that stopped short at the end of input
            // still "skipped" all of it; the next read reports the truncation.
            self.offset = self.offset.saturating_add(self.data_left);
            self.data_left = 0;
        }
        Ok(())
    }

    /// After the first zero block: check the second one and read the input to
    /// its end, so a decompressor reaches (and verifies) its trailer.
    /// Returns the number of non-zero bytes found after the marker.
    pub fn finish(&mut self) -> Result<u64, ReadFailure> {
        if !self.ended {
            return Err(failure(
                "internal: finish() before the end-of-archive marker",
            ));
        }
        let mut block = [0u8; BLOCK];
        if self.read_block(&mut block)? && block.iter().any(|&b| b != 0) {
            return Err(failure(format!(
                "a lone zero block at byte {} is followed by more members; \
                 the archive is damaged",
                self.offset - BLOCK as u64
            )));
        }
        // GNU tar pads to its record size; anything else after the marker is
        // ignored by every tar reader, so it is only counted.
        let mut trailing_garbage = 0u64;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match self.inner.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            self.offset += n as u64;
            trailing_garbage += buf[..n].iter().filter(|&&b| b != 0).count() as u64;
        }
        Ok(trailing_garbage)
    }

    fn skip_data(&mut self) -> Result<(), ReadFailure> {
        let mut buf = [0u8; 16 << 10];
        while self.read_data(&mut buf)? > 0 {}
        Ok(())
    }

    /// Reads one block; `Ok(false)` at a clean end of input.
    fn read_block(&mut self, block: &mut [u8; BLOCK]) -> Result<bool, ReadFailure> {
        match self.fill(block)? {
            0 => Ok(false),
            BLOCK => Ok(true),
            _ => Err(failure(format!(
                "the data ends in the middle of a header block at byte {}: \
                 the file is truncated",
                self.offset
            ))),
        }
    }

    /// Appends `len` bytes to `buf`, growing it as the data arrives: a
    /// header that claims megabytes in a short file must not cost megabytes.
    fn read_append(&mut self, buf: &mut Vec<u8>, len: usize) -> Result<(), ReadFailure> {
        let mut chunk = [0u8; 8 << 10];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            self.read_exact(&mut chunk[..n])?;
            buf.extend_from_slice(&chunk[..n]);
            left -= n;
        }
        Ok(())
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ReadFailure> {
        if self.fill(buf)? < buf.len() {
            return Err(failure(format!(
                "the data ends at byte {} in the middle of a member: \
                 the file is truncated",
                self.offset
            )));
        }
        Ok(())
    }

    /// Reads until `buf` is full or the input ends; how many bytes it read.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, ReadFailure> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => {
                    filled += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(filled)
    }
}

/// The first name present (the one used), and the other distinct ones.
fn first_and_others<const N: usize>(
    candidates: [Option<Vec<u8>>; N],
) -> (Option<Vec<u8>>, Vec<Vec<u8>>) {
    let mut present = candidates.into_iter().flatten();
    let first = present.next();
    let mut others: Vec<Vec<u8>> = Vec::new();
    for name in present {
        if Some(&name) != first.as_ref() && !others.contains(&name) {
            others.push(name);
        }
    }
    (first, others)
}

/// The keys of a PAX global header that change where following members go
/// or how much data they have.
fn global_overrides(data: &[u8]) -> Result<Vec<String>, ReadFailure> {
    Ok(parse_pax_records(data)?
        .into_iter()
        .map(|(key, _)| key)
        .filter(|key| {
            matches!(*key, b"path" | b"linkpath" | b"size") || key.starts_with(b"GNU.sparse.")
        })
        .map(|key| String::from_utf8_lossy(key).into_owned())
        .collect())
}

/// Rounds up to whole blocks.
pub(in crate::output) fn padded_len(len: u64) -> u64 {
    len.div_ceil(BLOCK as u64) * BLOCK as u64
}

fn until_nul(data: &[u8]) -> &[u8] {
    match data.iter().position(|&b| b == 0) {
        Some(i) => &data[..i],
        None => data,
    }
}

/// Accepts the unsigned sum (POSIX) and the signed sum some old tars wrote,
/// as GNU tar does.
fn verify_checksum(header: &Header) -> Result<(), ReadFailure> {
    let bytes = header.as_bytes();
    let stored = header
        .cksum()
        .map_err(|e| failure(format!("this is not a tar header ({e})")))?;
    let (mut unsigned, mut signed) = (0u32, 0i64);
    for (i, &b) in bytes.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u32::from(b);
        signed += i64::from(b as i8);
    }
    if stored == unsigned || i64::from(stored) == signed {
        Ok(())
    } else {
        Err(failure(format!(
            "header checksum mismatch (stored {stored}, computed {unsigned}): \
             this is not a tar header"
        )))
    }
}

/// The PAX records that decide where a member goes and how much data it has.
/// All other records (xattrs, ACLs, times) are only carried along verbatim.
#[derive(Debug, Default)]
struct PaxFields {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    sparse_name: Option<Vec<u8>>,
}

impl PaxFields {
    fn merge(&mut self, data: &[u8]) -> Result<(), ReadFailure> {
        for (key, value) in parse_pax_records(data)? {
            match key {
                b"path" => self.path = Some(value.to_vec()),
                b"linkpath" => self.linkpath = Some(value.to_vec()),
                b"GNU.sparse.name" => self.sparse_name = Some(value.to_vec()),
                b"size" => {
                    let size = std::str::from_utf8(value)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| failure("PAX `size` record is not a number"))?;
                    self.size = Some(size);
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A PAX record as `(key, value)`.
pub(in crate::output) type PaxRecord<'a> = (&'a [u8], &'a [u8]);

/// Splits PAX extended header data into `(key, value)` records. Each record is
/// `"<len> <key>=<value>\n"` where `<len>` counts the whole record, so values
/// may contain any byte, newlines included.
pub(in crate::output) fn parse_pax_records(
    mut data: &[u8],
) -> Result<Vec<PaxRecord<'_>>, ReadFailure> {
    let mut records = Vec::new();
    while !data.is_empty() {
        if data.iter().all(|&b| b == 0) {
            break;
        }
        let space = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| failure("malformed PAX record (no length)"))?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| failure("malformed PAX record (bad length)"))?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(failure("malformed PAX record (length does not fit)"));
        }
        let record = &data[space + 1..len - 1];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| failure("malformed PAX record (no `=`)"))?;
        records.push((&record[..eq], &record[eq + 1..]));
        data = &data[len..];
    }
    Ok(records)
}

#[cfg(test)]
#[path = "reader_fuzz.rs"]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_values_may_contain_newlines() {
        let value = b"a\nb";
        let body = format!("SCHILY.xattr.user.x={}\n", String::from_utf8_lossy(value));
        let record = format!("{} {body}", body.len() + 3);
        let records = parse_pax_records(record.as_bytes()).unwrap();
        assert_eq!(records, vec![(&b"SCHILY.xattr.user.x"[..], &b"a\nb"[..])]);
    }

    #[test]
    fn malformed_pax_is_rejected() {
        assert!(parse_pax_records(b"99 path=x\n").is_err());
        assert!(parse_pax_records(b"x path=x\n").is_err());
        assert!(parse_pax_records(b"9 pathx\n").is_err());
    }

    fn header(path: &str, kind: EntryType, size: u64) -> Vec<u8> {
        let mut h = Header::new_ustar();
        h.set_path(path).unwrap();
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(size);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    fn first_member(archive: &[u8]) -> Result<Option<Member>, ReadFailure> {
        TarReader::new(archive).next_member()
    }

    // Found by fuzz_tar_reader_edited_tarballs: a size of u64::MAX (GNU
    // base-256 field, or a PAX `size` record) overflowed padding it to blocks.
    #[test]
    fn size_field_beyond_tar_limits_is_corrupt() {
        let mut archive = header("big", EntryType::Regular, u64::MAX);
        archive.resize(3 * BLOCK, 0);
        let e = first_member(&archive).unwrap_err().reason;
        assert!(e.contains("member size 18446744073709551615"), "{e}");
    }

    #[test]
    fn pax_size_beyond_tar_limits_is_corrupt() {
        let record = b"29 size=18446744073709551615\n";
        let mut archive = header("./PaxHeaders/big", EntryType::XHeader, record.len() as u64);
        archive.extend_from_slice(record);
        archive.resize(2 * BLOCK, 0);
        archive.extend_from_slice(&header("big", EntryType::Regular, 0));
        archive.resize(5 * BLOCK, 0);
        let e = first_member(&archive).unwrap_err().reason;
        assert!(e.contains("PAX `size` record"), "{e}");
    }

    /// A reader that notes the largest buffer it was asked to fill: the
    /// buffer a header's size allocated.
    struct Probe<'a> {
        data: &'a [u8],
        largest: usize,
    }

    impl Read for Probe<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.largest = self.largest.max(buf.len());
            self.data.read(buf)
        }
    }

    // Found by fuzz_rewrite_tar (17 MB held for 2.6 KB of input): the data of
    // an extension header was allocated at its claimed size before reading.
    #[test]
    fn extension_header_data_is_allocated_as_it_arrives() {
        let mut archive = header("././@LongLink", EntryType::GNULongName, 16 << 20);
        archive.resize(3 * BLOCK, b'a');
        let mut probe = Probe {
            data: &archive,
            largest: 0,
        };
        let e = TarReader::new(&mut probe).next_member().unwrap_err().reason;
        assert!(e.contains("truncated"), "{e}");
        assert!(probe.largest <= 64 << 10, "{} byte buffer", probe.largest);
    }

    #[test]
    fn padding() {
        assert_eq!(padded_len(0), 0);
        assert_eq!(padded_len(1), 512);
        assert_eq!(padded_len(512), 512);
        assert_eq!(padded_len(513), 1024);
    }
}
