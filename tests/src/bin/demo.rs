//! `demo`: the README's first command (`make demo`) and its clean-up (`make demo-down`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use testenv::Lifetime;
use testenv::demo::{self, Options};

#[derive(Parser)]
#[command(about = "Run the PubSubKafka demo on a local stack of real components")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start everything, send orders, print a summary; leaves it running.
    Up {
        #[arg(long, default_value = ".stack")]
        dir: PathBuf,
        #[arg(long, default_value_t = 500)]
        orders: usize,
    },
    /// Stop what `up` started and remove its data.
    Down {
        #[arg(long, default_value = ".stack")]
        dir: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Up { dir, orders } => {
            let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
            let dir = std::path::absolute(&dir).unwrap_or(dir);
            demo::down(&dir);
            let options = Options {
                dir,
                repo,
                orders,
                users: 50,
                bad_requests: 30,
                poison: 12,
                progress: true,
            };
            match demo::run(&options, Lifetime::Detached).await {
                Ok((summary, _)) => {
                    println!("{}", demo::render(&summary));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!(
                        "error: the demo failed: {e}\n(logs in {}/demo; `make demo-down` cleans up)",
                        options.dir.display()
                    );
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Down { dir } => {
            demo::down(&dir);
            eprintln!("stopped the demo in {}", dir.display());
            ExitCode::SUCCESS
        }
    }
}
