//! PgBouncer as a supervised child (`PGBOUNCER_ENABLE`, docs/switchover.md): started once
//! postgres runs, restarted if it dies, reloaded with postgres on SIGHUP, stopped after
//! postgres. Every turn of the supervision loop gives it a turn: its admin console answers on
//! the local socket at once, a question to another member is a child collected later, and
//! the one wait, PAUSE before a switchover's shutdown, is bounded (5 s).
//!
//! Its `auth_query` runs as a role of its own that may call one function returning one login
//! role's hash: no list of hashes on disk. On a writable primary, that role and function are
//! made (in every database) at the first turn; replicas get them by replication.
//!
//! In a switchover the old primary's pooler pauses its clients before the fast shutdown,
//! points at the new primary once this node is a standby, and resumes them when the new
//! primary accepts writes: a client in transaction or statement mode waits instead of failing.
//! Once this member is a primary again, its clients come back to its own server.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::config::pooler::{PoolMode, Pooler};
use crate::config::{Address, Config};
use crate::pgdata::datadir;
use crate::pid1::supervise::Supervisor;
use crate::postgres::member::{Answer, Asking, Connector};
use crate::postgres::server::{self, Bin};
use crate::postgres::step;
use crate::render::pooler::{self as render, Files, ServerTls, Target};

/// Where Debian installs it, when it is not on PATH.
const DEBIAN_BINARY: &str = "/usr/sbin/pgbouncer";
/// How long a PAUSE may wait for running transactions before the switchover goes on anyway.
const PAUSE_WAIT: Duration = Duration::from_secs(5);
/// After PgBouncer died, before it is started again.
const RESTART_DELAY: Duration = Duration::from_secs(1);
/// From SIGTERM (PgBouncer's immediate shutdown) to SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Between two attempts to make the auth role while the server is not ready or a standby.
const AUTH_RETRY: Duration = Duration::from_secs(5);

/// PgBouncer's path, if installed.
pub fn binary() -> Option<PathBuf> {
    server::on_path("pgbouncer").or_else(|| Some(PathBuf::from(DEBIAN_BINARY)).filter(|p| server::is_executable(p)))
}

/// Before anything is touched: PgBouncer must be installed when it is enabled.
pub fn check_installed(config: &Config) -> Result<(), String> {
    if config.pooler.is_none() || binary().is_some() {
        return Ok(());
    }
    Err("invalid configuration: PGBOUNCER_ENABLE is true, but pgbouncer is not installed in this image \
         (apt-get install pgbouncer), or set PGBOUNCER_ENABLE=false"
        .into())
}

/// psql running `command` on PgBouncer's admin console, over the socket, output unaligned.
fn console_psql(bin: &Bin, config: &Config, port: u16, command: &str) -> Command {
    let (socket_dir, _) = config.layout.server();
    let mut psql = step::tool(bin, "psql");
    psql.args(["-X", "-q", "-A", "-t", "-F", "|", "--no-password", "-h"])
        .arg(socket_dir)
        .args(["-p", &port.to_string(), "-U", render::CONSOLE_USER, "-d", "pgbouncer", "-c", command])
        .stdin(Stdio::null());
    crate::pid1::supervise::clean_signals_on_exec(&mut psql);
    psql
}

/// 16 random bytes in hex.
fn random_hex() -> Option<String> {
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").ok()?, &mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub struct Supervised {
    settings: Pooler,
    config: Config,
    bin: Bin,
    binary: PathBuf,
    pid: Option<Pid>,
    /// Random, never used: the console user is trusted on the socket only.
    console_password: String,
    start_at: Instant,
    reloads_seen: u64,
    auth_ready: bool,
    auth_at: Instant,
    /// After a switchover: the member its clients go to, and whether they are still paused.
    following: Option<(Address, bool)>,
    /// The question to the new primary in flight.
    asking: Option<Asking>,
}

impl Supervised {
    pub fn new(config: &Config, bin: &Bin, sup: &Supervisor) -> Option<Supervised> {
        let settings = config.pooler.clone()?;
        Some(Supervised {
            settings,
            config: config.clone(),
            bin: bin.clone(),
            binary: binary()?,
            pid: None,
            console_password: random_hex()?,
            start_at: Instant::now(),
            reloads_seen: sup.reloads(),
            auth_ready: false,
            auth_at: Instant::now(),
            following: None,
            asking: None,
        })
    }

    /// For the start after a switchover: the configuration of this member's new role.
    pub fn set_config(&mut self, config: &Config) {
        self.config = config.clone();
    }

