//! Text we write: the managed include file, the managed `pg_hba.conf` block, the include
//! line in `postgresql.conf`, and bootstrap SQL. Pure functions of the configuration.
//!
//! One deterministic render per start: defaults, then the role's settings, then the user's
//! `POSTGRESQL_CONFIG_*` overrides; the last word on a name wins and each name appears once.

use std::collections::BTreeMap;

pub mod backup;
pub mod metrics;
pub mod patroni;
pub mod pooler;

use crate::config::{slot_name, Config, Replica, Role, SyncMode, SyncSettings, TlsMode};

/// The line that makes `postgresql.conf` include [`MANAGED_CONF`]; appended once.
pub const INCLUDE_LINE: &str = "include_if_exists = 'pg-entrypoint.conf'\t# managed by pg-entrypoint";
const HBA_BEGIN: &str = "# BEGIN pg-entrypoint managed block: rewritten at every start, edit outside it";
const HBA_END: &str = "# END pg-entrypoint managed block";
pub use crate::config::DEFAULT_SOCKET_DIR;

/// Where a setting's value came from, for the comments in the rendered file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Default,
    Role,
    Override,
}

/// The settings we manage: name -> (value, source). Sorted, so the render is deterministic.
pub type Settings = BTreeMap<String, (String, Source)>;

pub fn settings(config: &Config) -> Settings {
    let mut s = Settings::new();
    let mut set = |name: &str, value: String, source| {
        s.insert(name.to_string(), (value, source));
    };
    set("listen_addresses", "*".into(), Source::Default);
    set("unix_socket_directories", DEFAULT_SOCKET_DIR.into(), Source::Default);
    // A primary's settings, on replicas too: a standby ignores them, and a replica promoted at
    // run time (`pg-entrypoint promote`) is then a primary with them at once, synchronous
    // commits and WAL bounds included, without waiting for a restart.
    if let Some(replication) = config.replication() {
        set("wal_level", "replica".into(), Source::Role);
        set("max_wal_senders", "10".into(), Source::Role);
        set("max_replication_slots", "10".into(), Source::Role);
        // A restarting replica without a slot still finds recent WAL...
        set("wal_keep_size", "512MB".into(), Source::Role);
        // ...and a dead replica's slot cannot fill the primary's disk.
        set("max_slot_wal_keep_size", "8GB".into(), Source::Role);
        set("hot_standby", "on".into(), Source::Role);
        // pg_rewind needs it to bring this primary back as a replica after a failover.
        set("wal_log_hints", "on".into(), Source::Role);
        let sync = majority_sync(&replication.sync, config.other_members().len());
        set("synchronous_standby_names", synchronous_standby_names(&sync), Source::Role);
        // A walsender whose standby stopped answering gives up after this long, so a fast
        // shutdown never waits on an unreachable standby past SHUTDOWN_TIMEOUT.
        set("wal_sender_timeout", wal_sender_timeout(config.shutdown_timeout), Source::Role);
    }
    if config.tls.mode != TlsMode::Off {
        let paths = config.layout.tls();
        set("ssl", "on".into(), Source::Role);
        set("ssl_cert_file", paths.cert.to_string_lossy().into_owned(), Source::Role);
        set("ssl_key_file", paths.key.to_string_lossy().into_owned(), Source::Role);
        if config.tls.ca.is_some() {
            set("ssl_ca_file", paths.ca.to_string_lossy().into_owned(), Source::Role);
        }
    }
    if let Role::Replica(replica) = &config.role {
        set("hot_standby_feedback", "on".into(), Source::Role);
        let passfile = config.layout.passfile();
        set("primary_conninfo", primary_conninfo(config, replica, &passfile.to_string_lossy(), false), Source::Role);
        set("primary_slot_name", slot_name(&replica.name), Source::Role);
        // Silence from the primary is noticed (the standby pings it after half of this)
        // and a dead connection is dropped and retried after this long.
        set("wal_receiver_timeout", WAL_RECEIVER_TIMEOUT.into(), Source::Role);
    }
    for (name, value) in archiving(config) {
        set(name, value, Source::Role);
    }
    for (name, value) in &config.overrides {
        set(name, value.clone(), Source::Override);
    }
    s
}

