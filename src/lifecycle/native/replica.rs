//! A replica: wait for the primary, clone it with pg_basebackup into the staging directory,
//! keep the standby configuration current at every start, and rejoin as a replica with
//! pg_rewind when this data directory was a primary (an old primary after a failover).
//!
//! Before anything is created on the primary or changed here, the primary's system
//! identifier is compared with ours: a re-initialised primary is another cluster.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::layout::{PROMOTED_MARKER, RESTORED_MARKER};
use crate::config::{slot_name, Replica};
use crate::pgdata::datadir::{self, DataDirError};
use crate::pgdata::files;
use crate::pgdata::role_record;
use crate::pid1::supervise::{Kind, Supervisor};
use crate::postgres::member::{self, Answer, Connector, Identity, Slot};
use crate::postgres::step::{self, Context, StepError};
use crate::render;

/// Settings we manage that a stale `postgresql.auto.conf` line would override.
/// Ours, in the managed file; a copy in postgresql.auto.conf (pg_basebackup -R, a setting
/// copied from the primary) would win over it. With backups on, `restore_command` too (a
/// restore by pgBackRest writes its own there); without, a user's own stays.
const MANAGED_STANDBY_SETTINGS: [&str; 2] = ["primary_conninfo", "primary_slot_name"];
/// In the staging directory: how many clones failed in a row, and the last reason.
const CLONE_FAILURES: &str = "clone-failures";

/// Delay before attempt `n` (from 0): 0.5 s doubling up to 5 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << attempt.min(4))).min(Duration::from_secs(5))
}

/// Delay before a clone that follows `failures` failed clones: 10 s doubling up to 5 min, so a
/// crash-looping container does not force a checkpoint on the primary every few seconds.
pub fn clone_backoff(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => Duration::from_secs(10u64.saturating_mul(1 << (n - 1).min(5))).min(Duration::from_secs(300)),
    }
}

/// One question to the primary: who it is, and the state of our slot.
fn ask_primary(ctx: &Context, sup: &mut Supervisor, replica: &Replica) -> Result<Answer, StepError> {
    let slot = slot_name(&replica.name);
    let mut cmd = Connector::replica(ctx.config, ctx.bin, replica).ask(&replica.primary(), Some(&slot));
    let out = step::run_captured(sup, "psql (asking the primary)", &mut cmd, false)?;
    Ok(member::parse(out.code, &out.stdout, &out.stderr))
}

