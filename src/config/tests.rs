use super::native::statefulset_ordinal;
use super::parser::parse_duration;
use super::*;

#[test]
fn a_member_knows_itself_among_its_peers() {
    let at = |host: &str, port| Address { host: host.into(), port };
    assert!(at("pg-0", 5432).is_self(5432, "pg-0"));
    assert!(at("DB.example", 5432).is_self(5432, "db.example"));
    assert!(!at("pg-0", 5433).is_self(5432, "pg-0"));
    // Another host whose name shares a first label is another member.
    assert!(!at("db.dc2.example", 5432).is_self(5432, "db"));
    assert!(!at("db", 5432).is_self(5432, "db.dc1.example"));
    // Loopback is this host: only the port tells members on one host apart.
    assert!(at("127.0.0.1", 55511).is_self(55511, ""));
    assert!(at("[::1]", 55511).is_self(55511, ""));
    assert!(!at("127.0.0.1", 55512).is_self(55511, ""));
    assert!(!at("10.0.0.1", 5432).is_self(5432, ""), "an address is not resolved or bound");
}

fn inputs(vars: &[(&str, &str)]) -> MapInputs {
    MapInputs::with(vars, "host-a")
}

fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_inputs(&inputs(vars))
}

fn problems(vars: &[(&str, &str)]) -> Vec<String> {
    parse(vars).expect_err("expected a configuration error").0.iter().map(ToString::to_string).collect()
}

#[test]
fn the_http_endpoint_is_on_by_default_and_can_be_moved_or_disabled() {
    let c = parse(&[("POSTGRES_PASSWORD", "pw")]).unwrap();
    assert_eq!(c.http, Some(HttpListen { address: None, port: 8008 }));
    assert_eq!(c.http.unwrap().candidates().len(), 2, "IPv6 and IPv4 both tried");
    for off in ["0", "off", "OFF"] {
        assert_eq!(parse(&[("POSTGRES_PASSWORD", "pw"), ("HTTP_PORT", off)]).unwrap().http, None);
    }
    let c = parse(&[("POSTGRES_PASSWORD", "pw"), ("HTTP_PORT", "9000"), ("HTTP_LISTEN", "[::1]")]).unwrap();
    assert_eq!(c.http.unwrap().candidates(), ["[::1]:9000".parse().unwrap()]);
    let p = problems(&[("POSTGRES_PASSWORD", "pw"), ("HTTP_PORT", "http"), ("HTTP_LISTEN", "localhost")]);
    assert_eq!(
        p,
        [
            "HTTP_PORT: \"http\" is not a port; accepted: 1 to 65535, or 0/off to disable",
            "HTTP_LISTEN: \"localhost\" is not an IP address; accepted: e.g. 0.0.0.0, ::, 127.0.0.1"
        ]
    );
}

#[test]
fn defaults_match_the_official_image() {
    let c = parse(&[("POSTGRES_PASSWORD", "pw")]).unwrap();
    assert_eq!(c.pgdata, PathBuf::from("/var/lib/postgresql/data"));
    assert_eq!(c.superuser, "postgres");
    assert_eq!(c.database, "postgres");
    assert_eq!(c.host_auth_method, "scram-sha-256");
    assert_eq!(c.role, Role::Standalone);
    assert_eq!(c.init_scripts_dir, PathBuf::from("/docker-entrypoint-initdb.d"));
    assert_eq!(c.shutdown_timeout, Duration::from_secs(8));
}

#[test]
fn peers_are_addresses_with_a_default_port() {
    let primary =
        [("POSTGRES_PASSWORD", "pw"), ("HA_MODE", "native"), ("ROLE", "primary"), ("REPLICATION_PASSWORD", "r")];
    let mut vars = primary.to_vec();
    vars.push(("REPLICATION_PEERS", "replica-1, 10.0.0.3:6432,[::1]:5433,"));
    let c = parse(&vars).unwrap();
    let addr = |h: &str, p| Address { host: h.into(), port: p };
    assert_eq!(c.replication().unwrap().peers, [addr("replica-1", 5432), addr("10.0.0.3", 6432), addr("::1", 5433)]);
    vars.pop();
    vars.push(("REPLICATION_PEERS", "a b,db:99999"));
    assert_eq!(
        problems(&vars),
        [
            "REPLICATION_PEERS: \"a b\" is not an address; accepted: a comma-separated list of host, host:port or [ipv6]:port",
            "REPLICATION_PEERS: \"db:99999\" is not an address; accepted: a comma-separated list of host, host:port or [ipv6]:port",
        ]
    );
}

#[test]
fn paths_hosts_log_settings_and_includes_are_checked() {
    let out = problems(&[
        ("POSTGRES_PASSWORD", "pw"),
        ("PGDATA", "/usr/"),
        ("LOG_LEVEL", "loud"),
        ("LOG_FORMAT", "xml"),
        ("POSTGRESQL_CONFIG_INCLUDE_DIR", "/etc"),
        ("POSTGRESQL_CONFIG_WORK_MEM", ""),
    ]);
    assert_eq!(
        out,
        [
            "PGDATA: \"/usr/\" is a system directory; accepted: a directory of its own, e.g. /var/lib/postgresql/data",
            "LOG_LEVEL: \"loud\" is not accepted; accepted: error, warn, info, debug, trace",
            "LOG_FORMAT: \"xml\" is not accepted; accepted: text, json",
            "POSTGRESQL_CONFIG_INCLUDE_DIR: is an include directive, not a setting: it would bypass the settings \
             refused here; accepted: POSTGRESQL_CONFIG_<NAME> for each setting",
        ]
    );
    assert!(problems(&[("POSTGRES_PASSWORD", "pw"), ("PGDATA", "/data\n2")])[0].contains("control character"));
    let replica = [
        ("POSTGRES_PASSWORD", "pw"),
        ("HA_MODE", "native"),
        ("ROLE", "replica"),
        ("REPLICATION_PASSWORD", "r"),
        ("PRIMARY_HOST", "db 1"),
    ];
    assert!(problems(&replica)[0].starts_with("PRIMARY_HOST: \"db 1\" contains a space"));
    // An empty override counts as unset.
    let c = parse(&[("POSTGRES_PASSWORD", "pw"), ("POSTGRESQL_CONFIG_WORK_MEM", ""), ("LOG_LEVEL", "WARN")]).unwrap();
    assert!(c.overrides.is_empty());
}

