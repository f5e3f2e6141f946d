//! Faults an HA product exists to survive, between real processes on loopback: a synchronous
//! primary restarting, an old primary coming back after a failover, promoting the wrong
//! replica, a replica meeting a new or foreign primary, a silent primary, a stop with an
//! unreachable standby, a stop that has to escalate, and the majority rule (docs/native-ha.md):
//! members cut off (frozen, or their TCP port dropped), lost, or short of a majority, with
//! every acknowledged commit counted.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const CLONE_TIMEOUT: Duration = Duration::from_secs(90);

/// `host:port` of each node, for REPLICATION_PEERS.
fn peers(nodes: &[&Node]) -> String {
    nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",")
}

/// The postmaster started by a node's entrypoint, and one of its children by title.
fn postmaster(node: &Node) -> i32 {
    processes().into_iter().find(|p| p.ppid == node.pid() && p.state != 'Z').expect("postgres runs").pid
}

fn server_process(node: &Node, title: &str) -> Pid {
    let pm = postmaster(node);
    let mut found = None;
    eventually(&format!("a {title} process"), Duration::from_secs(30), || {
        found = processes().into_iter().find(|p| p.ppid == pm && p.cmdline.contains(title)).map(|p| p.pid);
        found.is_some()
    });
    Pid::from_raw(found.unwrap_or_default())
}

#[test]
fn a_synchronous_primary_restarts_and_its_single_user_session_neither_blocks_nor_leaks() {
    let mut primary = Node::new("sync-restart");
    primary
        .as_primary()
        .set("REPLICATION_SYNCHRONOUS_MODE", "any")
        .set("REPLICATION_SYNCHRONOUS_REPLICAS", "replica-1")
        // Settings that would make the single-user session log its statements or parse them
        // differently if it read them.
        .set("POSTGRESQL_CONFIG_LOG_MIN_DURATION_STATEMENT", "0")
        .set("POSTGRESQL_CONFIG_LOG_STATEMENT", "all")
        .set("POSTGRESQL_CONFIG_STANDARD_CONFORMING_STRINGS", "off")
        .set("REPLICATION_USER", "rep\\l'x");
    // The first boot's init scripts commit on a temporary server no standby can reach.
    primary.script("01-schema.sql", b"CREATE TABLE from_init (x int); INSERT INTO from_init VALUES (1);");
    primary.start_with_timeout(Duration::from_secs(30));
    assert_eq!(primary.stop(), 0);
    // Every start of an existing primary re-applies the replication role in single-user mode,
    // which reads synchronous_standby_names from our file: no standby can ever confirm there.
    let started = Instant::now();
    primary.start_with_timeout(Duration::from_secs(30));
    assert!(started.elapsed() < Duration::from_secs(15), "restart took {:?}", started.elapsed());
    eprintln!("a synchronous primary restarted to ready in {:?}", started.elapsed());
    assert!(primary.output().contains("applying the replication role"), "{}", primary.output());
    assert_eq!(primary.query_one("current_setting('synchronous_standby_names')"), "ANY 1 (\"replica-1\")");
    let roles =
        primary.query_one("(SELECT string_agg(rolname, ',' ORDER BY rolname) FROM pg_roles WHERE rolname !~ '^pg_')");
    assert_eq!(roles, "postgres,rep\\l'x", "exactly the roles we meant, no more");
    assert_eq!(primary.query_one("(SELECT count(*) FROM from_init)"), "1");
    // A replica of it streams, and commits are confirmed by it.
    let mut replica = Node::new("sync-restart-r");
    replica.as_replica_of(&primary, "replica-1").set("REPLICATION_USER", "rep\\l'x");
    replica.start_with_timeout(CLONE_TIMEOUT);
    eventually("replica-1 is the quorum standby", Duration::from_secs(30), || {
        try_query(&primary, "(SELECT string_agg(application_name || '=' || sync_state, ',') FROM pg_stat_replication)")
            == "replica-1=quorum"
    });
    primary.client().batch_execute("CREATE TABLE confirmed (x int); INSERT INTO confirmed VALUES (1)").unwrap();
    assert_eq!(replica.stop(), 0);
    assert_eq!(primary.stop(), 0);
    let logs = primary.all_output();
    assert!(!logs.contains("SCRAM-SHA-256$"), "a verifier reached the log:\n{logs}");
    assert!(!logs.contains(PASSWORD), "a password reached the log");
}

