//! `pg-entrypoint sync` (and `pg-reload-sync-config.sh`): synchronous replication changed on
//! a running primary under write load, by a reload: commits wait only while a quorum is
//! required and missing, postgres is never restarted, and the next start returns to the
//! variables.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// Commits one row after another on `node` until told to stop; counts them.
struct Writer {
    committed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(node: &Node) -> Writer {
        let (committed, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let mut client = node.client();
        client.batch_execute("CREATE TABLE IF NOT EXISTS w (n bigint)").unwrap();
        let (count, halt) = (committed.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                if client.batch_execute("INSERT INTO w VALUES (1)").is_err() {
                    return;
                }
                count.fetch_add(1, Ordering::Relaxed);
            }
        });
        Writer { committed, stop, thread: Some(thread) }
    }

    fn count(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// True when commits go on: more within `within`.
    fn advances(&self, within: Duration) -> bool {
        let before = self.count();
        std::thread::sleep(within);
        self.count() > before
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn started_at(node: &Node) -> String {
    node.query_one("pg_postmaster_start_time()")
}

#[test]
fn sync_changes_synchronous_replication_under_load_without_a_restart() {
    let mut primary = Node::new("sync-primary");
    primary.as_primary().start();
    let mut replica = Node::new("sync-replica");
    replica.as_replica_of(&primary, "s1").start();
    primary.eventually_equals("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'", "1");
    let started = started_at(&primary);
    let writer = Writer::start(&primary);
    assert!(writer.advances(Duration::from_millis(300)), "asynchronous: commits go on");

    // Not on a standby; a bad value is refused before anything changes.
    let (code, out) = replica.tool(&["sync", "--mode", "any"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("this server is a standby; run sync on the primary"), "{out}");
    let (code, out) = primary.tool(&["sync", "--mode", "any", "--count", "0"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("REPLICATION_SYNCHRONOUS_COUNT"), "{out}");
    let (code, out) = primary.tool(&["sync", "--count", "1"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("give --mode too"), "{out}");
    assert_eq!(primary.query_one("current_setting('synchronous_standby_names')"), "");

    // Quorum of one: the streaming replica confirms, commits go on.
    let (code, out) = primary.tool(&["sync", "--mode", "any", "--count", "1"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("synchronous_standby_names = 'ANY 1 (*)'") && out.contains("was ''"), "{out}");
    assert!(writer.advances(Duration::from_millis(300)), "a quorum that is there: commits go on");
    let (_, status) = primary.tool(&["status"]);
    assert!(
        status.contains("\"synchronous_standby_names_from\": \"pg-entrypoint sync, until the next start\""),
        "{status}"
    );

    // The replica gone, the quorum is missing: commits wait...
    assert_eq!(replica.stop(), 0);
    wait_until(Duration::from_secs(10), || !writer.advances(Duration::from_millis(500)));
    assert!(!writer.advances(Duration::from_secs(1)), "a missing quorum: commits wait");
    // ...until synchronous replication is turned off, as the upstream image's script does.
    let link = primary.dir.0.join("pg-reload-sync-config.sh");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let out =
        Command::new(&link).arg("--sync-mode=false").env_clear().envs(primary.env.iter().cloned()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until(Duration::from_secs(10), || writer.advances(Duration::from_millis(200)));
    assert_eq!(started_at(&primary), started, "postgres was never restarted");
    drop(writer);

    // The next start renders the variables again (asynchronous here) and drops the change.
    assert_eq!(primary.tool(&["sync", "--mode", "any"]).0, 0);
    assert_eq!(primary.stop(), 0);
    primary.start();
    assert_eq!(primary.query_one("current_setting('synchronous_standby_names')"), "");
    let auto = std::fs::read_to_string(primary.pgdata.join("postgresql.auto.conf")).unwrap();
    assert!(!auto.contains("synchronous_standby_names"), "{auto}");
    let (code, out) = primary.tool(&["sync"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.trim(), "synchronous_standby_names = '' (from REPLICATION_SYNCHRONOUS_* at start)");
    assert_eq!(primary.stop(), 0);
}

#[test]
fn sync_never_goes_below_the_majority_rule() {
    let mut primary = Node::new("sync-majority-primary");
    let mut replica = Node::new("sync-majority-replica");
    primary.as_primary().set("REPLICATION_PEERS", &format!("127.0.0.1:{}", replica.port)).spawn(&[]);
    replica.as_replica_of(&primary, "m1").start();
    primary.wait_ready(Duration::from_secs(60));
    wait_until(Duration::from_secs(30), || primary.query_one("current_setting('transaction_read_only')") == "off");
    let (code, out) = primary.tool(&["sync", "--mode", "off"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("synchronous_standby_names = 'ANY 1 (*)' (asked '': the majority rule needs at least this"),
        "{out}"
    );
    assert_eq!(primary.query_one("current_setting('synchronous_standby_names')"), "ANY 1 (*)");
    assert_eq!(replica.stop(), 0);
    assert_eq!(primary.stop(), 0);
}
