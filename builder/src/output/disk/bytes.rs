//! Integers at a byte offset of an on-disk structure: little-endian (GPT,
//! ext4) and big-endian (XFS, qcow2). The caller has checked the length.

pub fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(eight(b, at))
}

pub fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub fn be_u64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(eight(b, at))
}

fn eight(b: &[u8], at: usize) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    a
}
