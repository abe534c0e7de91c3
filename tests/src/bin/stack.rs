//! `stack`: starts and stops the local stack (real Kafka, kube-apiserver + etcd, PostgreSQL)
//! for a person (`make up` / `make down`) and for `make test`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use testenv::{Lifetime, Stack, StackInfo};

#[derive(Parser)]
#[command(about = "Start and stop PubSubKafka's local stack of real components")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start Kafka, the API server, PostgreSQL, Prometheus and Jaeger in DIR and print how to
    /// reach them.
    Up {
        #[arg(long, default_value = ".stack")]
        dir: PathBuf,
        /// Print only the shell exports (for `eval`).
        #[arg(long)]
        quiet: bool,
    },
    /// Stop the stack in DIR and remove its data.
    Down {
        #[arg(long, default_value = ".stack")]
        dir: PathBuf,
    },
    /// Print the shell exports of the stack in DIR.
    Env {
        #[arg(long, default_value = ".stack")]
        dir: PathBuf,
    },
    /// Import the images `make images` built into the running node in DIR (new pods use
    /// them; running pods keep theirs until they are replaced).
    Images {
        #[arg(long, default_value = ".stack")]
        dir: PathBuf,
    },
    /// Wait for process PID to exit, then undo the host changes of the node in DIR (started
    /// by test binaries that own a stack).
    #[command(hide = true)]
    Janitor {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        pid: u32,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), testenv::Error> {
    match cli.command {
        Cmd::Up { dir, quiet } => {
            let dir =
                std::path::absolute(&dir).map_err(|e| testenv::Error::io("resolving DIR", e))?;
            if let Ok(old) = StackInfo::read(&dir)
                && old.pids.iter().any(|p| testenv::process::pid_alive(*p))
            {
                eprintln!(
                    "a stack is already running in {}; `make down` stops it",
                    dir.display()
                );
                print!("{}", old.env_exports());
                return Ok(());
            }
            testenv::node::clean_host(&dir);
            let _ = std::fs::remove_dir_all(&dir);
            let started = std::time::Instant::now();
            let info = Stack::start(&dir, Lifetime::Detached)?.detach()?;
            if quiet {
                print!("{}", info.env_exports());
            } else {
                println!(
                    "Local stack up in {:.1}s ({}).\n\n\
                     Kubernetes       {} (node {} at {}: `kubectl get pods -A`)\n  \
                     export KUBECONFIG={}\n  kubectl: {}\n  component logs: {}\n\
                     Kafka            PLAINTEXT {}  SASL_SSL {} (SCRAM-SHA-512), for pods {}\n  \
                     CA file: {}\n  admin client properties (librdkafka, mode 0600): {}\n\
                     PostgreSQL       {}\n\
                     Prometheus       {}  (scrapes the targets in {})\n\
                     Jaeger           {}  (query API; OTLP/HTTP receiver {})\n\n\
                     All exports: source {}/stack.env\nStop it with `make down`.",
                    started.elapsed().as_secs_f64(),
                    dir.display(),
                    info.kube.server,
                    testenv::node::NODE_NAME,
                    testenv::node::NODE_IP,
                    info.kube.kubeconfig.display(),
                    info.kube.kubectl.display(),
                    info.node
                        .as_ref()
                        .map(|n| n.logs.display().to_string())
                        .unwrap_or_default(),
                    info.kafka.bootstrap,
                    info.kafka.sasl_bootstrap,
                    info.kafka.node_bootstrap.as_deref().unwrap_or("-"),
                    info.kafka.ca_file.display(),
                    info.kafka.admin_properties.display(),
                    info.postgres.url,
                    info.prometheus.url,
                    info.prometheus.targets_dir.display(),
                    info.jaeger.query_url,
                    info.jaeger.otlp_endpoint,
                    dir.display(),
                );
            }
            Ok(())
        }
        Cmd::Down { dir } => {
            match StackInfo::read(&dir) {
                Ok(info) => {
                    info.stop_detached();
                    eprintln!("stopped the stack in {}", dir.display());
                }
                Err(_) => eprintln!("no stack running in {}", dir.display()),
            }
            Ok(())
        }
        Cmd::Env { dir } => {
            print!("{}", StackInfo::read(&dir)?.env_exports());
            Ok(())
        }
        Cmd::Images { dir } => {
            let info = StackInfo::read(&dir)?;
            let node = info.node.as_ref().ok_or_else(|| testenv::Error::Missing {
                tool: "a Kubernetes node".into(),
                detail: format!("the stack in {} has none", dir.display()),
            })?;
            for name in ["controller", "worker"] {
                let archive = testenv::node::images_dir().join(format!("{name}.tar"));
                testenv::node::import_image(&node.containerd_socket, &archive)?;
                eprintln!("imported {}", testenv::node::product_image(name));
            }
            Ok(())
        }
        Cmd::Janitor { dir, pid } => {
            testenv::node::janitor(&dir, pid);
            Ok(())
        }
    }
}
