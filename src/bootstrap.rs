//! First boot of a standalone server or primary: initdb, bootstrap SQL in single-user mode,
//! `/docker-entrypoint-initdb.d` scripts, all in a staging directory that becomes PGDATA only
//! when everything succeeded. Nothing listens on TCP until then: single-user mode has no
//! listener at all, and the temporary server for init scripts listens on a private socket.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::config::Config;
use crate::converge;
use crate::datadir::{self, DataDirError, Staging};
use crate::render;
use crate::server::{Bin, Endpoint};
use crate::supervise::{Kind, Supervisor};
use crate::tempserver::TempServer;

/// Variables that hold secrets: never passed to postgres or the PostgreSQL tools.
pub const SECRET_VARS: [&str; 2] = ["POSTGRES_PASSWORD", "REPLICATION_PASSWORD"];

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("stopped by {0} before the bootstrap finished; it will be redone at the next start")]
    Stopped(Signal),
    #[error("{what} failed with exit code {code}; see its messages above")]
    Failed { what: String, code: i32 },
    #[error("cannot run {what}: {source}")]
    Spawn { what: String, source: io::Error },
    #[error("init script {script:?} needs `{tool}` to decompress it, and it is not installed")]
    NoDecompressor { script: PathBuf, tool: &'static str },
    #[error("cannot list the init scripts in {dir:?}: {source}")]
    Scripts { dir: PathBuf, source: io::Error },
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
        "this node was promoted at run time (`pg-entrypoint promote`) but is configured as a replica: \
         refusing to rewind away its writes. Set REPLICATION_ROLE=primary to keep it the primary, or remove \
         pg-entrypoint.promoted from PGDATA to let it rejoin {host} with pg_rewind"
    )]
    PromotedButReplica { host: String },
    #[error(transparent)]
    DataDir(#[from] DataDirError),
}

impl BootstrapError {
    /// The documented exit code (README "Exit codes").
    pub fn exit_code(&self) -> i32 {
        use crate::start::exit;
        match self {
            BootstrapError::Stopped(sig) => 128 + *sig as i32,
            BootstrapError::PrimaryRejected { .. } => exit::CONFIG,
            BootstrapError::PrimaryUnreachable { .. } => exit::PRIMARY_UNREACHABLE,
            _ => exit::STARTUP_FAILED,
        }
    }
}

/// What every step needs: the configuration, the binaries, the supervisor.
pub struct Context<'a> {
    pub config: &'a Config,
    pub bin: &'a Bin,
    pub endpoint: &'a Endpoint,
    pub postgres_args: &'a [String],
    pub settings: &'a render::Settings,
}

/// A PostgreSQL tool (or postgres itself) with the secrets removed from its environment.
pub fn tool(bin: &Bin, name: &str) -> Command {
    let mut c = Command::new(bin.tool(name));
    for var in SECRET_VARS {
        c.env_remove(var);
    }
    c
}

/// Runs a child under the supervisor and checks that it succeeded.
pub fn run(sup: &mut Supervisor, what: &str, command: &mut Command, kind: Kind) -> Result<(), BootstrapError> {
    let child = sup.spawn(command).map_err(|source| BootstrapError::Spawn { what: what.into(), source })?;
    finish(sup, what, Pid::from_raw(child.id() as i32), kind)
}

/// Runs a child and returns its exit code and what it wrote to stdout and stderr (for tools
/// whose answers and failures we interpret). Only a stop request is an error here.
pub fn run_captured(
    sup: &mut Supervisor,
    what: &str,
    command: &mut Command,
) -> Result<(i32, String, String), BootstrapError> {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = sup.spawn(command).map_err(|source| BootstrapError::Spawn { what: what.into(), source })?;
    // Read on threads, so the child never blocks on a full pipe while we handle signals.
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let code = sup
        .wait(Pid::from_raw(child.id() as i32), Kind::Tool)
        .map_err(|source| BootstrapError::Spawn { what: what.into(), source })?;
    let (stdout, stderr) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
    match sup.stop_requested() {
        Some(sig) => Err(BootstrapError::Stopped(sig)),
        None => Ok((code, stdout, stderr)),
    }
}

