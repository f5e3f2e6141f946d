//! A standby data directory whose configured role is now primary or standalone: promote it
//! before the real start, so it continues on a new timeline (what pg_rewind and the other
//! replicas need to tell its history from the old primary's). Simply deleting
//! standby.signal would end recovery on the old timeline.

use std::process::Stdio;

use crate::bootstrap::{self, BootstrapError, Context};
use crate::converge;
use crate::datadir::DataDirError;
use crate::supervise::{Kind, Supervisor};
use crate::tempserver::TempServer;

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
