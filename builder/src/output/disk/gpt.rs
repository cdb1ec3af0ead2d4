//! GPT parsing over the first sectors of a raw disk image.
//!
//! The checksums are `crc32fast`'s and the GUIDs `uuid`'s. The table itself
//! is read here rather than with `gptman`: the caller has only the image's
//! first sectors (read from a qcow2 in place with `qemu-img dd`, before any
//! working copy exists), where gptman wants the whole disk behind a
//! `Read + Seek` and falls back to the backup header at its end; and the
//! errors here say which of header, entry array or CRC is wrong, and
//! whether the image was cut short.

use super::bytes::{le_u32, le_u64};
use super::DiskError;

/// Logical sector size assumed for raw disk images.
pub const SECTOR: usize = 512;
/// Bytes to read from the start of an image for [`parse_gpt`]: protective
/// MBR, GPT header and the usual 128 × 128-byte entry array (34 sectors).
pub const GPT_PROBE_LEN: usize = 34 * SECTOR;

/// Linux root (x86-64), Discoverable Partitions Specification.
pub const LINUX_ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
/// Linux root (ARM64), Discoverable Partitions Specification.
pub const LINUX_ROOT_ARM64: &str = "B921B045-1DF0-4C83-ABF2-DFF7FB1AF4DE";
/// Linux filesystem data.
pub const LINUX_FS_DATA: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
/// Linux LVM (`parted set N lvm on`, as Rocky's LVM kickstart does).
pub const LINUX_LVM: &str = "E6D6D379-F507-44C2-A23C-238F2A3DF928";

const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
/// Sanity bound for the entry array (the spec minimum is 16 KiB; nobody
/// ships more than a few).
const MAX_ENTRIES_BYTES: usize = 1 << 20;

/// One used GPT partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based entry number (`/dev/sda1` is 1).
    pub index: u32,
    /// Partition type GUID, upper-case canonical form.
    pub type_guid: String,
    /// Unique partition GUID, upper-case canonical form.
    pub unique_guid: String,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    /// Partition name (UTF-16LE in the entry), NULs and whitespace trimmed.
    pub name: String,
}

impl Partition {
    /// Byte offset of the partition in the image (saturating: a crafted
    /// table cannot overflow it; the caller checks it against the disk).
    pub fn offset_bytes(&self) -> u64 {
        self.first_lba.saturating_mul(SECTOR as u64)
    }

    /// Size in bytes (saturating, as [`Partition::offset_bytes`]).
    pub fn size_bytes(&self) -> u64 {
        self.last_lba
            .saturating_add(1)
            .saturating_sub(self.first_lba)
            .saturating_mul(SECTOR as u64)
    }
}

/// CRC-32 (IEEE 802.3), as GPT uses.
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// Format a GUID stored in GPT's mixed-endian layout, upper-case.
pub fn format_guid(b: &[u8; 16]) -> String {
    let mut s = uuid::Uuid::from_bytes_le(*b).to_string();
    s.make_ascii_uppercase();
    s
}

fn need(data: &[u8], what: &'static str, needed: usize) -> Result<(), DiskError> {
    if data.len() < needed {
        return Err(DiskError::Truncated {
            what,
            needed,
            have: data.len(),
        });
    }
    Ok(())
}

