//! Backups under faults (docs/backup.md): a container killed during a backup or during a
//! restore at start, a repository out of reach under write load, a failover, a wrong cipher
//! pass. Each acknowledged row is counted: a restore of the latest state must hold them all.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// The labels of the backups the repository offers for restore.
fn backup_labels(node: &Node) -> Vec<String> {
    let (code, out) = node.tool(&["backup", "list", "--json"]);
    assert_eq!(code, 0, "{out}");
    let info: serde_json::Value = serde_json::from_str(&out).unwrap();
    info[0]["backup"].as_array().unwrap().iter().map(|b| b["label"].as_str().unwrap().to_string()).collect()
}

/// Commits ids 1, 2, 3... one per transaction and records the last one acknowledged.
struct Writer {
    acked: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(node: &Node, first: i64) -> Writer {
        let (acked, stop) = (Arc::new(AtomicI64::new(first - 1)), Arc::new(AtomicBool::new(false)));
        let mut client = node.client();
        client.batch_execute("CREATE TABLE IF NOT EXISTS acked (id bigint PRIMARY KEY)").unwrap();
        let (last, halt) = (acked.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut id = first;
            while !halt.load(Ordering::Relaxed) {
                if client.execute("INSERT INTO acked VALUES ($1)", &[&id]).is_err() {
                    return;
                }
                last.store(id, Ordering::SeqCst);
                id += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Writer { acked, stop, thread: Some(thread) }
    }

    /// Stops writing; the last acknowledged id.
    fn finish(mut self) -> i64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.acked.load(Ordering::SeqCst)
    }
}

/// A new node restored from `repo` to the latest archived state; its acknowledged ids.
fn restore_latest(name: &str, repo: &Path) -> (Node, i64, i64) {
    let mut restored = Node::new(name);
    restored.with_backups(repo);
    restored.set("PGBACKREST_RESTORE", "true");
    restored.start_with_timeout(Duration::from_secs(180));
    let count: i64 = restored.query_one("SELECT count(*) FROM acked").parse().unwrap();
    let max: i64 = restored.query_one("SELECT coalesce(max(id), 0) FROM acked").parse().unwrap();
    (restored, count, max)
}

/// About 300 MB of table, so that a backup or a restore lasts long enough to be cut short.
fn fill(node: &Node) {
    node.client()
        .batch_execute(
            "CREATE TABLE big AS SELECT g, repeat(md5(g::text), 16) AS pad FROM generate_series(1, 500000) g",
        )
        .unwrap();
}

/// Waits until the keeper runs a backup and pgBackRest has started copying files.
fn wait_backup_copying(repo: &Path, node: &Node) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running = node.status()["backups"]["running"]["type"] == "full";
        let copying = std::fs::read_dir(repo.join("backup/main")).ok().is_some_and(|entries| {
            entries.flatten().any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.ends_with('F') && e.path().join("pg_data/base").exists()
            })
        });
        if running && copying {
            return;
        }
        assert!(Instant::now() < deadline, "no backup started within 60 s:\n{}", node.output());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_backup_killed_or_stopped_midway_is_never_offered_and_the_next_one_succeeds() {
    let (mut node, repo) = Node::backing_up("bfault-kill-backup");
    node.start();
    fill(&node);
    assert_eq!(node.stop(), 0);
    // The schedule's first full backup starts as soon as the stanza is ready...
    node.set("PGBACKREST_AUTO_ENABLE", "true")
        .set("PGBACKREST_AUTO_FIRST_INCR_DELAY", "0")
        .set("PGBACKREST_AUTO_FULL_CRON", "off")
        .set("PGBACKREST_AUTO_DIFF_CRON", "off")
        .set("PGBACKREST_AUTO_INCR_CRON", "off");
    node.start();
    wait_backup_copying(&repo, &node);
    // ...and is killed as `docker kill` does it: every process at once.
    node.kill_all();
    node.start();
    assert!(backup_labels(&node).is_empty(), "a killed backup is offered: {:?}", backup_labels(&node));
    // Then: stopped as `docker stop` does, while the next one runs: a clean exit.
    wait_backup_copying(&repo, &node);
    assert_eq!(node.stop(), 0, "{}", node.output());
    assert!(node.output().contains("backup stopped by the shutdown"), "{}", node.output());
    node.set("PGBACKREST_AUTO_ENABLE", "false").start();
    assert!(backup_labels(&node).is_empty(), "a stopped backup is offered: {:?}", backup_labels(&node));
    node.full_backup();
    assert_eq!(backup_labels(&node).len(), 1);
    assert_eq!(node.stop(), 0);
}

#[test]
fn a_restore_killed_midway_is_redone_at_the_next_start() {
    let (mut primary, repo) = Node::backing_up("bfault-kill-restore");
    primary.start().wait_repository_ok();
    fill(&primary);
    let writer = Writer::start(&primary, 1);
    std::thread::sleep(Duration::from_millis(300));
    primary.full_backup();
    let acked = writer.finish();
    primary.archive_now();

    let mut restored = Node::new("bfault-kill-restore-new");
    restored.with_backups(&repo);
    restored.set("PGBACKREST_RESTORE", "true");
    restored.spawn(&[]);
    // Killed while pgBackRest copies files into the staging directory.
    let staging = restored.pgdata.join(".pg-entrypoint-bootstrap/cluster/base");
    wait_until(Duration::from_secs(60), || staging.exists());
    restored.kill_all();
    assert!(!restored.pgdata.join("PG_VERSION").exists(), "a half-restored PGDATA looks like a cluster");
    restored.start_with_timeout(Duration::from_secs(180));
    assert_eq!(restored.query_one("SELECT count(*) FROM acked"), acked.to_string(), "{}", restored.output());
    assert_eq!(restored.query_one("SELECT count(*) FROM big"), "500000");
    assert_eq!(restored.stop(), 0);
    assert_eq!(primary.stop(), 0);
}

