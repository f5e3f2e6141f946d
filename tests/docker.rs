//! End-to-end tests on the real Docker engine, against the image named by `PGEP_IMAGE`.
//! They are `#[ignore]`d in the ordinary suite and run by `docker/e2e.sh`, which builds the
//! PostgreSQL 15 and 17 images offline and runs this file once for each.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::docker::*;

/// The HAProxy image of docker/compose.haproxy.yaml (docker/e2e.sh builds it offline).
fn haproxy_image() -> String {
    std::env::var("PGEP_HAPROXY_IMAGE").unwrap_or_else(|_| "pg-entrypoint-haproxy:local".into())
}

/// The etcd image of docker/compose.patroni.yaml (docker/e2e.sh builds it offline).
fn etcd_image() -> String {
    std::env::var("PGEP_ETCD_IMAGE").unwrap_or_else(|_| "pg-entrypoint-etcd:local".into())
}

fn compose_command() -> Vec<&'static str> {
    if run("docker", &["compose", "version"]).status.success() {
        vec!["docker", "compose"]
    } else {
        vec!["docker-compose"]
    }
}

/// The Prometheus image of docker/compose.monitoring.yaml (docker/e2e.sh builds it offline).
fn prometheus_image() -> String {
    std::env::var("PGEP_PROMETHEUS_IMAGE").unwrap_or_else(|_| "pg-entrypoint-prometheus:local".into())
}

fn s3_image() -> String {
    std::env::var("PGEP_S3_IMAGE").unwrap_or_else(|_| "pg-entrypoint-s3:local".into())
}

/// A compose project of its own (unique name, its own secrets), torn down with its volumes.
struct Project {
    name: String,
    secrets: std::path::PathBuf,
    files: Vec<&'static str>,
    /// Variables the compose files read (e.g. REPLICATION_SYNCHRONOUS_MODE).
    env: Vec<(&'static str, &'static str)>,
}

impl Project {
    fn new(tag: &str, files: &[&'static str]) -> Project {
        let name = format!("pgep{tag}{}", std::process::id());
        let secrets = std::env::temp_dir().join(format!("{name}-secrets"));
        std::fs::create_dir_all(&secrets).unwrap();
        // As docker/up.sh writes them (umask 077): 0600, root's, the test running as root.
        for (name, value) in [
            ("postgres_password", SECRET.to_string()),
            ("replication_password", format!("rep-{SECRET}")),
            ("patroni_restapi_password", format!("api-{SECRET}")),
            ("s3_key_secret", format!("s3-{SECRET}")),
        ] {
            let path = secrets.join(name);
            std::fs::write(&path, format!("{value}\n")).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        }
        Project { name, secrets, files: files.to_vec(), env: Vec::new() }
    }

    /// The Patroni stack (docker/compose.patroni.yaml) with these variables.
    fn patroni(tag: &str, env: &[(&'static str, &'static str)]) -> Project {
        let mut p = Project::new(tag, &["compose.patroni.yaml"]);
        p.env = env.to_vec();
        p
    }

    /// The host port where the service's container port is published.
    fn published(&self, service: &str, port: u16) -> u16 {
        let mapping = self.compose(&["port", service, &port.to_string()]);
        mapping.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("not published: {mapping}"))
    }

