//! PostgreSQL from Debian's packages, run as the harness's own cluster in its own directory on a
//! free loopback port (never the system service). As root, the server runs as the `postgres`
//! user, since PostgreSQL refuses to run as root.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::process::{Lifetime, Proc, wait_until};
use crate::{Error, free_port, tools};

/// How to reach a running server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PostgresInfo {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// `postgres://user@host:port/postgres`
    pub url: String,
    /// The address pods reach the server at (the stack's server only): the Kubernetes node's.
    #[serde(default)]
    pub node_host: Option<String>,
}

impl PostgresInfo {
    /// The URL of database `name` on this server.
    pub fn database_url(&self, name: &str) -> String {
        format!(
            "postgres://{}@{}:{}/{name}",
            self.user, self.host, self.port
        )
    }

    /// The URL of database `name` as a pod on the local node reaches it.
    pub fn database_url_for_pods(&self, name: &str) -> Option<String> {
        let host = self.node_host.as_deref()?;
        Some(format!(
            "postgres://{}@{host}:{}/{name}",
            self.user, self.port
        ))
    }

    /// Connects to database `name` (driving the connection on the current tokio runtime).
    pub async fn connect(&self, name: &str) -> Result<tokio_postgres::Client, Error> {
        let (client, connection) =
            tokio_postgres::connect(&self.database_url(name), tokio_postgres::NoTls)
                .await
                .map_err(|e| Error::Postgres(format!("connecting to {name}: {e}")))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Creates a fresh database for one test and returns its name.
    pub async fn fresh_database(&self, prefix: &str) -> Result<String, Error> {
        let name = crate::unique_name(prefix).replace('-', "_");
        let admin = self.connect("postgres").await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(|e| Error::Postgres(format!("creating database {name}: {e}")))?;
        Ok(name)
    }
}

/// A PostgreSQL server owned by this value (or detached).
#[derive(Debug)]
pub struct Postgres {
    pub info: PostgresInfo,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    bindir: PathBuf,
    run_as: Option<(u32, u32)>,
    proc_: Option<Proc>,
    lifetime: Lifetime,
}

const READY_TIMEOUT: Duration = Duration::from_secs(60);

impl Postgres {
    pub fn start(dir: &Path, lifetime: Lifetime) -> Result<Self, Error> {
        Self::start_with(dir, lifetime, false)
    }

    /// As [`Postgres::start`]; with `for_pods`, the server also listens on the Kubernetes node's
    /// address and lets the pod network in (trust, like loopback: a test cluster).
    pub fn start_with(dir: &Path, lifetime: Lifetime, for_pods: bool) -> Result<Self, Error> {
        let bindir = tools::postgres_bindir()?;
        let run_as = if unsafe_is_root() {
            Some(postgres_user()?)
        } else {
            None
        };
        let data = dir.join("data");
        let socket_dir = dir.join("socket");
        for d in [dir, &socket_dir] {
            std::fs::create_dir_all(d).map_err(|e| Error::io("creating the postgres dir", e))?;
        }
        if let Some((uid, gid)) = run_as {
            // The server user must reach its directories through ours.
            for d in [dir, &socket_dir] {
                chown(d, uid, gid)?;
            }
            for ancestor in dir.ancestors().skip(1).take(3) {
                allow_traverse(ancestor);
            }
        }

        let log = dir.join("postgres.log");
        let mut initdb = Command::new(bindir.join("initdb"));
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        if let Some((uid, gid)) = run_as {
            use std::os::unix::process::CommandExt;
            initdb.uid(uid).gid(gid);
        }
        let out = initdb
            .output()
            .map_err(|e| Error::io("running PostgreSQL's initdb", e))?;
        if !out.status.success() {
            return Err(Error::Component {
                component: "postgres initdb".into(),
                reason: format!("exited with {}", out.status),
                log_tail: String::from_utf8_lossy(&[&out.stdout[..], &out.stderr[..]].concat())
                    .into_owned(),
            });
        }

        let node_host = for_pods.then(|| crate::node::NODE_IP.to_owned());
        if for_pods {
            use std::io::Write;
            let hba = data.join("pg_hba.conf");
            std::fs::OpenOptions::new()
                .append(true)
                .open(&hba)
                .and_then(|mut f| writeln!(f, "host all all {} trust", crate::node::POD_SUBNET))
                .map_err(|e| Error::io("letting the pod network into pg_hba.conf", e))?;
        }
        let port = free_port()?;
        let mut pg = Self {
            info: PostgresInfo {
                host: "127.0.0.1".into(),
                port,
                user: "postgres".into(),
                url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
                node_host,
            },
            data,
            socket_dir,
            log,
            bindir,
            run_as,
            proc_: None,
            lifetime,
        };
        pg.start_server()?;
        pg.wait_ready()?;
        Ok(pg)
    }

    fn start_server(&mut self) -> Result<(), Error> {
        let mut cmd = Command::new(self.bindir.join("postgres"));
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-p")
            .arg(self.info.port.to_string())
            .arg("-k")
            .arg(&self.socket_dir)
            .arg("-c")
            .arg(match &self.info.node_host {
                Some(node) => format!("listen_addresses=127.0.0.1,{node}"),
                None => "listen_addresses=127.0.0.1".to_owned(),
            })
            .args([
                "-c",
                "max_connections=200",
                // A test cluster: durability across an OS crash is not what is tested.
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
            ]);
        self.proc_ = Some(Proc::spawn(
            "postgres",
            cmd,
            &self.log,
            self.lifetime,
            self.run_as,
        )?);
        Ok(())
    }

    /// Waits until `SELECT 1` answers over TCP.
    pub fn wait_ready(&mut self) -> Result<(), Error> {
        let psql = self.bindir.join("psql");
        let psql = if psql.is_file() {
            psql
        } else {
            PathBuf::from("psql")
        };
        let url = self.info.url.clone();
        let Some(p) = self.proc_.as_mut() else {
            return Ok(());
        };
        wait_until(p, "SELECT 1", READY_TIMEOUT, || {
            let out = Command::new(&psql)
                .args(["-XAtq", "-c", "SELECT 1", &url])
                .output()
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
            }
        })
    }

    /// Stops the server (fast shutdown), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc_.take() {
            p.stop(Duration::from_secs(20));
        }
    }

    /// Starts the stopped server again and waits for it.
    pub fn restart(&mut self) -> Result<(), Error> {
        if self.proc_.is_none() {
            self.start_server()?;
        }
        self.wait_ready()
    }

    /// Gives up ownership of the process (for `stack up`), returning its pid.
    pub fn detach(mut self) -> Vec<u32> {
        self.proc_.take().map(Proc::detach).into_iter().collect()
    }
}

fn unsafe_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn postgres_user() -> Result<(u32, u32), Error> {
    let name = CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam returns a pointer into static storage or null; read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(Error::Missing {
            tool: "PostgreSQL".into(),
            detail: "running as root needs the `postgres` user, which the postgresql package \
                     creates; run `make tools`"
                .into(),
        });
    }
    // SAFETY: checked non-null above.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok((uid, gid))
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), Error> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| Error::io(format!("chown {}", path.display()), e))
}

/// Adds o+x to a directory so the server user can pass through it.
fn allow_traverse(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(dir) {
        let mut perms = meta.permissions();
        if perms.mode() & 0o001 == 0 {
            perms.set_mode(perms.mode() | 0o001);
            let _ = std::fs::set_permissions(dir, perms);
        }
    }
}
