//! The variables this entrypoint reads, so that a misspelt one (the commonest silent
//! misconfiguration) is reported rather than ignored. A test checks that every variable the
//! parser names is listed here.

/// Every variable of ours, by name; a `_FILE` variant of a secret is its name plus `_FILE`.
pub const KNOWN: &[&str] = &[
    "PGDATA",
    "PG_BINDIR",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_DB",
    "POSTGRES_INITDB_ARGS",
    "POSTGRES_INITDB_WALDIR",
    "POSTGRES_HOST_AUTH_METHOD",
    "POSTGRES_UPGRADE",
    "POSTGRES_UPGRADE_METHOD",
    "POSTGRES_UPGRADE_KEEP_OLD",
    "POSTGRES_UPGRADE_REINDEX",
    "INIT_SCRIPTS_DIR",
    "SHUTDOWN_TIMEOUT",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "HTTP_PORT",
    "HTTP_LISTEN",
    "HA_MODE",
    "REPLICATION_ROLE",
    "ROLE",
    "REPLICATION_USER",
    "REPLICATION_PASSWORD",
    "REPLICATION_PASSWORD_PREVIOUS",
    "REPLICATION_PEERS",
    "REPLICATION_SYNCHRONOUS_MODE",
    "REPLICATION_SYNCHRONOUS_COUNT",
    "REPLICATION_SYNCHRONOUS_REPLICAS",
    "REPLICATION_SSLMODE",
    "REPLICATION_TLS_CERT_FILE",
    "REPLICATION_TLS_KEY_FILE",
    "REPLICATION_APPNAME",
    "PRIMARY_HOST",
    "PRIMARY_PORT",
    "PRIMARY_WAIT_TIMEOUT",
    "REPLICA_NAME",
    "REPLICA_RECLONE",
    "REPLICA_CLONE_METHOD",
    "POD_SERVICE",
    "TLS_MODE",
    "TLS_CERT_FILE",
    "TLS_KEY_FILE",
    "TLS_CA_FILE",
    "POSTGRESQL_ENABLE_TLS",
    "POSTGRESQL_TLS_CERT_FILE",
    "POSTGRESQL_TLS_KEY_FILE",
    "POSTGRESQL_TLS_CA_FILE",
    "USE_PATRONI",
    "PATRONI_ENABLE",
    "USE_CITUS",
    "CITUS_ENABLE",
    "ETCD_HOSTS",
    "ETCD_HOST",
    "ETCD_PORT",
    "ADVERTISE_HOST",
    "EXTERNAL_ACCESS_ENABLE",
    "EXTERNAL_ACCESS_METHOD",
    "POSTGRESQL_SHARED_BUFFERS",
    "POSTGRESQL_MAX_CONNECTIONS",
    "POSTGRESQL_WORK_MEM",
    "POSTGRESQL_MAINTENANCE_WORK_MEM",
    "POSTGRESQL_LISTEN_ADDRESSES",
    "POSTGRESQL_UNIX_SOCKET_DIRECTORIES",
    "POSTGRESQL_LOG_STATEMENT",
    "POSTGRESQL_LOG_DURATION",
    "POSTGRESQL_TIMEZONE",
    "POSTGRESQL_PORT",
    "POSTGRESQL_LISTEN_HOST",
    "POSTGRESQL_CONNECT_HOST",
    // The upstream image's, refused with what to use instead (config::server).
    "POSTGRES_BIN",
    "POSTGRES_GROUP",
    "POSTGRESQL_READY_MAX_ATTEMPTS",
    "POSTGRESQL_READY_ATTEMPT_INTERVAL",
];

/// Families where every name is ours, or a prefix that names a setting (`POSTGRESQL_CONFIG_`)
/// or a numbered rule (`PG_HBA_ADD_`). `PATRONI_` is left out: Patroni reads its own
/// `PATRONI_*` variables, more than we could list.
const OURS: &[&str] = &[
    "POSTGRES_",
    "POSTGRESQL_",
    "REPLICATION_",
    "REPLICA_",
    "PRIMARY_",
    "HA_",
    "TLS_",
    "HTTP_",
    "ETCD_",
    "EXTERNAL_ACCESS_",
];
const OPEN_FAMILIES: &[&str] = &["POSTGRESQL_CONFIG_", "PG_HBA_ADD_", "PGBACKREST_", "PGBOUNCER_"];

