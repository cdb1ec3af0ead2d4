//! Finding the NoCloud seed: kernel command line, seed directories, or a
//! volume labelled `cidata`. Label detection reads the device itself (no
//! blkid), so it is a pure function of the first 64 KiB.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::rootfs::Root;
use crate::system::FsType;

/// Seed directories cloud-init's NoCloud datasource reads, in order.
pub const SEED_DIRS: [&str; 2] = [
    "/var/lib/cloud/seed/nocloud",
    "/var/lib/cloud/seed/nocloud-net",
];

/// What `ds=nocloud…` on the kernel command line asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CmdlineSeed {
    /// `s=`/`seedfrom=` value, as given.
    pub seed_from: Option<String>,
    /// `i=`/`instance-id=`.
    pub instance_id: Option<String>,
    /// `h=`/`local-hostname=`.
    pub local_hostname: Option<String>,
}

/// Parse `/proc/cmdline`; `None` when no `ds=nocloud` or `ds=nocloud-net`.
pub fn parse_cmdline(cmdline: &str) -> Option<CmdlineSeed> {
    let arg = cmdline
        .split_whitespace()
        .map(|w| w.trim_matches(|c| c == '"' || c == '\''))
        .rev()
        .find_map(|w| w.strip_prefix("ds="))?;
    let mut fields = arg.split(';');
    let ds = fields.next().unwrap_or("");
    if !matches!(ds, "nocloud" | "nocloud-net") {
        return None;
    }
    let mut seed = CmdlineSeed::default();
    for f in fields {
        let Some((k, v)) = f.split_once('=') else {
            continue;
        };
        match k {
            "s" | "seedfrom" => seed.seed_from = Some(v.to_owned()),
            "i" | "instance-id" => seed.instance_id = Some(v.to_owned()),
            "h" | "local-hostname" => seed.local_hostname = Some(v.to_owned()),
            _ => {}
        }
    }
    Some(seed)
}

/// A seed directory from an `s=` value: `file:///path/` (or
/// `file://localhost/path/`) or `/path/`. `Err` carries the unsupported URL,
/// a remote `file://host/…` included: the seed must be on this machine.
pub fn seed_dir_from(seed_from: &str) -> Result<String, String> {
    if let Some(rest) = seed_from.strip_prefix("file://") {
        let path = rest.strip_prefix("localhost").unwrap_or(rest);
        if path.starts_with('/') {
            Ok(path.to_owned())
        } else {
            Err(seed_from.to_owned())
        }
    } else if seed_from.starts_with('/') {
        Ok(seed_from.to_owned())
    } else {
        Err(seed_from.to_owned())
    }
}

/// Filesystem label of an ISO 9660 or FAT volume, from its first 64 KiB.
pub fn read_label(head: &[u8]) -> Option<(FsType, String)> {
    // ISO 9660: primary volume descriptor in sector 16.
    let pvd = 16 * 2048;
    if head.len() >= pvd + 72 && head[pvd] == 1 && &head[pvd + 1..pvd + 6] == b"CD001" {
        let label = String::from_utf8_lossy(&head[pvd + 40..pvd + 72])
            .trim_end_matches([' ', '\0'])
            .to_owned();
        return Some((FsType::Iso9660, label));
    }
    // FAT: boot sector signature, then the extended BPB of FAT32 or FAT12/16.
    if head.len() >= 512 && head[510] == 0x55 && head[511] == 0xAA {
        let label_at = if &head[82..87] == b"FAT32" {
            71
        } else if &head[54..57] == b"FAT" {
            43
        } else {
            return None;
        };
        let label = String::from_utf8_lossy(&head[label_at..label_at + 11])
            .trim_end_matches([' ', '\0'])
            .to_owned();
        if label == "NO NAME" {
            return None;
        }
        return Some((FsType::Vfat, label));
    }
    None
}

pub fn is_cidata(label: &str) -> bool {
    label.eq_ignore_ascii_case("cidata")
}

fn read_head(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(0))?;
    let mut buf = Vec::with_capacity(65536);
    f.take(65536).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Find a block device labelled cidata/CIDATA: `/dev/disk/by-label` first,
