//! End-to-end tests on the real Docker engine, against the image named by `PGEP_IMAGE`.
//! They are `#[ignore]`d in the ordinary suite and run by `docker/e2e.sh`, which builds the
//! PostgreSQL 15 and 17 images offline and runs this file once for each.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

const SECRET: &str = "s3cret 'q' $x \\b";

fn image() -> String {
    std::env::var("PGEP_IMAGE").expect("PGEP_IMAGE names the image under test (docker/e2e.sh sets it)")
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Runs docker and asserts success; returns stdout, trimmed.
fn docker(args: &[&str]) -> String {
    let out = run("docker", args);
    assert!(out.status.success(), "docker {args:?} failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_healthy(id: &str, timeout: Duration) {
    wait_for(&format!("container {id} healthy"), timeout, || {
        let state = docker(&["inspect", "-f", "{{.State.Status}} {{.State.Health.Status}}", id]);
        assert!(!state.starts_with("exited"), "container exited:\n{}", text(&run("docker", &["logs", id])));
        state == "running healthy"
    });
}

/// One value from psql inside the container (local socket, trust).
fn sql(id: &str, query: &str) -> String {
    docker(&["exec", id, "psql", "-X", "-A", "-t", "-U", "postgres", "-c", query])
}

fn eventually_sql(id: &str, query: &str, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = run("docker", &["exec", id, "psql", "-X", "-A", "-t", "-U", "postgres", "-c", query]);
        if String::from_utf8_lossy(&out.stdout).trim() == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{query} on {id}: {:?}, expected {expected:?} within 60 s", text(&out));
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn compose_command() -> Vec<&'static str> {
    if run("docker", &["compose", "version"]).status.success() {
        vec!["docker", "compose"]
    } else {
        vec!["docker-compose"]
    }
}

/// A compose project of its own (unique name, its own secrets), torn down with its volumes.
struct Project {
    name: String,
    secrets: std::path::PathBuf,
    files: Vec<&'static str>,
}

impl Project {
    fn new(tag: &str, files: &[&'static str]) -> Project {
        let name = format!("pgep{tag}{}", std::process::id());
        let secrets = std::env::temp_dir().join(format!("{name}-secrets"));
        std::fs::create_dir_all(&secrets).unwrap();
        std::fs::write(secrets.join("postgres_password"), format!("{SECRET}\n")).unwrap();
        std::fs::write(secrets.join("replication_password"), format!("rep-{SECRET}\n")).unwrap();
        Project { name, secrets, files: files.to_vec() }
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
            .output()
            .unwrap();
        assert!(out.status.success(), "compose {args:?} failed:\n{}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn id(&self, service: &str) -> String {
        self.compose(&["ps", "-q", service])
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
        let _ = Command::new(cmd[0]).args(&args).env("IMAGE", image()).env("SECRETS_DIR", &self.secrets).output();
        let _ = std::fs::remove_dir_all(&self.secrets);
    }
}

/// `pg_controldata` on a volume, from a one-off container of the image.
fn cluster_state(volume: &str) -> String {
    let out = docker(&[
        "run",
        "--rm",
        "-v",
        &format!("{volume}:/var/lib/postgresql/data"),
        &image(),
        "sh",
        "-c",
        "\"$(ls -d /usr/lib/postgresql/*/bin | tail -n 1)/pg_controldata\" /var/lib/postgresql/data",
    ]);
    out.lines()
        .find_map(|l| l.strip_prefix("Database cluster state:"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no state in:\n{out}"))
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

#[test]
#[ignore = "needs the Docker engine and PGEP_IMAGE: run docker/e2e.sh"]
fn synchronous_quorum_stack() {
    let p = Project::new("sync", &["compose.yaml", "compose.sync.yaml"]);
    p.compose(&["up", "-d"]);
    let (primary, r1, r2) = (p.id("primary"), p.id("replica-1"), p.id("replica-2"));
    for id in [&primary, &r1, &r2] {
        wait_healthy(id, Duration::from_secs(180));
    }
    assert_eq!(sql(&primary, "SHOW synchronous_standby_names"), "ANY 1 (\"replica-1\", \"replica-2\")");
    eventually_sql(
        &primary,
        "SELECT string_agg(application_name || '=' || sync_state, ',' ORDER BY application_name) FROM pg_stat_replication",
        "replica-1=quorum,replica-2=quorum",
    );
    sql(&primary, "CREATE TABLE q (x int); INSERT INTO q VALUES (1)");
    eventually_sql(&r2, "SELECT count(*) FROM q", "1");
}

#[test]
#[ignore = "needs the Docker engine and PGEP_IMAGE: run docker/e2e.sh"]
fn a_replica_killed_mid_clone_recovers_on_restart() {
    let p = Project::new("kill", &["compose.yaml"]);
    p.compose(&["up", "-d", "primary"]);
    let primary = p.id("primary");
    wait_healthy(&primary, Duration::from_secs(120));
    sql(&primary, "CREATE TABLE big AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 300000) g");
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

/// Plain `docker run` containers on a network of their own, removed with their volumes.
struct Cluster {
    tag: String,
    containers: Vec<String>,
}

impl Cluster {
    fn new(tag: &str) -> Cluster {
        let tag = format!("pgep-{tag}-{}", std::process::id());
        docker(&["network", "create", &tag]);
        Cluster { tag, containers: Vec::new() }
    }

    /// Starts container `name` on volume `volume` with the given role variables.
    fn start(&mut self, name: &str, volume: &str, env: &[(&str, &str)]) -> String {
        let (name, volume) = (format!("{}-{name}", self.tag), format!("{}-{volume}", self.tag));
        let mut args: Vec<String> = ["run", "-d", "--name", &name, "--hostname", &name, "--network", &self.tag]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["-v".into(), format!("{volume}:/var/lib/postgresql/data")]);
        args.extend(["--health-interval".into(), "1s".into()]);
        let base = [("POSTGRES_PASSWORD", SECRET), ("REPLICATION_PASSWORD", "rep pw"), ("HA_MODE", "native")];
        for (k, v) in base.iter().chain(env) {
            args.extend(["-e".into(), format!("{k}={v}")]);
        }
        args.push(image());
        docker(&args.iter().map(String::as_str).collect::<Vec<_>>());
        self.containers.push(name.clone());
        name
    }

    fn host(&self, name: &str) -> String {
        format!("{}-{name}", self.tag)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = run("docker", &["rm", "-f", "-v", c]);
        }
        let volumes = docker(&["volume", "ls", "-q", "--filter", &format!("name={}", self.tag)]);
        for v in volumes.lines() {
            let _ = run("docker", &["volume", "rm", v]);
        }
        let _ = run("docker", &["network", "rm", &self.tag]);
    }
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
    assert!(docker(&["run", "--rm", &image, "--version"]).starts_with("pg-entrypoint "));
    let out = run("docker", &["run", "--rm", "-e", "POSTGRES_PASSWORD=x", "-e", "HA_MODE=bogus", &image]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(text(&out).contains("HA_MODE: \"bogus\" is not accepted"), "{}", text(&out));
    let out = run("docker", &["run", "--rm", &image]);
    assert_eq!(out.status.code(), Some(78));
    assert!(text(&out).contains("POSTGRES_PASSWORD: is required"), "{}", text(&out));
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
    assert_eq!(modes, "755 root\n700 postgres");
    let size = docker(&["image", "inspect", "-f", "{{.Size}}", &image]);
    eprintln!("image {image}: {} MB", size.parse::<u64>().unwrap_or(0) / 1_000_000);
}
