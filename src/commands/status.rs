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
        Ok(observe::document(&row))
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
