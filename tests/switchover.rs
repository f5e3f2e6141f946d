//! `pg-entrypoint switchover` between real processes on loopback (docs/switchover.md): the
//! primary role handed to a replica under a steady write load with every acknowledged commit
//! kept, the roles kept across restarts with unchanged variables, and the refusals.

mod common;

use std::time::{Duration, Instant};

use common::writer::Writer;
use common::*;

const CLONE_TIMEOUT: Duration = Duration::from_secs(90);

fn address(node: &Node) -> String {
    format!("127.0.0.1:{}", node.port)
}

/// A primary and two replicas, each told the others' addresses, all running.
fn three_members(name: &str) -> (Node, Node, Node) {
    three_members_with(name, |_| {})
}

fn three_members_with(name: &str, each: impl Fn(&mut Node)) -> (Node, Node, Node) {
    let mut p = Node::new(&format!("{name}-p"));
    let mut r1 = Node::new(&format!("{name}-r1"));
    let mut r2 = Node::new(&format!("{name}-r2"));
    for node in [&mut p, &mut r1, &mut r2] {
        each(node);
    }
    p.as_primary();
    r1.as_replica_of(&p, "r1");
    r2.as_replica_of(&p, "r2");
    p.set("REPLICATION_PEERS", &format!("{},{}", address(&r1), address(&r2)));
    r1.set("REPLICATION_PEERS", &format!("{},{}", address(&p), address(&r2)));
    r2.set("REPLICATION_PEERS", &format!("{},{}", address(&p), address(&r1)));
    p.start();
    r1.start_with_timeout(CLONE_TIMEOUT);
    r2.start_with_timeout(CLONE_TIMEOUT);
    // Commits wait for a majority (render::majority_sync): the replicas first.
    p.client().batch_execute("CREATE TABLE acked (id int PRIMARY KEY)").unwrap();
    for r in [&r1, &r2] {
        eventually("the replica streams", Duration::from_secs(30), || {
            try_query(r, "(SELECT status FROM pg_stat_wal_receiver)") == "streaming"
        });
    }
    (p, r1, r2)
}

fn missing_on(node: &Node, ids: &[i32]) -> usize {
    let mut client = node.client();
    let present: i64 = client.query_one("SELECT count(*) FROM acked WHERE id = ANY($1)", &[&ids]).unwrap().get(0);
    ids.len() - present as usize
}

fn sender_port(node: &Node) -> String {
    try_query(node, "(SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming')")
}

