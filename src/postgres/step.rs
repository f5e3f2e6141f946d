//! What every start-up step shares: the context it works in, the error it can end with (and
//! its documented exit code), and how it runs a PostgreSQL tool as a child of the supervisor.
//! Lifecycle steps (bootstrap, converge, native/*) depend on this module, never the reverse.

use std::io;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::config::{secret_environment, Config};
use crate::pgdata::datadir::DataDirError;
use crate::pid1::supervise::{Kind, Supervisor};
use crate::postgres::server::{Bin, Sockets};
use crate::render;

/// Documented exit codes (docs/variables.md, "Exit codes"). postgres's own status passes through.
pub mod exit {
    /// Start-up failed after validation (bootstrap, permissions, a refused PGDATA...).
    pub const STARTUP_FAILED: i32 = 1;
    /// The environment is invalid (nothing was touched), or the primary refused our credentials.
    pub const CONFIG: i32 = 78;
    /// A replica's primary did not answer within PRIMARY_WAIT_TIMEOUT.
    pub const PRIMARY_UNREACHABLE: i32 = 69;
    /// Start refused to avoid a second primary or losing acknowledged commits.
    pub const FENCED: i32 = 75;
    /// postgres did not finish its fast shutdown within SHUTDOWN_TIMEOUT and was stopped
    /// immediately: nothing committed is lost, the next start runs crash recovery.
    pub const SHUTDOWN_ESCALATED: i32 = 76;
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("stopped by {0} before postgres started")]
    Stopped(Signal),
    #[error("{what} failed with exit code {code}; see its messages above")]
    Failed { what: String, code: i32 },
    #[error("cannot run {what}: {source}")]
    Spawn { what: String, source: io::Error },
    #[error("init script {script:?} needs `{tool}` to decompress it, and it is not installed")]
    NoDecompressor { script: std::path::PathBuf, tool: &'static str },
    #[error(
        "init script {script:?} stopped the temporary server and did not start it again; a script may \
         restart it (`pg_ctl -D \"$PGDATA\" -w restart`) but must leave it running"
    )]
    TempServerStopped { script: std::path::PathBuf },
    #[error(
        "init script {script:?} started a server with the real configuration (`pg_ctl start`: TCP listener, the \
         real pg_hba.conf) in place of the temporary one; restart it with `pg_ctl -D \"$PGDATA\" -w restart` or \
         docker_temp_server_stop/docker_temp_server_start, which keep its settings"
    )]
    TempServerReplaced { script: std::path::PathBuf },
    #[error("cannot list the init scripts in {dir:?}: {source}")]
    Scripts { dir: std::path::PathBuf, source: io::Error },
    #[error(
        "the primary {host}:{port} was not reachable within {waited} s (last: {reason}); check PRIMARY_HOST \
         and PRIMARY_PORT, or raise PRIMARY_WAIT_TIMEOUT"
    )]
    PrimaryUnreachable { host: String, port: u16, waited: u64, reason: String },
    #[error(
        "this replica can no longer catch up: the primary invalidated its replication slot {slot:?} (it fell \
         further behind than max_slot_wal_keep_size allows). Set REPLICA_RECLONE=true to clone it again \
         automatically, or empty PGDATA"
    )]
    SlotLost { slot: String },
    #[error("the primary refused this replica; check {variable}: {reason}")]
    PrimaryRejected { variable: &'static str, reason: String },
    #[error(
        "the primary {host}:{port} belongs to another cluster (its system identifier is {theirs}, this \
         replica's is {ours}): it was re-initialised, or PRIMARY_HOST points at another cluster. Nothing was \
         changed on either side. Point PRIMARY_HOST at this cluster's primary, or empty this replica's PGDATA \
         to clone the new one"
    )]
    ForeignPrimary { host: String, port: u16, ours: u64, theirs: u64 },
    #[error(
        "this node was promoted at run time (`pg-entrypoint promote`) but is configured as a replica: \
         refusing to rewind away its writes. Set REPLICATION_ROLE=primary to keep it the primary, or remove \
         pg-entrypoint.promoted from PGDATA to let it rejoin {host} with pg_rewind"
    )]
    PromotedButReplica { host: String },
    #[error(
        "the clone failed: no space left on the device of PGDATA {pgdata:?}. It needs about the primary's size \
         plus the WAL written meanwhile; free space or enlarge the volume. Retried with a growing delay"
    )]
    NoSpace { pgdata: std::path::PathBuf },
    #[error(
        "the primary {host}:{port} is not trusted: {reason}. Check REPLICATION_SSLMODE, TLS_CA_FILE (the CA that \
         signed the primary's certificate) and that the certificate names PRIMARY_HOST"
    )]
    PrimaryUntrusted { host: String, port: u16, reason: String },
    #[error("refusing to start as a writable primary: {0}")]
    Fenced(String),
    /// A switchover's record in PGDATA that cannot be read: never guessed at.
    #[error("refusing to start: {0}")]
    RoleRecord(String),
    #[error("REPLICATION_ROLE=auto: refusing to start: {0}")]
    AutoRefused(String),
    #[error("major-version upgrade: {0}")]
    Upgrade(String),
    #[error("{0}")]
    UpgradeRefused(String),
    /// A restore from the repository failed; `variables`: the cause is in them (exit 78).
    #[error("restore from the repository failed: {reason}. PGDATA holds nothing of it; the next start tries again")]
    Restore { reason: String, variables: bool },
    #[error("{0}")]
    RestoreRefused(String),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
}