#[test]
fn a_slow_step_says_what_it_waits_for() {
    let mut node = Node::new("slow-step");
    node.script("01-slow.sh", b"sleep 11\n");
    node.start_with_timeout(Duration::from_secs(60));
    let out = node.output();
    assert!(out.contains("still waiting for init script") && out.contains("01-slow.sh after 10 s"), "{out}");
    assert_eq!(node.stop(), 0);
}

/// A primary and two replicas, each told the others' addresses.
fn three_members(name: &str) -> (Node, Node, Node) {
    let mut p = Node::new(&format!("{name}-p"));
    let mut r1 = Node::new(&format!("{name}-r1"));
    let mut r2 = Node::new(&format!("{name}-r2"));
    p.as_primary();
    r1.as_replica_of(&p, "r1");
    r2.as_replica_of(&p, "r2");
    let (pp, p1, p2) = (peers(&[&r1, &r2]), peers(&[&p, &r2]), peers(&[&p, &r1]));
    p.set("REPLICATION_PEERS", &pp);
    r1.set("REPLICATION_PEERS", &p1);
    r2.set("REPLICATION_PEERS", &p2);
    (p, r1, r2)
}

#[test]
fn an_old_primary_returning_after_a_promotion_is_never_writable() {
    let (mut p, mut r1, mut r2) = three_members("fence");
    p.start();
    r1.start_with_timeout(CLONE_TIMEOUT);
    r2.start_with_timeout(CLONE_TIMEOUT);
    p.client().batch_execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('before')").unwrap();
    eventually("both replicas have the row", Duration::from_secs(30), || {
        try_query(&r1, "(SELECT count(*) FROM t)") == "1" && try_query(&r2, "(SELECT count(*) FROM t)") == "1"
    });

    // While the primary answers as a writable primary, promotion is refused.
    let (code, out) = r1.tool(&["promote"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("127.0.0.1:{} is a writable primary", p.port)), "{out}");

    // The primary dies; r1 is promoted (nothing else is ahead of it).
    p.kill_all();
    let (code, out) = r1.tool(&["promote"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("promoted: now a primary on timeline 2"), "{out}");
    r1.client().batch_execute("INSERT INTO t VALUES ('after the promotion')").unwrap();

    // The old primary comes back unchanged: it must not become writable.
    let started = Instant::now();
    let (code, out) = p.run_to_exit(&[]);
    assert_eq!(code, 75, "{out}");
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    eprintln!("the old primary refused to start in {:?}", started.elapsed());
    assert!(out.contains("refusing to start as a writable primary"), "{out}");
    assert!(out.contains("writable primary of this cluster (timeline 2)"), "{out}");
    // Nor with a password the new primary no longer accepts (rotated there): it is alive.
    p.set("REPLICATION_PASSWORD", "rotated elsewhere");
    let (code, out) = p.run_to_exit(&[]);
    assert_eq!(code, 75, "{out}");
    assert!(out.contains(&format!("127.0.0.1:{} answered but refused this node", r1.port)), "{out}");
    p.set("REPLICATION_PASSWORD", PASSWORD);
    // r2, still a standby, refuses to be promoted while r1 is the writable primary.
    let (code, out) = r2.tool(&["promote"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("127.0.0.1:{} is a writable primary", r1.port)), "{out}");

    // With r1 down too, the timeline still gives it away: r2 (repointed at r1) is on timeline 2.
    assert_eq!(r2.stop(), 0);
    r2.set("PRIMARY_PORT", &r1.port.to_string()).start();
    eventually("r2 follows r1 on timeline 2", Duration::from_secs(30), || {
        try_query(&r2, "(SELECT received_tli FROM pg_stat_wal_receiver)") == "2"
    });
    assert_eq!(r1.stop(), 0);
    let (code, out) = p.run_to_exit(&[]);
    assert_eq!(code, 75, "{out}");
    assert!(out.contains("is on timeline 2, newer than this node's 1"), "{out}");

    // The documented way back: the promoted node's environment says primary, and the old
    // primary becomes a replica of it, rewound.
    r1.unset("PRIMARY_HOST").unset("PRIMARY_PORT").as_primary().start();
    p.unset("REPLICATION_PEERS").as_replica_of(&r1, "p");
    p.start_with_timeout(CLONE_TIMEOUT);
    eventually("the old primary has the new row", Duration::from_secs(30), || {
        try_query(&p, "(SELECT count(*) FROM t)") == "2"
    });
    // The promotion marker pg_rewind copied from r1 is not ours: healthy as a replica at once.
    eventually("the rejoined node is a healthy replica", Duration::from_secs(30), || p.tool(&["health"]).0 == 0);
    for n in [&mut p, &mut r2, &mut r1] {
        assert_eq!(n.stop(), 0);
    }
}

#[test]
fn promoting_a_replica_that_lacks_acknowledged_commits_is_refused() {
    let (mut p, mut r1, mut r2) = three_members("lagging");
    // As in the compose overlay, every member carries the synchronous settings.
    for n in [&mut p, &mut r1, &mut r2] {
        n.set("REPLICATION_SYNCHRONOUS_MODE", "any").set("REPLICATION_SYNCHRONOUS_REPLICAS", "r1,r2");
    }
    p.start();
    r1.start_with_timeout(CLONE_TIMEOUT);
    r2.start_with_timeout(CLONE_TIMEOUT);
    p.client().batch_execute("CREATE TABLE acked (x int)").unwrap();
    // r1 is cut off (the primary's walsender for it is frozen: nothing more reaches r1);
    // commits are acknowledged through r2 alone. Then the primary dies.
    let sender: i32 =
        p.query_one("(SELECT pid FROM pg_stat_replication WHERE application_name = 'r1')").parse().unwrap();
    kill(Pid::from_raw(sender), Signal::SIGSTOP).unwrap();
    let mut client = p.client();
    for i in 0..200 {
        client.execute("INSERT INTO acked VALUES ($1)", &[&i]).unwrap();
    }
    p.kill_all();
    // Stopped, it cannot notice its postmaster's death: it would outlive the test.
    kill(Pid::from_raw(sender), Signal::SIGKILL).unwrap();

    // status shows what each member has, so the operator can see which replica to promote.
    let (code, status) = r1.tool(&["status"]);
    assert_eq!(code, 0, "{status}");
    let json: serde_json::Value = serde_json::from_str(&status).unwrap();
    let r2_view = json["peers"].as_array().unwrap().iter().find(|p| p["address"] == format!("127.0.0.1:{}", r2.port));
    assert_eq!(r2_view.map(|p| p["state"].clone()), Some("standby".into()), "{status}");
    let (code, out) = r1.tool(&["promote"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("127.0.0.1:{} has received WAL up to", r2.port)), "{out}");
    assert!(out.contains("would lose commits that were acknowledged"), "{out}");
    assert_eq!(try_query(&r1, "pg_is_in_recovery()"), "true", "r1 stays a standby");
    // Nor does a restart as primary promote it (docs/native-ha.md, "Manual failover", step 2).
    assert_eq!(r1.stop(), 0);
    let replica_env = r1.env.clone();
    r1.unset("PRIMARY_HOST").unset("PRIMARY_PORT").as_primary();
    let (code, out) = r1.run_to_exit(&[]);
    assert_eq!(code, 75, "{out}");
    assert!(out.contains(&format!("127.0.0.1:{} has received WAL up to", r2.port)), "{out}");
    r1.env = replica_env;
    r1.start();
    assert_eq!(r1.query_one("pg_is_in_recovery()"), "true", "still a standby, nothing changed");
    // The most advanced replica is promoted and has every acknowledged commit.
    let (code, out) = r2.tool(&["promote"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(r2.query_one("(SELECT count(*) FROM acked)"), "200");
    // Synchronous at once, and complete only once r1 (whose primary is gone) follows it.
    assert_eq!(r2.query_one("current_setting('synchronous_standby_names')"), "ANY 1 (\"r1\", \"r2\")");
    assert!(
        out.contains(&format!("2 of the 3 members are on timeline 2 (this one and 127.0.0.1:{})", r1.port)),
        "{out}"
    );
    // --force is the operator's override.
    let (code, out) = r1.tool(&["promote", "--force"]);
    assert_eq!(code, 0, "{out}");
    for n in [&mut r1, &mut r2] {
        assert_eq!(n.stop(), 0);
    }
}

/// Freezes (or thaws) every process of a node: it neither answers nor sends, as when its
/// network is cut; connections to it time out.
fn freeze(node: &Node, frozen: bool) {
    let signal = if frozen { Signal::SIGSTOP } else { Signal::SIGCONT };
    nix::sys::signal::killpg(Pid::from_raw(node.pid()), signal).unwrap();
}

/// Every commit one server acknowledged, and when: a client on the Unix socket (a TCP
/// partition does not cut it) inserting one numbered row per commit until its server is gone.
struct Counter {
    acked: Arc<Mutex<Vec<(i32, Instant)>>>,
}

impl Counter {
    fn start(node: &Node, first: i32) -> Counter {
        let user = node.superuser();
        let mut client = postgres::Config::new()
            .host_path(node.socket_dir())
            .port(node.port)
            .user(&user)
            .password(node.get_or_file("POSTGRES_PASSWORD").unwrap_or_default())
            .dbname(&node.get_or_file("POSTGRES_DB").unwrap_or(user.clone()))
            .connect(postgres::NoTls)
            .unwrap();
        let acked = Arc::new(Mutex::new(Vec::new()));
        let record = acked.clone();
        // Never joined: a commit on a server cut off from its majority waits until the server dies.
        std::thread::spawn(move || {
            for id in first.. {
                if client.execute("INSERT INTO acks VALUES ($1)", &[&id]).is_err() {
                    return;
                }
                record.lock().unwrap().push((id, Instant::now()));
            }
        });
        Counter { acked }
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn ids(&self) -> Vec<i32> {
        self.acked.lock().unwrap().iter().map(|(id, _)| *id).collect()
    }

    fn first(&self) -> Option<Instant> {
        self.acked.lock().unwrap().first().map(|(_, at)| *at)
    }

    fn last(&self) -> Option<Instant> {
        self.acked.lock().unwrap().last().map(|(_, at)| *at)
    }

    /// The longest wait between two acknowledgements from `since` on (the last one before
    /// `since` included).
    fn longest_gap_since(&self, since: Instant) -> Duration {
        let acked = self.acked.lock().unwrap();
        let from = acked.iter().rposition(|(_, at)| *at < since).unwrap_or(0);
        acked[from..].windows(2).map(|w| w[1].1 - w[0].1).max().unwrap_or_default()
    }
}

/// How many of `ids` are in `node`'s acks table.
fn present(node: &Node, ids: &[i32]) -> usize {
    let row = node.client().query_one("SELECT count(*) FROM acks WHERE id = ANY($1)", &[&ids]).unwrap();
    row.get::<_, i64>(0) as usize
}

/// TCP to and from a port dropped on loopback, as a partition; lifted when dropped.
struct Partition(u16);

impl Partition {
    fn cut(port: u16) -> Partition {
        for direction in ["--dport", "--sport"] {
            let rule = ["-w", "-I", "INPUT", "-p", "tcp", direction, &port.to_string(), "-j", "DROP"];
            assert!(std::process::Command::new("iptables").args(rule).status().unwrap().success(), "iptables");
        }
        Partition(port)
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        for direction in ["--dport", "--sport"] {
            let rule = ["-w", "-D", "INPUT", "-p", "tcp", direction, &self.0.to_string(), "-j", "DROP"];
            let _ = std::process::Command::new("iptables").args(rule).status();
        }
    }
}

/// `promote` on whichever replica has the most WAL (the other's refusal names it).
fn promote_most_advanced<'a>(a: &'a Node, b: &'a Node) -> &'a Node {
    let (code, out) = a.tool(&["promote"]);
    if code == 0 {
        return a;
    }
    assert!(out.contains("instead"), "{out}");
    let (code, out) = b.tool(&["promote"]);
    assert_eq!(code, 0, "{out}");
    b
}

/// Three members streaming, with the table the counting clients write.
fn three_streaming(name: &str) -> (Node, Node, Node) {
    let (mut p, mut r1, mut r2) = three_members(name);
    p.start();
    r1.start_with_timeout(CLONE_TIMEOUT);
    r2.start_with_timeout(CLONE_TIMEOUT);
    p.client().batch_execute("CREATE TABLE acks (id int PRIMARY KEY)").unwrap();
    for r in [&r1, &r2] {
        r.eventually_equals("(SELECT count(*) FROM pg_class WHERE relname = 'acks')", "1");
    }
    (p, r1, r2)
}

#[test]
fn a_primary_cut_off_acknowledges_nothing_after_a_replica_is_promoted() {
    let (mut p, r1, r2) = three_streaming("partition");
    let old = Counter::start(&p, 1);
    eventually("commits on the primary", Duration::from_secs(30), || old.count() >= 200);
    // The primary is cut off from both replicas; its clients (on its socket) go on.
    let cut = Partition::cut(p.port);
    let cut_at = Instant::now();
    let promoted = promote_most_advanced(&r1, &r2);
    let new = Counter::start(promoted, 1_000_000);
    eventually("commits on the new primary", Duration::from_secs(30), || new.count() >= 100);
    let (last_old, first_new) = (old.last().unwrap(), new.first().unwrap());
    eprintln!(
        "cut off: the old primary's last acknowledgement {:.3} s after the cut, the new primary's first {:.1} s after",
        last_old.saturating_duration_since(cut_at).as_secs_f64(),
        first_new.saturating_duration_since(cut_at).as_secs_f64()
    );
    assert!(last_old < first_new, "the old primary acknowledged a commit after the new one's first");
    let acked = old.ids();
    assert_eq!(present(promoted, &acked), acked.len(), "acknowledged ids missing on the new primary");
    drop(cut);
    p.kill_all();
}

#[test]
fn three_members_keep_their_acknowledged_writes_through_the_loss_of_any_one() {
    let (mut p, mut r1, mut r2) = three_streaming("lose-one");
    let mut first = 1;
    // A replica lost: the other confirms commits (ANY 1 of 2); nothing waits for the lost one.
    for victim in [&mut r1, &mut r2] {
        let counter = Counter::start(&p, first);
        eventually("commits", Duration::from_secs(30), || counter.count() >= 100);
        let killed = Instant::now();
        victim.kill_all();
        let before = counter.count();
        eventually("commits after the loss", Duration::from_secs(30), || counter.count() >= before + 100);
        eprintln!("replica killed: longest pause between commits {:?}, 0 lost", counter.longest_gap_since(killed));
        first += 1_000_000;
        victim.start();
        eventually("both replicas stream again", Duration::from_secs(30), || {
            try_query(&p, "(SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming')") == "2"
        });
    }
    // The primary lost: the most advanced replica is promoted and has every acknowledged id.
    let counter = Counter::start(&p, first);
    eventually("commits", Duration::from_secs(30), || counter.count() >= 100);
    p.kill_all();
    let promoting = Instant::now();
    let promoted = promote_most_advanced(&r1, &r2);
    let took = promoting.elapsed();
    let new = Counter::start(promoted, first + 1_000_000);
    eventually("commits on the new primary", Duration::from_secs(30), || new.count() >= 1);
    let acked = counter.ids();
    let missing = acked.len() - present(promoted, &acked);
    eprintln!(
        "primary killed: promote took {:.1} s, writes paused {:.1} s in all, {missing} of {} acknowledged missing",
        took.as_secs_f64(),
        (new.first().unwrap() - counter.last().unwrap()).as_secs_f64(),
        acked.len()
    );
    assert_eq!(missing, 0);
    for n in [&mut r1, &mut r2] {
        n.kill_all();
    }
}

#[test]
fn a_promoted_replica_cut_off_leaves_the_old_primary_fenced() {
    let (mut p, mut r1, mut r2) = three_streaming("cutoff");
    p.client().batch_execute("INSERT INTO acks SELECT generate_series(1, 100)").unwrap();
    p.kill_all();
    // The promotion completes once r2, whose primary is gone, follows r1 on timeline 2.
    let (code, out) = r1.tool(&["promote"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("2 of the 3 members are on timeline 2 (this one and 127.0.0.1:{})", r2.port)),
        "{out}"
    );
    assert_eq!(try_query(&r2, "(SELECT sender_port FROM pg_stat_wal_receiver)"), r1.port.to_string());
    let mut client = r1.client();
    for id in 101..=200 {
        client.execute("INSERT INTO acks VALUES ($1)", &[&id]).unwrap();
    }
    drop(client);
    // r1 is cut off; the old primary comes back with its environment unchanged. The one
    // member it reaches, r2, is on timeline 2: it must not serve writes.
    freeze(&r1, true);
    let (code, out) = p.run_to_exit(&[]);
    freeze(&r1, false);
    assert_eq!(code, 75, "{out}");
    assert!(out.contains(&format!("127.0.0.1:{} is on timeline 2, newer than this node's 1", r2.port)), "{out}");
    // r2 still follows r1, and every acknowledged id is on r1.
    eventually("r2 streams from r1", Duration::from_secs(30), || {
        try_query(&r2, "(SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming')")
            == r1.port.to_string()
    });
    assert_eq!(r1.query_one("(SELECT count(DISTINCT id) FROM acks)"), "200");
    r2.eventually_equals("(SELECT count(*) FROM acks)", "200");
    for n in [&mut r1, &mut r2] {
        assert_eq!(n.stop(), 0);
    }
}

#[test]
fn promoting_without_a_majority_is_refused_unless_forced() {
    let (mut p, mut r1, mut r2) = three_streaming("minority");
    p.kill_all();
    r2.kill_all();
    let (code, out) = r1.tool(&["promote"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("refusing to promote: a promotion needs a majority: 1 of the 3 members answered"), "{out}");
    for gone in [&p, &r2] {
        assert!(out.contains(&format!("127.0.0.1:{}: not reachable", gone.port)), "{out}");
    }
    assert_eq!(r1.query_one("pg_is_in_recovery()"), "true", "nothing changed");
    // The operator's override: it goes ahead and says, as an error, what it could not check.
    let (code, out) = r1.tool(&["promote", "--force"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("promote: ERROR: --force: promoting although a promotion needs a majority"), "{out}");
    assert!(out.contains("promote: ERROR: --force: not waiting for a majority"), "{out}");
    assert_eq!(r1.query_one("pg_is_in_recovery()"), "false");
    assert_eq!(r1.stop(), 0);
}

#[test]
fn a_primary_without_a_majority_starts_read_only_until_a_replica_answers() {
    let (mut p, mut r1, mut r2) = three_streaming("readonly");
    p.client().batch_execute("INSERT INTO acks VALUES (1)").unwrap();
    r1.eventually_equals("(SELECT count(*) FROM acks)", "1");
    for n in [&mut r1, &mut r2, &mut p] {
        assert_eq!(n.stop(), 0);
    }
    // Both replicas down: the primary serves reads, refuses writes, and says why. Its peers
    // listed as a pod template lists them, itself included: it counts itself once.
    let all = peers(&[&p, &r1, &r2]);
    p.set("REPLICATION_PEERS", &all);
    p.start();
    let refused = p.client().batch_execute("INSERT INTO acks VALUES (2)").unwrap_err();
    assert!(format!("{refused:?}").contains("read-only transaction"), "{refused:?}");
    let (code, out) = p.tool(&["health"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("primary, not accepting writes: waiting for a majority: 1 of the 3 members answered"),
        "{out}"
    );
    assert_eq!(p.query_one("(SELECT count(*) FROM acks)"), "1");
    // One replica back makes a majority: writable within seconds, nothing lost.
    r1.start();
    let back = Instant::now();
    eventually("the primary accepts writes", Duration::from_secs(30), || {
        p.client().batch_execute("INSERT INTO acks VALUES (2)").is_ok()
    });
    eprintln!("read-only primary: writable {:.1} s after a replica was up", back.elapsed().as_secs_f64());
    assert!(p.output().contains("a majority of the members answered: accepting writes"), "{}", p.output());
    assert_eq!(p.tool(&["health"]).0, 0);
    r1.eventually_equals("(SELECT string_agg(id::text, ',' ORDER BY id) FROM acks)", "1,2");
    for n in [&mut r1, &mut p] {
        assert_eq!(n.stop(), 0);
    }
}

#[test]
fn an_old_primary_waiting_read_only_stops_once_a_member_shows_a_newer_timeline() {
    let (mut p, mut r1, mut r2) = three_streaming("waiting");
    p.kill_all();
    let (code, out) = r1.tool(&["promote"]);
    assert_eq!(code, 0, "{out}");
    for n in [&mut r1, &mut r2] {
        assert_eq!(n.stop(), 0);
    }
    // The old primary finds no member: read-only, waiting.
    p.start();
    let refused = p.client().batch_execute("INSERT INTO acks VALUES (1)").unwrap_err();
    assert!(format!("{refused:?}").contains("read-only transaction"), "{refused:?}");
    // r2, which followed the promotion, comes back: timeline 2. The old primary stops.
    r2.start();
    let (code, took) = p.wait_exit(Duration::from_secs(30));
    let out = p.output();
    assert_eq!(code, 75, "{out}");
    assert!(out.contains("refusing to become a writable primary"), "{out}");
    assert!(out.contains(&format!("127.0.0.1:{} is on timeline 2, newer than this node's 1", r2.port)), "{out}");
    eprintln!("the waiting old primary stopped {:.1} s after r2 was up", took.as_secs_f64());
    assert_eq!(r2.stop(), 0);
}

#[test]
fn a_replica_started_before_its_primary_gets_its_slot_once_the_primary_answers() {
    let mut p = Node::new("slot-later-p");
    p.as_primary().start();
    let mut r = Node::new("slot-later-r");
    r.as_replica_of(&p, "late").start_with_timeout(CLONE_TIMEOUT);
    assert_eq!(r.stop(), 0);
    // A primary without our slot (as a new primary after a failover), down when the replica starts.
    p.client().batch_execute("SELECT pg_drop_replication_slot('late')").unwrap();
    assert_eq!(p.stop(), 0);
    r.start();
    assert!(r.output().contains("primary not reachable now"), "{}", r.output());
    p.start();
    let primary_up = Instant::now();
    eventually("the slot exists and the replica streams through it", Duration::from_secs(45), || {
        try_query(&p, "(SELECT active FROM pg_replication_slots WHERE slot_name = 'late')") == "true"
    });
    eprintln!("the replica streamed through its new slot {:?} after the primary was up", primary_up.elapsed());
    eventually("the keeper says so", Duration::from_secs(15), || {
        r.output().contains("created the missing replication slot")
    });
    assert!(!p.output().contains("already exists"), "the slot probe must not log errors on the primary");
    assert_eq!(r.stop(), 0);
    assert_eq!(p.stop(), 0);
}

#[test]
fn a_replica_refuses_a_primary_of_another_cluster_and_creates_nothing_there() {
    let mut p = Node::new("foreign-p");
    p.as_primary().start();
    let mut r = Node::new("foreign-r");
    r.as_replica_of(&p, "r").start_with_timeout(CLONE_TIMEOUT);
    assert_eq!(r.stop(), 0);
    let mut other = Node::new("foreign-other");
    other.as_primary().start();
    r.set("PRIMARY_PORT", &other.port.to_string());
    let (code, out) = r.run_to_exit(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("belongs to another cluster"), "{out}");
    assert_eq!(other.query_one("(SELECT count(*) FROM pg_replication_slots)"), "0");
    assert_eq!(r.controldata_state(), "shut down in recovery", "the replica's data is untouched");
    // Back at its own primary, it starts.
    r.set("PRIMARY_PORT", &p.port.to_string()).start();
    for n in [&mut r, &mut p, &mut other] {
        assert_eq!(n.stop(), 0);
    }
}

#[test]
fn a_silent_primary_makes_its_replica_unhealthy_within_seconds() {
    let mut p = Node::new("silent-p");
    p.as_primary().start();
    let mut r = Node::new("silent-r");
    r.as_replica_of(&p, "r").start_with_timeout(CLONE_TIMEOUT);
    eventually("streaming", Duration::from_secs(30), || r.tool(&["health"]).0 == 0);
    // The walsender freezes: the connection stays open, nothing arrives (a partition).
    let sender = server_process(&p, "walsender");
    kill(sender, Signal::SIGSTOP).unwrap();
    let frozen = Instant::now();
    eventually("unhealthy", Duration::from_secs(30), || r.tool(&["health"]).0 == 1);
    let took = frozen.elapsed();
    let (_, why) = r.tool(&["health"]);
    kill(sender, Signal::SIGCONT).unwrap();
    assert!(took < Duration::from_secs(20), "noticed after {took:?}");
    assert!(why.contains("nothing heard from the primary") || why.contains("not connected"), "{why}");
    eprintln!("a silent primary noticed after {took:?}");
    eventually("streaming again", Duration::from_secs(30), || r.tool(&["health"]).0 == 0);
    assert_eq!(r.stop(), 0);
    assert_eq!(p.stop(), 0);
}

#[test]
fn a_primary_stops_cleanly_in_time_when_its_standby_is_unreachable() {
    let mut p = Node::new("stop-unreach-p");
    p.as_primary().start();
    let mut r = Node::new("stop-unreach-r");
    r.as_replica_of(&p, "r").start_with_timeout(CLONE_TIMEOUT);
    p.client().batch_execute("CREATE TABLE t AS SELECT 1 AS x").unwrap();
    let receiver = server_process(&r, "walreceiver");
    kill(receiver, Signal::SIGSTOP).unwrap();
    p.client().batch_execute("INSERT INTO t VALUES (2)").unwrap();
    p.signal(Signal::SIGTERM as i32);
    let (code, took) = p.wait_exit(Duration::from_secs(15));
    kill(receiver, Signal::SIGCONT).unwrap();
    assert_eq!(code, 0, "{}", p.output());
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert_eq!(p.controldata_state(), "shut down");
    eprintln!("stop with an unreachable standby took {took:?}");
    assert_eq!(r.stop(), 0);
}

#[test]
fn a_clone_that_runs_out_of_space_says_so_and_the_next_one_waits() {
    let mut p = Node::new("nospace-p");
    p.as_primary().start();
    let mut r = Node::new("nospace-r");
    r.as_replica_of(&p, "r");
    // PGDATA on a file system smaller than the primary (about 40 MB).
    std::fs::create_dir_all(&r.pgdata).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=12m,mode=0700"])
        .arg("tmpfs")
        .arg(&r.pgdata)
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a small tmpfs (the test runs as root)");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(r.pgdata.clone());

    let (code, out) = r.run_to_exit(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("the clone failed: no space left on the device of PGDATA"), "{out}");
    assert!(!r.passfile().exists(), "the password file outlived the failed clone");

    // The next start waits before cloning again (a restart loop must not hammer the primary),
    // and a stop ends the wait at once.
    r.spawn(&[]);
    eventually("the wait is announced", Duration::from_secs(30), || {
        r.output().contains("waiting before cloning again")
    });
    assert!(r.output().contains("the last 1 clone(s) failed (no space left on device)"), "{}", r.output());
    r.signal(Signal::SIGTERM as i32);
    let (code, took) = r.wait_exit(Duration::from_secs(10));
    assert_eq!(code, 143, "{}", r.output());
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(!r.passfile().exists());
    assert_eq!(p.stop(), 0);
}

#[test]
fn rotating_the_replication_password_with_peers_needs_the_previous_one_once() {
    let mut p = Node::new("rotate-p");
    let mut r = Node::new("rotate-r");
    p.as_primary();
    r.as_replica_of(&p, "r");
    p.set("REPLICATION_PEERS", &peers(&[&r]));
    r.set("REPLICATION_PEERS", &peers(&[&p]));
    p.start();
    r.start_with_timeout(CLONE_TIMEOUT);
    // The replica still knows only the old password: without the previous one, the primary
    // cannot tell it from a new primary whose password was rotated, and refuses.
    assert_eq!(p.stop(), 0);
    p.set("REPLICATION_PASSWORD", "new secret 2");
    let (code, out) = p.run_to_exit(&[]);
    assert_eq!(code, 75, "{out}");
    assert!(out.contains("set REPLICATION_PASSWORD_PREVIOUS to the old one"), "{out}");
    p.set("REPLICATION_PASSWORD_PREVIOUS", PASSWORD).start();
    // No child gets a password in its environment, the previous one included.
    let environ = std::fs::read(format!("/proc/{}/environ", postmaster(&p))).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.contains("REPLICATION_PASSWORD") && !environ.contains(PASSWORD), "{environ}");
    // The replica follows with the new password.
    assert_eq!(r.stop(), 0);
    r.set("REPLICATION_PASSWORD", "new secret 2").start();
    p.client().batch_execute("CREATE TABLE after_rotation (x int)").unwrap();
    eventually("the replica streams with the new password", Duration::from_secs(30), || {
        try_query(&r, "to_regclass('after_rotation') IS NOT NULL") == "true"
    });
    assert!(!p.all_output().contains("new secret 2") && !r.all_output().contains("new secret 2"));
    assert_eq!(r.stop(), 0);
    assert_eq!(p.stop(), 0);
}
