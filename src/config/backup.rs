//! `PGBACKREST_*` (docs/backup.md): continuous archiving and backups with pgBackRest, a
//! schedule, and a restore at start. The upstream image's names; ours are read here, every
//! other `PGBACKREST_<OPTION>` is pgBackRest's own option and reaches it unchanged, through
//! the configuration file we write (never through a child's environment).

use std::path::PathBuf;
use std::time::Duration;

use super::parser::Parser;
use super::Secret;

/// The stanza when `PGBACKREST_STANZA` is not set.
pub const DEFAULT_STANZA: &str = "main";
/// pgBackRest's own default repository path, which Debian's package creates.
pub const DEFAULT_REPO_PATH: &str = "/var/lib/pgbackrest";
/// The upstream image's repository volume: used when mounted and no path is given.
pub const UPSTREAM_REPO_PATH: &str = "/usr/local/pgsql/backup";

/// What is read here and not passed to pgBackRest.
pub const OURS: &[&str] = &[
    "PGBACKREST_ENABLE",
    "PGBACKREST_STANZA",
    "PGBACKREST_ARCHIVE_ENABLE",
    "PGBACKREST_AUTO_ENABLE",
    "PGBACKREST_AUTO_FULL_CRON",
    "PGBACKREST_AUTO_DIFF_CRON",
    "PGBACKREST_AUTO_INCR_CRON",
    "PGBACKREST_AUTO_TIMEZONE",
    "PGBACKREST_AUTO_PRIMARY_ONLY",
    "PGBACKREST_AUTO_FIRST_INCR_DELAY",
    "PGBACKREST_RESTORE",
    "PGBACKREST_RESTORE_TYPE",
    "PGBACKREST_RESTORE_TARGET",
    "PGBACKREST_RESTORE_TARGET_ACTION",
    "PGBACKREST_RESTORE_SET",
];

/// pgBackRest options that hold a secret (`<repo>` stands for `repo1`..`repo256`): also read
/// from `PGBACKREST_<OPTION>_FILE`, and never shown.
const SECRET_OPTIONS: &[&str] =
    &["cipher-pass", "s3-key", "s3-key-secret", "s3-token", "azure-key", "sftp-private-key-passphrase"];

/// The upstream image's variables that are not pgBackRest options, each with why it is refused.
const UPSTREAM_ONLY: &[(&str, &str)] = &[
    ("PGBACKREST_PRIMARY_", "backups from a replica over SSH are not supported; back up from the primary"),
    ("PGBACKREST_BACKUP_VERIFY", "use `pg-entrypoint backup verify`, a restore drill"),
    ("PGBACKREST_BACKUP_START_FAST", "set PGBACKREST_START_FAST, pgBackRest's own option"),
    ("PGBACKREST_BACKUP_STOP_AUTO", "it applies to exclusive backups, which PostgreSQL 15 and later do not have"),
];

/// pgBackRest options pg-entrypoint sets itself, from the server's settings.
const DECIDED_HERE: &[(&str, &str)] = &[
    ("pg1-path", "PGDATA"),
    ("pg1-port", "the server's port"),
    ("pg1-socket-path", "the server's socket directory"),
    ("pg1-user", "POSTGRES_USER"),
    ("stanza", "PGBACKREST_STANZA"),
    ("config", "pg-entrypoint's own configuration file"),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub stanza: String,
    /// `archive_mode` on with pgBackRest's `archive-push` (`PGBACKREST_ARCHIVE_ENABLE`, default true).
    pub archive: bool,
    /// pgBackRest's options for `[global]`, in the order of their variables.
    pub options: Vec<BackrestOption>,
    pub schedule: Option<Schedule>,
    pub restore: Option<Restore>,
}

/// One pgBackRest option from `PGBACKREST_<OPTION>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackrestOption {
    /// pgBackRest's name: `repo1-path`.
    pub name: String,
    pub value: OptionValue,
    /// The variable it came from, to name in an error.
    pub variable: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionValue {
    Plain(String),
    Secret(Secret),
}

