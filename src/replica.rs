//! A replica: wait for the primary, clone it with pg_basebackup into the staging directory,
//! keep the standby configuration current at every start, and rejoin as a replica with
//! pg_rewind when this data directory was a primary (an old primary after a failover).
//!
//! Every connection to the primary goes through psql or the PostgreSQL tools, which resolve
//! host names with the system's resolver (our static binary has no NSS), and authenticates
//! through a 0600 password file: the password is never on a command line or in a log.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::bootstrap::{self, BootstrapError, Context};
use crate::config::Replica;
use crate::converge;
use crate::datadir::{self, DataDirError};
use crate::render;
use crate::supervise::{Kind, Supervisor};

/// Settings we manage that a stale `postgresql.auto.conf` line would override.
const MANAGED_STANDBY_SETTINGS: [&str; 2] = ["primary_conninfo", "primary_slot_name"];

/// What one attempt to reach the primary tells us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Reachable, our credentials work, and our slot exists.
    Ready,
    /// Not there yet (down, starting, not resolvable): keep trying.
    Retry(String),
    /// It answered and refused us: retrying will not help.
    Rejected { variable: &'static str, reason: String },
}

/// Classifies a failed connection attempt from psql's message.
pub fn classify_probe(stderr: &str) -> Probe {
    let reason = stderr.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("no message").to_string();
    let reason = reason.trim_start_matches("psql: ").trim_start_matches("error: ").to_string();
    let user_refused = stderr.contains("no pg_hba.conf entry")
        || (stderr.contains("role") && stderr.contains("does not exist"))
        || stderr.contains("permission denied to start WAL sender")
        || stderr.contains("must be superuser or replication role");
    if stderr.contains("already exists") {
        Probe::Ready
    } else if stderr.contains("password authentication failed") || stderr.contains("no password supplied") {
        Probe::Rejected { variable: "REPLICATION_PASSWORD", reason }
    } else if user_refused {
        Probe::Rejected { variable: "REPLICATION_USER", reason }
    } else {
        Probe::Retry(reason)
    }
}

/// Delay before attempt `n` (from 0): 0.5 s doubling up to 5 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << attempt.min(4))).min(Duration::from_secs(5))
}

fn write_passfile(path: &Path, replica: &Replica) -> Result<(), DataDirError> {
    let r = &replica.replication;
    datadir::write_atomic(path, render::pgpass(&r.user, r.password.expose()).as_bytes(), 0o600).map_err(|source| {
        DataDirError::Io { pgdata: path.into(), action: "cannot write the password file".into(), source }
    })
}

/// One attempt: a replication connection that creates our slot (if it exists, fine).
fn probe(ctx: &Context, sup: &mut Supervisor, replica: &Replica, passfile: &Path) -> Result<Probe, BootstrapError> {
    let slot = render::quote_identifier(&render::slot_name(&replica.name));
    let command = format!("CREATE_REPLICATION_SLOT {slot} PHYSICAL RESERVE_WAL");
    let (code, _, stderr) = replication_command(ctx, sup, replica, passfile, &command)?;
    Ok(if code == 0 { Probe::Ready } else { classify_probe(&stderr) })
}

/// Waits for the primary with backoff up to PRIMARY_WAIT_TIMEOUT; fails fast when it refuses us.
fn wait_for_primary(
    ctx: &Context,
    sup: &mut Supervisor,
    replica: &Replica,
    passfile: &Path,
) -> Result<(), BootstrapError> {
    let started = Instant::now();
    let mut last_logged: Option<(Instant, String)> = None;
    for attempt in 0.. {
        match probe(ctx, sup, replica, passfile)? {
            Probe::Ready => {
                tracing::info!(
                    attempt = attempt + 1,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "primary reachable"
                );
                return Ok(());
            }
            Probe::Rejected { variable, reason } => {
                return Err(BootstrapError::PrimaryRejected { variable, reason });
            }
            Probe::Retry(reason) => {
                let elapsed = started.elapsed();
                if elapsed >= replica.wait_timeout {
                    return Err(BootstrapError::PrimaryUnreachable {
                        host: replica.primary_host.clone(),
                        port: replica.primary_port,
                        waited: elapsed.as_secs(),
                        reason,
                    });
                }
                // Log when the reason changes, and otherwise every 10 s.
                let quiet =
                    last_logged.as_ref().is_some_and(|(at, r)| *r == reason && at.elapsed() < Duration::from_secs(10));
                if !quiet {
                    tracing::info!(
                        attempt = attempt + 1,
                        elapsed_s = elapsed.as_secs(),
                        timeout_s = replica.wait_timeout.as_secs(),
                        host = %replica.primary_host,
                        port = replica.primary_port,
                        "waiting for the primary: {reason}"
                    );
                    last_logged = Some((Instant::now(), reason));
                }
                let left = replica.wait_timeout.saturating_sub(elapsed);
                if let Some(sig) = sup
                    .pause(backoff(attempt).min(left))
                    .map_err(|source| BootstrapError::Spawn { what: "waiting for the primary".into(), source })?
                {
                    return Err(BootstrapError::Stopped(sig));
                }
            }
        }
    }
    unreachable!("the loop returns")
}