/// Waits for the primary with backoff up to PRIMARY_WAIT_TIMEOUT; fails fast when it refuses us.
fn wait_for_primary(ctx: &Context, sup: &mut Supervisor, replica: &Replica) -> Result<Identity, StepError> {
    let started = Instant::now();
    let mut last_logged: Option<(Instant, String)> = None;
    for attempt in 0.. {
        match ask_primary(ctx, sup, replica)? {
            Answer::Identity(identity) => {
                tracing::info!(
                    attempt = attempt + 1,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "primary reachable"
                );
                return Ok(identity);
            }
            Answer::Rejected { variable, reason } => return Err(StepError::PrimaryRejected { variable, reason }),
            Answer::Untrusted(reason) => return Err(untrusted(replica, reason)),
            Answer::Unreachable(reason) => {
                let elapsed = started.elapsed();
                if elapsed >= replica.wait_timeout {
                    return Err(StepError::PrimaryUnreachable {
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
                step::pause(sup, backoff(attempt).min(left), "waiting for the primary")?;
            }
        }
    }
    unreachable!("the loop returns")
}

fn untrusted(replica: &Replica, reason: String) -> StepError {
    StepError::PrimaryUntrusted { host: replica.primary_host.clone(), port: replica.primary_port, reason }
}

/// The primary must be of this data directory's cluster (when there is one).
fn same_cluster(ctx: &Context, replica: &Replica, primary: &Identity) -> Result<(), StepError> {
    let Some(ours) = datadir::system_identifier(&ctx.config.pgdata) else { return Ok(()) };
    if ours == primary.system_id {
        return Ok(());
    }
    Err(StepError::ForeignPrimary {
        host: replica.primary_host.clone(),
        port: replica.primary_port,
        ours,
        theirs: primary.system_id,
    })
}

/// Creates our slot on the primary when it has none, and replaces an invalidated one (a fresh
/// clone does not need the WAL it lost).
fn ensure_slot(ctx: &Context, sup: &mut Supervisor, replica: &Replica, slot: Option<Slot>) -> Result<(), StepError> {
    let name = slot_name(&replica.name);
    let commands = match slot {
        Some(Slot::Present) | None => return Ok(()),
        Some(Slot::Missing) => vec![member::create_slot(&name)],
        Some(Slot::Invalidated) => {
            vec![format!("DROP_REPLICATION_SLOT {}", render::quote_identifier(&name)), member::create_slot(&name)]
        }
    };
    let mut cmd = Connector::replica(ctx.config, ctx.bin, replica).replication_psql(&replica.primary(), &commands);
    let out = step::run_captured(sup, "psql (creating the slot on the primary)", &mut cmd, false)?;
    if out.code != 0 || !out.stderr.trim().is_empty() {
        tracing::warn!(slot = %name, "could not create the replication slot on the primary: {}", out.stderr.trim());
    } else {
        tracing::info!(slot = %name, "replication slot created on the primary");
    }
    Ok(())
}

/// Clones the primary into the staging directory and moves it into PGDATA as a standby.
pub fn clone(ctx: &Context, sup: &mut Supervisor, replica: &Replica) -> Result<(), StepError> {
    let pgdata = &ctx.config.pgdata;
    let (failures, last_reason) = read_clone_failures(pgdata);
    let staging = datadir::fresh_staging(pgdata)?;
    let passfile = ctx.config.layout.passfile();
    files::write_passfile(&passfile, &replica.replication)?;
    if failures > 0 {
        write_clone_failures(&staging.root, failures, &last_reason);
    }
    let cloned = clone_into(ctx, sup, replica, &staging, &passfile, failures, &last_reason);
    match cloned {
        Ok(()) => {
            // The source's switchover record says its role, not this copy's.
            role_record::remove(&staging.cluster)
                .map_err(DataDirError::io(&ctx.config.pgdata, "cannot remove the copied switchover record"))?;
            make_standby(ctx, &staging.cluster)?;
            datadir::install_staging(pgdata, staging, false)?;
            Ok(())
        }
        Err(e) => {
            // The password file never outlives a failed clone.
            fs::remove_file(&passfile).ok();
            Err(e)
        }
    }
}

fn clone_into(
    ctx: &Context,
    sup: &mut Supervisor,
    replica: &Replica,
    staging: &datadir::Staging,
    passfile: &Path,
    failures: u32,
    last_reason: &str,
) -> Result<(), StepError> {
    let primary = wait_for_primary(ctx, sup, replica)?;
    if failures > 0 {
        let wait = clone_backoff(failures);
        tracing::warn!(
            failures,
            wait_s = wait.as_secs(),
            "the last {failures} clone(s) failed ({last_reason}); waiting before cloning again"
        );
        step::pause(sup, wait, "waiting before cloning again")?;
    }
    ensure_slot(ctx, sup, replica, primary.slot)?;
    let started = Instant::now();
    if replica.clone_from_repository && clone_from_repository(ctx, sup, staging, primary.system_id)? {
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "clone from the repository complete");
        return Ok(());
    }
    tracing::info!(host = %replica.primary_host, port = replica.primary_port, "cloning the primary with pg_basebackup");
    let mut cmd = step::tool(ctx.bin, "pg_basebackup");
    cmd.arg("-D")
        .arg(&staging.cluster)
        .arg("-d")
        .arg(render::primary_conninfo(ctx.config, replica, &passfile.to_string_lossy(), false))
        .args(["--wal-method=stream", "--checkpoint=fast", "--no-password", "--progress", "--verbose", "-S"])
        .arg(slot_name(&replica.name))
        .stdin(Stdio::null());
    let out = step::run_captured(sup, "pg_basebackup", &mut cmd, true)?;
    if out.code != 0 {
        let no_space = out.stderr.contains("No space left on device");
        let reason = if no_space { "no space left on device" } else { "pg_basebackup failed" };
        write_clone_failures(&staging.root, failures + 1, reason);
        return Err(if no_space {
            StepError::NoSpace { pgdata: ctx.config.pgdata.clone() }
        } else {
            StepError::Failed { what: "pg_basebackup".into(), code: out.code }
        });
    }
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "clone complete");
    Ok(())
}

/// `REPLICA_CLONE_METHOD=pgbackrest`: the latest backup restored as a standby (the WAL since
/// then comes from the archive, then from the primary). False, with a warning, when the
/// repository cannot serve one: pg_basebackup then clones the primary.
fn clone_from_repository(
    ctx: &Context,
    sup: &mut Supervisor,
    staging: &datadir::Staging,
    primary_system_id: u64,
) -> Result<bool, StepError> {
    let Some(backrest) = crate::postgres::backrest::Backrest::of(ctx.config) else { return Ok(false) };
    tracing::info!("cloning from the repository's latest backup (REPLICA_CLONE_METHOD=pgbackrest)");
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging.cluster)
        .map_err(DataDirError::io(&ctx.config.pgdata, "cannot create the directory to restore into"))?;
    let mut cmd = backrest.restore_into(&staging.cluster);
    cmd.arg("--type=standby");
    let out = step::run_captured(sup, "pgbackrest restore", &mut cmd, true)?;
    let restored = datadir::system_identifier(&staging.cluster);
    let why = if out.code != 0 {
        let said = format!("{}{}", out.stdout, out.stderr);
        ctx.config.backup.as_ref().map_or_else(String::new, |b| crate::postgres::backrest::explain(&said, b))
    } else if restored != Some(primary_system_id) {
        // Another cluster's backup could never stream from this primary.
        format!(
            "its backup is of another cluster (system identifier {}, the primary's {primary_system_id})",
            restored.map_or_else(|| "unknown".to_string(), |id| id.to_string())
        )
    } else {
        return Ok(true);
    };
    tracing::warn!("the repository could not make this replica ({why}); cloning the primary with pg_basebackup");
    fs::remove_dir_all(&staging.cluster)
        .map_err(DataDirError::io(&ctx.config.pgdata, "cannot empty the staging directory"))?;
    Ok(false)
}