impl OptionValue {
    pub fn expose(&self) -> &str {
        match self {
            OptionValue::Plain(v) => v,
            OptionValue::Secret(s) => s.expose(),
        }
    }
}

impl Backup {
    /// The value of pgBackRest option `name`, if set.
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options.iter().find(|o| o.name == name).map(|o| o.value.expose())
    }

    /// The variable that sets pgBackRest option `name`, or what a user would set.
    pub fn variable_of(&self, name: &str) -> String {
        self.options.iter().find(|o| o.name == name).map_or_else(
            || format!("PGBACKREST_{}", name.to_ascii_uppercase().replace('-', "_")),
            |o| o.variable.clone(),
        )
    }

    /// The posix repository directory, when the first repository is one (we create it).
    pub fn posix_repository(&self) -> Option<PathBuf> {
        let kind = self.option("repo1-type").unwrap_or("posix");
        (kind == "posix").then(|| PathBuf::from(self.option("repo1-path").unwrap_or(DEFAULT_REPO_PATH)))
    }
}

/// `PGBACKREST_AUTO_*`: backups the supervisor starts on the writable primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Each kind with its cron expression (5 fields); a kind set to `off` is absent (all
    /// off: only the first backup).
    pub jobs: Vec<(BackupKind, String)>,
    pub timezone: chrono_tz::Tz,
    /// With no backup in the repository, a full one this long after the start (instead of
    /// waiting for the next full slot; `PGBACKREST_AUTO_FIRST_INCR_DELAY`, seconds).
    pub first_backup_delay: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BackupKind {
    Full,
    Diff,
    Incr,
}

impl BackupKind {
    pub fn name(self) -> &'static str {
        match self {
            BackupKind::Full => "full",
            BackupKind::Diff => "diff",
            BackupKind::Incr => "incr",
        }
    }

    pub fn parse(text: &str) -> Option<BackupKind> {
        match text {
            "full" => Some(BackupKind::Full),
            "diff" => Some(BackupKind::Diff),
            "incr" => Some(BackupKind::Incr),
            _ => None,
        }
    }
}

