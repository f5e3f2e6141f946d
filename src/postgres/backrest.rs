//! pgBackRest plumbing: its command lines (our configuration file, the stanza, a clean
//! environment), what `info` reports, and what its errors mean in terms of our variables.
//! No decision about when to back up lives here.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::config::backup::Backup;
use crate::config::{secret_environment, Config};

/// How to run pgBackRest for this server.
#[derive(Debug, Clone)]
pub struct Backrest {
    pub conf: PathBuf,
    pub stanza: String,
}

impl Backrest {
    /// `None` when backups are off.
    pub fn of(config: &Config) -> Option<Backrest> {
        config.backup.as_ref().map(|b| Backrest { conf: config.layout.backrest_conf(), stanza: b.stanza.clone() })
    }

    /// `pgbackrest --config=... --stanza=... <command>`, with no secret in its environment
    /// (everything it needs is in the file) and nothing to read on stdin.
    pub fn command(&self, command: &str) -> Command {
        let mut c = Command::new("pgbackrest");
        for var in secret_environment() {
            c.env_remove(var);
        }
        c.arg(format!("--config={}", self.conf.display())).arg(format!("--stanza={}", self.stanza)).arg(command);
        c.stdin(Stdio::null());
        c
    }

    /// `pgbackrest restore` into `dir` instead of PGDATA (a staging or scratch directory).
    pub fn restore_into(&self, dir: &Path) -> Command {
        let mut c = self.command("restore");
        c.arg(format!("--pg1-path={}", dir.display()));
        c
    }
}

/// Whether pgBackRest is installed (on PATH).
pub fn installed() -> bool {
    crate::postgres::server::on_path("pgbackrest").is_some()
}

/// One backup in the repository, as `pgbackrest info --output=json` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSet {
    pub label: String,
    /// full, diff or incr.
    pub kind: String,
    /// Unix times.
    pub started: i64,
    pub stopped: i64,
    /// The database's size, and what the backup holds in the repository.
    pub size: u64,
    pub repo_size: u64,
    pub wal_start: String,
    pub wal_stop: String,
    /// A page checksum error was found while copying (pgBackRest's `error` flag).
    pub checksum_error: bool,
}

/// What `info` says of the stanza: its status and its backups, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// pgBackRest's status code (0 ok, 1 missing stanza path, 2 no valid backups, ...) and message.
    pub status: (i64, String),
    pub backups: Vec<BackupSet>,
    /// The WAL range in the archive of the current database, if any.
    pub archive: Option<(String, String)>,
}

/// Parses `pgbackrest info --output=json` for one stanza.
pub fn parse_info(json: &str, stanza: &str) -> Result<Info, String> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("unreadable info output: {e}"))?;
    let entry = value
        .as_array()
        .and_then(|stanzas| stanzas.iter().find(|s| s["name"] == stanza))
        .ok_or_else(|| format!("info does not list the stanza {stanza:?}"))?;
    let status = (
        entry["status"]["code"].as_i64().unwrap_or(-1),
        entry["status"]["message"].as_str().unwrap_or_default().to_string(),
    );
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let backups = entry["backup"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|b| BackupSet {
                    label: text(&b["label"]),
                    kind: text(&b["type"]),
                    started: b["timestamp"]["start"].as_i64().unwrap_or(0),
                    stopped: b["timestamp"]["stop"].as_i64().unwrap_or(0),
                    size: b["info"]["size"].as_u64().unwrap_or(0),
                    repo_size: b["info"]["repository"]["delta"].as_u64().unwrap_or(0),
                    wal_start: text(&b["archive"]["start"]),
                    wal_stop: text(&b["archive"]["stop"]),
                    checksum_error: b["error"].as_bool().unwrap_or(false),
                })
                .collect()
        })
        .unwrap_or_default();
    let archive = entry["archive"].as_array().and_then(|a| a.last()).and_then(|a| {
        let (min, max) = (a["min"].as_str()?, a["max"].as_str()?);
        Some((min.to_string(), max.to_string()))
    });
    Ok(Info { status, backups, archive })
}

/// pgBackRest's error code from its output (`ERROR: [055]: ...`), the first one.
pub fn error_code(output: &str) -> Option<u32> {
    let start = output.find("ERROR: [")? + "ERROR: [".len();
    output[start..].get(..3)?.parse().ok()
}

