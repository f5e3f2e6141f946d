//! TLS between real processes: clients verifying the server, replicas verifying their primary
//! (and failing fast when they cannot), plaintext refused where TLS is required, mounted
//! secrets with the usual permissions, rotation by SIGHUP, self-signed certificates.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use common::certs::{Ca, Pair};
use common::*;

const CLONE_TIMEOUT: Duration = Duration::from_secs(90);
const LOCAL: [&str; 2] = ["localhost", "127.0.0.1"];

fn with_tls(node: &mut Node, mode: &str, pair: &Pair, ca: Option<&std::path::Path>) {
    node.set("TLS_MODE", mode)
        .set("TLS_CERT_FILE", &pair.cert.display().to_string())
        .set("TLS_KEY_FILE", &pair.key.display().to_string());
    if let Some(ca) = ca {
        node.set("TLS_CA_FILE", &ca.display().to_string());
    }
}

/// psql as the superuser over TCP with these connection settings: (connected, output).
fn client(node: &Node, settings: &str, sql: &str) -> (bool, String) {
    psql(node, &format!("user=postgres dbname=postgres {settings}"), PASSWORD, sql)
}

const MY_SSL: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

#[test]
fn required_tls_is_verified_both_ways_and_replication_is_encrypted() {
    let certs = TempDir::new("tls-required");
    let ca = Ca::new("test CA");
    let ca_file = ca.write(&certs.0, "ca.crt");
    let mut primary = Node::new("tls-p");
    primary.as_primary();
    with_tls(&mut primary, "required", &ca.issue(&certs.0, "primary", "primary", &LOCAL, false), Some(&ca_file));
    primary.start();

    let verify = format!("sslmode=verify-full sslrootcert={}", ca_file.display());
    assert_eq!(client(&primary, &verify, MY_SSL), (true, "t\n".to_string()));
    let (ok, out) = client(&primary, "sslmode=disable", "SELECT 1");
    assert!(!ok && out.contains("no encryption"), "{out}");
    let plain_replication = "user=replicator replication=true sslmode=disable";
    let (ok, out) = psql(&primary, plain_replication, PASSWORD, "IDENTIFY_SYSTEM");
    assert!(!ok && out.contains("no encryption"), "{out}");

    // The key was root's and 0644: postgres got a private copy; the user's file is untouched.
    let key = certs.0.join("primary.key");
    assert_eq!((key.metadata().unwrap().uid(), key.metadata().unwrap().mode() & 0o777), (0, 0o644));
    let copy = primary.socket_dir().join(format!("pg-entrypoint-{}.server.key", primary.port));
    let meta = copy.metadata().unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), primary.pgdata.join("PG_VERSION").metadata().unwrap().uid());

    // A replica verifies the primary (verify-full by default with a CA) and streams over TLS.
    let mut replica = Node::new("tls-r");
    replica.as_replica_of(&primary, "r1");
    with_tls(&mut replica, "required", &ca.issue(&certs.0, "replica", "replica", &LOCAL, false), Some(&ca_file));
    replica.start_with_timeout(CLONE_TIMEOUT);
    primary.client().batch_execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('over tls')").unwrap();
    replica.eventually_equals("(SELECT v FROM t)", "over tls");
    assert_eq!(primary.query_one(REPLICATION_SSL), "true");
    let (code, out) = primary.tool(&["status"]);
    assert_eq!(code, 0, "{out}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["replicas"][0]["ssl"], true, "{out}");
    let (code, out) = replica.tool(&["check"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("TLS:             required (plaintext TCP rejected)"), "{out}");
    assert!(out.contains("sslmode=verify-full"), "{out}");
    assert_eq!(replica.stop(), 0);
    assert_eq!(primary.stop(), 0);
}

#[test]
fn a_replica_refuses_a_primary_it_cannot_verify_at_once() {
    let certs = TempDir::new("tls-untrusted");
    let (ca, other_ca) = (Ca::new("test CA"), Ca::new("another CA"));
    let ca_file = ca.write(&certs.0, "ca.crt");
    let other_ca_file = other_ca.write(&certs.0, "other-ca.crt");
    let mut wrong_name = Node::new("tls-wrong-name");
    wrong_name.as_primary();
    with_tls(&mut wrong_name, "on", &ca.issue(&certs.0, "wrong", "db", &["db.example"], false), None);
    wrong_name.start();
    let mut expired = Node::new("tls-expired");
    expired.as_primary();
    with_tls(&mut expired, "on", &ca.issue(&certs.0, "expired", "db", &LOCAL, true), None);
    expired.start();
    let mut plain = Node::new("tls-plain");
    plain.as_primary().start();

    let cases: [(&Node, &std::path::Path, &str); 4] = [
        (&wrong_name, &ca_file, "does not match host name"),
        (&expired, &ca_file, "certificate verify failed"),
        (&expired, &other_ca_file, "certificate verify failed"),
        (&plain, &ca_file, "server does not support SSL"),
    ];
    for (i, (primary, ca, reason)) in cases.into_iter().enumerate() {
        let mut replica = Node::new(&format!("tls-refuses-{i}"));
        replica.as_replica_of(primary, "r1").set("TLS_CA_FILE", &ca.display().to_string());
        let started = Instant::now();
        let (code, out) = replica.run_to_exit(&[]);
        assert_eq!(code, 78, "{out}");
        assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
        assert!(out.contains("is not trusted") && out.contains(reason), "{reason}: {out}");
        assert!(!replica.pgdata.join("PG_VERSION").exists());
    }
    for node in [&mut wrong_name, &mut expired, &mut plain] {
        assert_eq!(node.stop(), 0);
    }
}

#[test]
fn a_rotated_certificate_is_served_after_sighup_without_a_restart() {
    let certs = TempDir::new("tls-rotate");
    let (ca, next_ca) = (Ca::new("test CA"), Ca::new("next CA"));
    let (ca_file, next_ca_file) = (ca.write(&certs.0, "ca.crt"), next_ca.write(&certs.0, "next-ca.crt"));
    let mut primary = Node::new("tls-rotate");
    with_tls(&mut primary, "on", &ca.issue(&certs.0, "server", "db", &LOCAL, false), None);
    primary.start();
    let started = primary.query_one("pg_postmaster_start_time()");
    let verify =
        |ca: &std::path::Path| client(&primary, &format!("sslmode=verify-full sslrootcert={}", ca.display()), MY_SSL);
    assert!(verify(&ca_file).0);
    assert!(!verify(&next_ca_file).0);

    // The same file names, new contents (as a Secret update does), then a reload.
    next_ca.issue(&certs.0, "server", "db", &LOCAL, false);
    primary.signal(nix::libc::SIGHUP);
    wait_until(Duration::from_secs(15), || verify(&next_ca_file).0);
    assert!(!verify(&ca_file).0, "the old certificate is no longer served");
    assert_eq!(primary.query_one("pg_postmaster_start_time()"), started, "no restart");
    assert!(primary.output().contains("TLS certificates and keys refreshed"), "{}", primary.output());

    // A certificate path that became a FIFO (or a huge file) is refused at reload, never
    // waited on: PID 1 reads it, and must still answer the next signal.
    let served = next_ca.issue(&certs.0, "server", "db", &LOCAL, false).cert;
    std::fs::remove_file(&served).unwrap();
    nix::unistd::mkfifo(&served, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    // Readable by the account the server runs as: opening it would wait for a writer.
    std::fs::set_permissions(&served, std::fs::Permissions::from_mode(0o644)).unwrap();
    primary.signal(nix::libc::SIGHUP);
    wait_until(Duration::from_secs(15), || primary.output().contains("the TLS copies were kept"));
    assert!(primary.output().contains("not a regular file"), "{}", primary.output());
    assert!(verify(&next_ca_file).0, "the last good certificate is still served");
    assert_eq!(primary.stop(), 0);
}

#[test]
fn self_signed_tls_encrypts_clients_and_replication() {
    let mut primary = Node::new("tls-self-p");
    primary.as_primary().set("TLS_MODE", "self-signed").start();
    assert_eq!(client(&primary, "sslmode=require", MY_SSL), (true, "t\n".to_string()));
    let mut replica = Node::new("tls-self-r");
    replica.as_replica_of(&primary, "r1").set("TLS_MODE", "self-signed").set("REPLICATION_SSLMODE", "require");
    replica.start_with_timeout(CLONE_TIMEOUT);
    wait_until(Duration::from_secs(30), || primary.query_one(REPLICATION_SSL) == "true");
    assert_eq!(replica.stop(), 0);
    assert_eq!(primary.stop(), 0);
}

#[test]
fn the_replication_user_can_authenticate_with_a_client_certificate() {
    let certs = TempDir::new("tls-client-cert");
    let ca = Ca::new("test CA");
    let ca_file = ca.write(&certs.0, "ca.crt");
    // The certificate's CN is the replication user.
    let client_pair = ca.issue(&certs.0, "replicator", "replicator", &[], false);
    let client_cert = |node: &mut Node| {
        node.set("REPLICATION_TLS_CERT_FILE", &client_pair.cert.display().to_string())
            .set("REPLICATION_TLS_KEY_FILE", &client_pair.key.display().to_string());
    };
    let mut primary = Node::new("tls-cert-p");
    primary.as_primary();
    with_tls(&mut primary, "on", &ca.issue(&certs.0, "primary", "primary", &LOCAL, false), Some(&ca_file));
    client_cert(&mut primary);
    primary.start();
    let mut replica = Node::new("tls-cert-r");
    replica.as_replica_of(&primary, "r1");
    with_tls(&mut replica, "on", &ca.issue(&certs.0, "replica", "replica", &LOCAL, false), Some(&ca_file));
    client_cert(&mut replica);
    replica.start_with_timeout(CLONE_TIMEOUT);
    primary.client().batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (7)").unwrap();
    replica.eventually_equals("(SELECT v FROM t)", "7");
    // Replication by password alone is refused: the hba line asks for a certificate.
    let by_password = "user=replicator replication=true sslmode=require";
    let (ok, out) = psql(&primary, by_password, PASSWORD, "IDENTIFY_SYSTEM");
    assert!(!ok && out.contains("certificate"), "{out}");
    assert_eq!(replica.stop(), 0);
    assert_eq!(primary.stop(), 0);
}

#[test]
fn bad_tls_input_is_refused_before_anything_is_touched() {
    let certs = TempDir::new("tls-bad");
    let ca = Ca::new("test CA");
    let pair = ca.issue(&certs.0, "server", "db", &LOCAL, false);
    let not_pem = certs.0.join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let unreadable = certs.0.join("secret.key");
    std::fs::copy(&pair.key, &unreadable).unwrap();
    std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o000)).unwrap();
    let (cert, key, bad) =
        (pair.cert.display().to_string(), pair.key.display().to_string(), not_pem.display().to_string());
    let dir = certs.0.display().to_string();
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![("TLS_MODE", "on"), ("TLS_CERT_FILE", "/nonexistent/server.crt"), ("TLS_KEY_FILE", &key)],
            "TLS_CERT_FILE: cannot read",
        ),
        (vec![("TLS_MODE", "on"), ("TLS_KEY_FILE", &key)], "TLS_CERT_FILE: and TLS_KEY_FILE are both required"),
        (vec![("TLS_CERT_FILE", &dir), ("TLS_KEY_FILE", &key)], "TLS_CERT_FILE: cannot read"),
        (vec![("TLS_CERT_FILE", &bad), ("TLS_KEY_FILE", &key)], "is not a PEM certificate"),
        (vec![("TLS_CERT_FILE", &cert), ("TLS_KEY_FILE", &cert)], "TLS_KEY_FILE: "),
        (
            vec![("TLS_MODE", "strict")],
            "TLS_MODE: \"strict\" is not accepted; accepted: off, on, required, self-signed",
        ),
        (
            vec![("POSTGRESQL_TLS_CERT_FILE", &cert), ("TLS_CERT_FILE", &bad), ("TLS_KEY_FILE", &key)],
            "disagrees with POSTGRESQL_TLS_CERT_FILE",
        ),
    ];
    let key_body = std::fs::read_to_string(&pair.key).unwrap().lines().nth(1).unwrap().to_string();
    for (vars, expected) in cases {
        let mut node = Node::new("tls-bad-input");
        for (k, v) in &vars {
            node.set(k, v);
        }
        let (code, out) = node.run_to_exit(&[]);
        assert_eq!(code, 78, "{vars:?}: {out}");
        assert!(out.contains(expected), "{vars:?}: expected {expected:?} in {out}");
        assert!(!node.pgdata.exists() || std::fs::read_dir(&node.pgdata).unwrap().next().is_none(), "{vars:?}");
        assert!(!out.contains(&key_body), "no key material in messages: {out}");
    }
    // Only root may read it here, and we are root: it is read, and the copy is private. A CA
    // bundle above the 64 KiB of a password file is fine.
    let bundle = certs.0.join("bundle.crt");
    std::fs::write(&bundle, std::fs::read_to_string(ca.write(&certs.0, "ca.crt")).unwrap().repeat(200)).unwrap();
    assert!(bundle.metadata().unwrap().len() > 64 * 1024);
    let mut node = Node::new("tls-root-only");
    with_tls(&mut node, "on", &Pair { cert: pair.cert.clone(), key: unreadable }, Some(&bundle));
    node.start();
    assert_eq!(client(&node, "sslmode=require", MY_SSL), (true, "t\n".to_string()));
    assert_eq!(node.stop(), 0);
}
