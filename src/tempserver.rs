//! A temporary server for work that needs a running postgres before the real start (init
//! scripts, promoting a standby): its socket is private (in its data directory), it has no
//! TCP listener, and its own pg_hba.conf trusts local connections only.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::datadir::DataDirError;
use crate::step::{self, Context, StepError};
use crate::supervise::{Kind, Outcome, Supervisor};

/// Its name in the command line is how `health` tells a temporary server from the real one.
const HBA: &str = crate::local::TEMPORARY_SERVER_MARK;
const WHAT: &str = "the temporary server";

pub struct TempServer {
    pid: Pid,
    dir: PathBuf,
    port: u16,
}

impl TempServer {
    /// Starts postgres on `dir` and waits until postmaster.pid reports one of `statuses`
    /// ("ready" for a primary, "standby" for a hot standby).
    pub fn start(ctx: &Context, sup: &mut Supervisor, dir: &Path, statuses: &[&str]) -> Result<TempServer, StepError> {
        let hba = dir.join(HBA);
        fs::write(&hba, "local all all trust\n")
            .map_err(DataDirError::io(&ctx.config.pgdata, "cannot write the temporary pg_hba.conf"))?;
        let mut cmd = step::tool(ctx.bin, "postgres");
        cmd.arg("-D").arg(dir).args(ctx.postgres_args);
        for setting in [
            "listen_addresses=".to_string(),
            format!("unix_socket_directories={}", dir.display()),
            format!("hba_file={}", hba.display()),
            format!("port={}", ctx.endpoint.port),
            "hot_standby=on".to_string(),
        ]
        .into_iter()
        .chain(crate::render::NO_SYNCHRONOUS_WAIT.map(String::from))
        {
            cmd.arg("-c").arg(setting);
        }
        let child = sup.spawn(&mut cmd).map_err(|source| StepError::Spawn { what: WHAT.into(), source })?;
        let server =
            TempServer { pid: Pid::from_raw(child.id() as i32), dir: dir.to_path_buf(), port: ctx.endpoint.port };
        server.wait_for(sup, statuses)?;
        Ok(server)
    }

    /// Waits until postmaster.pid reports one of `statuses`.
    pub fn wait_for(&self, sup: &mut Supervisor, statuses: &[&str]) -> Result<(), StepError> {
        let pidfile = self.dir.join("postmaster.pid");
        let outcome = sup
            .wait_until(self.pid, Kind::Postgres, WHAT, &mut || {
                server_status(&pidfile).is_some_and(|s| statuses.contains(&s.as_str()))
            })
            .map_err(|source| StepError::Spawn { what: WHAT.into(), source })?;
        match outcome {
            Outcome::Ready => Ok(()),
            Outcome::Exited(code) => Err(match sup.stop_requested() {
                Some(sig) => StepError::Stopped(sig),
                None => StepError::Failed { what: WHAT.into(), code },
            }),
        }
    }

    /// Points a client (psql, an init script) at this server.
    pub fn client_env(&self, command: &mut Command, user: &str, database: &str) {
        command
            .env("PGHOST", &self.dir)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", user)
            .env("PGDATABASE", database);
    }

    /// A fast shutdown (nobody else is connected); waits for it.
    pub fn stop(self, sup: &mut Supervisor) -> Result<(), StepError> {
        nix::sys::signal::kill(self.pid, Signal::SIGINT).ok();
        let result = step::finish(sup, WHAT, self.pid, Kind::Postgres);
        fs::remove_file(self.dir.join(HBA)).ok();
        result
    }
}

/// postmaster.pid's status: "starting", "ready", "standby" or "stopping".
fn server_status(pidfile: &Path) -> Option<String> {
    crate::local::parse_pidfile(&fs::read_to_string(pidfile).ok()?).map(|p| p.status)
}
