//! Step 1: NoCloud metadata. Finds the seed, reads `meta-data`,
//! `user-data` and `vendor-data`, layers vendor-data under user-data
//! ([`vendor`]) and merges the result over the defaults baked into the
//! image ([`merge::NodeConfig`]).

pub mod merge;
mod multipart;
pub mod nocloud;
pub mod token_file;
pub mod userdata;
pub(crate) mod values;
pub mod vendor;

use std::io::Read;
use std::path::Path;

use crate::rootfs::{FileError, Root};
use crate::system::System;

pub use merge::{NodeConfig, ServerUrl, Token, Topology};
pub use userdata::{K3sMeta, MetaData, UserData, MAX_METADATA_BYTES};
pub use vendor::{Origin, Origins, VendorContent, VendorData, VendorUse};

/// Why metadata could not be used. Every variant names the file; the node
/// stays retryable (nothing has been changed yet when these are raised).
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("{path}:{line}:{column}: {}", crate::message::plain_serde(message))]
    Parse {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}:{line}: {message}")]
    Unsupported {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{path}{}: {key}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        path: String,
        line: Option<usize>,
        key: String,
        message: String,
    },
    #[error("{path}: {size} bytes is more than the {limit}-byte limit for NoCloud metadata; is this the right file?")]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("no NoCloud metadata found (looked at: {}); attach a cloud-init drive (label cidata), push meta-data and user-data into /var/lib/cloud/seed/nocloud/, or boot with ds=nocloud;s=file:///path/", searched.join(", "))]
    NotFound { searched: Vec<String> },
    #[error(transparent)]
    File(#[from] FileError),
    #[error("reading the cidata volume {device}: {message}")]
    Volume { device: String, message: String },
}

/// Metadata as read from one NoCloud seed.
#[derive(Debug, Clone)]
pub struct Metadata {
    /// Where it came from, for messages and status.
    pub source: String,
    /// The user-data file as messages name it (it may be missing).
    pub user_data_path: String,
    pub meta: MetaData,
    pub user: UserData,
    /// The seed's vendor-data file, if it has one.
    pub vendor: Option<VendorData>,
}

fn read_capped(path: &Path, shown: &str) -> Result<Option<Vec<u8>>, MetadataError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(FileError::new("reading", path, e).into()),
    };
    let mut buf = Vec::new();
    file.take(MAX_METADATA_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| FileError::new("reading", path, e))?;
    if buf.len() as u64 > MAX_METADATA_BYTES {
        return Err(MetadataError::TooLarge {
            path: shown.to_owned(),
            size: std::fs::metadata(path)
                .map(|m| m.len())
                .unwrap_or(buf.len() as u64),
            limit: MAX_METADATA_BYTES,
        });
    }
    Ok(Some(buf))
}

/// Read a seed directory (`dir` is the real path, `shown` the node path).
fn read_seed_dir(dir: &Path, shown: &str, source: String) -> Result<Metadata, MetadataError> {
    let md_shown = format!("{}/meta-data", shown.trim_end_matches('/'));
    let ud_shown = format!("{}/user-data", shown.trim_end_matches('/'));
    let meta_bytes =
        read_capped(&dir.join("meta-data"), &md_shown)?.ok_or_else(|| MetadataError::Invalid {
            path: md_shown.clone(),
            line: None,
            key: "meta-data".into(),
            message:
                "file is missing; NoCloud needs meta-data with an instance-id next to user-data"
                    .into(),
        })?;
    let meta = userdata::parse_meta_data(&md_shown, &meta_bytes)?;
    let user = match read_capped(&dir.join("user-data"), &ud_shown)? {
        Some(bytes) => userdata::parse_user_data(&ud_shown, &bytes)?,
        None => UserData::default(),
    };
    let vd_shown = format!("{}/vendor-data", shown.trim_end_matches('/'));
    let vendor = read_capped(&dir.join("vendor-data"), &vd_shown)?
        .map(|bytes| {
            let content = if let Some(by) = vendor::disabled_by(&user, &ud_shown) {
                VendorContent::Disabled { by }
            } else if bytes.iter().all(u8::is_ascii_whitespace) {
                VendorContent::Empty
            } else {
                VendorContent::Parsed(Box::new(userdata::parse_vendor_data(&vd_shown, &bytes)?))
            };
            Ok::<_, MetadataError>(VendorData {
                path: vd_shown.clone(),
                content,
            })
        })
        .transpose()?;
    Ok(Metadata {
        source,
        user_data_path: ud_shown,
        meta,
        user,
        vendor,
    })
}

