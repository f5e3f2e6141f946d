//! The upstream image's variables (docs/upstream-image.md) against a real server: its access
//! variables as hba lines, its PG_HBA_ADD_<n> rules first, its setting shortcuts in force,
//! and its backup and pooler variables refused before anything is written.

mod common;

use common::*;

#[test]
fn access_rules_and_setting_shortcuts_take_effect() {
    let mut node = Node::new("upstream-vars");
    node.set("EXTERNAL_ACCESS_ENABLE", "true")
        .set("EXTERNAL_ACCESS_METHOD", "md5")
        .set("PG_HBA_ADD_1", "host all reporter 127.0.0.1/32 reject")
        .set("POSTGRESQL_MAX_CONNECTIONS", "42")
        .set("POSTGRESQL_LOG_STATEMENT", "ddl")
        .start();
    assert_eq!(node.query_one("current_setting('max_connections')"), "42");
    assert_eq!(node.query_one("current_setting('log_statement')"), "ddl");
    let hba = std::fs::read_to_string(node.pgdata.join("pg_hba.conf")).unwrap();
    let rules: Vec<&str> = hba.lines().skip_while(|l| !l.starts_with("# BEGIN pg-entrypoint")).skip(1).collect();
    assert_eq!(rules[0], "host all reporter 127.0.0.1/32 reject", "{hba}");
    assert!(rules.contains(&"host all all 0.0.0.0/0 md5"), "{hba}");
    // Clients over TCP log in with their password (md5 accepts a SCRAM-stored one); the rule
    // added for `reporter` comes first and refuses it.
    node.client().batch_execute("CREATE ROLE reporter LOGIN PASSWORD 'rpw'").unwrap();
    let refused = node.connect_as("reporter", "rpw", "postgres").err().map(|e| format!("{e:?}")).unwrap_or_default();
    assert!(refused.contains("pg_hba.conf rejects connection"), "{refused}");
    assert!(node.connect_as("postgres", PASSWORD, "postgres").is_ok());
    assert_eq!(node.stop(), 0);
}

#[test]
fn backup_variables_without_the_switch_are_refused_before_anything_is_written() {
    let mut node = Node::new("upstream-backup");
    node.set("PGBACKREST_AUTO_ENABLE", "true");
    let (code, out) = node.run_to_exit(&[]);
    assert_eq!(code, 78, "{out}");
    assert!(
        out.contains("PGBACKREST_AUTO_ENABLE: is set (PGBACKREST_AUTO_ENABLE), but PGBACKREST_ENABLE is not"),
        "{out}"
    );
    assert!(!node.pgdata.exists() || std::fs::read_dir(&node.pgdata).unwrap().next().is_none(), "PGDATA was written");
}

#[test]
fn a_misspelt_variable_is_warned_about_with_what_it_likely_meant() {
    let mut node = Node::new("upstream-typo");
    node.set("REPLICATION_ROLES", "primary");
    let (code, out) = node.tool(&["check"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warning:         REPLICATION_ROLES: is not a variable of pg-entrypoint and is ignored; did you mean REPLICATION_ROLE?"),
        "{out}"
    );
    node.start();
    assert!(node.output().contains("REPLICATION_ROLES: is not a variable of pg-entrypoint"), "{}", node.output());
    assert_eq!(node.stop(), 0);
    // Refused for another reason: the misspelling, a likely cause, is named with the problems.
    let mut refused = Node::new("upstream-typo-refused");
    refused.set("HA_MODE", "native").set("REPLICATION_PASSWORD", "r").set("REPLICATION_ROLES", "primary");
    let (code, out) = refused.run_to_exit(&[]);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("REPLICATION_ROLE: is required with HA_MODE=native"), "{out}");
    assert!(
        out.contains(
            "REPLICATION_ROLES: is not a variable of pg-entrypoint and is ignored; did you mean REPLICATION_ROLE?"
        ),
        "{out}"
    );
}