/// Clones the primary into the staging directory and moves it into PGDATA as a standby.
pub fn clone(ctx: &Context, sup: &mut Supervisor, replica: &Replica) -> Result<(), BootstrapError> {
    let pgdata = &ctx.config.pgdata;
    let staging = datadir::fresh_staging(pgdata)?;
    let passfile = staging.root.join("pgpass");
    write_passfile(&passfile, replica)?;
    wait_for_primary(ctx, sup, replica, &passfile)?;
    let started = Instant::now();
    tracing::info!(host = %replica.primary_host, port = replica.primary_port, "cloning the primary with pg_basebackup");
    let mut cmd = bootstrap::tool(ctx.bin, "pg_basebackup");
    cmd.arg("-D")
        .arg(&staging.cluster)
        .arg("-d")
        .arg(render::primary_conninfo(replica, &passfile.to_string_lossy(), false))
        .args(["--wal-method=stream", "--checkpoint=fast", "--no-password", "--progress", "--verbose", "-S"])
        .arg(render::slot_name(&replica.name))
        .stdin(Stdio::null());
    bootstrap::run(sup, "pg_basebackup", &mut cmd, Kind::Tool)?;
    make_standby(ctx, &staging.cluster)?;
    datadir::install_staging(pgdata, staging)?;
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "clone complete");
    Ok(())
}

/// The standby marker, our configuration, and no stale standby settings in auto.conf.
fn make_standby(ctx: &Context, dir: &Path) -> Result<(), BootstrapError> {
    let err = |action: &'static str| DataDirError::io(&ctx.config.pgdata, action);
    fs::write(dir.join("standby.signal"), b"").map_err(err("cannot write standby.signal"))?;
    let auto = dir.join("postgresql.auto.conf");
    if let Ok(text) = fs::read_to_string(&auto) {
        let cleaned = render::without_settings(&text, &MANAGED_STANDBY_SETTINGS);
        if cleaned != text {
            tracing::info!("removing primary_conninfo/primary_slot_name from postgresql.auto.conf: ours apply");
            datadir::write_atomic(&auto, cleaned.as_bytes(), 0o600)
                .map_err(err("cannot rewrite postgresql.auto.conf"))?;
        }
    }
    converge::write_config(ctx.config, ctx.settings, dir).map_err(err("cannot write the configuration"))?;
    Ok(())
}

/// Every start of a standby: password file, configuration, and our slot on the primary
/// (one quick attempt: a replica must start and serve reads while its primary is down;
/// skipped with `slot_known` when this start just created it).
pub fn converge(
    ctx: &Context,
    sup: &mut Supervisor,
    replica: &Replica,
    slot_known: bool,
) -> Result<(), BootstrapError> {
    let pgdata = &ctx.config.pgdata;
    let passfile = pgdata.join(render::PASSFILE);
    write_passfile(&passfile, replica)?;
    make_standby(ctx, pgdata)?;
    if slot_known {
        return Ok(());
    }
    match probe(ctx, sup, replica, &passfile)? {
        Probe::Ready if slot_lost(ctx, sup, replica, &passfile)? => reclone(ctx, sup, replica, &passfile),
        Probe::Ready => Ok(()),
        Probe::Rejected { variable, reason } => Err(BootstrapError::PrimaryRejected { variable, reason }),
        Probe::Retry(reason) => {
            tracing::warn!(
                host = %replica.primary_host,
                port = replica.primary_port,
                "primary not reachable now ({reason}); starting anyway, the standby reconnects by itself"
            );
            Ok(())
        }
    }
}

/// True when the primary still has our slot but invalidated it (its restart LSN is gone):
/// the WAL this replica needs was removed, so it can never catch up by streaming.
fn slot_lost(ctx: &Context, sup: &mut Supervisor, replica: &Replica, passfile: &Path) -> Result<bool, BootstrapError> {
    let slot = render::slot_name(&replica.name);
    let (code, out, _) = replication_command(
        ctx,
        sup,
        replica,
        passfile,
        &format!("READ_REPLICATION_SLOT {}", render::quote_identifier(&slot)),
    )?;
    // Output "physical||" (type, restart LSN, timeline): a physical slot without a restart LSN.
    // Servers before PostgreSQL 15 lack the command: nothing is known, nothing is done.
    Ok(code == 0 && is_lost_slot(&out))
}

