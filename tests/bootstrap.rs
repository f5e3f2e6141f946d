//! First boot under adversity: init scripts, failures, interruptions, refused directories.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;

/// In PGDATA while a new cluster's init scripts run.
const INITIALISING: &str = ".pg-entrypoint-initialising";

#[test]
fn init_scripts_run_in_name_order_against_the_new_database() {
    let mut node = Node::new("scripts");
    node.set("POSTGRES_USER", "alice").set("POSTGRES_DB", "shop");
    node.script("01-table.sql", b"CREATE TABLE log (step text);");
    node.script(
        "02-shell.sh",
        b"psql -v ON_ERROR_STOP=1 -c \"INSERT INTO log VALUES ('sh:' || current_user || ':' || current_database() || ':$POSTGRES_DB')\"\n",
    );
    node.script("03-data.sql.gz", &flate(b"INSERT INTO log VALUES ('gz');"));
    node.script("04-notes.txt", b"not a script");
    node.start();
    let steps = node.query_one("(SELECT string_agg(step, ',' ORDER BY ctid) FROM log)");
    assert_eq!(steps, "sh:alice:shop:shop,gz");
    assert!(node.output().contains("ignoring: init scripts end in"), "{}", node.output());
    assert_eq!(node.stop(), 0);
}

/// gzip through the real tool, so the test needs no compression crate.
fn flate(data: &[u8]) -> Vec<u8> {
    let mut child = std::process::Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    child.wait_with_output().unwrap().stdout
}

#[test]
fn a_failed_init_script_leaves_nothing_that_the_next_start_would_skip() {
    let mut node = Node::new("script-fails");
    node.script("01-ok.sql", b"CREATE TABLE made_once (x int); INSERT INTO made_once VALUES (1);");
    node.script("02-bad.sql", b"SELECT * FROM no_such_table;");
    let (code, out) = node.run_to_exit(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("init script") && out.contains("02-bad.sql") && out.contains("failed"), "{out}");
    // The cluster stays marked unfinished: redone next time, never started as it is.
    assert!(node.pgdata.join(INITIALISING).exists());
    assert!(out.contains("the unfinished bootstrap is redone at the next start"), "{out}");
    fs::write(node.dir.0.join("initdb.d/02-bad.sql"), b"SELECT 1;").unwrap();
    node.start();
    assert_eq!(node.query_one("(SELECT count(*) FROM made_once)"), "1");
    assert_eq!(node.stop(), 0);
}

#[test]
fn initdb_killed_midway_is_redone_at_the_next_start() {
    let mut node = Node::new("kill-initdb");
    node.spawn(&[]);
    // Kill the whole container while initdb is writing the staging directory.
    let staging = node.pgdata.join(".pg-entrypoint-bootstrap/cluster");
    wait_until(Duration::from_secs(30), || staging.join("PG_VERSION").exists());
    node.kill_all();
    assert!(!node.pgdata.join("PG_VERSION").exists(), "a half-made cluster is in PGDATA");
    // The superuser's password went to initdb through a pipe: no file holds it.
    let leftovers: Vec<_> = fs::read_dir(node.pgdata.join(".pg-entrypoint-bootstrap"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers, ["cluster"], "only initdb's own work is left");
    node.start();
    assert_eq!(node.query_one("1"), "1");
    assert!(node.output().contains("removing an interrupted bootstrap"), "{}", node.output());
    assert_eq!(node.stop(), 0);
}

#[test]
fn sigterm_during_init_scripts_stops_promptly_and_the_next_start_redoes_it() {
    let mut node = Node::new("term-scripts");
    node.script("01.sql", b"CREATE TABLE once (x int); INSERT INTO once VALUES (1);");
    let marker = node.scratch().join("script-started");
    node.script("02-slow.sh", format!("touch {}\nsleep 30\n", marker.display()).as_bytes());
    node.spawn(&[]);
    wait_until(Duration::from_secs(60), || marker.exists());
    node.signal(libc_sigterm());
    let (code, took) = node.wait_exit(Duration::from_secs(15));
    assert_eq!(code, 143, "{}", node.output());
    assert!(took < Duration::from_secs(5), "stopping took {took:?}");
    assert!(node.pgdata.join(INITIALISING).exists());
    assert!(
        node.output().contains("stopped by SIGTERM before postgres started; the unfinished bootstrap is redone"),
        "{}",
        node.output()
    );
    // The temporary server is gone too.
    let dir = node.dir.0.display().to_string();
    assert!(processes().iter().all(|p| !p.cmdline.contains(&dir) || p.state == 'Z'), "leftover processes");
    fs::remove_file(node.dir.0.join("initdb.d/02-slow.sh")).unwrap();
    node.start();
    assert_eq!(node.query_one("(SELECT count(*) FROM once)"), "1");
    assert_eq!(node.stop(), 0);
}

#[test]
fn a_foreign_non_empty_pgdata_is_refused_and_left_untouched() {
    let mut node = Node::new("foreign");
    fs::create_dir_all(&node.pgdata).unwrap();
    fs::write(node.pgdata.join("precious.txt"), "do not delete").unwrap();
    let (code, out) = node.run_to_exit(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is not empty and is not a PostgreSQL cluster") && out.contains("precious.txt"), "{out}");
    assert_eq!(fs::read_to_string(node.pgdata.join("precious.txt")).unwrap(), "do not delete");
    assert_eq!(fs::read_dir(&node.pgdata).unwrap().count(), 1);
    // Classified before anything changed: still root's, mode as it was.
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(node.pgdata.join("precious.txt")).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o644));
    assert_eq!(fs::metadata(&node.pgdata).unwrap().uid(), 0);
}

