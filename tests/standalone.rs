//! A standalone server from first boot to clean stop, as a user of the official image sees it.

mod common;

use std::fs;
use std::time::Duration;

use common::*;

#[test]
fn first_boot_creates_user_and_database_with_a_hostile_password() {
    let mut node = Node::new("first-boot");
    node.set("POSTGRES_USER", "Ad Min-1.ü").set("POSTGRES_DB", "app \"db\" 'x' $y \\z");
    node.start();
    assert_eq!(node.query_one("current_user"), "Ad Min-1.ü");
    assert_eq!(node.query_one("current_database()"), "app \"db\" 'x' $y \\z");
    assert_eq!(node.query_one("(SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"), "true");
    // TCP is never trusted: a wrong password is refused.
    let wrong = node.connect_as("Ad Min-1.ü", "wrong", "postgres");
    let Err(e) = wrong else { panic!("a wrong password was accepted") };
    let message = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_default();
    assert!(message.contains("password authentication failed"), "{e:?}");
    // Passwords are stored as SCRAM verifiers.
    assert_eq!(
        node.query_one("(SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = current_user)"),
        "SCRAM-SHA-256$"
    );

    // The password appears in no process's command line and in no log line.
    for p in processes() {
        assert!(!p.cmdline.contains(PASSWORD), "password in argv of {}: {}", p.pid, p.cmdline);
    }
    assert_eq!(node.stop(), 0);
    let log = node.all_output();
    assert!(!log.contains(PASSWORD) && !log.contains("pw-1"), "password in log:\n{log}");
    assert_eq!(node.controldata_state(), "shut down");
}

#[test]
fn sigterm_with_a_client_idle_in_transaction_is_a_fast_clean_shutdown() {
    let mut node = Node::new("stop-busy");
    node.start();
    let mut client = node.client();
    client.batch_execute("CREATE TABLE t (x int); BEGIN; INSERT INTO t VALUES (1);").unwrap();
    node.signal(libc_sigterm());
    let (code, took) = node.wait_exit(Duration::from_secs(15));
    assert_eq!(code, 0, "{}", node.output());
    // Docker SIGKILLs after 10 s; a smart shutdown would wait for the client forever.
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    assert_eq!(node.controldata_state(), "shut down");
    drop(client);
}

#[test]
fn sighup_reloads_and_keeps_running() {
    let mut node = Node::new("sighup");
    node.start();
    assert_eq!(node.query_one("current_setting('work_mem')"), "4MB");
    let conf = node.pgdata.join("postgresql.conf");
    let mut text = fs::read_to_string(&conf).unwrap();
    text.push_str("work_mem = '7MB'\n");
    fs::write(&conf, text).unwrap();
    node.signal(nix::sys::signal::Signal::SIGHUP as i32);
    wait_until(Duration::from_secs(10), || node.query_one("current_setting('work_mem')") == "7MB");
    assert!(node.child.as_mut().unwrap().try_wait().unwrap().is_none(), "SIGHUP stopped the container");
    assert_eq!(node.stop(), 0);
}

#[test]
fn restart_keeps_data_and_does_not_reinitialise() {
    let mut node = Node::new("restart");
    node.script("01-once.sql", b"CREATE TABLE runs (at timestamptz DEFAULT now()); INSERT INTO runs DEFAULT VALUES;");
    node.start();
    node.client().batch_execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here');").unwrap();
    assert_eq!(node.stop(), 0);
    let conf_before = fs::read_to_string(node.pgdata.join("postgresql.conf")).unwrap();
    let hba_before = fs::read_to_string(node.pgdata.join("pg_hba.conf")).unwrap();
    for _ in 0..3 {
        node.start();
        assert_eq!(node.query_one("(SELECT v FROM kept)"), "still here");
        assert_eq!(node.query_one("(SELECT count(*) FROM runs)"), "1", "init scripts ran again");
        assert_eq!(node.stop(), 0);
    }
    // Nothing accumulates in the files we manage.
    assert_eq!(fs::read_to_string(node.pgdata.join("postgresql.conf")).unwrap(), conf_before);
    assert_eq!(fs::read_to_string(node.pgdata.join("pg_hba.conf")).unwrap(), hba_before);
    assert_eq!(node.all_output().matches("initialising a new cluster").count(), 1);
}

