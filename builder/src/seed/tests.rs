//! Checks on literal inputs, then seeds made with the real tools (xorriso,
//! dosfstools, mtools; `scripts/deps.sh test` installs them) and read back
//! with those tools, by hand and with the firstboot agent's label reader.

use super::*;
use std::sync::atomic::AtomicBool;

use firstboot_agent::metadata::nocloud::{is_cidata, read_label};
use firstboot_agent::system::FsType;

const USER: &[u8] = b"#cloud-config\nhostname: k3s-1\nk3s:\n  token: \"s3cret\"\n";
const META: &[u8] = b"instance-id: node-1\nlocal-hostname: k3s-1\n";
const NET: &[u8] = b"version: 2\nethernets:\n  eth0:\n    dhcp4: true\n";

fn files(network: bool) -> SeedFiles {
    SeedFiles {
        user_data: USER.to_vec(),
        meta_data: META.to_vec(),
        network_config: network.then(|| NET.to_vec()),
        vendor_data: None,
    }
}

// ---- validation (pure) ----

#[test]
fn user_data_kinds() {
    validate_user_data("u", USER).unwrap();
    validate_user_data("u", b"#!/bin/sh\necho hi\n").unwrap();
    let mime = b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"X\"\n\n--X\n";
    validate_user_data("u", mime).unwrap();

    let e = validate_user_data("conf/user-data", b"hostname: k3s-1\n").unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("conf/user-data: "), "{msg}");
    assert!(
        msg.contains("#cloud-config") && msg.contains("hostname: k3s-1"),
        "{msg}"
    );
    // The header must be at the very start: cloud-init looks nowhere else.
    assert!(validate_user_data("u", b"\n#cloud-config\n").is_err());
    // A multipart mention in the body is not a MIME header.
    assert!(validate_user_data("u", b"hello\n\nContent-Type: multipart/mixed\n").is_err());
}

#[test]
fn cloud_config_must_be_yaml() {
    let e = validate_user_data("ud", b"#cloud-config\nk3s: [unclosed\n").unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("ud:"), "{msg}");
    assert!(msg.contains("not valid YAML"), "{msg}");
}

#[test]
fn oversize_files_are_refused() {
    let mut big = b"#cloud-config\n".to_vec();
    big.resize(MAX_SEED_FILE_BYTES as usize + 1, b'#');
    let e = validate_user_data("big-ud", &big).unwrap_err();
    assert!(matches!(e, SeedError::TooLarge { .. }), "{e}");
    assert!(e.to_string().starts_with("big-ud: "), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("huge");
    std::fs::write(&p, &big).unwrap();
    let e = read_input(&p).unwrap_err();
    assert!(matches!(e, SeedError::TooLarge { .. }), "{e}");
    assert!(e.to_string().contains("huge"), "{e}");
}

#[test]
fn meta_data_needs_an_instance_id() {
    validate_meta_data("m", META).unwrap();
    let e = validate_meta_data("my/meta-data", b"local-hostname: a\n").unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("my/meta-data: "), "{msg}");
    assert!(msg.contains("instance-id"), "{msg}");
    assert!(validate_meta_data("m", b"instance-id: \"\"\n").is_err());
    assert!(validate_meta_data("m", b"- a list\n").is_err());
    let e = validate_meta_data("m", b"instance-id: [x\n").unwrap_err();
    assert!(e.to_string().contains("not valid YAML"), "{e}");
}

#[test]
fn network_config_must_be_a_yaml_mapping() {
    validate_network_config("n", NET).unwrap();
    let e = validate_network_config("net.yaml", b"version: 2\n  bad: indent\n").unwrap_err();
    assert!(e.to_string().starts_with("net.yaml"), "{e}");
    assert!(validate_network_config("n", b"just text\n").is_err());
}

