//! `/metrics`: one sample of the server and of the entrypoint, in Prometheus's text format
//! (docs/metrics.md). Where Patroni has a metric, ours has its name and meaning, so one
//! dashboard and one set of alert rules serve both HA modes; ours are `pg_entrypoint_*`.
//! Pure: the caller asks the server and hands in the values.

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};

/// The text format's `Content-Type`.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// What one scrape knows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// The cluster, as Patroni's `scope` label names it: here the database system identifier
    /// (the same on every member of a cluster); empty before the first initdb or clone.
    pub scope: String,
    /// What the server said; `None` while it is not running or does not answer.
    pub server: Option<ServerSample>,
    /// How long each phase of this start took (`upgrade`, `initdb`, `clone`, `total` to
    /// serving), in seconds; only the phases that happened.
    pub start_phases: Vec<(&'static str, f64)>,
    /// PgBouncer (`PGBOUNCER_ENABLE`) accepts connections on its socket; `None`: not enabled.
    pub pooler_up: Option<bool>,
}

/// The server's answer to one query (`postgres::observe::METRICS_SQL`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerSample {
    pub postmaster_start_time: f64,
    pub in_recovery: bool,
    /// `transaction_read_only` is on: always on a standby; on a primary, it refuses writes
    /// (`default_transaction_read_only`, the fence).
    pub read_only: bool,
    /// Held read-only by the majority rule, waiting for a majority (docs/native-ha.md).
    pub fenced: bool,
    pub server_version: i64,
    pub timeline: i64,
    /// Bytes since 0/0: the primary's current WAL position (0 on a replica).
    pub xlog_location: i64,
    /// Bytes since 0/0: a replica's received and replayed WAL (0 on a primary).
    pub received_location: i64,
    pub replayed_location: i64,
    /// Epoch seconds of the last replayed transaction (0: none).
    pub replayed_timestamp: f64,
    pub replay_paused: bool,
    pub pending_restart: bool,
    /// A replica's WAL receiver: streaming or not, silence since the primary's last message,
    /// and the WAL its primary last reported sending that it has not replayed.
    pub receiver_streaming: bool,
    pub receiver_silence: Option<f64>,
    pub replay_lag_bytes: Option<i64>,
    /// The standbys of this server, as `pg_stat_replication` shows them.
    pub replicas: Vec<ReplicaSample>,
    /// Standbys confirming commits now, and how many `synchronous_standby_names` asks for.
    pub synchronous_standbys: i64,
    pub synchronous_required: i64,
    /// Sessions whose commit waits for a synchronous standby.
    pub commits_waiting: i64,
    pub archive_mode: bool,
    pub archived: u64,
    pub archive_failed: u64,
    /// Seconds since the last segment was archived; `None`: never.
    pub last_archived_age: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplicaSample {
    pub name: String,
    pub streaming: bool,
    /// WAL the primary has written that this standby has not replayed.
    pub lag_bytes: Option<i64>,
    /// `replay_lag`: how long a commit takes to be visible there (`None` when idle).
    pub lag_seconds: Option<f64>,
}

