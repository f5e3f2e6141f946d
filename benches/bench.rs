//! `cargo bench --bench bench` (as root): pg-entrypoint next to bare PostgreSQL tools doing the
//! same work, on this machine, in one run. Every ratio comes from paired rounds: each round
//! runs ours and bare back to back (which goes first alternates), the ratio is taken per
//! round, and the report gives its median and interquartile range, with a verdict only when
//! the whole range is on one side of the target; these machines are too noisy for one
//! median against another. Prints a table and writes BENCHMARKS.md. `BENCH_ROUNDS` (default
//! 15), `BENCH_CLONE_ROUNDS` (default 5), `BENCH_CLONE_MB` (default 1024, the TLS clone) and
//! `BENCH_CLONE_SIZES` (default 100,1024,4096 MB: clone cost as the primary grows) scale it;
//! `BENCH_FILES` (default 30000) relation files for the restart and ownership cases;
//! `BENCH_FAILOVERS` (default 3) leader kills under Patroni; `BENCH_BACKUP_SIZES` (default
//! 1024,4096 MB) and `BENCH_BACKUP_ROUNDS` (default 3) the backup cases; `BENCH_SWITCHOVERS`
//! (default 5) planned switchovers, native and Patroni's. `BENCH_ONLY=patroni`,
//! `BENCH_ONLY=tls`, `BENCH_ONLY=growth`, `BENCH_ONLY=restart`, `BENCH_ONLY=metrics`,
//! `BENCH_ONLY=backup` or `BENCH_ONLY=switchover` runs and prints those alone.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(default)
}

/// Rounds of the quick cases (first boot, restart, shutdown).
fn rounds() -> usize {
    env_count("BENCH_ROUNDS", 15)
}

/// Rounds of each clone case (two clones per round).
fn clone_rounds() -> usize {
    env_count("BENCH_CLONE_ROUNDS", 5)
}

/// Per round, seconds for ours and for bare, measured back to back.
#[derive(Default)]
struct Paired {
    ours: Vec<f64>,
    bare: Vec<f64>,
}

impl Paired {
    /// `rounds` rounds of `ours` and `bare`; ours goes first in even rounds.
    fn run(rounds: usize, mut ours: impl FnMut() -> f64, mut bare: impl FnMut() -> f64) -> Paired {
        let mut p = Paired::default();
        for round in 0..rounds {
            let (o, b) = if round % 2 == 0 {
                let o = ours();
                (o, bare())
            } else {
                let b = bare();
                (ours(), b)
            };
            p.ours.push(o);
            p.bare.push(b);
        }
        p
    }

