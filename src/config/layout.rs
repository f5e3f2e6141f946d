//! Where our files live: every path and file name the entrypoint owns, decided here and only
//! here (docs/startup.md, "Files we own").
//!
//! Outside PGDATA, in the server's first socket directory (a directory of the service
//! account's), each file named with the server's port, so that two servers sharing the
//! directory never share a file. The start builds the [`Layout`] once from the effective
//! settings, postgres arguments included; the operator commands from the running server's
//! `postmaster.pid`. Inside PGDATA, the names below.

use std::path::{Path, PathBuf};

/// postgres's default socket directory in Debian's and the official image's builds.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// The data directory of the image this project replaces (supanadit/containers): its users'
/// compose files mount their volumes here.
pub const UPSTREAM_PGDATA: &str = "/usr/local/pgsql/data";

/// PGDATA, as the start and the operator commands must agree on it: `PGDATA` (the image sets
/// the official image's path), except that a volume mounted at the upstream image's path is
/// used rather than bypassed when PGDATA is that default, so a compose file written for the
/// upstream image keeps its data in its volume. The default path holding data as well is
/// ambiguous: `Err`, why.
/// `Ok((path, true))` when the upstream path was chosen.
pub fn data_directory(inputs: &dyn super::Inputs) -> Result<(PathBuf, bool), String> {
    let given = inputs.var("PGDATA").filter(|v| !v.is_empty()).unwrap_or_else(|| super::DEFAULT_PGDATA.into());
    let upstream = Path::new(UPSTREAM_PGDATA);
    if given != super::DEFAULT_PGDATA || !inputs.mounted(upstream) {
        return Ok((PathBuf::from(given), false));
    }
    if inputs.holds_data(Path::new(&given)) {
        return Err(format!(
            "is {given}, which holds data, and {UPSTREAM_PGDATA} (the upstream image's data directory) is a \
             mounted volume too; set PGDATA to the one that holds your database"
        ));
    }
    Ok((upstream.to_path_buf(), true))
}

/// The managed include file, inside PGDATA.
pub const MANAGED_CONF: &str = "pg-entrypoint.conf";
/// Where earlier versions kept the password file, inside PGDATA; removed at every start.
pub const LEGACY_PASSFILE: &str = "pg-entrypoint.pgpass";
/// Left in PGDATA by a run-time promotion until the environment says primary too.
pub const PROMOTED_MARKER: &str = "pg-entrypoint.promoted";
/// Left in PGDATA by a switchover: the role this data directory has now, whatever the
/// environment says, until the environment says the same (`pgdata::role_record`).
pub const ROLE_RECORD: &str = "pg-entrypoint.role";
/// Left in PGDATA by a restore at start (`PGBACKREST_RESTORE`): which restore made it.
pub const RESTORED_MARKER: &str = "pg-entrypoint.restored";
/// In PGDATA while a temporary server of the entrypoint runs (bootstrap, promotion): its
/// hba file, which also marks it as not the real server.
pub const TEMPORARY_SERVER_HBA: &str = "pg-entrypoint-temporary-hba.conf";
/// Patroni keeps its copy of the cluster-wide configuration here, in PGDATA: its presence
/// says Patroni has managed this data directory.
pub const PATRONI_DYNAMIC_CONF: &str = "patroni.dynamic.json";

/// Our files outside PGDATA: `<dir>/pg-entrypoint-<port>.<suffix>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    dir: PathBuf,
    port: u16,
}

/// PgBouncer's files, beside the sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolerFiles {
    pub ini: PathBuf,
    pub hba: PathBuf,
    pub auth: PathBuf,
    pub role_sql: PathBuf,
}

/// Our private copies of the TLS files (`pgdata::tls` writes them), beside the password file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsPaths {
    pub fn all(&self) -> [&Path; 5] {
        [&self.cert, &self.key, &self.ca, &self.client_cert, &self.client_key]
    }
}

impl Layout {
    /// For the server whose first socket directory is `dir` and whose port is `port`.
    pub fn new(dir: &Path, port: u16) -> Layout {
        Layout { dir: dir.to_path_buf(), port }
    }

    /// What the environment alone says (`POSTGRESQL_CONFIG_*`; the postgres arguments are
    /// not known yet).
    pub(super) fn from_overrides(overrides: &[(String, String)]) -> Layout {
        let setting = |name: &str| overrides.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        let dir = setting("unix_socket_directories")
            .and_then(|dirs| dirs.split(',').map(str::trim).next())
            .filter(|d| d.starts_with('/'))
            .unwrap_or(DEFAULT_SOCKET_DIR);
        let port = setting("port").and_then(|p| p.trim().parse().ok()).unwrap_or(5432);
        Layout::new(Path::new(dir), port)
    }