pub fn finish(sup: &mut Supervisor, what: &str, pid: Pid, kind: Kind) -> Result<(), BootstrapError> {
    let code = sup.wait(pid, kind).map_err(|source| BootstrapError::Spawn { what: what.into(), source })?;
    if let Some(sig) = sup.stop_requested() {
        return Err(BootstrapError::Stopped(sig));
    }
    if code != 0 {
        return Err(BootstrapError::Failed { what: what.into(), code });
    }
    Ok(())
}

/// Builds a new cluster in the staging directory and moves it into PGDATA.
pub fn initialise(ctx: &Context, sup: &mut Supervisor) -> Result<(), BootstrapError> {
    let config = ctx.config;
    let started = std::time::Instant::now();
    let staging = datadir::fresh_staging(&config.pgdata)?;
    let cluster = &staging.cluster;
    tracing::info!(pgdata = %config.pgdata.display(), "initialising a new cluster");
    initdb(ctx, sup, &staging)?;
    let hba = cluster.join("pg_hba.conf");
    fs::read_to_string(&hba)
        .and_then(|text| fs::write(&hba, render::without_host_lines(&text)))
        .map_err(DataDirError::io(&config.pgdata, "cannot rewrite initdb's pg_hba.conf"))?;
    single_user(ctx, sup, cluster, &bootstrap_sql(config))?;
    converge::write_config(config, ctx.settings, cluster)
        .map_err(DataDirError::io(&config.pgdata, "cannot write the configuration"))?;
    let scripts = init_scripts(&config.init_scripts_dir)?;
    if !scripts.is_empty() {
        let server = TempServer::start(ctx, sup, cluster, &["ready"])?;
        let result = scripts.iter().try_for_each(|script| run_script(ctx, sup, &server, cluster, script));
        // Stop the server whatever happened to the scripts.
        result.and(server.stop(sup))?;
    }
    if let Some(sig) = sup.stop_requested() {
        return Err(BootstrapError::Stopped(sig));
    }
    datadir::install_staging(&config.pgdata, staging)?;
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "cluster initialised");
    Ok(())
}

fn initdb(ctx: &Context, sup: &mut Supervisor, staging: &Staging) -> Result<(), BootstrapError> {
    let config = ctx.config;
    let mut cmd = tool(ctx.bin, "initdb");
    cmd.arg("-D").arg(&staging.cluster).arg("--username").arg(&config.superuser);
    // The superuser password goes in through a 0600 file, as a SCRAM verifier: postgres stores
    // a verifier as given, so the plaintext never leaves this process.
    let pwfile = staging.root.join("superuser.pwfile");
    if let Some(password) = &config.superuser_password {
        datadir::write_atomic(&pwfile, scram(password.expose()).as_bytes(), 0o600)
            .map_err(DataDirError::io(&config.pgdata, "cannot write initdb's password file"))?;
        cmd.arg("--pwfile").arg(&pwfile);
    }
    // Local socket trust as in the official image (the managed pg_hba block decides TCP).
    // The user's POSTGRES_INITDB_ARGS come later and win.
    cmd.args(["--auth-local=trust", "--auth-host=scram-sha-256"]);
    if ["LC_ALL", "LC_CTYPE", "LANG"].iter().all(|v| std::env::var_os(v).is_none()) {
        cmd.arg("--encoding=UTF8"); // the C locale would otherwise give SQL_ASCII
    }
    if let Some(waldir) = &config.initdb_waldir {
        cmd.arg("--waldir").arg(waldir);
    }
    cmd.args(&config.initdb_args).stdout(Stdio::null());
    let result = run(sup, "initdb", &mut cmd, Kind::Tool);
    fs::remove_file(&pwfile).ok();
    result
}