#[test]
fn reserved_names_and_names_postgres_would_alter_are_refused() {
    let out = problems(&[
        ("POSTGRES_PASSWORD", "pw"),
        ("POSTGRES_USER", "pg_admin"),
        ("POSTGRES_DB", "template1"),
        ("POSTGRES_INITDB_ARGS", "--data-checksums -D /elsewhere"),
    ]);
    assert!(out[0].starts_with("POSTGRES_USER: \"pg_admin\" is reserved by PostgreSQL"), "{out:?}");
    assert!(out[1].starts_with("POSTGRES_DB: \"template1\" is a template database"), "{out:?}");
    assert!(out[2].starts_with("POSTGRES_INITDB_ARGS: sets the data directory"), "{out:?}");
    let replica = [
        ("POSTGRES_PASSWORD", "pw"),
        ("HA_MODE", "native"),
        ("ROLE", "replica"),
        ("REPLICATION_PASSWORD", "r"),
        ("PRIMARY_HOST", "db"),
        ("REPLICATION_USER", "public"),
        ("REPLICA_NAME", "réplica"),
        ("REPLICATION_SYNCHRONOUS_MODE", "any"),
        ("REPLICATION_SYNCHRONOUS_REPLICAS", "a-b,a_b"),
        ("REPLICATION_SYNCHRONOUS_COUNT", "3000000000"),
    ];
    let out = problems(&replica);
    assert!(out.iter().any(|p| p.starts_with("REPLICATION_USER: \"public\" is reserved")), "{out:?}");
    assert!(
        out.iter().any(|p| p.starts_with("REPLICA_NAME: \"réplica\" has characters PostgreSQL does not keep")),
        "{out:?}"
    );
    assert!(out.iter().any(|p| p.contains("\"a-b\" and \"a_b\" would share the replication slot \"a_b\"")), "{out:?}");
    assert!(out.iter().any(|p| p.starts_with("REPLICATION_SYNCHRONOUS_COUNT: \"3000000000\"")), "{out:?}");
}

#[test]
fn database_defaults_to_the_user() {
    let c = parse(&[("POSTGRES_PASSWORD", "pw"), ("POSTGRES_USER", "alice")]).unwrap();
    assert_eq!(c.database, "alice");
}

#[test]
fn password_is_required_only_to_create_a_cluster_unless_trust() {
    let c = parse(&[]).unwrap();
    assert!(c.password_problem(false).is_none(), "an initialised volume starts without it");
    let err = c.password_problem(true).unwrap().to_string();
    assert!(err.contains("POSTGRES_PASSWORD: is required to initialise an empty PGDATA"), "{err}");
    assert!(parse(&[("POSTGRES_HOST_AUTH_METHOD", "trust")]).unwrap().password_problem(true).is_none());
    let replica =
        parse(&[("HA_MODE", "native"), ("ROLE", "replica"), ("REPLICATION_PASSWORD", "r"), ("PRIMARY_HOST", "p")]);
    assert!(replica.unwrap().password_problem(true).is_none(), "a replica clones, it does not initdb");
}

#[test]
fn the_official_images_file_variables_are_read_from_files() {
    let mut i = inputs(&[
        ("POSTGRES_PASSWORD", "pw"),
        ("POSTGRES_USER_FILE", "/run/secrets/user"),
        ("POSTGRES_DB_FILE", "/run/secrets/db"),
        ("POSTGRES_INITDB_ARGS_FILE", "/run/secrets/args"),
    ]);
    i.files.insert("/run/secrets/user".into(), "alice\n".into());
    i.files.insert("/run/secrets/db".into(), "app\n".into());
    i.files.insert("/run/secrets/args".into(), "--data-checksums\n".into());
    let c = Config::from_inputs(&i).unwrap();
    assert_eq!((c.superuser.as_str(), c.database.as_str()), ("alice", "app"));
    assert_eq!(c.initdb_args, ["--data-checksums"]);
    i.vars.insert("POSTGRES_USER".into(), "bob".into());
    let err = Config::from_inputs(&i).unwrap_err().to_string();
    assert!(err.contains("both POSTGRES_USER and POSTGRES_USER_FILE are set"), "{err}");
}

#[test]
fn auto_takes_the_ordinal_from_the_host_name() {
    let vars: &[(&str, &str)] = &[
        ("POSTGRES_PASSWORD", "pw"),
        ("HA_MODE", "native"),
        ("REPLICATION_ROLE", "auto"),
        ("REPLICATION_PASSWORD", "r"),
        ("POD_SERVICE", "pg"),
        ("REPLICATION_PEERS", "pg-0.pg,pg-1.pg:5433,pg-2.pg"),
    ];
    let auto = |hostname: &str| Config::from_inputs(&MapInputs::with(vars, hostname));
    let Role::Auto(one) = auto("pg-1").unwrap().role else { panic!("not auto") };
    assert_eq!(one.ordinal, 1);
    assert_eq!((one.replica.primary_host.as_str(), one.replica.name.as_str()), ("pg-0.pg", "pg-1"));
    let peers: Vec<String> = one.replica.replication.peers.iter().map(ToString::to_string).collect();
    assert_eq!(peers, ["pg-0.pg:5432", "pg-2.pg:5432"], "its own entry is skipped");
    let Role::Auto(zero) = auto("pg-0").unwrap().role else { panic!("not auto") };
    assert_eq!(zero.ordinal, 0);
    assert_eq!(statefulset_ordinal("db-cluster-12.pg.ns.svc"), Some(("db-cluster".into(), 12)));
    for hostname in ["pg-x", "web", "pg-", "-3", "pg-+1"] {
        let err = auto(hostname).unwrap_err().to_string();
        assert!(
            err.contains(&format!("REPLICATION_ROLE: is auto, but the host name {hostname:?} has no StatefulSet")),
            "{err}"
        );
    }
    // No POD_SERVICE and no PRIMARY_HOST; no peers but itself.
    let mut bare: Vec<(&str, &str)> = vars.iter().filter(|(k, _)| *k != "POD_SERVICE").copied().collect();
    let err = Config::from_inputs(&MapInputs::with(&bare, "pg-1")).unwrap_err().to_string();
    assert!(err.contains("PRIMARY_HOST: is required with REPLICATION_ROLE=auto unless POD_SERVICE"), "{err}");
    bare.push(("PRIMARY_HOST", "db-main"));
    bare.retain(|(k, _)| *k != "REPLICATION_PEERS");
    bare.push(("REPLICATION_PEERS", "pg-1"));
    let err = Config::from_inputs(&MapInputs::with(&bare, "pg-1")).unwrap_err().to_string();
    assert!(err.contains("REPLICATION_PEERS: is required with REPLICATION_ROLE=auto"), "{err}");
}

#[test]
fn secret_from_file_loses_trailing_newlines_only() {
    let mut i = inputs(&[("POSTGRES_PASSWORD_FILE", "/run/secrets/pw")]);
    i.files.insert("/run/secrets/pw".into(), " p a$s\n\n".into());
    let c = Config::from_inputs(&i).unwrap();
    assert_eq!(c.superuser_password.unwrap().expose(), " p a$s");
}

