//! `HA_MODE=patroni`: the cluster is handed to Patroni on etcd, which elects the leader,
//! clones replicas, fails over and rejoins old leaders with pg_rewind. The entrypoint
//! validates, prepares the directories and drops root as in every mode; then, instead of
//! running postgres, it writes `patroni.yml` and supervises Patroni. Patroni's bootstrap
//! calls back into this binary (`enforce-initdb`), so a new cluster gets the same first boot
//! as a standalone one: POSTGRES_INITDB_ARGS, POSTGRES_DB, the init scripts.
//!
//! A data directory of native mode is taken over with its data (`take_over`); a standby of
//! native mode waits for a leader first, so it never wins the first election over the
//! primary that has more WAL.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::config::layout::PROMOTED_MARKER;
use crate::config::{
    secret_environment, translated_patroni_names, Config, Patroni, OVERRIDE_PREFIX, SECRET_ENVIRONMENT,
};
use crate::lifecycle::backup::scheduler::Scheduler;
use crate::pgdata::datadir::{self, DataDirError, State};
use crate::pgdata::files;
use crate::pid1::supervise::{Kind, Supervisor, Tick};
use crate::postgres::step::{self, exit, Context, StepError};

/// True when Patroni has managed this data directory (see [`crate::config::layout::PATRONI_DYNAMIC_CONF`]).
pub fn managed_by_patroni(pgdata: &Path) -> bool {
    pgdata.join(crate::config::layout::PATRONI_DYNAMIC_CONF).exists()
}

/// Set in Patroni's environment: the `enforce-initdb` its bootstrap runs is ours, under the
/// lock our PID 1 holds on PGDATA. Its value is where that bootstrap notes its failure
/// ([`note_failed_bootstrap`]).
pub const UNDER_PATRONI: &str = "PG_ENTRYPOINT_UNDER_PATRONI";

/// `patroni.yml`, beside the other files of ours outside PGDATA.
pub fn config_file(config: &Config) -> PathBuf {
    config.layout.patroni_config()
}

/// Where Patroni's bootstrap, run by Patroni as `enforce-initdb`, notes that it failed.
fn failure_note(config: &Config) -> PathBuf {
    config.layout.patroni_bootstrap_failed()
}

/// Called at the end of `enforce-initdb`: under Patroni, a failure is noted where our PID 1
/// looks for it when Patroni exits (Patroni gives up after a failed bootstrap, once it has
/// tried to rename PGDATA, which fails on a mounted volume with a traceback).
pub fn note_failed_bootstrap(code: i32) {
    if let Some(note) = std::env::var_os(UNDER_PATRONI).filter(|_| code != 0) {
        if let Err(e) = std::fs::write(&note, format!("{code}\n")) {
            tracing::error!(note = %Path::new(&note).display(), "cannot note the failed bootstrap: {e}");
        }
    }
}

/// Runs Patroni until it exits; returns the exit code (docs/variables.md, "Exit codes").
pub fn serve(ctx: &Context, sup: &mut Supervisor, member: &Patroni) -> i32 {
    // The files first: a native standby's wait for a leader asks with patroni.yml.
    let files = match write_files(ctx, member) {
        Ok(files) => files,
        Err(e) => return failed(e),
    };
    let code = match take_over(ctx, sup) {
        Ok(()) => run_patroni(ctx, sup, member, &files),
        Err(e) => failed(e),
    };
    // Every file with a password in it goes with the process that needed it.
    for path in files.with_passwords() {
        if let Err(e) = files::remove_passfile(&path) {
            tracing::warn!("{e}");
        }
    }
    code
}

/// A step before Patroni ended the start: logged, and its exit code.
fn failed(e: StepError) -> i32 {
    match e {
        StepError::Stopped(_) => tracing::warn!("{e}"),
        _ => tracing::error!("{e}"),
    }
    e.exit_code()
}

