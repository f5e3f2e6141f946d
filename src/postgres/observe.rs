//! What the running server says about itself, in one query over its Unix socket: the facts
//! `health` and the HTTP endpoint decide on, and the status document that `status` prints
//! and the endpoint serves. PostgreSQL builds the JSON itself, so types and escaping are its
//! own. Field names follow Patroni's REST API where they exist there (`state`, `role`,
//! `server_version`, `timeline`, `xlog`, `replication`, `replication_state`,
//! `database_system_identifier`), so its clients read ours. A `/metrics` scrape is one query
//! too ([`METRICS_SQL`]).

use std::time::Duration;

use postgres::types::ToSql;
use postgres::Row;

use crate::postgres::health::required_standbys;
use crate::render::metrics::{ReplicaSample, ServerSample};

/// The facts the verdicts need (columns 0 to 8 of both queries); `r` is the WAL receiver.
macro_rules! facts {
    () => {
        "pg_is_in_recovery(),
         CASE WHEN current_setting('transaction_read_only') = 'on' THEN coalesce(
             nullif(current_setting('pg_entrypoint.fence', true), ''), 'default_transaction_read_only is on') END,
         r.status,
         pg_wal_lsn_diff(r.latest_end_lsn, pg_last_wal_replay_lsn())::float8,
         extract(epoch FROM now() - r.last_msg_receipt_time)::float8,
         (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_receiver_timeout'),
         current_setting('synchronous_standby_names'),
         (SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')),
         (SELECT format('archiving has failed since %s (%s failures, the last for %s); see the server log',
                        last_failed_time, failed_count, last_failed_wal)
            FROM pg_stat_archiver
           WHERE current_setting('archive_mode') <> 'off'
             AND last_failed_time > coalesce(last_archived_time, '-infinity'))"
    };
}

/// The timeline: a standby's from its receiver (or its last checkpoint), a primary's from its
/// current WAL file. `f` is `pg_is_in_recovery()`, `r` the WAL receiver.
macro_rules! timeline {
    () => {
        "CASE WHEN f.in_recovery
            THEN coalesce(r.received_tli, (SELECT timeline_id FROM pg_control_checkpoint()))
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END"
    };
}

/// WAL positions as byte counts (Patroni's `xlog` numbers): written (a primary's), received
/// and replayed (a standby's).
macro_rules! written {
    () => {
        "pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint"
    };
}
macro_rules! received {
    () => {
        "pg_wal_lsn_diff(coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), '0/0')::bigint"
    };
}
macro_rules! replayed {
    () => {
        "pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint"
    };
}

/// Where `synchronous_standby_names` comes from, as an operator reads it.
macro_rules! synchronous_from {
    () => {
        "(SELECT CASE
            WHEN sourcefile LIKE '%/postgresql.auto.conf' THEN 'pg-entrypoint sync, until the next start'
            WHEN sourcefile LIKE '%/pg-entrypoint.conf' THEN 'REPLICATION_SYNCHRONOUS_* at start'
            ELSE coalesce(sourcefile, source) END
          FROM pg_settings WHERE name = 'synchronous_standby_names')"
    };
}

/// What `sync` shows and changes: the value in force, whether this is a standby, and where
/// the value comes from.
pub const SYNCHRONOUS_SQL: &str =
    concat!("SELECT current_setting('synchronous_standby_names'), pg_is_in_recovery(), ", synchronous_from!());

/// The facts alone: what `health` and status-only probes (HEAD, OPTIONS) need. A new
/// backend (each `health`) pays for every catalog a query names, so this one names few.
pub const FACTS_SQL: &str =
    concat!("SELECT ", facts!(), " FROM (SELECT 1) one LEFT JOIN pg_stat_wal_receiver r ON true");

/// The facts and the status document (column 9). Parameters: $1 the role the environment
/// configures; $2..$5 the peers as a replica sees them (address, state, timeline, LSN; empty
/// arrays when not asked).
pub const STATUS_SQL: &str = concat!(
    "SELECT ",
    facts!(),
    ",
       jsonb_pretty(jsonb_strip_nulls(jsonb_build_object(
  'state', 'running',
  'role', CASE WHEN f.in_recovery THEN 'replica' ELSE 'primary' END,
  'configured_role', $1::text,
  'postmaster_start_time', pg_postmaster_start_time()::text,
  'server_version', current_setting('server_version_num')::int,
  'database_system_identifier', (SELECT system_identifier::text FROM pg_control_system()),
  'timeline', ",
    timeline!(),
    ",
  'xlog', CASE WHEN f.in_recovery
      THEN jsonb_build_object(
             'received_location', ",
    received!(),
    ",
             'replayed_location', ",
    replayed!(),
    ",
             'replayed_timestamp', pg_last_xact_replay_timestamp()::text,
             'paused', pg_is_wal_replay_paused())
      ELSE jsonb_build_object('location', ",
    written!(),
    ") END,
  'replication_state', CASE WHEN f.in_recovery
      THEN CASE WHEN r.status = 'streaming' THEN 'streaming' ELSE 'in archive recovery' END END,
  'replication', CASE WHEN NOT f.in_recovery THEN (
      SELECT jsonb_agg(jsonb_build_object(
               'usename', usename, 'application_name', application_name, 'client_addr', host(client_addr),
               'state', state, 'sync_state', sync_state, 'sync_priority', sync_priority) ORDER BY application_name)
        FROM pg_stat_replication) END,
  'current_lsn', CASE WHEN NOT f.in_recovery THEN pg_current_wal_lsn()::text END,
  'received_lsn', pg_last_wal_receive_lsn()::text,
  'replayed_lsn', pg_last_wal_replay_lsn()::text,
  'replay_lag_seconds', CASE WHEN f.in_recovery THEN extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END,
  'wal_receiver', CASE WHEN r.pid IS NOT NULL THEN jsonb_build_object(
      'status', r.status, 'primary_host', r.sender_host, 'primary_port', r.sender_port,
      'slot', r.slot_name, 'latest_end_lsn', r.latest_end_lsn::text) END,
  'synchronous_standby_names', current_setting('synchronous_standby_names'),
  'archiving', CASE WHEN current_setting('archive_mode') <> 'off' THEN (
      SELECT jsonb_build_object(
               'archived_count', archived_count, 'last_archived_wal', last_archived_wal,
               'last_archived_time', last_archived_time::text, 'failed_count', failed_count,
               'last_failed_wal', last_failed_wal, 'last_failed_time', last_failed_time::text,
               'failing', coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false))
        FROM pg_stat_archiver) END,
  'synchronous_standby_names_from', ",
    synchronous_from!(),
    ",
  'replicas', coalesce((
      SELECT jsonb_agg(jsonb_build_object(
               'name', p.application_name, 'client_addr', host(p.client_addr), 'state', p.state,
               'sync_state', p.sync_state,
               'lag_bytes', CASE WHEN NOT f.in_recovery THEN pg_wal_lsn_diff(pg_current_wal_lsn(), p.replay_lsn) END,
               'replay_lag_seconds', extract(epoch FROM p.replay_lag),
               'slot', s.slot_name, 'ssl', coalesce(t.ssl, false), 'ssl_version', t.version)
               ORDER BY p.application_name)
        FROM pg_stat_replication p LEFT JOIN pg_replication_slots s ON s.active_pid = p.pid
             LEFT JOIN pg_stat_ssl t ON t.pid = p.pid), '[]'::jsonb),
  'peers', (SELECT coalesce(jsonb_agg(jsonb_build_object('address', a, 'state', st, 'timeline', tl, 'lsn', l)), '[]'::jsonb)
              FROM unnest($2::text[], $3::text[], $4::int[], $5::text[]) AS u(a, st, tl, l))
)))
  FROM (SELECT pg_is_in_recovery() AS in_recovery) f LEFT JOIN pg_stat_wal_receiver r ON true"
);

/// The peers as a replica sees them: addresses, states, timelines, LSNs.
pub type Peers = (Vec<String>, Vec<String>, Vec<Option<i32>>, Vec<Option<String>>);

/// [`STATUS_SQL`]'s parameters, in order.
pub fn params<'a>(configured_role: &'a &'a str, peers: &'a Peers) -> [&'a (dyn ToSql + Sync); 5] {
    [configured_role, &peers.0, &peers.1, &peers.2, &peers.3]
}

