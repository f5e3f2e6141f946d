//! Native streaming replication between real processes on loopback: clone, stream, restart,
//! interruptions, promotion and rejoin after a failover.

mod common;

use std::fs;
use std::time::Duration;

use common::*;

const CLONE_TIMEOUT: Duration = Duration::from_secs(90);

#[test]
fn replicas_started_before_the_primary_wait_then_stream() {
    let mut primary = Node::new("p");
    primary.as_primary();
    let mut r1 = Node::new("r1");
    r1.as_replica_of(&primary, "replica-2");
    let mut r2 = Node::new("r2");
    r2.as_replica_of(&primary, "3f2a9c");
    r1.spawn(&[]);
    r2.spawn(&[]);
    // Both are waiting for a primary that does not exist yet.
    wait_until(Duration::from_secs(30), || {
        r1.output().contains("waiting for the primary") && r2.output().contains("waiting for the primary")
    });
    primary.start();
    r1.wait_ready(CLONE_TIMEOUT);
    r2.wait_ready(CLONE_TIMEOUT);
    primary.client().batch_execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('from the primary');").unwrap();
    for r in [&r1, &r2] {
        r.eventually_equals("(SELECT v FROM t)", "from the primary");
        assert_eq!(r.query_one("pg_is_in_recovery()"), "true");
    }
    let streaming = primary.query_one(
        "(SELECT string_agg(r.application_name || ':' || r.state || ':' || s.slot_name || ':' || s.active, ',' ORDER BY r.application_name)
          FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid)",
    );
    assert_eq!(streaming, "3f2a9c:streaming:3f2a9c:true,replica-2:streaming:replica_2:true");
    // The replication password is in no argv, no log, no auto.conf.
    for p in processes() {
        assert!(!p.cmdline.contains(PASSWORD), "password in argv: {}", p.cmdline);
    }
    let auto = fs::read_to_string(r1.pgdata.join("postgresql.auto.conf")).unwrap();
    assert!(!auto.contains("pw-1") && !auto.contains("primary_conninfo"), "{auto}");
    let mode = std::os::unix::fs::PermissionsExt::mode(&fs::metadata(r1.passfile()).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    // Outside PGDATA, so no clone or rewind copies it; the primary keeps none.
    assert!(!r1.pgdata.join("pg-entrypoint.pgpass").exists());
    assert!(!primary.passfile().exists());

    // A restarted replica catches up without cloning again; stopped, it keeps no password file.
    assert_eq!(r1.stop(), 0);
    assert!(!r1.passfile().exists(), "the password file outlived the replica");
    primary.client().batch_execute("INSERT INTO t VALUES ('while it was down')").unwrap();
    r1.start();
    r1.eventually_equals("(SELECT count(*) FROM t)", "2");
    assert!(!r1.output().contains("cloning"), "re-cloned:\n{}", r1.output());
    assert_eq!(r1.stop(), 0);
    assert_eq!(r1.controldata_state(), "shut down in recovery");
    assert_eq!(r2.stop(), 0);
    assert_eq!(primary.stop(), 0);
    let logs = format!("{}{}{}", primary.all_output(), r1.all_output(), r2.all_output());
    assert!(!logs.contains(PASSWORD) && !logs.contains("pw-1"), "password in a log");
}

#[test]
fn a_wrong_replication_password_fails_fast_and_says_so() {
    let mut primary = Node::new("p-wrongpw");
    primary.as_primary().start();
    let mut replica = Node::new("r-wrongpw");
    replica.as_replica_of(&primary, "r1").set("REPLICATION_PASSWORD", "not it");
    replica.spawn(&[]);
    let (code, took) = replica.wait_exit(Duration::from_secs(30));
    let out = replica.output();
    assert_eq!(code, 78, "{out}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(out.contains("the primary refused this replica; check REPLICATION_PASSWORD"), "{out}");
    assert!(!out.contains("not it"), "{out}");
    assert!(!replica.pgdata.join("PG_VERSION").exists());
}

#[test]
fn no_primary_ever_is_a_timeout_naming_the_host() {
    let mut replica = Node::new("r-timeout");
    replica.as_replica_of(&Node::new("nobody"), "r1").set("PRIMARY_WAIT_TIMEOUT", "3");
    replica.spawn(&[]);
    let (code, took) = replica.wait_exit(Duration::from_secs(30));
    let out = replica.output();
    assert_eq!(code, 69, "{out}");
    assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(15), "took {took:?}");
    assert!(out.contains("was not reachable within") && out.contains("check PRIMARY_HOST and PRIMARY_PORT"), "{out}");
}

