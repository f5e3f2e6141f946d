//! Root never touches what it has not classified, and bad input is refused before anything
//! is written: the process-level cases of the hardening audit.

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use common::*;

#[test]
fn a_system_directory_as_pgdata_is_refused_by_check_and_run() {
    let mut node = Node::new("pgdata-root");
    node.set("PGDATA", "/");
    let (code, out) = node.tool(&["check"]);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("PGDATA: \"/\" is a system directory"), "{out}");
    let (code, out) = node.run_to_exit(&[]);
    assert_eq!(code, 78, "{out}");
}

#[test]
fn a_pgdata_that_is_a_link_or_a_file_is_refused_untouched() {
    let mut node = Node::new("pgdata-link");
    // A link to a directory root must not chmod (e.g. one of the system's).
    let target = node.dir.0.join("elsewhere");
    fs::create_dir_all(&target).unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(&target, &node.pgdata).unwrap();
    let (code, out) = node.run_to_exit(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is a symbolic link; refusing to touch it"), "{out}");
    let meta = fs::metadata(&target).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o755), "the link's target was changed");
    assert_eq!(fs::read_dir(&target).unwrap().count(), 0);

    // A file (say, a copy of a root-only secret) is neither chowned nor opened up.
    fs::remove_file(&node.pgdata).unwrap();
    fs::write(&node.pgdata, "secret").unwrap();
    fs::set_permissions(&node.pgdata, fs::Permissions::from_mode(0o640)).unwrap();
    let (code, out) = node.run_to_exit(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is not a directory"), "{out}");
    let meta = fs::metadata(&node.pgdata).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o640));
}

#[test]
fn the_ownership_walk_never_follows_a_link_out_of_pgdata() {
    let mut node = Node::new("walk-link");
    node.start();
    assert_eq!(node.stop(), 0);
    // A root-owned volume again (as after a restore), with a link pointing at a root file.
    let outside = node.dir.0.join("root-only");
    fs::write(&outside, "root's").unwrap();
    std::os::unix::fs::symlink(&outside, node.pgdata.join("base/link-out")).unwrap();
    std::process::Command::new("chown").args(["-R", "-h", "0:0"]).arg(&node.pgdata).status().unwrap();
    node.start();
    assert_eq!(node.query_one("1"), "1");
    let postgres_uid = fs::metadata(node.pgdata.join("PG_VERSION")).unwrap().uid();
    assert_ne!(postgres_uid, 0);
    assert_eq!(fs::metadata(&outside).unwrap().uid(), 0, "root followed a link out of PGDATA");
    assert_eq!(fs::symlink_metadata(node.pgdata.join("base/link-out")).unwrap().uid(), postgres_uid);
    assert_eq!(node.stop(), 0);
}

#[test]
fn secret_files_must_be_small_regular_files_and_never_block() {
    let mut node = Node::new("fifo-secret");
    let fifo = node.dir.0.join("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    node.unset("POSTGRES_PASSWORD").set("POSTGRES_PASSWORD_FILE", &fifo.display().to_string());
    node.spawn(&[]);
    let (code, took) = node.wait_exit(Duration::from_secs(10));
    assert_eq!(code, 78, "{}", node.output());
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(node.output().contains("not a regular file"), "{}", node.output());
    node.set("POSTGRES_PASSWORD_FILE", "/dev/zero");
    let (code, out) = node.run_to_exit(&[]);
    assert_eq!(code, 78, "{out}");
    let big = node.dir.0.join("big");
    fs::write(&big, vec![b'x'; 100 * 1024]).unwrap();
    node.set("POSTGRES_PASSWORD_FILE", &big.display().to_string());
    let (code, out) = node.run_to_exit(&[]);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("larger than 65536 bytes"), "{out}");
    assert!(!node.pgdata.exists());
}

#[test]
fn bytes_that_are_not_utf8_are_refused_not_mangled_and_never_panic() {
    let mut node = Node::new("not-utf8");
    // An environment value: refused like the same bytes in a _FILE, naming the variable only.
    let mut cmd = node.command(&[]);
    cmd.env("POSTGRES_PASSWORD", std::ffi::OsStr::from_bytes(b"pw\xff"));
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let log = node.output();
    assert!(log.contains("POSTGRES_PASSWORD: is not valid UTF-8"), "{log}");
    assert!(!node.pgdata.exists());
    // A postgres argument: a usage error, not a panic.
    let out = node.command(&["-c", "x=1"]).arg(std::ffi::OsStr::from_bytes(b"\xff")).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", node.output());
    // A dash and a multi-byte character is postgres's to judge, not a panic (101) of ours.
    let (code, out) = node.run_to_exit(&["-é"]);
    assert_eq!(code, 78, "{out}");
    assert!(!out.contains("panicked"), "{out}");
    // Another command gets its bytes as they are.
    let out = node.command(&["printf", "%s"]).arg(std::ffi::OsStr::from_bytes(b"\xff")).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(fs::read(&node.log).unwrap(), b"\xff");
}