pub fn is_lost_slot(read_replication_slot: &str) -> bool {
    let fields: Vec<&str> = read_replication_slot.trim().split('|').collect();
    matches!(fields[..], ["physical", "", ..])
}

/// One replication command through psql: (exit code, stdout, stderr).
fn replication_command(
    ctx: &Context,
    sup: &mut Supervisor,
    replica: &Replica,
    passfile: &Path,
    command: &str,
) -> Result<(i32, String, String), BootstrapError> {
    let mut psql = bootstrap::tool(ctx.bin, "psql");
    psql.args(["-X", "-q", "-A", "-t", "--no-password", "-d"])
        .arg(format!("{} connect_timeout=5", render::primary_conninfo(replica, &passfile.to_string_lossy(), true)))
        .arg("-c")
        .arg(command);
    bootstrap::run_captured(sup, "psql (connecting to the primary)", &mut psql)
}

/// REPLICA_RECLONE=true: drop the invalidated slot, empty this standby's PGDATA, clone again.
/// Otherwise stop with an error that says so: a replica that can never catch up must not
/// pass for one that is merely behind.
fn reclone(ctx: &Context, sup: &mut Supervisor, replica: &Replica, passfile: &Path) -> Result<(), BootstrapError> {
    let slot = render::slot_name(&replica.name);
    if !replica.reclone {
        return Err(BootstrapError::SlotLost { slot });
    }
    tracing::warn!(slot = %slot, "the primary invalidated this replica's slot; cloning again (REPLICA_RECLONE=true)");
    replication_command(
        ctx,
        sup,
        replica,
        passfile,
        &format!("DROP_REPLICATION_SLOT {}", render::quote_identifier(&slot)),
    )?;
    datadir::empty_standby(&ctx.config.pgdata)?;
    clone(ctx, sup, replica)?;
    converge(ctx, sup, replica, true)
}

/// This data directory was a primary (or standalone) and is now configured as a replica: an
/// old primary rejoining after a failover. pg_rewind brings it back to the new primary's
/// history; if it cannot, we stop with its message rather than run a second primary.
pub fn rejoin(ctx: &Context, sup: &mut Supervisor, replica: &Replica) -> Result<(), BootstrapError> {
    let pgdata = &ctx.config.pgdata;
    let passfile = pgdata.join(render::PASSFILE);
    write_passfile(&passfile, replica)?;
    wait_for_primary(ctx, sup, replica, &passfile)?;
    tracing::warn!(
        host = %replica.primary_host,
        "PGDATA holds a primary but the configured role is replica: rewinding it with pg_rewind to follow the new primary"
    );
    // pg_rewind reads files through SQL functions: an ordinary connection to a database.
    let source = format!("{} dbname=postgres", render::primary_conninfo(replica, &passfile.to_string_lossy(), false));
    let mut cmd: Command = bootstrap::tool(ctx.bin, "pg_rewind");
    cmd.arg("--target-pgdata").arg(pgdata).arg("--source-server").arg(source).arg("--progress");
    // pg_rewind copies the primary's files, ours included; `converge` writes ours again.
    bootstrap::run(sup, "pg_rewind (rejoining as a replica)", &mut cmd, Kind::Tool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_failures_are_classified() {
        assert_eq!(
            classify_probe("psql: error: connection to server at \"db\" (10.0.0.2), port 5432 failed: FATAL:  password authentication failed for user \"replicator\"\n"),
            Probe::Rejected {
                variable: "REPLICATION_PASSWORD",
                reason: "connection to server at \"db\" (10.0.0.2), port 5432 failed: FATAL:  password authentication failed for user \"replicator\"".into()
            }
        );
        assert!(matches!(
            classify_probe("FATAL:  no pg_hba.conf entry for replication connection from host \"10.0.0.3\""),
            Probe::Rejected { variable: "REPLICATION_USER", .. }
        ));
        assert_eq!(classify_probe("ERROR:  replication slot \"r1\" already exists"), Probe::Ready);
        for transient in [
            "psql: error: connection to server at \"127.0.0.1\", port 5999 failed: Connection refused",
            "psql: error: could not translate host name \"primary\" to address: Name or service not known",
            "FATAL:  the database system is starting up",
            "psql: error: timeout expired",
        ] {
            assert!(matches!(classify_probe(transient), Probe::Retry(_)), "{transient}");
        }
    }

    #[test]
    fn lost_slots_have_no_restart_lsn() {
        assert!(is_lost_slot("physical||\n"));
        assert!(!is_lost_slot("physical|0/3000000|1\n"));
        assert!(!is_lost_slot("||\n")); // no such slot
        assert!(!is_lost_slot(""));
    }

    #[test]
    fn backoff_doubles_up_to_five_seconds() {
        let waits: Vec<u64> = (0..7).map(|n| backoff(n).as_millis() as u64).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 5000, 5000, 5000]);
    }
}
