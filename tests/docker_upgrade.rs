//! The major-version upgrade on a real Docker engine (docs/upgrade.md):
//! volumes made by the PostgreSQL 15 image, started by the 17 upgrade image. Run by
//! docker/e2e.sh with PGEP_OLD_IMAGE and PGEP_UPGRADE_IMAGE set; `--ignored` otherwise.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::docker::*;

fn old_image() -> String {
    std::env::var("PGEP_OLD_IMAGE").expect("PGEP_OLD_IMAGE names the PostgreSQL 15 image (docker/e2e.sh sets it)")
}

fn upgrade_image() -> String {
    std::env::var("PGEP_UPGRADE_IMAGE").expect("PGEP_UPGRADE_IMAGE names the 17 upgrade image (docker/e2e.sh sets it)")
}

const PRIMARY: (&str, &str) = ("REPLICATION_ROLE", "primary");
const AUTO: (&str, &str) = ("POSTGRES_UPGRADE", "auto");
const WORK: &str = "pgsql_tmp.pg-entrypoint-upgrade";

/// What a user checks after the upgrade, as one line per fact.
const FACTS: &str = "SELECT concat_ws(' | ', \
    (SELECT count(*) FROM pgbench_accounts), (SELECT sum(abalance) FROM pgbench_accounts), \
    (SELECT count(*) FROM words), (SELECT string_agg(w, ',' ORDER BY w) FROM (SELECT w FROM words ORDER BY w LIMIT 5) f), \
    (SELECT h -> 'k' FROM kv))";

/// A PostgreSQL 15 volume with pgbench tables, a table of words with a (collation-sensitive)
/// index, a sequence, an hstore column (an extension of both majors), an `ALTER SYSTEM`
/// setting, a postgresql.conf edit and `extra`; stopped cleanly. Returns the facts.
fn populate(c: &mut Cluster, volume: &str, name: &str, words: u32, extra: &str) -> String {
    let id = c.start_image(&old_image(), name, volume, &[PRIMARY]);
    wait_healthy(&id, Duration::from_secs(120));
    docker(&["exec", &id, "pgbench", "-i", "-q", "-s", "2", "-U", "postgres", "postgres"]);
    docker(&["exec", &id, "pgbench", "-t", "200", "-U", "postgres", "postgres"]);
    let setup = format!(
        "CREATE TABLE words (w text); \
         INSERT INTO words SELECT md5(i::text) || CASE i % 3 WHEN 0 THEN 'Ä' WHEN 1 THEN 'a' ELSE 'B' END \
           FROM generate_series(1, {words}) i; \
         CREATE INDEX words_w ON words (w); \
         CREATE SEQUENCE ids; SELECT nextval('ids') FROM generate_series(1, 3); \
         CREATE EXTENSION hstore; CREATE TABLE kv (h hstore); INSERT INTO kv VALUES ('k=>v1'); {extra}"
    );
    let alter = "ALTER SYSTEM SET work_mem = '12MB'";
    docker(&["exec", &id, "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-c", &setup, "-c", alter]);
    docker(&["exec", &id, "sh", "-c", "echo \"log_min_duration_statement = 1234\" >> \"$PGDATA/postgresql.conf\""]);
    let facts = sql(&id, FACTS);
    assert_eq!(sql(&id, "SELECT current_setting('server_version_num')::int / 10000"), "15");
    docker(&["stop", &id]);
    assert_eq!(docker(&["wait", &id]), "0");
    facts
}

/// The volume's directory on this machine (the suite runs as root beside the engine).
fn mountpoint(c: &Cluster, volume: &str) -> PathBuf {
    PathBuf::from(docker(&["volume", "inspect", "-f", "{{.Mountpoint}}", &c.volume(volume)]))
}

/// A digest of every file's path and contents in the volume.
fn checksum(c: &Cluster, volume: &str) -> String {
    let mount = format!("{}:/data", c.volume(volume));
    docker(&[
        "run",
        "--rm",
        "-v",
        &mount,
        &old_image(),
        "sh",
        "-c",
        "cd /data && find . -type f | sort | xargs sha256sum | sha256sum",
    ])
}