    /// The row: medians of each side, and the per-round ratio's median and interquartile
    /// range against `at_most` (a verdict only when the range is on one side of it).
    fn row(self, case: &str, at_most: Option<f64>, target: &str) -> Row {
        let ratios: Vec<f64> = self.ours.iter().zip(&self.bare).map(|(o, b)| o / b).collect();
        let n = ratios.len();
        let (q1, mid, q3) = (percentile(ratios.clone(), 25.0), median(ratios.clone()), percentile(ratios, 75.0));
        let verdict = match at_most {
            Some(t) if q3 <= t => ": met",
            Some(t) if q1 > t => ": missed",
            Some(_) => ": undecided",
            None => "",
        };
        Row {
            case: case.into(),
            ours: ms(median(self.ours)),
            bare: ms(median(self.bare)),
            ratio: format!("{mid:.2} (IQR {q1:.2}–{q3:.2}, {n} rounds)"),
            target: format!("{target}{verdict}"),
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A password login over TCP as `postgres`.
fn login(port: u16) -> Result<postgres::Client, postgres::Error> {
    postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .password(PASSWORD)
        .dbname("postgres")
        .connect(postgres::NoTls)
}

/// Polls a password login over TCP every 2 ms (finer than the test harness).
fn wait_login(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if login(port).is_ok() {
            return;
        }
        assert!(Instant::now() < deadline, "no login on port {port} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A bare PostgreSQL tool run as the `postgres` user with the environment the benchmark
/// gives pg-entrypoint (only PATH), as the entrypoint runs them.
fn as_postgres(tool: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.env_clear().env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    c.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"]).arg(pg_bindir().join(tool));
    c.stdout(Stdio::null()).stderr(Stdio::null());
    c
}

fn chown_postgres(path: &Path) {
    assert!(Command::new("chown").arg("postgres:postgres").arg(path).status().unwrap().success());
}

/// A bare server: `postgres -D dir -p port -k dir`, logging to a file.
fn bare_postgres(dir: &Path, port: u16, extra: &[&str]) -> Child {
    let log = fs::File::create(dir.parent().unwrap().join("bare.log")).unwrap();
    as_postgres("postgres")
        .arg("-D")
        .arg(dir)
        .args(["-p", &port.to_string(), "-k"])
        .arg(dir.parent().unwrap().join("run"))
        .args(["-c", "listen_addresses=127.0.0.1"])
        .args(extra)
        .stderr(log)
        .spawn()
        .unwrap()
}

fn stop_bare(mut child: Child) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    child.wait().unwrap();
}

/// A directory for a bare cluster, reachable and writable by `postgres`.
fn bare_dir(tmp: &TempDir) -> PathBuf {
    let run = tmp.0.join("run");
    fs::create_dir_all(&run).unwrap();
    chown_postgres(&run);
    let data = tmp.0.join("bare");
    fs::create_dir_all(&data).unwrap();
    fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    chown_postgres(&data);
    data
}

/// Init script number `i`: one table.
fn script_sql(i: usize) -> String {
    format!("CREATE TABLE s{i} (a int);\n")
}

/// Bare first boot: initdb with a password file; with `scripts` init scripts, what the
/// official image's script does by hand (a temporary server on the socket only, one psql per
/// script, a stop); then postgres, until a password login works.
fn bare_first_boot(scripts: usize) -> (f64, TempDir, PathBuf, u16) {
    let tmp = TempDir::new("bench-bare");
    let data = bare_dir(&tmp);
    let pwfile = tmp.0.join("pw");
    fs::write(&pwfile, PASSWORD).unwrap();
    chown_postgres(&pwfile);
    for i in 0..scripts {
        fs::write(tmp.0.join(format!("{i:03}.sql")), script_sql(i)).unwrap();
    }
    let (port, run) = (free_port(), tmp.0.join("run"));
    let started = Instant::now();
    let ok = as_postgres("initdb")
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "--auth-host=scram-sha-256", "--auth-local=trust", "--pwfile"])
        .arg(&pwfile)
        .status()
        .unwrap()
        .success();
    assert!(ok, "bare initdb failed");
    if scripts > 0 {
        let temp = bare_postgres(&data, port, &["-c", "listen_addresses="]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while postgres::Config::new().host_path(&run).port(port).user("postgres").connect(postgres::NoTls).is_err() {
            assert!(Instant::now() < deadline, "the bare temporary server did not start");
            std::thread::sleep(Duration::from_millis(2));
        }
        for i in 0..scripts {
            let ok = as_postgres("psql")
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-h"])
                .arg(&run)
                .args(["-p", &port.to_string(), "-f"])
                .arg(tmp.0.join(format!("{i:03}.sql")))
                .status()
                .unwrap()
                .success();
            assert!(ok, "bare psql failed");
        }
        stop_bare(temp);
    }
    let server = bare_postgres(&data, port, &[]);
    wait_login(port, Duration::from_secs(60));
    let took = started.elapsed().as_secs_f64();
    stop_bare(server);
    (took, tmp, data, port)
}

/// Seconds from starting a bare postgres on `data` to a password login over TCP; then a stop.
fn bare_restart(data: &Path, port: u16) -> f64 {
    let started = Instant::now();
    let server = bare_postgres(data, port, &[]);
    wait_login(port, Duration::from_secs(60));
    let took = started.elapsed().as_secs_f64();
    stop_bare(server);
    took
}

fn ours_first_boot() -> (f64, Node) {
    let mut node = Node::new("bench-ours");
    (timed_start(&mut node), node)
}

/// Seconds from starting the entrypoint to a password login over TCP; then a clean stop.
fn timed_start(node: &mut Node) -> f64 {
    let started = Instant::now();
    node.spawn(&[]);
    wait_login(node.port, Duration::from_secs(60));
    let took = started.elapsed().as_secs_f64();
    assert_eq!(node.stop(), 0);
    took
}

struct Row {
    case: String,
    ours: String,
    bare: String,
    ratio: String,
    target: String,
}

fn ms(seconds: f64) -> String {
    format!("{:.0} ms", seconds * 1000.0)
}

/// Restarts of one standalone cluster on each side, paired.
fn restart() -> Row {
    let (_, mut node) = ours_first_boot();
    let (_, _bare_tmp, data, port) = bare_first_boot(0);
    let restart = Paired::run(rounds(), || timed_start(&mut node), || bare_restart(&data, port));
    restart.row("restart to ready (standalone)", Some(1.05), "≤ 1.05")
}

/// Medians side by side, for figures that are not paired rounds (probe latencies).
fn side_by_side(case: &str, ours: Vec<f64>, bare: Vec<f64>, target: &str) -> Row {
    let (o, b) = (median(ours), median(bare));
    Row { case: case.into(), ours: ms(o), bare: ms(b), ratio: format!("{:.2}", o / b), target: target.into() }
}

fn main() {
    assert!(nix::unistd::geteuid().is_root(), "run the benchmark as root, as the entrypoint runs in a container");
    // Printed only: BENCHMARKS.md keeps the table of a full run.
    let only = match std::env::var("BENCH_ONLY").as_deref() {
        Ok("patroni") => Some(patroni_failover(env_count("BENCH_FAILOVERS", 3))),
        Ok("tls") => Some(tls_cost()),
        Ok("growth") => Some(growth()),
        Ok("restart") => Some(vec![restart()]),
        Ok("metrics") => Some(metrics_scrapes()),
        Ok("backup") => Some(backups()),
        Ok("switchover") => Some(switchovers(env_count("BENCH_SWITCHOVERS", 5))),
        _ => None,
    };
    if let Some(rows) = only {
        for r in rows {
            println!("| {} | {} | {} | {} | {} |", r.case, r.ours, r.bare, r.ratio, r.target);
        }
        return;
    }
    let mut rows = Vec::new();

    // 1: first boot, a new cluster each time on both sides.
    let first_boot = Paired::run(rounds(), || ours_first_boot().0, || bare_first_boot(0).0);
    rows.push(first_boot.row("first boot to ready, no init scripts (TCP password login)", Some(1.05), "≤ 1.05"));

    // 2: restart of one standalone cluster on each side.
    rows.push(restart());

    // 3: as the work grows: clones of larger primaries, many relation files, init scripts,
    // the ownership repair of a foreign-owned volume.
    rows.extend(growth());

    // 4: SIGTERM with 50 idle clients and one in a long transaction.
    rows.push(shutdown(rounds()));

    // 5 and 6: footprint and health latency on one running server.
    rows.extend(footprint_and_health());

    // 7: the HTTP endpoint: probe latency, and its cost to the supervisor under probes.
    rows.extend(http_endpoint());

    // 7b: /metrics: scrape latency, and its cost to the supervisor when scraped every second.
    rows.extend(metrics_scrapes());

    // 8: HA_MODE=patroni: a killed leader under synchronous load, BENCH_FAILOVERS times.
    rows.extend(patroni_failover(env_count("BENCH_FAILOVERS", 3)));

    // 9: TLS: first boot and a clone with TLS next to the same without.
    rows.extend(tls_cost());

    // 10: backups with pgBackRest: backup, restore at start, PITR, archive delay.
    rows.extend(backups());

    // 11: planned switchovers under writes: native (direct, HAProxy, PgBouncer) and Patroni's.
    rows.extend(switchovers(env_count("BENCH_SWITCHOVERS", 5)));

    let binary = fs::metadata(release_binary()).map(|m| m.len()).unwrap_or(0);
    print_and_write(&rows, binary);
}

/// TLS next to no TLS, both ours, in paired rounds: a first boot with certificate files (the
/// "ours" column) against one without, and a clone of BENCH_CLONE_MB over verify-full against
/// one over plaintext from the same primary (TLS on, plaintext still allowed).
fn tls_cost() -> Vec<Row> {
    let certs = TempDir::new("bench-tls-certs");
    let ca = common::certs::Ca::new("bench CA");
    let ca_file = ca.write(&certs.0, "ca.crt").display().to_string();
    let pair = ca.issue(&certs.0, "server", "db", &["localhost", "127.0.0.1"], false);
    let (cert, key) = (pair.cert.display().to_string(), pair.key.display().to_string());
    let tls = |node: &mut Node| {
        node.set("TLS_MODE", "on").set("TLS_CERT_FILE", &cert).set("TLS_KEY_FILE", &key).set("TLS_CA_FILE", &ca_file);
    };
    let boot = |with_tls: bool| {
        let mut node = Node::new("bench-tls-boot");
        if with_tls {
            tls(&mut node);
        }
        timed_start(&mut node)
    };
    let first_boot = Paired::run(rounds(), || boot(true), || boot(false));

    let mb: u64 = std::env::var("BENCH_CLONE_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let mut primary = Node::new("bench-tls-primary");
    primary.as_primary();
    tls(&mut primary);
    primary.start();
    fill(&primary, mb);
    let size = primary.query_one("pg_size_pretty(pg_database_size('postgres'))");
    let round = std::cell::Cell::new(0);
    let clone = |with_tls: bool| {
        round.set(round.get() + 1);
        let slot = format!("bench_tls{}", round.get());
        let mut replica = Node::new("bench-tls-replica");
        replica.as_replica_of(&primary, &slot);
        if with_tls {
            tls(&mut replica); // verify-full: a CA is given
        } else {
            replica.set("REPLICATION_SSLMODE", "disable");
        }
        let started = Instant::now();
        replica.spawn(&[]);
        wait_streaming_login(replica.port, Duration::from_secs(120), &|| replica.output());
        let took = started.elapsed().as_secs_f64();
        let encrypted = primary.query_one(&format!(
            "(SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) WHERE application_name = '{slot}')"
        ));
        assert_eq!(encrypted, with_tls.to_string(), "the clone's stream is {encrypted}");
        assert_eq!(replica.stop(), 0);
        drop(replica);
        primary.client().batch_execute(&format!("SELECT pg_drop_replication_slot('{slot}')")).unwrap();
        took
    };
    let clones = Paired::run(clone_rounds(), || clone(true), || clone(false));
    assert_eq!(primary.stop(), 0);
    vec![
        first_boot.row("first boot, TLS on (ours with TLS; bare column: ours without)", None, "—"),
        clones.row(&format!("replica bootstrap, verify-full TLS vs plaintext ({size} primary)"), None, "—"),
    ]
}

/// About `mb` MB of data: 200 rows of 5 kB per MB, stored uncompressed (EXTERNAL), so the
/// clone copies what the size says.
fn fill(node: &Node, mb: u64) {
    if mb == 0 {
        return;
    }
    node.client()
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS fill (g int, pad text); ALTER TABLE fill ALTER pad SET STORAGE EXTERNAL;
             INSERT INTO fill SELECT g, repeat(md5(g::text), 156) FROM generate_series(1, {}) g; CHECKPOINT;",
            mb * 200
        ))
        .unwrap();
}

/// The cases whose cost grows with the work, each next to the bare tools doing the same work.
fn growth() -> Vec<Row> {
    let mut rows = replica_bootstrap(clone_rounds());
    rows.extend(many_files(rounds()));
    // With none, a first boot is case 1.
    for scripts in [10, 100] {
        rows.push(init_scripts(rounds(), scripts));
    }
    rows
}

/// `count` empty tables (a relation file each), in transactions of 1000 (each holds a lock
/// per table until it commits).
fn create_tables(port: u16, count: usize) {
    let mut client = login(port).unwrap();
    for start in (0..count).step_by(1000) {
        let end = (start + 1000).min(count) - 1;
        client
            .batch_execute(&format!(
                "DO $$ BEGIN FOR i IN {start}..{end} LOOP EXECUTE format('CREATE TABLE f_%s (a int)', i); END LOOP; END $$"
            ))
            .unwrap();
    }
}

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| if e.file_type().unwrap().is_dir() { 1 + count_files(&e.path()) } else { 1 })
        .sum()
}