#[test]
fn both_secret_forms_is_an_error_that_does_not_echo_the_secret() {
    let mut i = inputs(&[("POSTGRES_PASSWORD", "hunter2"), ("POSTGRES_PASSWORD_FILE", "/f")]);
    i.files.insert("/f".into(), "x".into());
    let err = Config::from_inputs(&i).unwrap_err().to_string();
    assert!(err.contains("both POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE are set"), "{err}");
    assert!(!err.contains("hunter2"));
}

#[test]
fn unreadable_secret_file_names_the_variable() {
    let p = problems(&[("POSTGRES_PASSWORD_FILE", "/nope")]);
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("POSTGRES_PASSWORD_FILE: cannot read \"/nope\""), "{p:?}");
}

#[test]
fn all_problems_are_reported_together() {
    let p = problems(&[
        ("HA_MODE", "paxos"),
        ("POSTGRES_HOST_AUTH_METHOD", "ident"),
        ("PGDATA", "relative/dir"),
        ("SHUTDOWN_TIMEOUT", "soon"),
    ]);
    let vars: Vec<&str> = p.iter().map(|s| s.split(':').next().unwrap()).collect();
    assert_eq!(vars, ["PGDATA", "POSTGRES_HOST_AUTH_METHOD", "SHUTDOWN_TIMEOUT", "HA_MODE"], "{p:?}");
}

#[test]
fn native_primary() {
    let c = parse(&[
        ("POSTGRES_PASSWORD", "pw"),
        ("HA_MODE", "native"),
        ("ROLE", "Primary"),
        ("REPLICATION_PASSWORD", "rpw"),
    ])
    .unwrap();
    let Role::Primary(r) = c.role else { panic!("not a primary: {:?}", c.role) };
    assert_eq!(r.user, "replicator");
    assert_eq!(r.password.expose(), "rpw");
    assert_eq!(r.sync, SyncSettings { mode: SyncMode::Off, count: 1, names: vec!["*".into()] });
}

#[test]
fn native_needs_role_and_replication_password() {
    let p = problems(&[("POSTGRES_PASSWORD", "pw"), ("HA_MODE", "native")]);
    assert_eq!(
        p,
        [
            "REPLICATION_PASSWORD: is required with HA_MODE=native (or REPLICATION_PASSWORD_FILE)",
            "REPLICATION_ROLE: is required with HA_MODE=native; accepted: primary, replica, auto (alias ROLE)",
        ]
    );
}

#[test]
fn role_and_alias_must_agree() {
    let p = problems(&[
        ("POSTGRES_PASSWORD", "pw"),
        ("HA_MODE", "native"),
        ("REPLICATION_PASSWORD", "r"),
        ("REPLICATION_ROLE", "primary"),
        ("ROLE", "replica"),
    ]);
    assert_eq!(p, ["REPLICATION_ROLE: \"primary\" disagrees with ROLE=\"replica\"; set one of them"]);
}

#[test]
fn role_without_ha_mode_is_an_error() {
    let p = problems(&[("POSTGRES_PASSWORD", "pw"), ("REPLICATION_ROLE", "replica")]);
    assert_eq!(p, ["REPLICATION_ROLE: is \"replica\" but HA_MODE is not set; set HA_MODE=native for replication"]);
}

#[test]
fn replica_needs_primary_host_and_takes_hostname_as_name() {
    let native =
        [("POSTGRES_PASSWORD", "pw"), ("HA_MODE", "native"), ("ROLE", "replica"), ("REPLICATION_PASSWORD", "r")];
    assert_eq!(problems(&native), ["PRIMARY_HOST: is required for a replica: the host name or address of the primary"]);
    let mut vars = native.to_vec();
    vars.push(("PRIMARY_HOST", "db-primary"));
    let Role::Replica(r) = parse(&vars).unwrap().role else { panic!() };
    assert_eq!((r.primary_host.as_str(), r.primary_port, r.name.as_str()), ("db-primary", 5432, "host-a"));
    assert_eq!(r.wait_timeout, Duration::from_secs(120));
    vars.push(("REPLICATION_APPNAME", "replica-2"));
    vars.push(("PRIMARY_WAIT_TIMEOUT", "2m"));
    let Role::Replica(r) = parse(&vars).unwrap().role else { panic!() };
    assert_eq!(r.name, "replica-2");
    assert_eq!(r.wait_timeout, Duration::from_secs(120));
}

#[test]
fn patroni_or_citus_with_native_is_an_error() {
    let p = problems(&[
        ("POSTGRES_PASSWORD", "pw"),
        ("HA_MODE", "native"),
        ("ROLE", "primary"),
        ("REPLICATION_PASSWORD", "r"),
        ("PATRONI_ENABLE", "YES"),
        ("USE_CITUS", "1"),
    ]);
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p[0].starts_with("PATRONI_ENABLE: is true while HA_MODE=native; only one HA method"));
    assert_eq!(p[1], "USE_CITUS: is true, but Citus is not in this image; accepted: false, or unset");
    assert_eq!(
        problems(&[("POSTGRES_PASSWORD", "pw"), ("HA_MODE", "patroni"), ("USE_PATRONI", "false")])[0],
        "USE_PATRONI: is false while HA_MODE=patroni; set one of them"
    );
    assert_eq!(
        problems(&[("POSTGRES_PASSWORD", "pw"), ("USE_CITUS", "maybe")]),
        ["USE_CITUS: \"maybe\" is not a boolean; accepted: true/false, on/off, yes/no, 1/0"]
    );
}

const PATRONI: [(&str, &str); 5] = [
    ("POSTGRES_PASSWORD", "pw"),
    ("REPLICATION_PASSWORD", "r"),
    ("PATRONI_RESTAPI_PASSWORD", "api"),
    ("ETCD_HOSTS", "etcd1, etcd2:2390"),
    ("USE_PATRONI", "yes"),
];

#[test]
fn patroni_member() {
    let mut vars = PATRONI.to_vec();
    vars.extend([("REPLICATION_SYNCHRONOUS_MODE", "on"), ("HTTP_PORT", "8009")]);
    let c = parse(&vars).unwrap();
    let Role::Patroni(m) = &c.role else { panic!("{:?}", c.role) };
    assert_eq!((m.scope.as_str(), m.name.as_str()), ("pg", "host-a"));
    let hosts: Vec<String> = m.etcd_hosts.iter().map(ToString::to_string).collect();
    assert_eq!(hosts, ["etcd1:2379", "etcd2:2390"]);
    assert_eq!((m.synchronous, m.synchronous_count, m.rest_api.port), (PatroniSync::On, 1, 8009));
    assert_eq!(c.http, None, "our endpoint stays off: Patroni's REST API has the port");
    assert_eq!(c.replication(), None);
    assert_eq!((m.rest_api_user.as_str(), m.rest_api_password.expose()), ("patroni", "api"));
}

