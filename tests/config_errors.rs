//! Bad configuration: exit code 78, every problem named at once, nothing created on disk,
//! and no secret in the message.

mod common;

use common::*;

/// Runs with the node's environment changed by `edit`; asserts exit 78, no PGDATA, no secret.
fn rejected(name: &str, edit: impl FnOnce(&mut Node)) -> String {
    let mut node = Node::new(name);
    edit(&mut node);
    let (code, out) = node.run_to_exit(&[]);
    assert_eq!(code, 78, "{out}");
    assert!(!node.pgdata.exists(), "PGDATA was created:\n{out}");
    assert!(!node.socket_dir().exists(), "the socket directory was created:\n{out}");
    assert!(!out.contains(PASSWORD) && !out.contains("pw-1"), "secret in output:\n{out}");
    out
}

#[test]
fn missing_password() {
    let out = rejected("no-password", |n| {
        n.unset("POSTGRES_PASSWORD");
    });
    assert!(out.contains("POSTGRES_PASSWORD: is required"), "{out}");
}

#[test]
fn replica_without_password_or_primary_host_names_both() {
    let out = rejected("replica-missing", |n| {
        n.set("HA_MODE", "native").set("ROLE", "replica");
    });
    assert!(out.contains("REPLICATION_PASSWORD: is required with HA_MODE=native"), "{out}");
    assert!(out.contains("PRIMARY_HOST: is required for a replica"), "{out}");
    assert!(out.contains("(2 problems)"), "{out}");
}

#[test]
fn unknown_ha_mode_and_bad_auth_method_are_reported_together() {
    let out = rejected("ha-mode", |n| {
        n.set("HA_MODE", "pacemaker").set("POSTGRES_HOST_AUTH_METHOD", "ident");
    });
    assert!(out.contains("HA_MODE: \"pacemaker\" is not accepted; accepted: native"), "{out}");
    assert!(out.contains("POSTGRES_HOST_AUTH_METHOD: \"ident\" is not accepted"), "{out}");
}

#[test]
fn patroni_with_native_ha() {
    let out = rejected("patroni", |n| {
        n.as_primary().set("USE_PATRONI", "true");
    });
    assert!(out.contains("USE_PATRONI: is true while HA_MODE=native"), "{out}");
}

#[test]
fn both_secret_forms() {
    let out = rejected("both-forms", |n| {
        let file = n.dir.0.join("secret");
        std::fs::write(&file, PASSWORD).unwrap();
        n.set("POSTGRES_PASSWORD_FILE", &file.display().to_string());
    });
    assert!(out.contains("both POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE are set"), "{out}");
}

#[test]
fn sync_count_above_the_names() {
    let out = rejected("sync-count", |n| {
        n.as_primary()
            .set("REPLICATION_SYNCHRONOUS_MODE", "any")
            .set("REPLICATION_SYNCHRONOUS_COUNT", "3")
            .set("REPLICATION_SYNCHRONOUS_REPLICAS", "replica-1,replica-2");
    });
    assert!(out.contains("REPLICATION_SYNCHRONOUS_COUNT: 3 is more than the 2 name(s)"), "{out}");
    let mut node = Node::new("sync-count-check");
    node.as_primary()
        .set("REPLICATION_SYNCHRONOUS_MODE", "any")
        .set("REPLICATION_SYNCHRONOUS_COUNT", "3")
        .set("REPLICATION_SYNCHRONOUS_REPLICAS", "replica-1,replica-2");
    let (code, out) = node.tool(&["check"]);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("REPLICATION_SYNCHRONOUS_COUNT: 3 is more than the 2 name(s)"), "{out}");
}

#[test]
fn bad_port_argument() {
    let mut node = Node::new("bad-port");
    let (code, out) = node.run_to_exit(&["postgres", "-p", "99999"]);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("postgres argument port: \"99999\" is not a port"), "{out}");
    assert!(!node.pgdata.exists());
}

#[test]
fn check_prints_the_plan_with_secrets_masked_and_touches_nothing() {
    let mut node = Node::new("check");
    node.as_primary().set("POSTGRESQL_CONFIG_MAX_CONNECTIONS", "200");
    let (code, out) = node.run_to_exit(&["check"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("role:            primary"), "{out}");
    assert!(out.contains("max_connections = '200'\t# POSTGRESQL_CONFIG_*"), "{out}");
    assert!(out.contains("host replication \"replicator\" 0.0.0.0/0 scram-sha-256"), "{out}");
    assert!(out.contains("password set (hidden)"), "{out}");
    assert!(!out.contains(PASSWORD), "{out}");
    assert!(!node.pgdata.exists());

    node.set("REPLICATION_SYNCHRONOUS_MODE", "sometimes");
    let (code, out) = node.run_to_exit(&["check"]);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("REPLICATION_SYNCHRONOUS_MODE: \"sometimes\" is not accepted"), "{out}");
}

