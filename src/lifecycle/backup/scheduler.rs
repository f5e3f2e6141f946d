//! The backup keeper, a turn of the supervision loop: on the node that is the writable
//! primary *now* (it follows a promotion; a fenced or read-only node does nothing), it
//! creates the stanza once, checks that archiving reaches the repository, and runs the
//! scheduled backups (`PGBACKREST_AUTO_*`), one at a time. Like the slot keeper it never
//! blocks the loop: the question "writable primary?" (psql) and pgBackRest run as children,
//! collected on a later turn. What it did is written to the state file `status` shows.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::config::backup::{parse_cron, Backup, BackupKind, Schedule};
use crate::config::Config;
use crate::pgdata::datadir;
use crate::pid1::supervise::Supervisor;
use crate::postgres::backrest::{self, Backrest};
use crate::postgres::server::Bin;
use crate::postgres::step;

/// Between attempts while the stanza or the repository is not ready, and between checks
/// that this node is still the writable primary.
const RETRY: Duration = Duration::from_secs(30);
/// How long a stopped backup gets to end before it is killed: pgBackRest ends at once on
/// SIGTERM, and postgres has used the shutdown's time budget already.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// The longest the question to the local server may take; then it is killed and asked again.
const PROBE_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    /// Is this node the writable primary now? Then the job it guards runs.
    Probe(Guarded),
    Info,
    Guarded(Guarded),
}

/// What only the writable primary does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guarded {
    StanzaCreate,
    StanzaUpgrade,
    Check,
    Backup(BackupKind),
}

impl Job {
    fn command(self) -> &'static str {
        match self {
            Job::Probe(_) => "psql",
            Job::Info => "info",
            Job::Guarded(Guarded::StanzaCreate) => "stanza-create",
            Job::Guarded(Guarded::StanzaUpgrade) => "stanza-upgrade",
            Job::Guarded(Guarded::Check) => "check",
            Job::Guarded(Guarded::Backup(_)) => "backup",
        }
    }
}

/// The answer psql prints: `t` when this server takes writes (not in recovery, not fenced or
/// read-only).
const WRITABLE_SQL: &str = "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off' \
     AND coalesce(current_setting('pg_entrypoint.fence', true), '') = ''";

struct Running {
    job: Job,
    pid: Pid,
    started: Instant,
    started_at: DateTime<Utc>,
    stdout: JoinHandle<String>,
    stderr: JoinHandle<String>,
}

/// Where the keeper stands with the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The stanza is to be created (or upgraded, after a major upgrade) by the writable primary.
    Stanza,
    /// Archiving is to be checked end to end (`pgbackrest check`).
    Check,
    /// What the repository holds is to be read.
    Info,
    Ready,
}

pub struct Scheduler {
    backrest: Backrest,
    bin: Bin,
    backup: Backup,
    config: Config,
    /// This start upgraded the major version: the stanza is upgraded rather than created.
    upgraded: bool,
    phase: Phase,
    running: Option<Running>,
    next_attempt: Instant,
    /// The next time of each scheduled kind.
    due: Vec<(BackupKind, DateTime<Utc>)>,
    /// A first full backup, when the repository holds none.
    first_backup: Option<Instant>,
    // For the state file.
    repository: Result<DateTime<Utc>, String>,
    last_attempt: Option<serde_json::Value>,
}

impl Scheduler {
    pub fn new(config: &Config, bin: &Bin, backup: &Backup, upgraded: bool) -> Option<Scheduler> {
        let backrest = Backrest::of(config)?;
        let due = backup.schedule.as_ref().map(|s| next_times(s, Utc::now())).unwrap_or_default();
        let scheduler = Scheduler {
            backrest,
            bin: bin.clone(),
            backup: backup.clone(),
            config: config.clone(),
            upgraded,
            phase: Phase::Stanza,
            running: None,
            next_attempt: Instant::now(),
            due,
            first_backup: None,
            repository: Err("not checked yet".into()),
            last_attempt: None,
        };
        scheduler.write_state();
        Some(scheduler)
    }

    /// One turn: collect a finished job, or start the next one that is due.
    pub fn tick(&mut self, sup: &mut Supervisor) {
        if let Some(running) = self.running.take() {
            match sup.collect(running.pid) {
                Ok(None) if matches!(running.job, Job::Probe(_)) && running.started.elapsed() > PROBE_LIMIT => {
                    tracing::warn!("the local server did not answer within {} s; asking again", PROBE_LIMIT.as_secs());
                    kill(running.pid, Signal::SIGKILL).ok();
                    self.running = Some(running);
                }
                Ok(None) => {
                    // One backup at a time: a slot that comes meanwhile is skipped.
                    if let Some(kind) = self.due_backup(Instant::now()) {
                        tracing::info!(kind = kind.name(), "scheduled backup skipped: another one is running");
                    }
                    self.running = Some(running);
                }
                Ok(Some(code)) => self.finished(sup, running, code),
                Err(e) => tracing::debug!("backup keeper: {e}"),
            }
            return;
        }
        let now = Instant::now();
        let job = match self.phase {
            Phase::Stanza if self.upgraded => Job::Probe(Guarded::StanzaUpgrade),
            Phase::Stanza => Job::Probe(Guarded::StanzaCreate),
            Phase::Check => Job::Probe(Guarded::Check),
            Phase::Info => Job::Info,
            Phase::Ready => match self.due_backup(now) {
                Some(kind) => Job::Probe(Guarded::Backup(kind)),
                None => return,
            },
        };
        if now < self.next_attempt && self.phase != Phase::Ready {
            return;
        }
        self.start(sup, job);
    }