/// Asserts what a user expects of an upgraded server; the sequence (at 3 before) gives `next`.
fn assert_upgraded(id: &str, facts: &str, next: &str) {
    assert_eq!(sql(id, "SELECT current_setting('server_version_num')::int / 10000"), "17");
    assert_eq!(sql(id, FACTS), facts, "the data after the upgrade");
    assert_eq!(sql(id, "SELECT nextval('ids')"), next, "the sequence goes on");
    // The index answers as a scan of the table does (it was rebuilt for the new glibc).
    let by_index =
        sql(id, "SET enable_seqscan = off; SET enable_bitmapscan = off; SELECT count(*) FROM words WHERE w > 'm'");
    let by_table =
        sql(id, "SET enable_indexscan = off; SET enable_bitmapscan = off; SELECT count(*) FROM words WHERE w > 'm'");
    assert_eq!(by_index, by_table);
    assert_eq!(
        sql(id, "SELECT count(*) FROM pg_database WHERE datcollversion <> pg_database_collation_actual_version(oid)"),
        "0",
        "every database records the new C library's collation version"
    );
    assert_eq!(sql(id, "SHOW work_mem"), "12MB", "ALTER SYSTEM settings are kept");
    assert_eq!(sql(id, "SHOW log_min_duration_statement"), "1234ms", "postgresql.conf edits are kept");
}

fn wait_exit(id: &str, timeout: Duration) -> i32 {
    let deadline = Instant::now() + timeout;
    loop {
        let state = docker(&["inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", id]);
        if let Some(code) = state.strip_prefix("exited ") {
            return code.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "{id} still running after {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn logs(id: &str) -> String {
    text(&run("docker", &["logs", id]))
}

/// While container `id` runs and its real server has not been started, a local client and the
/// health check ask on the public socket as often as they can: how many times, and what
/// answered. Neither may reach one of the upgrade's servers (the old major, or the new one
/// that is about to stop).
fn watch_public_socket(id: &str) -> std::thread::JoinHandle<(usize, Vec<String>)> {
    let id = id.to_string();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut asked = 0;
        loop {
            let show = ["exec", &id, "psql", "-X", "-A", "-t", "-U", "postgres", "-c", "SHOW server_version_num"];
            let psql = run("docker", &show);
            let health = run("docker", &["exec", &id, "pg-entrypoint", "health"]);
            // Once the real server was started, an answer may be its own: the watch ends.
            if logs(&id).contains("postgres started") || docker(&["inspect", "-f", "{{.State.Running}}", &id]) != "true"
            {
                break;
            }
            asked += 1;
            if psql.status.success() {
                seen.push(format!("psql: {}", String::from_utf8_lossy(&psql.stdout).trim()));
            }
            if health.status.success() {
                seen.push(format!("health: {}", text(&health).trim()));
            }
        }
        (asked, seen)
    })
}