#[test]
fn a_switchover_under_load_loses_no_acknowledged_commit_and_the_roles_survive_restarts() {
    let (mut p, mut r1, mut r2) = three_members("so-load");
    let writer = Writer::start(&[&p, &r1, &r2]);
    eventually("writes are acknowledged", Duration::from_secs(30), || writer.count() > 200);
    // Run on the other replica: any member may ask.
    let started = Instant::now();
    let (code, out) = r2.tool(&["switchover", "--to", &address(&r1)]);
    let took = started.elapsed();
    assert_eq!(code, 0, "{out}\n--- p:\n{}\n--- r1:\n{}", p.output(), r1.output());
    assert!(
        out.contains(&format!("switchover: {} is the primary, {} streams from it", address(&r1), address(&p))),
        "{out}"
    );
    let before = writer.count();
    eventually("writes go on on the new primary", Duration::from_secs(30), || writer.count() > before + 200);
    let (acked, gap) = writer.finish();
    let missing = missing_on(&r1, &acked);
    eprintln!(
        "switchover took {took:?}; longest gap between acknowledged writes {gap:?}; {} acknowledged, {missing} missing",
        acked.len()
    );
    assert_eq!(missing, 0, "acknowledged ids missing on the new primary");
    assert_eq!(r1.query_one("pg_is_in_recovery()"), "false");
    assert_eq!(p.query_one("pg_is_in_recovery()"), "true");
    assert_eq!(sender_port(&p), r1.port.to_string(), "the old primary streams from the new one");
    eventually("the third member follows the new primary", Duration::from_secs(30), || {
        sender_port(&r2) == r1.port.to_string()
    });
    assert!(!p.all_output().contains("pg_rewind"), "a clean hand-over rewinds nothing:\n{}", p.all_output());
    // No slot is left behind on the old primary to hold WAL; both standbys have theirs on r1.
    eventually("the old primary keeps no slot", Duration::from_secs(30), || {
        try_query(&p, "(SELECT count(*) FROM pg_replication_slots)") == "0"
    });
    eventually("both standbys stream through a slot on r1", Duration::from_secs(30), || {
        try_query(&r1, "(SELECT count(*) FROM pg_replication_slots WHERE active)") == "2"
    });
    // The health check and the endpoint expect the new roles.
    assert_eq!(r1.tool(&["health"]).0, 0, "{}", r1.tool(&["health"]).1);
    assert_eq!(p.tool(&["health"]).0, 0, "{}", p.tool(&["health"]).1);
    assert_eq!(r1.http("GET", "/primary").0, 200);
    assert_eq!(p.http("GET", "/replica").0, 200);

    // Both restarted with unchanged variables: the same roles, never two writable primaries.
    assert_eq!(p.stop(), 0);
    assert_eq!(r1.stop(), 0);
    r1.start();
    p.start();
    assert_eq!(r1.query_one("pg_is_in_recovery()"), "false", "{}", r1.output());
    assert!(r1.output().contains("a switchover made this node the primary"), "{}", r1.output());
    assert_eq!(p.query_one("pg_is_in_recovery()"), "true", "{}", p.output());
    eventually("the old primary streams from the new one again", Duration::from_secs(30), || {
        sender_port(&p) == r1.port.to_string()
    });
    r1.client().batch_execute("INSERT INTO acked VALUES (-1)").unwrap();
    p.eventually_equals("(SELECT count(*) FROM acked WHERE id = -1)", "1");
    // `status` shows the recorded decision.
    let (_, status) = p.tool(&["status"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["role_record"], format!("replica {}", address(&r1)), "{status}");
    // A clone of the new primary is a replica: its copy of the record is dropped.
    let mut clone = Node::new("so-load-clone");
    clone.as_replica_of(&r1, "clone").start_with_timeout(CLONE_TIMEOUT);
    assert!(r1.pgdata.join("pg-entrypoint.role").exists());
    assert!(!clone.pgdata.join("pg-entrypoint.role").exists(), "the clone kept its source's record");
    assert_eq!(clone.query_one("pg_is_in_recovery()"), "true");
    assert_eq!(clone.stop(), 0);

    // And back: a switchover to the old primary, whose record then agrees with its variables.
    let (code, out) = r1.tool(&["switchover"]);
    assert_eq!(code, 0, "{out}\n--- p:\n{}", p.output());
    assert_eq!(p.query_one("pg_is_in_recovery()"), "false");
    assert_eq!(r1.query_one("pg_is_in_recovery()"), "true");
    for node in [&mut p, &mut r1, &mut r2] {
        assert_eq!(node.stop(), 0);
    }
    p.start();
    assert!(p.output().contains("the environment now gives the role a switchover recorded"), "{}", p.output());
    assert!(!p.pgdata.join("pg-entrypoint.role").exists());
}

#[test]
fn a_switchover_is_refused_when_it_cannot_keep_every_commit() {
    let (p, r1, mut r2) = three_members("so-refuse");
    // An unknown member, and bad input.
    let (code, out) = p.tool(&["switchover", "--to", "127.0.0.1:1"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("--to \"127.0.0.1:1\" is not a member; accepted:"), "{out}");
    // A lagging candidate: r1 receives but does not replay.
    r1.client().batch_execute("SELECT pg_wal_replay_pause()").unwrap();
    p.client()
        .batch_execute("CREATE TABLE filler AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 60000) g")
        .unwrap();
    let (code, out) = p.tool(&["switchover", "--to", &address(&r1)]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("cannot hand over to {}: it lags", address(&r1))), "{out}");
    r1.client().batch_execute("SELECT pg_wal_replay_resume()").unwrap();
    // A disconnected candidate.
    assert_eq!(r2.stop(), 0);
    let (code, out) = p.tool(&["switchover", "--to", &address(&r2)]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("cannot hand over to {}: it does not answer", address(&r2))), "{out}");
    assert_eq!(p.query_one("pg_is_in_recovery()"), "false", "the primary is untouched");
    r2.start();
    // A request nobody acts on in time is never acted on later: the watch removes it.
    let record = p.pgdata.join("pg-entrypoint.role");
    std::fs::write(&record, format!("replica {} until 1\n", address(&r1))).unwrap();
    eventually("the expired request is removed", Duration::from_secs(10), || !record.exists());
    assert_eq!(p.query_one("pg_is_in_recovery()"), "false");
    assert!(p.output().contains("it expired before this node saw it"), "{}", p.output());

    // Two at once: one hands over, the other is refused; one writable primary in the end.
    eventually("r1 has caught up", Duration::from_secs(30), || {
        try_query(&r1, "(SELECT count(*) FROM filler)") == "60000"
    });
    let spawn = |node: &Node| {
        let mut cmd = node.command_line_for_tool(&["switchover", "--to", &address(&r1)]);
        cmd.output().unwrap()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| spawn(&p));
        let b = s.spawn(|| spawn(&r2));
        (a.join().unwrap(), b.join().unwrap())
    });
    let codes = [a.status.code(), b.status.code()];
    let said = format!("{}{}", String::from_utf8_lossy(&a.stderr), String::from_utf8_lossy(&b.stderr));
    assert!(codes.contains(&Some(0)) && codes.contains(&Some(1)), "{codes:?}: {said}");
    assert!(
        said.contains("a switchover is already under way")
            || said.contains("already handing over")
            || said.contains("no member answers as a writable primary"),
        "{said}"
    );
    let writable: Vec<u16> =
        [&p, &r1, &r2].iter().filter(|n| try_query(n, "pg_is_in_recovery()") == "false").map(|n| n.port).collect();
    assert_eq!(writable, [r1.port]);
}

