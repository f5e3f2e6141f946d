//! Backups with pgBackRest (docs/backup.md): the configuration file written at every start,
//! the keeper that creates the stanza and runs the schedule (`scheduler`), and the restore of
//! an empty PGDATA from the repository (`restore`). postgres archives through pgBackRest
//! directly (`archive_command` is `pgbackrest archive-push`): no process of ours between
//! postgres and its archive, and pgBackRest's own asynchronous mode and retries apply as
//! documented. pg_stat_archiver says how archiving goes; `status` and `health` read it.

use std::path::Path;

use crate::config::Config;
use crate::pgdata::datadir;
use crate::postgres::backrest;
use crate::render;

pub mod drill;
pub mod restore;
pub mod scheduler;

/// Before anything is touched: pgBackRest must be installed when backups are on.
pub fn check_installed(config: &Config) -> Result<(), String> {
    if config.backup.is_none() || backrest::installed() {
        return Ok(());
    }
    Err("invalid configuration: PGBACKREST_ENABLE is true, but pgbackrest is not installed in this image \
         (apt-get install pgbackrest), or set PGBACKREST_ENABLE=false"
        .into())
}

/// pgBackRest's configuration, beside the sockets (0600: it holds the repository's keys),
/// as the service account.
pub fn write_conf(config: &Config) -> std::io::Result<()> {
    let Some(backup) = &config.backup else { return Ok(()) };
    let (socket_dir, port) = config.layout.server();
    let server = render::backup::Server { pgdata: &config.pgdata, socket_dir, port, superuser: &config.superuser };
    let text = render::backup::conf(backup, &server, &config.layout.backrest_locks());
    datadir::write_atomic(&config.layout.backrest_conf(), text.as_bytes(), 0o600)
}

/// In PGDATA after a restore at start: which restore made this cluster, so that the next
/// start with the same `PGBACKREST_RESTORE_*` serves it rather than refusing it.
pub fn restored_with(config: &Config) -> Option<String> {
    let restore = config.backup.as_ref()?.restore.as_ref()?;
    Some(format!("{:?} {:?}\n", restore.target, restore.set))
}

/// `PGBACKREST_RESTORE=true` and PGDATA holds a cluster: served when this very restore made
/// it, refused otherwise (the restore applies to an empty PGDATA; nothing is overwritten).
pub fn check_restore_over(config: &Config, pgdata: &Path) -> Result<(), String> {
    let Some(wanted) = restored_with(config) else { return Ok(()) };
    let marker = pgdata.join(crate::config::layout::RESTORED_MARKER);
    if std::fs::read_to_string(&marker).is_ok_and(|made| made == wanted) {
        return Ok(());
    }
    Err(format!(
        "PGBACKREST_RESTORE is true, but PGDATA {} already holds a cluster that this restore did not make; \
         refusing to start it as if restored, and refusing to overwrite it. Restore into an empty volume (a new \
         PGDATA), or unset PGBACKREST_RESTORE to start the cluster that is there",
        pgdata.display()
    ))
}