#[test]
#[ignore = "needs Docker and the 15 and 17-upgrade images: docker/e2e.sh"]
fn a_15_volume_is_refused_without_the_variable_then_upgraded_in_place_its_indexes_rebuilt() {
    let mut c = Cluster::new("upg");
    let facts = populate(&mut c, "data", "p15", 20_000, "");
    let before = checksum(&c, "data");

    let refused = c.start_image(&upgrade_image(), "refused", "data", &[PRIMARY]);
    assert_eq!(wait_exit(&refused, Duration::from_secs(60)), 78);
    let said = logs(&refused);
    assert!(
        said.contains("holds a PostgreSQL 15 cluster and this image runs PostgreSQL 17")
            && said.contains("POSTGRES_UPGRADE=auto"),
        "{said}"
    );
    assert!(!said.contains("FATAL"), "refused before postgres ran: {said}");
    assert_eq!(checksum(&c, "data"), before, "the volume is unchanged");

    // POSTGRES_UPGRADE_REINDEX=false: upgraded, then stopped at the indexes to rebuild.
    let no_reindex =
        c.start_image(&upgrade_image(), "noreindex", "data", &[PRIMARY, AUTO, ("POSTGRES_UPGRADE_REINDEX", "false")]);
    let watcher = watch_public_socket(&no_reindex);
    assert_eq!(wait_exit(&no_reindex, Duration::from_secs(120)), 1);
    let (asked, seen) = watcher.join().unwrap();
    println!("asked the public socket {asked} times during pg_upgrade");
    assert!(asked > 0, "the watch never asked while pg_upgrade ran");
    assert!(seen.is_empty(), "pg_upgrade's servers answered on the public socket: {seen:?}");
    let said = logs(&no_reindex);
    assert!(
        said.contains(
            "1 index(es) use a collation whose version changed and may return wrong results: postgres: public.words_w"
        ),
        "{said}"
    );
    let stage = mountpoint(&c, "data").join(WORK).join("stage");
    assert_eq!(std::fs::read_to_string(&stage).unwrap(), "installed");

    let started = Instant::now();
    let id = c.start_image(&upgrade_image(), "p17", "data", &[PRIMARY, AUTO]);
    let watcher = watch_public_socket(&id);
    wait_healthy(&id, Duration::from_secs(300));
    println!("the upgrade's first start finished: healthy after {:.1} s", started.elapsed().as_secs_f64());
    let (asked, seen) = watcher.join().unwrap();
    println!("asked the public socket {asked} times during the first start");
    assert!(seen.is_empty(), "the first start's server answered on the public socket: {seen:?}");
    assert_upgraded(&id, &facts, "4");
    assert_eq!(sql(&id, "SELECT h -> 'k' FROM kv WHERE h ? 'k'"), "v1", "hstore works on 17");
    // The planner statistics come back in the background.
    eventually_sql(&id, "SELECT count(*) > 0 FROM pg_stats WHERE tablename = 'pgbench_accounts'", "t");
    wait_for("vacuumdb's end in the log", Duration::from_secs(60), || logs(&id).contains("planner statistics rebuilt"));
    let said = logs(&id);
    assert!(said.contains("rebuilding indexes whose collation version changed"), "{said}");
    // A client is no longer warned about the collation version.
    let session = run("docker", &["exec", &id, "psql", "-X", "-U", "postgres", "-c", "SELECT 1"]);
    assert!(!text(&session).contains("collation version mismatch"), "{}", text(&session));
    // The old cluster is kept where pg_basebackup does not look, stage done.
    let work = mountpoint(&c, "data").join(WORK);
    assert_eq!(std::fs::read_to_string(work.join("stage")).unwrap(), "done");
    assert_eq!(std::fs::read_to_string(work.join("old/PG_VERSION")).unwrap().trim(), "15");
    // A restart is an ordinary start of a 17 cluster.
    docker(&["restart", &id]);
    wait_healthy(&id, Duration::from_secs(120));
    assert_upgraded(&id, &facts, "5");
}

#[test]
#[ignore = "needs Docker and the 15 and 17-upgrade images: docker/e2e.sh"]
fn an_extension_17_lacks_fails_the_check_and_the_15_cluster_stays() {
    let mut c = Cluster::new("upgext");
    // adminpack was removed in PostgreSQL 17.
    let facts = populate(&mut c, "data", "p15", 1_000, "CREATE EXTENSION adminpack;");
    let id = c.start_image(&upgrade_image(), "p17", "data", &[PRIMARY, AUTO]);
    assert_eq!(wait_exit(&id, Duration::from_secs(120)), 1);
    let said = logs(&id);
    assert!(said.contains("could not load library \"$libdir/adminpack\""), "pg_upgrade's list is shown: {said}");
    assert!(
        said.contains("pg_upgrade --check failed") && said.contains("the PostgreSQL 15 cluster is back in PGDATA"),
        "{said}"
    );
    let back = c.start_image(&old_image(), "back15", "data", &[PRIMARY]);
    wait_healthy(&back, Duration::from_secs(120));
    assert_eq!(sql(&back, FACTS), facts);
    assert_eq!(sql(&back, "SELECT extname FROM pg_extension WHERE extname = 'adminpack'"), "adminpack");
}

/// Polls the volume (from this machine, every 5 ms) until `ready`, then `docker kill`s `id`.
fn kill_when(id: &str, what: &str, timeout: Duration, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}:\n{}", logs(id));
        std::thread::sleep(Duration::from_millis(5));
    }
    docker(&["kill", id]);
    assert_ne!(wait_exit(id, Duration::from_secs(30)), 0);
    println!("killed {what}");
}

