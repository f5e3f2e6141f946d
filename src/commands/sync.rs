//! `pg-entrypoint sync [--mode M] [--count N] [--replicas NAMES]` (also run as
//! `pg-reload-sync-config.sh`, the upstream image's name): changes synchronous replication on
//! the running primary by a reload, without a restart. The values are those of
//! `REPLICATION_SYNCHRONOUS_MODE`/`_COUNT`/`_REPLICAS`, checked the same way, and the majority
//! rule still applies (it may raise what is asked, never lower it). The change is kept with
//! `ALTER SYSTEM` until the next start, which renders the variables again and drops it
//! (docs/operating.md). Without options: what is in force, and where it comes from.

use std::time::{Duration, Instant};

use super::Mode;
use crate::config::{Config, Inputs, ProcessInputs};
use crate::postgres::local::{describe, Local};
use crate::postgres::observe;
use crate::render;

/// The options, as the variables they stand for.
pub struct Change {
    pub mode: Option<String>,
    pub count: Option<String>,
    pub replicas: Option<String>,
}

/// The process environment with the options in place of `REPLICATION_SYNCHRONOUS_*`.
struct WithChange<'a>(&'a Change);

impl WithChange<'_> {
    fn given(&self, name: &str) -> Option<&String> {
        match name {
            "REPLICATION_SYNCHRONOUS_MODE" => self.0.mode.as_ref(),
            "REPLICATION_SYNCHRONOUS_COUNT" => self.0.count.as_ref(),
            "REPLICATION_SYNCHRONOUS_REPLICAS" => self.0.replicas.as_ref(),
            _ => None,
        }
    }
}

impl Inputs for WithChange<'_> {
    fn var(&self, name: &str) -> Option<String> {
        self.given(name).cloned().or_else(|| ProcessInputs.var(name))
    }
    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        ProcessInputs.vars_with_prefix(prefix)
    }
    fn read_file(&self, path: &std::path::Path, max: u64) -> std::io::Result<String> {
        ProcessInputs.read_file(path, max)
    }
    fn hostname(&self) -> String {
        ProcessInputs.hostname()
    }
    fn not_utf8(&self, name: &str) -> bool {
        self.given(name).is_none() && ProcessInputs.not_utf8(name)
    }
    fn mounted(&self, path: &std::path::Path) -> bool {
        ProcessInputs.mounted(path)
    }
    fn holds_data(&self, path: &std::path::Path) -> bool {
        ProcessInputs.holds_data(path)
    }
}

pub fn run(mode: Mode, change: Change) -> i32 {
    if mode == Mode::Patroni {
        eprintln!(
            "sync: with HA_MODE=patroni, Patroni owns synchronous replication: patronictl edit-config \
             (synchronous_mode, synchronous_node_count)"
        );
        return 2;
    }
    match apply(&change) {
        Ok(said) => {
            println!("{said}");
            0
        }
        Err(e) => {
            eprintln!("sync: {e}");
            1
        }
    }
}

fn apply(change: &Change) -> Result<String, String> {
    // The configuration (and any secret file only root may read) first, then no more root.
    let config = Config::from_inputs(&WithChange(change)).map_err(|e| e.to_string())?;
    let local = Local::open().map_err(|e| e.to_string())?;
    let mut client = local.connect(Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let row = client.query_one(observe::SYNCHRONOUS_SQL, &[]).map_err(|e| describe(&e))?;
    let (before, in_recovery, from): (String, bool, String) = (row.get(0), row.get(1), row.get(2));
    let nothing_asked = change.mode.is_none() && change.count.is_none() && change.replicas.is_none();
    if nothing_asked {
        return Ok(format!("synchronous_standby_names = '{before}' (from {from})"));
    }
    if change.mode.is_none() {
        // The others would fall back to REPLICATION_SYNCHRONOUS_MODE, not to what is in force:
        // `--count 1` alone could turn synchronous replication off.
        return Err("give --mode too (off, on, first, any): the options left out are the variables' values, \
                    not what is in force"
            .into());
    }
    if local.temporary {
        return Err("the entrypoint is still preparing the data directory (temporary server); try again".into());
    }
    if in_recovery {
        return Err("this server is a standby; run sync on the primary".into());
    }
    let Some(replication) = config.replication() else {
        return Err("synchronous replication needs HA_MODE=native on this server".into());
    };
    let config = local.running_config(&mut client, config.clone());
    let asked = render::synchronous_standby_names(&replication.sync);
    let value = render::settings(&config)["synchronous_standby_names"].0.clone();
    // Two statements: ALTER SYSTEM cannot share a transaction.
    client
        .batch_execute(&format!("ALTER SYSTEM SET synchronous_standby_names = {}", render::quote_literal(&value)))
        .and_then(|()| client.batch_execute("SELECT pg_reload_conf()"))
        .map_err(|e| describe(&e))?;
    // The reload is asynchronous: wait until this session sees the new value.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now: String = client
            .query_one("SELECT current_setting('synchronous_standby_names')", &[])
            .map_err(|e| describe(&e))?
            .get(0);
        if now == value {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "written, but after 10 s the server still says '{now}' (a -c synchronous_standby_names argument \
                 of the server wins over it)"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let raised = if asked == value {
        String::new()
    } else {
        format!(" (asked '{asked}': the majority rule needs at least this; docs/native-ha.md)")
    };
    Ok(format!(
        "synchronous_standby_names = '{value}'{raised}, was '{before}': in force now, without a restart, until \
         the next start (which renders REPLICATION_SYNCHRONOUS_* again)"
    ))
}
