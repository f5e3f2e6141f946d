//! `status`: what this server is and how its replication stands, as one JSON object (the
//! document of `observe`, which the HTTP endpoint serves too), with each peer as a replica
//! sees it.

use std::time::Duration;

use super::Mode;
use crate::config::{Config, ProcessInputs};
use crate::postgres::local::{describe, Local};
use crate::postgres::member::{self, Answer};
use crate::postgres::observe::{self, Peers};

/// Each member a replica knows (its primary and REPLICATION_PEERS) as it answers now: the
/// LSNs to compare before choosing which replica to promote. A primary lists its replicas
/// under `replicas` instead (it keeps no replication password file to ask with).
fn peers(config: Option<&Config>) -> Peers {
    let mut out: Peers = Default::default();
    let Some(config) = config else { return out };
    let Some(replica) = config.follower() else { return out };
    let Ok(answers) = member::ask_members_now(config, replica) else { return out };
    for (address, answer) in answers {
        let (state, timeline, lsn) = match answer {
            Answer::Identity(i) => {
                let role = if i.standby { "standby" } else { "primary" };
                (role.to_string(), Some(i.timeline as i32), Some(i.lsn.to_string()))
            }
            Answer::Unreachable(why) => (format!("unreachable: {why}"), None, None),
            Answer::Rejected { variable, reason } => (format!("refused (check {variable}): {reason}"), None, None),
            Answer::Untrusted(reason) => (format!("not trusted (TLS): {reason}"), None, None),
        };
        out.0.push(address.to_string());
        out.1.push(state);
        out.2.push(timeline);
        out.3.push(lsn);
    }
    out
}

/// Prints the JSON; exit 0, or 1 with the reason on stderr when the server cannot be asked.
pub fn run(mode: Mode) -> i32 {
    if mode == Mode::Patroni {
        return super::patroni::status(&ProcessInputs);
    }
    // The configuration (and any secret file only root may read) first, then no more root.
    let config = Config::from_inputs(&ProcessInputs).ok();
    let result = Local::open().map_err(|e| e.to_string()).and_then(|local| {
        let configured = crate::postgres::health::expected_role(&local).name();
        let mut client = local.connect(Duration::from_secs(5)).map_err(|e| e.to_string())?;
        let config = config.map(|c| local.running_config(&mut client, c));
        let peers = peers(config.as_ref());
        let row =
            client.query_one(observe::STATUS_SQL, &observe::params(&configured, &peers)).map_err(|e| describe(&e))?;
        let mut document = with_role_record(&observe::document(&row), &local.pgdata);
        if let Some(pooler) = config.as_ref().and_then(pooler_document) {
            document = with(&document, "pooler", pooler);
        }
        Ok(match config.filter(|c| c.backup.is_some()) {
            Some(config) => with_backups(&document, &config),
            None => document,
        })
    });
    match result {
        Ok(json) => {
            println!("{json}");
            0
        }
        Err(e) => {
            eprintln!("status: {e}");
            1
        }
    }
}

/// The document with `role_record`, when a switchover recorded this node's role (it outranks
/// the environment's), and how to clear it.
fn with_role_record(document: &str, pgdata: &std::path::Path) -> String {
    let record = match crate::pgdata::role_record::read(pgdata) {
        Ok(None) => return document.to_string(),
        Ok(Some(record)) => record.line(),
        Err(why) => why,
    };
    let document = with(document, "role_record", serde_json::json!(record));
    let clears = "REPLICATION_ROLE and PRIMARY_HOST say the same at a start (docs/switchover.md)";
    with(&document, "role_record_clears_when", serde_json::json!(clears))
}

/// PgBouncer's console answers, and its clients and server connections now.
fn pooler_document(config: &Config) -> Option<serde_json::Value> {
    let bin =
        crate::postgres::server::Bin::locate(config.bindir.as_deref(), std::env::var("PATH").ok().as_deref()).ok()?;
    crate::lifecycle::pooler::Supervised::document(config, &bin)
}

/// `document` with `key` set to `value`.
fn with(document: &str, key: &str, value: serde_json::Value) -> String {
    let Ok(mut doc) = serde_json::from_str::<serde_json::Value>(document) else { return document.to_string() };
    doc[key] = value;
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| document.to_string())
}

/// The document with `backups`: what the backup keeper last did (the repository's check, a
/// running or failed backup, the schedule), and what the repository holds now (the last
/// backup, its age).
fn with_backups(document: &str, config: &Config) -> String {
    let Ok(mut doc) = serde_json::from_str::<serde_json::Value>(document) else { return document.to_string() };
    let mut backups = std::fs::read_to_string(config.layout.backup_state())
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .unwrap_or_else(|| serde_json::json!({"state": "not written yet: the server is starting"}));
    let repository = crate::postgres::backrest::Backrest::of(config)
        .zip(config.backup.as_ref())
        .map(|(backrest, backup)| crate::lifecycle::backup::drill::list(&backrest, backup));
    match repository {
        Some(Ok(info)) => {
            backups["backups_in_repository"] = serde_json::json!(info.backups.len());
            backups["last_backup"] = info.backups.last().map_or(serde_json::Value::Null, |b| {
                serde_json::json!({
                    "label": b.label,
                    "type": b.kind,
                    "finished": chrono::DateTime::<chrono::Utc>::from_timestamp(b.stopped, 0)
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                    "age_s": chrono::Utc::now().timestamp() - b.stopped,
                    "duration_s": b.stopped - b.started,
                    "size_bytes": b.size,
                    "repository_bytes": b.repo_size,
                })
            });
        }
        Some(Err(why)) => backups["repository_error"] = serde_json::json!(why),
        None => {}
    }
    doc["backups"] = backups;
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| document.to_string())
}
