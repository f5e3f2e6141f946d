//! The server's own variables: PGDATA, the superuser and database, initdb's options,
//! `POSTGRESQL_CONFIG_*`, the HTTP endpoint, logging; then the role (`native`, `patroni`).

use std::path::{Path, PathBuf};

use super::parser::{parse_log_format, parse_log_level, shown};
use super::*;

impl Parser<'_> {
    pub(super) fn config(&mut self) -> Option<Config> {
        let pgdata = match layout::data_directory(self.inputs) {
            Ok((pgdata, true)) => {
                tracing::info!(
                    "PGDATA: {} is a mounted volume (the upstream image's data directory), and {DEFAULT_PGDATA} \
                     holds nothing: using it",
                    pgdata.display()
                );
                pgdata
            }
            Ok((pgdata, false)) => pgdata,
            Err(why) => {
                self.problem("PGDATA", why);
                PathBuf::from(DEFAULT_PGDATA)
            }
        };
        if !pgdata.is_absolute() {
            self.problem("PGDATA", format!("{:?} is not an absolute path", pgdata));
        } else if pgdata.to_string_lossy().chars().any(char::is_control) {
            self.problem("PGDATA", format!("{pgdata:?} contains a control character"));
        } else if is_system_directory(&pgdata) {
            self.problem(
                "PGDATA",
                format!(
                    "{pgdata:?} is a system directory; accepted: a directory of its own, e.g. /var/lib/postgresql/data"
                ),
            );
        }
        let superuser = self.identifier("POSTGRES_USER", DEFAULT_SUPERUSER);
        if superuser.contains(['"', '$', '\'', '\\']) {
            // initdb refuses them: the bootstrap superuser owns extensions, whose scripts
            // substitute its name unquoted.
            self.problem(
                "POSTGRES_USER",
                format!("{superuser:?} contains one of \" $ ' \\, which initdb does not accept for the superuser"),
            );
        }
        self.role_name_allowed("POSTGRES_USER", &superuser);
        let database = self.identifier("POSTGRES_DB", &superuser.clone());
        if ["template0", "template1"].contains(&database.as_str()) {
            self.problem("POSTGRES_DB", format!("{database:?} is a template database; accepted: any other name"));
        }
        let host_auth_method = self.host_auth_method();
        let hba_added = self.hba_added();
        // Needed to create a cluster, not to start one: see [`Config::password_problem`].
        let superuser_password = self.secret("POSTGRES_PASSWORD");
        let initdb_args: Vec<String> = self
            .var_or_file("POSTGRES_INITDB_ARGS")
            .map(|a| a.split_whitespace().map(String::from).collect())
            .unwrap_or_default();
        if initdb_args.iter().any(|a| a.starts_with("-D") || a.starts_with("--pgdata")) {
            self.problem(
                "POSTGRES_INITDB_ARGS",
                "sets the data directory (-D/--pgdata); accepted: other initdb options (the directory is PGDATA)",
            );
        }
        let initdb_waldir = self.var("POSTGRES_INITDB_WALDIR").map(PathBuf::from);
        if initdb_waldir.as_deref().is_some_and(|w| !w.is_absolute()) {
            self.problem("POSTGRES_INITDB_WALDIR", "must be an absolute path");
        }
        let init_scripts_dir =
            PathBuf::from(self.var("INIT_SCRIPTS_DIR").unwrap_or_else(|| DEFAULT_INIT_SCRIPTS_DIR.to_string()));
        let bindir = self.var("PG_BINDIR").map(PathBuf::from);
        let shutdown_timeout = self.duration("SHUTDOWN_TIMEOUT", crate::pid1::supervise::DEFAULT_SHUTDOWN_TIMEOUT);
        let http = self.http();
        if let Some(level) = self.var("LOG_LEVEL").filter(|l| parse_log_level(l).is_none()) {
            self.problem("LOG_LEVEL", format!("{level:?} is not accepted; accepted: error, warn, info, debug, trace"));
        }
        if let Some(format) = self.var("LOG_FORMAT").filter(|f| parse_log_format(f).is_none()) {
            self.problem("LOG_FORMAT", format!("{format:?} is not accepted; accepted: text, json"));
        }
        self.refuse_upstream_internals();
        let overrides = self.overrides();
        let tls = self.tls();
        let upgrade = self.upgrade();
        let role = self.role(&superuser, http.as_ref())?;
        if matches!(role, Role::Primary(_) | Role::Patroni(_)) {
            self.check_primary_overrides(&overrides);
        }
        // Patroni's REST API takes the HTTP port; ours stays off.
        let http = if matches!(role, Role::Patroni(_)) { None } else { http };
        if matches!(role, Role::Patroni(_)) {
            self.patroni_quotable("POSTGRES_PASSWORD", superuser_password.as_ref());
        }
        if matches!(role, Role::Patroni(_)) && host_auth_method == "reject" {
            let variable = if self.boolean("EXTERNAL_ACCESS_ENABLE") == Some(false) {
                "EXTERNAL_ACCESS_ENABLE"
            } else {
                "POSTGRES_HOST_AUTH_METHOD"
            };
            self.problem(
                variable,
                "refuses clients over TCP, but Patroni's members connect to each other as the superuser \
                 (pg_rewind) over TCP; accepted with HA_MODE=patroni: a method other than reject",
            );
        }
        if matches!(role, Role::Patroni(_)) && superuser_password.is_none() && host_auth_method != "trust" {
            // Patroni connects as the superuser over TCP too (pg_rewind from the new leader).
            self.problem(
                "POSTGRES_PASSWORD",
                "is required with HA_MODE=patroni (or POSTGRES_PASSWORD_FILE): Patroni connects to the other \
                 members as the superuser",
            );
        }
        let backup = self.backup(self.inputs.mounted(Path::new(backup::UPSTREAM_REPO_PATH)));
        if matches!(role, Role::Replica(_)) && backup.as_ref().is_some_and(|b| b.restore.is_some()) {
            self.problem(
                "PGBACKREST_RESTORE",
                "is for a primary or a standalone server; a replica is made from the repository with \
                 REPLICA_CLONE_METHOD=pgbackrest",
            );
        }
        if matches!(role, Role::Patroni(_)) && backup.as_ref().is_some_and(|b| b.restore.is_some()) {
            // Patroni bootstraps a new cluster itself: the restore would be silently skipped.
            self.problem(
                "PGBACKREST_RESTORE",
                "is not supported with HA_MODE=patroni; restore with HA_MODE unset (a standalone start), then start \
                 that volume's member under Patroni first",
            );
        }
        let layout = Layout::from_overrides(&overrides);
        let pooler = self.pooler(&role, layout.server().1, superuser_password.is_some(), &host_auth_method);
        Some(Config {
            pgdata,
            superuser,
            superuser_password,
            database,
            initdb_args,
            initdb_waldir,
            host_auth_method,
            hba_added,
            role,
            overrides,
            init_scripts_dir,
            bindir,
            shutdown_timeout,
            http,
            tls,
            upgrade,
            backup,
            pooler,
            layout,
            unknown_variables: self.unknown_variables(),
        })
    }

    /// `HTTP_PORT` (default 8008; `0` or `off` disables) and `HTTP_LISTEN` (an IP address).
    pub(super) fn http(&mut self) -> Option<HttpListen> {
        let port = match self.var("HTTP_PORT") {
            None => DEFAULT_HTTP_PORT,
            Some(off) if off == "0" || off.eq_ignore_ascii_case("off") => return None,
            Some(value) => value.parse::<u16>().unwrap_or_else(|_| {
                self.problem(
                    "HTTP_PORT",
                    format!("{} is not a port; accepted: 1 to 65535, or 0/off to disable", shown(&value)),
                );
                DEFAULT_HTTP_PORT
            }),
        };
        let address = self.var("HTTP_LISTEN").and_then(|a| match a.trim_matches(['[', ']']).parse() {
            Ok(address) => Some(address),
            Err(_) => {
                self.problem(
                    "HTTP_LISTEN",
                    format!("{a:?} is not an IP address; accepted: e.g. 0.0.0.0, ::, 127.0.0.1"),
                );
                None
            }
        });
        Some(HttpListen { address, port })
    }

    /// How clients over TCP authenticate: `POSTGRES_HOST_AUTH_METHOD` (the official image's
    /// name), or the upstream image's `EXTERNAL_ACCESS_METHOD`, and `EXTERNAL_ACCESS_ENABLE=false`
    /// as `reject`. Two that disagree are refused.
    fn host_auth_method(&mut self) -> String {
        let ours = self.var("POSTGRES_HOST_AUTH_METHOD").map(|m| ("POSTGRES_HOST_AUTH_METHOD", m));
        let upstream = match self.boolean("EXTERNAL_ACCESS_ENABLE") {
            Some(false) => Some(("EXTERNAL_ACCESS_ENABLE", "reject".to_string())),
            _ => self.var("EXTERNAL_ACCESS_METHOD").map(|m| ("EXTERNAL_ACCESS_METHOD", m)),
        };
        let (variable, method) = match (ours, upstream) {
            (Some((_, a)), Some((variable, b))) if a != b => {
                let shown =
                    if variable == "EXTERNAL_ACCESS_ENABLE" { "false (reject)".to_string() } else { format!("{b:?}") };
                self.problem(variable, format!("is {shown}, but POSTGRES_HOST_AUTH_METHOD={a:?}; set one of them"));
                ("POSTGRES_HOST_AUTH_METHOD", a)
            }
            (Some(given), _) | (None, Some(given)) => given,
            (None, None) => ("POSTGRES_HOST_AUTH_METHOD", "scram-sha-256".to_string()),
        };
        if !ACCEPTED_AUTH_METHODS.contains(&method.as_str()) {
            self.problem(
                variable,
                format!("{method:?} is not accepted; accepted: {}", ACCEPTED_AUTH_METHODS.join(", ")),
            );
        }
        method
    }

    /// `PG_HBA_ADD_<n>`: `pg_hba.conf` lines of the user's, in the order of `n`, each checked
    /// for what `pg_hba.conf` accepts (a wrong line would stop postgres from starting).
    fn hba_added(&mut self) -> Vec<String> {
        let mut added: Vec<(u32, String, String)> = Vec::new();
        for (var, value) in self.inputs.vars_with_prefix("PG_HBA_ADD_") {
            let line = value.trim().to_string();
            if line.is_empty() {
                continue;
            }
            let Some(n) = var["PG_HBA_ADD_".len()..].parse::<u32>().ok() else {
                self.problem(&var, "is not PG_HBA_ADD_<n> with a number n; accepted: PG_HBA_ADD_1, PG_HBA_ADD_2, ...");
                continue;
            };
            match hba_line_problem(&line) {
                // Not echoed: a rule may hold a secret (ldapbindpasswd=, radiussecrets=).
                Some(why) => self.problem(&var, format!("is not accepted: the rule {why}")),
                None => added.push((n, var, line)),
            }
        }
        added.sort();
        added.into_iter().map(|(_, _, line)| line).collect()
    }

    /// Variables that look like ours but are not, as warnings (not refusals: an environment
    /// shared with other programs may hold a name that only looks like ours).
    pub(super) fn unknown_variables(&self) -> Vec<Problem> {
        known::unknown(&self.inputs.vars_with_prefix(""))
            .into_iter()
            .map(|(variable, meant)| Problem {
                variable,
                message: match meant {
                    Some(known) => format!("is not a variable of pg-entrypoint and is ignored; did you mean {known}?"),
                    None => "is not a variable of pg-entrypoint and is ignored".into(),
                },
            })
            .collect()
    }

    /// Settings the upstream image's scripts read that mean nothing here: refused, each with
    /// what to use instead, rather than ignored.
    fn refuse_upstream_internals(&mut self) {
        for (variable, instead) in UPSTREAM_INTERNALS {
            if self.var(variable).is_some() {
                self.problem(variable, format!("is the upstream image's, not ours; {instead}"));
            }
        }
    }

    pub(super) fn overrides(&mut self) -> Vec<(String, String)> {
        let mut overrides: Vec<(String, String)> = Vec::new();
        for (var, value) in self.inputs.vars_with_prefix(OVERRIDE_PREFIX) {
            if self.inputs.not_utf8(&var) {
                self.problem(&var, "is not valid UTF-8; accepted: UTF-8 text");
                continue;
            }
            if value.is_empty() {
                continue; // empty counts as unset, as for every variable
            }
            let name = var[OVERRIDE_PREFIX.len()..].to_ascii_lowercase();
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
                && !name.starts_with(['.', '_'])
                && !name.ends_with('.');
            if !valid {
                self.problem(
                    &var,
                    "is not a setting name; accepted: POSTGRESQL_CONFIG_<NAME> with letters, digits, '_' and '.'",
                );
            } else if ["include", "include_dir", "include_if_exists"].contains(&name.as_str()) {
                self.problem(
                    &var,
                    "is an include directive, not a setting: it would bypass the settings refused here; \
                     accepted: POSTGRESQL_CONFIG_<NAME> for each setting",
                );
            } else if ["data_directory", "config_file", "hba_file", "ident_file"].contains(&name.as_str()) {
                self.problem(
                    &var,
                    "cannot be overridden: pg-entrypoint manages where the data and configuration files are",
                );
            } else {
                overrides.push((name, value));
            }
        }
        // The upstream image's shortcuts: POSTGRESQL_<SETTING> for a few settings.
        for (var, setting) in SETTING_SHORTCUTS {
            let Some(value) = self.var(var).filter(|v| !known::is_service_link(var, v)) else { continue };
            match overrides.iter().find(|(name, _)| name == setting) {
                Some((_, given)) if *given != value => self.problem(
                    var,
                    format!(
                        "{value:?} disagrees with {OVERRIDE_PREFIX}{}={given:?}; set one of them",
                        setting.to_ascii_uppercase()
                    ),
                ),
                Some(_) => {}
                None => overrides.push((setting.to_string(), value)),
            }
        }
        overrides.sort();
        overrides
    }

    /// Overrides that would make a primary unable to serve its replicas.
    pub(super) fn check_primary_overrides(&mut self, overrides: &[(String, String)]) {
        for (name, value) in overrides {
            let lower = value.to_ascii_lowercase();
            if name == "wal_level" && !["replica", "logical"].contains(&lower.as_str()) {
                self.problem(
                    "POSTGRESQL_CONFIG_WAL_LEVEL",
                    format!("{value:?} cannot stream to replicas; accepted on a primary: replica, logical"),
                );
            }
            if name == "max_wal_senders" && lower.trim() == "0" {
                self.problem(
                    "POSTGRESQL_CONFIG_MAX_WAL_SENDERS",
                    "0 cannot serve replicas; accepted on a primary: 1 or more",
                );
            }
        }
    }

    /// Role names PostgreSQL reserves: `pg_*`, and the special names.
    pub(super) fn role_name_allowed(&mut self, variable: &str, name: &str) {
        let lower = name.to_ascii_lowercase();
        let special = ["public", "none", "current_role", "current_user", "session_user"];
        if lower.starts_with("pg_") || special.contains(&lower.as_str()) {
            self.problem(
                variable,
                format!(
                    "{name:?} is reserved by PostgreSQL (pg_* and {}); accepted: any other name",
                    special.join(", ")
                ),
            );
        }
    }
}

