//! The files we own in a data directory: the managed include file, the include line in
//! `postgresql.conf`, the managed block of `pg_hba.conf`, and a replica's password file.
//! Each is rewritten from the rendered text, and only when it changes.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::unistd::Pid;

use crate::config::{Config, Replication, Secret};
use crate::pgdata::datadir::{self, DataDirError};
use crate::render::{self, Settings};

/// Writes the managed include file, adds the include line to `postgresql.conf` once, and
/// replaces the managed block of `pg_hba.conf`.
pub fn write_config(config: &Config, settings: &Settings, dir: &Path) -> io::Result<()> {
    replace_if_changed(&dir.join(crate::config::layout::MANAGED_CONF), &render::managed_conf(settings))?;
    let conf_path = dir.join("postgresql.conf");
    let conf = fs::read_to_string(&conf_path)?;
    if let Some(updated) = render::with_include_line(&conf) {
        replace_if_changed(&conf_path, &updated)?;
    }
    let hba_path = dir.join("pg_hba.conf");
    let hba = fs::read_to_string(&hba_path)?;
    replace_if_changed(&hba_path, &render::with_hba_block(&hba, &render::hba_block(config)))
}

/// Settings `pg-entrypoint sync` may change at run time with `ALTER SYSTEM`: each start
/// renders them from the variables again, so their lines leave `postgresql.auto.conf` (which
/// would win), and a clone never inherits them.
pub const RUN_TIME_SETTINGS: [&str; 1] = ["synchronous_standby_names"];

/// Removes [`RUN_TIME_SETTINGS`] (and `extra`) from `postgresql.auto.conf` in `dir`; true when
/// there was something to remove.
pub fn drop_run_time_settings(dir: &Path, extra: &[&str]) -> io::Result<bool> {
    let auto = dir.join("postgresql.auto.conf");
    let Ok(text) = fs::read_to_string(&auto) else { return Ok(false) };
    let names: Vec<&str> = RUN_TIME_SETTINGS.iter().chain(extra).copied().collect();
    let cleaned = render::without_settings(&text, &names);
    if cleaned == text {
        return Ok(false);
    }
    datadir::write_atomic(&auto, cleaned.as_bytes(), 0o600)?;
    Ok(true)
}

/// [`write_config`], then has the running server (`postgres`, its postmaster) reload it.
pub fn write_config_and_reload(config: &Config, settings: &Settings, dir: &Path, postgres: Pid) -> io::Result<()> {
    write_config(config, settings, dir)?;
    nix::sys::signal::kill(postgres, nix::sys::signal::Signal::SIGHUP).map_err(io::Error::from)
}

fn replace_if_changed(path: &Path, contents: &str) -> io::Result<()> {
    if fs::read_to_string(path).is_ok_and(|old| old == contents) {
        return Ok(());
    }
    let mode = fs::metadata(path).map(|m| m.permissions().mode() & 0o777).unwrap_or(0o600);
    datadir::write_atomic(path, contents.as_bytes(), mode)
}

/// Removes the password file, if there is one.
pub fn remove_passfile(path: &Path) -> Result<(), DataDirError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(DataDirError::Io { pgdata: path.into(), action: "cannot remove the password file".into(), source: e })
        }
        _ => Ok(()),
    }
}

/// The 0600 password file through which the replication user authenticates to other members.
pub fn write_passfile(path: &Path, replication: &Replication) -> Result<(), DataDirError> {
    write_passfile_with(path, &replication.user, &replication.password)
}

/// The same, with another password (the previous one, while rotating).
pub fn write_passfile_with(path: &Path, user: &str, password: &Secret) -> Result<(), DataDirError> {
    let text = render::pgpass(user, password.expose());
    datadir::write_atomic(path, text.as_bytes(), 0o600).map_err(|source| DataDirError::Io {
        pgdata: path.into(),
        action: "cannot write the password file".into(),
        source,
    })
}