/// Find and read the NoCloud seed, in cloud-init's order: the kernel command
/// line, the seed directories, then a volume labelled cidata.
pub fn load(root: &Root, system: &dyn System) -> Result<Metadata, MetadataError> {
    let mut searched = Vec::new();
    let cmdline = root.read_optional("/proc/cmdline")?.unwrap_or_default();
    let cmd_seed = nocloud::parse_cmdline(&cmdline);
    let mut found: Option<Metadata> = None;

    if let Some(seed_from) = cmd_seed.as_ref().and_then(|s| s.seed_from.clone()) {
        let dir = nocloud::seed_dir_from(&seed_from).map_err(|url| MetadataError::Unsupported {
            path: "/proc/cmdline".into(),
            line: 1,
            message: format!(
                "ds=nocloud seed {url} is not a local path; firstboot-agent reads file:// seeds, \
                 seed directories and cidata volumes"
            ),
        })?;
        searched.push(format!("{dir} (kernel command line)"));
        if root.path(&dir).is_dir() {
            found = Some(read_seed_dir(
                &root.path(&dir),
                &dir,
                format!("{dir} (ds=nocloud on the kernel command line)"),
            )?);
        }
    }
    if found.is_none() {
        for dir in nocloud::SEED_DIRS {
            searched.push(dir.to_owned());
            let real = root.path(dir);
            if real.join("meta-data").exists() || real.join("user-data").exists() {
                found = Some(read_seed_dir(&real, dir, dir.to_owned())?);
                break;
            }
        }
    }
    if found.is_none() {
        searched.push("block devices labelled cidata/CIDATA".into());
        if let Some((device, fs)) = nocloud::find_cidata(root) {
            found = Some(read_volume(root, system, &device, fs)?);
        }
    }
    let mut md = found.ok_or(MetadataError::NotFound { searched })?;
    // Values on the kernel command line win, as in cloud-init.
    if let Some(seed) = cmd_seed {
        let refuse = |key: &str, message: String| MetadataError::Invalid {
            path: "/proc/cmdline".into(),
            line: None,
            key: format!("ds=nocloud;{key}="),
            message,
        };
        if let Some(i) = seed.instance_id {
            crate::message::check_one_line(&i).map_err(|m| refuse("i", m))?;
            md.meta.instance_id = i;
        }
        if let Some(h) = seed.local_hostname {
            crate::message::check_one_line(&h).map_err(|m| refuse("h", m))?;
            if !values::valid_hostname(&h) || h.len() > 64 {
                return Err(refuse(
                    "h",
                    format!("{} is not a valid host name — use letters, digits and `-` (at most 64 characters)", crate::message::quoted(&h)),
                ));
            }
            md.meta.local_hostname = Some(h);
        }
    }
    Ok(md)
}