/// What the server reported, reduced to what the verdicts need.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub in_recovery: bool,
    /// Why this server does not accept writes although not in recovery: the fence's
    /// reason (`pg_entrypoint.fence`), or `default_transaction_read_only`.
    pub read_only: Option<String>,
    pub receiver_status: Option<String>,
    /// WAL the primary reported that this standby has not replayed yet.
    pub lag_bytes: Option<i64>,
    pub silence: Option<Duration>,
    /// The replica's `wal_receiver_timeout` (zero when disabled).
    pub receiver_timeout: Duration,
    /// A primary's `synchronous_standby_names`, and how many standbys confirm commits now.
    pub sync_names: String,
    pub sync_standbys: i64,
    /// Archiving fails (the latest attempt failed): since when, how often. Not a verdict: a
    /// primary whose archive is unreachable keeps serving, and says so.
    pub archive_failing: Option<String>,
}

/// The facts of a row of either query.
pub fn observed(row: &Row) -> Observed {
    Observed {
        in_recovery: row.get(0),
        read_only: row.get(1),
        receiver_status: row.get(2),
        lag_bytes: row.get::<_, Option<f64>>(3).map(|b| b as i64),
        silence: row.get::<_, Option<f64>>(4).map(|s| Duration::from_secs_f64(s.max(0.0))),
        receiver_timeout: Duration::from_millis(row.get::<_, Option<i64>>(5).unwrap_or(0).max(0) as u64),
        sync_names: row.get(6),
        sync_standbys: row.get(7),
        archive_failing: row.get(8),
    }
}