    fn write_files(&self) -> std::io::Result<()> {
        let paths = self.config.layout.pooler_files();
        let (socket_dir, port) = self.config.layout.server();
        let tls = self.config.layout.tls();
        let password = crate::config::pooler::auth_password(&self.config);
        let auth = render::auth_file(&self.console_password, password.as_ref().map(|p| p.expose()));
        datadir::write_atomic(&paths.auth, auth.as_bytes(), 0o600)?;
        let files = Files {
            hba: &paths.hba,
            auth: &paths.auth,
            socket_dir,
            tls: (self.config.tls.mode != crate::config::TlsMode::Off).then_some((&tls.cert, &tls.key)),
            server_tls: match &self.following {
                // As this member's own connections to the others (REPLICATION_SSLMODE).
                Some(_) => ServerTls {
                    sslmode: &self.config.tls.replication_sslmode,
                    ca: self.config.tls.ca.is_some().then_some(tls.ca.as_path()),
                },
                None if self.config.tls.mode == crate::config::TlsMode::Required => {
                    ServerTls { sslmode: "require", ca: None }
                }
                None => ServerTls { sslmode: "disable", ca: None },
            },
        };
        let target = match &self.following {
            Some((address, _)) => Target::Member(address),
            None => Target::Local { port },
        };
        let ini = render::ini(&self.settings, &target, &files, self.config.tls.mode);
        let hba = render::hba(&self.settings, self.config.tls.mode);
        datadir::write_atomic(&paths.hba, hba.as_bytes(), 0o600)?;
        datadir::write_atomic(&paths.ini, ini.as_bytes(), 0o600)
    }

    /// One turn: start it (again) when due, reload it after a SIGHUP, make the auth role on
    /// a writable primary, resume clients paused for a switchover once the new primary writes.
    pub fn tick(&mut self, sup: &mut Supervisor) {
        if let Some(pid) = self.pid {
            match sup.collect(pid) {
                Ok(None) => {}
                Ok(Some(code)) => {
                    tracing::error!(code, "PgBouncer exited; starting it again in {} s", RESTART_DELAY.as_secs());
                    self.pid = None;
                    self.start_at = Instant::now() + RESTART_DELAY;
                }
                Err(e) => tracing::debug!("PgBouncer: {e}"),
            }
        }
        if self.pid.is_none() && Instant::now() >= self.start_at {
            self.start(sup);
        }
        if sup.reloads() != self.reloads_seen {
            self.reloads_seen = sup.reloads();
            self.reload("a reload (SIGHUP)");
        }
        if !self.auth_ready && Instant::now() >= self.auth_at {
            self.make_auth_role(sup);
        }
        // Promoted again (a switchover back): its clients come back to this member's server.
        if self.following.is_some() && !self.config.pgdata.join("standby.signal").exists() {
            self.following = None;
            self.reload("this member is the primary again: its clients come back here");
            self.console("RESUME").ok();
        }
        if let Some((address, true)) = self.following.clone() {
            self.resume_once_writable(sup, address);
        }
    }

    /// Asks `address` who it is (a child collected on a later turn) and resumes the paused
    /// clients once it answers as a writable primary.
    fn resume_once_writable(&mut self, sup: &mut Supervisor, address: Address) {
        let Some(asking) = self.asking.as_mut() else {
            let Some(replication) = self.config.replication() else { return };
            let connector = Connector::questions(&self.config, &self.bin, &replication.user);
            self.asking = Some(Asking::start(sup, &connector, std::slice::from_ref(&address)));
            return;
        };
        let Some(answers) = asking.collect(sup) else { return };
        self.asking = None;
        let writable = answers.iter().any(|(_, answer)| matches!(answer, Answer::Identity(i) if !i.standby));
        if writable && self.console("RESUME").is_ok() {
            tracing::info!("PgBouncer: {address} accepts writes; clients resumed there");
            self.following = Some((address, false));
        }
    }

    fn start(&mut self, sup: &mut Supervisor) {
        if let Err(e) = self.write_files() {
            tracing::error!("PgBouncer: cannot write its configuration: {e}");
            self.start_at = Instant::now() + RESTART_DELAY;
            return;
        }
        let mut cmd = Command::new(&self.binary);
        cmd.arg(self.config.layout.pooler_files().ini).stdin(Stdio::null());
        for var in crate::config::secret_environment() {
            cmd.env_remove(var);
        }
        match sup.spawn(&mut cmd) {
            Ok(child) => {
                let pid = child.id();
                tracing::info!(pid, port = self.settings.port, "PgBouncer started");
                self.pid = Some(Pid::from_raw(pid as i32));
            }
            Err(e) => {
                tracing::error!("cannot start PgBouncer: {e}");
                self.start_at = Instant::now() + RESTART_DELAY;
            }
        }
    }

    /// Its files rewritten, then SIGHUP (PgBouncer's reload).
    fn reload(&mut self, why: &str) {
        let Some(pid) = self.pid else { return };
        match self.write_files() {
            Ok(()) => {
                kill(pid, Signal::SIGHUP).ok();
                tracing::info!("PgBouncer reloaded: {why}");
            }
            Err(e) => tracing::error!("PgBouncer: cannot write its configuration: {e}"),
        }
    }