/// The line pgBackRest gave as its error, without its prefix.
pub fn error_line(output: &str) -> Option<&str> {
    output.lines().find(|l| l.contains("ERROR: [")).map(str::trim)
}

/// What a failed pgBackRest command means for the user: the variables to check. pgBackRest's
/// error codes (its `errorTypeCode`): 55 a missing file (no stanza at that path), 75 no backup
/// to restore, 28 a format
/// error (an encrypted repository read without the right cipher pass), 103 a repository
/// that is not what the configuration says, 25 a missing lock path.
pub fn explain(output: &str, backup: &Backup) -> String {
    let said = error_line(output).unwrap_or("no error message").to_string();
    let repo = backup.variable_of("repo1-path");
    // An encrypted file read with the wrong key is garbage to pgBackRest's parser.
    let undecipherable = output.contains("FormatError") || output.contains("CryptoError");
    let hint = match error_code(output) {
        _ if undecipherable => format!(
            "the repository's files cannot be read with this key: check {} and {} (an encrypted repository is read \
             only with the pass it was created with)",
            backup.variable_of("repo1-cipher-pass"),
            backup.variable_of("repo1-cipher-type")
        ),
        Some(75) if output.contains("stop time less than") => {
            "every backup ends after the target time: pick a later PGBACKREST_RESTORE_TARGET (a backup can only \
             be recovered forward from its end)"
                .to_string()
        }
        Some(75) => format!(
            "the repository holds no backup of stanza {:?}: check PGBACKREST_STANZA and {repo}, or take a backup \
             first (`pg-entrypoint backup` on the primary)",
            backup.stanza
        ),
        Some(55) | Some(103) => format!(
            "the repository holds no stanza {:?} there: check PGBACKREST_STANZA and {repo} (the stanza is created \
             by a primary started with PGBACKREST_ENABLE=true)",
            backup.stanza
        ),
        Some(50) => "another pgBackRest command holds the stanza's lock (a scheduled backup: `pg-entrypoint status` \
                     shows it running); try again when it ends"
            .to_string(),
        Some(31) | Some(32) => "pgBackRest refused an option: check the PGBACKREST_* variable it names".to_string(),
        Some(39) | Some(41) | Some(49) => format!("the repository could not be reached or written: check {repo} and its permissions, or the storage's address and credentials"),
        _ => "see pgBackRest's message above".to_string(),
    };
    format!("{said}; {hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_lists_the_backups_of_the_stanza() {
        let json = r#"[{"name":"main","status":{"code":0,"message":"ok"},
            "archive":[{"id":"15-1","min":"000000010000000000000003","max":"000000010000000000000007"}],
            "backup":[{"label":"20261206-101500F","type":"full","error":false,
                "timestamp":{"start":1796551200,"stop":1796551210},
                "info":{"size":23000000,"delta":23000000,"repository":{"size":3000000,"delta":3000000}},
                "archive":{"start":"000000010000000000000003","stop":"000000010000000000000003"}}]}]"#;
        let info = parse_info(json, "main").unwrap();
        assert_eq!(info.status, (0, "ok".into()));
        assert_eq!(info.backups.len(), 1);
        assert_eq!(info.backups[0].label, "20261206-101500F");
        assert_eq!(info.backups[0].kind, "full");
        assert_eq!(info.backups[0].stopped - info.backups[0].started, 10);
        assert_eq!(info.backups[0].repo_size, 3_000_000);
        assert_eq!(info.archive.unwrap().1, "000000010000000000000007");
        assert!(parse_info(json, "other").is_err());
    }

    #[test]
    fn an_error_names_the_variables_to_check() {
        let backup =
            Backup { stanza: "main".into(), archive: true, options: Vec::new(), schedule: None, restore: None };
        let out = "P00  ERROR: [055]: unable to load info file '/x/backup/main/backup.info' or '/x/backup/main/backup.info.copy':\n";
        assert_eq!(error_code(out), Some(55));
        let why = explain(out, &backup);
        assert!(why.contains("PGBACKREST_STANZA") && why.contains("PGBACKREST_REPO1_PATH"), "{why}");
        assert_eq!(error_code("all fine"), None);
    }
}