impl StepError {
    /// The documented exit code (docs/variables.md, "Exit codes").
    pub fn exit_code(&self) -> i32 {
        match self {
            StepError::Stopped(sig) => 128 + *sig as i32,
            StepError::PrimaryRejected { .. } | StepError::PrimaryUntrusted { .. } | StepError::UpgradeRefused(_) => {
                exit::CONFIG
            }
            StepError::PrimaryUnreachable { .. } => exit::PRIMARY_UNREACHABLE,
            StepError::Restore { variables: true, .. } | StepError::RestoreRefused(_) => exit::CONFIG,
            StepError::Fenced(_) | StepError::AutoRefused(_) | StepError::RoleRecord(_) => exit::FENCED,
            _ => exit::STARTUP_FAILED,
        }
    }
}

/// What every step needs: the configuration, the binaries, where the server listens.
pub struct Context<'a> {
    pub config: &'a Config,
    pub bin: &'a Bin,
    /// The major version of `bin`'s postgres.
    pub server_major: u32,
    pub sockets: &'a Sockets,
    pub postgres_args: &'a [String],
    pub settings: &'a render::Settings,
}

/// A PostgreSQL tool (or postgres itself) with the secrets removed from its environment.
pub fn tool(bin: &Bin, name: &str) -> Command {
    let mut c = Command::new(bin.tool(name));
    for var in secret_environment() {
        c.env_remove(var);
    }
    c
}

/// initdb of a new cluster in `dir`, as the official image makes one: POSTGRES_USER as the
/// superuser, local socket trust (the managed pg_hba block decides TCP), UTF8 where no locale
/// is set (the C locale would give SQL_ASCII). Callers add their options, then
/// POSTGRES_INITDB_ARGS last, so that the user's win.
pub fn initdb(ctx: &Context, dir: &Path) -> Command {
    let mut cmd = tool(ctx.bin, "initdb");
    cmd.arg("-D").arg(dir).arg("--username").arg(&ctx.config.superuser);
    cmd.args(crate::postgres::server::INITDB_AUTH);
    if ["LC_ALL", "LC_CTYPE", "LANG"].iter().all(|v| std::env::var_os(v).is_none()) {
        cmd.arg("--encoding=UTF8");
    }
    cmd.stdout(Stdio::null());
    cmd
}

/// Runs a child under the supervisor and checks that it succeeded.
pub fn run(sup: &mut Supervisor, what: &str, command: &mut Command, kind: Kind) -> Result<(), StepError> {
    let child = sup.spawn(command).map_err(|source| StepError::Spawn { what: what.into(), source })?;
    finish(sup, what, Pid::from_raw(child.id() as i32), kind)
}

/// What a captured child said.
pub struct Captured {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a child and returns its exit code and what it wrote to stdout and stderr (for tools
/// whose answers and failures we interpret). With `echo`, stderr also goes to ours as it
/// comes (progress of a long tool). Only a stop request is an error here.
pub fn run_captured(
    sup: &mut Supervisor,
    what: &str,
    command: &mut Command,
    echo: bool,
) -> Result<Captured, StepError> {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = sup.spawn(command).map_err(|source| StepError::Spawn { what: what.into(), source })?;
    // Read on threads, so the child never blocks on a full pipe while we handle signals.
    let stdout = read_all(child.stdout.take(), false);
    let stderr = read_all(child.stderr.take(), echo);
    let code = sup
        .wait(Pid::from_raw(child.id() as i32), Kind::Tool, what)
        .map_err(|source| StepError::Spawn { what: what.into(), source })?;
    let (stdout, stderr) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
    match sup.stop_requested() {
        Some(sig) => Err(StepError::Stopped(sig)),
        None => Ok(Captured { code, stdout, stderr }),
    }
}

/// A thread that reads `pipe` to its end (copying it to our stderr with `echo`).
pub fn read_all(pipe: Option<impl io::Read + Send + 'static>, echo: bool) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if echo {
                    let _ = io::Write::write_all(&mut io::stderr(), &buf[..n]);
                }
                bytes.extend_from_slice(&buf[..n]);
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Waits for a child started with [`Supervisor::spawn`] and checks that it succeeded.
pub fn finish(sup: &mut Supervisor, what: &str, pid: Pid, kind: Kind) -> Result<(), StepError> {
    let code = sup.wait(pid, kind, what).map_err(|source| StepError::Spawn { what: what.into(), source })?;
    if let Some(sig) = sup.stop_requested() {
        return Err(StepError::Stopped(sig));
    }
    if code != 0 {
        return Err(StepError::Failed { what: what.into(), code });
    }
    Ok(())
}

/// Sleeps for `duration` while staying PID 1 (orphans reaped); a stop request ends it.
pub fn pause(sup: &mut Supervisor, duration: std::time::Duration, what: &str) -> Result<(), StepError> {
    match sup.pause(duration).map_err(|source| StepError::Spawn { what: what.into(), source })? {
        Some(sig) => Err(StepError::Stopped(sig)),
        None => Ok(()),
    }
}