#[test]
fn a_repository_out_of_reach_under_writes_is_reported_and_caught_up_with_nothing_lost() {
    let (mut primary, repo) = Node::backing_up("bfault-unreachable");
    primary.start().wait_repository_ok();
    primary.full_backup();
    let writer = Writer::start(&primary, 1);
    // Out of reach: the service account can no longer enter the repository.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&repo, std::fs::Permissions::from_mode(0o000)).unwrap();
    let cut = Instant::now();
    primary.client().batch_execute("SELECT pg_switch_wal()").unwrap();
    // Within a minute: health warns (and stays healthy), status says so.
    loop {
        let (code, out) = primary.tool(&["health"]);
        if out.contains("warning: archiving has failed since") {
            assert_eq!(code, 0, "the primary stays in service: {out}");
            break;
        }
        assert!(cut.elapsed() < Duration::from_secs(60), "no warning within a minute: {out}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(primary.status()["archiving"]["failing"], true);
    assert!(primary.output().contains("archive command failed"), "{}", primary.output());
    // Two minutes out of reach, writes acknowledged all along.
    let before = primary.query_one("SELECT count(*) FROM acked");
    while cut.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_secs(1));
    }
    let during: i64 = primary.query_one("SELECT count(*) FROM acked").parse().unwrap();
    assert!(during > before.parse::<i64>().unwrap(), "writes stopped while the repository was out of reach");
    std::fs::set_permissions(&repo, std::fs::Permissions::from_mode(0o750)).unwrap();
    let acked = writer.finish();
    primary.archive_now();
    assert_eq!(primary.status()["archiving"]["failing"], false);
    let (restored, count, max) = restore_latest("bfault-unreachable-new", &repo);
    assert_eq!((count, max), (acked, acked), "{}", restored.output());
    assert_eq!(primary.stop(), 0);
}

#[test]
fn after_a_failover_the_new_primary_archives_and_a_restore_holds_every_acknowledged_row() {
    let (mut primary, repo) = Node::backing_up("bfault-failover-a");
    // Synchronous: an acknowledged commit is on the replica too, so a failover keeps it.
    primary.as_primary().set("REPLICATION_SYNCHRONOUS_MODE", "on").start();
    primary.wait_repository_ok();
    let mut replica = Node::new("bfault-failover-b");
    replica.with_backups(&repo);
    replica.as_replica_of(&primary, "b").start();
    primary.eventually_equals("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'", "1");
    primary.full_backup();
    let writer = Writer::start(&primary, 1);
    std::thread::sleep(Duration::from_secs(1));
    primary.kill_all();
    let first = writer.finish();
    let (code, out) = replica.tool(&["promote", "--force"]);
    assert_eq!(code, 0, "{out}");
    replica.eventually_equals("pg_is_in_recovery()", "false");
    // Alone now: its commits would wait for a standby that is gone. The reload is
    // asynchronous: writes start once the server says it is in force.
    let (code, out) = replica.tool(&["sync", "--mode", "off"]);
    assert_eq!(code, 0, "{out}");
    replica.eventually_equals("current_setting('synchronous_standby_names')", "");
    // A commit can reach the standby and lose its acknowledgement with the killed primary:
    // the ids go on after the highest one there.
    let next: i64 = replica.query_one("SELECT coalesce(max(id), 0) + 1 FROM acked").parse().unwrap();
    assert!(next > first, "an acknowledged id is missing on the new primary");
    let writer = Writer::start(&replica, next);
    std::thread::sleep(Duration::from_secs(2));
    let acked = writer.finish();
    assert!(acked > first, "no write on the new primary");
    replica.archive_now();
    let timeline = replica.query_one("SELECT timeline_id FROM pg_control_checkpoint()");
    assert_eq!(timeline, "2");
    let (restored, count, max) = restore_latest("bfault-failover-new", &repo);
    assert_eq!((count, max), (acked, acked), "{}", restored.output());
    assert_eq!(replica.stop(), 0);
}

#[test]
fn a_wrong_cipher_pass_names_the_variable_and_leaves_pgdata_empty() {
    let (mut primary, repo) = Node::backing_up("bfault-cipher");
    let pass = primary.root_secret("cipher", "right horse battery staple");
    primary
        .set("PGBACKREST_REPO1_CIPHER_TYPE", "aes-256-cbc")
        .set("PGBACKREST_REPO1_CIPHER_PASS_FILE", &pass.display().to_string());
    primary.start().wait_repository_ok();
    primary.full_backup();

    let mut restored = Node::new("bfault-cipher-new");
    restored.with_backups(&repo);
    let wrong = restored.root_secret("cipher", "wrong horse");
    restored
        .set("PGBACKREST_REPO1_CIPHER_TYPE", "aes-256-cbc")
        .set("PGBACKREST_REPO1_CIPHER_PASS_FILE", &wrong.display().to_string())
        .set("PGBACKREST_RESTORE", "true");
    let (code, out) = restored.run_to_exit(&[]);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("PGBACKREST_REPO1_CIPHER_PASS"), "{out}");
    assert!(!out.contains("wrong horse") && !out.contains("battery"), "a secret in the log: {out}");
    restored.assert_pgdata_empty();
    assert_eq!(primary.stop(), 0);
}
