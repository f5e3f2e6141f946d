//! The major-version checks and the resolution of an interrupted upgrade, on this machine's
//! one PostgreSQL major (the upgrade itself, 15 to 17, runs in tests/docker_upgrade.rs). A
//! cluster's PG_VERSION stands in for another major where the refusal is what is tested.

mod common;

use std::fs;
use std::path::Path;

use common::*;

const WORK: &str = "pgsql_tmp.pg-entrypoint-upgrade";

/// A stopped cluster with one row.
fn cluster(name: &str) -> Node {
    let mut node = Node::new(name);
    node.start();
    node.client().batch_execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('kept')").unwrap();
    assert_eq!(node.stop(), 0);
    node
}

/// Every file's path, mode and contents under `dir`, for "nothing was changed".
fn digest(dir: &Path) -> Vec<(String, u32, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt;
    let mut all = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                dirs.push(path.clone());
            }
            let contents = if meta.is_file() { fs::read(&path).unwrap() } else { Vec::new() };
            all.push((path.display().to_string(), meta.permissions().mode(), contents));
        }
    }
    all.sort();
    all
}

/// What a test made as root in PGDATA belongs to PGDATA's owner, as the entrypoint's would.
fn own_like_pgdata(node: &Node, path: &Path) {
    let status = std::process::Command::new("chown")
        .arg("-R")
        .arg(format!("--reference={}", node.pgdata.display()))
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// The major of this machine's postgres ("postgres (PostgreSQL) 15.18 ...").
fn major() -> u32 {
    let out = std::process::Command::new(pg_bindir().join("postgres")).arg("-V").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace().nth(2).and_then(|v| v.split('.').next()).unwrap().parse().unwrap()
}

#[test]
fn another_major_is_refused_before_anything_is_touched() {
    let mut node = cluster("other-major");
    let ours = major();
    let older = ours - 1;
    fs::write(node.pgdata.join("PG_VERSION"), format!("{older}\n")).unwrap();
    let before = digest(&node.pgdata);

    let (code, out) = node.run_to_exit(&[]);
    assert_eq!(code, 78, "{out}");
    assert!(
        out.contains(&format!("holds a PostgreSQL {older} cluster and this image runs PostgreSQL {ours}: refusing"))
            && out.contains("POSTGRES_UPGRADE=auto"),
        "{out}"
    );
    assert!(!out.contains("FATAL"), "postgres never ran: {out}");
    assert_eq!(digest(&node.pgdata), before, "PGDATA unchanged");

    node.set("POSTGRES_UPGRADE", "auto");
    let (code, out) = node.run_to_exit(&[]);
    assert_eq!(code, 78, "{out}");
    assert!(
        out.contains(&format!("this image has no PostgreSQL {older} server in /usr/lib/postgresql/{older}/bin")),
        "{out}"
    );
    assert_eq!(digest(&node.pgdata), before, "PGDATA unchanged");

    let newer = ours + 1;
    fs::write(node.pgdata.join("PG_VERSION"), format!("{newer}\n")).unwrap();
    let (code, out) = node.run_to_exit(&[]);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("a cluster cannot be moved to an older major"), "{out}");
    // `check` says the same.
    let (code, out) = node.run_to_exit(&["check"]);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains(&format!("holds a PostgreSQL {newer} cluster")), "{out}");
}

#[test]
fn an_upgrade_killed_in_pg_upgrade_is_rolled_back_and_the_old_cluster_starts() {
    let mut node = cluster("rollback");
    // As pg_upgrade --link leaves it when killed while linking: the old cluster in old/,
    // its pg_control renamed, a half-built new/.
    let work = node.pgdata.join(WORK);
    let old = work.join("old");
    fs::create_dir_all(&old).unwrap();
    for entry in fs::read_dir(&node.pgdata).unwrap() {
        let name = entry.unwrap().file_name();
        if name != WORK {
            fs::rename(node.pgdata.join(&name), old.join(&name)).unwrap();
        }
    }
    fs::rename(old.join("global/pg_control"), old.join("global/pg_control.old")).unwrap();
    fs::create_dir_all(work.join("new/base")).unwrap();
    fs::write(work.join("stage"), "upgrading").unwrap();
    own_like_pgdata(&node, &work);

    node.start();
    assert_eq!(node.query_one("(SELECT string_agg(v, ',') FROM t)"), "kept");
    let out = node.output();
    assert!(out.contains("an upgrade did not finish; restoring the old cluster first"), "{out}");
    assert!(out.contains("the old cluster is back in PGDATA"), "{out}");
    assert!(!work.exists());
    assert_eq!(node.stop(), 0);
}

#[test]
fn a_finished_upgrade_keeps_its_old_cluster_aside_and_an_unknown_stage_is_refused() {
    let mut node = cluster("done");
    let work = node.pgdata.join(WORK);
    fs::create_dir_all(work.join("old/base")).unwrap();
    fs::write(work.join("old/PG_VERSION"), "14\n").unwrap();
    fs::write(work.join("stage"), "done").unwrap();
    own_like_pgdata(&node, &work);
    node.start();
    assert_eq!(node.query_one("(SELECT string_agg(v, ',') FROM t)"), "kept");
    assert_eq!(node.stop(), 0);
    assert!(work.join("old/PG_VERSION").exists(), "the kept cluster stays");

    fs::write(work.join("stage"), "sideways").unwrap();
    let (code, out) = node.run_to_exit(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not name a known upgrade stage") && !out.contains("sideways"), "{out}");
    assert!(node.pgdata.join("PG_VERSION").exists() && work.join("old/PG_VERSION").exists(), "nothing removed");
}