    /// A command on its admin console, over the socket.
    fn console(&self, command: &str) -> Result<String, String> {
        let out = console_psql(&self.bin, &self.config, self.settings.port, command)
            .output()
            .map_err(|e| format!("cannot run psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// The role and function `auth_query` needs, made on a writable primary.
    fn make_auth_role(&mut self, sup: &mut Supervisor) {
        self.auth_at = Instant::now() + AUTH_RETRY;
        let (socket_dir, port) = self.config.layout.server();
        // psql as the superuser on the socket, on `database`, with `-c SQL` or `-f FILE`.
        let psql = |database: &str, input: [&std::ffi::OsStr; 2]| {
            let mut cmd = step::tool(&self.bin, "psql");
            cmd.args(["-X", "-q", "-A", "-t", "--no-password", "-v", "ON_ERROR_STOP=1", "-h"])
                .arg(socket_dir)
                .args(["-p", &port.to_string(), "-U", &self.config.superuser, "-d", database])
                .args(input)
                .stdin(Stdio::null());
            cmd
        };
        let sql = |text: &'static str| [std::ffi::OsStr::new("-c"), std::ffi::OsStr::new(text)];
        let run = |sup: &mut Supervisor, mut cmd: Command| match step::run_captured(
            sup,
            "psql (PgBouncer's role)",
            &mut cmd,
            false,
        ) {
            Ok(out) if out.code == 0 => Ok(out.stdout),
            Ok(out) => Err(out.stderr.trim().to_string()),
            Err(e) => Err(e.to_string()),
        };
        let listed = run(
            sup,
            psql("template1", sql("SELECT datname FROM pg_database WHERE datallowconn AND NOT pg_is_in_recovery()")),
        );
        let databases: Vec<String> = match listed {
            Ok(out) => out.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect(),
            Err(why) => return tracing::debug!("PgBouncer's role: not yet ({why})"),
        };
        if databases.is_empty() {
            return; // a standby: the primary makes them, and they replicate
        }
        // The verifier goes through a 0600 file, not psql's command line.
        let script = self.config.layout.pooler_files().role_sql;
        let verifier =
            crate::config::pooler::auth_password(&self.config).map(|p| crate::postgres::single_user::scram(p.expose()));
        let role = datadir::write_atomic(&script, render::auth_role_sql(verifier.as_deref()).as_bytes(), 0o600)
            .map_err(|e| format!("cannot write {}: {e}", script.display()))
            .and_then(|()| run(sup, psql("template1", [std::ffi::OsStr::new("-f"), script.as_os_str()])));
        std::fs::remove_file(&script).ok();
        let made = role.and_then(|_| {
            databases.iter().try_for_each(|db| run(sup, psql(db, sql(render::AUTH_FUNCTION_SQL))).map(|_| ()))
        });
        match made {
            Ok(()) => {
                self.auth_ready = true;
                tracing::info!(databases = databases.len(), "PgBouncer's auth_query role and function are in place");
            }
            Err(why) => tracing::error!("PgBouncer: cannot make its auth_query role: {why}"),
        }
    }

    /// Before a switchover's fast shutdown: running transactions finish, new ones wait. In
    /// session mode a client holds its server connection, so PAUSE would wait for every
    /// client to leave: skipped (those clients see their connection end).
    pub fn pause(&mut self) {
        if self.pid.is_none() || self.settings.pool_mode == PoolMode::Session {
            return;
        }
        let mut psql = console_psql(&self.bin, &self.config, self.settings.port, "PAUSE");
        psql.stdout(Stdio::null()).stderr(Stdio::null());
        let Ok(mut child) = psql.spawn() else { return };
        let started = Instant::now();
        while started.elapsed() < PAUSE_WAIT {
            if let Ok(Some(_)) = child.try_wait() {
                tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "PgBouncer paused its clients");
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        child.kill().ok();
        child.wait().ok();
        tracing::warn!("PgBouncer: transactions still running after {} s; going on", PAUSE_WAIT.as_secs());
    }

    /// After a switchover's restart: clients go to `to` (the new primary), resumed once it
    /// accepts writes; `None` (the hand-over failed): resumed here at once.
    pub fn follow(&mut self, to: Option<Address>) {
        match to {
            Some(to) => {
                self.following = Some((to.clone(), true));
                self.reload(&format!("its clients go to {to}, the new primary"));
            }
            None => {
                self.following = None;
                self.reload("the switchover failed: its clients stay here");
                self.console("RESUME").ok();
            }
        }
    }

    /// After postgres: PgBouncer's immediate shutdown (its clients have no server any more).
    pub fn stop(&mut self, sup: &mut Supervisor) {
        let Some(pid) = self.pid.take() else { return };
        let code = sup.terminate(pid, STOP_GRACE);
        tracing::info!(code, "PgBouncer stopped");
    }

    /// For `status`: whether its console answers, and its pools' client counts.
    pub fn document(config: &Config, bin: &Bin) -> Option<serde_json::Value> {
        let settings = config.pooler.as_ref()?;
        let out = console_psql(bin, config, settings.port, "SHOW LISTS").output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| {
            text.lines().find_map(|l| l.strip_prefix(&format!("{name}|"))).and_then(|v| v.trim().parse::<i64>().ok())
        };
        Some(serde_json::json!({
            "port": settings.port,
            "pool_mode": settings.pool_mode.name(),
            "answers": out.status.success(),
            "clients": field("used_clients"),
            "servers": field("used_servers"),
        }))
    }
}