#[test]
fn names_postgres_reserves_includes_and_bad_log_settings_are_refused_before_initdb() {
    let out = rejected("reserved", |n| {
        n.set("POSTGRES_USER", "pg_admin")
            .set("POSTGRES_DB", "template0")
            .set("POSTGRESQL_CONFIG_INCLUDE", "/etc/passwd")
            .set("LOG_LEVEL", "loud");
    });
    assert!(out.contains("(4 problems)"), "{out}");
    assert!(out.contains("POSTGRES_USER: \"pg_admin\" is reserved by PostgreSQL"), "{out}");
    assert!(out.contains("POSTGRESQL_CONFIG_INCLUDE: is an include directive"), "{out}");
}

#[test]
fn a_file_as_init_scripts_dir_is_refused_before_initdb() {
    let out = rejected("scripts-file", |n| {
        let file = n.dir.0.join("not-a-dir");
        std::fs::write(&file, "x").unwrap();
        n.set("INIT_SCRIPTS_DIR", &file.display().to_string());
    });
    assert!(out.contains("INIT_SCRIPTS_DIR: ") && out.contains("is not a directory"), "{out}");
}

#[test]
fn postgres_judges_setting_names_values_and_options_before_anything_is_written() {
    // Each names its variable. (postgres reports unknown names before it judges values.)
    let out = rejected("bad-value", |n| {
        n.set("POSTGRESQL_CONFIG_SHARED_BUFFERS", "lots").set("POSTGRESQL_CONFIG_WORK_MEM", "much");
    });
    assert!(
        out.contains("POSTGRESQL_CONFIG_SHARED_BUFFERS: invalid value for parameter \"shared_buffers\": \"lots\""),
        "{out}"
    );
    assert!(out.contains("POSTGRESQL_CONFIG_WORK_MEM: invalid value for parameter \"work_mem\""), "{out}");
    let out = rejected("bad-name", |n| {
        n.set("POSTGRESQL_CONFIG_NO_SUCH_SETTING", "1");
    });
    assert!(
        out.contains("POSTGRESQL_CONFIG_NO_SUCH_SETTING: unrecognized configuration parameter \"no_such_setting\""),
        "{out}"
    );
    let mut node = Node::new("bad-option");
    let (code, out) = node.run_to_exit(&["--bogus"]);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("postgres refuses these settings or arguments"), "{out}");
    assert!(!node.pgdata.exists());
}

#[test]
fn postgres_arguments_that_move_our_files_or_are_not_options_are_refused() {
    for (name, args) in [
        ("arg-conf", vec!["-c", "config_file=/etc/x.conf"]),
        ("arg-d", vec!["-D", "/elsewhere"]),
        ("arg-z", vec!["-z"]),
    ] {
        let mut node = Node::new(name);
        let (code, out) = node.run_to_exit(&args);
        assert_eq!(code, 78, "{args:?}: {out}");
        assert!(!node.pgdata.exists(), "{args:?}");
    }
    let mut node = Node::new("arg-z-says");
    let (_, out) = node.run_to_exit(&["-z"]);
    assert!(out.contains("invalid option -- 'z'"), "{out}");
}

#[test]
fn what_initdb_would_refuse_is_refused_before_anything_is_made() {
    let out = rejected("initdb-args", |n| {
        n.set("POSTGRES_INITDB_ARGS", "--data-checksums --no-such-option");
    });
    assert!(out.contains("POSTGRES_INITDB_ARGS: initdb refuses them") && out.contains("--no-such-option"), "{out}");
    let out = rejected("initdb-segsize", |n| {
        n.set("POSTGRES_INITDB_ARGS", "--wal-segsize=3");
    });
    assert!(out.contains("--wal-segsize must be a power of 2"), "{out}");
    // What initdb accepts with the options the real run adds passes, e.g. an auth method
    // that needs the password the real run gives it.
    let mut node = Node::new("initdb-auth");
    node.set("POSTGRES_INITDB_ARGS", "-A scram-sha-256 --data-checksums");
    let (code, out) = node.run_to_exit(&["check"]);
    assert_eq!(code, 0, "{out}");
    let out = rejected("initdb-waldir", |n| {
        let waldir = n.dir.0.join("wal");
        std::fs::create_dir_all(&waldir).unwrap();
        std::fs::write(waldir.join("someone-elses"), "x").unwrap();
        n.set("POSTGRES_INITDB_WALDIR", &waldir.display().to_string());
    });
    assert!(out.contains("POSTGRES_INITDB_WALDIR:") && out.contains("is not empty"), "{out}");
    // A huge value is named, not printed whole.
    let huge = "d".repeat(100_000);
    let out = rejected("huge-db", |n| {
        n.set("POSTGRES_DB", &huge);
    });
    assert!(out.contains("POSTGRES_DB: \"dddd") && out.contains("(100000 bytes)"), "{out}");
    assert!(out.len() < 2_000, "{} bytes of output", out.len());
}

#[test]
fn pgbouncer_values_out_of_range_are_named() {
    let out = rejected("pgbouncer", |n| {
        n.set("PGBOUNCER_ENABLE", "true").set("PGBOUNCER_LISTEN_PORT", "70000").set("PGBOUNCER_POOL_MODE", "pooled");
    });
    assert!(out.contains("PGBOUNCER_LISTEN_PORT: \"70000\" is not a port; accepted: 1 to 65535"), "{out}");
    assert!(
        out.contains("PGBOUNCER_POOL_MODE: \"pooled\" is not accepted; accepted: session, transaction, statement"),
        "{out}"
    );
}