#[test]
fn a_clone_killed_midway_is_redone_at_the_next_start() {
    let mut primary = Node::new("p-kill");
    primary.as_primary().start();
    // Enough data that the clone takes a moment.
    primary
        .client()
        .batch_execute("CREATE TABLE big AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 200000) g")
        .unwrap();
    let mut replica = Node::new("r-kill");
    replica.as_replica_of(&primary, "r1");
    replica.spawn(&[]);
    let base = replica.pgdata.join(".pg-entrypoint-bootstrap/cluster/base");
    wait_until(CLONE_TIMEOUT, || base.exists());
    replica.kill_all();
    assert!(!replica.pgdata.join("PG_VERSION").exists(), "a half-cloned cluster is in PGDATA");
    replica.start_with_timeout(CLONE_TIMEOUT);
    replica.eventually_equals("(SELECT count(*) FROM big)", "200000");
    assert!(replica.output().contains("removing an interrupted bootstrap"), "{}", replica.output());
    assert_eq!(replica.stop(), 0);
    assert_eq!(primary.stop(), 0);
}

#[test]
fn a_stale_primary_conninfo_in_auto_conf_does_not_win() {
    let mut primary = Node::new("p-stale");
    primary.as_primary().start();
    let mut replica = Node::new("r-stale");
    replica.as_replica_of(&primary, "r1").start_with_timeout(CLONE_TIMEOUT);
    assert_eq!(replica.stop(), 0);
    let auto = replica.pgdata.join("postgresql.auto.conf");
    let mut text = fs::read_to_string(&auto).unwrap();
    text.push_str("primary_conninfo = 'host=nowhere.invalid'\n");
    fs::write(&auto, text).unwrap();
    replica.start();
    primary.client().batch_execute("CREATE TABLE s (x int); INSERT INTO s VALUES (7);").unwrap();
    replica.eventually_equals("(SELECT x FROM s)", "7");
    assert_eq!(replica.stop(), 0);
    assert_eq!(primary.stop(), 0);
}

#[test]
fn failover_promotes_the_replica_and_the_old_primary_rewinds_and_follows() {
    let mut old_primary = Node::new("p-failover");
    old_primary.as_primary().start();
    old_primary.client().batch_execute("CREATE TABLE f (v text); INSERT INTO f VALUES ('before');").unwrap();
    let mut replica = Node::new("r-failover");
    replica.as_replica_of(&old_primary, "r1").start_with_timeout(CLONE_TIMEOUT);
    replica.eventually_equals("(SELECT count(*) FROM f)", "1");
    assert_eq!(replica.stop(), 0);
    // The old primary writes something the replica never sees: its history diverges.
    old_primary.client().batch_execute("INSERT INTO f VALUES ('lost on failover')").unwrap();
    assert_eq!(old_primary.stop(), 0);

    // Manual failover: the replica restarts as the primary.
    replica.unset("REPLICATION_ROLE").unset("PRIMARY_HOST").unset("PRIMARY_PORT").as_primary();
    replica.start();
    assert_eq!(replica.query_one("pg_is_in_recovery()"), "false");
    assert!(replica.output().contains("promoting"), "{}", replica.output());
    replica.client().batch_execute("INSERT INTO f VALUES ('after')").unwrap();
    assert_eq!(replica.query_one("(SELECT timeline_id FROM pg_control_checkpoint())"), "2");

    // The old primary comes back as a replica of the new one: rewound, then streaming.
    old_primary.as_replica_of(&replica, "old-primary");
    old_primary.start_with_timeout(CLONE_TIMEOUT);
    assert!(old_primary.output().contains("rewinding it with pg_rewind"), "{}", old_primary.output());
    old_primary.eventually_equals("(SELECT string_agg(v, ',' ORDER BY v) FROM f)", "after,before");
    assert_eq!(old_primary.query_one("pg_is_in_recovery()"), "true");
    assert_eq!(old_primary.stop(), 0);
    assert_eq!(replica.stop(), 0);
}