/// With `PGBACKREST_ENABLE`: WAL to the repository (unless `PGBACKREST_ARCHIVE_ENABLE=false`),
/// and from it when a standby or a restore needs what its source no longer has. Every role
/// gets them, so a promoted replica archives at once.
pub fn archiving(config: &Config) -> Vec<(&'static str, String)> {
    let Some(b) = &config.backup else { return Vec::new() };
    let conf = config.layout.backrest_conf();
    let mut settings = vec![("restore_command", backup::restore_command(&conf, &b.stanza))];
    if b.archive {
        settings.push(("archive_mode", "on".into()));
        settings.push(("archive_command", backup::archive_command(&conf, &b.stanza)));
        settings.push(("archive_timeout", backup::ARCHIVE_TIMEOUT.into()));
    }
    settings
}

/// The TLS part of every connection to another member: `sslmode` (REPLICATION_SSLMODE), the
/// CA that verifies it, and the replication user's client certificate when there is one.
pub fn client_tls(config: &Config) -> Vec<(&'static str, String)> {
    let tls = &config.tls;
    let paths = config.layout.tls();
    let mut params = vec![("sslmode", tls.replication_sslmode.clone())];
    if tls.ca.is_some() {
        params.push(("sslrootcert", paths.ca.to_string_lossy().into_owned()));
    }
    if tls.replication_client.is_some() {
        params.push(("sslcert", paths.client_cert.to_string_lossy().into_owned()));
        params.push(("sslkey", paths.client_key.to_string_lossy().into_owned()));
    }
    if tls.refuse_clear_passwords {
        params.push(("require_auth", "!password,!md5".to_string()));
    }
    params
}

/// For servers of our own before the real start (single-user, temporary): no standby can
/// connect to them, so a commit must never wait for one, whatever the configuration says.
pub const NO_SYNCHRONOUS_WAIT: [&str; 2] = ["synchronous_standby_names=", "synchronous_commit=local"];

/// A replica's `wal_receiver_timeout`; `health` derives its default silence bound from it.
pub const WAL_RECEIVER_TIMEOUT: &str = "15s";

/// Three seconds below the shutdown timeout, at least five: a standby answers within a
/// second when asked, and the shutdown checkpoint must reach the standbys that do answer.
pub fn wal_sender_timeout(shutdown_timeout: std::time::Duration) -> String {
    format!("{}s", shutdown_timeout.as_secs().saturating_sub(3).max(5))
}

/// `ANY 1 ("replica-1", "replica-2")`; empty when off, so a lone primary never blocks writes.
/// With `others` members beside this one, a commit is acknowledged only once a majority has
/// it: at least `majority - 1` standbys confirm it (quorum), whatever REPLICATION_SYNCHRONOUS_*
/// asked for below that (docs/native-ha.md). Without other members, `sync` as it is.
pub fn majority_sync(sync: &SyncSettings, others: usize) -> SyncSettings {
    if others == 0 {
        return sync.clone();
    }
    let needed = (crate::config::majority(others + 1) - 1) as u32;
    match sync.mode {
        SyncMode::Off => SyncSettings { mode: SyncMode::Any, count: needed, names: vec!["*".into()] },
        _ => {
            let count = sync.count.max(needed);
            let named = sync.names.iter().all(|n| n != "*") && sync.names.len() >= count as usize;
            SyncSettings { count, names: if named { sync.names.clone() } else { vec!["*".into()] }, ..sync.clone() }
        }
    }
}

pub fn synchronous_standby_names(sync: &SyncSettings) -> String {
    let method = match sync.mode {
        SyncMode::Off => return String::new(),
        SyncMode::First => "FIRST",
        SyncMode::Any => "ANY",
    };
    let names: Vec<String> =
        sync.names.iter().map(|n| if n == "*" { n.clone() } else { quote_identifier(n) }).collect();
    format!("{method} {} ({})", sync.count, names.join(", "))
}

/// How a replica reaches its primary; the password comes from `passfile`, never from here.
/// With `replication`, a physical replication connection (for psql).
pub fn primary_conninfo(config: &Config, replica: &Replica, passfile: &str, replication: bool) -> String {
    conninfo(
        &replica.primary_host,
        replica.primary_port,
        &replica.replication.user,
        &replica.name,
        passfile,
        replication,
        &client_tls(config),
    )
}

