//! A temporary server for work that needs a running postgres before the real start (init
//! scripts, promoting a standby): it has no TCP listener, its sockets are where the caller
//! says (a private directory, or the configured ones), and its own pg_hba.conf trusts local
//! connections only.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::pgdata::datadir::DataDirError;
use crate::pid1::supervise::{Kind, Outcome, Supervisor};
use crate::postgres::step::{self, Context, StepError};

/// Its name in the command line is how `health` tells a temporary server from the real one.
const HBA: &str = crate::config::layout::TEMPORARY_SERVER_HBA;
const WHAT: &str = "the temporary server";

pub struct TempServer {
    /// None once it has exited and been collected.
    pid: Option<Pid>,
    dir: PathBuf,
    /// The socket directory its clients use.
    host: PathBuf,
    port: u16,
}

impl TempServer {
    /// Starts postgres on `dir` with its sockets in `sockets` (the first is the one clients
    /// use) and waits until postmaster.pid reports one of `statuses` ("ready" for a primary,
    /// "standby" for a hot standby).
    pub fn start(
        ctx: &Context,
        sup: &mut Supervisor,
        dir: &Path,
        statuses: &[&str],
        sockets: &[PathBuf],
    ) -> Result<TempServer, StepError> {
        let host = sockets.first().cloned().unwrap_or_else(|| dir.to_path_buf());
        let socket_list: Vec<String> = sockets.iter().map(|s| s.display().to_string()).collect();
        let hba = dir.join(HBA);
        fs::write(&hba, "local all all trust\n")
            .map_err(DataDirError::io(&ctx.config.pgdata, "cannot write the temporary pg_hba.conf"))?;
        let mut cmd = step::tool(ctx.bin, "postgres");
        cmd.arg("-D").arg(dir).args(ctx.postgres_args);
        for setting in [
            "listen_addresses=".to_string(),
            format!("unix_socket_directories={}", socket_list.join(",")),
            format!("hba_file={}", hba.display()),
            format!("port={}", ctx.sockets.port),
            "hot_standby=on".to_string(),
            // Local trust, so only our own uid (the entrypoint, init scripts) may connect.
            "unix_socket_permissions=0700".to_string(),
        ]
        .into_iter()
        .chain(crate::render::NO_SYNCHRONOUS_WAIT.map(String::from))
        {
            cmd.arg("-c").arg(setting);
        }
        let child = sup.spawn(&mut cmd).map_err(|source| StepError::Spawn { what: WHAT.into(), source })?;
        let pid = Pid::from_raw(child.id() as i32);
        let mut server = TempServer { pid: Some(pid), dir: dir.to_path_buf(), host, port: ctx.sockets.port };
        server.wait_for(sup, pid, statuses)?;
        Ok(server)
    }

    /// Waits until postmaster.pid reports one of `statuses` (the server is `pid`).
    fn wait_for(&mut self, sup: &mut Supervisor, pid: Pid, statuses: &[&str]) -> Result<(), StepError> {
        self.pid = Some(pid);
        let pidfile = self.dir.join("postmaster.pid");
        self.wait_until(sup, WHAT, &mut || {
            crate::postgres::local::pidfile_status(&pidfile).is_some_and(|s| statuses.contains(&s.as_str()))
        })
    }

    /// Waits while it runs until `done()` is true (e.g. a recovery finished); its exit
    /// meanwhile is an error, and so is a stop request.
    pub fn wait_until(
        &mut self,
        sup: &mut Supervisor,
        what: &str,
        done: &mut dyn FnMut() -> bool,
    ) -> Result<(), StepError> {
        let Some(pid) = self.pid else { return Err(StepError::Failed { what: WHAT.into(), code: 1 }) };
        match sup
            .wait_until(pid, Kind::Postgres, what, done)
            .map_err(|source| StepError::Spawn { what: what.into(), source })?
        {
            Outcome::Ready => Ok(()),
            Outcome::Exited(code) => {
                self.pid = None;
                Err(match sup.stop_requested() {
                    Some(sig) => StepError::Stopped(sig),
                    None => StepError::Failed { what: WHAT.into(), code },
                })
            }
        }
    }

    /// Points a client (psql, an init script) at this server.
    pub fn client_env(&self, command: &mut Command, user: &str, database: &str) {
        command
            .env("PGHOST", &self.host)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", user)
            .env("PGDATABASE", database);
    }

    /// After an init script: if it restarted the server (`pg_ctl restart`, e.g. to load
    /// shared_preload_libraries), takes over the new postmaster, which pg_ctl left to us (we
    /// are a subreaper), and waits until it is ready. A server left stopped is an error (the
    /// next scripts and the end of the bootstrap need it), and so is one started without the
    /// temporary server's settings (`pg_ctl start` reads the real configuration: TCP, the
    /// real pg_hba.conf): it is stopped.
    pub fn follow_restart(&mut self, sup: &mut Supervisor, script: &Path) -> Result<(), StepError> {
        let Some(pid) = self.pid else { return Err(StepError::TempServerStopped { script: script.into() }) };
        let exited = sup.collect(pid).map_err(|source| StepError::Spawn { what: WHAT.into(), source })?;
        if exited.is_none() {
            return Ok(());
        }
        self.pid = None;
        let successor = crate::pgdata::datadir::live_postmaster(&self.dir).map(Pid::from_raw).filter(|new| *new != pid);
        match successor {
            Some(new) if sup.adopt(new) => {
                self.pid = Some(new);
                if !crate::postgres::local::is_temporary_server(new.as_raw()) {
                    return Err(StepError::TempServerReplaced { script: script.into() });
                }
                tracing::info!(script = %script.display(), pid = new.as_raw(), "the init script restarted the temporary server; following it");
                self.wait_for(sup, new, &["ready"])
            }
            _ => Err(StepError::TempServerStopped { script: script.into() }),
        }
    }

    /// A fast shutdown (nobody else is connected); waits for it.
    pub fn stop(self, sup: &mut Supervisor) -> Result<(), StepError> {
        let result = match self.pid {
            Some(pid) => {
                nix::sys::signal::kill(pid, Signal::SIGINT).ok();
                step::finish(sup, WHAT, pid, Kind::Postgres)
            }
            None => Ok(()), // gone already, and reported where that was found
        };
        fs::remove_file(self.dir.join(HBA)).ok();
        result
    }
}