type Labels = Vec<(&'static str, String)>;

/// A registry built for one scrape: each metric registered with its value already set.
struct Exposition(Registry);

impl Exposition {
    fn add(&mut self, name: &str, help: &str, metric: impl Metric) {
        self.0.register(name, help, metric);
    }

    fn gauge(&mut self, name: &str, help: &str, value: i64) {
        let gauge = Gauge::<i64>::default();
        gauge.set(value);
        self.add(name, help, gauge);
    }

    fn gauge_f64(&mut self, name: &str, help: &str, value: f64) {
        let gauge = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        gauge.set(value);
        self.add(name, help, gauge);
    }

    /// `name_total`, from a count the server keeps.
    fn counter(&mut self, name: &str, help: &str, value: u64) {
        let counter = Counter::<u64>::default();
        counter.inc_by(value);
        self.add(name, help, counter);
    }

    fn family(&mut self, name: &str, help: &str, values: impl IntoIterator<Item = (Labels, f64)>) {
        let family = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        for (labels, value) in values {
            family.get_or_create(&labels).set(value);
        }
        self.add(name, help, family);
    }
}

/// The text a scrape gets.
pub fn exposition(sample: &Sample) -> String {
    let mut m = Exposition(Registry::with_labels([("scope".into(), sample.scope.clone().into())].into_iter()));
    let server = sample.server.as_ref();
    let flag = |f: fn(&ServerSample) -> bool| i64::from(server.is_some_and(f));
    let number = |f: fn(&ServerSample) -> i64| server.map_or(0, f);

    // Patroni's names and meanings (patroni/api.py, do_GET_metrics).
    m.gauge("patroni_postgres_running", "Value is 1 if Postgres is running, 0 otherwise", i64::from(server.is_some()));
    m.gauge_f64(
        "patroni_postmaster_start_time",
        "Epoch seconds since Postgres started",
        server.map_or(0.0, |s| s.postmaster_start_time),
    );
    m.gauge(
        "patroni_primary",
        "Value is 1 if this node is the leader (a writable primary), 0 otherwise",
        flag(|s| !s.in_recovery && !s.read_only),
    );
    m.gauge("patroni_replica", "Value is 1 if this node is a replica, 0 otherwise", flag(|s| s.in_recovery));
    m.gauge(
        "patroni_xlog_location",
        "Current location of the Postgres transaction log, 0 if this node is not the leader",
        number(|s| s.xlog_location),
    );
    m.gauge(
        "patroni_xlog_received_location",
        "Current location of the received Postgres transaction log, 0 if this node is not a replica",
        number(|s| s.received_location),
    );
    m.gauge(
        "patroni_xlog_replayed_location",
        "Current location of the replayed Postgres transaction log, 0 if this node is not a replica",
        number(|s| s.replayed_location),
    );
    m.gauge_f64(
        "patroni_xlog_replayed_timestamp",
        "Current timestamp of the replayed Postgres transaction log, 0 if null",
        server.map_or(0.0, |s| s.replayed_timestamp),
    );
    m.gauge("patroni_xlog_paused", "Value is 1 if the Postgres xlog is paused, 0 otherwise", flag(|s| s.replay_paused));
    m.gauge(
        "patroni_postgres_server_version",
        "Version of Postgres (if running), 0 otherwise",
        number(|s| s.server_version),
    );
    m.gauge(
        "patroni_postgres_timeline",
        "Postgres timeline of this node (if running), 0 otherwise",
        number(|s| s.timeline),
    );
    m.gauge(
        "patroni_postgres_streaming",
        "Value is 1 if Postgres is streaming, 0 otherwise",
        flag(|s| s.in_recovery && s.receiver_streaming),
    );
    m.gauge(
        "patroni_postgres_in_archive_recovery",
        "Value is 1 if Postgres is replicating from archive, 0 otherwise",
        flag(|s| s.in_recovery && !s.receiver_streaming),
    );
    m.gauge(
        "patroni_pending_restart",
        "Value is 1 if the node needs a restart, 0 otherwise",
        flag(|s| s.pending_restart),
    );

    // Ours.
    m.gauge(
        "pg_entrypoint_read_only",
        "Value is 1 if this server is not in recovery but refuses writes, 0 otherwise",
        flag(|s| !s.in_recovery && s.read_only),
    );
    m.gauge(
        "pg_entrypoint_fenced",
        "Value is 1 while the majority rule holds this primary read-only, 0 otherwise",
        flag(|s| s.fenced),
    );
    m.family(
        "pg_entrypoint_start_phase_seconds",
        "How long each phase of this start took (upgrade, initdb, clone; total: until serving)",
        sample.start_phases.iter().map(|(phase, seconds)| (vec![("phase", phase.to_string())], *seconds)),
    );
    if let Some(up) = sample.pooler_up {
        m.gauge("pg_entrypoint_pooler_up", "Value is 1 when PgBouncer accepts connections, 0 if not", i64::from(up));
    }
    let Some(s) = server else { return m.encode() };
    if s.in_recovery {
        if let Some(silence) = s.receiver_silence {
            m.gauge_f64(
                "pg_entrypoint_wal_receiver_silence_seconds",
                "Seconds since this replica last heard from its primary",
                silence,
            );
        }
        if let Some(bytes) = s.replay_lag_bytes {
            m.gauge(
                "pg_entrypoint_replay_lag_bytes",
                "WAL the primary last reported sending that this replica has not replayed, in bytes",
                bytes,
            );
        }
    }
    let named = |r: &ReplicaSample| vec![("application_name", r.name.clone())];
    m.gauge(
        "pg_entrypoint_replicas_streaming",
        "Standbys streaming from this server",
        s.replicas.iter().filter(|r| r.streaming).count() as i64,
    );
    m.family(
        "pg_entrypoint_replica_lag_bytes",
        "WAL this primary has written that the standby has not replayed, in bytes",
        s.replicas.iter().filter_map(|r| Some((named(r), r.lag_bytes? as f64))),
    );
    m.family(
        "pg_entrypoint_replica_lag_seconds",
        "How long a commit on this primary takes to become visible on the standby (replay_lag)",
        s.replicas.iter().filter_map(|r| Some((named(r), r.lag_seconds?))),
    );
    m.gauge("pg_entrypoint_synchronous_standbys", "Standbys confirming commits now", s.synchronous_standbys);
    m.gauge(
        "pg_entrypoint_synchronous_standbys_required",
        "Standbys synchronous_standby_names asks to confirm each commit (0: asynchronous)",
        s.synchronous_required,
    );
    m.gauge(
        "pg_entrypoint_commits_waiting",
        "Sessions whose commit waits for a synchronous standby",
        s.commits_waiting,
    );
    m.gauge("pg_entrypoint_archive_mode", "Value is 1 if WAL archiving is on, 0 otherwise", i64::from(s.archive_mode));
    m.counter("pg_entrypoint_archived", "WAL segments archived (pg_stat_archiver)", s.archived);
    m.counter(
        "pg_entrypoint_archive_failed",
        "Failed attempts to archive a WAL segment (pg_stat_archiver)",
        s.archive_failed,
    );
    if let Some(age) = s.last_archived_age {
        m.gauge_f64("pg_entrypoint_last_archived_age_seconds", "Seconds since a WAL segment was last archived", age);
    }
    m.encode()
}

impl Exposition {
    fn encode(self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut text, &self.0);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, start: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(start))
    }

    #[test]
    fn a_member_whose_postgres_is_down_still_answers() {
        let text = exposition(&Sample { scope: "7".into(), ..Sample::default() });
        assert_eq!(line(&text, "patroni_postgres_running"), Some("patroni_postgres_running{scope=\"7\"} 0"));
        assert_eq!(line(&text, "patroni_primary{"), Some("patroni_primary{scope=\"7\"} 0"));
        assert!(line(&text, "pg_entrypoint_commits_waiting").is_none(), "nothing asked, nothing said:\n{text}");
    }

    #[test]
    fn a_primary_reports_each_standby_and_a_fenced_one_is_not_writable() {
        let replica = ReplicaSample { name: "r\"1".into(), streaming: true, lag_bytes: Some(4096), lag_seconds: None };
        let server = ServerSample { timeline: 3, replicas: vec![replica], archived: 5, ..ServerSample::default() };
        let text = exposition(&Sample { scope: "7".into(), server: Some(server.clone()), ..Sample::default() });
        assert_eq!(line(&text, "patroni_primary{"), Some("patroni_primary{scope=\"7\"} 1"));
        assert_eq!(line(&text, "patroni_postgres_timeline{"), Some("patroni_postgres_timeline{scope=\"7\"} 3"));
        assert_eq!(
            line(&text, "pg_entrypoint_replica_lag_bytes{"),
            Some("pg_entrypoint_replica_lag_bytes{scope=\"7\",application_name=\"r\\\"1\"} 4096.0")
        );
        assert!(line(&text, "pg_entrypoint_replica_lag_seconds{").is_none(), "idle: no replay_lag");
        assert_eq!(line(&text, "pg_entrypoint_archived_total{"), Some("pg_entrypoint_archived_total{scope=\"7\"} 5"));
        let fenced = ServerSample { read_only: true, fenced: true, ..server };
        let text = exposition(&Sample { server: Some(fenced), ..Sample::default() });
        assert_eq!(line(&text, "patroni_primary{"), Some("patroni_primary{scope=\"\"} 0"));
        assert_eq!(line(&text, "pg_entrypoint_fenced{"), Some("pg_entrypoint_fenced{scope=\"\"} 1"));
    }
}
