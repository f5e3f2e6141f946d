//! `pg-entrypoint backup verify`: a restore drill. The latest backup is restored into a
//! scratch directory, started there on a private socket (no TCP, no archiving: it writes
//! nothing to the repository), brought to consistency (the end of the backup), asked a
//! query, then stopped and removed. A backup is only known good once it restored.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::postgres::backrest::{self, Backrest};
use crate::postgres::server::Bin;

/// How long the restored server may take to reach consistency.
const CONSISTENCY_TIMEOUT: Duration = Duration::from_secs(1800);

pub struct Drill {
    pub label: String,
    pub kind: String,
    pub bytes: u64,
    pub restore_took: Duration,
    pub consistent_took: Duration,
    /// What the restored server answered: its databases and the LSN it reached.
    pub databases: i64,
    pub lsn: String,
}

/// Runs the drill in a fresh directory under `scratch`; everything it made is removed,
/// whatever the outcome.
pub fn run(config: &Config, bin: &Bin, scratch: &Path) -> Result<Drill, String> {
    let backup = config.backup.as_ref().ok_or("PGBACKREST_ENABLE is not true: no repository to verify")?;
    let backrest = Backrest::of(config).ok_or("PGBACKREST_ENABLE is not true")?;
    let info = list(&backrest, backup)?;
    let latest = info.backups.last().ok_or_else(|| {
        format!("the repository holds no backup of stanza {:?}: take one with `pg-entrypoint backup`", backup.stanza)
    })?;
    let dir = scratch.join(format!("pg-entrypoint-verify-{}", std::process::id()));
    fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&dir)
        .map_err(|e| format!("cannot create the scratch directory {}: {e}", dir.display()))?;
    let mut server = None;
    let result = drill(&backrest, backup, bin, &config.superuser, &dir, latest, &mut server);
    if let Some(mut child) = server {
        // An immediate stop: the scratch copy is thrown away.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGQUIT).ok();
        child.wait().ok();
    }
    fs::remove_dir_all(&dir).map_err(|e| format!("cannot remove the scratch directory {}: {e}", dir.display()))?;
    result
}

/// pgBackRest's `info` for the stanza.
pub fn list(backrest: &Backrest, backup: &crate::config::backup::Backup) -> Result<backrest::Info, String> {
    let out =
        backrest.command("info").arg("--output=json").output().map_err(|e| format!("cannot run pgbackrest: {e}"))?;
    if !out.status.success() {
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        return Err(backrest::explain(&said, backup));
    }
    backrest::parse_info(&String::from_utf8_lossy(&out.stdout), &backrest.stanza)
}

fn drill(
    backrest: &Backrest,
    backup: &crate::config::backup::Backup,
    bin: &Bin,
    superuser: &str,
    dir: &Path,
    latest: &backrest::BackupSet,
    server: &mut Option<Child>,
) -> Result<Drill, String> {
    let cluster = dir.join("cluster");
    let began = Instant::now();
    let out = backrest
        .restore_into(&cluster)
        .arg(format!("--set={}", latest.label))
        .args(["--type=immediate", "--target-action=pause", "--archive-mode=off"])
        .output()
        .map_err(|e| format!("cannot run pgbackrest: {e}"))?;
    if !out.status.success() {
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        return Err(format!("restore of {} failed: {}", latest.label, backrest::explain(&said, backup)));
    }
    let restore_took = began.elapsed();
    let bytes = super::restore::dir_size(&cluster);
    let hba = dir.join("hba.conf");
    fs::write(&hba, "local all all trust\n").map_err(|e| format!("cannot write {}: {e}", hba.display()))?;
    let log = dir.join("server.log");
    let log_file = fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let mut cmd = Command::new(bin.tool("postgres"));
    for var in crate::config::secret_environment() {
        cmd.env_remove(var);
    }
    cmd.arg("-D").arg(&cluster);
    for setting in [
        "listen_addresses=".to_string(),
        format!("unix_socket_directories={}", dir.display()),
        format!("hba_file={}", hba.display()),
        "unix_socket_permissions=0700".to_string(),
        "hot_standby=on".to_string(),
        // Nothing of the drill reaches the repository or the cluster's members.
        "archive_mode=off".to_string(),
        "primary_conninfo=".to_string(),
        "shared_buffers=128MB".to_string(),
    ] {
        cmd.arg("-c").arg(setting);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log_file);
    let consistent_began = Instant::now();
    *server = Some(cmd.spawn().map_err(|e| format!("cannot start postgres: {e}"))?);
    let pidfile = cluster.join("postmaster.pid");
    loop {
        if crate::postgres::local::pidfile_status(&pidfile).is_some_and(|s| s == "standby" || s == "ready") {
            break;
        }
        if let Some(child) = server.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                *server = None;
                return Err(format!(
                    "the restored server exited ({status}) before reaching consistency; its log:\n{}",
                    tail(&log)
                ));
            }
        }
        if consistent_began.elapsed() > CONSISTENCY_TIMEOUT {
            return Err(format!(
                "the restored server did not reach consistency within {} s",
                CONSISTENCY_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let consistent_took = consistent_began.elapsed();
    let port = crate::postgres::local::parse_pidfile(&fs::read_to_string(&pidfile).unwrap_or_default())
        .map_or(5432, |p| p.port);
    let mut client =
        crate::postgres::local::socket_client(dir, port, superuser, "postgres", Duration::from_secs(10))
            .map_err(|e| format!("the restored server does not answer: {}", crate::postgres::local::describe(&e)))?;
    let row = client
        .query_one("SELECT (SELECT count(*) FROM pg_database), coalesce(pg_last_wal_replay_lsn()::text, '')", &[])
        .map_err(|e| {
            format!("the restored server does not answer a query: {}", crate::postgres::local::describe(&e))
        })?;
    Ok(Drill {
        label: latest.label.clone(),
        kind: latest.kind.clone(),
        bytes,
        restore_took,
        consistent_took,
        databases: row.get(0),
        lsn: row.get(1),
    })
}

fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