/// Directories of the operating system that must never become a data directory (root would
/// hand them to the postgres user).
pub(super) fn is_system_directory(path: &Path) -> bool {
    const SYSTEM: &[&str] = &[
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/home",
        "/lib",
        "/lib64",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/srv",
        "/sys",
        "/tmp",
        "/usr",
        "/var",
        "/var/lib",
        "/var/run",
        "/var/log",
        "/usr/local",
        "/usr/local/bin",
        "/usr/bin",
        "/usr/lib",
    ];
    let normal: PathBuf = path.components().collect();
    SYSTEM.iter().any(|s| normal == Path::new(s))
}

/// Why `line` is not a `pg_hba.conf` rule this start accepts, if it is not: a connection type,
/// a database, a user, an address (TCP types; with a netmask or not) and a method; no
/// include directive, no line break.
pub(super) fn hba_line_problem(line: &str) -> Option<String> {
    const TYPES: [&str; 6] = ["local", "host", "hostssl", "hostnossl", "hostgssenc", "hostnogssenc"];
    const METHODS: [&str; 13] = [
        "trust",
        "reject",
        "scram-sha-256",
        "md5",
        "password",
        "gss",
        "sspi",
        "ident",
        "peer",
        "ldap",
        "radius",
        "cert",
        "pam",
    ];
    if line.chars().any(char::is_control) {
        return Some("contains a control character (one rule per variable)".into());
    }
    let fields: Vec<&str> = line.split_whitespace().collect();
    let Some(kind) = fields.first().filter(|k| TYPES.contains(k)) else {
        return Some(format!("does not start with a connection type; accepted: {}", TYPES.join(", ")));
    };
    // local: type, database, user, method; TCP: type, database, user, address [netmask], method.
    let method_at = match *kind {
        "local" => 3,
        _ if fields.get(4).is_some_and(|f| f.parse::<std::net::IpAddr>().is_ok()) => 5,
        _ => 4,
    };
    match fields.get(method_at) {
        Some(method) if METHODS.contains(method) => None,
        Some(other) => Some(format!("has the method {other:?}; accepted: {}", METHODS.join(", "))),
        None => Some(format!(
            "is too short: {} needs a database, a user{} and a method",
            kind,
            if *kind == "local" { "" } else { ", an address" }
        )),
    }
}

