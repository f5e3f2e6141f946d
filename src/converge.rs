//! Every start: bring an existing data directory to the configured role. The configuration
//! we own is re-rendered from the environment (so nothing accumulates and changes take effect
//! on restart); on a primary the replication role and its password are (re)applied.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::bootstrap::{self, BootstrapError, Context};
use crate::config::{Config, Role};
use crate::render::{self, Settings};
use crate::supervise::Supervisor;

/// Writes the managed include file, adds the include line to `postgresql.conf` once, and
/// replaces the managed block of `pg_hba.conf`. Files are only rewritten when they change.
pub fn write_config(config: &Config, settings: &Settings, dir: &Path) -> io::Result<()> {
    replace_if_changed(&dir.join(render::MANAGED_CONF), &render::managed_conf(settings))?;
    let conf_path = dir.join("postgresql.conf");
    let conf = fs::read_to_string(&conf_path)?;
    if let Some(updated) = render::with_include_line(&conf) {
        replace_if_changed(&conf_path, &updated)?;
    }
    let hba_path = dir.join("pg_hba.conf");
    let hba = fs::read_to_string(&hba_path)?;
    replace_if_changed(&hba_path, &render::with_hba_block(&hba, &render::hba_block(config)))
}

fn replace_if_changed(path: &Path, contents: &str) -> io::Result<()> {
    if fs::read_to_string(path).is_ok_and(|old| old == contents) {
        return Ok(());
    }
    let mode = fs::metadata(path).map(|m| m.permissions().mode() & 0o777).unwrap_or(0o600);
    crate::datadir::write_atomic(path, contents.as_bytes(), mode)
}

/// Converges an existing cluster (not a standby) to the configured role before it starts.
pub fn existing_cluster(ctx: &Context, sup: &mut Supervisor) -> Result<(), BootstrapError> {
    let pgdata = &ctx.config.pgdata;
    write_config(ctx.config, ctx.settings, pgdata)
        .map_err(crate::datadir::DataDirError::io(pgdata, "cannot write the configuration"))?;
    if let Role::Primary(replication) = &ctx.config.role {
        // Creates the role when a standalone server becomes a primary, and re-applies the
        // password every start so that rotating REPLICATION_PASSWORD is a restart.
        tracing::info!(user = %replication.user, "applying the replication role");
        bootstrap::single_user(ctx, sup, pgdata, &bootstrap::replication_role_sql(replication))?;
    }
    Ok(())
}
