//! `pg-entrypoint backup [full|diff|incr]`, `backup list [--json]`, `backup verify [--into DIR]`
//! (docs/backup.md): a backup now, what the repository holds, a restore drill. Run in the
//! container (`docker exec`), as root or as the service account; pgBackRest runs as the
//! service account with the configuration the start wrote.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::config::backup::{Backup, BackupKind};
use crate::config::{Config, ProcessInputs};
use crate::lifecycle::backup::drill;
use crate::postgres::backrest::{self, Backrest};
use crate::postgres::local::Local;
use crate::postgres::server::Bin;
use crate::postgres::step;

/// What `backup` was asked to do.
pub enum Action {
    Take { kind: Option<BackupKind>, standby: bool },
    List { json: bool },
    Verify { into: Option<PathBuf> },
}

pub fn run(action: Action) -> i32 {
    match prepare().and_then(|(config, backrest)| match action {
        Action::Take { kind, standby } => take(&config, &backrest, kind, standby),
        Action::List { json } => list(&config, &backrest, json),
        Action::Verify { into } => verify(&config, into),
    }) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("backup: {e}");
            1
        }
    }
}

/// The configuration (secrets read as root), then the service account, and where the start
/// wrote pgBackRest's configuration (the running server's, when one runs).
fn prepare() -> Result<(Config, Backrest), String> {
    let config = Config::from_inputs(&ProcessInputs).map_err(|e| e.to_string())?;
    if config.backup.is_none() {
        return Err("PGBACKREST_ENABLE is not true in this container: there is no repository to use".into());
    }
    let config = match Local::open() {
        Ok(local) => {
            Config { layout: crate::config::Layout::new(&local.pidfile.socket_dir, local.pidfile.port), ..config }
        }
        Err(crate::postgres::local::LocalError::Privileges(e)) => return Err(e),
        Err(_) => config, // not running: where the environment puts the files
    };
    let backrest = Backrest::of(&config).ok_or("PGBACKREST_ENABLE is not true")?;
    if !backrest.conf.exists() {
        return Err(format!(
            "pgBackRest's configuration {} is missing: the entrypoint writes it when the container starts with \
             PGBACKREST_ENABLE=true",
            backrest.conf.display()
        ));
    }
    Ok((config, backrest))
}

fn backup_of(config: &Config) -> &Backup {
    config.backup.as_ref().expect("checked in prepare")
}

fn take(config: &Config, backrest: &Backrest, kind: Option<BackupKind>, standby: bool) -> Result<(), String> {
    if standby {
        return Err("--standby: backups from a replica are not supported in this version; run `pg-entrypoint \
                    backup` on the primary"
            .into());
    }
    if let Ok(local) = Local::open() {
        if let Ok(mut client) = local.connect(Duration::from_secs(5)) {
            if client.query_one("SELECT pg_is_in_recovery()", &[]).is_ok_and(|r| r.get::<_, bool>(0)) {
                return Err("this node is a replica: run `pg-entrypoint backup` on the primary".into());
            }
        }
    }
    // The start's stanza check holds the stanza's lock for a second or two: waited out. A
    // backup that holds it (a scheduled one) is not.
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        let (ok, said) = run_backup(backrest, kind)?;
        if ok {
            break;
        }
        if backrest::error_code(&said) != Some(LOCK_HELD) || Instant::now() >= deadline {
            return Err(backrest::explain(&said, backup_of(config)));
        }
        eprintln!("backup: the stanza is locked by another pgBackRest command; trying again");
        std::thread::sleep(Duration::from_secs(1));
    }
    let info = drill::list(backrest, backup_of(config))?;
    if let Some(b) = info.backups.last() {
        println!(
            "backup {} ({}) finished: {} in {} s, {} in the repository",
            b.label,
            b.kind,
            megabytes(b.size),
            b.stopped - b.started,
            megabytes(b.repo_size)
        );
    }
    Ok(())
}

/// pgBackRest's error code for a lock another of its processes holds.
const LOCK_HELD: u32 = 50;
/// How long `backup` waits for such a lock.
const LOCK_WAIT: Duration = Duration::from_secs(15);

/// One `pgbackrest backup`, its progress shown as it comes: success, and what it said.
fn run_backup(backrest: &Backrest, kind: Option<BackupKind>) -> Result<(bool, String), String> {
    let mut cmd = backrest.command("backup");
    cmd.arg("--log-level-console=info");
    if let Some(kind) = kind {
        cmd.arg(format!("--type={}", kind.name()));
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot run pgbackrest: {e}"))?;
    let stdout = step::read_all(child.stdout.take(), true);
    let stderr = step::read_all(child.stderr.take(), true);
    let status = child.wait().map_err(|e| format!("cannot wait for pgbackrest: {e}"))?;
    let said = format!("{}{}", stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
    Ok((status.success(), said))
}

fn list(config: &Config, backrest: &Backrest, json: bool) -> Result<(), String> {
    if json {
        let out = backrest
            .command("info")
            .arg("--output=json")
            .output()
            .map_err(|e| format!("cannot run pgbackrest: {e}"))?;
        if !out.status.success() {
            let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            return Err(backrest::explain(&said, backup_of(config)));
        }
        println!("{}", String::from_utf8_lossy(&out.stdout).trim_end());
        return Ok(());
    }
    let info = drill::list(backrest, backup_of(config))?;
    println!("stanza {}: {}", backrest.stanza, info.status.1);
    if info.backups.is_empty() {
        println!("no backups");
    } else {
        println!(
            "{:<34} {:<5} {:<21} {:>9} {:>10} {:>10}",
            "label", "type", "finished (UTC)", "took", "size", "stored"
        );
        for b in &info.backups {
            println!(
                "{:<34} {:<5} {:<21} {:>8}s {:>10} {:>10}{}",
                b.label,
                b.kind,
                stamp(b.stopped),
                b.stopped - b.started,
                megabytes(b.size),
                megabytes(b.repo_size),
                if b.checksum_error { "  page checksum errors found" } else { "" }
            );
        }
    }
    if let Some((first, last)) = &info.archive {
        println!("archived WAL: {first} .. {last}");
    }
    Ok(())
}

fn verify(config: &Config, into: Option<PathBuf>) -> Result<(), String> {
    let bin =
        Bin::locate(config.bindir.as_deref(), std::env::var("PATH").ok().as_deref()).map_err(|e| e.to_string())?;
    let scratch = into.unwrap_or_else(std::env::temp_dir);
    let d = drill::run(config, &bin, &scratch)?;
    let took = d.restore_took + d.consistent_took;
    println!(
        "verified: backup {} ({}) restored in {:.1} s ({} at {:.0} MB/s), consistent at {} after {:.1} s of \
         recovery, answered a query ({} databases); scratch copy removed",
        d.label,
        d.kind,
        took.as_secs_f64(),
        megabytes(d.bytes),
        (d.bytes as f64 / 1_048_576.0) / d.restore_took.as_secs_f64().max(0.001),
        d.lsn,
        d.consistent_took.as_secs_f64(),
        d.databases
    );
    Ok(())
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_048_576.0)
}

fn stamp(unix: i64) -> String {
    DateTime::<Utc>::from_timestamp(unix, 0).map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}