/// What the upstream image's scripts read that has no meaning here, and what to use instead.
const UPSTREAM_INTERNALS: [(&str, &str); 11] = [
    ("PGRUN", "the socket directory is POSTGRESQL_UNIX_SOCKET_DIRECTORIES (/var/run/postgresql by default)"),
    ("PGCONFIG", "the configuration lives in PGDATA; set POSTGRESQL_CONFIG_<SETTING>"),
    ("PGLOG", "logs go to stderr (docker logs); for files, POSTGRESQL_CONFIG_LOGGING_COLLECTOR=on and _LOG_DIRECTORY"),
    ("PGBACKUP", "backups are not built yet"),
    ("POSTGRES_BIN", "the server's binaries are found on PATH, or set PG_BINDIR"),
    ("POSTGRES_GROUP", "the service account is postgres (uid and gid 999, as the official image); another uid: --user"),
    ("POSTGRESQL_READY_MAX_ATTEMPTS", "the start waits for readiness by itself; unset it"),
    ("POSTGRESQL_READY_ATTEMPT_INTERVAL", "the start waits for readiness by itself; unset it"),
    ("ARCHIVE_TIMEOUT", "set POSTGRESQL_CONFIG_ARCHIVE_TIMEOUT"),
    ("TIMEOUT_CHANGE_PASSWORD", "passwords are applied at start; unset it"),
    ("STRICT_PERMISSIONS", "PGDATA is always 0700 and our secret files 0600; unset it"),
];