#[test]
fn patroni_needs_rest_api_credentials() {
    let mut vars = PATRONI.to_vec();
    vars.retain(|(k, _)| *k != "PATRONI_RESTAPI_PASSWORD");
    let p = problems(&vars);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("PATRONI_RESTAPI_PASSWORD: is required with HA_MODE=patroni"), "{p:?}");
    vars.extend([("PATRONI_RESTAPI_PASSWORD", "a\u{7}b"), ("PATRONI_RESTAPI_USERNAME", "ad:min")]);
    let p = problems(&vars);
    assert!(p[0].starts_with("PATRONI_RESTAPI_USERNAME: \"ad:min\" is not accepted"), "{p:?}");
    assert!(p[1].starts_with("PATRONI_RESTAPI_PASSWORD: contains a control character"), "{p:?}");
    assert!(!p.iter().any(|p| p.contains("a\u{7}b")), "the password is never echoed: {p:?}");
}

#[test]
fn patroni_refuses_what_it_decides_itself() {
    let mut vars = PATRONI.to_vec();
    vars.retain(|(k, _)| *k != "ETCD_HOSTS" && *k != "POSTGRES_PASSWORD");
    vars.extend([
        ("ROLE", "replica"),
        ("PRIMARY_HOST", "pg-0"),
        ("REPLICATION_SYNCHRONOUS_MODE", "any"),
        ("HTTP_PORT", "off"),
        ("PATRONI_SCOPE", "a/b"),
    ]);
    let p = problems(&vars);
    let vars: Vec<&str> = p.iter().map(|s| s.split(':').next().unwrap()).collect();
    assert_eq!(
        vars,
        [
            "ROLE",
            "PRIMARY_HOST",
            "PATRONI_SCOPE",
            "ETCD_HOSTS",
            "REPLICATION_SYNCHRONOUS_MODE",
            "HTTP_PORT",
            "POSTGRES_PASSWORD"
        ],
        "{p:?}"
    );
    assert!(p[0].contains("Patroni decides which member is the primary"), "{p:?}");
    let bad_etcd = problems(&[PATRONI[0], PATRONI[1], PATRONI[2], PATRONI[4], ("ETCD_HOSTS", "http://etcd1:2379")]);
    assert_eq!(
        bad_etcd,
        ["ETCD_HOSTS: \"http://etcd1:2379\" is not an etcd address; accepted: a comma-separated list of host, host:port or [ipv6]:port"]
    );
    // Patroni's own variable is enough.
    assert!(parse(&[PATRONI[0], PATRONI[1], PATRONI[2], PATRONI[4], ("PATRONI_ETCD3_HOSTS", "'e1:2379'")]).is_ok());
    // Or the Kubernetes API as Patroni's store, but not both stores.
    assert!(parse(&[PATRONI[0], PATRONI[1], PATRONI[2], PATRONI[4], ("PATRONI_KUBERNETES_NAMESPACE", "db")]).is_ok());
    let both = problems(&[
        PATRONI[0],
        PATRONI[1],
        PATRONI[2],
        PATRONI[4],
        ("ETCD_HOSTS", "etcd1"),
        ("PATRONI_KUBERNETES_USE_ENDPOINTS", "true"),
    ]);
    assert_eq!(
        both,
        ["ETCD_HOSTS: is set, and so is PATRONI_KUBERNETES_USE_ENDPOINTS: Patroni keeps its state in one store; unset one of them"]
    );
}

#[test]
fn sync_count_cannot_exceed_names() {
    let p = problems(&[
        ("POSTGRES_PASSWORD", "pw"),
        ("HA_MODE", "native"),
        ("ROLE", "primary"),
        ("REPLICATION_PASSWORD", "r"),
        ("REPLICATION_SYNCHRONOUS_MODE", "any"),
        ("REPLICATION_SYNCHRONOUS_COUNT", "3"),
        ("REPLICATION_SYNCHRONOUS_REPLICAS", "replica-1, replica-2"),
    ]);
    assert_eq!(
        p,
        ["REPLICATION_SYNCHRONOUS_COUNT: 3 is more than the 2 name(s) in REPLICATION_SYNCHRONOUS_REPLICAS; accepted: 1 to 2"]
    );
}

#[test]
fn overrides_are_lower_cased_sorted_and_checked() {
    let c = parse(&[
        ("POSTGRES_PASSWORD", "pw"),
        ("POSTGRESQL_CONFIG_WORK_MEM", "8MB"),
        ("POSTGRESQL_CONFIG_MAX_CONNECTIONS", "200"),
    ])
    .unwrap();
    assert_eq!(c.overrides, [("max_connections".into(), "200".into()), ("work_mem".into(), "8MB".into())]);
    let p = problems(&[("POSTGRES_PASSWORD", "pw"), ("POSTGRESQL_CONFIG_HBA_FILE", "/x"), ("POSTGRESQL_CONFIG_", "1")]);
    assert_eq!(p.len(), 2, "{p:?}");
}

#[test]
fn a_primary_cannot_turn_off_wal_for_replicas() {
    let p = problems(&[
        ("POSTGRES_PASSWORD", "pw"),
        ("HA_MODE", "native"),
        ("ROLE", "primary"),
        ("REPLICATION_PASSWORD", "r"),
        ("POSTGRESQL_CONFIG_WAL_LEVEL", "minimal"),
    ]);
    assert_eq!(
        p,
        ["POSTGRESQL_CONFIG_WAL_LEVEL: \"minimal\" cannot stream to replicas; accepted on a primary: replica, logical"]
    );
}

#[test]
fn identifiers_are_bounded_and_printable() {
    let long = "x".repeat(64);
    let p = problems(&[("POSTGRES_PASSWORD", "pw"), ("POSTGRES_USER", &long), ("POSTGRES_DB", "a\nb")]);
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p[0].starts_with("POSTGRES_USER:") && p[0].contains("64 bytes long; at most 63"));
    assert!(p[1].starts_with("POSTGRES_DB:") && p[1].contains("control character"));
    // Quotes, spaces and unicode are fine: they are quoted wherever they are used.
    assert!(parse(&[("POSTGRES_PASSWORD", "pw"), ("POSTGRES_USER", "Al ice-O.Neil ü")]).is_ok());
    assert!(parse(&[("POSTGRES_PASSWORD", "pw"), ("POSTGRES_DB", "d\"b'$\\")]).is_ok());
    assert_eq!(
        problems(&[("POSTGRES_PASSWORD", "pw"), ("POSTGRES_USER", "o'neil")]),
        ["POSTGRES_USER: \"o'neil\" contains one of \" $ ' \\, which initdb does not accept for the superuser"]
    );
}

