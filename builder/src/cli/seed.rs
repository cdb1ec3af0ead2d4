//! `imgbuild seed`: write a NoCloud `cidata` volume for libvirt/qemu.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::seed::{self, SeedFiles, SeedFormat, SeedOptions, DEFAULT_SOURCE_DATE_EPOCH};

#[derive(Debug, Args)]
pub struct SeedArgs {
    /// Image to write, e.g. seed.iso; replaced atomically if it exists.
    pub output: PathBuf,
    /// cloud-init user-data: `#cloud-config` YAML, a `#!` script or MIME multipart.
    #[arg(long, value_name = "FILE")]
    pub user_data: PathBuf,
    /// meta-data YAML with `instance-id` [default: generated from --instance-id and --hostname].
    #[arg(long, value_name = "FILE", conflicts_with_all = ["instance_id", "hostname"])]
    pub meta_data: Option<PathBuf>,
    /// instance-id for the generated meta-data [default: iid- and 12 hex digits of the user-data's sha256].
    #[arg(long, value_name = "ID")]
    pub instance_id: Option<String>,
    /// local-hostname for the generated meta-data.
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Network configuration (cloud-init v1 or v2 YAML).
    #[arg(long, value_name = "FILE")]
    pub network_config: Option<PathBuf>,
    /// vendor-data, merged under user-data by cloud-init and firstboot-agent:
    /// `#cloud-config` YAML (e.g. the `k3s:` settings) as Proxmox's
    /// `cicustom vendor=…` provides it.
    #[arg(long, value_name = "FILE")]
    pub vendor_data: Option<PathBuf>,
    /// Volume format: ISO 9660 (label cidata) or FAT (label CIDATA).
    #[arg(long, value_enum, default_value = "iso")]
    pub format: SeedFormat,
    /// Timestamp of the volume and its files [default: 315532800, 1980-01-01].
    #[arg(long, env = "SOURCE_DATE_EPOCH")]
    pub source_date_epoch: Option<u64>,
}

impl SeedArgs {
    pub fn run(self) -> Result<()> {
        let files = self.load()?;
        let cancel = super::install_interrupt_handler();
        let opts = SeedOptions {
            format: self.format,
            source_date_epoch: self.source_date_epoch.unwrap_or(DEFAULT_SOURCE_DATE_EPOCH),
            cancel: &cancel,
        };
        seed::write_seed(&self.output, &files, &opts)
            .with_context(|| format!("writing the seed {}", self.output.display()))?;
        println!(
            "{}  ({}, label {})",
            self.output.display(),
            self.format.as_str(),
            match self.format {
                SeedFormat::Iso => seed::ISO_VOLID,
                SeedFormat::Vfat => seed::VFAT_LABEL,
            }
        );
        for (name, bytes) in files.entries() {
            println!("  {name:<15} {} bytes", bytes.len());
        }
        Ok(())
    }

    /// Read and check every input; nothing is written before this succeeds.
    fn load(&self) -> Result<SeedFiles> {
        let shown = |p: &PathBuf| p.display().to_string();
        let user_data = seed::read_input(&self.user_data)?;
        seed::validate_user_data(&shown(&self.user_data), &user_data)?;
        let meta_data = match &self.meta_data {
            Some(path) => {
                let bytes = seed::read_input(path)?;
                seed::validate_meta_data(&shown(path), &bytes)?;
                bytes
            }
            None => seed::generate_meta_data(
                self.instance_id.as_deref(),
                self.hostname.as_deref(),
                &user_data,
            )?
            .into_bytes(),
        };
        let network_config = match &self.network_config {
            Some(path) => {
                let bytes = seed::read_input(path)?;
                seed::validate_network_config(&shown(path), &bytes)?;
                Some(bytes)
            }
            None => None,
        };
        let vendor_data = match &self.vendor_data {
            Some(path) => {
                let bytes = seed::read_input(path)?;
                seed::validate_vendor_data(&shown(path), &bytes)?;
                Some(bytes)
            }
            None => None,
        };
        Ok(SeedFiles {
            user_data,
            meta_data,
            network_config,
            vendor_data,
        })
    }
}