    /// The scheduled kind due now (the largest if several are), moving each due one to its
    /// next time; a first full backup when the repository holds none.
    fn due_backup(&mut self, now: Instant) -> Option<BackupKind> {
        let schedule = self.backup.schedule.clone()?;
        if self.first_backup.is_some_and(|at| now >= at) {
            self.first_backup = None;
            return Some(BackupKind::Full);
        }
        let wall = Utc::now();
        let mut kind = None;
        for (k, at) in self.due.iter_mut() {
            if wall >= *at {
                kind = Some(kind.map_or(*k, |other: BackupKind| other.min(*k)));
                let expression = schedule.jobs.iter().find(|(j, _)| j == k).map(|(_, e)| e.as_str()).unwrap_or("");
                *at = next_time(expression, &schedule, wall).unwrap_or(DateTime::<Utc>::MAX_UTC);
            }
        }
        if kind.is_some() {
            self.write_state();
        }
        kind
    }

    fn start(&mut self, sup: &mut Supervisor, job: Job) {
        let mut cmd = match job {
            Job::Probe(_) => {
                let (dir, port) = self.config.layout.server();
                let mut psql = step::tool(&self.bin, "psql");
                psql.arg("-h").arg(dir).args(["-p", &port.to_string(), "-U", &self.config.superuser]);
                psql.args(["-d", "postgres", "-X", "-A", "-t", "--no-password", "-c", WRITABLE_SQL]);
                psql.env("PGCONNECT_TIMEOUT", "2").stdin(std::process::Stdio::null());
                psql
            }
            Job::Info => {
                let mut info = self.backrest.command("info");
                info.arg("--output=json");
                info
            }
            Job::Guarded(Guarded::Backup(kind)) => {
                tracing::info!(kind = kind.name(), stanza = %self.backup.stanza, "backup started");
                let mut backup = self.backrest.command("backup");
                backup.arg(format!("--type={}", kind.name()));
                backup
            }
            Job::Guarded(_) => self.backrest.command(job.command()),
        };
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        match sup.spawn(&mut cmd) {
            Ok(mut child) => {
                let stdout = step::read_all(child.stdout.take(), false);
                let stderr = step::read_all(child.stderr.take(), false);
                self.running = Some(Running {
                    job,
                    pid: Pid::from_raw(child.id() as i32),
                    started: Instant::now(),
                    started_at: Utc::now(),
                    stdout,
                    stderr,
                });
                self.write_state();
            }
            Err(e) => {
                tracing::error!("cannot run pgbackrest {}: {e}", job.command());
                self.next_attempt = Instant::now() + RETRY;
            }
        }
    }