/// PostgreSQL 15's pg_rewind reads the source's timeline from its control file, which a
/// promoted server rewrites only at its first checkpoint after the promotion: with a long
/// checkpoint_timeout that is many minutes away. An old primary rejoining in between must
/// still be rewound, not told "no rewind required" and left unable to follow.
#[test]
fn an_old_primary_rejoins_a_primary_promoted_moments_ago() {
    let mut old_primary = Node::new("p-fresh-promotion");
    old_primary.as_primary().start();
    let mut replica = Node::new("r-fresh-promotion");
    replica
        .as_replica_of(&old_primary, "r1")
        .set("POSTGRESQL_CONFIG_CHECKPOINT_TIMEOUT", "3600")
        .start_with_timeout(CLONE_TIMEOUT);
    // Written after the clone, so the replica's replay leaves buffers for that checkpoint.
    old_primary.client().batch_execute("CREATE TABLE f (v text); INSERT INTO f VALUES ('before');").unwrap();
    replica.eventually_equals("(SELECT count(*) FROM f)", "1");

    // Promoted without any checkpoint of ours (as an operator's pg_ctl promote would).
    assert_eq!(replica.query_one("pg_promote(true, 60)"), "true");
    replica.client().batch_execute("INSERT INTO f VALUES ('after')").unwrap();
    old_primary.client().batch_execute("INSERT INTO f VALUES ('lost on failover')").unwrap();
    assert_eq!(old_primary.stop(), 0);
    // The premise: the new primary's control file still names the old timeline.
    assert_eq!(replica.query_one("(SELECT timeline_id FROM pg_control_checkpoint())"), "1");

    old_primary.as_replica_of(&replica, "old-primary");
    old_primary.start_with_timeout(CLONE_TIMEOUT);
    old_primary.eventually_equals("(SELECT string_agg(v, ',' ORDER BY v) FROM f)", "after,before");
    assert_eq!(old_primary.query_one("pg_is_in_recovery()"), "true");
    assert_eq!(old_primary.stop(), 0);
    assert_eq!(replica.stop(), 0);
}

#[test]
fn a_replica_switched_to_standalone_becomes_writable() {
    let mut primary = Node::new("p-standalone");
    primary.as_primary().start();
    let mut replica = Node::new("r-standalone");
    replica.as_replica_of(&primary, "r1").start_with_timeout(CLONE_TIMEOUT);
    assert_eq!(replica.stop(), 0);
    assert_eq!(primary.stop(), 0);
    for var in ["HA_MODE", "REPLICATION_ROLE", "PRIMARY_HOST", "PRIMARY_PORT", "REPLICATION_PASSWORD", "REPLICA_NAME"] {
        replica.unset(var);
    }
    replica.start();
    replica.client().batch_execute("CREATE TABLE writable (x int)").unwrap();
    assert_eq!(replica.stop(), 0);
    assert_eq!(replica.controldata_state(), "shut down");
}