/// `chown -R` of `dir` to `owner`, as a volume made elsewhere arrives.
fn chown_tree(dir: &Path, owner: &str) {
    assert!(Command::new("chown").arg("-R").arg(owner).arg(dir).status().unwrap().success());
}

/// A restart with BENCH_FILES relation files (start-up must do no per-file work while the
/// ownership is right), and the ownership repair of that volume owned by another uid next to
/// `chown -R` and a start.
fn many_files(n: usize) -> Vec<Row> {
    let tables = env_count("BENCH_FILES", 30_000);
    let (_, mut node) = ours_first_boot();
    let (_, _bare_tmp, data, port) = bare_first_boot(0);
    node.start();
    create_tables(node.port, tables);
    assert_eq!(node.stop(), 0);
    let server = bare_postgres(&data, port, &[]);
    wait_login(port, Duration::from_secs(60));
    create_tables(port, tables);
    stop_bare(server);
    let files = count_files(&node.pgdata);
    let restart = Paired::run(n, || timed_start(&mut node), || bare_restart(&data, port));
    let restart = restart.row(&format!("restart to ready, {files} files in PGDATA"), Some(1.05), "≤ 1.05");
    let repair = Paired::run(
        n,
        || {
            chown_tree(&node.pgdata, "1000:1000");
            timed_start(&mut node)
        },
        || {
            chown_tree(&data, "1000:1000");
            let started = Instant::now();
            chown_tree(&data, "postgres:postgres");
            started.elapsed().as_secs_f64() + bare_restart(&data, port)
        },
    );
    let per_second = files as f64 / median(repair.ours.clone());
    let mut repair = repair.row(
        &format!("ownership repair + start, {files} files of another uid (bare: chown -R + start)"),
        Some(1.05),
        "≤ 1.05",
    );
    repair.ours = format!("{} ({per_second:.0} files/s)", repair.ours);
    vec![restart, repair]
}

/// First boot with `scripts` init scripts (`.sql`, one table each), next to the official
/// image's way done by hand ([`bare_first_boot`]).
fn init_scripts(n: usize, scripts: usize) -> Row {
    let ours = || {
        let mut node = Node::new("bench-scripts");
        for i in 0..scripts {
            node.script(&format!("{i:03}.sql"), script_sql(i).as_bytes());
        }
        timed_start(&mut node)
    };
    Paired::run(n, ours, || bare_first_boot(scripts).0).row(
        &format!("first boot with {scripts} init scripts"),
        Some(1.05),
        "≤ 1.05",
    )
}