#[test]
fn booleans_and_durations() {
    for (s, b) in [
        ("TRUE", true),
        ("on", true),
        ("Yes", true),
        ("1", true),
        ("false", false),
        ("OFF", false),
        ("no", false),
        ("0", false),
    ] {
        assert_eq!(parse_bool(s), Some(b), "{s}");
    }
    assert_eq!(parse_bool("y"), None);
    assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
    assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
    assert_eq!(parse_duration("3m"), Some(Duration::from_secs(180)));
    assert_eq!(parse_duration("-1"), None);
    assert_eq!(parse_duration("999999999999999999m"), None);
    assert_eq!(parse_duration("86401"), None);
}

#[test]
fn a_volume_at_the_upstream_data_path_is_used_never_bypassed() {
    let upstream = std::path::PathBuf::from(layout::UPSTREAM_PGDATA);
    let official = std::path::PathBuf::from(DEFAULT_PGDATA);
    let vars = [("POSTGRES_PASSWORD", "pw"), ("PGDATA", DEFAULT_PGDATA)];
    let with = |mounted: Vec<std::path::PathBuf>, with_data: Vec<std::path::PathBuf>| {
        let mut i = inputs(&vars);
        i.mounted = mounted;
        i.with_data = with_data;
        Config::from_inputs(&i)
    };
    // Nothing mounted there: the official path, as always.
    assert_eq!(with(vec![official.clone()], vec![]).unwrap().pgdata, official);
    // The upstream compose file's volume: used, even with the image's own (empty) volume.
    assert_eq!(with(vec![upstream.clone()], vec![upstream.clone()]).unwrap().pgdata, upstream);
    assert_eq!(with(vec![official.clone(), upstream.clone()], vec![]).unwrap().pgdata, upstream);
    // Data at the official path and a volume at the upstream one: which is meant is unclear.
    let err = with(vec![official.clone(), upstream.clone()], vec![official.clone()]).unwrap_err().to_string();
    assert!(err.contains("PGDATA: is /var/lib/postgresql/data, which holds data, and /usr/local/pgsql/data"), "{err}");
    // PGDATA chosen by the user wins.
    let mut i = inputs(&[("POSTGRES_PASSWORD", "pw"), ("PGDATA", "/srv/pg")]);
    i.mounted = vec![upstream.clone()];
    assert_eq!(Config::from_inputs(&i).unwrap().pgdata, std::path::PathBuf::from("/srv/pg"));
}

#[test]
fn backup_variables_without_the_switch_are_refused_and_pooling_is_not_built() {
    let found = problems(&[("PGBACKREST_REPO1_PATH", "/backups"), ("PGBACKREST_STANZA", "x")]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with(
            "PGBACKREST_REPO1_PATH: is set (PGBACKREST_REPO1_PATH, PGBACKREST_STANZA), but PGBACKREST_ENABLE is not"
        ),
        "{found:?}"
    );
    let found = problems(&[("PGBOUNCER_LISTEN_PORT", "6432")]);
    assert!(
        found[0].starts_with("PGBOUNCER_LISTEN_PORT: is set (PGBOUNCER_LISTEN_PORT), but PGBOUNCER_ENABLE is not"),
        "{found:?}"
    );
    let off = parse(&[("POSTGRES_PASSWORD", "pw"), ("PGBACKREST_ENABLE", "false"), ("PGBACKREST_STANZA", "x")]);
    assert_eq!(off.unwrap().backup, None);
}

#[test]
fn backups_pass_pgbackrests_options_through_and_keep_secrets_secret() {
    use super::backup::{BackupKind, OptionValue, RestoreTarget};
    let mut i = inputs(&[
        ("POSTGRES_PASSWORD", "pw"),
        ("PGBACKREST_ENABLE", "true"),
        ("PGBACKREST_REPO1_TYPE", "s3"),
        ("PGBACKREST_REPO1_S3_BUCKET", "b"),
        ("PGBACKREST_REPO1_S3_VERIFY_TLS", "false"),
        ("PGBACKREST_REPO1_S3_KEY_SECRET_FILE", "/run/secrets/s3"),
        ("PGBACKREST_REPO1_S3_CA_FILE", "/etc/ca.pem"),
        ("PGBACKREST_AUTO_ENABLE", "true"),
        ("PGBACKREST_AUTO_DIFF_CRON", "off"),
        ("PGBACKREST_AUTO_TIMEZONE", "Asia/Jakarta"),
        ("PGBACKREST_RESTORE", "true"),
        ("PGBACKREST_RESTORE_TYPE", "lsn"),
        ("PGBACKREST_RESTORE_TARGET", "0/3000060"),
    ]);
    i.files.insert("/run/secrets/s3".into(), "s3cr3t\n".into());
    let config = Config::from_inputs(&i).unwrap();
    let backup = config.backup.unwrap();
    assert_eq!(backup.stanza, "main");
    assert!(backup.archive);
    let names: Vec<&str> = backup.options.iter().map(|o| o.name.as_str()).collect();
    // No default path when the repository is given; the CA file is pgBackRest's own option.
    assert_eq!(
        names,
        ["repo1-s3-bucket", "repo1-s3-ca-file", "repo1-s3-key-secret", "repo1-s3-verify-tls", "repo1-type"]
    );
    assert_eq!(backup.option("repo1-s3-verify-tls"), Some("n"));
    let secret = backup.options.iter().find(|o| o.name == "repo1-s3-key-secret").unwrap();
    assert!(matches!(&secret.value, OptionValue::Secret(s) if s.expose() == "s3cr3t"));
    assert!(!format!("{backup:?}").contains("s3cr3t"), "a secret in Debug output");
    assert_eq!(backup.posix_repository(), None);
    let schedule = backup.schedule.unwrap();
    let kinds: Vec<BackupKind> = schedule.jobs.iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds, [BackupKind::Full, BackupKind::Incr]);
    assert_eq!(schedule.timezone, chrono_tz::Asia::Jakarta);
    assert_eq!(backup.restore.unwrap().target, RestoreTarget::Point { kind: "lsn", target: "0/3000060".into() });
}

