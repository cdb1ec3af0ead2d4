//! `imgbuild seed`: a NoCloud `cidata` volume for libvirt/qemu, as
//! `cloud-localds` makes it. The files are checked first (pure functions on
//! bytes), then staged and handed to xorriso (ISO 9660) or
//! mkfs.vfat + mtools (FAT); the image is written to a temp file next to the
//! output and renamed into place, so a failure never leaves a partial seed.
//!
//! Both formats are reproducible: every tool runs with `SOURCE_DATE_EPOCH`
//! and `TZ=UTC`, the staged files carry that time as mtime, and the FAT
//! volume id is fixed. The same inputs and epoch give byte-identical images.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::command::{find_in_path, run_command, CommandError};

/// The firstboot agent's (and a sensible) cap on each NoCloud file.
pub const MAX_SEED_FILE_BYTES: u64 = 1024 * 1024;
/// FAT volume label; cloud-init and the agent match it case-insensitively.
pub const VFAT_LABEL: &str = "CIDATA";
/// ISO 9660 volume id, what cloud-localds writes.
pub const ISO_VOLID: &str = "cidata";
/// Fixed FAT volume serial, so the image depends only on its inputs.
pub const VFAT_VOLUME_ID: &str = "c1da7a00";
/// Smallest FAT image; plenty for the 3 files at their usual sizes.
const VFAT_MIN_BYTES: u64 = 2 * 1024 * 1024;
const MIB: u64 = 1024 * 1024;
/// Timestamp used when no `SOURCE_DATE_EPOCH` is given: 1980-01-01T00:00:00Z,
/// the earliest time FAT can store.
pub const DEFAULT_SOURCE_DATE_EPOCH: u64 = 315_532_800;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SeedFormat {
    /// ISO 9660 with Joliet and Rock Ridge, volume id `cidata` (cloud-localds' default).
    Iso,
    /// FAT, label `CIDATA`.
    Vfat,
}

impl SeedFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            SeedFormat::Iso => "iso",
            SeedFormat::Vfat => "vfat",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    // The cause follows in the error chain (`{:#}`), so it is not repeated here.
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {size} bytes is more than the {limit}-byte limit for a NoCloud file; is this the right file?")]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("{path}: user-data must start with `#cloud-config`, a `#!` script line, or be a MIME multipart message (`Content-Type: multipart/...`); it starts with {start:?}")]
    UserDataKind { path: String, start: String },
    #[error("{path}: not UTF-8 text ({message})")]
    NotUtf8 { path: String, message: String },
    #[error("{path}{location}: not valid YAML: {message}")]
    Yaml {
        path: String,
        location: String,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("{what} {value:?} {message}")]
    BadValue {
        what: &'static str,
        value: String,
        message: String,
    },
    #[error("{tool} not found; install it with: apt-get install -y {package}")]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
    },
    #[error(transparent)]
    Command(#[from] CommandError),
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SeedError {
    let path = path.display().to_string();
    move |source| SeedError::Io {
        action,
        path,
        source,
    }
}

/// The checked contents of a seed, under the names NoCloud expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedFiles {
    pub user_data: Vec<u8>,
    pub meta_data: Vec<u8>,
    pub network_config: Option<Vec<u8>>,
    /// What `cicustom vendor=…` puts on Proxmox's drive; cloud-init (and
    /// firstboot-agent) merge it under user-data.
    pub vendor_data: Option<Vec<u8>>,
}

impl SeedFiles {
    /// (name on the volume, contents), in a fixed order.
    pub fn entries(&self) -> Vec<(&'static str, &[u8])> {
        let mut v: Vec<(&'static str, &[u8])> = vec![
            ("user-data", &self.user_data),
            ("meta-data", &self.meta_data),
        ];
        if let Some(n) = &self.network_config {
            v.push(("network-config", n));
        }
        if let Some(n) = &self.vendor_data {
            v.push(("vendor-data", n));
        }
        v
    }

    fn total_len(&self) -> u64 {
        self.entries().iter().map(|(_, b)| b.len() as u64).sum()
    }
}

