//! Every start: bring an existing data directory to the configured role. The configuration
//! we own is re-rendered from the environment (so nothing accumulates and changes take effect
//! on restart); on a primary the replication role and its password are (re)applied.

use crate::config::Role;
use crate::pgdata::datadir::DataDirError;
use crate::pgdata::files;
use crate::pid1::supervise::Supervisor;
use crate::postgres::single_user;
use crate::postgres::step::{Context, StepError};

/// Converges an existing cluster (not a standby) to the configured role before it starts.
pub fn existing_cluster(ctx: &Context, sup: &mut Supervisor) -> Result<(), StepError> {
    let pgdata = &ctx.config.pgdata;
    files::write_config(ctx.config, ctx.settings, pgdata)
        .map_err(DataDirError::io(pgdata, "cannot write the configuration"))?;
    if files::drop_run_time_settings(pgdata, &[])
        .map_err(DataDirError::io(pgdata, "cannot rewrite postgresql.auto.conf"))?
    {
        tracing::info!(
            "synchronous_standby_names set by `pg-entrypoint sync` ends here: REPLICATION_SYNCHRONOUS_* apply"
        );
    }
    if let Role::Primary(replication) = &ctx.config.role {
        // Creates the role when a standalone server becomes a primary, and re-applies the
        // password every start so that rotating REPLICATION_PASSWORD is a restart.
        tracing::info!(user = %replication.user, "applying the replication role");
        single_user::run(ctx, sup, pgdata, &single_user::replication_role(replication))?;
    }
    Ok(())
}