#[test]
#[ignore = "needs Docker and the 15 and 17-upgrade images: docker/e2e.sh"]
fn kills_during_pg_upgrade_and_during_the_first_start_end_in_the_old_cluster_or_a_finished_upgrade() {
    let mut c = Cluster::new("upgkill");
    // Enough words that rebuilding their index keeps the first start busy for a while.
    let facts = populate(&mut c, "data", "p15", 400_000, "");
    let work = mountpoint(&c, "data").join(WORK);

    // Killed while pg_upgrade links the files (the old pg_control is renamed meanwhile).
    let id = c.start_image(&upgrade_image(), "kill1", "data", &[PRIMARY, AUTO]);
    let control_old = work.join("old/global/pg_control.old");
    kill_when(&id, "during pg_upgrade --link", Duration::from_secs(120), || control_old.exists());
    // The 15 image rolls it back and runs the old cluster with all its data.
    let back = c.start_image(&old_image(), "back15", "data", &[PRIMARY]);
    wait_healthy(&back, Duration::from_secs(120));
    assert_eq!(sql(&back, "SELECT current_setting('server_version_num')::int / 10000"), "15");
    assert_eq!(sql(&back, FACTS), facts);
    assert!(logs(&back).contains("the old cluster is back in PGDATA"), "{}", logs(&back));
    assert!(!work.exists());
    docker(&["stop", &back]);

    // Killed during the first start of the upgraded cluster (its temporary server).
    let id = c.start_image(&upgrade_image(), "kill2", "data", &[PRIMARY, AUTO]);
    let stage = work.join("stage");
    kill_when(&id, "during the first start after pg_upgrade", Duration::from_secs(180), || {
        std::fs::read_to_string(&stage).is_ok_and(|s| s == "installed")
    });
    let id = c.start_image(&upgrade_image(), "after", "data", &[PRIMARY, AUTO]);
    wait_healthy(&id, Duration::from_secs(300));
    assert!(logs(&id).contains("the first start of an upgraded cluster did not finish; finishing it"), "{}", logs(&id));
    assert_upgraded(&id, &facts, "4");
}

#[test]
#[ignore = "needs Docker and the 15 and 17-upgrade images: docker/e2e.sh"]
fn a_primary_and_replica_upgraded_in_the_documented_order_stream_on_17() {
    let mut c = Cluster::new("upgha");
    let primary = c.start_image(&old_image(), "primary", "p", &[PRIMARY]);
    wait_healthy(&primary, Duration::from_secs(120));
    let primary_host = c.host("primary");
    let replica_env = [("REPLICATION_ROLE", "replica"), ("PRIMARY_HOST", primary_host.as_str())];
    let replica = c.start_image(&old_image(), "replica", "r", &replica_env);
    wait_healthy(&replica, Duration::from_secs(120));
    sql(&primary, "CREATE TABLE t (v text); INSERT INTO t VALUES ('before')");
    eventually_sql(&replica, "SELECT string_agg(v, ',') FROM t", "before");

    // Replicas stopped first; one started on the new image too early is refused, unchanged.
    docker(&["stop", &replica]);
    let early = c.start_image(&upgrade_image(), "early", "r", &[replica_env[0], replica_env[1], AUTO]);
    assert_eq!(wait_exit(&early, Duration::from_secs(60)), 1);
    assert!(logs(&early).contains("but the primary runs PostgreSQL 15. Upgrade the primary first"), "{}", logs(&early));
    assert_eq!(std::fs::read_to_string(mountpoint(&c, "r").join("PG_VERSION")).unwrap().trim(), "15");

    // Then the primary is upgraded, then the replica started on the new image.
    docker(&["stop", &primary]);
    let primary = c.start_image(&upgrade_image(), "primary17", "p", &[PRIMARY, AUTO]);
    wait_healthy(&primary, Duration::from_secs(300));
    sql(&primary, "INSERT INTO t VALUES ('after')");
    let primary_host = c.host("primary17");
    let replica = c.start_image(
        &upgrade_image(),
        "replica17",
        "r",
        &[("REPLICATION_ROLE", "replica"), ("PRIMARY_HOST", primary_host.as_str()), AUTO],
    );
    wait_healthy(&replica, Duration::from_secs(300));
    assert_eq!(sql(&replica, "SELECT current_setting('server_version_num')::int / 10000"), "17");
    eventually_sql(&replica, "SELECT string_agg(v, ',' ORDER BY v) FROM t", "after,before");
    eventually_sql(&primary, "SELECT state FROM pg_stat_replication", "streaming");
    assert!(!mountpoint(&c, "r").join(WORK).exists(), "the replica's old data went once the clone succeeded");
}
