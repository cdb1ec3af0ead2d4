//! SHA-256 whose state can be kept and resumed: the digest of a qcow2 that
//! starts with a known prefix continues from the prefix's state
//! ([`super::qcow2file::Patched`]). Built on `sha2::compress256`, the same
//! (SHA-NI when present) compression function `sha2::Sha256` uses; the
//! padding is FIPS 180-4 §5.1.1.

use serde::{Deserialize, Serialize};
use sha2::digest::generic_array::GenericArray;

const H0: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// Blocks handed to the compression function per call.
const BATCH: usize = 1024;

/// SHA-256 whose state serializes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resumable {
    state: [u32; 8],
    /// Bytes fed so far.
    len: u64,
    /// The fed bytes after the last whole block (fewer than 64).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pending: Vec<u8>,
}

impl Default for Resumable {
    fn default() -> Self {
        Resumable {
            state: H0,
            len: 0,
            pending: Vec::new(),
        }
    }
}

impl Resumable {
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Feed `data`.
    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.pending.is_empty() {
            let take = (64 - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < 64 {
                return;
            }
            let block = std::mem::take(&mut self.pending);
            self.compress(&block);
        }
        let whole = data.len() / 64 * 64;
        self.compress(&data[..whole]);
        self.pending.extend_from_slice(&data[whole..]);
    }

    /// Whole 64-byte blocks through the compression function.
    fn compress(&mut self, data: &[u8]) {
        let mut blocks = Vec::with_capacity(BATCH);
        for batch in data.chunks(64 * BATCH) {
            blocks.clear();
            blocks.extend(batch.chunks_exact(64).map(GenericArray::clone_from_slice));
            sha2::compress256(&mut self.state, &blocks);
        }
    }

    /// The digest of everything fed.
    pub fn finish(mut self) -> [u8; 32] {
        let bits = self.len * 8;
        let mut last = std::mem::take(&mut self.pending);
        last.push(0x80);
        while last.len() % 64 != 56 {
            last.push(0);
        }
        last.extend_from_slice(&bits.to_be_bytes());
        self.compress(&last);
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_exact_mut(4).zip(self.state) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    #[test]
    fn matches_sha256_for_every_padding_case() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        for (blocks, rest) in [
            (0, 0),
            (0, 3),
            (1, 55),
            (1, 56),
            (2, 63),
            (1000, 64),
            (1093, 17),
        ] {
            let msg = &data[..blocks * 64 + rest];
            // Fed in two parts, through a serialized state in between: cut
            // at a block boundary, and off one (bytes pending in the state).
            for cut in [(blocks / 3) * 64, (blocks / 3) * 64 + rest / 2] {
                let mut r = Resumable::default();
                r.update(&msg[..cut]);
                let mut r: Resumable =
                    serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
                r.update(&msg[cut..]);
                assert_eq!(r.len(), msg.len() as u64);
                assert_eq!(
                    r.finish()[..],
                    Sha256::digest(msg)[..],
                    "{blocks} blocks + {rest}, cut at {cut}"
                );
            }
        }
    }
}
