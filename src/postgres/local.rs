//! The server running in this container, for `health`, `status` and `promote`: found from
//! PGDATA's postmaster.pid (pid, port, socket directory, status) and reached over its Unix
//! socket.
//!
//! These commands often run as root (HEALTHCHECK, `docker exec`), and postmaster.pid is
//! writable by the postgres user, who could point it at a server of its own. So they first
//! become the service account and never send a password: local connections are trusted
//! (initdb `--auth-local=trust`, as in the official image) or peer-authenticated, and a
//! server that asks for a password is refused one. A forged postmaster.pid then obtains
//! nothing its author could not already do, so the socket it names is used as it is
//! (whatever directory postgres arguments chose).

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Config, Layout, DEFAULT_PGDATA};

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("no server running in {0:?} (no postmaster.pid)")]
    NotRunning(PathBuf),
    #[error("postmaster.pid in {0:?} names a process that is not running")]
    Stale(PathBuf),
    #[error("postmaster.pid in {0:?} is incomplete; the server is starting")]
    Incomplete(PathBuf),
    #[error("cannot connect to the server: {0}")]
    Connect(String),
    #[error(
        "the server asks for a password, which these commands never send: they need trust or peer \
         authentication for POSTGRES_USER on the Unix socket"
    )]
    WantsPassword,
    #[error("cannot become the service account: {0}")]
    Privileges(String),
}

/// A connection as `user` to `database` over the Unix socket in `socket_dir`, no password.
pub fn socket_client(
    socket_dir: &std::path::Path,
    port: u16,
    user: &str,
    database: &str,
    timeout: Duration,
) -> Result<postgres::Client, postgres::Error> {
    postgres::Config::new()
        .host_path(socket_dir)
        .port(port)
        .user(user)
        .dbname(database)
        .application_name("pg-entrypoint")
        .connect_timeout(timeout)
        .connect(postgres::NoTls)
}

/// Run as root, becomes the service account (read from /etc/passwd); otherwise stays as is.
/// Callers read any secret they need (a `_FILE` only root may read) before this.
fn become_service_account() -> Result<(), LocalError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let account = crate::pid1::privileges::service_account().map_err(|e| LocalError::Privileges(e.to_string()))?;
    crate::pid1::privileges::become_user(&account).map_err(|e| LocalError::Privileges(e.to_string()))
}

/// True when process `pid` is a temporary server of the entrypoint (its command line names
/// our temporary pg_hba.conf).
pub fn is_temporary_server(pid: i32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(crate::config::layout::TEMPORARY_SERVER_HBA))
}

/// postmaster.pid's status: "starting", "ready", "standby" or "stopping".
pub fn pidfile_status(pidfile: &std::path::Path) -> Option<String> {
    parse_pidfile(&fs::read_to_string(pidfile).ok()?).map(|p| p.status)
}

/// What postmaster.pid says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidFile {
    pub pid: i32,
    pub port: u16,
    pub socket_dir: PathBuf,
    /// "starting", "ready", "standby" or "stopping".
    pub status: String,
}

/// Lines: pid, data directory, start time, port, first socket directory, listen address,
/// shared memory key, status.
pub fn parse_pidfile(text: &str) -> Option<PidFile> {
    let lines: Vec<&str> = text.lines().collect();
    Some(PidFile {
        pid: lines.first()?.trim().parse().ok()?,
        port: lines.get(3)?.trim().parse().ok()?,
        socket_dir: PathBuf::from(lines.get(4)?.trim()),
        status: lines.get(7)?.trim().to_string(),
    })
}

/// The local server and how to log in to it, from the container's environment.
pub struct Local {
    pub pgdata: PathBuf,
    pub pidfile: PidFile,
    /// A temporary server of the entrypoint (bootstrap or promotion in progress).
    pub temporary: bool,
    user: String,
}

impl Local {
    /// As the operator commands need it: POSTGRES_USER (or the file POSTGRES_USER_FILE
    /// names, which may be root's) read first, then no more root, then the server found.
    pub fn open() -> Result<Local, LocalError> {
        let user = crate::config::var_or_file(&crate::config::ProcessInputs, "POSTGRES_USER")
            .unwrap_or_else(|| crate::config::DEFAULT_SUPERUSER.into());
        // Where the start put PGDATA; when it refused to choose, there is no server to find.
        let pgdata = crate::config::layout::data_directory(&crate::config::ProcessInputs)
            .map_or_else(|_| PathBuf::from(DEFAULT_PGDATA), |(pgdata, _)| pgdata);
        become_service_account()?;
        Local::find(pgdata, user)
    }

    fn find(pgdata: PathBuf, user: String) -> Result<Local, LocalError> {
        let text =
            fs::read_to_string(pgdata.join("postmaster.pid")).map_err(|_| LocalError::NotRunning(pgdata.clone()))?;
        let pidfile = parse_pidfile(&text).ok_or_else(|| LocalError::Incomplete(pgdata.clone()))?;
        if !PathBuf::from(format!("/proc/{}", pidfile.pid)).exists() {
            return Err(LocalError::Stale(pgdata));
        }
        let temporary = is_temporary_server(pidfile.pid);
        Ok(Local { pgdata, pidfile, temporary, user })
    }

    /// `config` (from the environment) as the running server uses it: our files where its
    /// postmaster.pid says (whatever arguments it was started with), itself not among its
    /// peers, and connections to other members as its libpq allows (its major, asked over
    /// `client`).
    pub fn running_config(&self, client: &mut postgres::Client, config: Config) -> Config {
        let major = client
            .query_one("SELECT current_setting('server_version_num')", &[])
            .ok()
            .and_then(|row| crate::postgres::server::major_of(&row.get::<_, String>(0)))
            .unwrap_or(0);
        let tls = config.tls.clone().with_libpq_of(major, &config.host_auth_method);
        let mut config = Config { layout: Layout::new(&self.pidfile.socket_dir, self.pidfile.port), tls, ..config };
        config.forget_self(self.pidfile.port, &crate::config::Inputs::hostname(&crate::config::ProcessInputs));
        config
    }

    /// A connection over the Unix socket, as POSTGRES_USER, without a password.
    pub fn connect(&self, timeout: Duration) -> Result<postgres::Client, LocalError> {
        socket_client(&self.pidfile.socket_dir, self.pidfile.port, &self.user, "postgres", timeout).map_err(|e| {
            let chain = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source());
            if chain.map(|e| e.to_string()).any(|m| m.contains("password missing")) {
                LocalError::WantsPassword
            } else {
                LocalError::Connect(describe(&e))
            }
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.pgdata.join(name)
    }
}

/// The server's own message where there is one ("db error" alone says nothing).
pub fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_postmaster_pid() {
        let text = "4282\n/tmp/data\n1764328241\n55431\n/var/run/postgresql\n*\n  55431001         0\nready   \n";
        assert_eq!(
            parse_pidfile(text),
            Some(PidFile { pid: 4282, port: 55431, socket_dir: "/var/run/postgresql".into(), status: "ready".into() })
        );
        assert_eq!(parse_pidfile("4282\n/tmp/data\n"), None);
    }
}