#[test]
fn bad_backup_variables_are_each_named_with_what_is_accepted() {
    let found = problems(&[
        ("PGBACKREST_ENABLE", "true"),
        ("PGBACKREST_STANZA", "a b"),
        ("PGBACKREST_AUTO_FULL_CRON", "0 2 * *"),
        ("PGBACKREST_AUTO_INCR_CRON", "61 * * * *"),
        ("PGBACKREST_AUTO_TIMEZONE", "Mars/Olympus"),
        ("PGBACKREST_AUTO_PRIMARY_ONLY", "false"),
        ("PGBACKREST_RESTORE_TYPE", "xid"),
        ("PGBACKREST_RESTORE_TARGET", "abc"),
        ("PGBACKREST_RESTORE_TARGET_ACTION", "pause"),
        ("PGBACKREST_RESTORE_SET", "yesterday"),
        ("PGBACKREST_PG1_PATH", "/elsewhere"),
        ("PGBACKREST_PRIMARY_HOST", "db1"),
        ("PGBACKREST_REPO1_CIPHER_PASS", "a"),
        ("PGBACKREST_REPO1_CIPHER_PASS_FILE", "/x"),
        ("PGBACKREST_REPO1_PATH", "/etc"),
    ]);
    let named = |variable: &str, text: &str| found.iter().any(|p| p.starts_with(variable) && p.contains(text));
    assert!(named("PGBACKREST_STANZA:", "accepted: letters"), "{found:?}");
    assert!(named("PGBACKREST_AUTO_FULL_CRON:", "5-field"), "{found:?}");
    assert!(named("PGBACKREST_AUTO_INCR_CRON:", "not a valid cron"), "{found:?}");
    assert!(named("PGBACKREST_AUTO_TIMEZONE:", "IANA"), "{found:?}");
    assert!(named("PGBACKREST_AUTO_PRIMARY_ONLY:", "not supported"), "{found:?}");
    assert!(named("PGBACKREST_RESTORE_TARGET:", "xid"), "{found:?}");
    assert!(named("PGBACKREST_RESTORE_TARGET_ACTION:", "not supported"), "{found:?}");
    assert!(named("PGBACKREST_RESTORE_SET:", "not a backup label"), "{found:?}");
    assert!(named("PGBACKREST_PG1_PATH:", "set by pg-entrypoint from PGDATA"), "{found:?}");
    assert!(named("PGBACKREST_PRIMARY_HOST:", "upstream image's"), "{found:?}");
    assert!(named("PGBACKREST_REPO1_CIPHER_PASS:", "both"), "{found:?}");
    assert_eq!(found.iter().filter(|p| p.contains("CIPHER_PASS")).count(), 1, "reported once: {found:?}");
    assert!(named("PGBACKREST_REPO1_PATH:", "an absolute path of its own"), "{found:?}");
    // A key file wrapped over two lines would add lines to pgBackRest's file.
    let mut i = inputs(&[
        ("POSTGRES_PASSWORD", "pw"),
        ("PGBACKREST_ENABLE", "true"),
        ("PGBACKREST_REPO1_CIPHER_PASS_FILE", "/run/secrets/pass"),
    ]);
    i.files.insert("/run/secrets/pass".into(), "abc\ndef\n".into());
    let err = Config::from_inputs(&i).unwrap_err().to_string();
    assert!(err.contains("PGBACKREST_REPO1_CIPHER_PASS_FILE: holds more than one line"), "{err}");
    assert!(!err.contains("abc"), "{err}");
    let patroni = problems(&[
        ("HA_MODE", "patroni"),
        ("PATRONI_RESTAPI_PASSWORD", "x"),
        ("REPLICATION_PASSWORD", "r"),
        ("PGBACKREST_ENABLE", "true"),
        ("PGBACKREST_RESTORE", "true"),
    ]);
    assert!(
        patroni.iter().any(|p| p.starts_with("PGBACKREST_RESTORE: is not supported with HA_MODE=patroni")),
        "{patroni:?}"
    );
    assert!(super::backup::is_backup_label("20261206-101500F"));
    assert!(super::backup::is_backup_label("20261206-101500F_20261206-111500I"));
    assert!(!super::backup::is_backup_label("20261206-101500X"));
}

#[test]
fn the_upstream_images_access_variables_mean_the_same() {
    let c =
        parse(&[("POSTGRES_PASSWORD", "pw"), ("EXTERNAL_ACCESS_ENABLE", "true"), ("EXTERNAL_ACCESS_METHOD", "md5")]);
    assert_eq!(c.unwrap().host_auth_method, "md5");
    let c =
        parse(&[("POSTGRES_PASSWORD", "pw"), ("EXTERNAL_ACCESS_ENABLE", "false"), ("EXTERNAL_ACCESS_METHOD", "md5")]);
    assert_eq!(c.unwrap().host_auth_method, "reject", "no outside clients");
    assert_eq!(
        parse(&[("POSTGRES_PASSWORD", "pw"), ("EXTERNAL_ACCESS_ENABLE", "true")]).unwrap().host_auth_method,
        "scram-sha-256"
    );
    let found = problems(&[
        ("POSTGRES_PASSWORD", "pw"),
        ("EXTERNAL_ACCESS_METHOD", "md5"),
        ("POSTGRES_HOST_AUTH_METHOD", "trust"),
    ]);
    assert_eq!(found, ["EXTERNAL_ACCESS_METHOD: is \"md5\", but POSTGRES_HOST_AUTH_METHOD=\"trust\"; set one of them"]);
    let found = problems(&[("POSTGRES_PASSWORD", "pw"), ("EXTERNAL_ACCESS_METHOD", "ident2")]);
    assert!(found[0].starts_with("EXTERNAL_ACCESS_METHOD: \"ident2\" is not accepted"), "{found:?}");
}

#[test]
fn pg_hba_add_lines_come_first_in_order_and_bad_ones_are_refused() {
    let c = parse(&[
        ("POSTGRES_PASSWORD", "pw"),
        ("PG_HBA_ADD_10", "host all all 192.168.0.0 255.255.0.0 md5"),
        ("PG_HBA_ADD_2", " hostssl app app 10.0.0.0/8 scram-sha-256 "),
    ])
    .unwrap();
    assert_eq!(c.hba_added, ["hostssl app app 10.0.0.0/8 scram-sha-256", "host all all 192.168.0.0 255.255.0.0 md5"]);
    for (line, why) in [
        ("include other.conf", "does not start with a connection type"),
        ("host all all 10.0.0.0/8 md6", "has the method \"md6\""),
        ("host all all", "is too short"),
        ("local all all", "is too short"),
    ] {
        let found = problems(&[("POSTGRES_PASSWORD", "pw"), ("PG_HBA_ADD_1", line)]);
        assert!(found[0].starts_with("PG_HBA_ADD_1: ") && found[0].contains(why), "{line}: {found:?}");
    }
    assert!(
        problems(&[("POSTGRES_PASSWORD", "pw"), ("PG_HBA_ADD_X", "local all all trust")])[0].contains("PG_HBA_ADD_<n>")
    );
}

