//! Headers for the entries a layer adds: GNU format (what GNU tar writes by
//! default and what `pct create` extracts), deterministic — no atime/ctime,
//! fixed mtime, `root` as user/group name for id 0 and no name otherwise.

use std::io::{self, Write};

use tar::{EntryType, Header};

use super::reader::{padded_len, BLOCK};
use crate::layer::Meta;

/// Names longer than the 100-byte header field go into a GNU long-name member.
const NAME_FIELD: usize = 100;

/// Writes to the output and counts bytes, so stats and error paths know how
/// much went out.
#[derive(Debug)]
pub(in crate::output) struct CountingWriter<W> {
    pub inner: W,
    pub written: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The blocks that introduce an added entry: GNU long name/link members if
/// needed, then the entry's header. `size` is the data length that follows.
pub(in crate::output) fn added_entry_head(
    name: &[u8],
    kind: EntryType,
    meta: &Meta,
    size: u64,
    link: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(BLOCK);
    let mut header = Header::new_gnu();
    if name.len() > NAME_FIELD {
        out.extend(long_name_member(EntryType::GNULongName, name));
    }
    let n = name.len().min(NAME_FIELD);
    header.as_old_mut().name[..n].copy_from_slice(&name[..n]);
    if let Some(link) = link {
        if link.len() > NAME_FIELD {
            out.extend(long_name_member(EntryType::GNULongLink, link));
        }
        let n = link.len().min(NAME_FIELD);
        header.as_old_mut().linkname[..n].copy_from_slice(&link[..n]);
    }
    header.set_entry_type(kind);
    header.set_mode(meta.mode & 0o7777);
    header.set_uid(u64::from(meta.uid));
    header.set_gid(u64::from(meta.gid));
    header.set_mtime(meta.mtime);
    header.set_size(size);
    if let Some(gnu) = header.as_gnu_mut() {
        set_name_field(&mut gnu.uname, meta.uid);
        set_name_field(&mut gnu.gname, meta.gid);
    }
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    out
}

/// GNU tar's convention: the name `././@LongLink`, data = the long name plus NUL.
fn long_name_member(kind: EntryType, long: &[u8]) -> Vec<u8> {
    let mut header = Header::new_gnu();
    let marker = b"././@LongLink";
    header.as_old_mut().name[..marker.len()].copy_from_slice(marker);
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(long.len() as u64 + 1);
    if let Some(gnu) = header.as_gnu_mut() {
        set_name_field(&mut gnu.uname, 0);
        set_name_field(&mut gnu.gname, 0);
    }
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(long);
    out.push(0);
    out.resize(BLOCK + padded_len(long.len() as u64 + 1) as usize, 0);
    out
}

/// `root` for id 0; no name otherwise, so `--numeric-owner` and name-based
/// extraction agree on every host.
fn set_name_field(field: &mut [u8; 32], id: u32) {
    *field = [0; 32];
    if id == 0 {
        field[..4].copy_from_slice(b"root");
    }
}

/// Zero padding after `len` data bytes.
pub(in crate::output) fn padding(len: u64) -> usize {
    (padded_len(len) - len) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            mode: 0o4755,
            uid: 0,
            gid: 100_000,
            mtime: 1_700_000_000,
        }
    }

    #[test]
    fn short_names_fit_in_one_header() {
        let head = added_entry_head(b"./usr/bin/x", EntryType::Regular, &meta(), 3, None);
        assert_eq!(head.len(), BLOCK);
        let h = Header::from_byte_slice(&head);
        assert_eq!(&*h.path_bytes(), b"./usr/bin/x");
        assert_eq!(h.mode().unwrap(), 0o4755);
        assert_eq!(h.gid().unwrap(), 100_000);
        assert_eq!(h.username().unwrap(), Some("root"));
        assert_eq!(h.groupname().unwrap(), Some(""));
        assert_eq!(h.mtime().unwrap(), 1_700_000_000);
        let gnu = h.as_gnu().unwrap();
        assert!(gnu.atime.iter().all(|&b| b == 0) && gnu.ctime.iter().all(|&b| b == 0));
    }

    #[test]
    fn long_names_get_gnu_long_name_members() {
        let name = format!("./{}", "d/".repeat(80));
        let head = added_entry_head(
            name.as_bytes(),
            EntryType::Symlink,
            &meta(),
            0,
            Some("t".repeat(150).as_bytes()),
        );
        // The tar crate needs the end-of-archive marker to stop.
        let mut bytes = head.clone();
        bytes.extend([0u8; 1024]);
        let mut archive = tar::Archive::new(&bytes[..]);
        let entries: Vec<_> = archive.entries().unwrap().map(|e| e.unwrap()).collect();
        assert_eq!(entries.len(), 1);
        assert_eq!(&*entries[0].path_bytes(), name.as_bytes());
        assert_eq!(
            &*entries[0].link_name_bytes().unwrap(),
            "t".repeat(150).as_bytes()
        );
    }
}