/// Read a seed input, refusing anything over [`MAX_SEED_FILE_BYTES`].
pub fn read_input(path: &Path) -> Result<Vec<u8>, SeedError> {
    let file = File::open(path).map_err(io_err("reading", path))?;
    let mut buf = Vec::new();
    file.take(MAX_SEED_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(io_err("reading", path))?;
    check_size(&path.display().to_string(), &buf)?;
    Ok(buf)
}

fn check_size(shown: &str, bytes: &[u8]) -> Result<(), SeedError> {
    if bytes.len() as u64 > MAX_SEED_FILE_BYTES {
        return Err(SeedError::TooLarge {
            path: shown.to_owned(),
            size: bytes.len() as u64,
            limit: MAX_SEED_FILE_BYTES,
        });
    }
    Ok(())
}

fn as_text<'a>(shown: &str, bytes: &'a [u8]) -> Result<&'a str, SeedError> {
    std::str::from_utf8(bytes).map_err(|e| SeedError::NotUtf8 {
        path: shown.to_owned(),
        message: e.to_string(),
    })
}

fn parse_yaml(shown: &str, text: &str) -> Result<serde_yaml::Value, SeedError> {
    serde_yaml::from_str(text).map_err(|e| SeedError::Yaml {
        path: shown.to_owned(),
        location: e
            .location()
            .map(|l| format!(":{}:{}", l.line(), l.column()))
            .unwrap_or_default(),
        message: e.to_string(),
    })
}

/// True for a MIME message whose header block has `Content-Type: multipart/…`.
fn is_mime_multipart(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]);
    text.lines().take_while(|l| !l.trim().is_empty()).any(|l| {
        let l = l.to_ascii_lowercase();
        l.strip_prefix("content-type:")
            .is_some_and(|v| v.trim_start().starts_with("multipart/"))
    })
}

/// user-data: `#cloud-config` (which must then be valid YAML), a `#!` script,
/// or MIME multipart — the kinds cloud-init runs. Anything else cloud-init
/// would silently ignore, which is the mistake worth catching here.
pub fn validate_user_data(shown: &str, bytes: &[u8]) -> Result<(), SeedError> {
    check_size(shown, bytes)?;
    if bytes.starts_with(b"#cloud-config") {
        let text = as_text(shown, bytes)?;
        parse_yaml(shown, text)?;
        return Ok(());
    }
    if bytes.starts_with(b"#!") || is_mime_multipart(bytes) {
        return Ok(());
    }
    let first = String::from_utf8_lossy(&bytes[..bytes.len().min(40)]);
    Err(SeedError::UserDataKind {
        path: shown.to_owned(),
        start: first.lines().next().unwrap_or_default().to_owned(),
    })
}

/// vendor-data: what user-data may be, or empty (Proxmox writes an empty
/// file when no `cicustom vendor=` is set).
pub fn validate_vendor_data(shown: &str, bytes: &[u8]) -> Result<(), SeedError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    validate_user_data(shown, bytes)
}

/// meta-data: a YAML mapping with a non-empty `instance-id`.
pub fn validate_meta_data(shown: &str, bytes: &[u8]) -> Result<(), SeedError> {
    check_size(shown, bytes)?;
    let value = parse_yaml(shown, as_text(shown, bytes)?)?;
    let serde_yaml::Value::Mapping(map) = value else {
        return Err(SeedError::Invalid {
            path: shown.to_owned(),
            message: "meta-data must be a YAML mapping, e.g. `instance-id: node-1`".into(),
        });
    };
    match map.get("instance-id") {
        Some(serde_yaml::Value::String(s)) if !s.trim().is_empty() => Ok(()),
        Some(serde_yaml::Value::Number(_)) => Ok(()),
        Some(_) => Err(SeedError::Invalid {
            path: shown.to_owned(),
            message: "instance-id must be a non-empty string".into(),
        }),
        None => Err(SeedError::Invalid {
            path: shown.to_owned(),
            message: "no `instance-id`; cloud-init needs one (e.g. `instance-id: node-1`), or leave out --meta-data and let imgbuild generate it".into(),
        }),
    }
}

/// network-config: a YAML mapping (netplan-style v2 or v1); its schema is
/// cloud-init's to check.
pub fn validate_network_config(shown: &str, bytes: &[u8]) -> Result<(), SeedError> {
    check_size(shown, bytes)?;
    match parse_yaml(shown, as_text(shown, bytes)?)? {
        serde_yaml::Value::Mapping(_) => Ok(()),
        _ => Err(SeedError::Invalid {
            path: shown.to_owned(),
            message: "network-config must be a YAML mapping, e.g. `version: 2` with `ethernets:`"
                .into(),
        }),
    }
}

