//! A native-HA primary, and switches between standalone and primary across restarts.

mod common;

use std::fs;

use common::*;

/// IDENTIFY_SYSTEM over a physical replication connection, as a replica would open it.
fn replication_works(node: &Node, user: &str, password: &str) -> (bool, String) {
    psql(node, &format!("user='{user}' dbname=replication replication=true"), password, "IDENTIFY_SYSTEM")
}

#[test]
fn primary_serves_replication_and_never_blocks_lone_writes() {
    let mut node = Node::new("primary");
    node.as_primary().set("REPLICATION_USER", "rep user");
    node.start();
    let (ok, out) = replication_works(&node, "rep user", PASSWORD);
    assert!(ok, "replication connection failed: {out}");
    let (ok, out) = replication_works(&node, "rep user", "wrong");
    assert!(!ok && out.contains("password authentication failed"), "{out}");
    assert_eq!(node.query_one("current_setting('wal_level')"), "replica");
    assert_eq!(node.query_one("current_setting('synchronous_standby_names')"), "");
    assert_eq!(node.query_one("current_setting('wal_log_hints')"), "on");
    // The replication role can replicate and nothing else.
    assert_eq!(
        node.query_one("(SELECT rolreplication AND NOT rolsuper FROM pg_roles WHERE rolname = 'rep user')"),
        "true"
    );
    // A write returns on a lone primary (the bash original's '*' default hung here).
    let mut c = node.client();
    c.batch_execute("SET statement_timeout = '5s'; CREATE TABLE w (x int); INSERT INTO w VALUES (1);").unwrap();
    assert_eq!(node.stop(), 0);
}

#[test]
fn standalone_to_primary_and_back_converges_on_restart() {
    let mut node = Node::new("role-switch");
    node.start();
    let (ok, _) = replication_works(&node, "replicator", PASSWORD);
    assert!(!ok, "a standalone server accepts replication connections");
    assert_eq!(node.stop(), 0);

    node.as_primary();
    node.start();
    let (ok, out) = replication_works(&node, "replicator", PASSWORD);
    assert!(ok, "standalone -> primary did not create the replication role: {out}");
    assert_eq!(node.stop(), 0);

    // Rotating the replication password is a restart.
    node.set("REPLICATION_PASSWORD", "rotated 'pw' $2");
    node.start();
    assert!(replication_works(&node, "replicator", "rotated 'pw' $2").0);
    assert!(!replication_works(&node, "replicator", PASSWORD).0, "the old password still works");
    assert_eq!(node.stop(), 0);

    node.unset("HA_MODE").unset("REPLICATION_ROLE").unset("REPLICATION_PASSWORD");
    node.start();
    let hba = fs::read_to_string(node.pgdata.join("pg_hba.conf")).unwrap();
    assert!(!hba.contains("host replication \"replicator\""), "replication lines kept:\n{hba}");
    assert!(!replication_works(&node, "replicator", "rotated 'pw' $2").0);
    assert_eq!(node.stop(), 0);
    let conf = fs::read_to_string(node.pgdata.join("postgresql.conf")).unwrap();
    assert_eq!(conf.matches("pg-entrypoint.conf").count(), 1, "include line repeated");
    let log = node.all_output();
    assert!(!log.contains("rotated 'pw'") && !log.contains(PASSWORD), "password in the log");
}

#[test]
fn replication_password_is_never_in_the_server_log_even_with_log_statement_all() {
    let mut node = Node::new("log-all");
    node.as_primary().set("POSTGRESQL_CONFIG_LOG_STATEMENT", "all");
    node.start();
    assert_eq!(node.stop(), 0);
    node.start(); // the converge path re-applies the password
    node.client().batch_execute("SELECT 1").unwrap();
    assert_eq!(node.stop(), 0);
    let log = node.all_output();
    assert!(log.contains("statement: SELECT 1"), "log_statement=all is not in effect:\n{log}");
    assert!(!log.contains(PASSWORD) && !log.contains("SCRAM-SHA-256$"), "password or verifier logged:\n{log}");
}