/// Starts Patroni and supervises it; the exit code (docs/variables.md, "Exit codes").
fn run_patroni(ctx: &Context, sup: &mut Supervisor, member: &Patroni, files: &Files) -> i32 {
    let note = failure_note(ctx.config);
    let mut cmd = Command::new("patroni");
    cmd.arg(&files.config).env(UNDER_PATRONI, &note);
    for (var, value) in callback_env(ctx, member, &files.secrets) {
        match value {
            Some(value) => cmd.env(var, value),
            None => cmd.env_remove(var),
        };
    }
    // A leader cut off from etcd must demote itself before its key expires (TTL), but with
    // the resolver's defaults (5 s, 2 attempts) each failed lookup of an etcd name blocked
    // Patroni's loop for 10 s: measured in Docker, the cut-off leader still took writes when
    // the new leader took its first. One second, once (glibc reads RES_OPTIONS).
    if std::env::var_os("RES_OPTIONS").is_none() {
        cmd.env("RES_OPTIONS", "timeout:1 attempts:1");
    }
    let child = match sup.spawn(&mut cmd) {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::error!("HA_MODE=patroni needs `patroni` on PATH, and this image has none");
            return exit::CONFIG;
        }
        Err(e) => {
            tracing::error!("cannot start patroni: {e}");
            return exit::STARTUP_FAILED;
        }
    };
    let pid = Pid::from_raw(child.id() as i32);
    tracing::info!(
        pid = pid.as_raw(),
        scope = member.scope,
        name = member.name,
        config = %files.config.display(),
        "patroni started"
    );
    crate::pid1::supervise::trim_resident_code();
    if ctx.config.tls.mode != crate::config::TlsMode::Off {
        // Patroni passes SIGHUP on to postgres, which then reads the refreshed copies.
        let config = ctx.config.clone();
        sup.set_before_reload(Box::new(move || crate::pgdata::tls::refresh(&config)));
    }
    // Scheduled backups on the leader, whichever member that is now.
    let mut backups = ctx.config.backup.as_ref().and_then(|b| Scheduler::new(ctx.config, ctx.bin, b, false));
    let ticking = backups.is_some();
    let mut turn = |sup: &mut Supervisor| {
        if let Some(backups) = backups.as_mut() {
            backups.tick(sup);
        }
    };
    let tick: Option<Tick> = ticking.then_some((std::time::Duration::from_secs(1), &mut turn));
    let code = match sup.supervise(pid, Kind::Patroni, tick) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("lost track of patroni: {e}");
            return exit::STARTUP_FAILED;
        }
    };
    if let Some(backups) = backups.as_mut() {
        backups.stop(sup);
    }
    let stopping = sup.stop_requested().is_some();
    stop_orphaned_postgres(ctx, sup);
    let failed_bootstrap = std::fs::read_to_string(&note).ok();
    if let Err(e) = std::fs::remove_file(&note).or_else(datadir::ignore_not_found) {
        tracing::warn!(note = %note.display(), "cannot remove the note of a failed bootstrap: {e}");
    }
    // A bootstrap we stopped is not a failed one: the exit code says which signal.
    if let (Some(callback_code), false) = (failed_bootstrap, stopping) {
        tracing::error!(
            "Patroni's bootstrap of a new cluster failed: pg-entrypoint enforce-initdb exited with code {} (its \
             messages are above; Patroni's traceback about renaming PGDATA follows from it); the next start \
             redoes the bootstrap",
            callback_code.trim()
        );
        return exit::STARTUP_FAILED;
    }
    match code {
        0 => tracing::info!(code, "patroni exited"),
        c if c > 128 => tracing::error!(code, "patroni died of signal {}", c - 128),
        _ if stopping => tracing::warn!(code, "patroni exited with an error while stopping"),
        _ => tracing::error!(code, "patroni exited with an error"),
    }
    if sup.escalated() {
        tracing::error!(
            "patroni did not stop postgres within SHUTDOWN_TIMEOUT; postgres was stopped immediately: nothing \
             committed is lost, the next start runs crash recovery"
        );
        return exit::SHUTDOWN_ESCALATED;
    }
    code
}

