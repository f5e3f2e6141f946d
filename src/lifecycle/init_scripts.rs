//! The init scripts of a new cluster (`/docker-entrypoint-initdb.d`), run as the official
//! image runs them: in name order, against a temporary server on PGDATA itself (so a script
//! that edits `$PGDATA/postgresql.conf` edits the real file), without a TCP listener. A
//! non-executable `*.sh` runs in bash with the official image's helpers
//! (`init_scripts.bash`); an executable one runs as it is; `*.sql` and compressed SQL go to
//! psql. A script may restart the server with `pg_ctl`: the new postmaster is followed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::unistd::Pid;

use crate::config::secret_environment;
use crate::pid1::supervise::{Kind, Supervisor};
use crate::postgres::step::{finish, run, tool, Context, StepError};
use crate::postgres::tempserver::TempServer;

/// Sourced scripts run inside this, as inside the official image's entrypoint.
const BASH_HELPERS: &str = include_str!("init_scripts.bash");
/// What a sourced script sees as `$0`.
const SOURCED_AS: &str = "docker-entrypoint.sh";

/// Runs every init script against PGDATA; nothing to do without scripts.
pub fn run_all(ctx: &Context, sup: &mut Supervisor) -> Result<(), StepError> {
    let scripts = list(&ctx.config.init_scripts_dir)?;
    if scripts.is_empty() {
        return Ok(());
    }
    let pgdata = &ctx.config.pgdata;
    // The configured socket directories, as the official image's temporary server uses the
    // default one: a script that names it (`psql -h /var/run/postgresql`) works too.
    let sockets = match ctx.sockets.socket_dirs.as_slice() {
        [] => vec![pgdata.clone()],
        dirs => dirs.to_vec(),
    };
    let mut server = TempServer::start(ctx, sup, pgdata, &["ready"], &sockets)?;
    let mut result = Ok(());
    for script in &scripts {
        // Followed even when the script failed: a server it restarted is stopped below.
        let ran = run_one(ctx, sup, &server, script);
        result = ran.and(server.follow_restart(sup, script));
        if result.is_err() {
            break;
        }
    }
    // Stop the server whatever happened to the scripts.
    result.and(server.stop(sup))
}

/// `*.sh`, `*.sql`, `*.sql.gz|xz|zst` in name order; other files are skipped with a note.
fn list(dir: &Path) -> Result<Vec<PathBuf>, StepError> {
    let entries = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(StepError::Scripts { dir: dir.into(), source }),
    };
    let mut scripts = Vec::new();
    for entry in entries {
        let path = entry.map_err(|source| StepError::Scripts { dir: dir.into(), source })?.path();
        if kind(&path).is_some() {
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

fn kind(path: &Path) -> Option<ScriptKind> {
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

fn run_one(ctx: &Context, sup: &mut Supervisor, server: &TempServer, script: &Path) -> Result<(), StepError> {
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
    match kind(script) {
        Some(ScriptKind::Shell) => {
            use std::os::unix::fs::PermissionsExt;
            let executable = fs::metadata(script).is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
            let mut c = if executable {
                Command::new(script)
            } else {
                let mut bash = Command::new("bash");
                bash.arg("-c").arg(BASH_HELPERS).arg(SOURCED_AS).arg(script);
                bash
            };
            client_env(&mut c);
            // pgBackRest's keys stay in its configuration file.
            for var in secret_environment().into_iter().filter(|v| v.starts_with("PGBACKREST_")) {
                c.env_remove(var);
            }
            // What the official image exports to its scripts (secrets read from _FILE too).
            c.env("POSTGRES_USER", &config.superuser)
                .env("POSTGRES_DB", &config.database)
                .env("PGDATA", &config.pgdata)
                .env("PATH", path_with(ctx.bin.dir()));
            if let Some(password) = &config.superuser_password {
                c.env("POSTGRES_PASSWORD", password.expose());
                if std::env::var_os("PGPASSWORD").is_none() {
                    c.env("PGPASSWORD", password.expose());
                }
            }
            run(sup, &what, &mut c, Kind::Tool)
        }
        Some(ScriptKind::Sql) => run(sup, &what, psql().arg("-f").arg(script), Kind::Tool),
        Some(ScriptKind::Compressed(tool_name)) => {
            let mut unpack = Command::new(tool_name);
            for var in secret_environment() {
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

/// PATH with the PostgreSQL binaries first, so scripts find the matching psql and pg_ctl.
fn path_with(dir: &Path) -> std::ffi::OsString {
    let mut paths = vec![dir.to_path_buf()];
    paths.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    std::env::join_paths(paths).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_kinds_by_name() {
        let kind = |n: &str| {
            kind(Path::new(n)).map(|k| match k {
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
