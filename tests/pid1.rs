//! PID 1 properties, one test each: exit codes pass through, death by signal N is 128+N,
//! exec failures are 126/127, orphans are reaped, signals reach postgres, also as a real
//! PID 1 in a new PID namespace.

mod common;

use std::fs;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

#[test]
fn other_commands_are_executed_with_their_exit_code() {
    let mut node = Node::new("exec");
    let (code, out) = node.run_to_exit(&["echo", "hi"]);
    assert_eq!((code, out.as_str()), (0, "hi\n"));
    assert_eq!(node.run_to_exit(&["sh", "-c", "exit 7"]).0, 7);
    let (code, out) = node.run_to_exit(&["/no/such/command"]);
    assert_eq!(code, 127, "{out}");
    let not_executable = node.dir.0.join("script");
    fs::write(&not_executable, "#!/bin/sh\n").unwrap();
    assert_eq!(node.run_to_exit(&[not_executable.to_str().unwrap()]).0, 126);
    // None of these touched PGDATA.
    assert!(!node.pgdata.exists());
}

#[test]
fn help_and_postgres_information() {
    let mut node = Node::new("version");
    // Ours is `help`: a leading `-` means postgres arguments, as in the official image
    // (`--version` is postgres's: tests/dropin.rs).
    let (code, out) = node.run_to_exit(&["help"]);
    assert_eq!(code, 0);
    assert!(out.contains("check") && out.contains("ensure-initdb") && out.contains("Usage"), "{out}");
    // postgres's own information options run postgres directly, whatever the environment.
    node.unset("POSTGRES_PASSWORD").set("PATH", "/usr/bin:/bin");
    let (code, out) = node.run_to_exit(&["postgres", "--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("postgres (PostgreSQL)"), "{out}");
}

#[test]
fn postgres_exit_code_passes_through() {
    let mut node = Node::new("pg-fails");
    // Each setting is valid alone (so the entrypoint lets it through); the server refuses the mix.
    let (code, out) =
        node.run_to_exit(&["postgres", "-c", "max_connections=5", "-c", "superuser_reserved_connections=10"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("superuser_reserved_connections") && out.contains("max_connections"), "{out}");
}

fn postgres_pid(node: &Node) -> i32 {
    processes()
        .into_iter()
        .find(|p| p.ppid == node.pid() && p.cmdline.contains("postgres -D"))
        .expect("postgres is a child of the entrypoint")
        .pid
}

#[test]
fn death_of_postgres_by_signal_n_exits_128_plus_n() {
    let mut node = Node::new("sigkill");
    node.start();
    let pg = postgres_pid(&node);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pg), Signal::SIGKILL).unwrap();
    let (code, _) = node.wait_exit(Duration::from_secs(15));
    assert_eq!(code, 137);
    assert!(node.output().contains("ERROR postgres died of signal 9"), "{}", node.output());
    // The next start recovers; the stale postmaster.pid does not block it.
    node.start();
    assert_eq!(node.query_one("1"), "1");
    assert_eq!(node.stop(), 0);
}

#[test]
fn shutdown_escalates_to_immediate_after_the_timeout() {
    let mut node = Node::new("escalate");
    node.set("SHUTDOWN_TIMEOUT", "0");
    node.start();
    let mut client = node.client();
    client.batch_execute("BEGIN; CREATE TABLE t (x int);").unwrap();
    node.signal(Signal::SIGTERM as i32);
    let (code, took) = node.wait_exit(Duration::from_secs(10));
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(node.output().contains("sending SIGQUIT"), "{}", node.output());
    // An escalated stop is visible: its own exit code and an ERROR line.
    assert_eq!(code, 76, "{}", node.output());
    assert!(node.output().contains("ERROR") && node.output().contains("was stopped immediately"), "{}", node.output());
    node.unset("SHUTDOWN_TIMEOUT").start();
    assert_eq!(node.query_one("1"), "1");
    assert_eq!(node.stop(), 0);
}

/// An init script leaves an orphan that exits a second later: it must not stay a zombie.
fn orphan_script(node: &Node) -> std::path::PathBuf {
    let marker = node.scratch().join("orphan-pid");
    node.script(
        "01-orphan.sh",
        format!(
            "sh -c 'read -r pid rest < /proc/self/stat; echo $pid > {m}.tmp; mv {m}.tmp {m}; exec sleep 1' &\n",
            m = marker.display()
        )
        .as_bytes(),
    );
    marker
}

fn assert_reaped(marker: &std::path::Path) {
    wait_until(Duration::from_secs(30), || marker.exists());
    let pid: i32 = fs::read_to_string(marker).unwrap().trim().parse().unwrap();
    // The orphan sleeps 1 s; once it exits, an unreaped one stays as a zombie ('Z') forever.
    wait_until(Duration::from_secs(10), || !std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn orphans_are_reaped() {
    let mut node = Node::new("reap");
    let marker = orphan_script(&node);
    node.start();
    assert_reaped(&marker);
    assert_eq!(node.stop(), 0);
}

#[test]
fn as_a_real_pid_1_it_reaps_and_stops_cleanly() {
    let mut node = Node::new("pid1");
    let marker = orphan_script(&node);
    node.spawn_wrapped(&["unshare", "--pid", "--fork"], &[]);
    node.wait_ready(Duration::from_secs(60));
    assert_reaped(&marker);
    let unshare = node.pid();
    let entrypoint = processes().into_iter().find(|p| p.ppid == unshare).expect("the entrypoint under unshare");
    let status = fs::read_to_string(format!("/proc/{}/status", entrypoint.pid)).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(nspid.trim_end().ends_with("\t1"), "not PID 1 in its namespace: {nspid}");
    // docker stop: SIGTERM to PID 1 from outside its namespace.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(entrypoint.pid), Signal::SIGTERM).unwrap();
    let (code, took) = node.wait_exit(Duration::from_secs(15));
    assert_eq!(code, 0, "{}", node.output());
    assert!(took < Duration::from_secs(5));
    assert_eq!(node.controldata_state(), "shut down");
}