/// The status document of a row of [`STATUS_SQL`] (pretty-printed JSON).
pub fn document(row: &Row) -> String {
    row.get(9)
}

/// One `/metrics` scrape: everything in one row (the standbys as arrays), nothing that
/// needs a new backend or a catalog scan beyond the statistics views.
pub const METRICS_SQL: &str = concat!(
    "SELECT
  (SELECT system_identifier FROM pg_control_system())::text,
  extract(epoch FROM pg_postmaster_start_time())::float8,
  f.in_recovery,
  current_setting('transaction_read_only') = 'on',
  coalesce(current_setting('pg_entrypoint.fence', true), '') <> '',
  current_setting('server_version_num')::int8,
  (",
    timeline!(),
    ")::int8,
  CASE WHEN f.in_recovery THEN 0 ELSE ",
    written!(),
    " END,
  CASE WHEN f.in_recovery THEN ",
    received!(),
    " ELSE 0 END,
  CASE WHEN f.in_recovery THEN ",
    replayed!(),
    " ELSE 0 END,
  coalesce(extract(epoch FROM pg_last_xact_replay_timestamp()), 0)::float8,
  CASE WHEN f.in_recovery THEN pg_is_wal_replay_paused() ELSE false END,
  EXISTS (SELECT 1 FROM pg_settings WHERE pending_restart),
  coalesce(r.status = 'streaming', false),
  extract(epoch FROM now() - r.last_msg_receipt_time)::float8,
  pg_wal_lsn_diff(r.latest_end_lsn, pg_last_wal_replay_lsn())::int8,
  coalesce(s.names, '{}'), coalesce(s.states, '{}'), coalesce(s.lag_bytes, '{}'), coalesce(s.lag_seconds, '{}'),
  current_setting('synchronous_standby_names'),
  (SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')),
  (SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'),
  current_setting('archive_mode') <> 'off',
  a.archived_count, a.failed_count,
  extract(epoch FROM now() - a.last_archived_time)::float8
  FROM (SELECT pg_is_in_recovery() AS in_recovery) f
  LEFT JOIN pg_stat_wal_receiver r ON true
  CROSS JOIN pg_stat_archiver a
  LEFT JOIN LATERAL (
    SELECT array_agg(coalesce(p.application_name, '') ORDER BY p.application_name) AS names,
           array_agg(p.state ORDER BY p.application_name) AS states,
           array_agg((CASE WHEN f.in_recovery THEN NULL
                           ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), p.replay_lsn) END)::int8
                     ORDER BY p.application_name) AS lag_bytes,
           array_agg(extract(epoch FROM p.replay_lag)::float8 ORDER BY p.application_name) AS lag_seconds
      FROM pg_stat_replication p) s ON true"
);

/// The system identifier and the server's part of a scrape, from a row of [`METRICS_SQL`].
pub fn metrics(row: &Row) -> (String, ServerSample) {
    let names: Vec<String> = row.get(16);
    let states: Vec<Option<String>> = row.get(17);
    let lag_bytes: Vec<Option<i64>> = row.get(18);
    let lag_seconds: Vec<Option<f64>> = row.get(19);
    let replicas = names
        .into_iter()
        .enumerate()
        .map(|(i, name)| ReplicaSample {
            name,
            streaming: states.get(i).cloned().flatten().as_deref() == Some("streaming"),
            lag_bytes: lag_bytes.get(i).copied().flatten(),
            lag_seconds: lag_seconds.get(i).copied().flatten(),
        })
        .collect();
    let sync_names: String = row.get(20);
    let server = ServerSample {
        postmaster_start_time: row.get(1),
        in_recovery: row.get(2),
        read_only: row.get(3),
        fenced: row.get(4),
        server_version: row.get(5),
        timeline: row.get(6),
        xlog_location: row.get(7),
        received_location: row.get(8),
        replayed_location: row.get(9),
        replayed_timestamp: row.get(10),
        replay_paused: row.get(11),
        pending_restart: row.get(12),
        receiver_streaming: row.get(13),
        receiver_silence: row.get(14),
        replay_lag_bytes: row.get(15),
        replicas,
        synchronous_standbys: row.get(21),
        synchronous_required: if sync_names.trim().is_empty() { 0 } else { required_standbys(&sync_names) },
        commits_waiting: row.get(22),
        archive_mode: row.get(23),
        archived: row.get::<_, i64>(24).max(0) as u64,
        archive_failed: row.get::<_, i64>(25).max(0) as u64,
        last_archived_age: row.get(26),
    };
    // pg_control_system() shows the identifier as a signed bigint; pg_control holds it
    // unsigned, as `datadir::system_identifier` reads it while postgres is down: one form.
    let scope = row.get::<_, String>(0).parse::<i64>().map_or_else(|_| String::new(), |id| (id as u64).to_string());
    (scope, server)
}
