//! The HTTP endpoint against real servers: every path in every state (standalone, primary,
//! replica streaming, disconnected, lagging, during bootstrap, while stopping), the methods
//! HAProxy sends, malformed and slow requests, and the endpoint disabled.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;

/// Status codes of GET on each path, in this order.
const PATHS: [&str; 9] =
    ["/", "/primary", "/leader", "/master", "/replica", "/read-only", "/health", "/liveness", "/readiness"];

fn codes(node: &Node) -> Vec<u16> {
    PATHS.iter().map(|p| node.http("GET", p).0).collect()
}

#[test]
fn a_primary_and_its_replica_answer_as_patroni_does() {
    let mut primary = Node::new("http-primary");
    primary.as_primary().start();
    let mut replica = Node::new("http-replica");
    replica.as_replica_of(&primary, "r1").start();
    wait_until(Duration::from_secs(30), || replica.http("GET", "/readiness").0 == 200);

    //                        /    primary leader master replica read-only health liveness readiness
    assert_eq!(codes(&primary), [200, 200, 200, 200, 503, 200, 200, 200, 200]);
    assert_eq!(codes(&replica), [503, 503, 503, 503, 200, 200, 200, 200, 200]);

    // GET carries the status document, with the fields Patroni's clients read.
    let (code, body) = primary.http("GET", "/patroni");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(code, 200);
    assert_eq!(doc["state"], "running");
    assert_eq!(doc["role"], "primary");
    assert!(doc["server_version"].as_i64().unwrap() >= 150000, "{doc}");
    assert_eq!(doc["timeline"], 1);
    assert!(doc["xlog"]["location"].as_i64().unwrap() > 0, "{doc}");
    assert_eq!(doc["replication"][0]["application_name"], "r1");
    assert_eq!(doc["replication"][0]["state"], "streaming");
    let (_, body) = replica.http("GET", "/replica");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((doc["role"].as_str(), doc["replication_state"].as_str()), (Some("replica"), Some("streaming")));
    assert!(doc["xlog"]["replayed_location"].as_i64().unwrap() > 0, "{doc}");
    // The same document as `pg-entrypoint status`.
    let (_, status) = replica.tool(&["status"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["database_system_identifier"], doc["database_system_identifier"]);

    // HAProxy's methods: the status alone.
    for method in ["OPTIONS", "HEAD"] {
        assert_eq!(primary.http(method, "/primary"), (200, String::new()));
        assert_eq!(replica.http(method, "/primary"), (503, String::new()));
    }
    assert_eq!(replica.http("OPTIONS", "/replica?replication_state=streaming").0, 200);
    assert_eq!(replica.http("GET", "/replica?tag_nofailover=true&lag=16MB").0, 200, "tags are ignored");
    assert_eq!(primary.http("POST", "/primary").0, 405, "no write operations");
    assert_eq!(primary.http("GET", "/failover").0, 404);
    let (code, why) = primary.http("GET", "/replica?lag=lots");
    assert_eq!(code, 400);
    assert!(why.contains("lag=\"lots\" is not a size"), "{why}");
    assert_eq!(primary.http("GET", "/standby-leader").0, 503);

    // Lagging: replay paused while the primary writes 4 MB.
    replica.client().batch_execute("SELECT pg_wal_replay_pause()").unwrap();
    primary
        .client()
        .batch_execute("CREATE TABLE filler AS SELECT repeat('x', 1000) FROM generate_series(1, 4000)")
        .unwrap();
    wait_until(Duration::from_secs(30), || replica.http("GET", "/replica?lag=1MB").0 == 503);
    assert_eq!(replica.http("GET", "/replica?lag=1GB").0, 200);
    assert_eq!(replica.http("GET", "/replica").0, 200, "without ?lag= a lagging replica serves");
    replica.client().batch_execute("SELECT pg_wal_replay_resume()").unwrap();
    wait_until(Duration::from_secs(30), || replica.http("GET", "/replica?lag=1MB").0 == 200);

    // Disconnected: still a replica for reads (as in Patroni), but not streaming, not ready.
    assert_eq!(primary.stop(), 0);
    wait_until(Duration::from_secs(30), || replica.http("GET", "/readiness").0 == 503);
    assert_eq!(replica.http("GET", "/replica").0, 200);
    assert_eq!(replica.http("GET", "/replica?replication_state=streaming").0, 503);
    assert_eq!(replica.http("GET", "/primary").0, 503);

    // Promoted at run time: the primary from the next probe on, and ready as one.
    let (code, out) = replica.tool(&["promote"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(codes(&replica), [200, 200, 200, 200, 503, 200, 200, 200, 200]);
    assert_eq!(replica.stop(), 0);
}

#[test]
fn a_standalone_server_answers_as_a_primary() {
    let mut node = Node::new("http-standalone");
    node.start();
    assert_eq!(codes(&node), [200, 200, 200, 200, 503, 200, 200, 200, 200]);
    let (_, body) = node.http("GET", "/patroni");
    assert!(body.contains("\"configured_role\": \"standalone\""), "{body}");
    assert_eq!(node.stop(), 0);
}

#[test]
fn during_bootstrap_nothing_is_primary_and_while_stopping_everything_is_503() {
    let mut node = Node::new("http-bootstrap");
    let gate = node.scratch().join("gate");
    // Holds the bootstrap (with its temporary server running) until the gate exists, and
    // ignores SIGTERM, so the stop below takes SHUTDOWN_TIMEOUT.
    node.script(
        "01-wait.sh",
        format!("trap '' TERM\nwhile [ ! -e {gate} ]; do sleep 0.05; done\n", gate = gate.display()).as_bytes(),
    );
    node.set("SHUTDOWN_TIMEOUT", "3");
    node.spawn(&[]);
    wait_until(Duration::from_secs(60), || node.http("GET", "/liveness").0 == 200);
    wait_until(Duration::from_secs(60), || node.pgdata.join("postmaster.pid").exists());
    // The temporary server runs: never primary, never healthy, state says why.
    let (code, body) = node.http("GET", "/primary");
    assert_eq!(code, 503);
    assert!(body.contains("\"state\": \"initializing new cluster\""), "{body}");
    assert_eq!(node.http("GET", "/health").0, 503);
    assert_eq!(node.http("GET", "/readiness").0, 503);
    assert_eq!(node.http("GET", "/patroni").0, 200);

    node.signal(libc_sigterm());
    let started = Instant::now();
    wait_until(Duration::from_secs(3), || node.http("GET", "/liveness").0 == 503);
    let (code, body) = node.http("GET", "/patroni");
    assert_eq!(code, 503);
    assert!(body.contains("\"state\": \"stopping\""), "{body}");
    let (exit, _) = node.wait_exit(Duration::from_secs(15));
    assert_eq!(exit, 143, "{}", node.output());
    assert!(started.elapsed() < Duration::from_secs(6));
    std::fs::write(&gate, "").unwrap();
    // Then, once it serves: primary.
    node.start();
    assert_eq!(node.http("GET", "/primary").0, 200);
    assert_eq!(node.stop(), 0);
}

#[test]
fn a_replica_being_cloned_says_so_and_is_not_a_replica_yet() {
    let primary = Node::new("http-absent-primary"); // never started: the replica waits
    let mut replica = Node::new("http-cloning");
    replica.as_replica_of(&primary, "r1").set("PRIMARY_WAIT_TIMEOUT", "60");
    replica.spawn(&[]);
    wait_until(Duration::from_secs(30), || replica.http("GET", "/liveness").0 == 200);
    let (code, body) = replica.http("GET", "/replica");
    assert_eq!(code, 503);
    assert!(body.contains("\"state\": \"creating replica\""), "{body}");
    assert_eq!(replica.stop(), 143);
}

#[test]
fn malformed_and_slow_requests_never_stall_the_supervisor() {
    let mut node = Node::new("http-abuse");
    node.start();
    // Garbage, and a head far over the limit: refused at once.
    assert_eq!(http_request(node.http_port, "\x16\x03\x01 garbage\r\n\r\n").0, 400);
    let huge = format!("GET /primary HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(100_000));
    assert_eq!(http_request(node.http_port, &huge).0, 431);
    // Slowloris from another address: heads that never end get 408 after 2 s, a client holds
    // at most 8 connections (more are closed at once), and others are served meanwhile.
    let slow: Vec<std::net::TcpStream> = (0..8)
        .map(|_| {
            let mut s = connect_from([127, 0, 0, 2], node.http_port);
            s.write_all(b"GET /primary HTTP/1.1\r\nX-Slow: ").unwrap();
            s
        })
        .collect();
    let mut ninth = connect_from([127, 0, 0, 2], node.http_port);
    ninth.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = ninth.write_all(b"GET /primary HTTP/1.1\r\n\r\n");
    let mut nothing = Vec::new();
    let _ = std::io::Read::read_to_end(&mut ninth, &mut nothing);
    assert!(nothing.is_empty(), "a ninth connection of one client was served");
    let started = Instant::now();
    assert_eq!(node.http("GET", "/primary").0, 200);
    assert!(started.elapsed() < Duration::from_secs(1), "served in {:?}", started.elapsed());
    let mut first = slow.into_iter().next().unwrap();
    first.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut first, &mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    // A stop with a slow client connected is as prompt as ever.
    let _held = std::net::TcpStream::connect(("127.0.0.1", node.http_port)).unwrap();
    node.signal(libc_sigterm());
    let (code, took) = node.wait_exit(Duration::from_secs(15));
    assert_eq!(code, 0);
    assert!(took < Duration::from_secs(2), "stopping took {took:?}");
}

/// A TCP connection to 127.0.0.1:`port` from the local address `source` (any 127.x.y.z).
fn connect_from(source: [u8; 4], port: u16) -> std::net::TcpStream {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
    let [a, b, c, d] = source;
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::new(a, b, c, d, 0)).unwrap();
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::new(127, 0, 0, 1, port)).unwrap();
    std::net::TcpStream::from(fd)
}

#[test]
fn disabled_means_nothing_listens_and_bad_values_are_configuration_errors() {
    let mut node = Node::new("http-off");
    node.set("HTTP_PORT", "off");
    node.start();
    assert!(std::net::TcpStream::connect(("127.0.0.1", node.http_port)).is_err());
    assert_eq!(node.stop(), 0);

    let mut node = Node::new("http-bad");
    node.set("HTTP_PORT", "eighty");
    let (code, out) = node.run_to_exit(&[]);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("HTTP_PORT: \"eighty\" is not a port"), "{out}");

    // A port in use: a start-up error naming the variable, nothing started.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut node = Node::new("http-taken");
    node.set("HTTP_PORT", &taken.local_addr().unwrap().port().to_string());
    let (code, out) = node.run_to_exit(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cannot listen") && out.contains("set HTTP_PORT to a free port"), "{out}");
    assert!(!node.pgdata.join("PG_VERSION").exists(), "initialised although it could not serve");
}

#[test]
fn probes_are_answered_while_twenty_addresses_hold_half_sent_requests() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut node = Node::new("http-starve");
    node.start();
    let port = node.http_port;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    // 20 addresses, each keeping its 8 connections busy with heads that never end, a fresh
    // one every 20 ms in place of its oldest: together more than every slot.
    let attackers: Vec<_> = (0..20u8)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut held = std::collections::VecDeque::new();
                while !stop.load(Ordering::Relaxed) {
                    let mut s = connect_from([127, 0, 1, 10 + i], port);
                    let _ = s.write_all(b"GET /primary HTTP/1.1\r\nX-Slow: ");
                    held.push_back(s);
                    if held.len() > 8 {
                        held.pop_front();
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let probes = 200;
    let mut answered = 0;
    for _ in 0..probes {
        let mut probe = connect_from([127, 0, 2, 1], port);
        probe.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = probe.write_all(b"GET /primary HTTP/1.1\r\nHost: probe\r\n\r\n");
        let mut answer = String::new();
        let _ = std::io::Read::read_to_string(&mut probe, &mut answer);
        if answer.starts_with("HTTP/1.1 200") {
            answered += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.join().unwrap();
    }
    eprintln!("probes answered under attack: {answered} of {probes}");
    assert!(answered * 100 >= probes * 99, "only {answered} of {probes} probes answered");
    assert_eq!(node.stop(), 0);
}