/// `iid-` and the first 12 hex digits of the user-data's sha256: a new
/// user-data gives a new instance, so cloud-init runs it again.
pub fn default_instance_id(user_data: &[u8]) -> String {
    let digest = Sha256::digest(user_data);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("iid-{}", &hex[..12])
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct GeneratedMetaData<'a> {
    instance_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    local_hostname: Option<&'a str>,
}

/// meta-data for when none is given.
pub fn generate_meta_data(
    instance_id: Option<&str>,
    hostname: Option<&str>,
    user_data: &[u8],
) -> Result<String, SeedError> {
    let default_id;
    let instance_id = match instance_id {
        Some(id) => {
            check_instance_id(id)?;
            id
        }
        None => {
            default_id = default_instance_id(user_data);
            &default_id
        }
    };
    if let Some(h) = hostname {
        check_hostname(h)?;
    }
    let meta = GeneratedMetaData {
        instance_id,
        local_hostname: hostname,
    };
    serde_yaml::to_string(&meta).map_err(|e| SeedError::BadValue {
        what: "meta-data",
        value: instance_id.to_owned(),
        message: e.to_string(),
    })
}

fn check_instance_id(id: &str) -> Result<(), SeedError> {
    if id.is_empty() || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(SeedError::BadValue {
            what: "--instance-id",
            value: id.to_owned(),
            message: "must be non-empty, without spaces or control characters".into(),
        });
    }
    Ok(())
}

/// RFC 1123 host name: dot-separated labels of letters, digits and `-`.
fn check_hostname(name: &str) -> Result<(), SeedError> {
    let bad = |message: &str| SeedError::BadValue {
        what: "--hostname",
        value: name.to_owned(),
        message: message.to_owned(),
    };
    if name.is_empty() || name.len() > 253 {
        return Err(bad("must be 1 to 253 characters long"));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("has an empty label or one longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad("may contain only letters, digits, '-' and '.'"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("has a label that starts or ends with '-'"));
        }
    }
    Ok(())
}

/// Size of the FAT image: 2 MiB, or the data plus 1 MiB of room for FAT
/// structures, rounded up to whole MiB.
pub fn vfat_image_size(data_bytes: u64) -> u64 {
    let needed = (data_bytes + MIB).div_ceil(MIB) * MIB;
    needed.max(VFAT_MIN_BYTES)
}

/// `tool` from `PATH` or the sbin directories; missing, the error names
/// its package.
fn find_tool(tool: &'static str) -> Result<PathBuf, SeedError> {
    find_in_path(tool, &crate::command::tool_search_path()).ok_or(SeedError::ToolMissing {
        tool,
        package: crate::command::package_of(tool),
    })
}

/// The programs one format needs, found up front.
#[derive(Debug)]
enum Tools {
    Iso {
        xorriso: PathBuf,
    },
    Vfat {
        mkfs: PathBuf,
        mlabel: PathBuf,
        mcopy: PathBuf,
    },
}

#[derive(Debug)]
struct VfatTools<'a> {
    mkfs: &'a Path,
    mlabel: &'a Path,
    mcopy: &'a Path,
}

/// How to write a seed.
#[derive(Debug, Clone, Copy)]
pub struct SeedOptions<'a> {
    pub format: SeedFormat,
    /// Timestamp of every file and of the volume.
    pub source_date_epoch: u64,
    pub cancel: &'a AtomicBool,
}

