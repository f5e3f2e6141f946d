//! `status`: what this server is and how its replication stands, as one JSON object.
//! PostgreSQL builds the JSON itself, so types and escaping are its own.

use std::time::Duration;

use crate::local::{describe, Local};

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
        FROM pg_stat_replication r LEFT JOIN pg_replication_slots s ON s.active_pid = r.pid), '[]'::jsonb)
))";

/// Prints the JSON; exit 0, or 1 with the reason on stderr when the server cannot be asked.
pub fn run() -> i32 {
    let result = Local::find().map_err(|e| e.to_string()).and_then(|local| {
        let configured = configured_role(&local);
        let mut client = local.connect(Duration::from_secs(5)).map_err(|e| e.to_string())?;
        let row = client.query_one(STATUS_SQL, &[&configured]).map_err(|e| describe(&e))?;
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

fn configured_role(local: &Local) -> String {
    if std::env::var("HA_MODE").is_ok_and(|m| m == "native") {
        if crate::health::expects_replica(local) { "replica" } else { "primary" }.into()
    } else {
        "standalone".into()
    }
}
