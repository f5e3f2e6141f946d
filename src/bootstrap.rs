//! First boot of a standalone server or primary: initdb, bootstrap SQL in single-user mode,
//! `/docker-entrypoint-initdb.d` scripts, all in a staging directory that becomes PGDATA only
//! when everything succeeded. Nothing listens on TCP until then: single-user mode has no
//! listener at all, and the temporary server for init scripts listens on a private socket.

use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::fcntl::{FcntlArg, FdFlag, OFlag};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::unistd::Pid;

use crate::config::{Config, SECRET_VARS};
use crate::datadir::{self, DataDirError, Staging};
use crate::files;
use crate::render;
use crate::single_user;
use crate::step::{finish, run, tool, Context, StepError};
use crate::supervise::{Kind, Supervisor};
use crate::tempserver::TempServer;

/// Builds a new cluster in the staging directory and moves it into PGDATA.
pub fn initialise(ctx: &Context, sup: &mut Supervisor) -> Result<(), StepError> {
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
    single_user::run(ctx, sup, cluster, &bootstrap_sql(config))?;
    files::write_config(config, ctx.settings, cluster)
        .map_err(DataDirError::io(&config.pgdata, "cannot write the configuration"))?;
    let scripts = init_scripts(&config.init_scripts_dir)?;
    if !scripts.is_empty() {
        let server = TempServer::start(ctx, sup, cluster, &["ready"])?;
        let result = scripts.iter().try_for_each(|script| run_script(ctx, sup, &server, cluster, script));
        // Stop the server whatever happened to the scripts.
        result.and(server.stop(sup))?;
    }
    if let Some(sig) = sup.stop_requested() {
        return Err(StepError::Stopped(sig));
    }
    datadir::install_staging(&config.pgdata, staging)?;
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "cluster initialised");
    Ok(())
}

fn initdb(ctx: &Context, sup: &mut Supervisor, staging: &Staging) -> Result<(), StepError> {
    let config = ctx.config;
    let mut cmd = tool(ctx.bin, "initdb");
    cmd.arg("-D").arg(&staging.cluster).arg("--username").arg(&config.superuser);
    // The superuser password goes in as a SCRAM verifier (postgres stores a verifier as given,
    // so the plaintext never leaves this process), through a pipe initdb reads as /dev/fd/N:
    // it is never on disk, so a kill at any moment leaves no password file behind.
    let mut pipe = None;
    if let Some(password) = &config.superuser_password {
        let read = password_pipe(&single_user::scram(password.expose()))
            .map_err(DataDirError::io(&config.pgdata, "cannot pass initdb the password"))?;
        cmd.arg(format!("--pwfile=/dev/fd/{}", read.as_raw_fd()));
        pipe = Some(read);
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
    drop(pipe);
    result
}

/// A pipe holding `text`, its read end inheritable by the next child (and only that one: it
/// is closed once initdb has run; the write end never leaves this process).
fn password_pipe(text: &str) -> io::Result<OwnedFd> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let mut write = fs::File::from(write);
    // A verifier is about 130 bytes: far below the pipe's capacity, so this never blocks.
    write.write_all(text.as_bytes())?;
    write.write_all(b"\n")?;
    drop(write);
    nix::fcntl::fcntl(read.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::empty()))?;
    Ok(read)
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
        sql.extend(single_user::replication_role_sql(r));
    }
    sql
}

/// `*.sh`, `*.sql`, `*.sql.gz|xz|zst` in name order; other files are skipped with a note.
fn init_scripts(dir: &Path) -> Result<Vec<PathBuf>, StepError> {
    let entries = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(StepError::Scripts { dir: dir.into(), source }),
    };
    let mut scripts = Vec::new();
    for entry in entries {
        let path = entry.map_err(|source| StepError::Scripts { dir: dir.into(), source })?.path();
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
) -> Result<(), StepError> {
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
                io::ErrorKind::NotFound => StepError::NoDecompressor { script: script.into(), tool: tool_name },
                _ => StepError::Spawn { what: what.clone(), source: e },
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
