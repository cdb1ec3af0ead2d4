//! Command-line interface: one struct per subcommand, each with a `run()`.

mod inspect;
mod seed;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::build::{self, BuildOptions};
use crate::plan::{self, OutputKind, Overrides};
use crate::source::Cache;

pub use inspect::InspectArgs;
pub use seed::SeedArgs;

/// Build ready-to-boot K3s node images — Proxmox/LXC templates and qcow2
/// disks — from a declarative node profile and an OS recipe.
#[derive(Debug, Parser)]
#[command(name = "imgbuild", version, propagate_version = true)]
pub struct Cli {
    /// More output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the images a profile describes.
    Build(BuildArgs),
    /// Check profiles and the recipes they name; print every problem with file:line:column.
    Validate(ValidateArgs),
    /// Show an artifact's manifest and what was baked into it, and verify its digest.
    Inspect(InspectArgs),
    /// Write a NoCloud `cidata` volume (ISO or FAT) for libvirt/qemu, like cloud-localds.
    Seed(SeedArgs),
}

impl Cli {
    pub fn run(self) -> Result<()> {
        match self.command {
            Command::Build(a) => a.run(),
            Command::Validate(a) => a.run(),
            Command::Inspect(a) => a.run(),
            Command::Seed(a) => a.run(),
        }
    }
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Node profile, e.g. profiles/worker.yaml.
    pub profile: PathBuf,
    /// Directory for artifacts, manifests and host configuration.
    #[arg(short, long, default_value = "out")]
    pub out: PathBuf,
    /// Use this recipe file instead of the one the profile names.
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Build only these outputs (repeatable); default: the profile's `outputs`.
    #[arg(long = "output", value_enum)]
    pub outputs: Vec<OutputArg>,
    /// Use only the download cache: no network, no bootstrap tool runs.
    #[arg(long)]
    pub offline: bool,
    /// Download cache [default: $XDG_CACHE_HOME/imgbuild or ~/.cache/imgbuild].
    #[arg(long, env = "IMGBUILD_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// firstboot-agent binary to bake (statically linked) [default: found next to imgbuild or in target/].
    #[arg(long, env = "IMGBUILD_AGENT")]
    pub agent: Option<PathBuf>,
    /// Timestamp for added files; the same inputs and value give byte-identical artifacts.
    #[arg(long, env = "SOURCE_DATE_EPOCH")]
    pub source_date_epoch: Option<u64>,
    /// zstd worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: u32,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OutputArg {
    Lxc,
    Qcow2,
}

impl From<OutputArg> for OutputKind {
    fn from(o: OutputArg) -> Self {
        match o {
            OutputArg::Lxc => OutputKind::Lxc,
            OutputArg::Qcow2 => OutputKind::Qcow2,
        }
    }
}

/// Ctrl-C sets a flag the pipeline checks; the build then stops (within a
/// second, at any zstd level), removes its temporary files and exits with an
/// error. A second Ctrl-C exits at once, after stopping the programs still
/// running (mmdebstrap, qemu-img …: SIGTERM, SIGKILL a second later),
/// unmounting and detaching an XFS root's mount and loop device, and
/// removing the temporary files registered in `output::leftovers` (exit skips
/// their destructors).
fn install_interrupt_handler() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    if let Err(e) = ctrlc::set_handler(move || {
        if f.swap(true, Ordering::SeqCst) {
            let stopped = crate::command::stop_running();
            // Before the files go: a mount inside the scratch directory.
            let released = crate::output::disk::mount::release_all();
            let removed = crate::output::leftovers::remove_registered();
            eprintln!(
                "imgbuild: interrupted again; stopped {stopped} running program(s), \
                 released {released} mount(s) and loop device(s), \
                 removed {removed} temporary file(s), exiting"
            );
            std::process::exit(130);
        }
        eprintln!("imgbuild: interrupted; cleaning up (press Ctrl-C again to exit at once)");
    }) {
        tracing::warn!("cannot install the Ctrl-C handler: {e}");
    }
    flag
}

impl BuildArgs {
    pub fn run(self) -> Result<()> {
        let cache = match &self.cache_dir {
            Some(d) => Cache::new(d.clone()),
            None => Cache::from_env()?,
        };
        let opts = BuildOptions {
            out_dir: self.out.clone(),
            cache,
            offline: self.offline,
            progress: std::io::stderr().is_terminal(),
            agent: self.agent.clone(),
            threads: self.threads,
            cancel: install_interrupt_handler(),
        };
        let overrides = Overrides {
            recipe: self.recipe.clone(),
            outputs: self.outputs.iter().map(|&o| o.into()).collect(),
            source_date_epoch: self.source_date_epoch,
        };
        let built = build::run_build(&self.profile, &overrides, &opts).map_err(|e| {
            // Plan errors name their file, line and key already.
            if e.is::<plan::PlanErrors>() {
                e
            } else {
                e.context(format!("building {}", self.profile.display()))
            }
        })?;
        for b in &built {
            println!("{}  {}", b.sha256, b.path.display());
            println!("  kind      {}", b.kind.as_str());
            println!("  size      {} bytes", b.size);
            println!("  manifest  {}", b.manifest_path.display());
            for f in &b.extra_files {
                println!("  host conf {}", f.display());
            }
        }
        Ok(())
    }
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Profiles to check (each with the recipe it names).
    #[arg(required = true)]
    pub profiles: Vec<PathBuf>,
    /// Check against this recipe instead of the one each profile names.
    #[arg(long)]
    pub recipe: Option<PathBuf>,
}

impl ValidateArgs {
    pub fn run(self) -> Result<()> {
        let mut failed = 0usize;
        for p in &self.profiles {
            let overrides = Overrides {
                recipe: self.recipe.clone(),
                ..Overrides::default()
            };
            match plan::resolve(p, &overrides) {
                Ok(plan) => {
                    for w in &plan.warnings {
                        eprintln!("warning: {w}");
                    }
                    let warned = match plan.warnings.len() {
                        0 => String::new(),
                        1 => ", 1 warning".to_owned(),
                        n => format!(", {n} warnings"),
                    };
                    println!(
                        "ok  {} (recipe {}: {} {}, K3s {} {}{warned})",
                        p.display(),
                        plan.recipe_path.display(),
                        plan.recipe.distro.as_str(),
                        plan.recipe.release,
                        plan.profile.k3s.version,
                        plan.profile.k3s.role,
                    )
                }
                Err(errs) => {
                    failed += 1;
                    // One line per problem, each with its own cause.
                    eprintln!("{errs}");
                }
            }
        }
        if failed > 0 {
            anyhow::bail!("{failed} of {} profile(s) invalid", self.profiles.len());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
