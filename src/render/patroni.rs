//! `patroni.yml` from the configuration. Pure: the caller resolves the addresses and paths.
//!
//! Every string is written double-quoted with YAML escapes, so no value (a password with `#`
//! or `: `, a name with quotes) can change the document's structure.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use crate::config::{Config, Patroni, PatroniSync};
// Every string as a YAML double-quoted scalar, with JSON's escapes (YAML reads them too).
use crate::render::{quote_json as q, Settings, Source};

/// What the file needs beyond the configuration, resolved by the caller.
pub struct Resolved<'a> {
    pub config: &'a Config,
    pub member: &'a Patroni,
    /// The managed settings (listen addresses, socket directories, `POSTGRESQL_CONFIG_*`).
    pub settings: &'a Settings,
    pub port: u16,
    /// How other members reach this one (`ADVERTISE_HOST`, or this host's address).
    pub advertise_host: &'a str,
    pub bindir: &'a Path,
    /// Patroni's password file for the connections it makes.
    pub pgpass: PathBuf,
    /// This binary: Patroni's bootstrap runs `<exe> enforce-initdb`.
    pub exe: &'a Path,
}

/// The settings Patroni itself decides (or must not be given): left out of `parameters`.
/// (`restore_command` goes to `recovery_conf`, where Patroni takes it.)
const PATRONIS_OWN: &[&str] =
    &["listen_addresses", "port", "hot_standby", "primary_conninfo", "primary_slot_name", "restore_command"];

pub fn patroni_yml(i: &Resolved) -> String {
    let c = i.config;
    let m = i.member;
    let mut y = String::new();
    let mut line = |indent: usize, text: String| {
        let _ = writeln!(y, "{:indent$}{text}", "");
    };
    line(0, "# Written by pg-entrypoint at every start, from the environment. PATRONI_* variables win".into());
    line(0, "# over what is here (Patroni reads them itself); see docs/patroni.md.".into());
    line(0, format!("scope: {}", q(&m.scope)));
    line(0, format!("name: {}", q(&m.name)));
    line(0, "restapi:".into());
    let rest_listen = m.rest_api.address.map_or_else(|| "0.0.0.0".to_string(), |a| a.to_string());
    line(2, format!("listen: {}", q(&host_port(&rest_listen, m.rest_api.port))));
    line(2, format!("connect_address: {}", q(&host_port(i.advertise_host, m.rest_api.port))));
    // Patroni asks for these on every state-changing call (PATCH /config, POST /restart,
    // /switchover...); its GETs stay open for HAProxy and the probes. patronictl reads them here.
    line(2, "authentication:".into());
    line(4, format!("username: {}", q(&m.rest_api_user)));
    line(4, format!("password: {}", q(m.rest_api_password.expose())));
    if !m.etcd_hosts.is_empty() {
        let hosts: Vec<String> = m.etcd_hosts.iter().map(|h| q(&h.to_string())).collect();
        line(0, "etcd3:".into());
        line(2, format!("hosts: [{}]", hosts.join(", ")));
    }
    line(0, "bootstrap:".into());
    line(2, "dcs:".into());
    line(4, format!("ttl: {}", m.dcs.ttl));
    line(4, format!("loop_wait: {}", m.dcs.loop_wait));
    line(4, format!("retry_timeout: {}", m.dcs.retry_timeout));
    line(4, format!("maximum_lag_on_failover: {}", m.dcs.maximum_lag_on_failover));
    line(4, format!("synchronous_mode: {}", m.synchronous != PatroniSync::Off));
    line(4, format!("synchronous_mode_strict: {}", m.synchronous == PatroniSync::Strict));
    line(4, format!("synchronous_node_count: {}", m.synchronous_count));
    line(4, "postgresql:".into());
    line(6, format!("use_pg_rewind: {}", m.dcs.use_pg_rewind));
    line(6, format!("use_slots: {}", m.dcs.use_slots));
    // Cluster-wide settings (max_connections...) are read from here only when the cluster
    // is created; later changes go through `patronictl edit-config`.
    parameters(&mut line, 6, i.settings, true);
    // Our own bootstrap: initdb with POSTGRES_INITDB_ARGS, POSTGRES_DB and the init scripts,
    // exactly as a standalone first boot; Patroni then creates the replication role.
    line(2, "method: pg_entrypoint".into());
    line(2, "pg_entrypoint:".into());
    line(4, format!("command: {}", q(&format!("{} enforce-initdb", shell_word(&i.exe.to_string_lossy())))));
    line(4, "no_params: true".into());
    line(0, "postgresql:".into());
    line(2, format!("data_dir: {}", q(&c.pgdata.to_string_lossy())));
    line(2, format!("bin_dir: {}", q(&i.bindir.to_string_lossy())));
    let listen = i.settings.get("listen_addresses").map_or("*", |(v, _)| v.as_str());
    line(2, format!("listen: {}", q(&format!("{listen}:{}", i.port))));
    line(2, format!("connect_address: {}", q(&host_port(i.advertise_host, i.port))));
    line(2, "use_unix_socket: true".into());
    line(2, format!("pgpass: {}", q(&i.pgpass.to_string_lossy())));
    // Patroni's connections to other members (replication, and pg_rewind as the superuser)
    // with REPLICATION_SSLMODE and the CA; the client certificate is the replication user's.
    // libpq's default alone (nothing about TLS configured) adds nothing.
    // Patroni 3.0 drops require_auth from the parameters it passes on: left out here.
    let mut tls = crate::render::client_tls(c);
    tls.retain(|(key, _)| *key != "require_auth");
    let tls = if matches!(&tls[..], [(_, mode)] if mode == "prefer") { Vec::new() } else { tls };
    line(2, "authentication:".into());
    line(4, "superuser:".into());
    line(6, format!("username: {}", q(&c.superuser)));
    if let Some(password) = &c.superuser_password {
        line(6, format!("password: {}", q(password.expose())));
    }
    for (key, value) in tls.iter().filter(|(k, _)| !matches!(*k, "sslcert" | "sslkey")) {
        line(6, format!("{key}: {}", q(value)));
    }
    line(4, "replication:".into());
    line(6, format!("username: {}", q(&m.replication_user)));
    line(6, format!("password: {}", q(m.replication_password.expose())));
    for (key, value) in &tls {
        line(6, format!("{key}: {}", q(value)));
    }
    parameters(&mut line, 2, i.settings, false);
    if let Some(b) = &c.backup {
        // A standby that fell behind fetches WAL from the repository; a new replica is made from
        // its latest backup (no load on the leader), from the leader when it holds none.
        let conf = c.layout.backrest_conf();
        line(2, "recovery_conf:".into());
        line(4, format!("restore_command: {}", q(&crate::render::backup::restore_command(&conf, &b.stanza))));
        line(2, "create_replica_methods: [\"pgbackrest\", \"basebackup\"]".into());
        line(2, "pgbackrest:".into());
        let restore =
            format!("{} restore --type=standby --delta", crate::render::backup::command_prefix(&conf, &b.stanza));
        line(4, format!("command: {}", q(&restore)));
        line(4, "keep_data: true".into());
        line(4, "no_params: true".into());
    }
    // A new replica's clone starts at once instead of waiting for the next checkpoint.
    line(2, "basebackup:".into());
    line(4, "checkpoint: \"fast\"".into());
    line(2, "pg_hba:".into());
    for entry in pg_hba(c, m) {
        line(4, format!("- {}", q(&entry)));
    }
    // Containers have no watchdog device.
    line(0, "watchdog:".into());
    line(2, "mode: \"off\"".into());
    y
}