/// Write `files` as a `cidata` volume to `output`, atomically.
pub fn write_seed(output: &Path, files: &SeedFiles, opts: &SeedOptions) -> Result<(), SeedError> {
    // Find every tool before creating anything.
    let tools = match opts.format {
        SeedFormat::Iso => Tools::Iso {
            xorriso: find_tool("xorriso")?,
        },
        SeedFormat::Vfat => Tools::Vfat {
            mkfs: find_tool("mkfs.vfat")?,
            mlabel: find_tool("mlabel")?,
            mcopy: find_tool("mcopy")?,
        },
    };
    let dir = crate::parent_dir(output);
    let stage = tempfile::Builder::new()
        .prefix(".imgbuild-seed-")
        .tempdir_in(dir)
        .map_err(io_err("creating a staging directory in", dir))?;
    let staged = stage_files(stage.path(), files, opts.source_date_epoch)?;
    // Removed on drop unless committed: no partial output on any error. The
    // seed may carry a join token, so it is 0600.
    let tmp = node_spec::atomic::Staged::new(output, crate::emit::placement(0o600))
        .map_err(atomic_err)?;
    match &tools {
        Tools::Iso { xorriso } => make_iso(xorriso, tmp.temp_path(), &staged, opts)?,
        Tools::Vfat {
            mkfs,
            mlabel,
            mcopy,
        } => {
            let vfat = VfatTools {
                mkfs,
                mlabel,
                mcopy,
            };
            make_vfat(&vfat, tmp.temp_path(), &staged, files.total_len(), opts)?
        }
    }
    tmp.commit().map_err(atomic_err)
}

fn atomic_err(e: node_spec::atomic::AtomicError) -> SeedError {
    SeedError::Io {
        action: e.action,
        path: e.path.display().to_string(),
        source: e.source,
    }
}

/// Write each file under its NoCloud name, with mtime = the epoch (xorriso
/// and `mcopy -m` take file dates from it).
fn stage_files(
    dir: &Path,
    files: &SeedFiles,
    epoch: u64,
) -> Result<Vec<(&'static str, PathBuf)>, SeedError> {
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(epoch);
    let mut staged = Vec::new();
    for (name, bytes) in files.entries() {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(io_err("writing", &path))?;
        File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(when))
            .map_err(io_err("setting the time of", &path))?;
        staged.push((name, path));
    }
    Ok(staged)
}

/// Environment for reproducible tool output.
fn reproducible(cmd: &mut Command, epoch: u64) -> &mut Command {
    cmd.env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("TZ", "UTC")
        .env("MTOOLS_SKIP_CHECK", "1")
}

fn make_iso(
    xorriso: &Path,
    image: &Path,
    staged: &[(&'static str, PathBuf)],
    opts: &SeedOptions,
) -> Result<(), SeedError> {
    let mut cmd = Command::new(xorriso);
    cmd.args(["-as", "genisoimage", "-output"])
        .arg(image)
        .args(["-volid", ISO_VOLID, "-joliet", "-rock"]);
    // Map each staged file to its name at the root, whatever the stage dir.
    cmd.arg("-graft-points");
    for (name, path) in staged {
        let mut spec = OsString::from(format!("/{name}="));
        spec.push(path);
        cmd.arg(spec);
    }
    run_command(reproducible(&mut cmd, opts.source_date_epoch), opts.cancel)?;
    Ok(())
}

fn make_vfat(
    tools: &VfatTools,
    image: &Path,
    staged: &[(&'static str, PathBuf)],
    data_bytes: u64,
    opts: &SeedOptions,
) -> Result<(), SeedError> {
    let VfatTools {
        mkfs,
        mlabel,
        mcopy,
    } = tools;
    File::options()
        .write(true)
        .open(image)
        .and_then(|f| f.set_len(vfat_image_size(data_bytes)))
        .map_err(io_err("sizing", image))?;
    let epoch = opts.source_date_epoch;
    // The label goes on with mlabel, not `mkfs.vfat -n`: mkfs.vfat 4.2 stamps
    // the label's directory entry with the current time, mlabel honours
    // SOURCE_DATE_EPOCH.
    let mut mkfs_cmd = Command::new(mkfs);
    mkfs_cmd.args(["-i", VFAT_VOLUME_ID]).arg(image);
    run_command(reproducible(&mut mkfs_cmd, epoch), opts.cancel)?;
    let mut label_cmd = Command::new(mlabel);
    label_cmd
        .arg("-i")
        .arg(image)
        .arg(format!("::{VFAT_LABEL}"));
    run_command(reproducible(&mut label_cmd, epoch), opts.cancel)?;
    for (name, path) in staged {
        let mut copy = Command::new(mcopy);
        copy.arg("-m")
            .arg("-i")
            .arg(image)
            .arg(path)
            .arg(format!("::{name}"));
        run_command(reproducible(&mut copy, epoch), opts.cancel)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