/// A fake server on a Unix socket: asks for a cleartext password and records what the client
/// sends back, and who the client is.
struct FakeServer {
    handle: std::thread::JoinHandle<(u32, Vec<u8>)>,
}

impl FakeServer {
    fn listen(dir: &std::path::Path, port: u16) -> FakeServer {
        use std::io::{Read, Write};
        fs::create_dir_all(dir).unwrap();
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join(format!(".s.PGSQL.{port}"));
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o777)).unwrap();
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let uid = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials).unwrap().uid();
            stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut len = [0u8; 4];
            stream.read_exact(&mut len).unwrap();
            let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
            stream.read_exact(&mut startup).unwrap();
            // AuthenticationCleartextPassword.
            stream.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).unwrap();
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer);
            (uid, answer)
        });
        FakeServer { handle }
    }
}

/// A postmaster.pid for a "running" server (this test process) at `socket_dir`:`port`.
fn fake_pidfile(node: &Node, socket_dir: &std::path::Path, port: u16) {
    fs::create_dir_all(&node.pgdata).unwrap();
    let text = format!(
        "{}\n{}\n1764328241\n{port}\n{}\n*\n  55431001         0\nready   \n",
        std::process::id(),
        node.pgdata.display(),
        socket_dir.display()
    );
    fs::write(node.pgdata.join("postmaster.pid"), text).unwrap();
    // The service account must read it once the command has dropped root.
    std::process::Command::new("chown").args(["-R", "postgres:postgres"]).arg(&node.pgdata).status().unwrap();
    fs::set_permissions(&node.pgdata, fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn operator_commands_drop_root_and_never_send_a_password() {
    let node = Node::new("fake-server");
    let port = free_port();
    // A server on the configured socket directory that asks for the password.
    let server = FakeServer::listen(&node.socket_dir(), port);
    fake_pidfile(&node, &node.socket_dir(), port);
    let (code, out) = node.tool(&["health"]);
    assert_eq!(code, 1, "{out}");
    let (uid, answer) = server.handle.join().unwrap();
    assert!(answer.is_empty(), "the client answered the password request: {answer:?}");
    let postgres_uid = std::process::Command::new("id").args(["-u", "postgres"]).output().unwrap();
    assert_eq!(uid.to_string(), String::from_utf8_lossy(&postgres_uid.stdout).trim(), "health still ran as root");
}

#[test]
fn the_ownership_walk_is_not_redirected_by_a_directory_swapped_for_a_link() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut node = Node::new("walk-race");
    node.start();
    assert_eq!(node.stop(), 0);
    // Outside PGDATA: a root directory with a root file, the target of the attack.
    let outside = node.dir.0.join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("root-only"), "root's").unwrap();
    // Inside: pairs of a directory `dN` and a link `lN` to `outside`, exchanged in a tight
    // loop while root walks PGDATA (as a process of the volume's owner could).
    let race = node.pgdata.join("base/race");
    const PAIRS: usize = 100;
    for n in 0..PAIRS {
        fs::create_dir_all(race.join(format!("d{n}"))).unwrap();
        fs::write(race.join(format!("d{n}/f")), "x").unwrap();
        std::os::unix::fs::symlink(&outside, race.join(format!("l{n}"))).unwrap();
    }
    for _ in 0..5 {
        std::process::Command::new("chown").args(["-R", "-h", "0:0"]).arg(&node.pgdata).status().unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (stop2, race2) = (stop.clone(), race.clone());
        let swapper = std::thread::spawn(move || {
            let pairs: Vec<_> =
                (0..PAIRS).map(|n| (race2.join(format!("d{n}")), race2.join(format!("l{n}")))).collect();
            while !stop2.load(Ordering::Relaxed) {
                for (d, l) in &pairs {
                    let _ = nix::fcntl::renameat2(None, d, None, l, nix::fcntl::RenameFlags::RENAME_EXCHANGE);
                }
            }
        });
        node.spawn(&[]);
        // It either refuses (a link where a directory was) or starts; either way it must not
        // have followed the link.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if node.try_connect().is_ok() {
                node.stop();
                break;
            }
            if let Some(status) = node.child.as_mut().unwrap().try_wait().unwrap() {
                node.child = None;
                assert_eq!(status.code(), Some(1), "{}", node.output());
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{}", node.output());
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        swapper.join().unwrap();
        assert_eq!(fs::metadata(&outside).unwrap().uid(), 0, "root chowned a directory outside PGDATA");
        assert_eq!(fs::metadata(outside.join("root-only")).unwrap().uid(), 0, "root chowned a file outside PGDATA");
    }
}