#[test]
fn setting_shortcuts_and_a_single_etcd_host_of_the_upstream_image() {
    let c = parse(&[("POSTGRES_PASSWORD", "pw"), ("POSTGRESQL_MAX_CONNECTIONS", "42"), ("POSTGRESQL_TIMEZONE", "UTC")]);
    let overrides = c.unwrap().overrides;
    assert!(overrides.contains(&("max_connections".into(), "42".into())), "{overrides:?}");
    assert!(overrides.contains(&("timezone".into(), "UTC".into())), "{overrides:?}");
    let found = problems(&[
        ("POSTGRES_PASSWORD", "pw"),
        ("POSTGRESQL_MAX_CONNECTIONS", "42"),
        ("POSTGRESQL_CONFIG_MAX_CONNECTIONS", "43"),
    ]);
    assert_eq!(
        found,
        ["POSTGRESQL_MAX_CONNECTIONS: \"42\" disagrees with POSTGRESQL_CONFIG_MAX_CONNECTIONS=\"43\"; set one of them"]
    );
    let patroni = [
        ("POSTGRES_PASSWORD", "pw"),
        ("HA_MODE", "patroni"),
        ("REPLICATION_PASSWORD", "r"),
        ("PATRONI_RESTAPI_PASSWORD", "a"),
        ("ETCD_HOST", "etcd"),
        ("ETCD_PORT", "2380"),
    ];
    let Role::Patroni(m) = parse(&patroni).unwrap().role else { panic!("not patroni") };
    assert_eq!(m.etcd_hosts, [Address { host: "etcd".into(), port: 2380 }]);
    let mut both = patroni.to_vec();
    both.push(("ETCD_HOSTS", "a:1,b:2"));
    assert!(problems(&both)[0].starts_with("ETCD_HOST: is set, and so is ETCD_HOSTS"));
}

#[test]
fn kubernetes_service_links_are_not_taken_for_our_variables() {
    // Services named postgresql, pgbouncer and etcd give every pod these.
    let c = parse(&[
        ("POSTGRES_PASSWORD", "pw"),
        ("POSTGRESQL_PORT", "tcp://10.0.0.7:5432"),
        ("PGBOUNCER_PORT", "tcp://10.0.0.8:6432"),
        ("PGBOUNCER_SERVICE_HOST", "10.0.0.8"),
        ("PGBOUNCER_PORT_6432_TCP_ADDR", "10.0.0.8"),
    ])
    .unwrap();
    assert!(!c.overrides.iter().any(|(name, _)| name == "port"), "{:?}", c.overrides);
    assert_eq!(c.unknown_variables, []);
    let patroni = [
        ("POSTGRES_PASSWORD", "pw"),
        ("HA_MODE", "patroni"),
        ("REPLICATION_PASSWORD", "r"),
        ("PATRONI_RESTAPI_PASSWORD", "a"),
        ("ETCD_HOSTS", "e1:2379"),
        ("ETCD_PORT", "tcp://10.0.0.9:2379"),
    ];
    assert!(parse(&patroni).is_ok());
}

#[test]
fn refusing_clients_over_tcp_is_refused_under_patroni() {
    let patroni = [
        ("POSTGRES_PASSWORD", "pw"),
        ("HA_MODE", "patroni"),
        ("REPLICATION_PASSWORD", "r"),
        ("PATRONI_RESTAPI_PASSWORD", "a"),
        ("ETCD_HOSTS", "e1:2379"),
        ("EXTERNAL_ACCESS_ENABLE", "false"),
    ];
    assert!(problems(&patroni)[0].starts_with("EXTERNAL_ACCESS_ENABLE: refuses clients over TCP, but Patroni"));
}

#[test]
fn the_upstream_images_patroni_names_are_ours_by_another_name() {
    let vars = [
        ("POSTGRES_PASSWORD", "pw"),
        ("PATRONI_ENABLE", "true"),
        ("PATRONI_RESTAPI_PASSWORD", "a"),
        ("ETCD_HOST", "etcd"),
        ("ETCD_PORT", "2379"),
        ("PATRONI_REST_HOST", "0.0.0.0"),
        ("PATRONI_REST_PORT", "8009"),
        ("POSTGRESQL_CONNECT_HOST", "postgresql1"),
        ("POSTGRESQL_LISTEN_HOST", "0.0.0.0"),
        ("PATRONI_REPLICATION_USER", "replicator2"),
        ("PATRONI_REPLICATION_PASSWORD", "rp"),
    ];
    let c = parse(&vars).unwrap();
    let Role::Patroni(m) = &c.role else { panic!("not patroni") };
    assert_eq!((m.replication_user.as_str(), m.replication_password.expose()), ("replicator2", "rp"));
    assert_eq!((m.rest_api.address, m.rest_api.port), (Some("0.0.0.0".parse().unwrap()), 8009));
    assert_eq!(m.advertise_host.as_deref(), Some("postgresql1"));
    assert!(c.overrides.contains(&("listen_addresses".into(), "0.0.0.0".into())), "{:?}", c.overrides);
    let mut both = vars.to_vec();
    both.push(("REPLICATION_PASSWORD", "other"));
    let found = problems(&both);
    assert_eq!(found, ["PATRONI_REPLICATION_PASSWORD: disagrees with REPLICATION_PASSWORD; set one of them"]);
}