#[test]
fn a_candidate_that_dies_midway_leaves_the_old_primary_writable() {
    let (p, mut r1, _r2) = three_members("so-dies");
    p.client().batch_execute("INSERT INTO acked SELECT generate_series(1, 100)").unwrap();
    eventually("r1 has the rows", Duration::from_secs(30), || try_query(&r1, "(SELECT count(*) FROM acked)") == "100");
    // Replay stopped, so r1 cannot pass the old primary's last WAL before it is killed.
    r1.client().batch_execute("SELECT pg_wal_replay_pause()").unwrap();
    let to = address(&r1);
    let mut switchover = p.command_line_for_tool(&["switchover", "--to", &to]);
    let running = switchover.spawn().unwrap();
    eventually("the primary hands over", Duration::from_secs(30), || p.output().contains("handing the primary role"));
    r1.kill_all();
    let out = running.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains(&format!("{to} did not replay the old primary's last WAL")), "{said}");
    // (Run on the primary itself, which names itself by its host name.)
    assert!(said.contains(&format!(":{} is the primary again, writable", p.port)), "{said}");
    assert_eq!(p.query_one("pg_is_in_recovery()"), "false");
    p.client().batch_execute("INSERT INTO acked VALUES (101)").unwrap();
    assert_eq!(p.query_one("(SELECT count(*) FROM acked)"), "101");
}

#[test]
fn clients_of_pgbouncer_wait_through_a_switchover_instead_of_failing() {
    let (mut p, mut r1, r2) = three_members_with("so-pool", |node| {
        node.set("PGBOUNCER_ENABLE", "true")
            .set("PGBOUNCER_POOL_MODE", "transaction")
            .set("PGBOUNCER_LISTEN_ADDR", "127.0.0.1")
            .set("PGBOUNCER_LISTEN_PORT", &free_port().to_string());
    });
    let pooler_port = |node: &Node| node.get("PGBOUNCER_LISTEN_PORT").unwrap().parse::<u16>().unwrap();
    // Only through the old primary's pooler: its clients must follow the primary role.
    let writer = Writer::to_ports(&[pooler_port(&p)]);
    eventually("writes through PgBouncer are acknowledged", Duration::from_secs(60), || writer.count() > 200);
    let (code, out) = r2.tool(&["switchover", "--to", &address(&r1)]);
    assert_eq!(code, 0, "{out}\n--- p:\n{}", p.output());
    let before = writer.count();
    let deadline = Instant::now() + Duration::from_secs(30);
    while writer.count() <= before + 200 {
        assert!(Instant::now() < deadline, "writes stopped through the pooler:\n--- p:\n{}", p.output());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (acked, gap, errors) = writer.finish_with_errors();
    let missing = missing_on(&r1, &acked);
    eprintln!(
        "through PgBouncer: longest gap between acknowledged writes {gap:?}; {} acknowledged, {missing} missing, \
         {} errors",
        acked.len(),
        errors.len()
    );
    assert_eq!(missing, 0, "acknowledged ids missing on the new primary");
    assert!(errors.is_empty(), "the client saw errors: {errors:?}\n--- p:\n{}", p.output());
    let (_, status) = p.tool(&["status"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["pooler"]["answers"], true, "{status}");
    let (_, metrics) = p.http("GET", "/metrics");
    assert!(metrics.contains("pg_entrypoint_pooler_up{scope="), "{metrics}");
    assert!(metrics.lines().any(|l| l.starts_with("pg_entrypoint_pooler_up{") && l.ends_with(" 1")), "{metrics}");
    // PgBouncer stops after postgres, with the container.
    assert_eq!(p.stop(), 0);
    assert!(p.output().contains("PgBouncer stopped"), "{}", p.output());
    assert_eq!(r1.stop(), 0);
}

#[test]
fn an_unreadable_switchover_record_stops_the_start_with_75() {
    let mut node = Node::new("so-record");
    node.as_primary().start();
    assert_eq!(node.stop(), 0);
    std::fs::write(node.pgdata.join("pg-entrypoint.role"), "standby of someone\n").unwrap();
    let (code, out) = node.run_to_exit(&[]);
    assert_eq!(code, 75, "{out}");
    assert!(out.contains("refusing to start:") && out.contains("remove the file to go by REPLICATION_ROLE"), "{out}");
}