/// Parse the protective MBR, the primary GPT header (LBA 1) and its
/// partition entries from the start of a raw disk image (usually
/// [`GPT_PROBE_LEN`] bytes; more if the entries lie further out). Returns the
/// used entries in table order. Both the header and the entry-array CRC32 are
/// verified.
pub fn parse_gpt(data: &[u8]) -> Result<Vec<Partition>, DiskError> {
    need(data, "the MBR", SECTOR)?;
    if data[510] != 0x55 || data[511] != 0xAA {
        return Err(DiskError::NoMbrSignature);
    }
    let protective = (0..4).any(|i| data[446 + 16 * i + 4] == 0xEE);
    if !protective {
        return Err(DiskError::NoGpt);
    }
    need(data, "the GPT header", 2 * SECTOR)?;
    let hdr = &data[SECTOR..2 * SECTOR];
    if &hdr[0..8] != GPT_SIGNATURE {
        return Err(DiskError::NoGpt);
    }
    let header_size = le_u32(hdr, 12) as usize;
    if !(92..=SECTOR).contains(&header_size) {
        return Err(DiskError::GptInvalid(format!("header size {header_size}")));
    }
    let mut copy = hdr[..header_size].to_vec();
    copy[16..20].fill(0);
    if crc32(&copy) != le_u32(hdr, 16) {
        return Err(DiskError::GptHeaderChecksum);
    }
    let entries_lba = le_u64(hdr, 72);
    let count = le_u32(hdr, 80) as usize;
    let entry_size = le_u32(hdr, 84) as usize;
    if entry_size < 128 || !entry_size.is_multiple_of(8) {
        return Err(DiskError::GptInvalid(format!("entry size {entry_size}")));
    }
    let len = count
        .checked_mul(entry_size)
        .filter(|l| *l <= MAX_ENTRIES_BYTES)
        .ok_or_else(|| DiskError::GptInvalid(format!("{count} entries of {entry_size} bytes")))?;
    let start = usize::try_from(entries_lba)
        .ok()
        .and_then(|l| l.checked_mul(SECTOR))
        .filter(|s| *s >= 2 * SECTOR)
        .ok_or_else(|| DiskError::GptInvalid(format!("entries at LBA {entries_lba}")))?;
    // Checked: an entry LBA near the top of the address space must be an
    // error, not an overflow.
    let end = start
        .checked_add(len)
        .ok_or_else(|| DiskError::GptInvalid(format!("entries at LBA {entries_lba}")))?;
    need(data, "the GPT partition entries", end)?;
    let entries = &data[start..end];
    if crc32(entries) != le_u32(hdr, 88) {
        return Err(DiskError::GptEntriesChecksum);
    }

    let mut parts = Vec::new();
    for (i, e) in entries.chunks_exact(entry_size).enumerate() {
        let mut type_guid = [0u8; 16];
        type_guid.copy_from_slice(&e[0..16]);
        if type_guid == [0u8; 16] {
            continue;
        }
        let mut unique_guid = [0u8; 16];
        unique_guid.copy_from_slice(&e[16..32]);
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|u| *u != 0)
            .collect();
        let name = String::from_utf16_lossy(&units).trim().to_string();
        parts.push(Partition {
            index: i as u32 + 1,
            type_guid: format_guid(&type_guid),
            unique_guid: format_guid(&unique_guid),
            first_lba: le_u64(e, 32),
            last_lba: le_u64(e, 40),
            name,
        });
    }
    Ok(parts)
}

/// Pick the root partition: a Linux root partition type (x86-64, then
/// ARM64) as Debian images use; otherwise the largest "Linux filesystem
/// data" partition (Ubuntu cloud images: unnamed root next to a BIOS boot and
/// an EFI partition).
pub fn find_root(parts: &[Partition]) -> Result<&Partition, DiskError> {
    for root_type in [LINUX_ROOT_X86_64, LINUX_ROOT_ARM64] {
        if let Some(p) = parts.iter().find(|p| p.type_guid == root_type) {
            return Ok(p);
        }
    }
    // `max_by_key` keeps the last of equals; prefer the first.
    let mut best: Option<&Partition> = None;
    // Rocky's disks have a 1000 MiB /boot beside the root, both plain
    // filesystem data (or the root an LVM PV): the root is the larger.
    for p in parts
        .iter()
        .filter(|p| p.type_guid == LINUX_FS_DATA || p.type_guid == LINUX_LVM)
    {
        if best.is_none_or(|b| p.size_bytes() > b.size_bytes()) {
            best = Some(p);
        }
    }
    best.ok_or_else(|| DiskError::NoRootPartition {
        partitions: describe(parts),
    })
}

fn describe(parts: &[Partition]) -> String {
    if parts.is_empty() {
        return "none".into();
    }
    parts
        .iter()
        .map(|p| {
            format!(
                "{} (type {}, name {:?}, {} MiB)",
                p.index,
                p.type_guid,
                p.name,
                p.size_bytes() >> 20
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Protective MBR and a primary header (valid CRC) whose entry array
    /// starts at `entries_lba`; no entry array follows.
    fn header_only(entries_lba: u64) -> Vec<u8> {
        let mut d = vec![0u8; 2 * SECTOR];
        d[446 + 4] = 0xEE;
        d[510] = 0x55;
        d[511] = 0xAA;
        let h = &mut d[SECTOR..];
        h[0..8].copy_from_slice(GPT_SIGNATURE);
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        let crc = crc32(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        d
    }

    // Found by fuzz_gpt: the entry array's end (start + length) overflowed.
    #[test]
    fn entries_at_the_top_of_the_address_space_are_invalid() {
        let lba = (usize::MAX / SECTOR) as u64;
        let e = parse_gpt(&header_only(lba)).unwrap_err();
        assert_eq!(e, DiskError::GptInvalid(format!("entries at LBA {lba}")));
    }

    #[test]
    fn entries_past_the_data_are_truncation() {
        let e = parse_gpt(&header_only(2)).unwrap_err();
        assert!(
            matches!(e, DiskError::Truncated { needed: 17408, .. }),
            "{e:?}"
        );
    }
}
