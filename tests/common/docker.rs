//! Helpers of the Docker suites (tests/docker*.rs): the image under test, docker commands
//! that assert, readiness waits, and plain `docker run` clusters on their own network.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const SECRET: &str = "s3cret 'q' $x \\b";

pub fn image() -> String {
    std::env::var("PGEP_IMAGE").expect("PGEP_IMAGE names the image under test (docker/e2e.sh sets it)")
}

pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Runs docker and asserts success; returns stdout, trimmed.
pub fn docker(args: &[&str]) -> String {
    let out = run("docker", args);
    assert!(out.status.success(), "docker {args:?} failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn wait_healthy(id: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let state = docker(&["inspect", "-f", "{{.State.Status}} {{.State.Health.Status}}", id]);
        assert!(!state.starts_with("exited"), "container exited:\n{}", text(&run("docker", &["logs", id])));
        if state == "running healthy" {
            return;
        }
        if Instant::now() >= deadline {
            let health = docker(&["inspect", "-f", "{{json .State.Health}}", id]);
            panic!("container {id} not healthy within {timeout:?}: {health}\n{}", text(&run("docker", &["logs", id])));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One value from psql inside the container (local socket, trust).
pub fn sql(id: &str, query: &str) -> String {
    docker(&["exec", id, "psql", "-X", "-A", "-t", "-U", "postgres", "-c", query])
}

pub fn eventually_sql(id: &str, query: &str, expected: &str) {
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

/// `pg_controldata` on a volume, from a one-off container of the image.
pub fn cluster_state(volume: &str) -> String {
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

/// Plain `docker run` containers on a network of their own, removed with their volumes.
pub struct Cluster {
    tag: String,
    containers: Vec<String>,
}

impl Cluster {
    pub fn new(tag: &str) -> Cluster {
        let tag = format!("pgep-{tag}-{}", std::process::id());
        docker(&["network", "create", &tag]);
        Cluster { tag, containers: Vec::new() }
    }

    /// Starts container `name` on volume `volume` with the given role variables.
    pub fn start(&mut self, name: &str, volume: &str, env: &[(&str, &str)]) -> String {
        self.start_image(&image(), name, volume, env)
    }

    /// [`Cluster::start`] with another image (the upgrade suite's two majors).
    pub fn start_image(&mut self, image: &str, name: &str, volume: &str, env: &[(&str, &str)]) -> String {
        let base = [("POSTGRES_PASSWORD", SECRET), ("REPLICATION_PASSWORD", "rep pw"), ("HA_MODE", "native")];
        let mut args: Vec<String> = vec!["-v".into(), format!("{}:/var/lib/postgresql/data", self.volume(volume))];
        for (k, v) in base.iter().chain(env) {
            args.extend(["-e".into(), format!("{k}={v}")]);
        }
        self.run_detached(name, &args, image, &[])
    }

    /// `docker run -d` of `image` as container `name` on this network, with `docker_args`
    /// before the image and `command` after it.
    pub fn run_detached(&mut self, name: &str, docker_args: &[String], image: &str, command: &[&str]) -> String {
        let name = self.host(name);
        let mut args: Vec<String> = ["run", "-d", "--name", &name, "--hostname", &name, "--network", &self.tag]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--health-interval".into(), "1s".into()]);
        args.extend(docker_args.iter().cloned());
        args.push(image.into());
        args.extend(command.iter().map(|s| s.to_string()));
        docker(&args.iter().map(String::as_str).collect::<Vec<_>>());
        self.containers.push(name.clone());
        name
    }

    /// The name of this cluster's volume `name` (removed with the cluster).
    pub fn volume(&self, name: &str) -> String {
        format!("{}-{name}", self.tag)
    }

    pub fn host(&self, name: &str) -> String {
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
