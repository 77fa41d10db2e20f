//! `fleetmap-base-image`: builds the fleetmap base image into the local Docker engine
//! (`ensure`) or reports on it (`status`). Parses arguments, sets up logging, and maps errors
//! to exit codes in one place.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleetmap_base_image::ensure::DEFAULT_WORK_DIR;
use fleetmap_base_image::recipe::{
    DEFAULT_MIRROR, LABEL_CLOUDPICKLE_VERSION, LABEL_PYTHON_VERSION, LABEL_RECIPE_HASH,
};
use fleetmap_base_image::{ensure, status, Engine, EnsureOptions, Error, ImageRef, Recipe};
use tracing_subscriber::EnvFilter;

/// Exit status when the image is missing or from another recipe (`status` only).
const EXIT_NOT_CURRENT: u8 = 5;

#[derive(Debug, Parser)]
#[command(
    name = "fleetmap-base-image",
    version,
    about = "Build or inspect the fleetmap base image in the local Docker engine"
)]
struct Cli {
    /// Log as JSON lines instead of text (level from RUST_LOG, default info).
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build and import the base image unless the tag already holds this recipe's image.
    Ensure {
        /// Where the root filesystem, the package cache and the build log are kept.
        #[arg(long, env = "FLEETMAP_BASE_WORK_DIR", default_value = DEFAULT_WORK_DIR)]
        work_dir: PathBuf,
        /// A complete CA bundle pip trusts while installing packages (for networks that
        /// intercept TLS); it does not stay in the image.
        #[arg(long, env = "FLEETMAP_BASE_CA_BUNDLE")]
        ca_bundle: Option<PathBuf>,
        /// The image reference (default: fleetmap/base:<recipe version>).
        #[arg(long)]
        tag: Option<String>,
        /// The Debian mirror debootstrap downloads from.
        #[arg(long, env = "FLEETMAP_DEBIAN_MIRROR", default_value = DEFAULT_MIRROR)]
        mirror: String,
    },
    /// Say whether the tag holds this recipe's image; exit 5 when it does not.
    Status {
        /// The image reference (default: fleetmap/base:<recipe version>).
        #[arg(long)]
        tag: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(exit_code(&err))
        }
    }
}

/// Exit codes: 1 the build failed, 2 bad usage, 3 something the host lacks, 4 no Docker,
/// 5 (`status`) the image is missing or stale.
fn exit_code(err: &Error) -> u8 {
    match err {
        Error::BadReference { .. } | Error::CaBundle { .. } => 2,
        Error::NotRoot | Error::ToolMissing { .. } => 3,
        Error::DockerUnreachable { .. } => 4,
        _ => 1,
    }
}

fn init_tracing(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(command: Command) -> Result<u8, Error> {
    match command {
        Command::Ensure {
            work_dir,
            ca_bundle,
            tag,
            mirror,
        } => {
            let options = EnsureOptions {
                ca_bundle,
                tag,
                mirror,
                ..EnsureOptions::new(work_dir)
            };
            options.image()?;
            let engine = Engine::connect().await?;
            let report = ensure(&engine, &options).await?;
            let what = if report.imported {
                format!("imported in {:.0?}", report.elapsed)
            } else {
                "already present".to_owned()
            };
            println!("{} {} ({what})", report.image, report.state.id);
            Ok(0)
        }
        Command::Status { tag } => {
            let recipe = Recipe::standard();
            let image = ImageRef::parse(&tag.unwrap_or_else(|| recipe.default_tag()))?;
            let engine = Engine::connect().await?;
            let report = status(&engine, &image, &recipe).await?;
            println!("image: {}", report.image);
            match &report.state {
                None => println!("present: no"),
                Some(state) => {
                    let label = |key: &str| state.labels.get(key).map_or("-", String::as_str);
                    println!("present: yes");
                    println!("id: {}", state.id);
                    println!("recipe-hash: {}", label(LABEL_RECIPE_HASH));
                    println!("python: {}", label(LABEL_PYTHON_VERSION));
                    println!("cloudpickle: {}", label(LABEL_CLOUDPICKLE_VERSION));
                    if let Some(size) = state.size {
                        println!("size-mb: {}", size / (1024 * 1024));
                    }
                }
            }
            println!("expected-hash: {}", report.expected_hash);
            println!(
                "current: {}",
                if report.is_current() { "yes" } else { "no" }
            );
            Ok(if report.is_current() {
                0
            } else {
                EXIT_NOT_CURRENT
            })
        }
    }
}
