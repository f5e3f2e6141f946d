//! Backups with pgBackRest (docs/backup.md), on real servers and a real posix repository:
//! archiving from the start, a backup, the list, a restore drill, point-in-time recovery
//! into a new PGDATA, the schedule, and the refusals that leave PGDATA untouched.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_backup_is_listed_verified_and_shown_in_status() {
    let (mut node, _) = Node::backing_up("backup-basic");
    node.start().wait_repository_ok();
    node.client().batch_execute("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id").unwrap();

    let (code, out) = node.tool(&["backup", "full"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("(full) finished"), "{out}");

    let (code, out) = node.tool(&["backup", "list"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("stanza main: ok") && out.contains(" full "), "{out}");
    let (code, out) = node.tool(&["backup", "list", "--json"]);
    assert_eq!(code, 0, "{out}");
    let info: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info[0]["backup"].as_array().unwrap().len(), 1, "{out}");

    let s = node.status();
    assert_eq!(s["backups"]["last_backup"]["type"], "full", "{s}");
    assert!(s["backups"]["last_backup"]["age_s"].as_i64().unwrap() < 600, "{s}");
    assert_eq!(s["archiving"]["failing"], false, "{s}");
    assert!(s["archiving"]["archived_count"].as_i64().unwrap() >= 1, "{s}");

    let (code, out) = node.tool(&["backup", "verify", "--into", &node.scratch().display().to_string()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("verified: backup ") && out.contains("answered a query"), "{out}");
    assert_eq!(std::fs::read_dir(node.scratch()).unwrap().count(), 0, "the scratch copy is removed");

    // A replica refuses to back up; so does --standby.
    let (code, out) = node.tool(&["backup", "--standby"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not supported"), "{out}");
    assert_eq!(node.stop(), 0);
}

#[test]
fn point_in_time_recovery_restores_exactly_the_rows_committed_before_the_target() {
    let (mut primary, repo) = Node::backing_up("backup-pitr");
    primary.start().wait_repository_ok();
    let mut c = primary.client();
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 50)").unwrap();
    primary.full_backup();
    // pgBackRest records a backup's end in whole seconds: a target must lie after it.
    std::thread::sleep(Duration::from_millis(1100));
    c.batch_execute("INSERT INTO t SELECT generate_series(51, 100)").unwrap();
    // The target lies between two commits, as a user picks it from their clock.
    let target: String = c.query_one("SELECT clock_timestamp()::text", &[]).unwrap().get(0);
    std::thread::sleep(Duration::from_millis(1100));
    c.batch_execute("INSERT INTO t SELECT generate_series(101, 150)").unwrap();
    c.batch_execute("DROP TABLE t").unwrap();
    primary.archive_now();

    let mut restored = Node::new("backup-pitr-restored");
    restored.with_backups(&repo);
    restored
        .set("PGBACKREST_RESTORE", "true")
        .set("PGBACKREST_RESTORE_TYPE", "time")
        .set("PGBACKREST_RESTORE_TARGET", &target);
    restored.start_with_timeout(Duration::from_secs(120));
    assert_eq!(restored.query_one("SELECT count(*) FROM t"), "100", "{}", restored.output());
    assert_eq!(restored.query_one("SELECT max(id) FROM t"), "100");
    assert_eq!(restored.query_one("pg_is_in_recovery()"), "false");
    assert!(restored.output().contains("restored and promoted on a new timeline"), "{}", restored.output());
    // A new timeline: its WAL goes to the repository beside the old one's.
    let timeline = restored.query_one("SELECT timeline_id FROM pg_control_checkpoint()");
    assert_ne!(timeline, "1");
    assert_eq!(restored.stop(), 0);

    // The same variables at the next start: the restored cluster is served as it is.
    restored.start();
    assert_eq!(restored.query_one("SELECT count(*) FROM t"), "100");
    assert_eq!(restored.stop(), 0);
    // Another target on the restored PGDATA: refused, nothing overwritten.
    restored.set("PGBACKREST_RESTORE_TYPE", "immediate").unset("PGBACKREST_RESTORE_TARGET");
    let (code, out) = restored.run_to_exit(&[]);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("PGBACKREST_RESTORE is true, but PGDATA"), "{out}");
    restored.unset("PGBACKREST_RESTORE").start();
    assert_eq!(restored.query_one("SELECT count(*) FROM t"), "100");
    assert_eq!(primary.stop(), 0);
}

#[test]
fn a_restore_from_a_missing_stanza_names_the_variable_and_leaves_pgdata_empty() {
    let (mut node, _) = Node::backing_up("backup-missing-stanza");
    node.set("PGBACKREST_RESTORE", "true").set("PGBACKREST_STANZA", "nothere");
    let (code, out) = node.run_to_exit(&[]);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("PGBACKREST_STANZA") && out.contains("PGBACKREST_REPO1_PATH"), "{out}");
    let left: Vec<_> =
        std::fs::read_dir(&node.pgdata).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "PGDATA holds {left:?}");
}

