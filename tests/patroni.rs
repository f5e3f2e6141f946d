//! HA_MODE=patroni with real etcd, real Patroni, real PostgreSQL: bootstrap through our
//! first boot, replication, clean stops, automatic failover and rejoin, taking over a native
//! cluster, and the refusal to start a Patroni data directory without Patroni.

mod common;

use std::time::{Duration, Instant};

use common::etcd::{Etcd, PATRONI_PASSWORD, REST_API_PASSWORD};
use common::*;

/// Three members of one cluster on `etcd`, with an init script and POSTGRES_DB; every secret
/// (and POSTGRES_DB) in a root-only file, as docker/up.sh writes them.
fn members(etcd: &Etcd, name: &str) -> Vec<Node> {
    (1..=3)
        .map(|i| {
            let mut node = Node::new(&format!("{name}-{i}"));
            node.as_patroni_member(etcd, "pg", &format!("m{i}"));
            for (var, value) in [
                ("POSTGRES_PASSWORD", PATRONI_PASSWORD),
                ("REPLICATION_PASSWORD", PATRONI_PASSWORD),
                ("PATRONI_RESTAPI_PASSWORD", REST_API_PASSWORD),
                ("POSTGRES_DB", "app"),
            ] {
                let file = node.root_secret(&var.to_ascii_lowercase(), value);
                node.unset(var).set(&format!("{var}_FILE"), &file.display().to_string());
            }
            node.script("10-seed.sql", b"CREATE TABLE seed (x int); INSERT INTO seed VALUES (1);");
            node
        })
        .collect()
}