/// Variables among `vars` (name, value) that look like ours but are not, each with the known
/// name it most likely meant, if one is close.
pub fn unknown(vars: &[(String, String)]) -> Vec<(String, Option<&'static str>)> {
    let secret_file = |n: &str| n.strip_suffix("_FILE").is_some_and(|base| KNOWN.contains(&base));
    let mut found: Vec<(String, Option<&'static str>)> = vars
        .iter()
        .filter(|(n, _)| OURS.iter().any(|p| n.starts_with(p)) || looks_like(n, "HA_MODE"))
        .filter(|(n, _)| !KNOWN.contains(&n.as_str()) && !secret_file(n) && !FOREIGN.contains(&n.as_str()))
        .filter(|(n, _)| !OPEN_FAMILIES.iter().any(|p| n.starts_with(p)))
        .filter(|(n, v)| !is_service_link(n, v))
        .map(|(n, _)| (n.clone(), closest(n)))
        .collect();
    found.sort();
    found
}

/// Common variables of other programs that share a prefix with ours (an application's
/// environment file often names its database as POSTGRES_HOST and POSTGRES_PORT).
const FOREIGN: &[&str] = &["HTTP_PROXY", "POSTGRES_HOST", "POSTGRES_PORT"];

/// Kubernetes' service links: a Service named `postgres`, `primary`, `etcd`, `pgbouncer`...
/// gives every pod `<SERVICE>_SERVICE_HOST`, `<SERVICE>_PORT=tcp://...`,
/// `<SERVICE>_PORT_5432_TCP...`. They are not settings of ours, whatever their prefix.
pub fn is_service_link(name: &str, value: &str) -> bool {
    name.contains("_SERVICE_")
        || name.contains("_PORT_") && (name.ends_with("_TCP") || name.contains("_TCP_") || name.contains("_UDP"))
        || name.ends_with("_PORT") && (value.starts_with("tcp://") || value.starts_with("udp://"))
}

fn looks_like(name: &str, known: &str) -> bool {
    distance(name, known) <= 2
}

fn closest(name: &str) -> Option<&'static str> {
    KNOWN.iter().map(|k| (distance(name, k), *k)).filter(|(d, _)| *d <= 3).min().map(|(_, k)| k)
}

/// Levenshtein distance, by bytes (the names are ASCII).
fn distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (previous + usize::from(ca != cb)).min(row[j] + 1).min(row[j + 1] + 1);
            previous = here;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_variable_is_named_with_what_it_likely_meant() {
        let names: Vec<(String, String)> = [
            "REPLICATION_ROLES",
            "HA_MOD",
            "POSTGRES_PASSWORD_FILE",
            "POSTGRESQL_CONFIG_WORK_MEM",
            "PATH",
            "PRIMARY_HOTS",
            "HTTP_PROXY",
            "POSTGRES_SERVICE_HOST",
            "POSTGRES_PORT_5432_TCP_ADDR",
        ]
        .map(|n| (n.to_string(), "x".to_string()))
        .into_iter()
        .chain([("POSTGRES_PORT".to_string(), "tcp://10.0.0.1:5432".to_string())])
        .collect();
        assert_eq!(
            unknown(&names),
            [
                ("HA_MOD".to_string(), Some("HA_MODE")),
                ("PRIMARY_HOTS".to_string(), Some("PRIMARY_HOST")),
                ("REPLICATION_ROLES".to_string(), Some("REPLICATION_ROLE")),
            ]
        );
    }

    /// The string literals of Rust source without comments: `'"'` and `\"` are not quotes.
    fn string_literals(code: &str) -> Vec<String> {
        let chars: Vec<char> = code.chars().collect();
        let (mut found, mut i) = (Vec::new(), 0);
        while i < chars.len() {
            match (chars[i], chars.get(i + 1), chars.get(i + 2), chars.get(i + 3)) {
                ('\'', Some('\\'), _, Some('\'')) => i += 4,
                ('\'', _, Some('\''), _) => i += 3,
                ('"', ..) => {
                    let mut literal = String::new();
                    i += 1;
                    while i < chars.len() && chars[i] != '"' {
                        if chars[i] == '\\' {
                            i += 1;
                        }
                        literal.extend(chars.get(i));
                        i += 1;
                    }
                    found.push(literal);
                    i += 1;
                }
                _ => i += 1,
            }
        }
        found
    }

    #[test]
    fn the_scanner_sees_through_quote_characters() {
        let found = string_literals("f('\"', \"A\\\"B\", x); g(\"REPLICA_NAME\")");
        assert_eq!(found, ["A\"B", "REPLICA_NAME"]);
    }

    /// Every variable name the parser's sources mention is known: the list cannot fall
    /// behind the parser.
    #[test]
    fn every_variable_the_parser_reads_is_listed() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().is_some_and(|n| n == "tests.rs" || n == "known.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let code: String =
                code.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
            for literal in string_literals(&code).iter().map(String::as_str) {
                let ours = OURS.iter().any(|p| literal.starts_with(p)) && literal.len() > 4;
                let name = literal.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
                if ours && name && !literal.ends_with('_') && !OPEN_FAMILIES.iter().any(|p| literal.starts_with(p)) {
                    assert!(
                        KNOWN.contains(&literal) || literal.strip_suffix("_FILE").is_some_and(|b| KNOWN.contains(&b)),
                        "{} reads {literal}, which config/known.rs does not list",
                        path.display()
                    );
                }
            }
        }
    }
}