/// then every device in `/sys/class/block`. Devices that cannot be read (an
/// unprivileged container) are skipped.
pub fn find_cidata(root: &Root) -> Option<(PathBuf, FsType)> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    for label in ["cidata", "CIDATA"] {
        let link = root.path("/dev/disk/by-label").join(label);
        if link.exists() {
            candidates.push(link);
        }
    }
    if let Ok(entries) = std::fs::read_dir(root.path("/sys/class/block")) {
        let mut names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("ram") && !n.starts_with("zram"))
            .collect();
        names.sort();
        candidates.extend(names.into_iter().map(|n| root.path("/dev").join(n)));
    }
    for dev in candidates {
        match read_head(&dev) {
            Ok(head) => {
                if let Some((fs, label)) = read_label(&head) {
                    if is_cidata(&label) {
                        let dev = std::fs::canonicalize(&dev).unwrap_or(dev);
                        return Some((dev, fs));
                    }
                }
            }
            Err(e) => tracing::debug!(device = %dev.display(), error = %e, "skipping device"),
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ISO 9660 head with the given volume id.
    pub(crate) fn iso_head(label: &str) -> Vec<u8> {
        let mut v = vec![0u8; 17 * 2048];
        let pvd = 16 * 2048;
        v[pvd] = 1;
        v[pvd + 1..pvd + 6].copy_from_slice(b"CD001");
        let mut id = [b' '; 32];
        id[..label.len()].copy_from_slice(label.as_bytes());
        v[pvd + 40..pvd + 72].copy_from_slice(&id);
        v
    }

    fn fat_head(label: &str, fat32: bool) -> Vec<u8> {
        let mut v = vec![0u8; 512];
        v[510] = 0x55;
        v[511] = 0xAA;
        let mut l = [b' '; 11];
        l[..label.len()].copy_from_slice(label.as_bytes());
        if fat32 {
            v[71..82].copy_from_slice(&l);
            v[82..90].copy_from_slice(b"FAT32   ");
        } else {
            v[43..54].copy_from_slice(&l);
            v[54..62].copy_from_slice(b"FAT12   ");
        }
        v
    }

    #[test]
    fn labels() {
        assert_eq!(
            read_label(&iso_head("cidata")),
            Some((FsType::Iso9660, "cidata".into()))
        );
        assert_eq!(
            read_label(&fat_head("CIDATA", false)),
            Some((FsType::Vfat, "CIDATA".into()))
        );
        assert_eq!(
            read_label(&fat_head("cidata", true)),
            Some((FsType::Vfat, "cidata".into()))
        );
        assert_eq!(read_label(&fat_head("NO NAME", false)), None);
        assert_eq!(read_label(&[0u8; 4096]), None);
        assert!(is_cidata("CIDATA") && !is_cidata("config-2"));
    }

    #[test]
    fn cmdline() {
        let s = parse_cmdline(
            "BOOT_IMAGE=/vmlinuz root=/dev/vda1 ds=nocloud;s=file:///srv/seed/;i=abc console=ttyS0\n",
        )
        .unwrap();
        assert_eq!(s.seed_from.as_deref(), Some("file:///srv/seed/"));
        assert_eq!(s.instance_id.as_deref(), Some("abc"));
        assert_eq!(seed_dir_from("file:///srv/seed/").unwrap(), "/srv/seed/");
        assert!(seed_dir_from("http://10.0.0.1/seed/").is_err());
        let s = parse_cmdline("quiet 'ds=nocloud-net;seedfrom=/x/;h=n1'").unwrap();
        assert_eq!(s.seed_from.as_deref(), Some("/x/"));
        assert_eq!(s.local_hostname.as_deref(), Some("n1"));
        assert_eq!(parse_cmdline("ds=nocloud").unwrap(), CmdlineSeed::default());
        assert!(parse_cmdline("ds=ec2 root=/dev/sda").is_none());
        assert!(parse_cmdline("root=/dev/sda").is_none());
    }

    // Found by fuzz_kernel_cmdline: `file://host/path` became the relative
    // seed dir `host/path`.
    #[test]
    fn file_urls_name_a_local_absolute_path() {
        assert_eq!(seed_dir_from("file:///srv/seed/").unwrap(), "/srv/seed/");
        assert_eq!(
            seed_dir_from("file://localhost/srv/seed/").unwrap(),
            "/srv/seed/"
        );
        for url in ["file://seed-host/srv/seed/", "file://", "file://seed/"] {
            assert_eq!(seed_dir_from(url).unwrap_err(), url);
        }
    }

    #[test]
    fn finds_cidata_by_scanning_sys_class_block() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        for (name, head) in [("vda", fat_head("ROOT", true)), ("sr0", iso_head("cidata"))] {
            std::fs::create_dir_all(root.path("/sys/class/block").join(name)).unwrap();
            std::fs::create_dir_all(root.path("/dev")).unwrap();
            std::fs::write(root.path("/dev").join(name), head).unwrap();
        }
        let (dev, fs) = find_cidata(&root).unwrap();
        assert!(dev.ends_with("dev/sr0"), "{}", dev.display());
        assert_eq!(fs, FsType::Iso9660);
    }
}