#[test]
fn settings_postgres_passed_are_not_judged_again_but_any_change_is() {
    let mut node = Node::new("checked");
    node.start();
    assert_eq!(node.stop(), 0);
    // Recorded beside our other files: the fingerprint of what postgres passed, and its major.
    let record = node.socket_dir().join(format!("pg-entrypoint-{}.checked", node.port));
    let text = fs::read_to_string(&record).unwrap();
    let (fingerprint, major) = text.trim().split_once(' ').unwrap();
    assert_eq!(fingerprint.len(), 16, "{text}");
    assert!(major.parse::<u32>().unwrap() >= 15, "{text}");
    node.start();
    assert_eq!(node.stop(), 0);
    assert_eq!(fs::read_to_string(&record).unwrap(), text, "nothing changed, nothing judged or written");
    // A changed setting is judged again, by the variable or by the argument.
    node.set("POSTGRESQL_CONFIG_SHARED_BUFFERS", "lots");
    let (code, out) = node.run_to_exit(&[]);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("POSTGRESQL_CONFIG_SHARED_BUFFERS"), "{out}");
    node.unset("POSTGRESQL_CONFIG_SHARED_BUFFERS");
    let (code, out) = node.run_to_exit(&["-c", "work_mem=lots"]);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("work_mem"), "{out}");
    node.start();
    assert_eq!(node.stop(), 0);
}

#[test]
fn postgres_arguments_and_overrides_are_honoured_everywhere() {
    let mut node = Node::new("args");
    // The port comes from a postgres argument, not from POSTGRESQL_CONFIG_PORT; the init
    // script (run against the temporary server) must still work.
    let port = free_port();
    node.unset("POSTGRESQL_CONFIG_PORT").set("POSTGRESQL_CONFIG_CLUSTER_NAME", "it's a \\ \"test\"");
    node.port = port;
    node.script("01.sql", b"CREATE TABLE from_script (x int);");
    node.spawn(&["postgres", "-c", &format!("port={port}"), "-c", "shared_buffers=32MB"]);
    node.wait_ready(Duration::from_secs(60));
    assert_eq!(node.query_one("current_setting('cluster_name')"), "it's a \\ \"test\"");
    assert_eq!(node.query_one("current_setting('shared_buffers')"), "32MB");
    assert_eq!(node.query_one("to_regclass('from_script') IS NOT NULL"), "true");
    assert!(node.socket_dir().join(format!(".s.PGSQL.{port}")).exists(), "socket not in the configured directory");
    assert_eq!(node.stop(), 0);
}

#[test]
fn a_first_argument_starting_with_a_dash_is_for_postgres() {
    let mut node = Node::new("dash-args");
    node.spawn(&["-c", "max_connections=33"]);
    node.wait_ready(Duration::from_secs(60));
    assert_eq!(node.query_one("current_setting('max_connections')"), "33");
    assert_eq!(node.stop(), 0);
}

#[test]
fn trust_needs_no_password_and_is_only_for_what_was_asked() {
    let mut node = Node::new("trust");
    node.unset("POSTGRES_PASSWORD").set("POSTGRES_HOST_AUTH_METHOD", "trust");
    node.start();
    assert!(node.connect_as("postgres", "anything", "postgres").is_ok());
    let hba = fs::read_to_string(node.pgdata.join("pg_hba.conf")).unwrap();
    assert!(hba.contains("host all all 0.0.0.0/0 trust"), "{hba}");
    assert_eq!(node.stop(), 0);
}

#[test]
fn log_format_json_writes_json_lines() {
    let mut node = Node::new("json");
    node.set("LOG_FORMAT", "json");
    node.start();
    assert_eq!(node.stop(), 0);
    let log = node.all_output();
    assert!(
        log.lines().any(|l| l.starts_with('{') && l.contains("\"postgres started\"")),
        "no JSON line from us:\n{log}"
    );
}

#[test]
fn started_as_a_non_root_user_it_works_as_that_user() {
    let mut node = Node::new("non-root");
    let scratch = node.scratch();
    node.pgdata = scratch.join("data");
    node.set("PGDATA", &node.pgdata.display().to_string());
    node.set("POSTGRESQL_CONFIG_UNIX_SOCKET_DIRECTORIES", &scratch.display().to_string());
    node.spawn_wrapped(&["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"], &[]);
    node.wait_ready(Duration::from_secs(60));
    assert_eq!(node.query_one("current_setting('data_directory')"), node.pgdata.display().to_string());
    let mode = std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&node.pgdata).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700);
    assert_eq!(node.stop(), 0);
}

#[test]
fn an_initialised_volume_starts_without_the_superuser_password() {
    let mut node = Node::new("no-password-later");
    node.start();
    assert_eq!(node.stop(), 0);
    node.unset("POSTGRES_PASSWORD");
    node.spawn(&[]);
    let user = node.superuser();
    wait_until(Duration::from_secs(30), || node.connect_as(&user, PASSWORD, &user).is_ok());
    assert_eq!(node.stop(), 0);
    // Set again, with another value: not applied (as in the official image), and it says so.
    node.set("POSTGRES_PASSWORD", "changed");
    node.spawn(&[]);
    wait_until(Duration::from_secs(30), || node.connect_as(&user, PASSWORD, &user).is_ok());
    assert!(node.output().contains("POSTGRES_PASSWORD is not applied"), "{}", node.output());
    assert_eq!(node.stop(), 0);
}