/// Statements of the first boot after initdb (none for a standalone server with the default
/// database): the replication password as a SCRAM verifier computed here, so no plaintext
/// password reaches the server, its logs, or any command line.
pub fn bootstrap_sql(config: &Config) -> Vec<String> {
    let mut sql = Vec::new();
    if config.database != "postgres" {
        sql.push(render::create_database_sql(&config.database, &config.superuser));
    }
    if let crate::config::Role::Primary(r) = &config.role {
        sql.extend(replication_role_sql(r));
    }
    sql
}

pub fn replication_role_sql(r: &crate::config::Replication) -> Vec<String> {
    render::replication_role_sql(&r.user, &scram(r.password.expose()))
}

fn scram(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}

/// Runs SQL in single-user mode: no listener, no temporary server, and an error stops it
/// (`exit_on_error`) instead of being skipped.
pub fn single_user(
    ctx: &Context,
    sup: &mut Supervisor,
    dir: &Path,
    statements: &[String],
) -> Result<(), BootstrapError> {
    if statements.is_empty() {
        return Ok(());
    }
    let what = "bootstrap SQL (postgres --single)";
    let mut cmd = tool(ctx.bin, "postgres");
    cmd.arg("--single").arg("-j").arg("-D").arg(dir);
    // Statements carry password verifiers: keep them out of the log whatever the config says.
    for setting in ["exit_on_error=on", "log_statement=none", "log_min_error_statement=panic"] {
        cmd.arg("-c").arg(setting);
    }
    cmd.arg("postgres").stdin(Stdio::piped()).stdout(Stdio::null());
    let mut child = sup.spawn(&mut cmd).map_err(|source| BootstrapError::Spawn { what: what.into(), source })?;
    // With -j a statement ends with ";" and an empty line. Names cannot contain line breaks
    // (config rejects control characters), so no statement ends early.
    let input: String = statements.iter().map(|s| format!("{s};\n\n")).collect();
    if let Some(mut stdin) = child.stdin.take() {
        // A write error means the backend died; its exit code says why.
        let _ = stdin.write_all(input.as_bytes());
    }
    finish(sup, what, Pid::from_raw(child.id() as i32), Kind::Tool)
}

/// `*.sh`, `*.sql`, `*.sql.gz|xz|zst` in name order; other files are skipped with a note.
fn init_scripts(dir: &Path) -> Result<Vec<PathBuf>, BootstrapError> {
    let entries = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(BootstrapError::Scripts { dir: dir.into(), source }),
    };
    let mut scripts = Vec::new();
    for entry in entries {
        let path = entry.map_err(|source| BootstrapError::Scripts { dir: dir.into(), source })?.path();
        if script_kind(&path).is_some() {
            scripts.push(path);
        } else {
            tracing::warn!(file = %path.display(), "ignoring: init scripts end in .sh, .sql, .sql.gz, .sql.xz or .sql.zst");
        }
    }
    scripts.sort();
    Ok(scripts)
}