    /// The server these files belong to: its first socket directory and its port.
    pub fn server(&self) -> (&Path, u16) {
        (&self.dir, self.port)
    }

    fn file(&self, suffix: &str) -> PathBuf {
        self.dir.join(format!("pg-entrypoint-{}.{suffix}", self.port))
    }

    /// The replication password file (0600): outside PGDATA, since pg_basebackup and
    /// pg_rewind copy what is inside to other nodes. Rewritten at every start.
    pub fn passfile(&self) -> PathBuf {
        self.file("pgpass")
    }

    /// The superuser's password file (0600) while `switchover` (process `pid`) runs, removed
    /// when it ends; one per run, so that one run never removes another's.
    pub fn admin_passfile(&self, pid: u32) -> PathBuf {
        self.file(&format!("admin-{pid}.pgpass"))
    }

    /// PgBouncer's configuration, hba file and auth_user password (0600), rewritten at every
    /// start (and after a switchover that points it at the new primary); the script that
    /// makes its role, while it runs.
    pub fn pooler_files(&self) -> PoolerFiles {
        PoolerFiles {
            ini: self.file("pgbouncer.ini"),
            hba: self.file("pgbouncer.hba"),
            auth: self.file("pgbouncer.auth"),
            role_sql: self.file("pgbouncer-role.sql"),
        }
    }

    pub fn tls(&self) -> TlsPaths {
        TlsPaths {
            cert: self.file("server.crt"),
            key: self.file("server.key"),
            ca: self.file("ca.crt"),
            client_cert: self.file("replication.crt"),
            client_key: self.file("replication.key"),
        }
    }

    /// pgBackRest's configuration (0600: repository secrets), rewritten at every start from
    /// `PGBACKREST_*`; `archive_command`, the scheduled backups and the `backup` commands
    /// all name it.
    pub fn backrest_conf(&self) -> PathBuf {
        self.file("pgbackrest.conf")
    }

    /// pgBackRest's lock directory: one backup (or archive-push) at a time per stanza,
    /// whoever starts it, and never shared with another server's.
    pub fn backrest_locks(&self) -> PathBuf {
        self.file("pgbackrest-locks")
    }

    /// What the backup scheduler last did, for `status` (JSON).
    pub fn backup_state(&self) -> PathBuf {
        self.file("backup.json")
    }

    /// The fingerprint of the last settings postgres accepted, and its major version.
    pub fn settings_checked(&self) -> PathBuf {
        self.file("checked")
    }

    /// nss_wrapper's passwd and group files, for a uid without an `/etc/passwd` entry.
    pub fn nss_wrapper(&self) -> (PathBuf, PathBuf) {
        (self.file("passwd"), self.file("group"))
    }

    /// The 0700 socket directory of the servers of a major upgrade.
    pub fn upgrade_sockets(&self) -> PathBuf {
        self.file("upgrade")
    }

    pub fn patroni_config(&self) -> PathBuf {
        self.file("patroni.yml")
    }

    /// Patroni's own password file (it rewrites it; ours is [`Layout::passfile`]).
    pub fn patroni_passfile(&self) -> PathBuf {
        self.file("patroni.pgpass")
    }

    /// Left by a failed Patroni bootstrap, so that the next start says why.
    pub fn patroni_bootstrap_failed(&self) -> PathBuf {
        self.file("patroni-bootstrap-failed")
    }

    /// The copy of a secret or TLS file that Patroni reads, named after its variable.
    pub fn patroni_copy(&self, variable: &str) -> PathBuf {
        self.file(&variable.to_ascii_lowercase().replace('_', "-"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_servers_in_one_directory_never_share_a_file() {
        let a = Layout::new(Path::new("/run/pg"), 5432);
        let b = Layout::new(Path::new("/run/pg"), 5433);
        assert_eq!(a.passfile(), Path::new("/run/pg/pg-entrypoint-5432.pgpass"));
        assert_ne!(a.passfile(), b.passfile());
        assert_ne!(a.tls().all(), b.tls().all());
    }

    #[test]
    fn the_environment_alone_names_the_first_socket_directory_and_the_port() {
        let overrides = [
            ("port".to_string(), "6000".to_string()),
            ("unix_socket_directories".to_string(), "/tmp/a, /tmp/b".to_string()),
        ];
        assert_eq!(Layout::from_overrides(&overrides), Layout::new(Path::new("/tmp/a"), 6000));
        assert_eq!(Layout::from_overrides(&[]), Layout::new(Path::new(DEFAULT_SOCKET_DIR), 5432));
    }
}
