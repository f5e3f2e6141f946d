//! `GET /metrics` against real servers: what a primary, its replica, a standalone server and
//! a member whose postgres is not running expose, checked by Prometheus's own `promtool`,
//! and values that move as they should (lag while replay is paused, the timeline after a
//! promotion).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// The scrape's body, after checking its status and `Content-Type`.
fn scrape(node: &Node) -> String {
    let (code, text) = http_request(node.http_port, "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(code, 200, "{text}");
    text
}

/// `promtool check metrics`: Prometheus's parser and its naming lint; panics with what it said.
fn promtool_accepts(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/ensure-deps.sh installs it)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused:\n{}{}\n--- the scrape ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the series `name` with exactly these labels (`scope` left out), if present.
fn value(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, number) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{')?;
        let rest = rest.strip_suffix('}')?;
        let others: Vec<&str> = rest.split(',').filter(|l| !l.starts_with("scope=")).collect();
        (metric == name && others.join(",") == labels).then(|| number.parse().ok())?
    })
}

/// The metric names a scrape exposes.
fn names(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(String::from)
        .collect()
}

/// Every `patroni_*` or `pg_entrypoint_*` name in a text (rules, dashboards).
fn named_in(text: &str) -> std::collections::BTreeSet<String> {
    let mut found = std::collections::BTreeSet::new();
    for prefix in ["patroni_", "pg_entrypoint_"] {
        for (at, _) in text.match_indices(prefix) {
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let name: String = text[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.ends_with('_') {
                found.insert(name); // not a prefix in prose ("pg_entrypoint_*")
            }
        }
    }
    found
}

fn scope(text: &str) -> String {
    let line = text.lines().find(|l| l.starts_with("patroni_postgres_running{")).expect("patroni_postgres_running");
    line.split('"').nth(1).unwrap_or_default().to_string()
}

#[test]
fn a_primary_and_its_replica_expose_what_promtool_accepts_and_values_move() {
    let mut primary = Node::new("metrics-primary");
    // Archiving on (to nowhere), so that the archiver's metrics have something to count.
    primary
        .as_primary()
        .set("POSTGRESQL_CONFIG_ARCHIVE_MODE", "on")
        .set("POSTGRESQL_CONFIG_ARCHIVE_COMMAND", "/bin/true");
    primary.start();
    let mut replica = Node::new("metrics-replica");
    replica.as_replica_of(&primary, "m1").start();
    // Streaming, and the standby has reported what it replayed.
    wait_until(Duration::from_secs(30), || {
        value(&scrape(&primary), "pg_entrypoint_replica_lag_bytes", "application_name=\"m1\"").is_some()
    });

    let p = scrape(&primary);
    let r = scrape(&replica);
    promtool_accepts(&p);
    promtool_accepts(&r);
    let system_id = primary.query_one("SELECT system_identifier::text FROM pg_control_system()");
    assert_eq!((scope(&p), scope(&r)), (system_id.clone(), system_id), "one cluster, one scope");
    assert_eq!(value(&p, "patroni_primary", ""), Some(1.0));
    assert_eq!(value(&p, "patroni_replica", ""), Some(0.0));
    assert_eq!(value(&r, "patroni_primary", ""), Some(0.0));
    assert_eq!(value(&r, "patroni_replica", ""), Some(1.0));
    assert_eq!(value(&r, "patroni_postgres_streaming", ""), Some(1.0));
    assert!(value(&p, "patroni_xlog_location", "").unwrap() > 0.0);
    assert!(value(&r, "patroni_xlog_replayed_location", "").unwrap() > 0.0);
    let version = primary.query_one("current_setting('server_version_num')");
    assert_eq!(value(&p, "patroni_postgres_server_version", ""), version.parse().ok());
    assert_eq!(value(&p, "pg_entrypoint_replicas_streaming", ""), Some(1.0));
    assert!(value(&p, "pg_entrypoint_start_phase_seconds", "phase=\"initdb\"").unwrap() > 0.0, "{p}");
    assert!(value(&r, "pg_entrypoint_start_phase_seconds", "phase=\"clone\"").unwrap() > 0.0, "{r}");
    assert!(value(&r, "pg_entrypoint_start_phase_seconds", "phase=\"total\"").unwrap() > 0.0, "{r}");

    // Replay paused while the primary writes 4 MB: the lag shows on both sides.
    replica.client().batch_execute("SELECT pg_wal_replay_pause()").unwrap();
    primary
        .client()
        .batch_execute("CREATE TABLE filler AS SELECT repeat('x', 1000) FROM generate_series(1, 4000)")
        .unwrap();
    primary.client().batch_execute("SELECT pg_switch_wal()").unwrap();
    let mut exposed = names(&p).union(&names(&r)).cloned().collect::<std::collections::BTreeSet<String>>();
    wait_until(Duration::from_secs(30), || {
        let (p, r) = (scrape(&primary), scrape(&replica));
        exposed.extend(names(&p).into_iter().chain(names(&r)));
        value(&p, "pg_entrypoint_replica_lag_bytes", "application_name=\"m1\"").unwrap_or(0.0) > 1e6
            && value(&r, "pg_entrypoint_replay_lag_bytes", "").unwrap_or(0.0) > 1e6
            && value(&p, "pg_entrypoint_archived_total", "").unwrap_or(0.0) >= 1.0
    });
    assert_eq!(value(&scrape(&replica), "patroni_xlog_paused", ""), Some(1.0));
    replica.client().batch_execute("SELECT pg_wal_replay_resume()").unwrap();
    wait_until(Duration::from_secs(30), || {
        let p = scrape(&primary);
        exposed.extend(names(&p));
        value(&p, "pg_entrypoint_replica_lag_bytes", "application_name=\"m1\"") == Some(0.0)
    });
    // replay_lag once the standby has replayed something: then every metric the alert rules
    // and the dashboard name has been exposed.
    primary.client().batch_execute("INSERT INTO filler SELECT 'y'").unwrap();
    wait_until(Duration::from_secs(30), || {
        let p = scrape(&primary);
        exposed.extend(names(&p));
        value(&p, "pg_entrypoint_replica_lag_seconds", "application_name=\"m1\"").is_some()
    });
    for file in ["deploy/prometheus/alerts.yml", "deploy/grafana/pg-entrypoint.json"] {
        let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
        let named = named_in(&text);
        assert!(named.len() >= 5, "{file}: {named:?}");
        let missing: Vec<&String> = named.difference(&exposed).collect();
        assert!(missing.is_empty(), "{file} names metrics no scrape had: {missing:?}\nexposed: {exposed:?}");
    }

    // Promoted: the next scrape says primary, on timeline 2.
    assert_eq!(value(&scrape(&replica), "patroni_postgres_timeline", ""), Some(1.0));
    assert_eq!(primary.stop(), 0);
    let (code, out) = replica.tool(&["promote"]);
    assert_eq!(code, 0, "{out}");
    let r = scrape(&replica);
    assert_eq!(value(&r, "patroni_postgres_timeline", ""), Some(2.0));
    assert_eq!(value(&r, "patroni_primary", ""), Some(1.0));
    assert_eq!(value(&r, "patroni_postgres_streaming", ""), Some(0.0), "a primary streams from nobody");
    promtool_accepts(&r);
    assert_eq!(replica.stop(), 0);
}

#[test]
fn a_standalone_server_is_a_primary_without_standbys() {
    let mut node = Node::new("metrics-standalone");
    node.start();
    let text = scrape(&node);
    promtool_accepts(&text);
    assert_eq!(value(&text, "patroni_postgres_running", ""), Some(1.0));
    assert_eq!(value(&text, "patroni_primary", ""), Some(1.0));
    assert_eq!(value(&text, "pg_entrypoint_replicas_streaming", ""), Some(0.0));
    assert_eq!(value(&text, "pg_entrypoint_synchronous_standbys_required", ""), Some(0.0));
    assert_eq!(http_request(node.http_port, "POST /metrics HTTP/1.1\r\nHost: t\r\n\r\n").0, 405);
    assert_eq!(node.stop(), 0);
}

#[test]
fn a_member_whose_postgres_is_not_running_still_answers() {
    // A replica waiting for a primary that is not there: the endpoint runs, postgres does not.
    let absent = free_port();
    let mut node = Node::new("metrics-down");
    node.as_replica_of(&Node::new("metrics-absent"), "d1")
        .set("PRIMARY_PORT", &absent.to_string())
        .set("PRIMARY_WAIT_TIMEOUT", "120");
    node.spawn(&[]);
    wait_until(Duration::from_secs(30), || node.http("GET", "/liveness").0 == 200);
    let text = scrape(&node);
    promtool_accepts(&text);
    assert_eq!(value(&text, "patroni_postgres_running", ""), Some(0.0));
    assert_eq!(value(&text, "patroni_primary", ""), Some(0.0));
    assert_eq!(value(&text, "patroni_replica", ""), Some(0.0));
    assert_eq!(scope(&text), "", "no cluster yet");
    assert_eq!(node.stop(), 143, "stopped while waiting for its primary");
}
