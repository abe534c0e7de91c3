//! Child processes of the local stack: started with their output in a log file, awaited on a real
//! readiness probe with a deadline, and stopped for sure.
//!
//! Two lifetimes exist. A process owned by a test (or a test binary) is bound to the thread that
//! started it with `PR_SET_PDEATHSIG`, so a crashed or killed test run never leaves a broker
//! behind. A detached process (`stack up` for a person) lives in its own session until
//! `stack down` signals its pid.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use crate::Error;

/// How a started process relates to the process that started it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Killed when the starting thread exits (tests).
    Owned,
    /// Survives its starter; stopped by pid (`stack down`).
    Detached,
}

/// A running component process.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Option<Child>,
    pid: u32,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        log: &Path,
        lifetime: Lifetime,
        run_as: Option<(u32, u32)>,
    ) -> Result<Self, Error> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| Error::io(format!("opening {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io("duplicating a log handle", e))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        if let Some((uid, gid)) = run_as {
            cmd.uid(uid).gid(gid);
        }
        match lifetime {
            Lifetime::Owned => {
                // SAFETY: prctl and getppid are async-signal-safe; nothing is allocated. This runs
                // after the uid change, so the parent-death signal is not cleared by it.
                unsafe {
                    cmd.pre_exec(|| {
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        if libc::getppid() == 1 {
                            // The starter is already gone.
                            libc::_exit(1);
                        }
                        Ok(())
                    });
                }
            }
            Lifetime::Detached => {
                // SAFETY: setsid is async-signal-safe.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::setsid();
                        Ok(())
                    });
                }
            }
        }
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = match lifetime {
            Lifetime::Owned => spawn_on_keeper(cmd),
            Lifetime::Detached => cmd.spawn(),
        }
        .map_err(|e| Error::io(format!("starting {name} ({program})"), e))?;
        Ok(Self {
            name: name.to_owned(),
            pid: child.id(),
            child: Some(child),
            log: log.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns an error naming the component and its log tail if it has exited.
    pub fn check_alive(&mut self) -> Result<(), Error> {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            return Err(Error::Component {
                component: self.name.clone(),
                reason: format!("exited with {status}"),
                log_tail: log_tail(&self.log, 40),
            });
        }
        Ok(())
    }

    /// An error about this component that carries its log tail.
    pub fn failure(&self, reason: impl Into<String>) -> Error {
        Error::Component {
            component: self.name.clone(),
            reason: reason.into(),
            log_tail: log_tail(&self.log, 40),
        }
    }

    /// Stops the process: SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        terminate_pid(self.pid, grace);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// SIGKILL at once, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Hands the process over to pid-based management: dropping it no longer stops it.
    pub fn detach(mut self) -> u32 {
        self.child = None;
        self.pid
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop(Duration::from_secs(5));
        }
    }
}

/// Spawns `cmd` from a thread that lives as long as the process. The parent-death signal
/// follows the spawning *thread*, so spawning from a test thread (or a `spawn_blocking` worker)
/// would kill the component when that thread ends, not when the test run does.
fn spawn_on_keeper(cmd: Command) -> std::io::Result<Child> {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static KEEPER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("stack-keeper".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // The sender lives in a static, so this loop never ends before the process.
            })
            .expect("spawning the stack keeper thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    keeper
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| std::io::Error::other("the stack keeper thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("the stack keeper thread is gone"))?
}

/// Sends SIGTERM to `pid`, waits up to `grace` for
/// it to exit, then SIGKILLs it.
pub fn terminate_pid(pid: u32, grace: Duration) {
    let pid = pid as libc::pid_t;
    // SAFETY: plain signal delivery; a stale pid yields ESRCH, which is ignored.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !pid_alive(pid as u32) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while pid_alive(pid as u32) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True while `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(16 * 1024);
    let mut buf = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut buf).is_err() {
        return format!("(unreadable log at {})", path.display());
    }
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    let mut tail = all[from..].join("\n");
    tail.push_str(&format!("\n(full log: {})", path.display()));
    tail
}

/// Polls `probe` until it succeeds, the process dies, or `timeout` passes.
pub fn wait_until<T>(
    proc_: &mut Proc,
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> Result<T, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        proc_.check_alive()?;
        let last = match probe() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(proc_.failure(format!(
                "not ready after {}s waiting for {what}: {last}",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `start` again (up to 3 times) when the component died because a port picked with
/// [`crate::free_port`] was taken meanwhile by another process (two stacks starting at once).
pub fn retry_port_clash<T>(mut start: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
    let mut tries = 0;
    loop {
        match start() {
            Err(Error::Component { log_tail, .. })
                if tries < 2 && log_tail.contains("address already in use") =>
            {
                tries += 1;
            }
            other => return other,
        }
    }
}
