//! Promotion, always onto a new timeline (what pg_rewind and the other replicas need to tell
//! its history from the old primary's; simply deleting standby.signal would not switch).
//!
//! - At start: a standby data directory whose configured role is now primary or standalone.
//! - At run time: `pg-entrypoint promote`. It leaves [`PROMOTED_MARKER`] in PGDATA so that a
//!   restart with the environment still saying `replica` refuses to start instead of
//!   rewinding away the writes made since (set the role to primary, and the marker goes).

use std::fs;
use std::process::Stdio;
use std::time::Duration;

use crate::bootstrap::{self, BootstrapError, Context};
use crate::converge;
use crate::datadir::DataDirError;
use crate::local::{describe, Local};
use crate::supervise::{Kind, Supervisor};
use crate::tempserver::TempServer;

/// Left in PGDATA by a run-time promotion until the environment says primary too.
pub const PROMOTED_MARKER: &str = "pg-entrypoint.promoted";

/// Before converging an existing cluster: reconcile a run-time promotion with the role.
pub fn check_runtime_promotion(ctx: &Context, standby: bool) -> Result<(), BootstrapError> {
    let marker = ctx.config.pgdata.join(PROMOTED_MARKER);
    if !marker.exists() {
        return Ok(());
    }
    match (&ctx.config.role, standby) {
        (crate::config::Role::Replica(r), false) => {
            Err(BootstrapError::PromotedButReplica { host: r.primary_host.clone() })
        }
        // The environment now agrees (primary/standalone), or the promotion never happened.
        _ => {
            fs::remove_file(&marker)
                .map_err(DataDirError::io(&ctx.config.pgdata, "cannot remove the promotion marker"))?;
            Ok(())
        }
    }
}

/// `pg-entrypoint promote`: promotes the running standby and waits until it accepts writes.
pub fn promote_running() -> i32 {
    match try_promote_running() {
        Ok(timeline) => {
            println!(
                "promoted: now a primary on timeline {timeline}; set REPLICATION_ROLE=primary before the next restart"
            );
            0
        }
        Err(e) => {
            eprintln!("promote: {e}");
            1
        }
    }
}

fn try_promote_running() -> Result<i32, String> {
    let local = Local::find().map_err(|e| e.to_string())?;
    let mut client = local.connect(Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let in_recovery: bool = client.query_one("SELECT pg_is_in_recovery()", &[]).map_err(|e| describe(&e))?.get(0);
    if !in_recovery {
        return Err("this server is not a standby (it already accepts writes); nothing to promote".into());
    }
    let marker = local.path(PROMOTED_MARKER);
    fs::write(&marker, b"promoted by pg-entrypoint promote\n").map_err(|e| format!("cannot write {marker:?}: {e}"))?;
    let promoted =
        client.query_one("SELECT pg_promote(true, 60)", &[]).map_err(|e| describe(&e)).map(|r| r.get::<_, bool>(0));
    match promoted {
        Ok(true) => {}
        // The request stands and postgres may still finish it: keep the marker, so that a
        // restart with the environment saying replica cannot rewind the writes away.
        Ok(false) => return Err("promotion requested but not finished within 60 s; it may still complete".into()),
        Err(e) => {
            fs::remove_file(&marker).ok();
            return Err(e);
        }
    }
    let timeline: i32 = client
        .query_one("SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int", &[])
        .map_err(|e| describe(&e))?
        .get(0);
    Ok(timeline)
}

pub fn promote_standby(ctx: &Context, sup: &mut Supervisor) -> Result<(), BootstrapError> {
    let pgdata = &ctx.config.pgdata;
    tracing::warn!(
        role = ctx.config.role.name(),
        "PGDATA is a standby but the configured role is {}: promoting it",
        ctx.config.role.name()
    );
    // The new role's configuration: no primary_conninfo, so it does not follow anyone.
    converge::write_config(ctx.config, ctx.settings, pgdata)
        .map_err(DataDirError::io(pgdata, "cannot write the configuration"))?;
    let server = TempServer::start(ctx, sup, pgdata, &["standby", "ready"])?;
    let mut cmd = bootstrap::tool(ctx.bin, "pg_ctl");
    cmd.arg("promote").arg("-D").arg(pgdata).args(["-w", "-t", "120"]).stdout(Stdio::null());
    let promoted = bootstrap::run(sup, "pg_ctl promote", &mut cmd, Kind::Tool);
    server.stop(sup)?;
    promoted?;
    tracing::warn!("promoted: this server is no longer a standby");
    Ok(())
}