#[test]
fn promote_run_as_root_never_writes_through_a_planted_link() {
    let mut primary = Node::new("marker-link-p");
    primary.as_primary().start();
    let mut replica = Node::new("marker-link-r");
    replica.as_replica_of(&primary, "r").start_with_timeout(Duration::from_secs(90));
    assert_eq!(primary.stop(), 0);
    let target = replica.dir.0.join("root-file");
    fs::write(&target, "root's").unwrap();
    std::os::unix::fs::symlink(&target, replica.pgdata.join("pg-entrypoint.promoted")).unwrap();
    let (code, out) = replica.tool(&["promote"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("pg-entrypoint.promoted"), "{out}");
    assert_eq!(fs::read_to_string(&target).unwrap(), "root's");
    assert_eq!(fs::metadata(&target).unwrap().uid(), 0);
    assert_eq!(replica.query_one("pg_is_in_recovery()"), "true", "not promoted without its marker");
    assert_eq!(replica.stop(), 0);
}

#[test]
fn a_link_among_pgdatas_parents_that_postgres_could_plant_is_not_followed() {
    let mut node = Node::new("parent-link");
    // A volume the postgres user owns (as /var/lib/postgresql in the PostgreSQL 18 layout),
    // holding a link to a root directory.
    let volume = node.dir.0.join("volume");
    let outside = node.dir.0.join("outside");
    fs::create_dir_all(&volume).unwrap();
    fs::create_dir_all(&outside).unwrap();
    std::process::Command::new("chown").args(["postgres:postgres"]).arg(&volume).status().unwrap();
    std::os::unix::fs::symlink(&outside, volume.join("18")).unwrap();
    // Made by the postgres user (root's own links are trusted).
    std::process::Command::new("chown").args(["-h", "postgres:postgres"]).arg(volume.join("18")).status().unwrap();
    node.set("PGDATA", &volume.join("18/docker").display().to_string());
    let (code, out) = node.run_to_exit(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is a symbolic link in a directory the user \"postgres\" can change"), "{out}");
    assert!(!outside.join("docker").exists(), "root created a directory through the link");
}

#[test]
fn liveness_counts_a_server_that_asks_for_a_password_as_alive() {
    let node = Node::new("fake-liveness");
    let port = free_port();
    let server = FakeServer::listen(&node.socket_dir(), port);
    fake_pidfile(&node, &node.socket_dir(), port);
    let (code, out) = node.tool(&["health", "--liveness"]);
    assert_eq!((code, out.as_str()), (0, "healthy: accepting connections (they ask for a password)\n"));
    let (_, answer) = server.handle.join().unwrap();
    assert!(answer.is_empty());
}

#[test]
fn a_second_entrypoint_on_the_same_pgdata_is_refused_before_it_changes_anything() {
    let mut first = Node::new("lock-first");
    first.start();
    let conf = std::fs::read(first.pgdata.join("pg-entrypoint.conf")).unwrap();
    // A second container on the same volume, with other settings.
    let mut second = Node::new("lock-second");
    second.pgdata = first.pgdata.clone();
    second.set("PGDATA", &first.pgdata.display().to_string()).set("POSTGRESQL_CONFIG_WORK_MEM", "64MB");
    let (code, out) = second.run_to_exit(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is in use by another pg-entrypoint"), "{out}");
    assert_eq!(std::fs::read(first.pgdata.join("pg-entrypoint.conf")).unwrap(), conf, "the second one wrote");
    assert_eq!(first.query_one("1"), "1");
    assert_eq!(first.stop(), 0);
}

#[test]
fn a_stop_is_forwarded_after_the_reader_of_stderr_went_away() {
    use std::io::{BufRead, BufReader};
    let mut node = Node::new("broken-stderr");
    let mut cmd = node.command(&[]);
    cmd.stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // Read the log until the server is up, then close the pipe: every later write fails.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    while !seen.contains("ready to accept connections") {
        let line = lines.next().expect("the log ended before the server was ready").unwrap();
        seen.push_str(&line);
        seen.push('\n');
    }
    drop(lines);
    node.child = Some(child);
    node.wait_ready(Duration::from_secs(30));
    // Something to log after the break: a reload, then the stop.
    node.signal(nix::sys::signal::Signal::SIGHUP as i32);
    assert_eq!(node.stop(), 0, "exit code after SIGTERM with a broken stderr:\n{seen}");
    assert_eq!(node.controldata_state(), "shut down");
}

