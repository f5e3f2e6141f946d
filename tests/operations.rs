//! Operating a cluster: health, status, promote, and synchronous replication, against a real
//! primary and replicas.

mod common;

use std::time::{Duration, Instant};

use common::*;

const CLONE_TIMEOUT: Duration = Duration::from_secs(90);

fn eventually(mut check: impl FnMut() -> bool) {
    wait_until(Duration::from_secs(30), &mut check);
}

fn cluster(name: &str, replicas: &[&str]) -> (Node, Vec<Node>) {
    let mut primary = Node::new(&format!("{name}-p"));
    primary.as_primary();
    primary.start();
    let nodes = replicas
        .iter()
        .map(|r| {
            let mut n = Node::new(&format!("{name}-{r}"));
            n.as_replica_of(&primary, r).start_with_timeout(CLONE_TIMEOUT);
            n
        })
        .collect();
    (primary, nodes)
}

fn sync_states(primary: &Node) -> String {
    primary.query_one("(SELECT string_agg(application_name || '=' || sync_state, ',' ORDER BY application_name) FROM pg_stat_replication)")
}

#[test]
fn health_is_role_aware() {
    let (mut primary, mut replicas) = cluster("health", &["r1"]);
    let replica = &mut replicas[0];
    let started = Instant::now();
    let (code, out) = primary.tool(&["health"]);
    assert!(started.elapsed() < Duration::from_secs(2), "health took {:?}", started.elapsed());
    assert_eq!((code, out.as_str()), (0, "healthy: primary, accepting writes\n"));
    eventually(|| replica.tool(&["health"]).0 == 0);
    assert!(replica.tool(&["health"]).1.starts_with("healthy: replica, streaming"));
    assert_eq!(replica.tool(&["health", "--max-lag", "16MB"]).0, 0);

    // The primary goes away: the replica is no longer healthy, though still alive.
    assert_eq!(primary.stop(), 0);
    eventually(|| replica.tool(&["health"]).0 == 1);
    assert!(replica.tool(&["health"]).1.starts_with("unhealthy: replica, "), "{}", replica.tool(&["health"]).1);
    assert_eq!(replica.tool(&["health", "--liveness"]).0, 0);

    assert_eq!(replica.stop(), 0);
    let (code, out) = replica.tool(&["health"]);
    assert_eq!(code, 1);
    assert!(out.starts_with("unhealthy: no server running"), "{out}");
}

#[test]
fn health_is_false_while_bootstrap_runs_a_temporary_server() {
    let mut node = Node::new("health-boot");
    let marker = node.scratch().join("in-script");
    node.script("01-wait.sh", format!("touch {}\nsleep 3\n", marker.display()).as_bytes());
    node.spawn(&[]);
    wait_until(Duration::from_secs(60), || marker.exists());
    let (code, out) = node.tool(&["health"]);
    assert_eq!(code, 1, "{out}");
    node.wait_ready(Duration::from_secs(60));
    assert_eq!(node.tool(&["health"]).0, 0);
    assert_eq!(node.stop(), 0);
}