/// A connection to another member as the replication user. TCP keepalives and the connect
/// timeout notice a member that vanished (a partition, a dead host) in seconds rather than
/// after the kernel's two hours.
pub fn conninfo(
    host: &str,
    port: u16,
    user: &str,
    application_name: &str,
    passfile: &str,
    replication: bool,
    tls: &[(&'static str, String)],
) -> String {
    let port = port.to_string();
    let mut params = vec![
        ("host", host),
        ("port", &port),
        ("user", user),
        ("application_name", application_name),
        ("passfile", passfile),
        ("connect_timeout", "5"),
        ("keepalives", "1"),
        ("keepalives_idle", "5"),
        ("keepalives_interval", "2"),
        ("keepalives_count", "3"),
    ];
    if replication {
        params.push(("replication", "true"));
    }
    params.extend(tls.iter().map(|(k, v)| (*k, v.as_str())));
    params.iter().map(|(k, v)| format!("{k}={}", quote_conninfo(v))).collect::<Vec<_>>().join(" ")
}

/// The managed include file.
pub fn managed_conf(settings: &Settings) -> String {
    let mut out = String::from(
        "# Managed by pg-entrypoint and rewritten at every start from the environment.\n\
         # These win over postgresql.conf: change them with POSTGRESQL_CONFIG_<NAME> or postgres -c.\n",
    );
    for (name, (value, source)) in settings {
        let origin = match source {
            Source::Default => "default",
            Source::Role => "role",
            Source::Override => "POSTGRESQL_CONFIG_*",
        };
        out.push_str(&format!("{name} = {}\t# {origin}\n", quote_conf(value)));
    }
    out
}

/// The managed `pg_hba.conf` lines.
pub fn hba_block(config: &Config) -> String {
    let user = config.replication().map(|r| r.user.as_str());
    let lines = hba_tcp_lines(config, user, "scram-sha-256", &["0.0.0.0/0", "::/0"]);
    format!("{HBA_BEGIN}\n{}\n{HBA_END}\n", lines.join("\n"))
}

/// The TCP lines of `pg_hba.conf`, for each of `networks`: clients with
/// `POSTGRES_HOST_AUTH_METHOD`, and `replication_user` (when given) with `replication_method`,
/// or with its client certificate when one is configured. With `TLS_MODE=required`, plaintext
/// is rejected first (the first matching line wins) and the rest are `hostssl`. Ours and
/// Patroni's `pg_hba` both come from here.
pub fn hba_tcp_lines(
    config: &Config,
    replication_user: Option<&str>,
    replication_method: &str,
    networks: &[&str],
) -> Vec<String> {
    let required = config.tls.mode == TlsMode::Required;
    let host = if required { "hostssl" } else { "host" };
    let mut rejects: Vec<(&str, &str, String, &str)> = Vec::new();
    if required {
        rejects.push(("hostnossl", "all", "all".into(), "reject"));
        rejects.push(("hostnossl", "replication", "all".into(), "reject"));
    }
    let mut rules: Vec<(&str, &str, String, &str)> = Vec::new();
    if let (Some(user), "reject") = (replication_user, config.host_auth_method.as_str()) {
        // Clients over TCP refused (EXTERNAL_ACCESS_ENABLE=false): a rejoining member's
        // pg_rewind still reads the new primary's `postgres` database as the replication user.
        rules.push((host, "postgres", quote_identifier(user), replication_method));
    }
    rules.push((host, "all", "all".into(), &config.host_auth_method));
    // A replica keeps its replication lines too, so it can serve as the source of a rewind or
    // a cascade after a promotion without a restart of its configuration.
    if let Some(user) = replication_user {
        let user = quote_identifier(user);
        if config.tls.replication_client.is_some() {
            // The client certificate's CN is the replication user, verified by TLS_CA_FILE.
            rules.push(("hostssl", "replication", user, "cert"));
        } else {
            rules.push((host, "replication", user, replication_method));
        }
    }
    let lines = |rules: &[(&str, &str, String, &str)]| -> Vec<String> {
        rules
            .iter()
            .flat_map(|(kind, database, user, method)| {
                networks.iter().map(move |net| format!("{kind} {database} {user} {net} {method}"))
            })
            .collect()
    };
    // TLS_MODE=required first; then the user's rules (the first rule that matches wins, so
    // theirs can narrow ours), then ours.
    let mut all = lines(&rejects);
    all.extend(config.hba_added.iter().cloned());
    all.extend(lines(&rules));
    all
}

/// `pg_hba.conf` with the managed block replaced where it stands, or appended.
pub fn with_hba_block(existing: &str, block: &str) -> String {
    let lines: Vec<&str> = existing.lines().collect();
    let begin = lines.iter().position(|l| *l == HBA_BEGIN);
    let end = begin.and_then(|b| lines[b..].iter().position(|l| *l == HBA_END).map(|e| b + e));
    let mut out = String::new();
    match (begin, end) {
        (Some(b), Some(e)) => {
            for l in &lines[..b] {
                out.push_str(l);
                out.push('\n');
            }
            out.push_str(block);
            for l in &lines[e + 1..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        // No block, or a BEGIN whose END was deleted by hand: drop the orphan marker line
        // only (never the lines after it) and append a fresh block.
        (begin, _) => {
            for (i, l) in lines.iter().enumerate() {
                if Some(i) != begin {
                    out.push_str(l);
                    out.push('\n');
                }
            }
            out.push('\n');
            out.push_str(block);
        }
    }
    out
}

/// initdb's `pg_hba.conf` without its `host` lines: the managed block decides who may
/// connect over TCP and how (initdb's loopback lines would otherwise match first, and keep
/// allowing replication from loopback after a primary went back to standalone). Its `local`
/// lines stay, including any method chosen with `--auth-local` in POSTGRES_INITDB_ARGS.
pub fn without_host_lines(hba: &str) -> String {
    hba.lines().filter(|l| !l.trim_start().starts_with("host")).flat_map(|l| [l, "\n"]).collect()
}

/// `postgresql.conf` with the include line, added once.
pub fn with_include_line(existing: &str) -> Option<String> {
    if existing.lines().any(|l| l == INCLUDE_LINE) {
        return None;
    }
    let mut out = existing.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(INCLUDE_LINE);
    out.push('\n');
    Some(out)
}

/// A postgresql.conf string: quotes doubled, backslashes and line breaks escaped.
pub fn quote_conf(value: &str) -> String {
    let mut out = String::from("'");
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A quoted identifier for SQL, `pg_hba.conf` and `synchronous_standby_names`.
pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A SQL string literal (standard_conforming_strings is on in every supported version).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A JSON string: quotes, backslashes and control characters escaped. Also a YAML
/// double-quoted scalar (YAML reads the same escapes), so no value can change the structure
/// of either document.
pub fn quote_json(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A libpq connection-string value.
pub fn quote_conninfo(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The password file of a replica: one line for its replication user, any host or database.
pub fn pgpass(user: &str, password: &str) -> String {
    let field = |v: &str| v.replace('\\', "\\\\").replace(':', "\\:");
    format!("*:*:*:{}:{}\n", field(user), field(password))
}

/// `postgresql.auto.conf` without the settings we manage for a replica: a `primary_conninfo`
/// left there (by `pg_basebackup -R`, or copied from the primary) would override ours.
pub fn without_settings(auto_conf: &str, names: &[&str]) -> String {
    auto_conf
        .lines()
        .filter(|l| {
            let name = l.split('=').next().unwrap_or("").trim().to_ascii_lowercase();
            !names.contains(&name.as_str())
        })
        .flat_map(|l| [l, "\n"])
        .collect()
}

/// SQL that creates the replication role if missing and (re)sets its attributes and password.
/// `verifier` is a SCRAM verifier computed here, so no plaintext password reaches the server.
pub fn replication_role_sql(user: &str, verifier: &str) -> Vec<String> {
    let ident = quote_identifier(user);
    let create = format!(
        "BEGIN IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = {}) THEN CREATE ROLE {ident}; END IF; END",
        quote_literal(user)
    );
    vec![
        format!("DO {}", quote_literal(&create)),
        format!("ALTER ROLE {ident} WITH LOGIN REPLICATION PASSWORD {}", quote_literal(verifier)),
        // What pg_rewind reads from its source, so a rejoining old primary can rewind
        // against this server with the replication role instead of a superuser.
        format!(
            "GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean), \
             pg_catalog.pg_stat_file(text, boolean), pg_catalog.pg_read_binary_file(text), \
             pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO {ident}"
        ),
        // CHECKPOINT before pg_rewind (see native::replica::checkpoint_source); the role is
        // PostgreSQL 15's, so older servers skip it.
        format!(
            "DO {}",
            quote_literal(&format!(
                "BEGIN IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'pg_checkpoint') \
                 THEN EXECUTE {}; END IF; END",
                quote_literal(&format!("GRANT pg_checkpoint TO {ident}"))
            ))
        ),
    ]
}

pub fn create_database_sql(database: &str, owner: &str) -> String {
    format!("CREATE DATABASE {} OWNER {}", quote_identifier(database), quote_identifier(owner))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MapInputs;

    fn config(vars: &[(&str, &str)]) -> Config {
        Config::from_inputs(&MapInputs::with(vars, "3f2a9c")).unwrap()
    }

    const PRIMARY: &[(&str, &str)] =
        &[("POSTGRES_PASSWORD", "pw"), ("HA_MODE", "native"), ("ROLE", "primary"), ("REPLICATION_PASSWORD", "r")];

    #[test]
    fn the_users_hba_rules_come_before_ours() {
        let c = config(&[("POSTGRES_PASSWORD", "pw"), ("PG_HBA_ADD_1", "host all reporter 10.0.0.0/8 reject")]);
        let block = hba_block(&c);
        let rules: Vec<&str> = block.lines().skip(1).collect();
        assert_eq!(rules[0], "host all reporter 10.0.0.0/8 reject", "{block}");
        assert_eq!(rules[1], "host all all 0.0.0.0/0 scram-sha-256", "{block}");
    }

    #[test]
    fn without_outside_clients_a_rejoin_still_reads_the_postgres_database() {
        let c = config(&[PRIMARY, &[("EXTERNAL_ACCESS_ENABLE", "false")]].concat());
        let block = hba_block(&c);
        let rules: Vec<&str> = block.lines().skip(1).collect();
        assert_eq!(rules[0], "host postgres \"replicator\" 0.0.0.0/0 scram-sha-256", "{block}");
        assert!(rules.contains(&"host all all 0.0.0.0/0 reject"), "{block}");
        // TLS_MODE=required: no rule of the user's comes before the plaintext rejects.
        let tls = Config { hba_added: vec!["host all all 10.0.0.0/8 md5".into()], ..tls_primary() };
        let tls_block = hba_block(&tls);
        let first: Vec<&str> = tls_block.lines().skip(1).take(5).collect();
        assert!(first[0].starts_with("hostnossl all all") && first[4] == "host all all 10.0.0.0/8 md5", "{tls_block}");
    }

    #[test]
    fn standalone_conf_snapshot() {
        let c = config(&[("POSTGRES_PASSWORD", "pw"), ("POSTGRESQL_CONFIG_CLUSTER_NAME", "it's a \\ test")]);
        assert_eq!(
            managed_conf(&settings(&c)),
            "# Managed by pg-entrypoint and rewritten at every start from the environment.\n\
             # These win over postgresql.conf: change them with POSTGRESQL_CONFIG_<NAME> or postgres -c.\n\
             cluster_name = 'it''s a \\\\ test'\t# POSTGRESQL_CONFIG_*\n\
             listen_addresses = '*'\t# default\n\
             unix_socket_directories = '/var/run/postgresql'\t# default\n"
        );
    }

    #[test]
    fn primary_conf_snapshot_with_override_winning() {
        let mut vars = PRIMARY.to_vec();
        vars.push(("POSTGRESQL_CONFIG_MAX_WAL_SENDERS", "20"));
        let text = managed_conf(&settings(&config(&vars)));
        assert_eq!(
            text.lines().skip(2).collect::<Vec<_>>(),
            [
                "hot_standby = 'on'\t# role",
                "listen_addresses = '*'\t# default",
                "max_replication_slots = '10'\t# role",
                "max_slot_wal_keep_size = '8GB'\t# role",
                "max_wal_senders = '20'\t# POSTGRESQL_CONFIG_*",
                "synchronous_standby_names = ''\t# role",
                "unix_socket_directories = '/var/run/postgresql'\t# default",
                "wal_keep_size = '512MB'\t# role",
                "wal_level = 'replica'\t# role",
                "wal_log_hints = 'on'\t# role",
                "wal_sender_timeout = '5s'\t# role",
            ]
        );
    }

    #[test]
    fn replica_conf_snapshot() {
        let c = config(&[
            ("POSTGRES_PASSWORD", "pw"),
            ("HA_MODE", "native"),
            ("ROLE", "replica"),
            ("REPLICATION_PASSWORD", "r"),
            ("PRIMARY_HOST", "db'1"),
            ("REPLICATION_USER", "rep user"),
        ]);
        let s = settings(&c);
        assert_eq!(
            s["primary_conninfo"].0,
            "host='db\\'1' port='5432' user='rep user' application_name='3f2a9c' \
             passfile='/var/run/postgresql/pg-entrypoint-5432.pgpass' connect_timeout='5' keepalives='1' \
             keepalives_idle='5' keepalives_interval='2' keepalives_count='3' sslmode='prefer'"
        );
        assert_eq!(s["primary_slot_name"].0, "3f2a9c");
        assert_eq!(s["hot_standby_feedback"].0, "on");
        assert_eq!(s["wal_receiver_timeout"].0, "15s");
        // The primary's settings too, for the moment it is promoted.
        assert_eq!(s["max_slot_wal_keep_size"].0, "8GB");
        assert_eq!(s["synchronous_standby_names"].0, "");
    }

    fn sync(mode: SyncMode, count: u32, names: &[&str]) -> SyncSettings {
        SyncSettings { mode, count, names: names.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn synchronous_names_are_quoted() {
        assert_eq!(synchronous_standby_names(&sync(SyncMode::Off, 1, &["*"])), "");
        assert_eq!(synchronous_standby_names(&sync(SyncMode::First, 1, &["*"])), "FIRST 1 (*)");
        assert_eq!(
            synchronous_standby_names(&sync(SyncMode::Any, 1, &["replica-1", "3f2a9c"])),
            "ANY 1 (\"replica-1\", \"3f2a9c\")"
        );
        let mut vars = PRIMARY.to_vec();
        vars.extend([("REPLICATION_SYNCHRONOUS_MODE", "on"), ("REPLICATION_SYNCHRONOUS_REPLICAS", "a\"b,replica-2")]);
        assert_eq!(
            managed_conf(&settings(&config(&vars))).lines().find(|l| l.starts_with("synchronous")).unwrap(),
            "synchronous_standby_names = 'FIRST 1 (\"a\"\"b\", \"replica-2\")'\t# role"
        );
    }

    #[test]
    fn peers_make_commits_wait_for_a_majority() {
        let off = sync(SyncMode::Off, 1, &["*"]);
        let names = |s: SyncSettings, others| synchronous_standby_names(&majority_sync(&s, others));
        assert_eq!(names(off.clone(), 0), "");
        // Two members (one peer) need both; three need two; five need three.
        assert_eq!(names(off.clone(), 1), "ANY 1 (*)");
        assert_eq!(names(off.clone(), 2), "ANY 1 (*)");
        assert_eq!(names(off, 4), "ANY 2 (*)");
        // Asked for more: kept; for less: raised, and names too few for it give way to any.
        assert_eq!(names(sync(SyncMode::Any, 2, &["a", "b", "c"]), 2), "ANY 2 (\"a\", \"b\", \"c\")");
        assert_eq!(names(sync(SyncMode::First, 1, &["a", "b"]), 4), "FIRST 2 (\"a\", \"b\")");
        assert_eq!(names(sync(SyncMode::Any, 1, &["a"]), 4), "ANY 2 (*)");
        let mut vars = PRIMARY.to_vec();
        vars.push(("REPLICATION_PEERS", "r1,r2"));
        assert_eq!(settings(&config(&vars))["synchronous_standby_names"].0, "ANY 1 (*)");
    }

    #[test]
    fn hba_block_snapshot() {
        let mut vars = PRIMARY.to_vec();
        vars.push(("REPLICATION_USER", "rep\"l"));
        assert_eq!(
            hba_block(&config(&vars)),
            "# BEGIN pg-entrypoint managed block: rewritten at every start, edit outside it\n\
             host all all 0.0.0.0/0 scram-sha-256\n\
             host all all ::/0 scram-sha-256\n\
             host replication \"rep\"\"l\" 0.0.0.0/0 scram-sha-256\n\
             host replication \"rep\"\"l\" ::/0 scram-sha-256\n\
             # END pg-entrypoint managed block\n"
        );
        let standalone = hba_block(&config(&[("POSTGRES_HOST_AUTH_METHOD", "md5"), ("POSTGRES_PASSWORD", "x")]));
        assert!(standalone.contains("host all all ::/0 md5\n") && !standalone.contains("replication"));
    }

    /// A primary with TLS required and the replication user on client certificates.
    fn tls_primary() -> Config {
        let pem = [
            ("/s/tls.crt", "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n"),
            ("/s/tls.key", "-----BEGIN PRIVATE KEY-----\nB\n-----END PRIVATE KEY-----\n"),
        ];
        let mut vars = PRIMARY.to_vec();
        vars.extend([
            ("TLS_MODE", "required"),
            ("TLS_CERT_FILE", "/s/tls.crt"),
            ("TLS_KEY_FILE", "/s/tls.key"),
            ("TLS_CA_FILE", "/s/tls.crt"),
            ("REPLICATION_TLS_CERT_FILE", "/s/tls.crt"),
            ("REPLICATION_TLS_KEY_FILE", "/s/tls.key"),
        ]);
        let mut inputs = MapInputs::with(&vars, "db-1");
        inputs.files.extend(pem.map(|(p, t)| (p.into(), t.into())));
        Config::from_inputs(&inputs).unwrap()
    }

    #[test]
    fn tls_required_rejects_plaintext_first_and_asks_members_for_certificates() {
        let c = tls_primary();
        assert_eq!(
            hba_block(&c),
            "# BEGIN pg-entrypoint managed block: rewritten at every start, edit outside it\n\
             hostnossl all all 0.0.0.0/0 reject\n\
             hostnossl all all ::/0 reject\n\
             hostnossl replication all 0.0.0.0/0 reject\n\
             hostnossl replication all ::/0 reject\n\
             hostssl all all 0.0.0.0/0 scram-sha-256\n\
             hostssl all all ::/0 scram-sha-256\n\
             hostssl replication \"replicator\" 0.0.0.0/0 cert\n\
             hostssl replication \"replicator\" ::/0 cert\n\
             # END pg-entrypoint managed block\n"
        );
        let s = settings(&c);
        let value = |name: &str| s[name].0.as_str();
        assert_eq!(
            [value("ssl"), value("ssl_cert_file"), value("ssl_key_file"), value("ssl_ca_file")],
            [
                "on",
                "/var/run/postgresql/pg-entrypoint-5432.server.crt",
                "/var/run/postgresql/pg-entrypoint-5432.server.key",
                "/var/run/postgresql/pg-entrypoint-5432.ca.crt"
            ]
        );
        let conninfo = conninfo("db", 5432, "replicator", "r1", "/p", true, &client_tls(&c));
        assert!(
            conninfo.ends_with(
                " replication='true' sslmode='verify-full' \
                 sslrootcert='/var/run/postgresql/pg-entrypoint-5432.ca.crt' \
                 sslcert='/var/run/postgresql/pg-entrypoint-5432.replication.crt' \
                 sslkey='/var/run/postgresql/pg-entrypoint-5432.replication.key'"
            ),
            "{conninfo}"
        );
        // Without TLS settings, members are asked with libpq's default, prefer.
        assert_eq!(client_tls(&config(PRIMARY)), [("sslmode", "prefer".to_string())]);
        assert!(!settings(&config(PRIMARY)).contains_key("ssl"));
    }

    #[test]
    fn members_never_answer_a_clear_password_request_where_libpq_can_refuse() {
        let replica = config(&[
            PRIMARY[0],
            PRIMARY[1],
            ("ROLE", "replica"),
            PRIMARY[3],
            ("PRIMARY_HOST", "db"),
            ("REPLICA_NAME", "r1"),
        ]);
        let with =
            |major: u32, auth: &str| Config { tls: replica.tls.clone().with_libpq_of(major, auth), ..replica.clone() };
        let refuse = ("require_auth", "!password,!md5".to_string());
        assert!(client_tls(&with(17, "scram-sha-256")).contains(&refuse));
        assert!(client_tls(&with(16, "trust")).contains(&refuse), "trust and SCRAM still work");
        assert!(!client_tls(&with(15, "scram-sha-256")).contains(&refuse), "libpq 15 refuses the option");
        assert!(!client_tls(&with(17, "password")).contains(&refuse), "our own members ask for it so");
        let conninfo = settings(&with(17, "scram-sha-256"))["primary_conninfo"].0.clone();
        assert!(conninfo.ends_with("sslmode='prefer' require_auth='!password,!md5'"), "{conninfo}");
    }

    #[test]
    fn hba_block_is_replaced_in_place_and_never_accumulates() {
        let user = "local all all trust\n";
        let block_a = hba_block(&config(PRIMARY));
        let block_b = hba_block(&config(&[("POSTGRES_PASSWORD", "x")]));
        let once = with_hba_block(user, &block_a);
        let edited = format!("{once}host mydb me 10.0.0.0/8 md5\n");
        let twice = with_hba_block(&edited, &block_b);
        assert_eq!(twice, format!("{user}\n{block_b}host mydb me 10.0.0.0/8 md5\n"));
        assert_eq!(with_hba_block(&twice, &block_b), twice);
        // END deleted by hand: the user's lines after the orphan BEGIN survive.
        let orphan = format!("{user}{HBA_BEGIN}\nhost mydb me 10.0.0.0/8 md5\n");
        assert_eq!(with_hba_block(&orphan, &block_b), format!("{user}host mydb me 10.0.0.0/8 md5\n\n{block_b}"));
    }

    #[test]
    fn initdb_host_lines_are_dropped() {
        let initdb = "# TYPE  DATABASE USER ADDRESS METHOD\nlocal all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n  hostssl all all ::1/128 md5\nlocal replication all trust\nhost replication all ::1/128 scram-sha-256\n";
        assert_eq!(
            without_host_lines(initdb),
            "# TYPE  DATABASE USER ADDRESS METHOD\nlocal all all trust\nlocal replication all trust\n"
        );
    }

    #[test]
    fn stale_replica_settings_are_dropped_from_auto_conf() {
        let auto = "# Do not edit this file manually!\nprimary_conninfo = 'host=old'\nwork_mem = '8MB'\n Primary_Slot_Name='x'\n";
        assert_eq!(
            without_settings(auto, &["primary_conninfo", "primary_slot_name"]),
            "# Do not edit this file manually!\nwork_mem = '8MB'\n"
        );
    }

    #[test]
    fn include_line_is_added_once() {
        let once = with_include_line("max_connections = 100").unwrap();
        assert_eq!(once, format!("max_connections = 100\n{INCLUDE_LINE}\n"));
        assert_eq!(with_include_line(&once), None);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_conf("a'b\\c\nd"), "'a''b\\\\c\\nd'");
        assert_eq!(quote_identifier("we\"ird name"), "\"we\"\"ird name\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_conninfo("a b'c\\"), "'a b\\'c\\\\'");
        assert_eq!(quote_json("a\"b\\c\n\u{7f}é"), r#""a\"b\\c\u000a\u007fé""#);
        assert_eq!(pgpass("rep", "p:w\\"), "*:*:*:rep:p\\:w\\\\\n");
        assert_eq!(slot_name("Replica-2.example"), "replica_2_example");
    }

    #[test]
    fn replication_role_sql_quotes_the_name_at_both_levels() {
        let sql = replication_role_sql("o'brien\"x", "SCRAM-SHA-256$4096:abc$def:ghi");
        assert!(sql[2].starts_with("GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir"), "{}", sql[2]);
        assert!(sql[2].ends_with(" TO \"o'brien\"\"x\""), "{}", sql[2]);
        assert_eq!(
            sql[3],
            "DO 'BEGIN IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = ''pg_checkpoint'') \
             THEN EXECUTE ''GRANT pg_checkpoint TO \"o''''brien\"\"x\"''; END IF; END'"
        );
        assert_eq!(
            sql[..2],
            [
                "DO 'BEGIN IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = ''o''''brien\"x'') THEN CREATE ROLE \"o''brien\"\"x\"; END IF; END'",
                "ALTER ROLE \"o'brien\"\"x\" WITH LOGIN REPLICATION PASSWORD 'SCRAM-SHA-256$4096:abc$def:ghi'",
            ]
        );
    }
}