/// (count, last reason) of failed clones, kept in the staging directory across restarts.
fn read_clone_failures(pgdata: &Path) -> (u32, String) {
    let text = fs::read_to_string(pgdata.join(datadir::STAGING).join(CLONE_FAILURES)).unwrap_or_default();
    let (count, reason) = text.split_once('\n').unwrap_or((&text, ""));
    (count.trim().parse().unwrap_or(0), reason.trim().to_string())
}

fn write_clone_failures(staging_root: &Path, count: u32, reason: &str) {
    let _ = datadir::write_atomic(&staging_root.join(CLONE_FAILURES), format!("{count}\n{reason}\n").as_bytes(), 0o600);
}

/// The standby marker, our configuration, no stale standby settings in auto.conf, and no
/// promotion marker copied from a promoted source (pg_basebackup and pg_rewind copy it).
fn make_standby(ctx: &Context, dir: &Path) -> Result<(), StepError> {
    let err = |action: &'static str| DataDirError::io(&ctx.config.pgdata, action);
    fs::write(dir.join("standby.signal"), b"").map_err(err("cannot write standby.signal"))?;
    match fs::remove_file(dir.join(PROMOTED_MARKER)) {
        Ok(()) => tracing::info!("removed a promotion marker copied from the primary: this node is a standby"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("cannot remove the copied promotion marker")(e).into()),
    }
    // Says which restore made the primary's cluster, not this copy.
    fs::remove_file(dir.join(RESTORED_MARKER))
        .or_else(datadir::ignore_not_found)
        .map_err(err("cannot remove the copied restore marker"))?;
    let mut managed = MANAGED_STANDBY_SETTINGS.to_vec();
    if ctx.config.backup.is_some() {
        managed.push("restore_command");
    }
    if files::drop_run_time_settings(dir, &managed).map_err(err("cannot rewrite postgresql.auto.conf"))? {
        tracing::info!("removed our settings from postgresql.auto.conf (copied, or set at run time): ours apply");
    }
    files::write_config(ctx.config, ctx.settings, dir).map_err(err("cannot write the configuration"))?;
    Ok(())
}

/// Every start of a standby: password file, configuration, and one quick question to the
/// primary (a replica must start and serve reads while its primary is down; the slot keeper
/// goes on asking once postgres runs). Skipped with `just_cloned`.
pub fn converge(ctx: &Context, sup: &mut Supervisor, replica: &Replica, just_cloned: bool) -> Result<(), StepError> {
    let pgdata = &ctx.config.pgdata;
    let passfile = ctx.config.layout.passfile();
    files::write_passfile(&passfile, &replica.replication)?;
    make_standby(ctx, pgdata)?;
    if just_cloned {
        return Ok(());
    }
    match ask_primary(ctx, sup, replica)? {
        Answer::Identity(primary) => {
            same_cluster(ctx, replica, &primary)?;
            match primary.slot {
                Some(Slot::Invalidated) => reclone(ctx, sup, replica),
                slot => ensure_slot(ctx, sup, replica, slot),
            }
        }
        Answer::Rejected { variable, reason } => Err(StepError::PrimaryRejected { variable, reason }),
        Answer::Untrusted(reason) => Err(untrusted(replica, reason)),
        Answer::Unreachable(reason) => {
            tracing::warn!(
                host = %replica.primary_host,
                port = replica.primary_port,
                "primary not reachable now ({reason}); starting anyway, the standby reconnects by itself"
            );
            Ok(())
        }
    }
}