/// Mount a cidata volume read-only on a private directory, copy the two
/// files out and unmount again, whatever happened in between.
fn read_volume(
    root: &Root,
    system: &dyn System,
    device: &Path,
    fs: crate::system::FsType,
) -> Result<Metadata, MetadataError> {
    let shown_dev = device
        .strip_prefix(root.dir())
        .map(|p| Path::new("/").join(p))
        .unwrap_or_else(|_| device.to_owned());
    let mount_point = system.scratch_dir(root.dir()).join("cidata");
    std::fs::create_dir_all(&mount_point)
        .map_err(|e| FileError::new("creating directory", &mount_point, e))?;
    system
        .mount_readonly(device, &mount_point, fs)
        .map_err(|e| MetadataError::Volume {
            device: shown_dev.display().to_string(),
            message: format!("could not mount it: {}", e.reason()),
        })?;
    let source = format!("cidata volume {} ({})", shown_dev.display(), fs.as_str());
    let shown = format!("{}:", shown_dev.display());
    let result = read_seed_dir(&mount_point, &shown, source.clone());
    let unmounted = system.unmount(&mount_point);
    let _ = std::fs::remove_dir(&mount_point);
    let md = result?;
    unmounted.map_err(|e| MetadataError::Volume {
        device: shown_dev.display().to_string(),
        message: format!(
            "could not unmount {}: {} — unmount it by hand",
            mount_point.display(),
            e.reason()
        ),
    })?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::{Call, FakeSystem};

    fn root() -> (tempfile::TempDir, Root) {
        let d = tempfile::tempdir().unwrap();
        let r = Root::new(d.path());
        (d, r)
    }

    fn write(root: &Root, path: &str, text: &str) {
        let p = root.path(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn seed_dir_is_read() {
        let (_d, r) = root();
        write(
            &r,
            "/var/lib/cloud/seed/nocloud-net/meta-data",
            "instance-id: i-1\n",
        );
        write(
            &r,
            "/var/lib/cloud/seed/nocloud-net/user-data",
            "#cloud-config\nhostname: h\n",
        );
        let md = load(&r, &FakeSystem::new()).unwrap();
        assert_eq!(md.meta.instance_id, "i-1");
        assert_eq!(md.user.hostname.as_deref(), Some("h"));
        assert_eq!(md.source, "/var/lib/cloud/seed/nocloud-net");
    }

    #[test]
    fn cmdline_seed_wins_and_overrides_instance_id() {
        let (_d, r) = root();
        write(
            &r,
            "/proc/cmdline",
            "ro ds=nocloud;s=file:///srv/seed/;i=cmd-id\n",
        );
        write(&r, "/srv/seed/meta-data", "instance-id: file-id\n");
        write(
            &r,
            "/var/lib/cloud/seed/nocloud/meta-data",
            "instance-id: other\n",
        );
        let md = load(&r, &FakeSystem::new()).unwrap();
        assert_eq!(md.meta.instance_id, "cmd-id");
        assert!(md.source.contains("/srv/seed/"), "{}", md.source);
    }

    #[test]
    fn http_seed_is_refused_clearly() {
        let (_d, r) = root();
        write(&r, "/proc/cmdline", "ds=nocloud-net;s=http://10.1.1.1/\n");
        let e = load(&r, &FakeSystem::new()).unwrap_err().to_string();
        assert!(
            e.contains("/proc/cmdline") && e.contains("http://10.1.1.1/"),
            "{e}"
        );
    }

    #[test]
    fn nothing_found_lists_places() {
        let (_d, r) = root();
        let e = load(&r, &FakeSystem::new()).unwrap_err().to_string();
        assert!(
            e.contains("/var/lib/cloud/seed/nocloud,") && e.contains("cidata"),
            "{e}"
        );
    }

    #[test]
    fn user_data_error_names_seed_file() {
        let (_d, r) = root();
        write(
            &r,
            "/var/lib/cloud/seed/nocloud/meta-data",
            "instance-id: i\n",
        );
        write(
            &r,
            "/var/lib/cloud/seed/nocloud/user-data",
            "#cloud-config\nk3s:\n  role: 3\n",
        );
        let e = load(&r, &FakeSystem::new()).unwrap_err().to_string();
        assert!(
            e.starts_with("/var/lib/cloud/seed/nocloud/user-data:3:"),
            "{e}"
        );
    }

    #[test]
    fn cidata_volume_is_mounted_read_and_unmounted() {
        let (_d, r) = root();
        std::fs::create_dir_all(r.path("/sys/class/block/sr0")).unwrap();
        write(&r, "/dev/sr0", "");
        std::fs::write(r.path("/dev/sr0"), nocloud::tests::iso_head("cidata")).unwrap();
        let mut sys = FakeSystem::new();
        let dev = std::fs::canonicalize(r.path("/dev/sr0")).unwrap();
        sys.volume_files.insert(
            dev.clone(),
            vec![
                ("meta-data".into(), "instance-id: pve-1\n".into()),
                ("user-data".into(), "#cloud-config\nhostname: vm1\n".into()),
            ],
        );
        let md = load(&r, &sys).unwrap();
        assert_eq!(md.meta.instance_id, "pve-1");
        assert_eq!(md.user.hostname.as_deref(), Some("vm1"));
        let calls = sys.calls();
        assert!(matches!(calls[0], Call::Mount { .. }), "{calls:?}");
        assert!(matches!(calls[1], Call::Unmount(_)), "{calls:?}");
        assert!(!r.path("/run/firstboot-agent/cidata").exists());
    }

    #[test]
    fn cidata_parse_error_still_unmounts() {
        let (_d, r) = root();
        std::fs::create_dir_all(r.path("/sys/class/block/sr0")).unwrap();
        std::fs::create_dir_all(r.path("/dev")).unwrap();
        std::fs::write(r.path("/dev/sr0"), nocloud::tests::iso_head("CIDATA")).unwrap();
        let mut sys = FakeSystem::new();
        let dev = std::fs::canonicalize(r.path("/dev/sr0")).unwrap();
        sys.volume_files
            .insert(dev, vec![("meta-data".into(), "nope: 1\n".into())]);
        let e = load(&r, &sys).unwrap_err().to_string();
        assert!(
            e.contains("/dev/sr0:/meta-data") && e.contains("instance-id"),
            "{e}"
        );
        assert!(sys.calls().iter().any(|c| matches!(c, Call::Unmount(_))));
    }
}
