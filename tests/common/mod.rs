//! Test harness: the real binary, real PostgreSQL, each node in its own temp directory on
//! its own loopback port. Tests run as root (as in a container), so the binary drops to the
//! `postgres` user; the temp directories are made traversable for it.
#![allow(dead_code)] // each test file uses a different part of the harness

pub mod backup;
pub mod certs;
pub mod docker;
pub mod etcd;
pub mod s3;
pub mod writer;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_pg-entrypoint");
/// On a primary: whether each replica's connection is encrypted, joined by commas ("" while
/// none is connected).
pub const REPLICATION_SSL: &str =
    "(SELECT coalesce(string_agg(s.ssl::text, ','), '') FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid))";

pub const PASSWORD: &str = "pw-1 'q' \"d\" \\b $x `t` ü";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique directory under /tmp, mode 0755 so the `postgres` user can reach PGDATA inside.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(format!("/tmp/pgep-{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A free TCP port on loopback.
/// A free TCP port for a server, below the kernel's ephemeral range (32768 and up), so that no
/// client socket of a parallel test is handed it between this choice and the server's bind,
/// and spread by process and time so that parallel tests rarely even try the same one.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    loop {
        hasher.write_usize(COUNTER.fetch_add(1, Ordering::SeqCst));
        let port = 20000 + (hasher.finish() % 12000) as u16;
        // [::] is dual-stack: free there means free for IPv4 too (postgres listens on both).
        let free =
            std::net::TcpListener::bind(("::", port)).or_else(|_| std::net::TcpListener::bind(("0.0.0.0", port)));
        if free.is_ok() {
            return port;
        }
    }
}

pub fn pg_bindir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server packages are installed")
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .collect();
    versions.sort();
    versions.pop().unwrap().1
}

/// One pg-entrypoint instance: its directory, environment and process.
pub struct Node {
    pub dir: TempDir,
    pub pgdata: PathBuf,
    pub port: u16,
    /// The HTTP endpoint's port (on loopback).
    pub http_port: u16,
    pub env: Vec<(String, String)>,
    pub child: Option<Child>,
    pub log: PathBuf,
    starts: usize,
}

impl Node {
    /// A standalone node with the superuser password set and its own port and socket dir.
    pub fn new(name: &str) -> Node {
        let dir = TempDir::new(name);
        let pgdata = dir.0.join("data");
        let (port, http_port) = (free_port(), free_port());
        let log = dir.0.join("log-0");
        let mut node = Node { log, dir, pgdata, port, http_port, env: Vec::new(), child: None, starts: 0 };
        node.set("PGDATA", &node.pgdata.display().to_string());
        node.set("POSTGRES_PASSWORD", PASSWORD);
        node.set("POSTGRESQL_CONFIG_PORT", &port.to_string());
        node.set("POSTGRESQL_CONFIG_UNIX_SOCKET_DIRECTORIES", &node.socket_dir().display().to_string());
        node.set("INIT_SCRIPTS_DIR", &node.dir.0.join("initdb.d").display().to_string());
        node.set("HTTP_PORT", &http_port.to_string()).set("HTTP_LISTEN", "127.0.0.1");
        node
    }

    /// `METHOD path` on the HTTP endpoint: status code and body ("" when none came).
    pub fn http(&self, method: &str, path: &str) -> (u16, String) {
        http_request(self.http_port, &format!("{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n"))
    }

    /// A directory every user may write to (init scripts run as `postgres`).
    pub fn scratch(&self) -> PathBuf {
        let dir = self.dir.0.join("scratch");
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        dir
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.dir.0.join("run")
    }

    /// Where the entrypoint keeps the replication password file: outside PGDATA, beside the socket.
    pub fn passfile(&self) -> PathBuf {
        self.socket_dir().join(format!("pg-entrypoint-{}.pgpass", self.port))
    }