#[test]
fn the_schedule_takes_a_first_full_backup_then_incrementals_on_the_primary() {
    let (mut node, _) = Node::backing_up("backup-schedule");
    node.set("PGBACKREST_AUTO_ENABLE", "true")
        .set("PGBACKREST_AUTO_FIRST_INCR_DELAY", "0")
        .set("PGBACKREST_AUTO_FULL_CRON", "off")
        .set("PGBACKREST_AUTO_DIFF_CRON", "off")
        .set("PGBACKREST_AUTO_INCR_CRON", "* * * * *");
    node.start();
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let (_, out) = node.tool(&["backup", "list", "--json"]);
        let kinds: Vec<String> = serde_json::from_str::<serde_json::Value>(&out)
            .ok()
            .and_then(|v| v[0]["backup"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|b| b["type"].as_str().unwrap_or_default().to_string())
            .collect();
        if kinds.first().map(String::as_str) == Some("full") && kinds.iter().any(|k| k == "incr") {
            break;
        }
        assert!(Instant::now() < deadline, "no full then incr within 150 s: {kinds:?}\n{}", node.output());
        std::thread::sleep(Duration::from_millis(500));
    }
    let s = node.status();
    assert_eq!(s["backups"]["schedule"]["timezone"], "UTC", "{s}");
    assert!(node.output().contains("a full backup follows"), "{}", node.output());
    assert_eq!(node.stop(), 0);
}

#[test]
fn a_replica_is_made_from_the_repository_and_catches_up_through_the_archive() {
    let (mut primary, repo) = Node::backing_up("backup-replica-primary");
    // No WAL kept beyond what a slot asks for: a replica without its slot must use the archive.
    primary.as_primary().set("POSTGRESQL_CONFIG_WAL_KEEP_SIZE", "0").start();
    primary.wait_repository_ok();
    primary.client().batch_execute("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id").unwrap();
    primary.full_backup();
    primary.client().batch_execute("INSERT INTO t SELECT generate_series(1001, 2000)").unwrap();
    primary.archive_now();

    let mut replica = Node::new("backup-replica");
    replica.with_backups(&repo);
    replica.as_replica_of(&primary, "r1").set("REPLICA_CLONE_METHOD", "pgbackrest").start();
    assert!(replica.output().contains("clone from the repository complete"), "{}", replica.output());
    assert!(!replica.output().contains("pg_basebackup"), "{}", replica.output());
    replica.eventually_equals("SELECT count(*) FROM t", "2000");
    primary.eventually_equals(
        "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'r1' AND state = 'streaming'",
        "1",
    );

    // Stopped, its slot gone, the primary's WAL recycled: it catches up from the archive.
    assert_eq!(replica.stop(), 0);
    let mut c = primary.client();
    c.batch_execute("SELECT pg_drop_replication_slot('r1')").unwrap();
    for round in 0..4 {
        c.batch_execute(&format!("INSERT INTO t SELECT generate_series({0} * 1000 + 2001, {0} * 1000 + 3000)", round))
            .unwrap();
        primary.archive_now();
        c.batch_execute("CHECKPOINT").unwrap();
    }
    replica.start();
    replica.eventually_equals("SELECT count(*) FROM t", "6000");
    assert!(replica.output().contains("restored log file"), "not from the archive:\n{}", replica.output());
    assert_eq!(replica.stop(), 0);
    assert_eq!(primary.stop(), 0);
}

#[test]
fn an_s3_repository_archives_backs_up_and_restores_and_its_key_stays_secret() {
    let s3 = common::s3::S3::start();
    let mut primary = Node::new("backup-s3");
    primary.with_s3_backups(&s3).start();
    primary.wait_repository_ok();
    primary.client().batch_execute("CREATE TABLE t AS SELECT generate_series(1, 500) AS id").unwrap();
    primary.full_backup();
    primary.client().batch_execute("INSERT INTO t SELECT generate_series(501, 600)").unwrap();
    primary.archive_now();
    // The key secret: only in the 0600 file pgBackRest reads, not in postgres's environment.
    let conf = primary.socket_dir().join(format!("pg-entrypoint-{}.pgbackrest.conf", primary.port));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&conf).unwrap().mode() & 0o777, 0o600);
    let pid = std::fs::read_to_string(primary.pgdata.join("postmaster.pid")).unwrap();
    let environ = std::fs::read(format!("/proc/{}/environ", pid.lines().next().unwrap())).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.contains(common::s3::S3_SECRET) && !environ.contains("PGBACKREST_"), "{environ}");

    let mut restored = Node::new("backup-s3-restored");
    restored.with_s3_backups(&s3).set("PGBACKREST_RESTORE", "true");
    restored.start_with_timeout(Duration::from_secs(120));
    assert_eq!(restored.query_one("SELECT count(*) FROM t"), "600");
    for node in [&primary, &restored] {
        assert!(!node.all_output().contains(common::s3::S3_SECRET), "the secret in a log");
    }
    assert_eq!(restored.stop(), 0);
    assert_eq!(primary.stop(), 0);
}

#[test]
fn a_restore_as_a_role_the_cluster_lacks_names_postgres_user_instead_of_hanging() {
    let (mut primary, repo) = Node::backing_up("backup-user");
    primary.start().wait_repository_ok();
    primary.full_backup();
    let mut restored = Node::new("backup-user-restored");
    restored.with_backups(&repo);
    restored.set("PGBACKREST_RESTORE", "true").set("POSTGRES_USER", "someone_else");
    let (code, out) = restored.run_to_exit(&[]);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("refused POSTGRES_USER \"someone_else\""), "{out}");
    restored.assert_pgdata_empty();
    assert_eq!(primary.stop(), 0);
}
