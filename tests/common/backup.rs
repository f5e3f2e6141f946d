//! What the backup tests share: a node with backups to a posix repository, `status` as JSON,
//! and waits for the repository and the archive.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::Node;

impl Node {
    /// A node with backups on, to a repository of its own (returned, for other nodes to share).
    pub fn backing_up(name: &str) -> (Node, PathBuf) {
        let mut node = Node::new(name);
        let repo = node.repository();
        node.with_backups(&repo);
        (node, repo)
    }

    /// `pg-entrypoint backup full`, which must succeed.
    pub fn full_backup(&self) {
        let (code, out) = self.tool(&["backup", "full"]);
        assert_eq!(code, 0, "{out}");
    }

    /// A refused start left PGDATA as it was: empty.
    pub fn assert_pgdata_empty(&self) {
        let left: Vec<_> =
            std::fs::read_dir(&self.pgdata).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
        assert!(left.is_empty(), "PGDATA holds {left:?}");
    }

    /// Backups on, to the repository `repo` (a directory every member mounts).
    pub fn with_backups(&mut self, repo: &Path) -> &mut Node {
        self.set("PGBACKREST_ENABLE", "true").set("PGBACKREST_REPO1_PATH", &repo.display().to_string())
    }

    /// A repository directory in this node's directory, made by root (as a fresh volume is).
    pub fn repository(&self) -> PathBuf {
        let repo = self.dir.0.join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        repo
    }

    /// `status` as JSON.
    pub fn status(&self) -> serde_json::Value {
        let (code, out) = self.tool(&["status"]);
        assert_eq!(code, 0, "{out}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// Waits until the keeper has created the stanza and `pgbackrest check` passed.
    pub fn wait_repository_ok(&mut self) -> &mut Node {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let s = self.status();
            if s["backups"]["repository"]["ok"] == true {
                return self;
            }
            assert!(Instant::now() < deadline, "repository not ok within 90 s: {s}\n{}", self.output());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Switches to a new WAL segment and waits until the archive has it.
    pub fn archive_now(&self) {
        let segment = self.query_one("pg_walfile_name(pg_switch_wal())");
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.query_one("coalesce((SELECT last_archived_wal FROM pg_stat_archiver), '')") < segment {
            assert!(Instant::now() < deadline, "{segment} not archived within 120 s:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
