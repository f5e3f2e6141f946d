//! `pg-entrypoint health [--liveness] [--max-lag B|S] [--require-sync]`: one line saying
//! whether the server is healthy for its role; exit 0 when it is, 1 when not.

use std::time::Duration;

use super::{patroni, Mode};
use crate::config::ProcessInputs;
use crate::postgres::health::{expected_role, verdict, MaxLag};
use crate::postgres::local::{describe, Local, LocalError};
use crate::postgres::observe;

/// Runs the probe; returns the exit code (0 healthy, 1 not) after printing one line.
pub fn run(mode: Mode, liveness: bool, require_sync: bool, max_lag: Option<MaxLag>) -> i32 {
    if mode == Mode::Patroni {
        if max_lag.is_some() || require_sync {
            eprintln!("health: --max-lag and --require-sync are for HA_MODE=native; Patroni's readiness applies");
            return 2;
        }
        return patroni::health(&ProcessInputs, liveness);
    }
    let result = probe(liveness, require_sync, max_lag);
    match &result {
        Ok((why, warning)) => {
            println!("healthy: {why}");
            // Said, not judged: the server serves; its archive needs the operator.
            if let Some(warning) = warning {
                println!("warning: {warning}");
            }
        }
        Err(why) => println!("unhealthy: {why}"),
    }
    i32::from(result.is_err())
}

/// The verdict, and a warning that does not change it (archiving that fails).
fn probe(liveness: bool, require_sync: bool, max_lag: Option<MaxLag>) -> Result<(String, Option<String>), String> {
    let local = Local::open().map_err(|e| e.to_string())?;
    if local.temporary {
        return Err("the entrypoint is still preparing the data directory (temporary server)".into());
    }
    if !["ready", "standby"].contains(&local.pidfile.status.as_str()) {
        return Err(format!("server is {}", local.pidfile.status));
    }
    let mut client = match local.connect(Duration::from_secs(2)) {
        Ok(client) => client,
        // It answered, so it lives; without a password we cannot ask more.
        Err(LocalError::WantsPassword) if liveness => {
            return Ok(("accepting connections (they ask for a password)".into(), None))
        }
        Err(e) => return Err(e.to_string()),
    };
    let row = client.query_one(observe::FACTS_SQL, &[]).map_err(|e| describe(&e))?;
    let observed = observe::observed(&row);
    let expected = expected_role(&local);
    verdict(expected, liveness, require_sync, &observed, max_lag).map(|why| (why, observed.archive_failing))
}