/// `parameters:` with the managed settings (`overrides_only`: the user's alone).
fn parameters(line: &mut impl FnMut(usize, String), indent: usize, settings: &Settings, overrides_only: bool) {
    let own: Vec<(&String, &String)> = settings
        .iter()
        .filter(|(n, (_, source))| {
            !PATRONIS_OWN.contains(&n.as_str()) && (!overrides_only || *source == Source::Override)
        })
        .map(|(n, (v, _))| (n, v))
        .collect();
    if own.is_empty() {
        return;
    }
    line(indent, "parameters:".into());
    for (name, value) in own {
        line(indent + 2, format!("{name}: {}", q(value)));
    }
}

/// As the official image: local connections trusted, TCP with `POSTGRES_HOST_AUTH_METHOD`
/// (and TLS as configured, the same lines as native mode's).
fn pg_hba(c: &Config, m: &Patroni) -> Vec<String> {
    // Replication always with a password (trust would let anyone on the network copy the data).
    let replication = if c.host_auth_method == "trust" { "trust" } else { "scram-sha-256" };
    let mut lines = vec!["local all all trust".to_string()];
    lines.extend(crate::render::hba_tcp_lines(c, Some(&m.replication_user), replication, &["all"]));
    lines
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// One word for Patroni's `shlex.split`.
fn shell_word(word: &str) -> String {
    if word.chars().all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c)) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MapInputs, Role};

    fn config(vars: &[(&str, &str)]) -> Config {
        Config::from_inputs(&MapInputs::with(vars, "pg-1")).unwrap()
    }

    fn render(c: &Config) -> String {
        let Role::Patroni(member) = &c.role else { panic!("not patroni") };
        let settings = crate::render::settings(c);
        patroni_yml(&Resolved {
            config: c,
            member,
            settings: &settings,
            port: 5432,
            advertise_host: "10.0.0.5",
            bindir: Path::new("/usr/lib/postgresql/17/bin"),
            pgpass: "/var/run/postgresql/pg-entrypoint-5432.patroni.pgpass".into(),
            exe: Path::new("/usr/local/bin/pg-entrypoint"),
        })
    }

    #[test]
    fn snapshot() {
        let c = config(&[
            ("HA_MODE", "patroni"),
            ("POSTGRES_PASSWORD", "s3cret"),
            ("REPLICATION_PASSWORD", "r"),
            ("PATRONI_RESTAPI_PASSWORD", "api s3cret"),
            ("ETCD_HOSTS", "etcd1,etcd2:2390,[::1]"),
            ("REPLICATION_SYNCHRONOUS_MODE", "strict"),
            ("POSTGRESQL_CONFIG_MAX_CONNECTIONS", "200"),
        ]);
        let expected = r#"# Written by pg-entrypoint at every start, from the environment. PATRONI_* variables win
# over what is here (Patroni reads them itself); see docs/patroni.md.
scope: "pg"
name: "pg-1"
restapi:
  listen: "0.0.0.0:8008"
  connect_address: "10.0.0.5:8008"
  authentication:
    username: "patroni"
    password: "api s3cret"
etcd3:
  hosts: ["etcd1:2379", "etcd2:2390", "[::1]:2379"]
bootstrap:
  dcs:
    ttl: 20
    loop_wait: 5
    retry_timeout: 5
    maximum_lag_on_failover: 1048576
    synchronous_mode: true
    synchronous_mode_strict: true
    synchronous_node_count: 1
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        max_connections: "200"
  method: pg_entrypoint
  pg_entrypoint:
    command: "/usr/local/bin/pg-entrypoint enforce-initdb"
    no_params: true
postgresql:
  data_dir: "/var/lib/postgresql/data"
  bin_dir: "/usr/lib/postgresql/17/bin"
  listen: "*:5432"
  connect_address: "10.0.0.5:5432"
  use_unix_socket: true
  pgpass: "/var/run/postgresql/pg-entrypoint-5432.patroni.pgpass"
  authentication:
    superuser:
      username: "postgres"
      password: "s3cret"
    replication:
      username: "replicator"
      password: "r"
  parameters:
    max_connections: "200"
    unix_socket_directories: "/var/run/postgresql"
  basebackup:
    checkpoint: "fast"
  pg_hba:
    - "local all all trust"
    - "host all all all scram-sha-256"
    - "host replication \"replicator\" all scram-sha-256"
watchdog:
  mode: "off"
"#;
        assert_eq!(render(&c), expected);
    }

    #[test]
    fn no_value_can_change_the_structure() {
        let c = config(&[
            ("HA_MODE", "patroni"),
            ("POSTGRES_PASSWORD", "a\"b: c # d\\\ne"),
            ("REPLICATION_PASSWORD", "x'y"),
            ("PATRONI_RESTAPI_PASSWORD", "p"),
            ("PATRONI_ETCD3_HOSTS", "e:2379"),
        ]);
        let y = render(&c);
        assert!(y.contains(r#"      password: "a\"b: c # d\\\u000ae""#), "{y}");
        assert!(!y.contains("etcd3:"), "Patroni's own variable is left to Patroni: {y}");
        assert_eq!(shell_word("/opt/my dir/pg-entrypoint"), "'/opt/my dir/pg-entrypoint'");
    }

    #[test]
    fn tls_reaches_postgres_patronis_connections_and_pg_hba() {
        let mut inputs = MapInputs::with(
            &[
                ("HA_MODE", "patroni"),
                ("POSTGRES_PASSWORD", "pw"),
                ("REPLICATION_PASSWORD", "r"),
                ("PATRONI_RESTAPI_PASSWORD", "p"),
                ("ETCD_HOSTS", "e"),
                ("TLS_MODE", "required"),
                ("TLS_CERT_FILE", "/s/c"),
                ("TLS_KEY_FILE", "/s/k"),
                ("TLS_CA_FILE", "/s/c"),
            ],
            "pg-1",
        );
        inputs.files.insert("/s/c".into(), "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n".into());
        inputs.files.insert("/s/k".into(), "-----BEGIN PRIVATE KEY-----\nB\n-----END PRIVATE KEY-----\n".into());
        let y = render(&Config::from_inputs(&inputs).unwrap());
        let ca = "      sslrootcert: \"/var/run/postgresql/pg-entrypoint-5432.ca.crt\"\n";
        assert_eq!(y.matches("      sslmode: \"verify-full\"\n").count(), 2, "superuser and replication: {y}");
        assert_eq!(y.matches(ca).count(), 2, "{y}");
        assert!(y.contains("    ssl: \"on\"\n    ssl_ca_file:"), "{y}");
        assert!(
            y.contains("    - \"hostnossl all all all reject\"\n    - \"hostnossl replication all all reject\"\n"),
            "{y}"
        );
        assert!(y.contains("    - \"hostssl replication \\\"replicator\\\" all scram-sha-256\""), "{y}");
    }
}