/// Clone to streaming from one primary filled up to each of `BENCH_CLONE_SIZES` in turn.
fn replica_bootstrap(n: usize) -> Vec<Row> {
    let sizes: Vec<u64> = std::env::var("BENCH_CLONE_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .filter(|v: &Vec<u64>| !v.is_empty())
        .unwrap_or(vec![100, 1024, 4096]);
    let mut primary = Node::new("bench-primary");
    primary.as_primary().start();
    let mut filled = 0;
    let mut round = 0;
    let mut rows = Vec::new();
    for mb in sizes {
        fill(&primary, mb.saturating_sub(filled));
        filled = filled.max(mb);
        rows.push(clone_rounds_of(&primary, n, &mut round));
    }
    assert_eq!(primary.stop(), 0);
    rows
}

fn clone_rounds_of(primary: &Node, n: usize, round: &mut usize) -> Row {
    let bytes: f64 = primary.query_one("(SELECT sum(pg_database_size(oid)) FROM pg_database)::float8").parse().unwrap();
    let mb = bytes / (1024.0 * 1024.0);
    let clones = Paired::run(
        n,
        || {
            *round += 1;
            let slot = format!("bench_r{round}");
            let mut replica = Node::new("bench-replica");
            replica.as_replica_of(primary, &slot);
            let started = Instant::now();
            replica.spawn(&[]);
            wait_streaming_login(replica.port, Duration::from_secs(60), &|| replica.output());
            let took = started.elapsed().as_secs_f64();
            assert_eq!(replica.stop(), 0);
            drop(replica);
            primary.client().batch_execute(&format!("SELECT pg_drop_replication_slot('{slot}')")).unwrap();
            took
        },
        || bare_clone(primary.port),
    );
    let speed = |seconds: f64| format!("{} ms ({:.0} MB/s)", (seconds * 1000.0).round(), mb / seconds);
    let (ours, bare) = (median(clones.ours.clone()), median(clones.bare.clone()));
    let mut row = clones.row(&format!("replica bootstrap to streaming ({mb:.0} MB primary)"), Some(1.05), "≤ 1.05");
    (row.ours, row.bare) = (speed(ours), speed(bare));
    row
}

/// Bare: pg_basebackup with the same options, standby.signal and conninfo, postgres, until
/// a login works and the WAL receiver streams.
fn bare_clone(primary_port: u16) -> f64 {
    let tmp = TempDir::new("bench-bare-replica");
    let data = bare_dir(&tmp);
    let pgpass = tmp.0.join("pgpass");
    fs::write(&pgpass, format!("*:*:*:replicator:{}\n", PASSWORD.replace('\\', "\\\\").replace(':', "\\:"))).unwrap();
    nix::unistd::chown(&pgpass, Some(postgres_uid()), None).unwrap();
    fs::set_permissions(&pgpass, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let conninfo = format!("host=127.0.0.1 port={primary_port} user=replicator passfile={}", pgpass.display());
    let port = free_port();
    let started = Instant::now();
    let ok = as_postgres("pg_basebackup")
        .arg("-D")
        .arg(&data)
        .args(["-d", &conninfo, "--wal-method=stream", "--checkpoint=fast", "-R"])
        .status()
        .unwrap()
        .success();
    assert!(ok, "bare pg_basebackup failed");
    let server = bare_postgres(&data, port, &[]);
    let bare_log = tmp.0.join("bare.log");
    wait_streaming_login(port, Duration::from_secs(60), &|| fs::read_to_string(&bare_log).unwrap_or_default());
    let took = started.elapsed().as_secs_f64();
    stop_bare(server);
    took
}

fn postgres_uid() -> nix::unistd::Uid {
    let out = Command::new("id").args(["-u", "postgres"]).output().unwrap();
    nix::unistd::Uid::from_raw(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap())
}

/// A login works and the WAL receiver streams; `log` explains a failure.
fn wait_streaming_login(port: u16, timeout: Duration, log: &dyn Fn() -> String) {
    let deadline = Instant::now() + timeout;
    loop {
        let streaming = login(port)
            .ok()
            .and_then(|mut c| {
                c.query_one("SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'", &[]).ok()
            })
            .is_some_and(|r| r.get::<_, i64>(0) == 1);
        if streaming {
            return;
        }
        assert!(Instant::now() < deadline, "replica on {port} not streaming within {timeout:?}:\n{}", log());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn shutdown(n: usize) -> Row {
    let mut clean = 0;
    let mut node = Node::new("bench-stop");
    node.start();
    assert_eq!(node.stop(), 0);
    let (pgdata, socket_dir, port) = (node.pgdata.clone(), node.socket_dir(), node.port);
    let stops = Paired::run(
        n,
        || {
            node.start();
            let clients = hold_clients(node.port);
            let started = Instant::now();
            node.signal(libc_sigterm());
            let (code, _) = node.wait_exit(Duration::from_secs(30));
            let took = started.elapsed().as_secs_f64();
            if code == 0 && node.controldata_state() == "shut down" {
                clean += 1;
            }
            drop(clients);
            took
        },
        || {
            // The same cluster under a bare postgres, stopped with SIGINT (fast).
            let server = as_postgres("postgres")
                .arg("-D")
                .arg(&pgdata)
                .args(["-c", &format!("unix_socket_directories={}", socket_dir.display())])
                .spawn()
                .unwrap();
            wait_login(port, Duration::from_secs(60));
            let clients = hold_clients(port);
            let started = Instant::now();
            stop_bare(server);
            let took = started.elapsed().as_secs_f64();
            drop(clients);
            took
        },
    );
    let mut row = stops.row("SIGTERM → exit, 50 idle clients + 1 open transaction", None, "< 2 s, clean 100 %");
    row.ours = format!("{} (clean {clean}/{n})", row.ours);
    row
}

/// 50 idle connections and one in an open transaction holding a lock.
fn hold_clients(port: u16) -> Vec<postgres::Client> {
    let mut clients: Vec<postgres::Client> = (0..50).map(|_| login(port).unwrap()).collect();
    let mut busy = login(port).unwrap();
    busy.batch_execute("CREATE TABLE IF NOT EXISTS held (x int); BEGIN; LOCK TABLE held; INSERT INTO held VALUES (1);")
        .unwrap();
    clients.push(busy);
    clients
}

fn cpu_ticks(pid: i32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn rss_kib(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

fn footprint_and_health() -> Vec<Row> {
    let mut node = Node::new("bench-footprint");
    node.start();
    let pid = node.pid();
    let bindir = pg_bindir();
    let pgbench = |args: &[&str]| {
        let ok = Command::new(bindir.join("pgbench"))
            .args(["-h", "127.0.0.1", "-p", &node.port.to_string(), "-U", "postgres"])
            .args(args)
            .arg("postgres")
            .env("PGPASSWORD", PASSWORD)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "pgbench {args:?} failed");
    };
    pgbench(&["-i", "-s", "10", "-q"]);
    let ticks_before = cpu_ticks(pid);
    let seconds = std::env::var("BENCH_LOAD_SECONDS").unwrap_or_else(|_| "60".into());
    pgbench(&["-c", "8", "-j", "2", "-T", &seconds]);
    let ticks = cpu_ticks(pid) - ticks_before;
    let rss = rss_kib(pid);

    // Health: ours (connect over the socket, one query) next to pg_isready (connect only).
    let (mut ours, mut bare) = (vec![], vec![]);
    for _ in 0..21 {
        let started = Instant::now();
        assert_eq!(node.tool(&["health"]).0, 0);
        ours.push(started.elapsed().as_secs_f64());
        let started = Instant::now();
        let ok = Command::new(bindir.join("pg_isready"))
            .args(["-q", "-h"])
            .arg(node.socket_dir())
            .args(["-p", &node.port.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        bare.push(started.elapsed().as_secs_f64());
    }
    assert_eq!(node.stop(), 0);
    let hz = 100.0; // USER_HZ on Linux
    vec![
        Row {
            case: "supervisor RSS while postgres runs".into(),
            ours: format!("{:.2} MiB", rss as f64 / 1024.0),
            bare: "–".into(),
            ratio: "–".into(),
            target: "≤ 2 MiB".into(),
        },
        Row {
            case: format!("supervisor CPU during {seconds} s of pgbench (8 clients)"),
            ours: format!("{:.2} s", ticks as f64 / hz),
            bare: "–".into(),
            ratio: "–".into(),
            target: "~0".into(),
        },
        side_by_side("health probe (vs pg_isready)", ours, bare, "median < 20 ms"),
    ]
}

/// The `p`-th percentile (0–100) of `v`, nearest rank.
fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

/// The HTTP endpoint: `GET /primary` latency next to pg_isready (a process per probe, as an
/// exec probe runs), then the supervisor's RSS and CPU while a balancer probes it 10 times a
/// second, next to a supervisor with the endpoint off over the same time.
fn http_endpoint() -> Vec<Row> {
    let mut on = Node::new("bench-http-on");
    on.start();
    let mut off = Node::new("bench-http-off");
    off.set("HTTP_PORT", "off").start();
    let bindir = pg_bindir();
    let mut probes = Vec::new();
    for _ in 0..500 {
        let started = Instant::now();
        assert_eq!(on.http("GET", "/primary").0, 200);
        probes.push(started.elapsed().as_secs_f64());
    }
    let mut isready = Vec::new();
    for _ in 0..51 {
        let started = Instant::now();
        let ok = Command::new(bindir.join("pg_isready"))
            .args(["-q", "-h"])
            .arg(on.socket_dir())
            .args(["-p", &on.port.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        isready.push(started.elapsed().as_secs_f64());
    }
    let cost = supervisor_cost(
        &on,
        &off,
        Duration::from_millis(100),
        || assert_eq!(on.http("OPTIONS", "/primary").0, 200),
        "endpoint probed 10×/s",
        "endpoint off",
    );
    assert_eq!(on.stop(), 0);
    assert_eq!(off.stop(), 0);
    let mut rows = vec![latency_row(
        "HTTP probe `GET /primary` p50 / p99 (bare: pg_isready)",
        probes,
        isready,
        "well under 10 ms",
    )];
    rows.extend(cost);
    rows
}

/// `GET /metrics` on a primary with one streaming replica: latency next to `GET /health` (the
/// probe it shares a connection with), then the supervisor's RSS and CPU while Prometheus
/// would scrape it every second, next to its replica's supervisor, not scraped, over the
/// same time.
fn metrics_scrapes() -> Vec<Row> {
    let mut primary = Node::new("bench-metrics");
    primary.as_primary().start();
    let mut replica = Node::new("bench-metrics-replica");
    replica.as_replica_of(&primary, "b1").start();
    let get = |node: &Node, path: &str| {
        let started = Instant::now();
        let (code, body) = node.http("GET", path);
        assert_eq!(code, 200, "{body}");
        started.elapsed().as_secs_f64()
    };
    let (mut scrapes, mut health) = (Vec::new(), Vec::new());
    for _ in 0..500 {
        scrapes.push(get(&primary, "/metrics"));
        health.push(get(&primary, "/health"));
    }
    let cost = supervisor_cost(
        &primary,
        &replica,
        Duration::from_secs(1),
        || {
            get(&primary, "/metrics");
        },
        "scraped 1×/s",
        "its replica, not scraped",
    );
    assert_eq!(replica.stop(), 0);
    assert_eq!(primary.stop(), 0);
    let mut rows = vec![latency_row(
        "`GET /metrics` p50 / p99, primary with one replica (bare: `GET /health`)",
        scrapes,
        health,
        "p99 < 10 ms",
    )];
    rows.extend(cost);
    rows
}

/// p50 / p99 of `ours` beside `bare`, in milliseconds.
fn latency_row(case: &str, ours: Vec<f64>, bare: Vec<f64>, target: &str) -> Row {
    let (p50, p99) = (percentile(ours.clone(), 50.0), percentile(ours, 99.0));
    let (b50, b99) = (percentile(bare.clone(), 50.0), percentile(bare, 99.0));
    Row {
        case: case.into(),
        ours: format!("{:.2} / {:.2} ms", p50 * 1000.0, p99 * 1000.0),
        bare: format!("{:.2} / {:.2} ms", b50 * 1000.0, b99 * 1000.0),
        ratio: format!("{:.2}", p50 / b50),
        target: target.into(),
    }
}

/// The supervisor's resident set and CPU while `load` runs once every `every` for
/// `BENCH_LOAD_SECONDS` (default 60), next to `idle`'s over the same time.
fn supervisor_cost(
    loaded: &Node,
    idle: &Node,
    every: Duration,
    mut load: impl FnMut(),
    what: &str,
    baseline: &str,
) -> [Row; 2] {
    let seconds: u64 = std::env::var("BENCH_LOAD_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let (ticks_on, ticks_off) = (cpu_ticks(loaded.pid()), cpu_ticks(idle.pid()));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        let started = Instant::now();
        load();
        std::thread::sleep(every.saturating_sub(started.elapsed()));
    }
    let hz = 100.0; // USER_HZ on Linux
    let cpu_on = (cpu_ticks(loaded.pid()) - ticks_on) as f64 / hz;
    let cpu_off = (cpu_ticks(idle.pid()) - ticks_off) as f64 / hz;
    let (rss_on, rss_off) = (rss_kib(loaded.pid()), rss_kib(idle.pid()));
    let mib = |kib: u64| format!("{:.2} MiB", kib as f64 / 1024.0);
    let cpu = |s: f64| format!("{s:.2} s ({:.2} % of a core)", 100.0 * s / seconds as f64);
    [
        Row {
            case: format!("supervisor RSS, {what} for {seconds} s (bare: {baseline})"),
            ours: mib(rss_on),
            bare: mib(rss_off),
            ratio: format!("{:.2}", rss_on as f64 / rss_off as f64),
            target: "< 4 MiB".into(),
        },
        Row {
            case: format!("supervisor CPU, {what} for {seconds} s (bare: {baseline})"),
            ours: cpu(cpu_on),
            bare: cpu(cpu_off),
            ratio: "–".into(),
            target: "< 1 % of a core".into(),
        },
    ]
}

fn release_binary() -> PathBuf {
    PathBuf::from(BIN)
}

fn print_and_write(rows: &[Row], binary: u64) {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let date = String::from_utf8_lossy(&Command::new("date").arg("-u").arg("+%Y-%m-%d").output().unwrap().stdout)
        .trim()
        .to_string();
    let version =
        String::from_utf8_lossy(&Command::new(pg_bindir().join("postgres")).arg("--version").output().unwrap().stdout)
            .trim()
            .to_string();
    let mut md = String::new();
    writeln!(md, "# Benchmarks\n").unwrap();
    writeln!(
        md,
        "`cargo bench --bench bench` (as root), {date}, {} cores ({cpu}), {version}. bare = the PostgreSQL tools \
         alone doing the same work. Ratios come from paired rounds: each round runs ours and bare back to back, \
         alternating which goes first, and the ratio is taken per round; the table gives its median and \
         interquartile range, and a target is met or missed only when the whole range is on one side of it \
         (else undecided). Latencies are medians of many probes.\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    )
    .unwrap();
    writeln!(md, "| case | pg-entrypoint | bare PostgreSQL | ratio | target |\n|---|---|---|---|---|").unwrap();
    for r in rows {
        writeln!(md, "| {} | {} | {} | {} | {} |", r.case, r.ours, r.bare, r.ratio, r.target).unwrap();
    }
    // Named from the repository, not from the machine that ran the bench.
    let bin = release_binary();
    let shown = bin.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap_or(&bin);
    writeln!(md, "\nBinary (`{}`): {:.2} MiB.", shown.display(), binary as f64 / (1024.0 * 1024.0)).unwrap();
    println!("{md}");
    let out = concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md");
    let notes = fs::read_to_string(out)
        .ok()
        .and_then(|old| old.split_once("\n## Notes").map(|(_, n)| format!("\n## Notes{n}")))
        .unwrap_or_default();
    fs::write(out, format!("{md}{notes}")).unwrap();
    eprintln!("written to {out}");
}

/// Three Patroni members (synchronous mode) on a real etcd. Each round: commits on the leader,
/// the leader's whole process group killed (as `docker kill`), the time until another member
/// takes a write, the acknowledged commits that member lacks; the killed one rejoins before
/// the next round. The baseline is Patroni's own bound: the leader key's TTL plus one loop.
fn patroni_failover(rounds: usize) -> Vec<Row> {
    let etcd = common::etcd::Etcd::start();
    let mut nodes = patroni_cluster(&etcd, "bench", &[("REPLICATION_SYNCHRONOUS_MODE", "on")]);
    let old = leader(&nodes).unwrap();
    nodes[old].client().batch_execute("CREATE TABLE acks (n int PRIMARY KEY)").unwrap();
    let (mut times, mut acked, mut missing) = (Vec::new(), 0usize, 0usize);
    for round in 0..rounds {
        wait_until(Duration::from_secs(180), || settled(&nodes));
        let old = leader(&nodes).unwrap();
        // Only the synchronous standby Patroni recorded may take over; a kill before the new
        // leader has recorded one leaves the cluster without a leader (docs/patroni.md).
        wait_until(Duration::from_secs(60), || nodes[old].has_sync_standby());
        let mut client = nodes[old].client();
        let mut mine = Vec::new();
        for i in 0..300 {
            let n = (round * 1000 + i) as i32;
            client.execute("INSERT INTO acks VALUES ($1)", &[&n]).unwrap();
            mine.push(n);
        }
        nodes[old].kill_member();
        let killed = Instant::now();
        // The first write another member takes (Patroni's /primary may say 200 a moment
        // before the promotion makes it writable).
        let marker = format!("INSERT INTO acks VALUES ({})", -(round as i32) - 1);
        let new = loop {
            let taken = (0..3).filter(|i| *i != old).find(|i| {
                nodes[*i].patroni("/primary") == 200
                    && nodes[*i].try_connect().is_ok_and(|mut c| c.batch_execute(&marker).is_ok())
            });
            if let Some(i) = taken {
                break i;
            }
            if killed.elapsed() > Duration::from_secs(120) {
                // Every node's log but the lines repeated at every loop.
                let repeated = ["waiting for WAL", "not the healthiest", "no action", "Lock owner"];
                let logs: Vec<String> = nodes
                    .iter()
                    .map(|n| {
                        let text = n.all_output();
                        text.lines().filter(|l| !repeated.iter().any(|r| l.contains(r))).collect::<Vec<_>>().join("\n")
                    })
                    .collect();
                panic!(
                    "round {round}: no new leader 120 s after the kill of member {old}:\n{}",
                    logs.join("\n=====\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        times.push(killed.elapsed().as_secs_f64());
        let mut c = nodes[new].client();
        let present: std::collections::HashSet<i32> =
            c.query("SELECT n FROM acks", &[]).unwrap().iter().map(|r| r.get(0)).collect();
        acked += mine.len();
        missing += mine.iter().filter(|n| !present.contains(n)).count();
        nodes[old].spawn(&[]);
    }
    for node in nodes.iter_mut() {
        node.stop();
    }
    let spread = {
        let mut t = times.clone();
        t.sort_by(f64::total_cmp);
        format!("{:.1}–{:.1} s", t[0], t[t.len() - 1])
    };
    vec![
        Row {
            case: format!("Patroni: killed leader to a write on the new one ({rounds} kills, median; range {spread})"),
            ours: format!("{:.1} s", median(times)),
            bare: "25 s (ttl 20 + loop_wait 5)".into(),
            ratio: String::new(),
            target: "≤ ttl + loop_wait".into(),
        },
        Row {
            case: "Patroni: acknowledged commits missing after the failovers (synchronous mode)".into(),
            ours: format!("{missing} of {acked}"),
            bare: String::new(),
            ratio: String::new(),
            target: "0".into(),
        },
    ]
}

/// `program` run as `postgres` with only PATH in its environment.
fn as_postgres_program(program: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.env_clear().env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    c.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--", program]);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    c
}

fn mb_per_s(mb: u64, seconds: f64) -> String {
    format!("{:.0} MB/s", mb as f64 / seconds)
}

/// Backups with pgBackRest next to bare pgBackRest run by hand with the same options (the
/// configuration file pg-entrypoint wrote), on the same database and repository: a full backup
/// of each size, a restore at start to a TCP login (the RTO) and a point-in-time restore; then
/// how long a finished WAL segment waits before it is in the repository under pgbench (the RPO
/// under load; idle, archive_timeout bounds it).
fn backups() -> Vec<Row> {
    let sizes: Vec<u64> = std::env::var("BENCH_BACKUP_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1024, 4096]);
    let rounds = env_count("BENCH_BACKUP_ROUNDS", 3);
    let mut rows = Vec::new();
    for mb in sizes {
        let mut node = Node::new("bench-backup");
        let repo = node.dir.0.join("repo");
        node.set("PGBACKREST_ENABLE", "true").set("PGBACKREST_REPO1_PATH", &repo.display().to_string());
        node.start();
        wait_until(Duration::from_secs(120), || node.tool(&["status"]).1.contains("\"checked\""));
        fill(&node, mb);
        let conf = node.socket_dir().join(format!("pg-entrypoint-{}.pgbackrest.conf", node.port));
        let ours = || {
            let started = Instant::now();
            let (code, out) = node.tool(&["backup", "full"]);
            assert_eq!(code, 0, "{out}");
            started.elapsed().as_secs_f64()
        };
        let bare = || {
            let started = Instant::now();
            let ok = as_postgres_program("pgbackrest")
                .arg(format!("--config={}", conf.display()))
                .args(["--stanza=main", "--log-level-console=info", "backup", "--type=full"])
                .status()
                .unwrap()
                .success();
            assert!(ok, "bare pgbackrest backup failed");
            started.elapsed().as_secs_f64()
        };
        let backup = Paired::run(rounds, ours, bare);
        let (o, b) = (median(backup.ours.clone()), median(backup.bare.clone()));
        let mut row = backup.row(
            &format!("full backup of {mb} MB (posix repository, pgBackRest defaults)"),
            Some(1.05),
            "≤ 1.05",
        );
        row.ours = format!("{} ({})", row.ours, mb_per_s(mb, o));
        row.bare = format!("{} ({})", row.bare, mb_per_s(mb, b));
        rows.push(row);

        // Restore at start, to the end of the archive, and to a point in time.
        node.client().batch_execute("CREATE TABLE marks (at timestamptz DEFAULT clock_timestamp())").unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        let target: String = node.client().query_one("SELECT clock_timestamp()::text", &[]).unwrap().get(0);
        node.client().batch_execute("INSERT INTO marks DEFAULT VALUES; SELECT pg_switch_wal()").unwrap();
        let segment = node.query_one("pg_walfile_name(pg_current_wal_lsn() - 1)");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let archived = node.query_one("coalesce((SELECT last_archived_wal FROM pg_stat_archiver), '')");
            if archived >= segment {
                break;
            }
            assert!(Instant::now() < deadline, "{segment} not archived (last: {archived}):\n{}", node.output());
            std::thread::sleep(Duration::from_millis(100));
        }
        for (case, extra) in [
            ("restore at start to ready, latest (RTO)", vec![]),
            (
                "restore at start to ready, to a point in time",
                vec![("PGBACKREST_RESTORE_TYPE", "time"), ("PGBACKREST_RESTORE_TARGET", target.as_str())],
            ),
        ] {
            let ours = || {
                let mut restored = Node::new("bench-restore");
                restored.set("PGBACKREST_ENABLE", "true").set("PGBACKREST_REPO1_PATH", &repo.display().to_string());
                // The restored cluster's own password, not a new one.
                restored.set("PGBACKREST_RESTORE", "true");
                for (k, v) in &extra {
                    restored.set(k, v);
                }
                // Its archive goes elsewhere: the benchmark's repository stays as it was.
                restored.set("PGBACKREST_ARCHIVE_ENABLE", "false");
                let started = Instant::now();
                restored.spawn(&[]);
                wait_login(restored.port, Duration::from_secs(600));
                let took = started.elapsed().as_secs_f64();
                assert_eq!(restored.stop(), 0);
                took
            };
            let bare = || {
                let tmp = TempDir::new("bench-bare-restore");
                let data = bare_dir(&tmp);
                let port = free_port();
                let started = Instant::now();
                let mut restore = as_postgres_program("pgbackrest");
                restore.arg(format!("--config={}", conf.display())).args(["--stanza=main", "restore"]);
                restore.arg(format!("--pg1-path={}", data.display()));
                match extra.iter().find(|(k, _)| *k == "PGBACKREST_RESTORE_TARGET") {
                    Some((_, t)) => {
                        restore.args(["--type=time", "--target-action=promote"]).arg(format!("--target={t}"))
                    }
                    None => restore.arg("--type=default"),
                };
                assert!(restore.status().unwrap().success(), "bare pgbackrest restore failed");
                // Login only once promoted, as ours: no reads during recovery.
                let server = bare_postgres(&data, port, &["-c", "hot_standby=off", "-c", "archive_mode=off"]);
                wait_login(port, Duration::from_secs(600));
                let took = started.elapsed().as_secs_f64();
                stop_bare(server);
                took
            };
            let restore = Paired::run(rounds, ours, bare);
            let (o, b) = (median(restore.ours.clone()), median(restore.bare.clone()));
            let mut row = restore.row(&format!("{case}, {mb} MB"), Some(1.05), "≤ 1.05");
            row.ours = format!("{} ({})", row.ours, mb_per_s(mb, o));
            row.bare = format!("{} ({})", row.bare, mb_per_s(mb, b));
            rows.push(row);
        }
        if mb == 1024 {
            rows.push(archive_delay(&node));
        }
        assert_eq!(node.stop(), 0);
    }
    rows
}

/// Under pgbench for 60 s: for each WAL segment finished, how long until the repository has
/// it (pg_stat_archiver), median and max. The same archive-push either way: the baseline is
/// the bound when idle, archive_timeout.
fn archive_delay(node: &Node) -> Row {
    let pgbench = pg_bindir().join("pgbench");
    let env = |c: &mut Command| {
        c.env("PGPASSWORD", PASSWORD).args(["-h", "127.0.0.1", "-p", &node.port.to_string(), "-U", "postgres"]);
    };
    let mut init = Command::new(&pgbench);
    env(&mut init);
    assert!(init
        .args(["-i", "-s", "10", "-q", "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success());
    let mut load = Command::new(&pgbench);
    env(&mut load);
    let mut load = load
        .args(["-c", "4", "-T", "60", "-n", "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Segments finished and not yet archived, with when each was finished.
    let mut pending: Vec<(String, Instant)> = Vec::new();
    let mut delays = Vec::new();
    let mut client = node.client();
    let mut writing: Option<String> = None;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(62) {
        let row = client
            .query_one(
                "SELECT pg_walfile_name(pg_current_wal_lsn()), coalesce(last_archived_wal, '') FROM pg_stat_archiver",
                &[],
            )
            .unwrap();
        let (current, archived): (String, String) = (row.get(0), row.get(1));
        if let Some(previous) = writing.replace(current.clone()).filter(|p| *p != current) {
            pending.push((previous, Instant::now()));
        }
        pending.retain(|(segment, finished)| {
            let archived_now = archived.as_str() >= segment.as_str();
            if archived_now {
                delays.push(finished.elapsed().as_secs_f64());
            }
            !archived_now
        });
        std::thread::sleep(Duration::from_millis(20));
    }
    load.wait().unwrap();
    let max = delays.iter().cloned().fold(0.0, f64::max);
    Row {
        case: format!("archive delay under pgbench -c 4 (RPO), {} segments", delays.len()),
        ours: format!("{} median, {} max", ms(median(delays.clone())), ms(max)),
        bare: "idle bound: archive_timeout 60 s".into(),
        ratio: "—".into(),
        target: "a segment in the repository within seconds".into(),
    }
}

/// HAProxy on `port` in front of `members` (postgres port, HTTP port), with docker/haproxy.cfg's
/// write listener as it is (checks, timeouts, sessions cut on a member marked down), loopback
/// addresses instead of names.
fn local_haproxy(dir: &Path, port: u16, members: &[(u16, u16)]) -> Child {
    let mut cfg = String::from(
        "global\n    maxconn 256\ndefaults\n    mode tcp\n    timeout connect 1s\n    retries 2\n    option redispatch\n    \
         timeout client 30m\n    timeout server 30m\n    timeout check 2s\n",
    );
    let _ = write!(
        cfg,
        "listen primary\n    bind 127.0.0.1:{port}\n    option httpchk\n    http-check send meth OPTIONS uri /primary\n    \
         http-check expect status 200\n    default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions\n"
    );
    for (i, (pg, http)) in members.iter().enumerate() {
        let _ = writeln!(cfg, "    server m{i} 127.0.0.1:{pg} check port {http}");
    }
    let path = dir.join("haproxy.cfg");
    fs::write(&path, cfg).unwrap();
    Command::new("haproxy").args(["-db", "-f"]).arg(&path).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
}

/// Summary of write pauses: "median (max)".
fn pauses(seconds: &[f64]) -> String {
    let max = seconds.iter().copied().fold(0.0, f64::max);
    format!("{} (max {})", ms(median(seconds.to_vec())), ms(max))
}

/// Planned switchovers under a steady load, `rounds` times back and forth: the longest time
/// between two acknowledged writes as a client saw it (direct with a multi-host connection
/// and target_session_attrs=read-write, through HAProxy, through the old primary's PgBouncer
/// in transaction mode), next to Patroni's switchover on a Patroni cluster measured the same
/// way (direct). Acknowledged writes missing on the new primary are counted.
fn switchovers(rounds: usize) -> Vec<Row> {
    use common::writer::Writer;
    let mut nodes: Vec<Node> = (0..3).map(|i| Node::new(&format!("bench-so-{i}"))).collect();
    let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
    let (p_port, pooler_ports): (u16, Vec<u16>) = (nodes[0].port, (0..3).map(|_| free_port()).collect());
    for (i, node) in nodes.iter_mut().enumerate() {
        let others: Vec<String> = (0..3).filter(|j| *j != i).map(|j| addresses[j].clone()).collect();
        if i == 0 {
            node.as_primary();
        } else {
            node.set("HA_MODE", "native")
                .set("REPLICATION_ROLE", "replica")
                .set("REPLICATION_PASSWORD", PASSWORD)
                .set("PRIMARY_HOST", "127.0.0.1")
                .set("PRIMARY_PORT", &p_port.to_string())
                .set("REPLICA_NAME", &format!("r{i}"));
        }
        node.set("REPLICATION_PEERS", &others.join(","))
            .set("PGBOUNCER_ENABLE", "true")
            .set("PGBOUNCER_POOL_MODE", "transaction")
            .set("PGBOUNCER_LISTEN_ADDR", "127.0.0.1")
            .set("PGBOUNCER_LISTEN_PORT", &pooler_ports[i].to_string());
        node.start_with_timeout(Duration::from_secs(120));
    }
    let streaming = |node: &Node| {
        node.try_connect()
            .ok()
            .and_then(|mut c| c.query_one("SELECT status FROM pg_stat_wal_receiver", &[]).ok())
            .is_some_and(|r| r.get::<_, String>(0) == "streaming")
    };
    nodes[0].client().batch_execute("CREATE TABLE acked (id int PRIMARY KEY)").unwrap();
    let members: Vec<(u16, u16)> = nodes.iter().map(|n| (n.port, n.http_port)).collect();
    let tmp = TempDir::new("bench-haproxy");
    let haproxy_port = free_port();
    let mut haproxy = local_haproxy(&tmp.0, haproxy_port, &members);
    let all_ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
    let (mut direct, mut through_haproxy, mut pooled) = (Vec::new(), Vec::new(), Vec::new());
    let (mut acked, mut missing, mut pooled_errors) = (0usize, 0usize, 0usize);
    let mut primary = 0;
    for round in 0..rounds {
        let next = if primary == 0 { 1 } else { 0 };
        wait_until_or(
            Duration::from_secs(60),
            || (0..3).filter(|i| *i != primary).all(|i| streaming(&nodes[i])),
            || format!("round {round}: the standbys do not stream"),
        );
        let base = (round * 3_000_000) as i32;
        let writers = [
            Writer::to_ports_from(&all_ports, base, PASSWORD),
            Writer::to_ports_from(&[haproxy_port], base + 1_000_000, PASSWORD),
            Writer::to_ports_from(&[pooler_ports[primary]], base + 2_000_000, PASSWORD),
        ];
        wait_until_or(
            Duration::from_secs(60),
            || writers.iter().all(|w| w.count() > 100),
            || {
                format!(
                    "round {round}: writes before: {:?}\n{}",
                    writers.iter().map(Writer::count).collect::<Vec<_>>(),
                    nodes[primary].output()
                )
            },
        );
        let (code, out) = nodes[2].tool(&["switchover", "--to", &addresses[next]]);
        assert_eq!(code, 0, "round {round}: {out}");
        let counts: Vec<usize> = writers.iter().map(Writer::count).collect();
        wait_until_or(
            Duration::from_secs(60),
            || writers.iter().zip(&counts).all(|(w, c)| w.count() > c + 100),
            || {
                format!(
                    "round {round}: writes after: {:?} (before {counts:?})\n{}",
                    writers.iter().map(Writer::count).collect::<Vec<_>>(),
                    nodes[primary].output()
                )
            },
        );
        let mut client = nodes[next].client();
        for (k, writer) in writers.into_iter().enumerate() {
            let (ids, gap, errors) = writer.finish_with_errors();
            let present: i64 =
                client.query_one("SELECT count(*) FROM acked WHERE id = ANY($1)", &[&ids]).unwrap().get(0);
            acked += ids.len();
            missing += ids.len() - present as usize;
            match k {
                0 => direct.push(gap.as_secs_f64()),
                1 => through_haproxy.push(gap.as_secs_f64()),
                _ => {
                    pooled.push(gap.as_secs_f64());
                    pooled_errors += errors.len();
                }
            }
        }
        primary = next;
    }
    haproxy.kill().ok();
    haproxy.wait().ok();
    for node in nodes.iter_mut() {
        node.stop();
    }
    let patroni = patroni_switchovers(rounds);
    let row = |case: String, ours: String, bare: String, target: &str| Row {
        case,
        ours,
        bare,
        ratio: String::new(),
        target: target.into(),
    };
    vec![
        row(
            format!("native switchover: write pause, direct multi-host client ({rounds} rounds, median and max)"),
            pauses(&direct),
            format!("Patroni's switchover: {}", pauses(&patroni.0)),
            "< 2 s",
        ),
        row(
            format!("native switchover: write pause through HAProxy ({rounds} rounds)"),
            pauses(&through_haproxy),
            String::new(),
            "< 2 s",
        ),
        row(
            format!("native switchover: write pause through the old primary's PgBouncer ({rounds} rounds)"),
            format!("{}, {pooled_errors} client errors", pauses(&pooled)),
            String::new(),
            "< 2 s, 0 errors",
        ),
        row(
            "switchovers: acknowledged writes missing on the new primary".into(),
            format!("{missing} of {acked}"),
            format!("Patroni: {} of {}", patroni.1, patroni.2),
            "0",
        ),
    ]
}

/// Patroni's switchover (through `pg-entrypoint switchover`) on a three-member Patroni cluster
/// in its default (asynchronous) mode: the write pauses a direct multi-host client saw, and
/// acknowledged writes missing / written.
fn patroni_switchovers(rounds: usize) -> (Vec<f64>, usize, usize) {
    use common::writer::Writer;
    let etcd = common::etcd::Etcd::start();
    let mut nodes = patroni_cluster(&etcd, "benchso", &[]);
    let first = leader(&nodes).unwrap();
    nodes[first].client().batch_execute("CREATE TABLE acked (id int PRIMARY KEY)").unwrap();
    let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
    let (mut gaps, mut acked, mut missing) = (Vec::new(), 0usize, 0usize);
    for round in 0..rounds {
        wait_until(Duration::from_secs(180), || settled(&nodes));
        let old = leader(&nodes).unwrap();
        let writer = Writer::to_ports_from(&ports, (round * 1_000_000) as i32, common::etcd::PATRONI_PASSWORD);
        wait_until_or(
            Duration::from_secs(60),
            || writer.count() > 100,
            || format!("Patroni round {round}: {} writes, errors {:?}", writer.count(), writer.errors()),
        );
        let (code, out) = nodes[old].tool(&["switchover"]);
        assert_eq!(code, 0, "Patroni switchover, round {round}: {out}");
        let before = writer.count();
        wait_until(Duration::from_secs(120), || writer.count() > before + 100 && leader(&nodes) != Some(old));
        let (ids, gap, _) = writer.finish_with_errors();
        let new = leader(&nodes).unwrap();
        let present: i64 =
            nodes[new].client().query_one("SELECT count(*) FROM acked WHERE id = ANY($1)", &[&ids]).unwrap().get(0);
        acked += ids.len();
        missing += ids.len() - present as usize;
        gaps.push(gap.as_secs_f64());
    }
    for node in nodes.iter_mut() {
        node.stop();
    }
    (gaps, missing, acked)
}

/// Three Patroni members on `etcd` (scope `scope`, with `env`), started and settled: a leader
/// and two replicas.
fn patroni_cluster(etcd: &common::etcd::Etcd, scope: &str, env: &[(&str, &str)]) -> Vec<Node> {
    let nodes: Vec<Node> = (1..=3)
        .map(|i| {
            let mut node = Node::new(&format!("{scope}-{i}"));
            node.as_patroni_member(etcd, scope, &format!("m{i}"));
            for (key, value) in env {
                node.set(key, value);
            }
            node.spawn(&[]);
            node
        })
        .collect();
    wait_until(Duration::from_secs(180), || settled(&nodes));
    nodes
}

/// The member that is the writable leader, if any.
fn leader(nodes: &[Node]) -> Option<usize> {
    (0..nodes.len()).find(|i| nodes[*i].patroni("/primary") == 200)
}

/// A leader and two streaming replicas.
fn settled(nodes: &[Node]) -> bool {
    leader(nodes).is_some() && (0..nodes.len()).filter(|i| nodes[*i].patroni("/replica") == 200).count() == 2
}

/// `wait_until`, saying what was waited for (and what `why` finds then) when it times out.
fn wait_until_or(timeout: Duration, mut condition: impl FnMut() -> bool, why: impl Fn() -> String) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "not within {timeout:?}: {}", why());
        std::thread::sleep(Duration::from_millis(50));
    }
}