    fn finished(&mut self, sup: &mut Supervisor, running: Running, code: i32) {
        let stdout = running.stdout.join().unwrap_or_default();
        let stderr = running.stderr.join().unwrap_or_default();
        if let Job::Probe(guarded) = running.job {
            if code == 0 && stdout.trim() == "t" {
                self.start(sup, Job::Guarded(guarded));
            } else {
                // A replica, a fenced or read-only primary, or no answer: nothing until later.
                self.next_attempt = Instant::now() + RETRY;
                if let Guarded::Backup(kind) = guarded {
                    tracing::info!(
                        kind = kind.name(),
                        "scheduled backup skipped: this node is not the writable primary"
                    );
                }
            }
            return;
        }
        let output = format!("{stdout}{stderr}");
        let took = running.started.elapsed();
        let failure = (code != 0).then(|| backrest::explain(&output, &self.backup));
        match (running.job, &failure) {
            (Job::Probe(_), _) => unreachable!("answered above"),
            (Job::Guarded(Guarded::StanzaCreate | Guarded::StanzaUpgrade), None) => {
                tracing::info!(stanza = %self.backup.stanza, "pgBackRest stanza ready ({})", running.job.command());
                self.phase = Phase::Check;
            }
            (Job::Guarded(Guarded::Check), None) => {
                tracing::info!(stanza = %self.backup.stanza, "archiving reaches the repository (pgbackrest check)");
                self.repository = Ok(Utc::now());
                self.phase = Phase::Info;
            }
            (Job::Info, None) => {
                match backrest::parse_info(&stdout, &self.backup.stanza) {
                    Ok(info) if info.backups.is_empty() => {
                        if let Some(schedule) = &self.backup.schedule {
                            tracing::info!(
                                delay_s = schedule.first_backup_delay.as_secs(),
                                "the repository holds no backup yet: a full backup follows"
                            );
                            self.first_backup = Some(Instant::now() + schedule.first_backup_delay);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("pgbackrest info: {e}"),
                }
                self.phase = Phase::Ready;
            }
            (Job::Guarded(Guarded::Backup(kind)), None) => {
                tracing::info!(kind = kind.name(), took_s = took.as_secs(), "backup finished");
                self.last_attempt = Some(attempt(kind, running.started_at, took, None));
            }
            (Job::Guarded(Guarded::Backup(kind)), Some(why)) => {
                tracing::error!(kind = kind.name(), code, took_s = took.as_secs(), "backup failed: {why}");
                self.last_attempt = Some(attempt(kind, running.started_at, took, Some(why.clone())));
            }
            (job, Some(why)) => {
                tracing::error!(code, "pgbackrest {} failed: {why}; retried in {} s", job.command(), RETRY.as_secs());
                if matches!(job, Job::Guarded(_)) {
                    self.repository = Err(why.clone());
                }
                self.next_attempt = Instant::now() + RETRY;
            }
        }
        self.write_state();
    }

    /// At shutdown: a running backup is stopped (pgBackRest ends it cleanly on SIGTERM; it is
    /// never offered as a restore set), then the state says so.
    pub fn stop(&mut self, sup: &mut Supervisor) {
        let Some(running) = self.running.take() else { return };
        let code = sup.terminate(running.pid, STOP_GRACE);
        if let Job::Guarded(Guarded::Backup(kind)) = running.job {
            tracing::warn!(kind = kind.name(), code, "backup stopped by the shutdown; the next one starts afresh");
            let took = running.started.elapsed();
            self.last_attempt = Some(attempt(kind, running.started_at, took, Some("stopped by the shutdown".into())));
            self.write_state();
        }
    }

    fn write_state(&self) {
        let stamp = |t: &DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let state = serde_json::json!({
            "stanza": self.backup.stanza,
            "repository": match &self.repository {
                Ok(at) => serde_json::json!({"ok": true, "checked": stamp(at)}),
                Err(why) => serde_json::json!({"ok": false, "error": why}),
            },
            "last_attempt": self.last_attempt,
            "running": self.running.as_ref().filter(|r| matches!(r.job, Job::Guarded(Guarded::Backup(_)))).map(|r| serde_json::json!({
                "type": match r.job { Job::Guarded(Guarded::Backup(k)) => k.name(), _ => "" },
                "since": stamp(&r.started_at),
            })),
            "schedule": self.backup.schedule.as_ref().map(|s| serde_json::json!({
                "timezone": s.timezone.name(),
                "next": self.due.iter().map(|(k, at)| serde_json::json!({"type": k.name(), "at": stamp(at)})).collect::<Vec<_>>(),
            })),
        });
        let path = self.config.layout.backup_state();
        let text = serde_json::to_string_pretty(&state).unwrap_or_default();
        if let Err(e) = datadir::write_atomic(&path, text.as_bytes(), 0o644) {
            tracing::debug!("cannot write {}: {e}", path.display());
        }
    }
}

fn attempt(kind: BackupKind, started_at: DateTime<Utc>, took: Duration, failure: Option<String>) -> serde_json::Value {
    serde_json::json!({
        "type": kind.name(),
        "started": started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "duration_s": took.as_secs_f64().round(),
        "ok": failure.is_none(),
        "error": failure,
    })
}

/// The next time of each scheduled kind after `now`.
pub fn next_times(schedule: &Schedule, now: DateTime<Utc>) -> Vec<(BackupKind, DateTime<Utc>)> {
    schedule
        .jobs
        .iter()
        .filter_map(|(kind, expression)| next_time(expression, schedule, now).map(|at| (*kind, at)))
        .collect()
}

/// The first time after `now` that `expression` names, read in the schedule's time zone.
fn next_time(expression: &str, schedule: &Schedule, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let cron = parse_cron(expression).ok()?;
    let local = now.with_timezone(&schedule.timezone);
    cron.find_next_occurrence(&local, false).ok().map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_next_times_follow_the_time_zone() {
        let schedule = Schedule {
            jobs: vec![(BackupKind::Full, "0 2 * * *".into()), (BackupKind::Incr, "*/15 * * * *".into())],
            timezone: chrono_tz::Asia::Jakarta,
            first_backup_delay: Duration::from_secs(120),
        };
        let now = Utc.with_ymd_and_hms(2026, 12, 6, 10, 7, 0).unwrap();
        let next = next_times(&schedule, now);
        // 02:00 in Jakarta (UTC+7) is 19:00 UTC.
        assert_eq!(next[0], (BackupKind::Full, Utc.with_ymd_and_hms(2026, 12, 6, 19, 0, 0).unwrap()));
        assert_eq!(next[1], (BackupKind::Incr, Utc.with_ymd_and_hms(2026, 12, 6, 10, 15, 0).unwrap()));
    }
}