/// The upstream image's `POSTGRESQL_<SETTING>` variables: the same as
/// `POSTGRESQL_CONFIG_<SETTING>`.
const SETTING_SHORTCUTS: [(&str, &str); 13] = [
    ("POSTGRESQL_SHARED_BUFFERS", "shared_buffers"),
    ("POSTGRESQL_MAX_CONNECTIONS", "max_connections"),
    ("POSTGRESQL_WORK_MEM", "work_mem"),
    ("POSTGRESQL_MAINTENANCE_WORK_MEM", "maintenance_work_mem"),
    ("POSTGRESQL_LISTEN_ADDRESSES", "listen_addresses"),
    ("POSTGRESQL_UNIX_SOCKET_DIRECTORIES", "unix_socket_directories"),
    ("POSTGRESQL_LOG_STATEMENT", "log_statement"),
    ("POSTGRESQL_LOG_DURATION", "log_duration"),
    ("POSTGRESQL_TIMEZONE", "timezone"),
    ("POSTGRESQL_PORT", "port"),
    ("POSTGRESQL_LISTEN_HOST", "listen_addresses"),
    ("PATRONI_MAX_WAL_SENDERS", "max_wal_senders"),
    ("PATRONI_MAX_REPLICATION_SLOTS", "max_replication_slots"),
];

pub(super) const ACCEPTED_AUTH_METHODS: &[&str] = &["scram-sha-256", "md5", "password", "trust", "reject"];
