//! First boot of a standalone server or primary: initdb and the bootstrap SQL (single-user
//! mode) in a staging directory, the new cluster moved into PGDATA marked "initialising",
//! the `/docker-entrypoint-initdb.d` scripts against it, then the mark removed. A start that
//! finds the mark redoes the whole bootstrap (docs/startup.md, "Files we own"). Nothing listens on TCP
//! until then: single-user mode has no listener, nor has the temporary server of the scripts.

use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::fcntl::{FcntlArg, FdFlag, OFlag};

use crate::config::Config;
use crate::lifecycle::init_scripts;
use crate::pgdata::datadir::{self, DataDirError, Staging};
use crate::pgdata::files;
use crate::pid1::supervise::{Kind, Supervisor};
use crate::postgres::single_user;
use crate::postgres::step::{self, run, Context, StepError};
use crate::render;

/// Builds a new cluster in the staging directory, moves it into PGDATA and runs the init
/// scripts there.
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
    datadir::install_staging(&config.pgdata, staging, true)?;
    init_scripts::run_all(ctx, sup)?;
    if let Some(sig) = sup.stop_requested() {
        return Err(StepError::Stopped(sig));
    }
    datadir::finish_initialising(&config.pgdata)?;
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "cluster initialised");
    Ok(())
}

fn initdb(ctx: &Context, sup: &mut Supervisor, staging: &Staging) -> Result<(), StepError> {
    let config = ctx.config;
    let mut cmd = step::initdb(ctx, &staging.cluster);
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
    if let Some(waldir) = &config.initdb_waldir {
        cmd.arg("--waldir").arg(waldir);
    }
    cmd.args(&config.initdb_args);
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
        sql.extend(single_user::replication_role(r));
    }
    sql
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
        assert_eq!(sql.len(), 5, "{sql:?}");
        assert_eq!(sql[0], "CREATE DATABASE \"app db\" OWNER \"ad min\"");
        assert!(sql[2].starts_with("ALTER ROLE \"replicator\" WITH LOGIN REPLICATION PASSWORD 'SCRAM-SHA-256$"));
        let all = sql.join("\n");
        assert!(!all.contains("super'secret") && !all.contains("rep$ecret"));
    }
}
