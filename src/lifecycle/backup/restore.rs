//! `PGBACKREST_RESTORE=true` on an empty PGDATA: the cluster comes from the repository
//! instead of initdb. pgBackRest restores into the staging directory; a private server
//! (no TCP, its socket in the staging directory) recovers to the target and promotes on a
//! new timeline; only then does the cluster move into PGDATA, as a bootstrap's does. A stop
//! or a crash at any point leaves the staging directory, which the next start throws away
//! and restores again: PGDATA never holds a half-restored cluster that could start.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::time::Instant;

use crate::config::backup::{Restore, RestoreTarget};
use crate::pgdata::datadir::{self, DataDirError};
use crate::pgdata::files;
use crate::pid1::supervise::Supervisor;
use crate::postgres::backrest::{self, Backrest};
use crate::postgres::step::{self, Context, StepError};
use crate::postgres::tempserver::TempServer;

/// pgBackRest's recovery settings, which served the restore and leave with it (ours, in the
/// managed file, stay).
const RECOVERY_SETTINGS: [&str; 6] = [
    "restore_command",
    "recovery_target",
    "recovery_target_time",
    "recovery_target_xid",
    "recovery_target_name",
    "recovery_target_action",
];

pub fn at_start(ctx: &Context, sup: &mut Supervisor, restore: &Restore) -> Result<(), StepError> {
    let staging_root = ctx.config.pgdata.join(datadir::STAGING);
    let result = restore_into_staging(ctx, sup, restore);
    if let Err(e) = &result {
        // PGDATA as it was (empty); a stop leaves the staging directory to the next start.
        if !matches!(e, StepError::Stopped(_)) {
            fs::remove_dir_all(&staging_root).ok();
        }
    }
    result
}

fn restore_into_staging(ctx: &Context, sup: &mut Supervisor, restore: &Restore) -> Result<(), StepError> {
    let config = ctx.config;
    let (Some(backup), Some(backrest)) = (&config.backup, Backrest::of(config)) else {
        unreachable!("a restore is only configured with PGBACKREST_ENABLE")
    };
    let pgdata = &config.pgdata;
    let staging = datadir::fresh_staging(pgdata)?;
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging.cluster)
        .map_err(DataDirError::io(pgdata, "cannot create the directory to restore into"))?;
    let began = Instant::now();
    tracing::info!(
        stanza = %backup.stanza,
        target = %describe(&restore.target),
        set = restore.set.as_deref().unwrap_or("latest"),
        "PGBACKREST_RESTORE: restoring PGDATA from the repository"
    );
    let mut cmd = backrest.restore_into(&staging.cluster);
    cmd.args(restore.target.args());
    if let Some(set) = &restore.set {
        cmd.arg(format!("--set={set}"));
    }
    let out = step::run_captured(sup, "pgbackrest restore", &mut cmd, true)?;
    if out.code != 0 {
        let said = format!("{}{}", out.stdout, out.stderr);
        let variables = matches!(backrest::error_code(&said), Some(28 | 31 | 43 | 55 | 75 | 103));
        return Err(StepError::Restore { reason: backrest::explain(&said, backup), variables });
    }
    let copied = began.elapsed();
    let bytes = dir_size(&staging.cluster);
    // Our settings and access rules, not those of the server the backup was taken from.
    files::write_config(config, ctx.settings, &staging.cluster)
        .map_err(DataDirError::io(pgdata, "cannot write the configuration of the restored cluster"))?;
    let recovering = Instant::now();
    tracing::info!(copied_s = copied.as_secs(), mb = bytes >> 20, "files restored; recovering to the target");
    let unreached = |e: StepError| match e {
        StepError::Failed { .. } => StepError::Restore {
            reason: format!(
                "the restored server stopped before its recovery ended (target: {}); its messages above say why: \
                 a target past the end of the archived WAL or before the end of the backup (check \
                 PGBACKREST_RESTORE_TARGET and PGBACKREST_RESTORE_SET), or a setting this server cannot run with",
                describe(&restore.target)
            ),
            variables: false,
        },
        other => other,
    };
    // "ready" once it accepts read-only connections; recovery goes on until promoted.
    let mut server = TempServer::start(ctx, sup, &staging.cluster, &["ready"], std::slice::from_ref(&staging.cluster))
        .map_err(unreached)?;
    let mut client = None;
    let mut refused = None;
    let mut promoted = || {
        if client.is_none() {
            match server_client(&staging.cluster, ctx) {
                Ok(c) => client = Some(c),
                // The restored cluster has no such role: asking again would never end.
                Err(e) if e.code() == Some(&postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION) => {
                    refused = Some(crate::postgres::local::describe(&e));
                    return true;
                }
                Err(_) => return false,
            }
        }
        match client.as_mut().map(|c| c.query_one("SELECT pg_is_in_recovery()", &[])) {
            Some(Ok(row)) => !row.get::<_, bool>(0),
            Some(Err(_)) => {
                client = None;
                false
            }
            None => false,
        }
    };
    server.wait_until(sup, "recovery to the restore target", &mut promoted).map_err(unreached)?;
    if let Some(why) = refused {
        server.stop(sup)?;
        return Err(StepError::Restore {
            reason: format!(
                "the restored cluster refused POSTGRES_USER {:?} ({why}); set POSTGRES_USER to the superuser of the \
                 cluster that was backed up",
                config.superuser
            ),
            variables: true,
        });
    }
    drop(client);
    server.stop(sup)?;
    files::drop_run_time_settings(&staging.cluster, &RECOVERY_SETTINGS)
        .map_err(DataDirError::io(pgdata, "cannot remove the restore's recovery settings"))?;
    // A switchover record in the backup said its source's role, not this cluster's.
    crate::pgdata::role_record::remove(&staging.cluster)
        .map_err(DataDirError::io(pgdata, "cannot remove the restored switchover record"))?;
    if let Some(made) = super::restored_with(config) {
        fs::write(staging.cluster.join(crate::config::layout::RESTORED_MARKER), made)
            .map_err(DataDirError::io(pgdata, "cannot mark the cluster restored"))?;
    }
    datadir::install_staging(pgdata, staging, false)?;
    let took = began.elapsed();
    tracing::info!(
        took_s = took.as_secs_f64().round(),
        recovery_s = recovering.elapsed().as_secs(),
        mb = bytes >> 20,
        mb_per_s = ((bytes as f64 / (1 << 20) as f64) / took.as_secs_f64().max(0.001)).round(),
        "restored and promoted on a new timeline; starting"
    );
    Ok(())
}

/// The restored cluster's private server, as the superuser.
fn server_client(socket_dir: &Path, ctx: &Context) -> Result<postgres::Client, postgres::Error> {
    crate::postgres::local::socket_client(
        socket_dir,
        ctx.sockets.port,
        &ctx.config.superuser,
        "postgres",
        std::time::Duration::from_secs(2),
    )
}

fn describe(target: &RestoreTarget) -> String {
    match target {
        RestoreTarget::Latest => "latest: the end of the archived WAL".into(),
        RestoreTarget::Immediate => "immediate: the end of the backup".into(),
        RestoreTarget::Point { kind, target } => format!("{kind} {target}"),
    }
}

/// Bytes of the regular files under `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}