    fn compose(&self, args: &[&str]) -> String {
        let cmd = compose_command();
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/docker");
        let mut full: Vec<String> = cmd[1..].iter().map(|s| s.to_string()).collect();
        for f in &self.files {
            full.extend(["-f".into(), format!("{dir}/{f}")]);
        }
        full.extend(["-p".into(), self.name.clone()]);
        full.extend(args.iter().map(|s| s.to_string()));
        let out = Command::new(cmd[0])
            .args(&full)
            .env("IMAGE", image())
            .env("SECRETS_DIR", &self.secrets)
            .env("PRIMARY_PUBLISH", "127.0.0.1:") // any free host port
            .env("RW_PUBLISH", "127.0.0.1:")
            .env("RO_PUBLISH", "127.0.0.1:")
            .env("HAPROXY_IMAGE", haproxy_image())
            .env("ETCD_IMAGE", etcd_image())
            .env("PROMETHEUS_IMAGE", prometheus_image())
            .env("S3_IMAGE", s3_image())
            .env("PROMETHEUS_PUBLISH", "127.0.0.1:")
            .env("POOLER_PUBLISH", "127.0.0.1:")
            .envs(self.env.iter().copied())
            .output()
            .unwrap();
        assert!(out.status.success(), "compose {args:?} failed:\n{}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn id(&self, service: &str) -> String {
        self.compose(&["ps", "-q", service])
    }

    /// `up -d --no-deps service` on `image`: that member alone re-created, as a rolling
    /// update does it.
    fn recreate_on(&mut self, service: &str, image: &'static str) -> String {
        self.env.retain(|(k, _)| *k != "IMAGE");
        self.env.push(("IMAGE", image));
        self.compose(&["up", "-d", "--no-deps", service]);
        self.id(service)
    }

    fn volume(&self, name: &str) -> String {
        format!("{}_{name}", self.name)
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let cmd = compose_command();
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/docker");
        let mut args: Vec<String> = cmd[1..].iter().map(|s| s.to_string()).collect();
        for f in &self.files {
            args.extend(["-f".into(), format!("{dir}/{f}")]);
        }
        args.extend(["-p".into(), self.name.clone(), "down".into(), "-v".into(), "-t".into(), "1".into()]);
        let _ = Command::new(cmd[0])
            .args(&args)
            .env("IMAGE", image())
            .env("SECRETS_DIR", &self.secrets)
            .envs(self.env.iter().copied())
            .output();
        let _ = std::fs::remove_dir_all(&self.secrets);
    }
}

#[test]
#[ignore = "needs the Docker engine and PGEP_IMAGE: run docker/e2e.sh"]
fn compose_stack_replicates_survives_a_partition_and_stops_cleanly() {
    let p = Project::new("stack", &["compose.yaml"]);
    let started = Instant::now();
    p.compose(&["up", "-d"]);
    let (primary, r1, r2) = (p.id("primary"), p.id("replica-1"), p.id("replica-2"));
    for id in [&primary, &r1, &r2] {
        wait_healthy(id, Duration::from_secs(180));
    }
    eprintln!("compose up to three healthy containers: {:.1} s", started.elapsed().as_secs_f64());

    sql(&primary, "CREATE TABLE t (v text); INSERT INTO t VALUES ('hello')");
    for r in [&r1, &r2] {
        eventually_sql(r, "SELECT v FROM t", "hello");
    }
    // The replicas found the primary by its compose service name.
    let status = docker(&["exec", &r1, "pg-entrypoint", "status"]);
    assert!(status.contains("\"primary_host\": \"primary\""), "{status}");
    assert_eq!(
        sql(&primary, "SELECT string_agg(application_name || ':' || state, ',' ORDER BY application_name) FROM pg_stat_replication"),
        "replica-1:streaming,replica-2:streaming"
    );

    // A partition: replica-2 misses writes, then catches up once reconnected.
    let network = format!("{}_default", p.name);
    docker(&["network", "disconnect", &network, &r2]);
    sql(&primary, "INSERT INTO t SELECT 'while cut off' FROM generate_series(1, 1000)");
    eventually_sql(&r1, "SELECT count(*) FROM t", "1001");
    assert_eq!(sql(&r2, "SELECT count(*) FROM t"), "1");
    docker(&["network", "connect", &network, &r2]);
    eventually_sql(&r2, "SELECT count(*) FROM t", "1001");

    // docker stop with a client in an open transaction: fast, clean, exit 0.
    docker(&["exec", "-d", &primary, "psql", "-U", "postgres", "-c", "BEGIN; SELECT pg_sleep(600)"]);
    eventually_sql(
        &primary,
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(600)%' AND pid <> pg_backend_pid()",
        "1",
    );
    let stopping = Instant::now();
    docker(&["stop", &primary]);
    let took = stopping.elapsed();
    eprintln!("docker stop of the primary with a client in a transaction: {:.2} s", took.as_secs_f64());
    assert!(took < Duration::from_secs(8), "docker stop took {took:?}");
    assert_eq!(docker(&["inspect", "-f", "{{.State.ExitCode}}", &primary]), "0");
    assert_eq!(cluster_state(&p.volume("primary-data")), "shut down");
    let logs = text(&run("docker", &["logs", &primary]));
    assert!(!logs.contains(SECRET), "a password is in the log");
}

/// A client that records every commit the server acknowledged: one row per commit, numbered;
/// after a fault, the acknowledged numbers missing from the surviving primary are counted.
struct AckedWriter {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(i32, Instant)>>>,
    errors: Arc<Mutex<Vec<String>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl AckedWriter {
    /// Writes into `acks` on `host`:`port` until stopped (at most 5 minutes), reconnecting after errors.
    fn start(host: String, port: u16) -> AckedWriter {
        AckedWriter::start_from(host, port, 0)
    }

    /// Numbers after `first` (writers sharing the table each take their own range).
    fn start_from(host: String, port: u16, first: i32) -> AckedWriter {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (stop2, acked2, errors2) = (stop.clone(), acked.clone(), errors.clone());
        let handle = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            let mut client: Option<postgres::Client> = None;
            let mut n = first;
            while !stop2.load(Ordering::SeqCst) && Instant::now() < deadline {
                n += 1;
                if client.is_none() {
                    client = postgres::Config::new()
                        .host(&host)
                        .port(port)
                        .user("postgres")
                        .password(SECRET)
                        .dbname("postgres")
                        .connect_timeout(Duration::from_secs(2))
                        .connect(postgres::NoTls)
                        .ok();
                }
                // The simple protocol: PgBouncer's transaction pooling keeps no named statement.
                let done = match client.as_mut() {
                    Some(c) => c.batch_execute(&format!("INSERT INTO acks VALUES ({n})")).map_err(|e| e.to_string()),
                    None => Err("cannot connect".to_string()),
                };
                match done {
                    Ok(()) => acked2.lock().unwrap().push((n, Instant::now())),
                    Err(e) => {
                        errors2.lock().unwrap().push(e);
                        client = None;
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        });
        AckedWriter { stop, acked, errors, handle: Some(handle) }
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn finish(self) -> Vec<i32> {
        self.finish_with_gap().0
    }

    /// The acknowledged numbers, the longest time between two acknowledgements, and the
    /// errors the client saw.
    fn finish_with_gap(mut self) -> (Vec<i32>, Duration, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        let gap = acked.windows(2).map(|w| w[1].1 - w[0].1).max().unwrap_or_default();
        let errors = std::mem::take(&mut *self.errors.lock().unwrap());
        (acked.into_iter().map(|(n, _)| n).collect(), gap, errors)
    }
}

/// Acknowledged numbers that `id`'s `acks` table does not have.
#[test]
#[ignore = "needs the Docker engine and PGEP_IMAGE: run docker/e2e.sh"]
fn tls_stack_requires_tls_and_replicates_over_verified_connections() {
    let certs = std::env::temp_dir().join(format!("pgeptls{}", std::process::id())).join("tls");
    let made = run(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/tls-certs.sh"), &[certs.to_str().unwrap()]);
    assert!(made.status.success(), "{}", text(&made));
    let mut p = Project::new("tls", &["compose.yaml", "compose.tls.yaml"]);
    p.env.push(("TLS_DIR", String::leak(certs.display().to_string())));
    let started = Instant::now();
    p.compose(&["up", "-d"]);
    let (primary, r1, r2) = (p.id("primary"), p.id("replica-1"), p.id("replica-2"));
    for id in [&primary, &r1, &r2] {
        wait_healthy(id, Duration::from_secs(180));
    }
    eprintln!("TLS stack: three healthy containers {:.1} s after compose up", started.elapsed().as_secs_f64());
    sql(&primary, "CREATE TABLE t (v text); INSERT INTO t VALUES ('over tls')");
    for r in [&r1, &r2] {
        eventually_sql(r, "SELECT v FROM t", "over tls");
    }
    // Both replicas verified the primary (verify-full) and stream encrypted.
    assert_eq!(
        sql(
            &primary,
            "SELECT string_agg(r.application_name || ':' || s.ssl, ',' ORDER BY r.application_name) \
             FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)"
        ),
        "replica-1:true,replica-2:true"
    );
    let status = docker(&["exec", &r1, "pg-entrypoint", "check"]);
    assert!(status.contains("sslmode=verify-full"), "{status}");
    // From the host, through the published port: verified TLS works, plaintext is refused.
    let port = p.published("primary", 5432);
    let client = |settings: &str| {
        Command::new(common::pg_bindir().join("psql"))
            .arg(format!("host=localhost port={port} user=postgres dbname=postgres {settings}"))
            .args(["-X", "-A", "-t", "-c", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"])
            .env("PGPASSWORD", SECRET)
            .output()
            .unwrap()
    };
    let verified = client(&format!("sslmode=verify-full sslrootcert={}/ca.crt", certs.display()));
    assert_eq!(text(&verified).trim(), "t");
    let plain = client("sslmode=disable");
    assert!(!plain.status.success() && text(&plain).contains("no encryption"), "{}", text(&plain));
}

fn missing_acks(id: &str, acked: &[i32]) -> usize {
    let present: std::collections::HashSet<i32> =
        sql(id, "SELECT n FROM acks").lines().filter_map(|l| l.trim().parse().ok()).collect();
    acked.iter().filter(|n| !present.contains(n)).count()
}

fn address(id: &str) -> String {
    docker(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", id])
}

#[test]
#[ignore = "needs the Docker engine and PGEP_IMAGE: run docker/e2e.sh"]
fn synchronous_stack_restarts_fails_over_and_loses_no_acknowledged_commit() {
    let p = Project::new("sync", &["compose.yaml", "compose.sync.yaml"]);
    p.compose(&["up", "-d"]);
    let (primary, r1, r2) = (p.id("primary"), p.id("replica-1"), p.id("replica-2"));
    for id in [&primary, &r1, &r2] {
        wait_healthy(id, Duration::from_secs(180));
    }
    assert_eq!(sql(&primary, "SHOW synchronous_standby_names"), "ANY 1 (\"primary\", \"replica-1\", \"replica-2\")");
    eventually_sql(
        &primary,
        "SELECT string_agg(application_name || '=' || sync_state, ',' ORDER BY application_name) FROM pg_stat_replication",
        "replica-1=quorum,replica-2=quorum",
    );
    sql(&primary, "CREATE TABLE acks (n int PRIMARY KEY)");
    let writer = AckedWriter::start(address(&primary), 5432);
    wait_for("acknowledged commits", Duration::from_secs(60), || writer.count() >= 200);

    // A synchronous primary restarted under load comes back (it used to hang for ever).
    let restarting = Instant::now();
    docker(&["restart", "-t", "10", &primary]);
    wait_healthy(&primary, Duration::from_secs(60));
    let back = restarting.elapsed();
    let before = writer.count();
    wait_for("commits after the restart", Duration::from_secs(60), || writer.count() >= before + 200);
    eprintln!("synchronous primary: docker restart under load to healthy in {:.1} s", back.as_secs_f64());

    // The primary dies under load; the most advanced replica is promoted.
    docker(&["kill", &primary]);
    let acked = writer.finish();
    let mut promoted = None;
    for id in [&r1, &r2] {
        let out = run("docker", &["exec", id, "pg-entrypoint", "promote"]);
        eprintln!("promote {}:\n{}", &id[..12], text(&out));
        if out.status.success() {
            promoted = Some(id.clone());
            break;
        }
        assert!(text(&out).contains("instead"), "refused for another reason:\n{}", text(&out));
    }
    let promoted = promoted.expect("one replica could be promoted");
    // Promoted at run time, it is synchronous at once (replicas carry the settings).
    assert_eq!(sql(&promoted, "SHOW synchronous_standby_names"), "ANY 1 (\"primary\", \"replica-1\", \"replica-2\")");
    let missing = missing_acks(&promoted, &acked);
    eprintln!("acknowledged commits: {}, missing on the promoted replica: {missing}", acked.len());
    assert_eq!(missing, 0);

    // The old primary comes back unchanged: it refuses to be a second primary.
    docker(&["start", &primary]);
    wait_for("the old primary exits 75", Duration::from_secs(60), || {
        docker(&["inspect", "-f", "{{.State.ExitCode}}", &primary]) == "75"
    });
    let logs = text(&run("docker", &["logs", &primary]));
    assert!(logs.contains("refusing to start as a writable primary"), "{logs}");
    assert_ne!(docker(&["inspect", "-f", "{{.State.Health.Status}}", &primary]), "healthy");
    docker(&["stop", &primary]);
}

#[test]
#[ignore = "needs the Docker engine and PGEP_IMAGE: run docker/e2e.sh"]
fn a_replica_killed_mid_clone_recovers_on_restart() {
    let p = Project::new("kill", &["compose.yaml"]);
    p.compose(&["up", "-d", "primary"]);
    let primary = p.id("primary");
    wait_healthy(&primary, Duration::from_secs(120));
    // No standby yet to make a majority: this session does not wait for one.
    sql(
        &primary,
        "SET synchronous_commit = local; CREATE TABLE big AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 300000) g",
    );
    p.compose(&["up", "-d", "replica-1"]);
    let replica = p.id("replica-1");
    wait_for("the clone to start", Duration::from_secs(60), || {
        run(
            "docker",
            &["exec", &replica, "test", "-d", "/var/lib/postgresql/data/.pg-entrypoint-bootstrap/cluster/base"],
        )
        .status
        .success()
    });
    docker(&["kill", &replica]);
    // The restart policy may already have restarted it; start is a no-op then.
    docker(&["start", &replica]);
    wait_healthy(&replica, Duration::from_secs(180));
    eventually_sql(&replica, "SELECT count(*) FROM big", "300000");
    let logs = text(&run("docker", &["logs", &replica]));
    assert!(logs.contains("removing an interrupted bootstrap"), "{logs}");
}

#[test]
#[ignore = "needs the Docker engine and PGEP_IMAGE: run docker/e2e.sh"]
fn manual_failover_then_the_old_primary_rejoins_as_a_replica() {
    let mut c = Cluster::new("failover");
    let p = c.start("a", "a", &[("REPLICATION_ROLE", "primary")]);
    let host_a = c.host("a");
    let r = c.start("b", "b", &[("REPLICATION_ROLE", "replica"), ("PRIMARY_HOST", &host_a), ("REPLICA_NAME", "b")]);
    wait_healthy(&p, Duration::from_secs(120));
    wait_healthy(&r, Duration::from_secs(180));
    sql(&p, "CREATE TABLE f (v text); INSERT INTO f VALUES ('before')");
    eventually_sql(&r, "SELECT count(*) FROM f", "1");
    docker(&["stop", &r]);
    sql(&p, "INSERT INTO f VALUES ('lost on failover')");
    docker(&["stop", &p]);

    // The replica's volume comes back as the primary.
    docker(&["rm", &r]);
    let new_primary = c.start("b2", "b", &[("REPLICATION_ROLE", "primary")]);
    wait_healthy(&new_primary, Duration::from_secs(120));
    sql(&new_primary, "INSERT INTO f VALUES ('after')");
    // The old primary's volume comes back as its replica: rewound, streaming.
    docker(&["rm", &p]);
    let host_b2 = c.host("b2");
    let old = c.start("a2", "a", &[("REPLICATION_ROLE", "replica"), ("PRIMARY_HOST", &host_b2), ("REPLICA_NAME", "a")]);
    wait_healthy(&old, Duration::from_secs(180));
    eventually_sql(&old, "SELECT string_agg(v, ',' ORDER BY v) FROM f", "after,before");
    let logs = text(&run("docker", &["logs", &old]));
    assert!(logs.contains("rewinding it with pg_rewind"), "{logs}");
}

#[test]
#[ignore = "needs the Docker engine and PGEP_IMAGE: run docker/e2e.sh"]
fn command_contract_and_bad_configuration() {
    let image = image();
    assert_eq!(docker(&["run", "--rm", &image, "bash", "-c", "echo ok"]), "ok");
    assert!(docker(&["run", "--rm", &image, "--version"]).starts_with("postgres (PostgreSQL) "));
    let out = run("docker", &["run", "--rm", "-e", "POSTGRES_PASSWORD=x", "-e", "HA_MODE=bogus", &image]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(text(&out).contains("HA_MODE: \"bogus\" is not accepted"), "{}", text(&out));
    let out = run("docker", &["run", "--rm", &image]);
    assert_eq!(out.status.code(), Some(78));
    assert!(text(&out).contains("POSTGRES_PASSWORD: is required"), "{}", text(&out));
    // The plain compose command without docker/up.sh says what to run, before starting anything.
    let compose = compose_command();
    let out = Command::new(compose[0])
        .args(&compose[1..])
        .args(["-f", concat!(env!("CARGO_MANIFEST_DIR"), "/docker/compose.yaml"), "config"])
        .env_remove("SECRETS_DIR")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("Run docker/up.sh"), "{}", text(&out));
}

#[test]
#[ignore = "needs the Docker engine and PGEP_IMAGE: run docker/e2e.sh"]
fn image_is_what_we_ship() {
    let image = image();
    let ldd =
        text(&run("docker", &["run", "--rm", &image, "sh", "-c", "ldd /usr/local/bin/pg-entrypoint 2>&1 || true"]));
    assert!(ldd.contains("statically linked") || ldd.contains("not a dynamic executable"), "{ldd}");
    let config = docker(&[
        "inspect",
        "-f",
        "{{json .Config.Entrypoint}} {{json .Config.Cmd}} {{json .Config.Healthcheck.Test}} {{.Config.StopSignal}}",
        &image,
    ]);
    assert_eq!(config, "[\"pg-entrypoint\"] [\"postgres\"] [\"CMD\",\"pg-entrypoint\",\"health\"] SIGTERM");
    // No setuid or setgid file beyond what the PostgreSQL base already has.
    let find = "find / -xdev -perm /6000 -type f 2>/dev/null | sort";
    let ours = docker(&["run", "--rm", "--entrypoint", "sh", &image, "-c", find]);
    assert!(!ours.contains("pg-entrypoint"), "{ours}");
    if let Ok(base) = std::env::var("PGEP_BASE_IMAGE") {
        assert_eq!(ours, docker(&["run", "--rm", "--entrypoint", "sh", &base, "-c", find]), "setuid files added");
    }
    let modes = docker(&[
        "run",
        "--rm",
        &image,
        "stat",
        "-c",
        "%a %U",
        "/usr/local/bin/pg-entrypoint",
        "/var/lib/postgresql/data",
    ]);
    // PGDATA is 1777 in the image, as in the official one (any uid may make a subdirectory);
    // the entrypoint makes it 0700 when it uses it.
    assert_eq!(modes, "755 root\n1777 postgres");
    let size = docker(&["image", "inspect", "-f", "{{.Size}}", &image]);
    eprintln!("image {image}: {} MB", size.parse::<u64>().unwrap_or(0) / 1_000_000);
}

#[test]
#[ignore = "needs the Docker engine and PGEP_IMAGE: run docker/e2e.sh"]
fn haproxy_routes_writes_to_the_primary_and_reads_to_replicas_across_a_promotion() {
    let p = Project::new("haproxy", &["compose.yaml", "compose.haproxy.yaml"]);
    p.compose(&["up", "-d"]);
    let (primary, r1, r2) = (p.id("primary"), p.id("replica-1"), p.id("replica-2"));
    for id in [&primary, &r1, &r2] {
        wait_healthy(id, Duration::from_secs(180));
    }
    // A client on the stack's network (replica-2's psql), through HAProxy's ports.
    let password = format!("PGPASSWORD={SECRET}");
    let through = |port: &str, query: &str| {
        let out = run(
            "docker",
            &[
                "exec", "-e", &password, &r2, "psql", "-X", "-A", "-t", "-h", "haproxy", "-p", port, "-U", "postgres",
                "-c", query,
            ],
        );
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    wait_for("writes through 5000", Duration::from_secs(30), || {
        through("5000", "SELECT pg_is_in_recovery()").as_deref() == Some("f")
    });
    assert!(through("5000", "CREATE TABLE routed (v text); INSERT INTO routed VALUES ('before')").is_some());
    assert_eq!(through("5000", "SELECT inet_server_addr()").unwrap(), address(&primary));
    // Reads through 5001 reach both replicas in turn, never the primary.
    wait_for("both replicas behind 5001", Duration::from_secs(30), || {
        let seen: std::collections::HashSet<String> =
            (0..4).filter_map(|_| through("5001", "SELECT inet_server_addr()")).collect();
        seen == [address(&r1), address(&r2)].into_iter().collect()
    });
    assert_eq!(through("5001", "SELECT pg_is_in_recovery()").as_deref(), Some("t"));

    // Failover: the primary stops, replica-1 is promoted; HAProxy follows by itself.
    docker(&["stop", &primary]);
    let out = run("docker", &["exec", &r1, "pg-entrypoint", "promote"]);
    assert!(out.status.success(), "{}", text(&out));
    let promoted = Instant::now();
    // Measured 0.2–0.3 s; 17 s before HAProxy gave up on the stopped member's address
    // after 1 s and redispatched (docker/haproxy.cfg).
    wait_for("writes through 5000 after the promotion", Duration::from_secs(10), || {
        through("5000", "INSERT INTO routed VALUES ('after')").is_some()
    });
    eprintln!("writes through HAProxy resumed {:.1} s after the promotion", promoted.elapsed().as_secs_f64());
    assert_eq!(through("5000", "SELECT inet_server_addr()").unwrap(), address(&r1));
    assert_eq!(through("5000", "SELECT string_agg(v, ',' ORDER BY v) FROM routed").unwrap(), "after,before");

    // replica-1, promoted, is cut off; the old primary comes back unchanged. replica-2 followed
    // the promotion, so the old primary finds timeline 2 on the one member it reaches and
    // stays down: HAProxy's write port never reaches it.
    assert_eq!(sql(&r2, "SELECT received_tli FROM pg_stat_wal_receiver"), "2");
    let network = format!("{}_default", p.name);
    docker(&["network", "disconnect", &network, &r1]);
    docker(&["start", &primary]);
    wait_for("the old primary exits 75", Duration::from_secs(60), || {
        docker(&["inspect", "-f", "{{.State.ExitCode}}", &primary]) == "75"
    });
    let logs = text(&run("docker", &["logs", &primary]));
    assert!(logs.contains("is on timeline 2, newer than this node's 1"), "{logs}");
    for _ in 0..5 {
        assert_eq!(through("5000", "SELECT inet_server_addr()"), None, "a write session reached a member");
    }
    assert_eq!(sql(&r2, "SELECT received_tli FROM pg_stat_wal_receiver"), "2");
    docker(&["stop", &primary]);
    // Back under its service name (a reconnection drops the aliases compose gave it).
    docker(&["network", "connect", "--alias", "replica-1", &network, &r1]);
    wait_for("writes through 5000 once replica-1 is back", Duration::from_secs(30), || {
        through("5000", "SELECT inet_server_addr()").as_deref() == Some(address(&r1).as_str())
    });
}

/// The member Patroni made the leader: the one that is not in recovery.
fn patroni_leader(ids: &[String]) -> String {
    let mut leader = None;
    wait_for("one leader", Duration::from_secs(60), || {
        let primaries: Vec<&String> =
            ids.iter().filter(|id| run_sql(id, "SELECT pg_is_in_recovery()").as_deref() == Some("f")).collect();
        leader = (primaries.len() == 1).then(|| primaries[0].clone());
        leader.is_some()
    });
    leader.unwrap()
}

/// psql in the container; `None` when it fails (e.g. postgres restarting under Patroni).
fn run_sql(id: &str, query: &str) -> Option<String> {
    let out = run("docker", &["exec", "-u", "postgres", id, "psql", "-X", "-A", "-t", "-c", query]);
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Three Patroni members on three etcd members, healthy; their container ids.
fn patroni_stack(p: &Project) -> Vec<String> {
    let started = Instant::now();
    p.compose(&["up", "-d"]);
    let ids: Vec<String> = ["pg-1", "pg-2", "pg-3"].iter().map(|s| p.id(s)).collect();
    for id in &ids {
        wait_healthy(id, Duration::from_secs(180));
    }
    eprintln!("patroni stack: three healthy members {:.1} s after compose up", started.elapsed().as_secs_f64());
    // Another container on the network changes nothing through Patroni's REST API without the
    // password: an archive_command set this way would run any shell command.
    let patch = "import urllib.request, urllib.error
body = b'{\"postgresql\":{\"parameters\":{\"archive_mode\":\"on\",\"archive_command\":\"id\"}}}'
request = urllib.request.Request('http://pg-1:8008/config', data=body, method='PATCH')
try:
    print(urllib.request.urlopen(request, timeout=10).status)
except urllib.error.HTTPError as e:
    print(e.code)";
    assert_eq!(docker(&["exec", &ids[1], "python3", "-c", patch]), "401");
    assert_eq!(
        docker(&[
            "exec",
            &ids[1],
            "python3",
            "-c",
            "import urllib.request; print(urllib.request.urlopen('http://pg-1:8008/health').status)"
        ]),
        "200"
    );
    ids
}

#[test]
#[ignore = "needs the Docker engine and PGEP_IMAGE: run docker/e2e.sh"]
fn patroni_stack_fails_over_under_load_without_losing_acknowledged_commits() {
    // With Prometheus, as PATRONI=1 MONITORING=1 docker/up.sh starts it: the same rules read
    // Patroni's own /metrics.
    let mut p = Project::patroni(
        "patkill",
        &[("REPLICATION_SYNCHRONOUS_MODE", "on"), ("PROMETHEUS_CONFIG", "prometheus.patroni.yml")],
    );
    p.files.push("compose.monitoring.yaml");
    let ids = patroni_stack(&p);
    let leader = patroni_leader(&ids);
    let api = p.published("prometheus", 9090);
    let one_primary = "/api/v1/query?query=sum(up%7Bjob%3D%22postgres%22%7D)%20%2B%20sum(patroni_primary)";
    wait_for("Prometheus scrapes three members, one of them the primary", Duration::from_secs(60), || {
        prometheus_api(api, one_primary).is_some_and(|a| a["data"]["result"][0]["value"][1] == "4")
    });
    assert_eq!(firing(api), Vec::<String>::new(), "a healthy Patroni stack fires nothing");
    // Through HAProxy's write port, as a client would.
    let port = p.published("haproxy", 5000);
    wait_for("writes through 5000", Duration::from_secs(30), || {
        postgres::Config::new()
            .host("127.0.0.1")
            .port(port)
            .user("postgres")
            .password(SECRET)
            .dbname("postgres")
            .connect(postgres::NoTls)
            .and_then(|mut c| c.batch_execute("CREATE TABLE IF NOT EXISTS acks (n int PRIMARY KEY)"))
            .is_ok()
    });
    // Only the synchronous standby Patroni recorded in etcd may take over.
    wait_for("a synchronous standby recorded", Duration::from_secs(60), || {
        run("docker", &["exec", &leader, "pg-entrypoint", "status"]).status.success()
            && docker(&["exec", &leader, "pg-entrypoint", "status"]).contains("\"sync_standby\"")
    });
    for id in &ids {
        eventually_sql(id, "SELECT count(*) FROM acks", "0");
    }
    let writer = AckedWriter::start("127.0.0.1".into(), port);
    wait_for("acknowledged commits", Duration::from_secs(60), || writer.count() >= 300);
    docker(&["kill", &leader]);
    let killed = Instant::now();
    let at_kill = writer.count();
    wait_for("writes through 5000 after the kill", Duration::from_secs(90), || writer.count() > at_kill + 10);
    eprintln!(
        "patroni: writes through HAProxy resumed {:.1} s after docker kill of the leader",
        killed.elapsed().as_secs_f64()
    );
    let acked = writer.finish();
    let others: Vec<String> = ids.iter().filter(|id| **id != leader).cloned().collect();
    let new = patroni_leader(&others);
    let missing = missing_acks(&new, &acked);
    eprintln!("patroni: acknowledged commits {}, missing on the new leader: {missing}", acked.len());
    assert_eq!(missing, 0);
    // The other survivor follows the new leader and has every row.
    let total = sql(&new, "SELECT count(*) FROM acks");
    for id in others.iter().filter(|id| **id != new) {
        eventually_sql(id, "SELECT count(*) FROM acks", &total);
    }
    // The old leader, started again, rejoins as a replica with every commit. Healthy can come
    // before Patroni is done with it: it may start postgres, find that its WAL went past the
    // fork and must be rewound, stop it and start it again (seen twice on PostgreSQL 17: the
    // first query after healthy failed; patronictl then showed it "stopped"). So: wait until
    // both replicas stream (Patroni 4 says "streaming"; 3.0 says "running" for any replica).
    docker(&["start", &leader]);
    wait_healthy(&leader, Duration::from_secs(120));
    let settled = Instant::now() + Duration::from_secs(120);
    loop {
        let listing = docker(&["exec", &new, "patronictl", "list"]);
        let (streaming, running) = (listing.matches("streaming").count(), listing.matches("running").count());
        if listing.contains("Leader") && (streaming >= 2 || (streaming == 0 && running >= 3)) {
            break;
        }
        assert!(Instant::now() < settled, "the old leader did not settle as a replica:\n{listing}");
        std::thread::sleep(Duration::from_secs(1));
    }
    eventually_sql(&leader, "SELECT pg_is_in_recovery()", "t");
    eventually_sql(&leader, "SELECT count(*) FROM acks", &sql(&new, "SELECT count(*) FROM acks"));
    wait_for("Prometheus sees the three members and one primary again", Duration::from_secs(30), || {
        prometheus_api(api, one_primary).is_some_and(|a| a["data"]["result"][0]["value"][1] == "4")
    });
    let firing_now = firing(api);
    assert!(!firing_now.contains(&"PostgresMoreThanOnePrimary".to_string()), "{firing_now:?}");
    // docker stop of every member: a clean shutdown, exit 0.
    for id in &ids {
        docker(&["stop", "-t", "10", id]);
        let logs = text(&run("docker", &["logs", "--tail", "20", id]));
        assert_eq!(docker(&["inspect", "-f", "{{.State.ExitCode}}", id]), "0", "{logs}");
        assert!(logs.contains("database system is shut down") && logs.contains("patroni exited code=0"), "{logs}");
    }
}

#[test]
#[ignore = "needs the Docker engine and PGEP_IMAGE: run docker/e2e.sh"]
fn a_partitioned_patroni_leader_stops_taking_writes_before_another_is_elected() {
    let p = Project::patroni("patpart", &[]);
    let ids = patroni_stack(&p);
    let old = patroni_leader(&ids);
    run_sql(&old, "CREATE TABLE fence (n int)").expect("table created");
    // Inside the old leader (over its socket, which the partition does not cut): a write every
    // 50 ms, each acknowledged one logged with the time.
    docker(&[
        "exec",
        "-d",
        "-u",
        "postgres",
        &old,
        "bash",
        "-c",
        "for i in $(seq 100000); do psql -X -q -c \"INSERT INTO fence VALUES ($i)\" >/dev/null 2>&1 \
         && echo \"$(date +%s%N) $i\" >> /tmp/acked; sleep 0.05; done",
    ]);
    wait_for("writes on the old leader", Duration::from_secs(30), || {
        run("docker", &["exec", &old, "test", "-s", "/tmp/acked"]).status.success()
    });
    // Both replicas stream (Patroni makes their slots within a loop of the bootstrap):
    // otherwise the cut would also lose the table, asynchronous as this stack is.
    let others: Vec<String> = ids.iter().filter(|id| **id != old).cloned().collect();
    for id in &others {
        eventually_sql(id, "SELECT count(*) > 0 FROM fence", "t");
    }
    // Synchronous by default: until Patroni has recorded a synchronous standby, commits do not
    // wait for one, and no member may take over (docs/patroni.md, "Synchronous mode chooses consistency").
    wait_for("a synchronous standby recorded", Duration::from_secs(60), || {
        text(&run("docker", &["exec", &old, "patronictl", "list"])).contains("Sync Standby")
    });
    let network = format!("{}_default", p.name);
    docker(&["network", "disconnect", &network, &old]);
    let cut = Instant::now();
    // The new leader's first write, on the host's clock (the containers share it).
    let mut first_write_ns: u128 = 0;
    let diagnose = |others: &[String]| {
        let logs: Vec<String> = others.iter().map(|id| text(&run("docker", &["logs", "--tail", "40", id]))).collect();
        let listing = text(&run("docker", &["exec", &others[0], "patronictl", "list"]));
        format!("{listing}\n{}", logs.join("\n=====\n"))
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    wait_for("a new leader takes a write", Duration::from_secs(95), || {
        assert!(Instant::now() < deadline, "no new leader took a write:\n{}", diagnose(&others));
        others.iter().any(|id| {
            let ok = run_sql(id, "INSERT INTO fence VALUES (-1)").is_some();
            if ok {
                first_write_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
            }
            ok
        })
    });
    eprintln!("patroni: partitioned leader replaced, first write {:.1} s after the cut", cut.elapsed().as_secs_f64());
    let acked = docker(&["exec", &old, "cat", "/tmp/acked"]);
    let last_ns: u128 = acked.lines().filter_map(|l| l.split(' ').next()?.parse().ok()).max().unwrap_or(0);
    let late = acked
        .lines()
        .filter_map(|l| l.split(' ').next()?.parse::<u128>().ok())
        .filter(|t| *t >= first_write_ns)
        .count();
    eprintln!(
        "patroni: the old leader's last acknowledged write was {:.1} s before the new leader's first; {late} after it",
        (first_write_ns.saturating_sub(last_ns)) as f64 / 1e9
    );
    assert_eq!(
        late,
        0,
        "writes acknowledged by the old leader after the new leader's first (at {first_write_ns}):\n{acked}\n{}",
        text(&run("docker", &["logs", "--tail", "80", &old]))
    );
    // Reconnected, it follows the new leader (rewound if needed).
    docker(&["network", "connect", &network, &old]);
    wait_for("the old leader rejoins as a replica", Duration::from_secs(120), || {
        run_sql(&old, "SELECT pg_is_in_recovery()").as_deref() == Some("t")
            && run_sql(&old, "SELECT count(*) FROM fence WHERE n = -1").as_deref() == Some("1")
    });
    // With the shipped defaults (synchronous), every write the old leader acknowledged is on
    // the cluster's history: none was discarded by the rewind.
    let _ = run("docker", &["exec", &old, "pkill", "-f", "seq 100000"]);
    let acked = docker(&["exec", &old, "cat", "/tmp/acked"]);
    let leader = patroni_leader(&others);
    let kept = run_sql(&leader, "SELECT string_agg(n::text, ',') FROM fence WHERE n > 0").unwrap_or_default();
    let kept: std::collections::HashSet<&str> = kept.split(',').collect();
    let ids: Vec<&str> = acked.lines().filter_map(|l| l.split(' ').nth(1)).collect();
    let missing = ids.iter().filter(|id| !kept.contains(*id)).count();
    eprintln!(
        "patroni, shipped defaults: acknowledged writes {}, missing after the cut and the rejoin: {missing}",
        ids.len()
    );
    assert_eq!(missing, 0, "acknowledged writes lost");
}

/// A server that asks every client for its password in clear text and prints what it gets.
const CLEARTEXT_ASKER: &str = r#"
import socket, struct, sys
def read(c, n):
    data = b''
    while len(data) < n:
        more = c.recv(n - len(data))
        if not more:
            raise EOFError
        data += more
    return data
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 5432))
s.listen(16)
print('listening', flush=True)
while True:
    c, _ = s.accept()
    c.settimeout(5)
    try:
        while True:
            n = struct.unpack('!I', read(c, 4))[0]
            body = read(c, n - 4)
            if struct.unpack('!I', body[:4])[0] in (80877103, 80877104):
                c.sendall(b'N')  # no TLS, no GSS: the startup packet comes next
                continue
            break
        c.sendall(b'R' + struct.pack('!II', 8, 3))
        if read(c, 1) == b'p':
            n = struct.unpack('!I', read(c, 4))[0]
            print('GOT PASSWORD', read(c, n - 4), flush=True)
    except Exception as e:
        print('client left:', e, flush=True)
    c.close()
"#;

#[test]
#[ignore = "needs the Docker engine and PGEP_IMAGE: run docker/e2e.sh"]
fn a_replica_never_sends_its_password_in_clear_text_where_libpq_can_refuse() {
    let mut c = Cluster::new("cleartext");
    let fake = c.run_detached("fake", &[], &image(), &["python3", "-c", CLEARTEXT_ASKER]);
    wait_for("the fake primary listening", Duration::from_secs(30), || {
        text(&run("docker", &["logs", &fake])).contains("listening")
    });
    let replica = c.start(
        "replica",
        "replica",
        &[("REPLICATION_ROLE", "replica"), ("PRIMARY_HOST", &c.host("fake")), ("PRIMARY_WAIT_TIMEOUT", "10")],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while docker(&["inspect", "-f", "{{.State.Running}}", &replica]) == "true" {
        assert!(Instant::now() < deadline, "the replica still waits after 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let major =
        docker(&["run", "--rm", "--entrypoint", "sh", &image(), "-c", "ls /usr/lib/postgresql | sort -n | tail -n 1"]);
    let asked = text(&run("docker", &["logs", &fake]));
    let said = text(&run("docker", &["logs", &replica]));
    assert_ne!(docker(&["inspect", "-f", "{{.State.ExitCode}}", &replica]), "0", "{said}");
    if major.parse::<u32>().unwrap() >= 16 {
        assert!(
            !asked.contains("GOT PASSWORD"),
            "the password went to a server that asked for it in clear text:\n{asked}"
        );
        assert!(said.contains("cleartext"), "the refusal names what the server asked for:\n{said}");
    } else {
        // libpq 15 has no require_auth: the documented limit (docs/security.md), TLS with
        // REPLICATION_SSLMODE=verify-full is the protection there.
        assert!(asked.contains("GOT PASSWORD"), "PostgreSQL {major}'s libpq was expected to answer:\n{asked}");
    }
}

/// A GET on Prometheus's HTTP API (published on `port`): the JSON answer.
fn prometheus_api(port: u16, path: &str) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: prometheus\r\n\r\n").as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    serde_json::from_str(answer.split_once("\r\n\r\n")?.1).ok()
}

/// The names of the alerts firing now (pending ones are not).
fn firing(port: u16) -> Vec<String> {
    let Some(answer) = prometheus_api(port, "/api/v1/alerts") else { return vec!["(no answer)".into()] };
    let alerts = answer["data"]["alerts"].as_array().cloned().unwrap_or_default();
    alerts
        .iter()
        .filter(|a| a["state"] == "firing")
        .filter_map(|a| a["labels"]["alertname"].as_str().map(String::from))
        .collect()
}

#[test]
#[ignore = "needs the Docker engine and PGEP_IMAGE: run docker/e2e.sh"]
fn monitoring_overlay_fires_and_clears_the_alerts() {
    // As MONITORING=1 docker/up.sh starts it (docker/prometheus.yml: scrapes every 2 s).
    let p = Project::new("mon", &["compose.yaml", "compose.monitoring.yaml"]);
    p.compose(&["up", "-d"]);
    let (primary, r1, r2) = (p.id("primary"), p.id("replica-1"), p.id("replica-2"));
    for id in [&primary, &r1, &r2] {
        wait_healthy(id, Duration::from_secs(180));
    }
    let api = p.published("prometheus", 9090);
    let members_up = "/api/v1/query?query=sum(up%7Bjob%3D%22postgres%22%7D)";
    wait_for("Prometheus scrapes the three members", Duration::from_secs(60), || {
        prometheus_api(api, members_up).is_some_and(|a| a["data"]["result"][0]["value"][1] == "3")
    });
    assert_eq!(firing(api), Vec::<String>::new(), "a healthy stack fires nothing");

    // A paused replica cannot say it stopped streaming: its primary, whose walsender gives
    // up on it after wal_sender_timeout, streams to one standby instead of two.
    docker(&["pause", &r2]);
    let paused = Instant::now();
    wait_for("PostgresReplicaNotStreaming", Duration::from_secs(60), || {
        firing(api).contains(&"PostgresReplicaNotStreaming".to_string())
    });
    eprintln!("replica paused: PostgresReplicaNotStreaming firing after {:.1} s", paused.elapsed().as_secs_f64());
    docker(&["unpause", &r2]);
    wait_for("PostgresReplicaNotStreaming cleared", Duration::from_secs(60), || {
        !firing(api).contains(&"PostgresReplicaNotStreaming".to_string())
    });

    // The primary stops: no writable primary, within the rule's `for` (10 s) plus two
    // scrape intervals (2 s each), one evaluation (1 s) and the polling here.
    docker(&["stop", &primary]);
    let stopped = Instant::now();
    wait_for("PostgresNoWritablePrimary", Duration::from_secs(60), || {
        firing(api).contains(&"PostgresNoWritablePrimary".to_string())
    });
    let took = stopped.elapsed();
    eprintln!("primary stopped: PostgresNoWritablePrimary firing after {:.1} s", took.as_secs_f64());
    assert!(took <= Duration::from_millis(15_500), "fired after {took:?}");
    let promoting = Instant::now();
    let out = run("docker", &["exec", &r1, "pg-entrypoint", "promote"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_for("PostgresNoWritablePrimary cleared", Duration::from_secs(30), || {
        !firing(api).contains(&"PostgresNoWritablePrimary".to_string())
    });
    eprintln!(
        "promote run: PostgresNoWritablePrimary cleared {:.1} s after it started",
        promoting.elapsed().as_secs_f64()
    );
    assert!(!firing(api).contains(&"PostgresMoreThanOnePrimary".to_string()));
}

/// Waits until `segment` is in the repository; postgres retries a failed archive_command
/// three times, then waits a minute, so a transient failure can cost that long.
fn wait_archived(id: &str, segment: &str) {
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let archived = sql(id, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
        if archived.as_str() >= segment {
            return;
        }
        if Instant::now() >= deadline {
            let stats = sql(id, "SELECT row_to_json(a) FROM pg_stat_archiver a");
            let logs = text(&run("docker", &["logs", "--tail", "40", id]));
            panic!("{segment} not archived within 150 s (pg_stat_archiver: {stats}):\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `pg-entrypoint <args>` in a container: exit status and output.
fn exec(id: &str, args: &[&str]) -> (bool, String) {
    let mut full = vec!["exec", id, "pg-entrypoint"];
    full.extend(args);
    let out = run("docker", &full);
    (out.status.success(), text(&out))
}

#[test]
#[ignore = "needs the Docker engine and PGEP_IMAGE: run docker/e2e.sh"]
fn backup_overlay_archives_survives_a_killed_backup_and_restores() {
    // As BACKUP=1 docker/up.sh starts it: one repository volume for the three members.
    let p = Project::new("bak", &["compose.yaml", "compose.backup.yaml"]);
    p.compose(&["up", "-d"]);
    let (primary, r1) = (p.id("primary"), p.id("replica-1"));
    for id in [&primary, &r1, &p.id("replica-2")] {
        wait_healthy(id, Duration::from_secs(180));
    }
    wait_for("the stanza is created and archiving checked", Duration::from_secs(90), || {
        exec(&primary, &["status"]).1.contains("\"checked\"")
    });
    sql(&primary, "CREATE TABLE big AS SELECT g, repeat(md5(g::text), 16) AS pad FROM generate_series(1, 400000) g");
    // docker kill while a backup copies: never offered, the next one succeeds.
    docker(&["exec", "-d", &primary, "pg-entrypoint", "backup", "full"]);
    wait_for("the backup copies files", Duration::from_secs(60), || {
        run("docker", &["exec", &primary, "sh", "-c", "ls -d /var/lib/pgbackrest/backup/main/*F/pg_data/base"])
            .status
            .success()
    });
    docker(&["kill", &primary]);
    docker(&["start", &primary]);
    wait_healthy(&primary, Duration::from_secs(120));
    // The backup command waits out the start's stanza check, which holds the stanza's lock.
    let (ok, list) = exec(&primary, &["backup", "list"]);
    assert!(ok && list.contains("no backups"), "{list}");
    let (ok, out) = exec(&primary, &["backup", "full"]);
    assert!(ok, "{out}");
    // A replica refuses; the primary's backup restores.
    let (ok, out) = exec(&r1, &["backup", "full"]);
    assert!(!ok && out.contains("this node is a replica"), "{out}");
    let (ok, out) = exec(&primary, &["backup", "verify"]);
    assert!(ok && out.contains("verified: backup"), "{out}");
    eprintln!("{}", out.trim());
    // The repository volume on a new container: a restore of the latest state.
    sql(&primary, "CREATE TABLE after_backup AS SELECT 42 AS answer");
    sql(&primary, "SELECT pg_switch_wal()");
    let segment = sql(&primary, "SELECT pg_walfile_name(pg_current_wal_lsn() - 1)");
    wait_archived(&primary, &segment);
    let network = format!("{}_default", p.name);
    let restored = docker(&[
        "run",
        "-d",
        "--network",
        &network,
        "-e",
        "PGBACKREST_ENABLE=true",
        "-e",
        "PGBACKREST_RESTORE=true",
        "-v",
        &format!("{}_backup-repository:/var/lib/pgbackrest", p.name),
        &image(),
    ]);
    wait_healthy(&restored, Duration::from_secs(180));
    assert_eq!(sql(&restored, "SELECT answer FROM after_backup"), "42");
    assert_eq!(sql(&restored, "SELECT count(*) FROM big"), "400000");
    docker(&["rm", "-f", &restored]);
    p.compose(&["down", "-v"]);
}

#[test]
#[ignore = "needs the Docker engine and PGEP_IMAGE: run docker/e2e.sh"]
fn s3_backup_overlay_backs_up_and_restores_through_the_bucket() {
    // As BACKUP=s3 docker/up.sh starts it: the local S3 server, the key secret a compose secret.
    let p = Project::new("bs3", &["compose.yaml", "compose.backup-s3.yaml"]);
    p.compose(&["up", "-d"]);
    let primary = p.id("primary");
    wait_healthy(&primary, Duration::from_secs(180));
    wait_for("the stanza is created in the bucket and archiving checked", Duration::from_secs(120), || {
        exec(&primary, &["status"]).1.contains("\"checked\"")
    });
    sql(&primary, "CREATE TABLE t AS SELECT generate_series(1, 1000) AS id");
    let (ok, out) = exec(&primary, &["backup", "full"]);
    assert!(ok, "{out}");
    let (ok, out) = exec(&primary, &["backup", "verify"]);
    assert!(ok && out.contains("verified: backup"), "{out}");
    sql(&primary, "INSERT INTO t SELECT generate_series(1001, 1500)");
    sql(&primary, "SELECT pg_switch_wal()");
    let segment = sql(&primary, "SELECT pg_walfile_name(pg_current_wal_lsn() - 1)");
    wait_archived(&primary, &segment);
    let logs = text(&run("docker", &["logs", &primary]));
    assert!(!logs.contains(&format!("s3-{SECRET}")), "the key secret in the log");
    // A new container restores from the bucket, with the same variables.
    let env = docker(&["inspect", "-f", "{{range .Config.Env}}{{println .}}{{end}}", &primary]);
    let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--network".into(), format!("{}_default", p.name)];
    for line in env.lines().filter(|l| l.starts_with("PGBACKREST_")) {
        args.extend(["-e".into(), line.to_string()]);
    }
    args.extend(["-e".into(), "PGBACKREST_RESTORE=true".into(), "-e".into(), "PGBACKREST_AUTO_ENABLE=false".into()]);
    let secret = p.secrets.join("s3_key_secret");
    args.extend(["-v".into(), format!("{}:/run/secrets/s3_key_secret:ro", secret.display()), image()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let restored = docker(&args);
    wait_healthy(&restored, Duration::from_secs(180));
    assert_eq!(sql(&restored, "SELECT count(*) FROM t"), "1500");
    docker(&["rm", "-f", &restored]);
}

/// The member `id` streams from (its WAL receiver's sender), by address.
fn upstream(id: &str) -> String {
    sql(id, "SELECT coalesce(sender_host, '') FROM pg_stat_wal_receiver WHERE status = 'streaming'")
}

#[test]
#[ignore = "needs the Docker engine and PGEP_IMAGE: run docker/e2e.sh"]
fn a_rolling_update_with_a_switchover_through_haproxy_and_pgbouncer_loses_nothing() {
    // As POOLER=1 docker/up.sh starts it: PgBouncer on each member, HAProxy's ports on them.
    let mut p = Project::new("rolling", &["compose.yaml", "compose.haproxy.yaml", "compose.pooler.yaml"]);
    p.env = vec![("PG_BACKEND_PORT", "6432")];
    p.compose(&["up", "-d"]);
    let (primary, r1, r2) = (p.id("primary"), p.id("replica-1"), p.id("replica-2"));
    for id in [&primary, &r1, &r2] {
        wait_healthy(id, Duration::from_secs(180));
    }
    sql(&primary, "CREATE TABLE acks (n int PRIMARY KEY)");
    // Through HAProxy (it cuts a session to a member it marks down, so that client reconnects),
    // and straight to the primary's PgBouncer (its clients wait through the switchover).
    let through_haproxy = AckedWriter::start("127.0.0.1".into(), p.published("haproxy", 5000));
    let through_pooler = AckedWriter::start_from("127.0.0.1".into(), p.published("primary", 6432), 1_000_000);
    wait_for("writes through both", Duration::from_secs(60), || {
        through_haproxy.count() > 100 && through_pooler.count() > 100
    });

    // The "new" image: the same bits under another tag, as a minor update would bring.
    let next: &'static str = Box::leak(format!("{}-next", image()).into_boxed_str());
    docker(&["tag", &image(), next]);
    // 1. The replicas, one at a time.
    for service in ["replica-1", "replica-2"] {
        let id = p.recreate_on(service, next);
        wait_healthy(&id, Duration::from_secs(180));
    }
    let r1 = p.id("replica-1");
    wait_for("replica-1 streams again", Duration::from_secs(60), || upstream(&r1) == "primary");
    // 2. A switchover to an updated replica.
    let before = (through_haproxy.count(), through_pooler.count());
    let started = Instant::now();
    let out = run("docker", &["exec", &primary, "pg-entrypoint", "switchover", "--to", "replica-1"]);
    let took = started.elapsed();
    assert!(out.status.success(), "{}\n{}", text(&out), text(&run("docker", &["logs", "--tail", "60", &primary])));
    wait_for("writes go on through both", Duration::from_secs(60), || {
        through_haproxy.count() > before.0 + 100 && through_pooler.count() > before.1 + 100
    });
    let (pooled, pooled_gap, pooled_errors) = through_pooler.finish_with_gap();
    assert_eq!(missing_acks(&r1, &pooled), 0, "acknowledged through PgBouncer, missing on the new primary");
    assert!(pooled_errors.is_empty(), "a PgBouncer client saw errors: {pooled_errors:?}");
    assert_eq!(sql(&r1, "SELECT pg_is_in_recovery()"), "f");
    assert_eq!(sql(&primary, "SELECT pg_is_in_recovery()"), "t");
    wait_for("the old primary streams from replica-1", Duration::from_secs(30), || upstream(&primary) == "replica-1");
    let r2 = p.id("replica-2");
    wait_for("replica-2 follows replica-1", Duration::from_secs(60), || upstream(&r2) == "replica-1");
    // 3. The old primary, a replica now (its record says so; its variables are unchanged).
    let old = p.recreate_on("primary", next);
    wait_healthy(&old, Duration::from_secs(180));
    wait_for("the updated old primary streams from replica-1", Duration::from_secs(60), || {
        upstream(&old) == "replica-1"
    });
    let (acked, gap, errors) = through_haproxy.finish_with_gap();
    let missing = missing_acks(&r1, &acked);
    eprintln!(
        "rolling update: switchover {took:?}; through HAProxy {} acknowledged, {missing} missing, longest gap {gap:?}, \
         {} errors; through PgBouncer {} acknowledged, longest gap {pooled_gap:?}, 0 errors",
        acked.len(),
        errors.len(),
        pooled.len()
    );
    assert_eq!(missing, 0, "acknowledged through HAProxy, missing on the new primary");
    for id in [&old, &r1, &r2] {
        assert_eq!(docker(&["inspect", "-f", "{{.Config.Image}}", id]), next);
    }
    // Both restarted with the same variables: the same roles.
    docker(&["restart", "-t", "10", &r1, &old]);
    wait_healthy(&r1, Duration::from_secs(120));
    wait_healthy(&old, Duration::from_secs(120));
    assert_eq!(sql(&r1, "SELECT pg_is_in_recovery()"), "f");
    assert_eq!(sql(&old, "SELECT pg_is_in_recovery()"), "t");
    wait_for("the old primary streams again", Duration::from_secs(60), || upstream(&old) == "replica-1");
    let logs = text(&run("docker", &["logs", &old]));
    assert!(!logs.contains("pg_rewind"), "a switchover leaves nothing to rewind:\n{logs}");
    docker(&["rmi", next]);
}