#[test]
fn generated_meta_data() {
    let m = generate_meta_data(Some("node-7"), Some("k3s-7"), USER).unwrap();
    assert_eq!(m, "instance-id: node-7\nlocal-hostname: k3s-7\n");
    validate_meta_data("generated", m.as_bytes()).unwrap();

    let m = generate_meta_data(None, None, USER).unwrap();
    let id = default_instance_id(USER);
    assert_eq!(m, format!("instance-id: {id}\n"));
    assert!(id.starts_with("iid-") && id.len() == 16, "{id}");
    assert!(id[4..].bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    // New user-data, new instance: cloud-init runs it again.
    assert_ne!(id, default_instance_id(b"#cloud-config\n{}\n"));

    // YAML-significant ids are quoted, not mangled.
    let m = generate_meta_data(Some("007"), None, USER).unwrap();
    let v: serde_yaml::Value = serde_yaml::from_str(&m).unwrap();
    assert_eq!(v["instance-id"], serde_yaml::Value::String("007".into()));

    let e = generate_meta_data(None, Some("bad_host"), USER).unwrap_err();
    assert!(e.to_string().contains("--hostname \"bad_host\""), "{e}");
    assert!(generate_meta_data(Some("a b"), None, USER).is_err());
}

#[test]
fn fat_image_grows_with_the_data() {
    assert_eq!(vfat_image_size(100), 2 * MIB);
    assert_eq!(vfat_image_size(MIB), 2 * MIB);
    assert_eq!(vfat_image_size(MIB + 1), 3 * MIB);
    assert_eq!(vfat_image_size(3 * MIB), 4 * MIB);
}

#[test]
fn missing_tool_says_how_to_install_it() {
    // Not in the tool table: the package is unknown, and said to be.
    let e = find_tool("no-such-seed-tool").unwrap_err();
    assert_eq!(
        e.to_string(),
        "no-such-seed-tool not found; install it with: apt-get install -y ?"
    );
}

// ---- real images ----

const EPOCH: u64 = 1_700_000_000;

fn make(dir: &Path, name: &str, format: SeedFormat, files: &SeedFiles) -> PathBuf {
    let out = dir.join(name);
    let cancel = AtomicBool::new(false);
    let opts = SeedOptions {
        format,
        source_date_epoch: EPOCH,
        cancel: &cancel,
    };
    write_seed(&out, files, &opts).unwrap();
    out
}

fn run(cmd: &mut Command) -> Vec<u8> {
    run_command(cmd, &AtomicBool::new(false)).unwrap().stdout
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn read_iso_file(image: &Path, name: &str) -> Vec<u8> {
    let out = tempfile::tempdir().unwrap();
    run(Command::new("xorriso")
        .args(["-osirrox", "on", "-indev"])
        .arg(image)
        .args(["-extract", "/"])
        .arg(out.path()));
    std::fs::read(out.path().join(name)).unwrap()
}

fn iso_root_names(image: &Path) -> Vec<String> {
    let out = tempfile::tempdir().unwrap();
    run(Command::new("xorriso")
        .args(["-osirrox", "on", "-indev"])
        .arg(image)
        .args(["-extract", "/"])
        .arg(out.path()));
    names_in(out.path())
}

fn read_vfat_file(image: &Path, name: &str) -> Vec<u8> {
    run(Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(image)
        .arg(format!("::{name}"))
        .arg("-"))
}

fn head(image: &Path) -> Vec<u8> {
    let mut buf = Vec::new();
    File::open(image)
        .unwrap()
        .take(64 * 1024)
        .read_to_end(&mut buf)
        .unwrap();
    buf
}

#[test]
fn iso_seed_has_label_and_exact_files() {
    let dir = tempfile::tempdir().unwrap();
    let img = make(dir.path(), "seed.iso", SeedFormat::Iso, &files(true));

    let h = head(&img);
    // Primary volume descriptor, volume id at 0x8028 (32 bytes, space padded).
    assert_eq!(&h[0x8001..0x8006], b"CD001");
    assert_eq!(&h[0x8028..0x8028 + 6], b"cidata");
    assert!(h[0x8028 + 6..0x8048].iter().all(|&b| b == b' '));
    // What the agent sees when it probes block devices.
    let (fs, label) = read_label(&h).unwrap();
    assert_eq!(fs, FsType::Iso9660);
    assert!(is_cidata(&label), "{label}");

    // Rock Ridge keeps the exact lower-case names cloud-init looks for.
    assert_eq!(
        iso_root_names(&img),
        ["meta-data", "network-config", "user-data"]
    );
    assert_eq!(read_iso_file(&img, "user-data"), USER);
    assert_eq!(read_iso_file(&img, "meta-data"), META);
    assert_eq!(read_iso_file(&img, "network-config"), NET);
    // Only the output is left behind: no staging dir, no temp file.
    assert_eq!(names_in(dir.path()), ["seed.iso"]);
}

#[test]
fn vfat_seed_has_label_and_exact_files() {
    let dir = tempfile::tempdir().unwrap();
    let img = make(dir.path(), "seed.img", SeedFormat::Vfat, &files(false));

    assert_eq!(std::fs::metadata(&img).unwrap().len(), 2 * MIB);
    let h = head(&img);
    // 2 MiB is FAT12: label at 43, 11 bytes; fixed volume id before it.
    assert_eq!(&h[54..59], b"FAT12");
    assert_eq!(&h[43..54], b"CIDATA     ");
    assert_eq!(&h[39..43], &0xc1da_7a00_u32.to_le_bytes());
    let (fs, label) = read_label(&h).unwrap();
    assert_eq!(fs, FsType::Vfat);
    assert!(is_cidata(&label), "{label}");

    assert_eq!(read_vfat_file(&img, "user-data"), USER);
    assert_eq!(read_vfat_file(&img, "meta-data"), META);
    let listing = run(Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-b", "-i"])
        .arg(&img)
        .arg("::"));
    let listing = String::from_utf8(listing).unwrap();
    assert!(!listing.contains("network-config"), "{listing}");
    assert_eq!(names_in(dir.path()), ["seed.img"]);
}

#[test]
fn vfat_grows_for_large_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut user = b"#cloud-config\n".to_vec();
    // Comment lines: valid YAML, just big.
    while user.len() < 1000 * 1024 {
        user.extend_from_slice(b"# padding padding padding padding padding\n");
    }
    let f = SeedFiles {
        user_data: user.clone(),
        meta_data: META.to_vec(),
        network_config: Some(user.clone()),
        vendor_data: Some(b"#cloud-config\nk3s: {role: agent}\n".to_vec()),
    };
    let img = make(dir.path(), "big.img", SeedFormat::Vfat, &f);
    assert_eq!(
        std::fs::metadata(&img).unwrap().len(),
        vfat_image_size(f.total_len())
    );
    assert_eq!(read_vfat_file(&img, "network-config"), user);
    assert_eq!(
        read_vfat_file(&img, "vendor-data"),
        b"#cloud-config\nk3s: {role: agent}\n"
    );
}

#[test]
fn vendor_data_may_be_empty_or_what_user_data_may_be() {
    validate_vendor_data("v", b"").unwrap();
    validate_vendor_data("v", b"\n").unwrap();
    validate_vendor_data("v", b"#cloud-config\nk3s: {}\n").unwrap();
    assert!(validate_vendor_data("v", b"k3s: {}\n").is_err());
}

#[test]
fn same_inputs_give_identical_images() {
    let dir = tempfile::tempdir().unwrap();
    let a_iso = make(dir.path(), "a.iso", SeedFormat::Iso, &files(true));
    let a_img = make(dir.path(), "a.img", SeedFormat::Vfat, &files(true));
    // Past FAT's 2-second clock: a leaked current time would show.
    std::thread::sleep(Duration::from_millis(2100));
    let b_iso = make(dir.path(), "b.iso", SeedFormat::Iso, &files(true));
    let b_img = make(dir.path(), "b.img", SeedFormat::Vfat, &files(true));
    assert!(std::fs::read(&a_iso).unwrap() == std::fs::read(&b_iso).unwrap());
    assert!(std::fs::read(&a_img).unwrap() == std::fs::read(&b_img).unwrap());
}

#[test]
fn failure_leaves_no_output_and_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seed.iso");
    std::fs::write(&out, b"previous").unwrap();
    let cancel = AtomicBool::new(true); // interrupted before the tool finishes
    let opts = SeedOptions {
        format: SeedFormat::Iso,
        source_date_epoch: EPOCH,
        cancel: &cancel,
    };
    let e = write_seed(&out, &files(false), &opts).unwrap_err();
    assert!(matches!(e, SeedError::Command(_)), "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), b"previous");
    assert_eq!(names_in(dir.path()), ["seed.iso"]);

    let new = dir.path().join("new.img");
    let opts = SeedOptions {
        format: SeedFormat::Vfat,
        ..opts
    };
    assert!(write_seed(&new, &files(false), &opts).is_err());
    assert!(!new.exists());
    assert_eq!(names_in(dir.path()), ["seed.iso"]);
}

#[test]
fn output_in_a_missing_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nope").join("seed.iso");
    let cancel = AtomicBool::new(false);
    let opts = SeedOptions {
        format: SeedFormat::Iso,
        source_date_epoch: EPOCH,
        cancel: &cancel,
    };
    let e = write_seed(&out, &files(false), &opts).unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
}