    pub fn set(&mut self, key: &str, value: &str) -> &mut Node {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn unset(&mut self, key: &str) -> &mut Node {
        self.env.retain(|(k, _)| k != key);
        self
    }

    pub fn as_primary(&mut self) -> &mut Node {
        self.set("HA_MODE", "native").set("REPLICATION_ROLE", "primary").set("REPLICATION_PASSWORD", PASSWORD)
    }

    /// A replica of `primary` (both on loopback), named `name`.
    pub fn as_replica_of(&mut self, primary: &Node, name: &str) -> &mut Node {
        self.set("HA_MODE", "native")
            .set("REPLICATION_ROLE", "replica")
            .set("REPLICATION_PASSWORD", &primary.get("REPLICATION_PASSWORD").unwrap_or_else(|| PASSWORD.into()))
            .set("PRIMARY_HOST", "127.0.0.1")
            .set("PRIMARY_PORT", &primary.port.to_string())
            .set("REPLICA_NAME", name)
    }

    /// A secret file as docker/up.sh writes one: 0600, owned by root (the tests run as root).
    pub fn root_secret(&self, name: &str, value: &str) -> PathBuf {
        let dir = self.dir.0.join("secrets");
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        fs::write(&path, format!("{value}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// Adds an init script.
    pub fn script(&self, name: &str, contents: &[u8]) {
        let dir = self.dir.0.join("initdb.d");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(name), contents).unwrap();
    }

    pub fn command(&mut self, args: &[&str]) -> Command {
        self.wrapped_command(&[], args)
    }

    /// The entrypoint started through `wrapper` (e.g. `unshare --pid --fork`).
    pub fn wrapped_command(&mut self, wrapper: &[&str], args: &[&str]) -> Command {
        let mut argv: Vec<&str> = wrapper.to_vec();
        argv.push(BIN);
        argv.extend(args);
        self.command_line(&argv)
    }

    /// `argv` with this node's environment and log (e.g. the binary under another name).
    pub fn command_line(&mut self, argv: &[&str]) -> Command {
        self.log = self.dir.0.join(format!("log-{}", self.starts));
        self.starts += 1;
        let log = fs::File::create(&self.log).unwrap();
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group, so a test can kill the whole tree like a container stop.
            .process_group(0);
        cmd
    }

    /// Runs a one-shot subcommand (`health`, `status`, `promote`) with this node's environment,
    /// beside the running server: exit code and stdout + stderr.
    pub fn tool(&self, args: &[&str]) -> (i32, String) {
        let out = self.command_line_for_tool(args).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    }

    /// A one-shot subcommand with this node's environment, its output piped.
    pub fn command_line_for_tool(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Starts the entrypoint with these arguments and does not wait.
    pub fn spawn(&mut self, args: &[&str]) -> &mut Node {
        self.spawn_wrapped(&[], args)
    }

    pub fn spawn_wrapped(&mut self, wrapper: &[&str], args: &[&str]) -> &mut Node {
        assert!(self.child.is_none(), "already running");
        let child = self.wrapped_command(wrapper, args).spawn().unwrap();
        self.child = Some(child);
        self
    }

    /// Starts and waits until a password login over TCP works.
    pub fn start(&mut self) -> &mut Node {
        self.start_with_timeout(Duration::from_secs(60))
    }

    pub fn start_with_timeout(&mut self, timeout: Duration) -> &mut Node {
        self.spawn(&[]).wait_ready(timeout)
    }

    pub fn wait_ready(&mut self, timeout: Duration) -> &mut Node {
        let deadline = Instant::now() + timeout;
        loop {
            if self.try_connect().is_ok() {
                return self;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("pg-entrypoint exited with {status} before it was ready:\n{}", self.output());
            }
            assert!(Instant::now() < deadline, "not ready after {timeout:?}:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn superuser(&self) -> String {
        self.get_or_file("POSTGRES_USER").unwrap_or_else(|| "postgres".into())
    }

    /// `key`, or the contents of the file `key_FILE` names.
    pub fn get_or_file(&self, key: &str) -> Option<String> {
        let from_file = self.get(&format!("{key}_FILE")).and_then(|f| fs::read_to_string(f).ok());
        self.get(key).or(from_file.map(|u| u.trim_end().to_string()))
    }

    pub fn get(&self, key: &str) -> Option<String> {
        self.env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }

    pub fn try_connect(&self) -> Result<postgres::Client, postgres::Error> {
        let user = self.superuser();
        let db = self.get_or_file("POSTGRES_DB").unwrap_or_else(|| user.clone());
        self.connect_as(&user, &self.get_or_file("POSTGRES_PASSWORD").unwrap_or_default(), &db)
    }

    /// Over TCP, or the Unix socket where TLS_MODE=required rejects plaintext TCP (this client
    /// has no TLS; the TLS tests use psql).
    pub fn connect_as(&self, user: &str, password: &str, db: &str) -> Result<postgres::Client, postgres::Error> {
        let mut config = postgres::Config::new();
        if self.get("TLS_MODE").as_deref() == Some("required") {
            config.host_path(self.socket_dir());
        } else {
            config.host("127.0.0.1");
        }
        config
            .port(self.port)
            .user(user)
            .password(password)
            .dbname(db)
            .connect_timeout(Duration::from_secs(5))
            .connect(postgres::NoTls)
    }

    pub fn client(&self) -> postgres::Client {
        self.try_connect().unwrap_or_else(|e| panic!("cannot connect: {e}\n{}", self.output()))
    }

    /// One value from a query, as text.
    pub fn query_one(&self, sql: &str) -> String {
        let row = self.client().query_one(&format!("SELECT ({sql})::text"), &[]).unwrap();
        row.get(0)
    }

    /// Waits until `sql` returns `expected` here (replication is asynchronous), up to 30 s.
    pub fn eventually_equals(&self, sql: &str, expected: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let last: String = self
                .try_connect()
                .ok()
                .and_then(|mut c| c.query_one(&format!("SELECT ({sql})::text"), &[]).ok())
                .and_then(|r| r.get::<_, Option<String>>(0))
                .unwrap_or_default();
            if last == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{sql} = {last:?}, expected {expected:?} within 30 s:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn signal(&self, sig: i32) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::try_from(sig).unwrap(),
        )
        .unwrap();
    }

    /// Waits for the entrypoint to exit; returns its exit code and how long that took.
    pub fn wait_exit(&mut self, timeout: Duration) -> (i32, Duration) {
        let started = Instant::now();
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                use std::os::unix::process::ExitStatusExt;
                let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap());
                return (code, started.elapsed());
            }
            assert!(started.elapsed() < timeout, "still running after {timeout:?}:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, as `docker stop` sends, and the exit code.
    pub fn stop(&mut self) -> i32 {
        self.signal(libc_sigterm());
        self.wait_exit(Duration::from_secs(15)).0
    }

    /// Runs to completion (for runs expected to fail): exit code and output.
    pub fn run_to_exit(&mut self, args: &[&str]) -> (i32, String) {
        self.spawn(args);
        let (code, _) = self.wait_exit(Duration::from_secs(60));
        (code, self.output())
    }

    /// Kills the whole process group with SIGKILL, as when a container is killed.
    pub fn kill_all(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.pid());
        nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL).unwrap();
        self.wait_exit(Duration::from_secs(10));
        // Orphans of the killed group (postgres children) die with the postmaster; wait for them.
        wait_until(Duration::from_secs(10), || !group_alive(pgid.as_raw()));
    }

    /// The log of the current (or last) run.
    pub fn output(&self) -> String {
        // Lossy: a tool's message may quote bytes that are not UTF-8.
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Logs of every run so far.
    pub fn all_output(&self) -> String {
        (0..self.starts).map(|i| fs::read_to_string(self.dir.0.join(format!("log-{i}"))).unwrap_or_default()).collect()
    }

    pub fn controldata_state(&self) -> String {
        let out = Command::new(pg_bindir().join("pg_controldata")).arg(&self.pgdata).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix("Database cluster state:"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| panic!("no state in pg_controldata output: {text}"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            if let Some(c) = self.child.as_mut() {
                let _ = c.wait();
            }
        }
    }
}

/// Waits until `check` holds, up to `timeout`; fails naming `what`.
pub fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `sql` on `node`, or "" while it cannot answer.
pub fn try_query(node: &Node, sql: &str) -> String {
    node.try_connect()
        .ok()
        .and_then(|mut c| c.query_one(&format!("SELECT ({sql})::text"), &[]).ok())
        .and_then(|r| r.get::<_, Option<String>>(0))
        .unwrap_or_default()
}

pub fn libc_sigterm() -> i32 {
    nix::sys::signal::Signal::SIGTERM as i32
}

/// Sends `raw` to 127.0.0.1:`port` and reads the answer to its end: status code (0 when
/// nothing listens or the connection was closed without one) and body.
pub fn http_request(port: u16, raw: &str) -> (u16, String) {
    use std::io::Write;
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return (0, String::new()) };
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    stream.write_all(raw.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Polls `condition` every 10 ms; panics after `timeout`.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "condition not met within {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// True while any process is in process group `pgid`.
pub fn group_alive(pgid: i32) -> bool {
    processes().iter().any(|p| p.pgid == pgid && p.state != 'Z')
}

#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub state: char,
    pub cmdline: String,
}

/// A snapshot of /proc.
pub fn processes() -> Vec<Proc> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else { continue };
        // pid (comm) state ppid pgrp ...; comm may contain spaces, so split after ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let mut cmdline = String::new();
        if let Ok(mut file) = fs::File::open(entry.path().join("cmdline")) {
            let mut bytes = Vec::new();
            let _ = file.read_to_end(&mut bytes);
            cmdline = String::from_utf8_lossy(&bytes).replace('\0', " ");
        }
        out.push(Proc {
            pid,
            state: f[0].chars().next().unwrap_or('?'),
            ppid: f[1].parse().unwrap_or(0),
            pgid: f[2].parse().unwrap_or(0),
            cmdline,
        });
    }
    out
}

/// Runs psql against a node as `user` with `password` (through the environment of this
/// test-only client) and returns (success, stdout + stderr).
pub fn psql(node: &Node, conninfo: &str, password: &str, sql: &str) -> (bool, String) {
    let out = Command::new(pg_bindir().join("psql"))
        .arg(format!("host=127.0.0.1 port={} {conninfo}", node.port))
        .args(["-X", "-A", "-t", "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}