#[test]
fn a_replica_whose_slot_was_invalidated_says_so_and_reclones_when_allowed() {
    let mut primary = Node::new("p-lost");
    primary
        .as_primary()
        .set("POSTGRESQL_CONFIG_MAX_SLOT_WAL_KEEP_SIZE", "16MB")
        .set("POSTGRESQL_CONFIG_WAL_KEEP_SIZE", "0")
        .start();
    let mut replica = Node::new("r-lost");
    replica.as_replica_of(&primary, "r1").start_with_timeout(CLONE_TIMEOUT);
    assert_eq!(replica.stop(), 0);
    // While the replica is down, the primary writes past the bound and removes that WAL.
    let mut c = primary.client();
    for _ in 0..4 {
        c.batch_execute("CREATE TABLE IF NOT EXISTS churn AS SELECT 1 AS x; INSERT INTO churn SELECT generate_series(1, 200000); SELECT pg_switch_wal(); CHECKPOINT;").unwrap();
    }
    assert_eq!(primary.query_one("(SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'r1')"), "lost");

    let (code, out) = replica.run_to_exit(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("can no longer catch up") && out.contains("REPLICA_RECLONE=true"), "{out}");
    assert!(replica.pgdata.join("PG_VERSION").exists(), "the replica's data was touched without consent");

    replica.set("REPLICA_RECLONE", "true");
    replica.start_with_timeout(CLONE_TIMEOUT);
    let expected = primary.query_one("(SELECT count(*) FROM churn)");
    replica.eventually_equals("(SELECT count(*) FROM churn)", &expected);
    assert_eq!(primary.query_one("(SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'r1')"), "reserved");
    assert_eq!(replica.stop(), 0);
    assert_eq!(primary.stop(), 0);
}

/// The arguments as `spawn` takes them.
fn argv(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// `postgres -c port=... -c unix_socket_directories=...`, as users of postgres set them.
fn with_args(node: &mut Node) -> Vec<String> {
    let args = vec![
        "postgres".to_string(),
        "-c".into(),
        format!("port={}", node.port),
        "-c".into(),
        format!("unix_socket_directories={}", node.socket_dir().display()),
    ];
    node.unset("POSTGRESQL_CONFIG_PORT").unset("POSTGRESQL_CONFIG_UNIX_SOCKET_DIRECTORIES");
    args
}

#[test]
fn two_members_on_one_host_configured_by_arguments_never_share_a_file() {
    let mut primary = Node::new("args-primary");
    primary.as_primary();
    let primary_args = with_args(&mut primary);
    let mut replica = Node::new("args-replica");
    replica.as_replica_of(&primary, "r-args");
    let replica_args = with_args(&mut replica);
    // The replica first: it waits for the primary, which must not take its password file away.
    let before = std::time::SystemTime::now();
    replica.spawn(&argv(&replica_args));
    primary.spawn(&argv(&primary_args)).wait_ready(Duration::from_secs(60));
    replica.wait_ready(Duration::from_secs(60));
    primary.client().batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1)").unwrap();
    replica.eventually_equals("(SELECT count(*) FROM t)", "1");
    // Each member's files are named from its own effective port and socket directory.
    assert!(replica.passfile().exists(), "no password file at {:?}", replica.passfile());
    let shared = std::path::Path::new("/var/run/postgresql/pg-entrypoint-5432.pgpass");
    let written = fs::metadata(shared).ok().and_then(|m| m.modified().ok());
    assert!(written.is_none_or(|at| at < before), "a file of the default port was written: {shared:?}");
    // The primary restarts: the replica reconnects with its own password file.
    assert_eq!(primary.stop(), 0);
    primary.spawn(&argv(&primary_args)).wait_ready(Duration::from_secs(60));
    primary.client().batch_execute("INSERT INTO t VALUES (2)").unwrap();
    replica.eventually_equals("(SELECT count(*) FROM t)", "2");
    // promote, with the server's own environment, finds the files of the running server: it
    // reaches the primary (with the replica's password file) and refuses while it takes writes.
    let (code, out) = replica.tool(&["promote"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is a writable primary"), "{out}");
    assert_eq!(primary.stop(), 0);
    let (code, out) = replica.tool(&["promote"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(replica.query_one("pg_is_in_recovery()"), "false");
    assert_eq!(replica.stop(), 0);
    assert!(!replica.passfile().exists(), "the password file outlived the member");
}