#[test]
fn files_in_pgdata_that_root_reads_are_never_followed_echoed_or_waited_on() {
    let mut node = Node::new("stage-link");
    node.start();
    assert_eq!(node.stop(), 0);
    let secret = node.dir.0.join("root-only");
    fs::write(&secret, "TOPSECRET-moving-old").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let work = node.pgdata.join("pgsql_tmp.pg-entrypoint-upgrade");
    fs::create_dir_all(&work).unwrap();
    let fifo = node.dir.0.join("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    for target in [secret.as_path(), fifo.as_path(), std::path::Path::new("/dev/zero")] {
        let _ = fs::remove_file(work.join("stage"));
        std::os::unix::fs::symlink(target, work.join("stage")).unwrap();
        for args in [&["check"][..], &[][..]] {
            node.spawn(args);
            let (code, took) = node.wait_exit(Duration::from_secs(20));
            let out = node.output();
            assert!(took < Duration::from_secs(10), "{target:?} {args:?}: took {took:?}\n{out}");
            assert!(!out.contains("TOPSECRET"), "{target:?} {args:?}: the linked file's content was echoed:\n{out}");
            if args.is_empty() {
                assert_eq!(code, 1, "{target:?}: {out}");
                assert!(out.contains("cannot read the upgrade stage"), "{target:?}: {out}");
            }
        }
    }
    // A stage file of unknown content is refused without echoing it.
    let _ = fs::remove_file(work.join("stage"));
    fs::write(work.join("stage"), "TOPSECRET").unwrap();
    let (code, out) = node.run_to_exit(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not name a known upgrade stage") && !out.contains("TOPSECRET"), "{out}");
}

#[test]
fn a_new_pgdata_swapped_for_a_link_while_root_creates_it_redirects_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut node = Node::new("mkdir-race");
    // The parent is the service account's (as /var/lib/postgresql is); PGDATA does not exist.
    let parent = node.dir.0.join("volume");
    fs::create_dir_all(&parent).unwrap();
    std::process::Command::new("chown").args(["postgres:postgres"]).arg(&parent).status().unwrap();
    let pgdata = parent.join("data");
    node.set("PGDATA", &pgdata.display().to_string());
    let target = node.dir.0.join("root-only");
    fs::write(&target, "root's").unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
    for attempt in 0..100 {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (stop2, pgdata2, target2, parent2) = (stop.clone(), pgdata.clone(), target.clone(), parent.clone());
        // As a process of the account could: the new directory exchanged with a link to the
        // target, blindly and as fast as it goes (each success leaves the directory at `lN`).
        let swapper = std::thread::spawn(move || {
            let mut n = 0;
            let link = |n: usize| parent2.join(format!("l{n}"));
            std::os::unix::fs::symlink(&target2, link(n)).unwrap();
            while !stop2.load(Ordering::Relaxed) {
                let exchange = nix::fcntl::RenameFlags::RENAME_EXCHANGE;
                if nix::fcntl::renameat2(None, &link(n), None, &pgdata2, exchange).is_ok() {
                    n += 1;
                    std::os::unix::fs::symlink(&target2, link(n)).unwrap();
                }
            }
            n
        });
        node.spawn(&[]);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = node.child.as_mut().unwrap().try_wait().unwrap() {
                node.child = None;
                assert_ne!(status.code(), Some(0), "{}", node.output());
                break;
            }
            if node.try_connect().is_ok() {
                node.stop();
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{}", node.output());
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
        let swaps = swapper.join().unwrap();
        let meta = fs::metadata(&target).unwrap();
        assert_eq!(
            (meta.uid(), meta.mode() & 0o777),
            (0, 0o600),
            "attempt {attempt} ({swaps} swaps): root changed the file a link pointed at"
        );
        let _ = fs::remove_file(&pgdata);
        let _ = fs::remove_dir_all(&pgdata);
        for entry in fs::read_dir(&parent).unwrap() {
            let _ = fs::remove_dir_all(entry.unwrap().path());
        }
    }
}
