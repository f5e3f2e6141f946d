//! HA_MODE=patroni with real etcd, real Patroni, real PostgreSQL: bootstrap through our
//! first boot, replication, clean stops, automatic failover and rejoin, taking over a native
//! cluster, and the refusal to start a Patroni data directory without Patroni.

mod common;

use std::time::{Duration, Instant};

use common::etcd::{Etcd, PATRONI_PASSWORD};
use common::*;

/// Three members of one cluster on `etcd`; the first has an init script and POSTGRES_DB.
fn members(etcd: &Etcd, name: &str) -> Vec<Node> {
    (1..=3)
        .map(|i| {
            let mut node = Node::new(&format!("{name}-{i}"));
            node.as_patroni_member(etcd, "pg", &format!("m{i}")).set("POSTGRES_DB", "app");
            node.script("10-seed.sql", b"CREATE TABLE seed (x int); INSERT INTO seed VALUES (1);");
            node
        })
        .collect()
}

/// The index of the member Patroni's REST API calls the primary, once exactly one does, every
/// other one is a running replica, and the primary takes writes (Patroni 3.0 answers 200 on
/// /primary while its promotion is still under way: an INSERT right then failed as read-only).
fn settled_leader(nodes: &[Node], timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    let writable = |node: &Node| {
        let Ok(mut client) = node.try_connect() else { return false };
        client.query_one("SELECT NOT pg_is_in_recovery()", &[]).map(|r| r.get::<_, bool>(0)).unwrap_or(false)
    };
    loop {
        let primaries: Vec<usize> = (0..nodes.len()).filter(|i| nodes[*i].patroni("/primary") == 200).collect();
        let replicas = (0..nodes.len()).filter(|i| nodes[*i].patroni("/replica") == 200).count();
        if primaries.len() == 1 && replicas == nodes.len() - 1 && writable(&nodes[primaries[0]]) {
            return primaries[0];
        }
        assert!(
            Instant::now() < deadline,
            "no settled leader after {timeout:?}:\n{}",
            nodes.iter().map(Node::output).collect::<Vec<_>>().join("\n-----\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Rows in `table` on `node`; -1 while it cannot answer (e.g. restarting under Patroni).
fn count(node: &Node, table: &str) -> i64 {
    let Ok(mut client) = node.try_connect() else { return -1 };
    client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).map(|r| r.get(0)).unwrap_or(-1)
}

#[test]
fn three_members_bootstrap_once_replicate_and_stop_cleanly() {
    let etcd = Etcd::start();
    let mut nodes = members(&etcd, "pat-boot");
    for node in nodes.iter_mut() {
        node.spawn(&[]);
    }
    let leader = settled_leader(&nodes, Duration::from_secs(120));
    // Our first boot ran once, on the member that bootstrapped: POSTGRES_DB and the script.
    let bootstrapped = nodes.iter().filter(|n| n.output().contains("cluster initialised")).count();
    assert_eq!(bootstrapped, 1);
    assert_eq!(nodes[leader].query_one("(SELECT count(*) FROM pg_database WHERE datname = 'app')"), "1");
    nodes[leader].client().batch_execute("INSERT INTO seed VALUES (2)").unwrap();
    for node in &nodes {
        wait_until(Duration::from_secs(30), || count(node, "seed") == 2);
        assert!(!node.output().contains(PATRONI_PASSWORD), "a password in the log:\n{}", node.output());
    }
    let replica = (leader + 1) % 3;
    let (code, said) = nodes[replica].tool(&["health"]);
    assert_eq!((code, said.trim()), (0, "healthy: patroni replica, postgres running"));
    let (code, said) = nodes[replica].tool(&["status"]);
    assert!(code == 0 && said.contains("\"role\": \"leader\""), "{said}");
    // patroni.yml holds the passwords: 0600, outside PGDATA; postgres's environment has none.
    let yml = nodes[leader].socket_dir().join(format!("pg-entrypoint-{}.patroni.yml", nodes[leader].port));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&yml).unwrap().permissions().mode() & 0o777, 0o600);
    let pid = std::fs::read_to_string(nodes[leader].pgdata.join("postmaster.pid")).unwrap();
    let environ = std::fs::read(format!("/proc/{}/environ", pid.lines().next().unwrap())).unwrap();
    assert!(!String::from_utf8_lossy(&environ).contains(PATRONI_PASSWORD), "a password in postgres's environment");
    // docker stop of every member: exit 0, postgres shut down cleanly.
    for node in nodes.iter_mut() {
        assert_eq!(node.stop(), 0, "{}", node.output());
        assert!(node.controldata_state().starts_with("shut down"), "{}", node.controldata_state());
    }
}

#[test]
fn tls_required_under_patroni_is_verified_and_encrypts_replication() {
    let etcd = Etcd::start();
    let certs = TempDir::new("pat-tls-certs");
    let ca = common::certs::Ca::new("test CA");
    let ca_file = ca.write(&certs.0, "ca.crt").display().to_string();
    let mut nodes: Vec<Node> = (1..=2)
        .map(|i| {
            let mut node = Node::new(&format!("pat-tls-{i}"));
            let pair = ca.issue(&certs.0, &format!("m{i}"), &format!("m{i}"), &["localhost", "127.0.0.1"], false);
            node.as_patroni_member(&etcd, "pgtls", &format!("m{i}"))
                .set("TLS_MODE", "required")
                .set("TLS_CERT_FILE", &pair.cert.display().to_string())
                .set("TLS_KEY_FILE", &pair.key.display().to_string())
                .set("TLS_CA_FILE", &ca_file);
            node
        })
        .collect();
    for node in nodes.iter_mut() {
        node.spawn(&[]);
    }
    let leader = settled_leader(&nodes, Duration::from_secs(120));
    // The replica verified the leader (verify-full against the CA) and streams encrypted.
    wait_until(Duration::from_secs(30), || nodes[leader].query_one(REPLICATION_SSL) == "true");
    let (ok, out) = psql(&nodes[leader], "user=postgres dbname=postgres sslmode=disable", PATRONI_PASSWORD, "SELECT 1");
    assert!(!ok && out.contains("no encryption"), "{out}");
    let verified = format!("user=postgres dbname=postgres sslmode=verify-full sslrootcert={ca_file}");
    let (ok, out) =
        psql(&nodes[leader], &verified, PATRONI_PASSWORD, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()");
    assert!(ok && out.trim() == "t", "{out}");
    for node in nodes.iter_mut() {
        assert_eq!(node.stop(), 0, "{}", node.output());
    }
}

#[test]
fn a_killed_leader_is_replaced_without_losing_acknowledged_commits_and_rejoins() {
    let etcd = Etcd::start();
    let mut nodes = members(&etcd, "pat-fail");
    for node in nodes.iter_mut() {
        node.set("REPLICATION_SYNCHRONOUS_MODE", "on").spawn(&[]);
    }
    let old = settled_leader(&nodes, Duration::from_secs(120));
    // Synchronous mode: wait until Patroni has recorded a synchronous standby.
    wait_until(Duration::from_secs(30), || nodes[old].has_sync_standby());
    let mut acknowledged = 0;
    let mut client = nodes[old].client();
    for i in 0..200 {
        client.execute("INSERT INTO seed VALUES ($1)", &[&(i + 100)]).unwrap();
        acknowledged += 1;
    }
    nodes[old].kill_member();
    let killed = Instant::now();
    let others: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    // The first member to take a write (Patroni's /primary may say 200 a moment before the
    // promotion makes it writable).
    let new = loop {
        let writable = |i: &&usize| {
            nodes[**i].try_connect().is_ok_and(|mut c| c.batch_execute("INSERT INTO seed VALUES (-1)").is_ok())
        };
        if let Some(i) = others.iter().find(writable) {
            break *i;
        }
        assert!(killed.elapsed() < Duration::from_secs(60), "no new leader within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("new leader writable {:.1} s after the kill", killed.elapsed().as_secs_f64());
    assert_eq!(count(&nodes[new], "seed WHERE x >= 100"), acknowledged, "acknowledged commits lost");
    // The old leader, started again, follows the new one (rewound if it had diverged).
    nodes[old].spawn(&[]);
    wait_until(Duration::from_secs(90), || nodes[old].patroni("/replica") == 200);
    wait_until(Duration::from_secs(30), || count(&nodes[old], "seed WHERE x = -1") == 1);
    for node in nodes.iter_mut() {
        assert_eq!(node.stop(), 0, "{}", node.output());
    }
}

#[test]
fn a_native_cluster_switched_to_patroni_keeps_its_data_and_cannot_go_back_alone() {
    let mut primary = Node::new("pat-native-p");
    primary.as_primary().set("POSTGRES_PASSWORD", PATRONI_PASSWORD).set("REPLICATION_PASSWORD", PATRONI_PASSWORD);
    primary.start();
    primary
        .client()
        .batch_execute("CREATE TABLE kept (x int); INSERT INTO kept SELECT generate_series(1, 1000)")
        .unwrap();
    let mut replica = Node::new("pat-native-r");
    replica.as_replica_of(&primary, "r1").set("POSTGRES_PASSWORD", PATRONI_PASSWORD);
    replica.start();
    wait_until(Duration::from_secs(30), || count(&replica, "kept") == 1000);
    // A file of the replica's own: still there afterwards means it was not cloned again.
    std::fs::write(replica.pgdata.join("not-recloned"), b"").unwrap();
    assert_eq!(replica.stop(), 0);
    assert_eq!(primary.stop(), 0);

    let etcd = Etcd::start();
    for (node, name) in [(&mut primary, "p"), (&mut replica, "r")] {
        for var in ["REPLICATION_ROLE", "PRIMARY_HOST", "PRIMARY_PORT", "REPLICA_NAME"] {
            node.unset(var);
        }
        node.as_patroni_member(&etcd, "pg", name);
    }
    // The standby first: it must wait for a leader rather than win the first election.
    replica.spawn(&[]);
    wait_until(Duration::from_secs(30), || replica.output().contains("waiting for the cluster to have a leader"));
    primary.spawn(&[]);
    let nodes = [primary, replica];
    assert_eq!(settled_leader(&nodes, Duration::from_secs(120)), 0, "the former primary leads");
    let [mut primary, mut replica] = nodes;
    primary.client().batch_execute("INSERT INTO kept VALUES (1001)").unwrap();
    wait_until(Duration::from_secs(30), || count(&replica, "kept") == 1001);
    assert!(replica.pgdata.join("not-recloned").exists(), "the replica was cloned again:\n{}", replica.output());
    assert_eq!(replica.stop(), 0);
    assert_eq!(primary.stop(), 0);

    // Started alone (native mode) it could become a second primary: refused.
    primary.as_primary();
    let (code, out) = primary.run_to_exit(&[]);
    assert_eq!(code, 75, "{out}");
    assert!(out.contains("was managed by Patroni"), "{out}");
}

#[test]
fn bad_patroni_settings_are_refused_before_anything_is_touched() {
    let mut node = Node::new("pat-bad");
    node.set("HA_MODE", "patroni").set("REPLICATION_PASSWORD", PASSWORD).set("ROLE", "replica");
    // PASSWORD has a character outside ASCII, which Patroni cannot set.
    let (code, out) = node.run_to_exit(&[]);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("ETCD_HOSTS: is required with HA_MODE=patroni"), "{out}");
    assert!(out.contains("ROLE: is set, but with HA_MODE=patroni Patroni decides"), "{out}");
    assert!(out.contains("POSTGRES_PASSWORD: contains a character outside ASCII"), "{out}");
    assert!(!node.pgdata.exists() && !node.socket_dir().exists(), "something was created");
    node.set("ETCD_HOSTS", "etcd1:notaport").unset("ROLE");
    let (code, out) = node.run_to_exit(&[]);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("ETCD_HOSTS: \"etcd1:notaport\" is not an etcd address"), "{out}");
    assert!(!out.contains(PASSWORD));
}