#[test]
fn lost_and_found_of_a_fresh_volume_does_not_block_initialisation() {
    let mut node = Node::new("lost-found");
    fs::create_dir_all(node.pgdata.join("lost+found")).unwrap();
    node.start();
    assert!(node.pgdata.join("lost+found").is_dir());
    assert_eq!(node.stop(), 0);
}

#[test]
fn an_unreachable_pgdata_parent_is_reported_by_name() {
    let mut node = Node::new("unreachable");
    let locked = node.dir.0.join("locked");
    fs::create_dir(&locked).unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o700)).unwrap();
    let pgdata = locked.join("data");
    node.set("PGDATA", &pgdata.display().to_string());
    let (code, out) = node.run_to_exit(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("is not reachable by the user \"postgres\"") && out.contains(&format!("{:?}", locked)),
        "{out}"
    );
}

#[test]
fn an_existing_data_directory_owned_by_root_is_fixed_once() {
    let mut node = Node::new("chown");
    node.start();
    assert_eq!(node.stop(), 0);
    // As if restored by root: every file belongs to root.
    let status = std::process::Command::new("chown").args(["-R", "root:root"]).arg(&node.pgdata).status().unwrap();
    assert!(status.success());
    node.start();
    assert_eq!(node.query_one("1"), "1");
    assert!(node.output().contains("fixing ownership"), "{}", node.output());
    assert_eq!(node.stop(), 0);
    node.start();
    assert!(!node.output().contains("fixing ownership"), "walked the tree again:\n{}", node.output());
    assert_eq!(node.stop(), 0);
}

#[test]
fn a_failed_bootstrap_with_an_external_wal_directory_is_redone() {
    let mut node = Node::new("waldir");
    let waldir = node.dir.0.join("wal");
    node.set("POSTGRES_INITDB_WALDIR", &waldir.display().to_string());
    node.script("01-bad.sql", b"SELECT * FROM no_such_table;");
    let (code, out) = node.run_to_exit(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(fs::read_dir(&waldir).unwrap().count() > 0, "initdb wrote no WAL there");
    fs::write(node.dir.0.join("initdb.d/01-bad.sql"), b"CREATE TABLE ok (x int);").unwrap();
    node.start();
    assert_eq!(node.query_one("to_regclass('ok') IS NOT NULL"), "true");
    assert_eq!(fs::read_link(node.pgdata.join("pg_wal")).unwrap(), waldir);
    assert_eq!(node.stop(), 0);
}