enum ScriptKind {
    Shell,
    Sql,
    Compressed(&'static str),
}

fn script_kind(path: &Path) -> Option<ScriptKind> {
    let name = path.file_name()?.to_str()?;
    [
        (".sh", ScriptKind::Shell),
        (".sql", ScriptKind::Sql),
        (".sql.gz", ScriptKind::Compressed("gzip")),
        (".sql.xz", ScriptKind::Compressed("xz")),
        (".sql.zst", ScriptKind::Compressed("zstd")),
    ]
    .into_iter()
    .find(|(ext, _)| name.ends_with(ext))
    .map(|(_, kind)| kind)
}

fn run_script(
    ctx: &Context,
    sup: &mut Supervisor,
    server: &TempServer,
    cluster: &Path,
    script: &Path,
) -> Result<(), BootstrapError> {
    let config = ctx.config;
    tracing::info!(script = %script.display(), "running init script");
    let what = format!("init script {}", script.display());
    let client_env = |c: &mut Command| server.client_env(c, &config.superuser, &config.database);
    let psql = || {
        let mut c = tool(ctx.bin, "psql");
        client_env(&mut c);
        c.args(["-v", "ON_ERROR_STOP=1", "--no-psqlrc", "--no-password", "-q"]);
        c
    };
    match script_kind(script) {
        Some(ScriptKind::Shell) => {
            use std::os::unix::fs::PermissionsExt;
            let executable = fs::metadata(script).is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
            // As in the official image, scripts see POSTGRES_PASSWORD etc. and PGDATA.
            let mut c = if executable { Command::new(script) } else { Command::new("sh") };
            if !executable {
                c.arg(script);
            }
            client_env(&mut c);
            c.env("PGDATA", cluster).env("PATH", path_with(ctx.bin.dir()));
            run(sup, &what, &mut c, Kind::Tool)
        }
        Some(ScriptKind::Sql) => run(sup, &what, psql().arg("-f").arg(script), Kind::Tool),
        Some(ScriptKind::Compressed(tool_name)) => {
            let mut unpack = Command::new(tool_name);
            for var in SECRET_VARS {
                unpack.env_remove(var);
            }
            unpack.arg("-dc").arg(script).stdout(Stdio::piped());
            let mut unpacker = sup.spawn(&mut unpack).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => BootstrapError::NoDecompressor { script: script.into(), tool: tool_name },
                _ => BootstrapError::Spawn { what: what.clone(), source: e },
            })?;
            let unpack_pid = Pid::from_raw(unpacker.id() as i32);
            let stdout = unpacker.stdout.take().map(Stdio::from).unwrap_or_else(Stdio::null);
            let loaded = run(sup, &what, psql().stdin(stdout), Kind::Tool);
            let unpacked = finish(sup, &format!("{tool_name} -dc {}", script.display()), unpack_pid, Kind::Tool);
            loaded.and(unpacked)
        }
        None => Ok(()),
    }
}

/// PATH with the PostgreSQL binaries first, so scripts find the matching psql.
fn path_with(dir: &Path) -> std::ffi::OsString {
    let mut paths = vec![dir.to_path_buf()];
    paths.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    std::env::join_paths(paths).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MapInputs;

    #[test]
    fn bootstrap_sql_uses_verifiers_never_plaintext() {
        let inputs = MapInputs {
            vars: [
                ("POSTGRES_PASSWORD", "super'secret"),
                ("POSTGRES_USER", "ad min"),
                ("POSTGRES_DB", "app db"),
                ("HA_MODE", "native"),
                ("ROLE", "primary"),
                ("REPLICATION_PASSWORD", "rep$ecret"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            ..Default::default()
        };
        let config = Config::from_inputs(&inputs).unwrap();
        let sql = bootstrap_sql(&config);
        assert_eq!(sql.len(), 4, "{sql:?}");
        assert_eq!(sql[0], "CREATE DATABASE \"app db\" OWNER \"ad min\"");
        assert!(sql[2].starts_with("ALTER ROLE \"replicator\" WITH LOGIN REPLICATION PASSWORD 'SCRAM-SHA-256$"));
        let all = sql.join("\n");
        assert!(!all.contains("super'secret") && !all.contains("rep$ecret"));
    }

    #[test]
    fn script_kinds_by_name() {
        let kind = |n: &str| {
            script_kind(Path::new(n)).map(|k| match k {
                ScriptKind::Shell => "sh",
                ScriptKind::Sql => "sql",
                ScriptKind::Compressed(t) => t,
            })
        };
        assert_eq!(kind("/d/01-a.sh"), Some("sh"));
        assert_eq!(kind("/d/02-b.sql"), Some("sql"));
        assert_eq!(kind("/d/03-c.sql.gz"), Some("gzip"));
        assert_eq!(kind("/d/04-d.sql.xz"), Some("xz"));
        assert_eq!(kind("/d/05-e.sql.zst"), Some("zstd"));
        assert_eq!(kind("/d/README.md"), None);
    }
}