/// REPLICA_RECLONE=true: empty this standby's PGDATA and clone again (the invalidated slot is
/// replaced). Otherwise stop with an error that says so: a replica that can never catch up
/// must not pass for one that is merely behind.
fn reclone(ctx: &Context, sup: &mut Supervisor, replica: &Replica) -> Result<(), StepError> {
    let slot = slot_name(&replica.name);
    if !replica.reclone {
        return Err(StepError::SlotLost { slot });
    }
    tracing::warn!(slot = %slot, "the primary invalidated this replica's slot; cloning again (REPLICA_RECLONE=true)");
    ensure_slot(ctx, sup, replica, Some(Slot::Invalidated))?;
    datadir::empty_standby(&ctx.config.pgdata)?;
    clone(ctx, sup, replica)?;
    converge(ctx, sup, replica, true)
}

/// This data directory was a primary (or standalone) and is now configured as a replica: an
/// old primary rejoining after a failover. pg_rewind brings it back to the new primary's
/// history; if it cannot, we stop with its message rather than run a second primary.
pub fn rejoin(ctx: &Context, sup: &mut Supervisor, replica: &Replica) -> Result<(), StepError> {
    let pgdata = &ctx.config.pgdata;
    let passfile = ctx.config.layout.passfile();
    files::write_passfile(&passfile, &replica.replication)?;
    let primary = wait_for_primary(ctx, sup, replica)?;
    same_cluster(ctx, replica, &primary)?;
    tracing::warn!(
        host = %replica.primary_host,
        "PGDATA holds a primary but the configured role is replica: rewinding it with pg_rewind to follow the new primary"
    );
    // pg_rewind reads files through SQL functions: an ordinary connection to a database.
    let source = format!(
        "{} dbname=postgres",
        render::primary_conninfo(ctx.config, replica, &passfile.to_string_lossy(), false)
    );
    checkpoint_source(ctx, sup, &source)?;
    let mut cmd: Command = step::tool(ctx.bin, "pg_rewind");
    cmd.arg("--target-pgdata").arg(pgdata).arg("--source-server").arg(source).arg("--progress");
    // pg_rewind copies the primary's files, ours included; `converge` writes ours again, and
    // this node's switchover record is put back as it was.
    role_record::keep_across(pgdata, || step::run(sup, "pg_rewind (rejoining as a replica)", &mut cmd, Kind::Tool))
        .map_err(DataDirError::io(pgdata, "cannot put back the switchover record after pg_rewind"))?
}

/// PostgreSQL 15's pg_rewind takes the source's timeline from its control file, which a
/// just-promoted primary rewrites only at its first checkpoint after the promotion (a spread
/// one, minutes with a long checkpoint_timeout). Until then pg_rewind sees one timeline, says
/// "no rewind required", and the old primary's diverged WAL stops it from ever following.
/// A CHECKPOINT on the source first (the replication role has pg_checkpoint) closes that gap;
/// PostgreSQL 16 reads the timeline correctly, so a refusal there is only worth a warning.
fn checkpoint_source(ctx: &Context, sup: &mut Supervisor, source: &str) -> Result<(), StepError> {
    let mut psql = step::tool(ctx.bin, "psql");
    psql.args(["-X", "-q", "--no-password", "-d", source, "-c", "CHECKPOINT"]).stdin(Stdio::null());
    let out = step::run_captured(sup, "psql (CHECKPOINT on the new primary)", &mut psql, false)?;
    if out.code != 0 {
        tracing::warn!(
            "could not run CHECKPOINT on the new primary before pg_rewind ({}); on PostgreSQL 15 a primary \
             promoted moments ago may then look as if no rewind were needed",
            out.stderr.trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_seconds() {
        let waits: Vec<u64> = (0..7).map(|n| backoff(n).as_millis() as u64).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 5000, 5000, 5000]);
    }

    #[test]
    fn failed_clones_back_off_up_to_five_minutes() {
        let waits: Vec<u64> = (0..9).map(|n| clone_backoff(n).as_secs()).collect();
        assert_eq!(waits, [0, 10, 20, 40, 80, 160, 300, 300, 300]);
    }
}