/// A call on Patroni's REST API of `node`, with `credentials` (user:password) if given: the status.
fn rest_call(node: &Node, method: &str, path: &str, body: &str, credentials: Option<&str>) -> u16 {
    let auth = credentials.map_or(String::new(), |c| format!("Authorization: Basic {}\r\n", base64(c.as_bytes())));
    let raw = format!(
        "{method} {path} HTTP/1.0\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    http_request(node.http_port, &raw).0
}

/// coreutils' base64 of `bytes`, one line.
fn base64(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("base64")
        .args(["-w", "0"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
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
    // Our first boot ran once, on the member that bootstrapped: POSTGRES_DB and the script,
    // though every secret is a 0600 root file (docker/up.sh's) that the bootstrap Patroni runs
    // as postgres cannot read: it was given copies.
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
    assert!(!String::from_utf8_lossy(&environ).contains(REST_API_PASSWORD), "a password in postgres's environment");

    // Patroni's REST API: nothing changes without the credentials; the health paths stay open.
    let evil = r#"{"postgresql":{"parameters":{"archive_mode":"on","archive_command":"touch /tmp/pwned"}}}"#;
    let wrong = format!("patroni:{REST_API_PASSWORD}x");
    for (method, path, body) in [
        ("PATCH", "/config", evil),
        ("POST", "/restart", "{}"),
        ("POST", "/reinitialize", "{}"),
        ("POST", "/reload", ""),
    ] {
        assert_eq!(rest_call(&nodes[leader], method, path, body, None), 401, "{method} {path} without credentials");
        assert_eq!(rest_call(&nodes[leader], method, path, body, Some(&wrong)), 401, "{method} {path}, wrong password");
    }
    assert_eq!(rest_call(&nodes[leader], "POST", "/switchover", r#"{"leader":"m1"}"#, None), 401);
    assert_eq!(rest_call(&nodes[leader], "POST", "/failover", r#"{"candidate":"m2"}"#, None), 401);
    assert_eq!(nodes[leader].patroni("/health"), 200);
    assert_eq!(nodes[leader].patroni("/primary"), 200);
    assert_eq!(nodes[leader].query_one("current_setting('archive_mode')"), "off");
    // Patroni serves /metrics itself on the same port, with the names the alert rules use
    // (docs/metrics.md): the leader is the primary of its scope.
    let (code, metrics) = http_request(nodes[leader].http_port, "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(code, 200, "{metrics}");
    for line in ["patroni_primary{scope=", "patroni_postgres_running{scope=", "patroni_replica{scope="] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    let primary_line = metrics.lines().find(|l| l.starts_with("patroni_primary{")).unwrap_or_default();
    assert!(primary_line.ends_with(" 1"), "{primary_line}");
    // promote (a switchover to this member) goes through with the credentials from the _FILE.
    let (code, said) = nodes[replica].tool(&["promote"]);
    assert_eq!(code, 0, "{said}");
    assert_eq!(settled_leader(&nodes, Duration::from_secs(60)), replica, "the switchover went to the promoted member");
    // switchover, run on any member, is Patroni's: to the named member, then to the best one
    // (Patroni takes a candidate once it streams again).
    let streaming = |nodes: &[Node]| (0..nodes.len()).filter(|i| nodes[*i].patroni("/replica") == 200).count() == 2;
    wait_until(Duration::from_secs(60), || streaming(&nodes));
    let back = (replica + 1) % nodes.len();
    let (code, said) = nodes[replica].tool(&["switchover", "--to", &format!("m{}", back + 1)]);
    assert_eq!(code, 0, "{said}");
    assert_eq!(settled_leader(&nodes, Duration::from_secs(60)), back, "the switchover went to the named member");
    wait_until(Duration::from_secs(60), || streaming(&nodes));
    let (code, said) = nodes[replica].tool(&["switchover"]);
    assert_eq!(code, 0, "{said}");
    assert_ne!(settled_leader(&nodes, Duration::from_secs(60)), back, "a switchover without --to moved the leader");
    let (code, said) = nodes[back].tool(&["switchover", "--to", "nobody"]);
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("switchover: Patroni refused"), "{said}");

    // docker stop of every member: exit 0, postgres shut down cleanly, no password file left.
    for node in nodes.iter_mut() {
        assert_eq!(node.stop(), 0, "{}", node.output());
        assert!(node.controldata_state().starts_with("shut down"), "{}", node.controldata_state());
        let left: Vec<String> = std::fs::read_dir(node.socket_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let text = std::fs::read(p).unwrap_or_default();
                let text = String::from_utf8_lossy(&text);
                text.contains(PATRONI_PASSWORD) || text.contains(REST_API_PASSWORD)
            })
            .map(|p| p.display().to_string())
            .collect();
        assert!(left.is_empty(), "files with a password outlived the member: {left:?}");
    }
}

#[test]
fn a_failed_bootstrap_under_patroni_ends_with_one_line_and_exit_1() {
    let etcd = Etcd::start();
    let mut nodes = members(&etcd, "pat-failinit");
    let mut node = nodes.remove(0);
    node.script("20-broken.sh", b"echo 'broken init script' >&2; exit 3\n");
    node.spawn(&[]);
    let (code, took) = node.wait_exit(Duration::from_secs(120));
    let out = node.output();
    assert_eq!(code, 1, "{out}");
    let last = out.lines().last().unwrap_or_default();
    assert!(last.contains("ERROR Patroni's bootstrap of a new cluster failed"), "{out}");
    assert!(out.contains("broken init script"), "{out}");
    eprintln!("failed bootstrap: exit {code} after {:.1} s", took.as_secs_f64());
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
    assert!(out.contains("PATRONI_RESTAPI_PASSWORD: is required with HA_MODE=patroni"), "{out}");
    assert!(out.contains("ROLE: is set, but with HA_MODE=patroni Patroni decides"), "{out}");
    assert!(out.contains("POSTGRES_PASSWORD: contains a character outside ASCII"), "{out}");
    assert!(!node.pgdata.exists() && !node.socket_dir().exists(), "something was created");
    node.set("ETCD_HOSTS", "etcd1:notaport").unset("ROLE");
    let (code, out) = node.run_to_exit(&[]);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("ETCD_HOSTS: \"etcd1:notaport\" is not an etcd address"), "{out}");
    assert!(!out.contains(PASSWORD));
}

#[test]
fn backups_run_on_the_leader_and_a_new_member_is_made_from_the_repository() {
    let etcd = Etcd::start();
    let mut nodes = members(&etcd, "pat-backup");
    let repo = nodes[0].dir.0.join("repo");
    for node in nodes.iter_mut() {
        node.set("PGBACKREST_ENABLE", "true")
            .set("PGBACKREST_REPO1_PATH", &repo.display().to_string())
            .set("PGBACKREST_AUTO_ENABLE", "true")
            .set("PGBACKREST_AUTO_FIRST_INCR_DELAY", "0")
            .set("PGBACKREST_AUTO_FULL_CRON", "off")
            .set("PGBACKREST_AUTO_DIFF_CRON", "off")
            .set("PGBACKREST_AUTO_INCR_CRON", "off");
    }
    // The first member bootstraps, creates the stanza and takes the first backup as leader.
    nodes[0].spawn(&[]);
    settled_leader(&nodes[..1], Duration::from_secs(120));
    let backed_up = |node: &Node| {
        let (code, out) = node.tool(&["backup", "list", "--json"]);
        code == 0 && out.contains("\"type\":\"full\"")
    };
    wait_until(Duration::from_secs(120), || backed_up(&nodes[0]));
    nodes[0].client().batch_execute("INSERT INTO seed VALUES (2)").unwrap();
    // The next member is restored from that backup, not copied from the leader.
    nodes[1].spawn(&[]);
    let leader = settled_leader(&nodes[..2], Duration::from_secs(120));
    assert_eq!(leader, 0);
    wait_until(Duration::from_secs(60), || count(&nodes[1], "seed") == 2);
    assert!(nodes[1].output().contains("replica has been created using pgbackrest"), "{}", nodes[1].output());
    // Only the leader archives and backs up.
    let archived: i64 = nodes[0].query_one("SELECT archived_count FROM pg_stat_archiver").parse().unwrap();
    assert!(archived > 0);
    assert!(!nodes[1].output().contains("backup started"), "{}", nodes[1].output());
    for node in nodes.iter_mut().take(2) {
        assert_eq!(node.stop(), 0);
    }
}
