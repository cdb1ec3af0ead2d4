//! Opening a base tarball: compression is recognised by its magic bytes, not
//! by the file name (cache entries are named by digest).

use std::fs::File;
use std::io::{self, BufReader, Cursor, Read};
use std::path::Path;

use indicatif::ProgressBar;

use crate::output::OutputError;

/// Compression of a base tarball.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const USTAR_OFFSET: usize = 257;

/// Decompressed bytes are read through a buffer this large.
const READ_BUFFER: usize = 1 << 20;

/// What the first bytes of a file say it is; `None` if not a tar archive.
pub fn detect_compression(head: &[u8]) -> Option<Compression> {
    if head.starts_with(GZIP_MAGIC) {
        Some(Compression::Gzip)
    } else if head.starts_with(XZ_MAGIC) {
        Some(Compression::Xz)
    } else if head.starts_with(ZSTD_MAGIC) {
        Some(Compression::Zstd)
    } else if head.get(USTAR_OFFSET..USTAR_OFFSET + 5) == Some(b"ustar") {
        // Both POSIX (`ustar\0`) and GNU (`ustar `) headers.
        Some(Compression::None)
    } else {
        None
    }
}

/// Opens the base at `path` and reads its first 512 bytes (at most), which
/// [`detect_compression`] looks at; the file is left just after them.
pub(in crate::output) fn read_head(path: &Path) -> Result<(File, Vec<u8>), OutputError> {
    let open_err = |source| OutputError::OpenBase {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let mut head = Vec::with_capacity(512);
    (&mut file)
        .take(512)
        .read_to_end(&mut head)
        .map_err(open_err)?;
    Ok((file, head))
}

/// Opens a base tarball and returns its decompressed, buffered tar stream.
pub fn open_base(path: &Path) -> Result<Box<dyn Read + Send>, OutputError> {
    open_base_with_progress(path, None)
}

/// Like [`open_base`]; `progress` advances by the bytes read from the file.
pub fn open_base_with_progress(
    path: &Path,
    progress: Option<&ProgressBar>,
) -> Result<Box<dyn Read + Send>, OutputError> {
    let (file, head) = read_head(path)?;
    let open_err = |source| OutputError::OpenBase {
        path: path.to_owned(),
        source,
    };
    let compression = detect_compression(&head).ok_or_else(|| OutputError::NotTar {
        path: path.to_owned(),
    })?;
    if let Some(bar) = progress {
        bar.inc(head.len() as u64);
    }
    let rest: Box<dyn Read + Send> = match progress {
        Some(bar) => Box::new(ProgressReader {
            inner: file,
            bar: bar.clone(),
        }),
        None => Box::new(file),
    };
    let raw = BufReader::with_capacity(READ_BUFFER, Cursor::new(head).chain(rest));
    Ok(match compression {
        Compression::None => Box::new(raw),
        // Multi-member gzip and multi-stream xz are valid concatenations
        // (pigz, pixz); read all of them, as `tar -z`/`-J` do.
        Compression::Gzip => Box::new(BufReader::with_capacity(
            READ_BUFFER,
            flate2::read::MultiGzDecoder::new(raw),
        )),
        Compression::Xz => Box::new(BufReader::with_capacity(
            READ_BUFFER,
            liblzma::read::XzDecoder::new_multi_decoder(raw),
        )),
        Compression::Zstd => Box::new(BufReader::with_capacity(
            READ_BUFFER,
            zstd::stream::read::Decoder::with_buffer(raw).map_err(open_err)?,
        )),
    })
}

/// Advances a progress bar by the compressed bytes read.
#[derive(Debug)]
struct ProgressReader<R> {
    inner: R,
    bar: ProgressBar,
}

impl<R: Read> Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_bytes() {
        assert_eq!(
            detect_compression(&[0x1f, 0x8b, 8, 0]),
            Some(Compression::Gzip)
        );
        assert_eq!(
            detect_compression(&[0xfd, b'7', b'z', b'X', b'Z', 0, 0]),
            Some(Compression::Xz)
        );
        assert_eq!(
            detect_compression(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Some(Compression::Zstd)
        );
        let mut tar = vec![0u8; 512];
        tar[257..263].copy_from_slice(b"ustar\0");
        assert_eq!(detect_compression(&tar), Some(Compression::None));
        assert_eq!(detect_compression(b"PK\x03\x04 not a tarball"), None);
        assert_eq!(detect_compression(b""), None);
    }
}
