//! `status`: what this server is and how its replication stands, as one JSON object.
//! PostgreSQL builds the JSON itself, so types and escaping are its own.

use std::time::Duration;

use crate::config::{Config, ProcessInputs, Role};
use crate::local::{describe, Local};
use crate::native::member::{self, Answer};

const STATUS_SQL: &str = "
SELECT jsonb_pretty(jsonb_build_object(
  'configured_role', $1::text,
  'role', CASE WHEN pg_is_in_recovery() THEN 'replica' ELSE 'primary' END,
  'timeline', CASE WHEN pg_is_in_recovery()
      THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver), (SELECT timeline_id FROM pg_control_checkpoint()))
      ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END,
  'current_lsn', CASE WHEN NOT pg_is_in_recovery() THEN pg_current_wal_lsn()::text END,
  'received_lsn', pg_last_wal_receive_lsn()::text,
  'replayed_lsn', pg_last_wal_replay_lsn()::text,
  'replay_lag_seconds', CASE WHEN pg_is_in_recovery() THEN extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END,
  'wal_receiver', (SELECT jsonb_build_object('status', status, 'primary_host', sender_host, 'primary_port', sender_port,
                                             'slot', slot_name, 'latest_end_lsn', latest_end_lsn::text)
                   FROM pg_stat_wal_receiver),
  'synchronous_standby_names', current_setting('synchronous_standby_names'),
  'replicas', coalesce((
      SELECT jsonb_agg(jsonb_build_object(
               'name', r.application_name, 'client_addr', host(r.client_addr), 'state', r.state,
               'sync_state', r.sync_state,
               'lag_bytes', CASE WHEN NOT pg_is_in_recovery() THEN pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn) END,
               'replay_lag_seconds', extract(epoch FROM r.replay_lag),
               'slot', s.slot_name) ORDER BY r.application_name)
        FROM pg_stat_replication r LEFT JOIN pg_replication_slots s ON s.active_pid = r.pid), '[]'::jsonb),
  'peers', (SELECT coalesce(jsonb_agg(jsonb_build_object('address', a, 'state', st, 'timeline', tl, 'lsn', l)), '[]'::jsonb)
              FROM unnest($2::text[], $3::text[], $4::int[], $5::text[]) AS u(a, st, tl, l))
))";

/// Each member a replica knows (its primary and REPLICATION_PEERS) as it answers now: the
/// LSNs to compare before choosing which replica to promote. A primary lists its replicas
/// under `replicas` instead (it keeps no replication password file to ask with).
type Peers = (Vec<String>, Vec<String>, Vec<Option<i32>>, Vec<Option<String>>);

fn peers(config: Option<&Config>) -> Peers {
    let mut out: Peers = Default::default();
    let Some(config) = config else { return out };
    let Role::Replica(replica) = &config.role else { return out };
    let Ok(answers) = member::ask_members_now(config, replica) else { return out };
    for (address, answer) in answers {
        let (state, timeline, lsn) = match answer {
            Answer::Identity(i) => {
                let role = if i.standby { "standby" } else { "primary" };
                (role.to_string(), Some(i.timeline as i32), Some(i.lsn.to_string()))
            }
            Answer::Unreachable(why) => (format!("unreachable: {why}"), None, None),
            Answer::Rejected { variable, reason } => (format!("refused (check {variable}): {reason}"), None, None),
        };
        out.0.push(address.to_string());
        out.1.push(state);
        out.2.push(timeline);
        out.3.push(lsn);
    }
    out
}

/// Prints the JSON; exit 0, or 1 with the reason on stderr when the server cannot be asked.
pub fn run() -> i32 {
    // The configuration (and any secret file only root may read) first, then no more root.
    let config = Config::from_inputs(&ProcessInputs).ok();
    let result = Local::open().map_err(|e| e.to_string()).and_then(|local| {
        let configured = crate::health::expected_role(&local).name();
        let mut client = local.connect(Duration::from_secs(5)).map_err(|e| e.to_string())?;
        let (addresses, states, timelines, lsns) = peers(config.as_ref());
        let row = client
            .query_one(STATUS_SQL, &[&configured, &addresses, &states, &timelines, &lsns])
            .map_err(|e| describe(&e))?;
        Ok(row.get::<_, String>(0))
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