#[test]
fn status_reports_roles_lsns_and_replicas_as_json() {
    let (mut primary, mut replicas) = cluster("status", &["replica-1"]);
    // The standby's replay position (hence lag_bytes) is known from its first reply on, which
    // may come after it shows as streaming (failed once so in a fresh-clone CI run).
    let replied = "(SELECT bool_and(replay_lsn IS NOT NULL) FROM pg_stat_replication)";
    eventually(|| sync_states(&primary) == "replica-1=async" && primary.query_one(replied) == "true");
    let (code, out) = primary.tool(&["status"]);
    assert_eq!(code, 0, "{out}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["configured_role"], "primary");
    assert_eq!(s["role"], "primary");
    assert_eq!(s["timeline"], 1);
    assert!(s["current_lsn"].as_str().unwrap().contains('/'));
    let r = &s["replicas"][0];
    assert_eq!(
        (r["name"].as_str(), r["state"].as_str(), r["sync_state"].as_str()),
        (Some("replica-1"), Some("streaming"), Some("async"))
    );
    assert_eq!(r["slot"], "replica_1");
    assert!(r["lag_bytes"].is_number());

    let (code, out) = replicas[0].tool(&["status"]);
    assert_eq!(code, 0, "{out}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((s["configured_role"].as_str(), s["role"].as_str()), (Some("replica"), Some("replica")));
    assert_eq!(s["wal_receiver"]["status"], "streaming");
    assert_eq!(s["wal_receiver"]["slot"], "replica_1");
    assert!(s["replayed_lsn"].as_str().unwrap().contains('/'));
    assert_eq!(replicas[0].stop(), 0);
    assert_eq!(primary.stop(), 0);
}

#[test]
fn promote_makes_a_replica_writable_and_a_restart_never_silently_demotes_it() {
    let (mut primary, mut replicas) = cluster("promote", &["r1"]);
    let replica = &mut replicas[0];
    let (code, out) = primary.tool(&["promote"]);
    assert_eq!(code, 1);
    assert!(out.contains("not a standby"), "{out}");

    assert_eq!(primary.stop(), 0);
    let (code, out) = replica.tool(&["promote"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("promoted: now a primary on timeline 2"), "{out}");
    replica.client().batch_execute("CREATE TABLE after_promotion (x int)").unwrap();
    assert_eq!(replica.tool(&["health"]).0, 0, "a promoted node is a healthy primary");

    // Restarted with the environment still saying replica: refused, nothing rewound.
    assert_eq!(replica.stop(), 0);
    let (code, out) = replica.run_to_exit(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("promoted at run time") && out.contains("REPLICATION_ROLE=primary"), "{out}");
    // The environment catches up: it starts as the primary, with its writes.
    replica.unset("PRIMARY_HOST").unset("PRIMARY_PORT").as_primary();
    replica.start();
    assert_eq!(replica.query_one("to_regclass('after_promotion') IS NOT NULL"), "true");
    assert!(!replica.pgdata.join("pg-entrypoint.promoted").exists());
    assert!(!replica.passfile().exists(), "a primary keeps no replication password file");
    assert_eq!(replica.stop(), 0);
}

/// Commits an INSERT on the primary. Returns false when it returns normally, true when it is
/// seen waiting for synchronous standbys (wait event SyncRep); that commit is then cancelled.
/// (statement_timeout cannot prove it: postgres disarms it before the commit waits.)
fn commit_blocks(primary: &Node) -> bool {
    let mut client = primary.client();
    let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let insert = std::thread::spawn(move || client.batch_execute("INSERT INTO sync_t VALUES (1)"));
    let mut observer = primary.client();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if insert.is_finished() {
            insert.join().unwrap().unwrap();
            return false;
        }
        let waiting: bool = observer
            .query_one(
                "SELECT coalesce((SELECT wait_event = 'SyncRep' FROM pg_stat_activity WHERE pid = $1), false)",
                &[&pid],
            )
            .unwrap()
            .get(0);
        if waiting {
            observer.execute("SELECT pg_cancel_backend($1)", &[&pid]).unwrap();
            insert.join().unwrap().unwrap(); // committed locally; the wait was cancelled
            return true;
        }
        assert!(Instant::now() < deadline, "the commit neither returned nor waited for standbys");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn quorum_commit_needs_any_one_of_the_named_replicas() {
    let mut primary = Node::new("quorum-p");
    primary
        .as_primary()
        .set("REPLICATION_SYNCHRONOUS_MODE", "any")
        .set("REPLICATION_SYNCHRONOUS_REPLICAS", "replica-2,3f2a9c");
    primary.start();
    let mut a = Node::new("quorum-a");
    a.as_replica_of(&primary, "replica-2").start_with_timeout(CLONE_TIMEOUT);
    let mut b = Node::new("quorum-b");
    b.as_replica_of(&primary, "3f2a9c").start_with_timeout(CLONE_TIMEOUT);
    assert_eq!(primary.query_one("current_setting('synchronous_standby_names')"), "ANY 1 (\"replica-2\", \"3f2a9c\")");
    eventually(|| sync_states(&primary) == "3f2a9c=quorum,replica-2=quorum");
    primary.client().batch_execute("CREATE TABLE sync_t (x int)").unwrap();
    assert!(!commit_blocks(&primary));
    assert_eq!(a.stop(), 0);
    assert!(!commit_blocks(&primary), "one replica left must be enough");
    assert_eq!(b.stop(), 0);
    assert!(commit_blocks(&primary), "a commit with no replica must wait");
    let (code, why) = primary.tool(&["health"]);
    assert_eq!(code, 0, "{why}");
    assert!(why.contains("accepting writes, but commits wait: 0 of the 1 synchronous standbys"), "{why}");
    let (code, why) = primary.tool(&["health", "--require-sync"]);
    assert_eq!(code, 1, "a primary whose commits wait is not healthy with --require-sync: {why}");

    // Changing the environment and restarting is the runtime change path.
    assert_eq!(primary.stop(), 0);
    primary.set("REPLICATION_SYNCHRONOUS_MODE", "off");
    primary.start();
    assert!(!commit_blocks(&primary));
    assert_eq!(primary.stop(), 0);
}

#[test]
fn priority_commit_prefers_the_first_named_replica() {
    let mut primary = Node::new("first-p");
    primary
        .as_primary()
        .set("REPLICATION_SYNCHRONOUS_MODE", "first")
        .set("REPLICATION_SYNCHRONOUS_REPLICAS", "replica-1,replica-2");
    primary.start();
    let mut r1 = Node::new("first-r1");
    r1.as_replica_of(&primary, "replica-1").start_with_timeout(CLONE_TIMEOUT);
    let mut r2 = Node::new("first-r2");
    r2.as_replica_of(&primary, "replica-2").start_with_timeout(CLONE_TIMEOUT);
    eventually(|| sync_states(&primary) == "replica-1=sync,replica-2=potential");
    for n in [&mut r1, &mut r2, &mut primary] {
        assert_eq!(n.stop(), 0);
    }
}