/// `PGBACKREST_RESTORE=true`: an empty PGDATA becomes a restore from the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restore {
    pub target: RestoreTarget,
    /// `PGBACKREST_RESTORE_SET`: a backup label; `None`: the latest.
    pub set: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreTarget {
    /// To the end of the archived WAL.
    Latest,
    /// To the end of the backup (consistency).
    Immediate,
    /// pgBackRest's `--type` (time, xid, name, lsn) with its `--target`.
    Point { kind: &'static str, target: String },
}

impl RestoreTarget {
    /// pgBackRest's `restore` options for this target.
    pub fn args(&self) -> Vec<String> {
        match self {
            RestoreTarget::Latest => vec!["--type=default".into()],
            RestoreTarget::Immediate => vec!["--type=immediate".into(), "--target-action=promote".into()],
            RestoreTarget::Point { kind, target } => {
                vec![format!("--type={kind}"), format!("--target={target}"), "--target-action=promote".into()]
            }
        }
    }
}

/// The default schedule, the upstream image's: full daily at 02:00, differential every six
/// hours, incremental every 15 minutes.
const DEFAULT_CRONS: [(BackupKind, &str, &str); 3] = [
    (BackupKind::Full, "PGBACKREST_AUTO_FULL_CRON", "0 2 * * *"),
    (BackupKind::Diff, "PGBACKREST_AUTO_DIFF_CRON", "20 2,8,14,20 * * *"),
    (BackupKind::Incr, "PGBACKREST_AUTO_INCR_CRON", "*/15 * * * *"),
];

/// A 5-field cron expression croner accepts, or why not.
pub fn parse_cron(expression: &str) -> Result<croner::Cron, String> {
    if expression.split_whitespace().count() != 5 {
        return Err("is not a 5-field cron expression (minute hour day-of-month month day-of-week)".into());
    }
    croner::Cron::new(expression).parse().map_err(|e| format!("is not a valid cron expression: {e}"))
}

impl Parser<'_> {
    /// `None` when backups are off (`PGBACKREST_ENABLE` unset or false).
    pub(super) fn backup(&mut self, mounted_upstream_repo: bool) -> Option<Backup> {
        match self.boolean("PGBACKREST_ENABLE") {
            Some(true) => {}
            Some(false) => return None, // the upstream image's master switch: the rest is ignored
            None => {
                self.refuse_without_enable("PGBACKREST_", "nothing would be archived or backed up");
                return None;
            }
        }
        let stanza = self.identifier("PGBACKREST_STANZA", DEFAULT_STANZA);
        if !stanza.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            self.problem("PGBACKREST_STANZA", format!("{stanza:?} is not accepted; accepted: letters, digits, - _ ."));
        }
        let archive = self.boolean("PGBACKREST_ARCHIVE_ENABLE").unwrap_or(true);
        let mut options = self.backrest_options();
        let repo_given = options.iter().any(|o| o.name == "repo1-path" || o.name == "repo1-type");
        if !repo_given {
            let path = if mounted_upstream_repo { UPSTREAM_REPO_PATH } else { DEFAULT_REPO_PATH };
            options.insert(
                0,
                BackrestOption {
                    name: "repo1-path".into(),
                    value: OptionValue::Plain(path.into()),
                    variable: "PGBACKREST_REPO1_PATH".into(),
                },
            );
        }
        // A posix repository is a directory we may create and give to the service account.
        let posix = options.iter().find(|o| o.name == "repo1-type").is_none_or(|o| o.value.expose() == "posix");
        if let Some(repo) = options.iter().find(|o| o.name == "repo1-path").filter(|_| posix) {
            let path = std::path::Path::new(repo.value.expose());
            if !path.is_absolute() || super::server::is_system_directory(path) {
                let variable = repo.variable.clone();
                self.problem(
                    &variable,
                    format!(
                        "{path:?} is not accepted; accepted: an absolute path of its own, e.g. {DEFAULT_REPO_PATH}"
                    ),
                );
            }
        }
        let schedule = self.schedule();
        let restore = self.restore();
        Some(Backup { stanza, archive, options, schedule, restore })
    }

    /// Every `PGBACKREST_*` that is not ours, as pgBackRest's option.
    fn backrest_options(&mut self) -> Vec<BackrestOption> {
        let mut vars = self.inputs.vars_with_prefix("PGBACKREST_");
        vars.sort();
        let mut options = Vec::new();
        let mut secrets_read = std::collections::HashSet::new();
        for (variable, value) in vars {
            if value.is_empty() || OURS.contains(&variable.as_str()) || super::known::is_service_link(&variable, &value)
            {
                continue;
            }
            if let Some((_, why)) = UPSTREAM_ONLY.iter().find(|(name, _)| variable.starts_with(name)) {
                self.problem(&variable, format!("is the upstream image's, not a pgBackRest option; {why}"));
                continue;
            }
            let mut name = variable["PGBACKREST_".len()..].to_ascii_lowercase().replace('_', "-");
            let secret_file = name.strip_suffix("-file").filter(|base| is_secret_option(base)).map(String::from);
            if let Some(base) = secret_file {
                name = base;
            }
            if let Some((_, from)) = DECIDED_HERE.iter().find(|(decided, _)| *decided == name) {
                self.problem(&variable, format!("is set by pg-entrypoint from {from}; unset it"));
                continue;
            }
            if value.contains(['\n', '\r']) {
                self.problem(&variable, "contains a line break; accepted: one line");
                continue;
            }
            let value = if is_secret_option(&name) {
                let base_variable = format!("PGBACKREST_{}", name.to_ascii_uppercase().replace('-', "_"));
                if !secrets_read.insert(name.clone()) {
                    continue; // NAME and NAME_FILE: read once, by `secret`
                }
                match self.secret(&base_variable) {
                    // One line: a wrapped key file would add lines to pgBackRest's file, which
                    // it would then quote in its error (the secret in a log).
                    Some(secret) if secret.expose().contains(['\n', '\r']) => {
                        self.problem(&variable, "holds more than one line; accepted: the secret on one line");
                        continue;
                    }
                    Some(secret) => OptionValue::Secret(secret),
                    None => continue,
                }
            } else {
                OptionValue::Plain(backrest_boolean(&value))
            };
            options.push(BackrestOption { name, value, variable });
        }
        options
    }

    fn schedule(&mut self) -> Option<Schedule> {
        let enabled = self.boolean("PGBACKREST_AUTO_ENABLE").unwrap_or(false);
        let mut jobs = Vec::new();
        for (kind, variable, default) in DEFAULT_CRONS {
            let expression = self.var(variable).unwrap_or_else(|| default.to_string());
            if expression.eq_ignore_ascii_case("off") {
                continue;
            }
            match parse_cron(&expression) {
                Ok(_) => jobs.push((kind, expression)),
                Err(why) => self.problem(variable, format!("{expression:?} {why}; e.g. \"0 2 * * *\", or off")),
            }
        }
        let timezone = match self.var("PGBACKREST_AUTO_TIMEZONE") {
            None => chrono_tz::Tz::UTC,
            Some(name) => name.parse().unwrap_or_else(|_| {
                self.problem(
                    "PGBACKREST_AUTO_TIMEZONE",
                    format!("{name:?} is not a time zone; accepted: an IANA name such as UTC or Europe/Paris"),
                );
                chrono_tz::Tz::UTC
            }),
        };
        if self.boolean("PGBACKREST_AUTO_PRIMARY_ONLY") == Some(false) {
            self.problem(
                "PGBACKREST_AUTO_PRIMARY_ONLY",
                "is false, but scheduled backups from a replica are not supported; they run on the writable primary \
                 (unset it, or set it to true)",
            );
        }
        let first_backup_delay = match self.var("PGBACKREST_AUTO_FIRST_INCR_DELAY") {
            None => Duration::from_secs(120),
            Some(text) => match text.parse::<u64>() {
                Ok(seconds) if seconds <= 86_400 => Duration::from_secs(seconds),
                _ => {
                    self.problem(
                        "PGBACKREST_AUTO_FIRST_INCR_DELAY",
                        format!("{text:?} is not accepted; accepted: seconds, from 0 to 86400"),
                    );
                    Duration::from_secs(120)
                }
            },
        };
        enabled.then_some(Schedule { jobs, timezone, first_backup_delay })
    }

    fn restore(&mut self) -> Option<Restore> {
        let wanted = self.boolean("PGBACKREST_RESTORE").unwrap_or(false);
        let kind = self.var("PGBACKREST_RESTORE_TYPE").unwrap_or_else(|| "latest".into());
        let given_target = self.var("PGBACKREST_RESTORE_TARGET");
        let target = match (kind.as_str(), given_target) {
            ("latest" | "default", None) => Some(RestoreTarget::Latest),
            ("immediate", None) => Some(RestoreTarget::Immediate),
            ("latest" | "default" | "immediate", Some(_)) => {
                self.problem(
                    "PGBACKREST_RESTORE_TARGET",
                    format!("is set, but PGBACKREST_RESTORE_TYPE={kind} takes no target; set the type to time, xid, name or lsn"),
                );
                None
            }
            ("time" | "xid" | "name" | "lsn", None) => {
                self.problem(
                    "PGBACKREST_RESTORE_TARGET",
                    format!("is required with PGBACKREST_RESTORE_TYPE={kind}, e.g. {}", target_example(&kind)),
                );
                None
            }
            ("time", Some(t)) => Some(RestoreTarget::Point { kind: "time", target: t }),
            ("xid", Some(t)) if t.parse::<u64>().is_ok() => Some(RestoreTarget::Point { kind: "xid", target: t }),
            ("name", Some(t)) => Some(RestoreTarget::Point { kind: "name", target: t }),
            ("lsn", Some(t)) if is_lsn(&t) => Some(RestoreTarget::Point { kind: "lsn", target: t }),
            ("xid" | "lsn", Some(t)) => {
                self.problem(
                    "PGBACKREST_RESTORE_TARGET",
                    format!(
                        "{t:?} is not accepted with PGBACKREST_RESTORE_TYPE={kind}; e.g. {}",
                        target_example(&kind)
                    ),
                );
                None
            }
            (other, _) => {
                self.problem(
                    "PGBACKREST_RESTORE_TYPE",
                    format!("{other:?} is not accepted; accepted: latest, immediate, time, xid, name, lsn"),
                );
                None
            }
        };
        match self.var("PGBACKREST_RESTORE_TARGET_ACTION").as_deref() {
            None | Some("promote") => {}
            Some(action @ ("pause" | "shutdown")) => self.problem(
                "PGBACKREST_RESTORE_TARGET_ACTION",
                format!(
                    "{action} is not supported: the restored server is promoted at its target. To look at the data \
                     first, restore into a scratch volume, or run `pg-entrypoint backup verify`"
                ),
            ),
            Some(other) => self
                .problem("PGBACKREST_RESTORE_TARGET_ACTION", format!("{other:?} is not accepted; accepted: promote")),
        }
        let set = self.var("PGBACKREST_RESTORE_SET").filter(|s| s != "latest");
        if let Some(label) = set.as_deref().filter(|l| !is_backup_label(l)) {
            self.problem(
                "PGBACKREST_RESTORE_SET",
                format!(
                    "{label:?} is not a backup label; accepted: latest, or a label from `pg-entrypoint backup list`"
                ),
            );
        }
        wanted.then_some(Restore { target: target?, set })
    }
}