/// What Patroni's environment says instead of the user's: no password (Patroni passes its
/// environment on to postgres), and nothing only root may read. Its bootstrap calls back into
/// this binary (`enforce-initdb`, without our postgres arguments) as the service account,
/// which reads the configuration again: each secret from a 0600 copy of ours (`<VAR>_FILE`),
/// each TLS file from the copy postgres uses, the names that may come from files as values,
/// and the port and socket directories this server really uses (so that it names our files
/// as we do). `None`: removed.
fn callback_env(
    ctx: &Context,
    member: &Patroni,
    secrets: &[(&'static str, PathBuf)],
) -> Vec<(String, Option<OsString>)> {
    let config = ctx.config;
    let mut env: Vec<(String, Option<OsString>)> = Vec::new();
    for var in SECRET_ENVIRONMENT {
        env.push((var.to_string(), None));
        let copy = secrets.iter().find(|(v, _)| *v == var).map(|(_, path)| path.clone().into_os_string());
        env.push((format!("{var}_FILE"), copy));
    }
    env.extend(translated_patroni_names().map(|var| (var.to_string(), None)));
    // pgBackRest's options reach it through our configuration file only.
    env.extend(secret_environment().into_iter().filter(|v| v.starts_with("PGBACKREST_")).map(|var| (var, None)));
    let initdb_args = config.initdb_args.join(" ");
    for (var, value) in [
        ("POSTGRES_USER", &config.superuser),
        ("POSTGRES_DB", &config.database),
        ("POSTGRES_INITDB_ARGS", &initdb_args),
        ("REPLICATION_USER", &member.replication_user),
        ("PATRONI_RESTAPI_USERNAME", &member.rest_api_user),
    ] {
        env.push((format!("{var}_FILE"), None));
        env.push((var.to_string(), Some(value.into())));
    }
    for (var, path) in crate::pgdata::tls::copies_by_variable(config) {
        env.push((var, Some(path.into_os_string())));
    }
    let sockets: Vec<String> = ctx.sockets.socket_dirs.iter().map(|d| d.display().to_string()).collect();
    env.push((format!("{OVERRIDE_PREFIX}PORT"), Some(ctx.sockets.port.to_string().into())));
    env.push((format!("{OVERRIDE_PREFIX}UNIX_SOCKET_DIRECTORIES"), Some(sockets.join(",").into())));
    env
}

/// The files of ours Patroni runs with.
struct Files {
    /// `patroni.yml` (passwords in it).
    config: PathBuf,
    /// The 0600 copy of each secret, by variable, for the bootstrap's `enforce-initdb`.
    secrets: Vec<(&'static str, PathBuf)>,
    /// The password file Patroni writes for its own connections.
    pgpass: PathBuf,
}

impl Files {
    fn with_passwords(&self) -> Vec<PathBuf> {
        let mut all = vec![self.config.clone(), self.pgpass.clone()];
        all.extend(self.secrets.iter().map(|(_, path)| path.clone()));
        all
    }
}

/// Steps before Patroni: the data directory settled (a bootstrap of ours that did not finish
/// is discarded: Patroni sees an empty directory and bootstraps or clones it again), a native
/// cluster's settings handed over, and a native standby held until the cluster has a leader.
fn take_over(ctx: &Context, sup: &mut Supervisor) -> Result<(), StepError> {
    let pgdata = &ctx.config.pgdata;
    datadir::remove_stale_socket_locks(pgdata, &ctx.sockets.socket_dirs, ctx.sockets.port)?;
    let state = match datadir::settle(pgdata)? {
        State::Interrupted => {
            tracing::warn!(pgdata = %pgdata.display(), "discarding a bootstrap that did not finish; Patroni redoes it");
            datadir::discard_all(pgdata)?;
            State::Empty
        }
        state => state,
    };
    match state {
        State::Foreign(entries) => Err(datadir::refuse(pgdata, &entries).into()),
        State::Cluster { standby } => {
            datadir::remove_stale_pidfile(pgdata)?;
            if managed_by_patroni(pgdata) {
                return Ok(());
            }
            tracing::info!(pgdata = %pgdata.display(), standby, "taking over a cluster of native mode");
            // The native settings (synchronous_standby_names, primary_conninfo...) would fight
            // Patroni's: the managed file keeps only the defaults and POSTGRESQL_CONFIG_*.
            files::write_config(ctx.config, ctx.settings, pgdata)
                .map_err(DataDirError::io(pgdata, "cannot rewrite the configuration for Patroni"))?;
            // A `pg-entrypoint sync` value in postgresql.auto.conf would override Patroni's.
            files::drop_run_time_settings(pgdata, &[])
                .map_err(DataDirError::io(pgdata, "cannot rewrite postgresql.auto.conf"))?;
            files::remove_passfile(&ctx.config.layout.passfile())?;
            let marker = pgdata.join(PROMOTED_MARKER);
            std::fs::remove_file(&marker)
                .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
                .map_err(DataDirError::io(pgdata, "cannot remove the promotion marker"))?;
            if standby {
                wait_for_leader(ctx, sup)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Writes `patroni.yml` (0600, outside PGDATA) and a 0600 copy of each secret for the
/// bootstrap Patroni calls back into (see [`callback_env`]); clears an old failure note.
fn write_files(ctx: &Context, member: &Patroni) -> Result<Files, StepError> {
    let config = ctx.config;
    let path = config_file(config);
    let write = |path: &Path, text: &str| -> Result<(), StepError> {
        Ok(datadir::write_atomic(path, text.as_bytes(), 0o600).map_err(DataDirError::io(path, "cannot write"))?)
    };
    let note = failure_note(config);
    std::fs::remove_file(&note)
        .or_else(datadir::ignore_not_found)
        .map_err(DataDirError::io(&note, "cannot remove the note of an earlier failed bootstrap"))?;
    let mut secrets = Vec::new();
    for (var, value) in config.secrets() {
        let file = config.layout.patroni_copy(var);
        write(&file, value.expose())?;
        secrets.push((var, file));
    }
    let advertise = advertise_host(member);
    let exe = std::env::current_exe().map_err(|e| DataDirError::io(&path, "cannot find this program")(e))?;
    let pgpass = config.layout.patroni_passfile();
    let text = crate::render::patroni::patroni_yml(&crate::render::patroni::Resolved {
        config,
        member,
        settings: ctx.settings,
        port: ctx.sockets.port,
        advertise_host: &advertise,
        bindir: ctx.bin.dir(),
        pgpass: pgpass.clone(),
        exe: &exe,
    });
    write(&path, &text)?;
    Ok(Files { config: path, secrets, pgpass })
}

/// `ADVERTISE_HOST`, else the address this host's name resolves to (in Docker, the
/// container's address on its network), else the name itself.
fn advertise_host(member: &Patroni) -> String {
    use std::net::ToSocketAddrs;
    if let Some(host) = &member.advertise_host {
        return host.clone();
    }
    let name = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    let addresses: Vec<std::net::IpAddr> =
        (name.as_str(), 0).to_socket_addrs().map(|a| a.map(|a| a.ip()).collect()).unwrap_or_default();
    let usable = |ip: &&std::net::IpAddr| !ip.is_loopback();
    let chosen = addresses.iter().filter(usable).find(|ip| ip.is_ipv4()).or(addresses.iter().find(usable));
    chosen.map_or(name, ToString::to_string)
}

/// How often a native standby asks whether the cluster has a leader yet.
const LEADER_POLL: Duration = Duration::from_secs(2);

/// A standby of native mode must not start Patroni before the cluster has a leader: alone,
/// it would initialise the cluster in etcd and win the election, and the former primary's
/// commits that it lacks would be rewound away when that primary joins.
fn wait_for_leader(ctx: &Context, sup: &mut Supervisor) -> Result<(), StepError> {
    let config_path = config_file(ctx.config);
    let started = Instant::now();
    let mut next_notice = Duration::ZERO;
    loop {
        // patronictl reads the DCS settings (and PATRONI_* variables) as Patroni would.
        let mut list = Command::new("patronictl");
        list.arg("-c").arg(&config_path).args(["list", "--format", "json"]);
        for var in secret_environment().into_iter().chain(translated_patroni_names().map(String::from)) {
            list.env_remove(var);
        }
        let answer = step::run_captured(sup, "patronictl list", &mut list, false)?;
        if answer.code == 0 && answer.stdout.contains("\"Leader\"") {
            tracing::info!(waited_s = started.elapsed().as_secs(), "the cluster has a leader; joining it");
            return Ok(());
        }
        if started.elapsed() >= next_notice {
            let answer = if answer.code == 0 { "no leader yet".into() } else { answer.stderr.trim().to_string() };
            tracing::warn!(
                %answer,
                "this data directory is a standby of native mode: waiting for the cluster to have a leader \
                 (start the former primary with HA_MODE=patroni first) so that this standby never wins the first \
                 election with less WAL than that primary"
            );
            next_notice += Duration::from_secs(30);
        }
        if let Some(sig) = sup.pause(LEADER_POLL).map_err(|e| DataDirError::io(&config_path, "cannot wait")(e))? {
            return Err(StepError::Stopped(sig));
        }
    }
}

/// Patroni starts postgres through a helper that exits at once, so the postmaster is our
/// child (we are PID 1 or the subreaper). A Patroni that died or was killed leaves it running:
/// it is stopped fast here (immediately once SHUTDOWN_TIMEOUT has passed, on a stop request).
fn stop_orphaned_postgres(ctx: &Context, sup: &mut Supervisor) {
    let Some(pid) = datadir::live_postmaster(&ctx.config.pgdata) else { return };
    let pid = Pid::from_raw(pid);
    if !sup.adopt(pid) {
        return;
    }
    tracing::warn!(pid = pid.as_raw(), "patroni left postgres running; stopping it");
    let _ = kill(pid, Signal::SIGINT);
    if let Err(e) = sup.wait(pid, Kind::Postgres, "postgres left by patroni") {
        tracing::error!("cannot wait for postgres: {e}");
    }
}