#[test]
fn the_upstream_images_patroni_timings_are_honoured_within_patronis_rule() {
    let base = [
        ("POSTGRES_PASSWORD", "pw"),
        ("HA_MODE", "patroni"),
        ("REPLICATION_PASSWORD", "r"),
        ("PATRONI_RESTAPI_PASSWORD", "a"),
        ("PATRONI_ETCD_HOSTS", "e1:2379,e2:2379"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| [&base[..], extra].concat();
    let Role::Patroni(m) = parse(&with(&[
        ("PATRONI_TTL", "40"),
        ("PATRONI_LOOP_WAIT", "10"),
        ("PATRONI_RETRY_TIMEOUT", "10"),
        ("PATRONI_MAX_LAG", "33554432"),
        ("PATRONI_USE_PG_REWIND", "false"),
        ("PATRONI_SYNCHRONOUS_MODE", "true"),
        ("PATRONI_SYNCHRONOUS_MODE_STRICT", "true"),
    ]))
    .unwrap()
    .role
    else {
        panic!("not patroni")
    };
    assert_eq!(m.etcd_hosts.len(), 2);
    assert_eq!((m.dcs.ttl, m.dcs.loop_wait, m.dcs.retry_timeout), (40, 10, 10));
    assert_eq!((m.dcs.maximum_lag_on_failover, m.dcs.use_pg_rewind, m.dcs.use_slots), (33554432, false, true));
    assert_eq!(m.synchronous, PatroniSync::Strict);
    let found = problems(&with(&[("PATRONI_TTL", "10")]));
    assert!(found[0].starts_with("PATRONI_TTL: is 10 s; Patroni accepts at least 20"), "{found:?}");
    let found = problems(&with(&[("PATRONI_LOOP_WAIT", "10"), ("PATRONI_RETRY_TIMEOUT", "10")]));
    assert!(
        found[0].starts_with("PATRONI_TTL: is 20 s, less than PATRONI_LOOP_WAIT (10) + 2 × PATRONI_RETRY_TIMEOUT (10)")
    );
    // Without Patroni they mean nothing: refused rather than ignored.
    let native =
        [("POSTGRES_PASSWORD", "pw"), ("HA_MODE", "native"), ("ROLE", "primary"), ("REPLICATION_PASSWORD", "r")];
    let found = problems(&[&native[..], &[("PATRONI_TTL", "30")]].concat());
    assert_eq!(found, ["PATRONI_TTL: is for HA_MODE=patroni (Patroni's settings); unset it"]);
    let found = problems(&[&native[..], &[("POSTGRESQL_CONFIG_SYNCHRONOUS_STANDBY_NAMES", "x")]].concat());
    assert!(found[0].starts_with("POSTGRESQL_CONFIG_SYNCHRONOUS_STANDBY_NAMES: is rendered from"), "{found:?}");
    let found = problems(&with(&[("PATRONI_WATCHDOG_MODE", "required"), ("PATRONI_WAL_KEEP_SEGMENTS", "8")]));
    assert!(found.iter().any(|p| p.starts_with("PATRONI_WATCHDOG_MODE: is not supported")), "{found:?}");
    assert!(found.iter().any(|p| p.contains("POSTGRESQL_CONFIG_WAL_KEEP_SIZE")), "{found:?}");
    let found = problems(&with(&[("PATRONI_SYNCHRONOUS_MODE", "true"), ("REPLICATION_SYNCHRONOUS_MODE", "off")]));
    assert!(
        found[0].starts_with("PATRONI_SYNCHRONOUS_MODE: means \"on\", but REPLICATION_SYNCHRONOUS_MODE=\"off\""),
        "{found:?}"
    );
}

#[test]
fn the_upstream_images_internal_settings_are_refused_with_what_to_use() {
    let found = problems(&[("POSTGRES_PASSWORD", "pw"), ("PGRUN", "/run/pg"), ("ARCHIVE_TIMEOUT", "60")]);
    assert!(
        found.iter().any(|p| p.starts_with("PGRUN: is the upstream image's, not ours; the socket directory")),
        "{found:?}"
    );
    assert!(found.iter().any(|p| p.contains("POSTGRESQL_CONFIG_ARCHIVE_TIMEOUT")), "{found:?}");
    // An application's own database variables are neither refused nor warned about.
    let c = parse(&[("POSTGRES_PASSWORD", "pw"), ("POSTGRES_HOST", "db"), ("POSTGRES_PORT", "5432")]).unwrap();
    assert_eq!(c.unknown_variables, []);
}

#[test]
fn a_bad_value_under_an_upstream_name_is_reported_under_that_name() {
    let found = problems(&[("POSTGRES_PASSWORD", "pw"), ("PATRONI_REST_PORT", "abc")]);
    assert!(found[0].starts_with("PATRONI_REST_PORT: \"abc\" is not a port"), "{found:?}");
}

#[test]
fn the_translated_patroni_names_are_kept_from_patroni() {
    let names: Vec<&str> = translated_patroni_names().collect();
    for name in [
        "PATRONI_ETCD_HOSTS",
        "PATRONI_REST_PORT",
        "PATRONI_TTL",
        "PATRONI_SYNCHRONOUS_MODE_STRICT",
        "PATRONI_MAX_WAL_SENDERS",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    assert!(!names.contains(&"PATRONI_SCOPE"), "Patroni's own names stay");
}

#[test]
fn pgbouncer_takes_the_upstream_names_and_names_each_bad_value() {
    let on = |extra: &[(&'static str, &'static str)]| {
        let mut vars = vec![("POSTGRES_PASSWORD", "pw"), ("PGBOUNCER_ENABLE", "true")];
        vars.extend_from_slice(extra);
        vars
    };
    let pooler = parse(&on(&[("PGBOUNCER_POOL_MODE", "Transaction"), ("PGBOUNCER_ADMIN_USERS", "ops, dba")]))
        .unwrap()
        .pooler
        .unwrap();
    assert_eq!((pooler.port, pooler.listen_addr.as_str(), pooler.auth_type.as_str()), (6432, "*", "scram-sha-256"));
    assert_eq!(pooler.pool_mode, crate::config::pooler::PoolMode::Transaction);
    assert_eq!(pooler.admin_users, ["ops", "dba"]);
    let bad = [
        ("PGBOUNCER_LISTEN_PORT", "0", "PGBOUNCER_LISTEN_PORT: \"0\" is not a port"),
        ("PGBOUNCER_LISTEN_PORT", "5432", "PGBOUNCER_LISTEN_PORT: 5432 is postgres's port"),
        ("PGBOUNCER_POOL_MODE", "pooled", "PGBOUNCER_POOL_MODE: \"pooled\" is not accepted; accepted: session"),
        ("PGBOUNCER_MAX_CLIENT_CONN", "0", "PGBOUNCER_MAX_CLIENT_CONN: \"0\" is not accepted"),
        ("PGBOUNCER_DEFAULT_POOL_SIZE", "lots", "PGBOUNCER_DEFAULT_POOL_SIZE: \"lots\" is not accepted"),
        ("PGBOUNCER_AUTH_TYPE", "trust", "PGBOUNCER_AUTH_TYPE: \"trust\" is not accepted"),
        ("PGBOUNCER_LISTEN_ADDR", "a b", "PGBOUNCER_LISTEN_ADDR: \"a b\" is not accepted"),
        ("PGBOUNCER_ADMIN_USERS", "ops,", "PGBOUNCER_ADMIN_USERS: \"ops,\" is not accepted"),
    ];
    for (variable, value, expected) in bad {
        let found = problems(&on(&[(variable, value)]));
        assert!(found.iter().any(|p| p.starts_with(expected)), "{variable}={value}: {found:?}");
    }
    assert_eq!(
        parse(&[("POSTGRES_PASSWORD", "pw"), ("PGBOUNCER_ENABLE", "false"), ("PGBOUNCER_POOL_MODE", "x")])
            .unwrap()
            .pooler,
        None
    );
}

#[test]
fn pgbouncers_auth_user_password_is_the_same_on_every_member_and_not_the_secret() {
    let member = |role: &'static str| {
        let mut vars = vec![("POSTGRES_PASSWORD", "pw"), ("HA_MODE", "native"), ("REPLICATION_PASSWORD", "rep-secret")];
        vars.extend_from_slice(&[("REPLICATION_ROLE", role), ("PRIMARY_HOST", "p")]);
        parse(&vars).unwrap()
    };
    let (primary, replica) = (member("primary"), member("replica"));
    let derived = crate::config::pooler::auth_password(&primary).unwrap();
    assert_eq!(derived.expose(), crate::config::pooler::auth_password(&replica).unwrap().expose());
    assert_eq!(derived.expose().len(), 64);
    assert!(!derived.expose().contains("rep-secret"));
}