fn is_secret_option(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("repo") else { return false };
    let option = rest.trim_start_matches(|c: char| c.is_ascii_digit()).trim_start_matches('-');
    SECRET_OPTIONS.contains(&option)
}

/// pgBackRest spells booleans y and n; the upstream image's users write true and false.
fn backrest_boolean(value: &str) -> String {
    match value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" => "y".into(),
        "false" | "no" | "off" => "n".into(),
        _ => value.to_string(),
    }
}

fn target_example(kind: &str) -> &'static str {
    match kind {
        "time" => "\"2026-12-06 10:30:00+00\"",
        "xid" => "\"1234567\"",
        "name" => "a restore point from pg_create_restore_point()",
        _ => "\"0/3000060\"",
    }
}

fn is_lsn(text: &str) -> bool {
    text.split_once('/').is_some_and(|(hi, lo)| {
        !hi.is_empty() && !lo.is_empty() && u32::from_str_radix(hi, 16).is_ok() && u32::from_str_radix(lo, 16).is_ok()
    })
}

/// pgBackRest's labels: `20261206-101500F`, `..._20261206-111500I` (diff D, incr I).
pub fn is_backup_label(text: &str) -> bool {
    let bytes = text.as_bytes();
    let stamp =
        |s: &[u8]| s.len() == 15 && s[8] == b'-' && s.iter().enumerate().all(|(i, c)| i == 8 || c.is_ascii_digit());
    match bytes.len() {
        16 => stamp(&bytes[..15]) && bytes[15] == b'F',
        33 => {
            stamp(&bytes[..15])
                && bytes[15] == b'F'
                && bytes[16] == b'_'
                && stamp(&bytes[17..32])
                && b"DI".contains(&bytes[32])
        }
        _ => false,
    }
}
