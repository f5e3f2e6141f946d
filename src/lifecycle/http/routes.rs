//! What the endpoint answers, decided from the request and what is known of the server:
//! pure, so every path is tested in every state without a server. The paths and their
//! meaning follow Patroni's REST API, so an HAProxy configuration written for Patroni routes
//! to these containers unchanged (docs/http.md).

use crate::postgres::health::{self, Expected, MaxLag};
use crate::postgres::observe::Observed;

/// Where the entrypoint is in its life, as the endpoint reports it (Patroni's state names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Validating, converging, promoting a standby: no server of ours to ask yet.
    Starting,
    InitializingNewCluster,
    CreatingReplica,
    /// `PGBACKREST_RESTORE`: the cluster comes from the repository.
    RestoringFromBackup,
    /// postgres, the real one, is running (it may still be starting up).
    Running,
    /// A stop was requested.
    Stopping,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::InitializingNewCluster => "initializing new cluster",
            Phase::CreatingReplica => "creating replica",
            Phase::RestoringFromBackup => "restoring from backup",
            Phase::Running => "running",
            Phase::Stopping => "stopping",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    /// HEAD and OPTIONS (HAProxy's `option httpchk OPTIONS /primary`): the status alone.
    StatusOnly,
    Other,
}

/// What a path checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// The writable primary: `/`, `/primary`, `/read-write`, `/leader`, `/master`.
    Primary,
    /// A replica in recovery, within `?lag=`, in `?replication_state=`.
    Replica,
    /// Either of the above.
    ReadOnly,
    /// postgres answers queries.
    Health,
    /// The entrypoint is alive (not stopping).
    Liveness,
    /// Healthy for the role the environment gives it, as `pg-entrypoint health`.
    Readiness,
    /// The status document, always.
    Status,
    /// Roles native mode never has (standby leader, synchronous and quorum standbys as
    /// Patroni tracks them in its store): always 503, as Patroni answers a node without them.
    Never,
}

fn check_of_path(path: &str) -> Option<Check> {
    Some(match path {
        "/" | "/primary" | "/read-write" | "/leader" | "/master" => Check::Primary,
        "/replica" => Check::Replica,
        "/read-only" => Check::ReadOnly,
        "/health" => Check::Health,
        "/liveness" => Check::Liveness,
        "/readiness" => Check::Readiness,
        "/patroni" => Check::Status,
        "/standby-leader"
        | "/standby_leader"
        | "/sync"
        | "/synchronous"
        | "/async"
        | "/asynchronous"
        | "/quorum"
        | "/read-only-sync"
        | "/read-only-synchronous"
        | "/read-only-quorum" => Check::Never,
        _ => return None,
    })
}

/// True when answering `path` needs the server asked (only while it runs).
pub fn asks_server(path: &str) -> bool {
    !matches!(check_of_path(path), None | Some(Check::Liveness | Check::Never))
}

/// What is known when a request comes.
pub struct Situation<'a> {
    pub phase: Phase,
    pub expected: Expected,
    /// The server's answer, when it was asked: the facts and the status document, or why
    /// it could not answer.
    pub server: Option<Result<(&'a Observed, &'a str), &'a str>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    None,
    Json(String),
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: Body,
}

/// The answer to `method path?query` in `situation`.
pub fn answer(method: Method, path: &str, query: &str, situation: &Situation) -> Reply {
    let Some(check) = check_of_path(path) else {
        return Reply { status: 404, body: Body::Text(format!("no such path: {path}\n")) };
    };
    if method == Method::Other {
        return Reply { status: 405, body: Body::Text("only GET, HEAD and OPTIONS\n".into()) };
    }
    let query = match Query::parse(query) {
        Ok(q) => q,
        Err(why) => return Reply { status: 400, body: Body::Text(format!("{why}\n")) },
    };
    let observed = match (situation.phase, situation.server) {
        (Phase::Running, Some(Ok((o, _)))) => Some(o),
        _ => None,
    };
    let ok = match check {
        Check::Liveness => situation.phase != Phase::Stopping,
        Check::Status => true,
        Check::Never => false,
        Check::Health => observed.is_some(),
        Check::Primary => observed.is_some_and(is_primary),
        Check::Replica => observed.is_some_and(|o| is_replica(o, &query)),
        Check::ReadOnly => observed.is_some_and(|o| is_primary(o) || is_replica(o, &query)),
        Check::Readiness => observed.is_some_and(|o| {
            let lag = query.lag.map(|b| MaxLag::Bytes(i64::try_from(b).unwrap_or(i64::MAX)));
            health::verdict(situation.expected, false, false, o, lag).is_ok()
        }),
    };
    let status = if situation.phase == Phase::Stopping {
        503 // every answer, so that balancers drain this node while it stops
    } else if ok {
        200
    } else {
        503
    };
    let body = match method {
        Method::Get => Body::Json(document(situation)),
        _ => Body::None,
    };
    Reply { status, body }
}

/// A primary takes writes: out of recovery and not read-only.
fn is_primary(o: &Observed) -> bool {
    !o.in_recovery && o.read_only.is_none()
}

/// A replica: in recovery, within `lag` of what its primary reported (unknown counts as
/// within, as in Patroni), and in `replication_state` when asked.
fn is_replica(o: &Observed, query: &Query) -> bool {
    let within_lag = match (query.lag, o.lag_bytes) {
        (Some(max), Some(lag)) => lag <= i64::try_from(max).unwrap_or(i64::MAX),
        _ => true,
    };
    let state_matches = query.replication_state.as_deref().is_none_or(|wanted| wanted == replication_state(o));
    o.in_recovery && within_lag && state_matches
}

/// Patroni's names: `streaming` with a WAL receiver streaming, else `in archive recovery`.
fn replication_state(o: &Observed) -> &'static str {
    if o.receiver_status.as_deref() == Some("streaming") {
        "streaming"
    } else {
        "in archive recovery"
    }
}

/// The server's status document, or a short one saying where the entrypoint is.
fn document(situation: &Situation) -> String {
    match (situation.phase, situation.server) {
        (Phase::Running, Some(Ok((_, doc)))) => doc.to_string(),
        (phase, server) => {
            let state = match (phase, server) {
                (Phase::Running, _) => "starting", // postgres runs but does not answer yet
                (phase, _) => phase.name(),
            };
            let error = match server {
                Some(Err(why)) => format!(", \"error\": {}", crate::render::quote_json(why)),
                _ => String::new(),
            };
            format!("{{\"state\": \"{state}\", \"configured_role\": \"{}\"{error}}}", situation.expected.name())
        }
    }
}

/// The query parameters we read; `tag_*` (Patroni's member tags) and others are ignored:
/// native mode has no tags.
#[derive(Debug, Default, PartialEq)]
struct Query {
    lag: Option<u64>,
    replication_state: Option<String>,
}

impl Query {
    fn parse(query: &str) -> Result<Query, String> {
        let mut q = Query::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "lag" => {
                    q.lag = Some(parse_bytes(value).ok_or_else(|| {
                        format!(
                            "lag={value:?} is not a size; accepted: bytes (1048576) or with a unit (1024kB, 16MB, 1GB)"
                        )
                    })?)
                }
                "replication_state" => q.replication_state = Some(value.replace("%20", " ").replace('+', " ")),
                _ => {}
            }
        }
        Ok(q)
    }
}

/// Bytes as Patroni reads them: a number with an optional `B`, `kB`, `MB`, `GB` or `TB`.
fn parse_bytes(text: &str) -> Option<u64> {
    let digits = text.len() - text.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (number, unit) = text.split_at(digits);
    let factor: u64 = match unit {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn observed(in_recovery: bool, receiver: Option<&str>, lag: Option<i64>) -> Observed {
        Observed {
            in_recovery,
            read_only: None,
            receiver_status: receiver.map(String::from),
            lag_bytes: lag,
            silence: Some(Duration::ZERO),
            receiver_timeout: Duration::from_secs(15),
            sync_names: String::new(),
            sync_standbys: 0,
            archive_failing: None,
        }
    }

    fn status(path: &str, phase: Phase, expected: Expected, server: Option<&Observed>) -> u16 {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let server = server.map(|o| Ok((o, "{}")));
        answer(Method::Get, path, query, &Situation { phase, expected, server }).status
    }

    #[test]
    fn roles_answer_their_paths() {
        let primary = observed(false, None, None);
        let replica = observed(true, Some("streaming"), Some(0));
        let run = Phase::Running;
        for path in ["/", "/primary", "/read-write", "/leader", "/master"] {
            assert_eq!(status(path, run, Expected::Primary, Some(&primary)), 200, "{path}");
            assert_eq!(status(path, run, Expected::Replica, Some(&replica)), 503, "{path}");
        }
        assert_eq!(status("/replica", run, Expected::Primary, Some(&primary)), 503);
        assert_eq!(status("/replica", run, Expected::Replica, Some(&replica)), 200);
        assert_eq!(status("/read-only", run, Expected::Primary, Some(&primary)), 200);
        assert_eq!(status("/read-only", run, Expected::Replica, Some(&replica)), 200);
        let read_only = Observed { read_only: Some("default_transaction_read_only is on".into()), ..primary.clone() };
        assert_eq!(status("/primary", run, Expected::Primary, Some(&read_only)), 503, "writes would fail");
        // A node configured as a replica but out of recovery is a primary for routing, and
        // not ready for the role it is configured for.
        assert_eq!(status("/primary", run, Expected::Replica, Some(&primary)), 200);
        assert_eq!(status("/readiness", run, Expected::Replica, Some(&primary)), 503);
    }

    #[test]
    fn lag_and_replication_state() {
        let run = Phase::Running;
        let behind = observed(true, Some("streaming"), Some(20 << 20));
        assert_eq!(status("/replica?lag=16MB", run, Expected::Replica, Some(&behind)), 503);
        assert_eq!(status("/replica?lag=1GB", run, Expected::Replica, Some(&behind)), 200);
        assert_eq!(status("/read-only?lag=16MB", run, Expected::Replica, Some(&behind)), 503);
        // Unknown lag (no WAL receiver) is within any bound, as in Patroni.
        let cut_off = observed(true, None, None);
        assert_eq!(status("/replica?lag=1kB", run, Expected::Replica, Some(&cut_off)), 200);
        assert_eq!(status("/replica?replication_state=streaming", run, Expected::Replica, Some(&cut_off)), 503);
        let state = "/replica?replication_state=in%20archive%20recovery";
        assert_eq!(status(state, run, Expected::Replica, Some(&cut_off)), 200);
        assert_eq!(status("/readiness", run, Expected::Replica, Some(&cut_off)), 503);
        assert_eq!(parse_bytes("1048576"), Some(1 << 20));
        assert_eq!(parse_bytes("1024kB"), Some(1 << 20));
        assert_eq!(parse_bytes("16MB"), Some(16 << 20));
        assert_eq!(parse_bytes("1GB"), Some(1 << 30));
        assert_eq!(parse_bytes("16mb"), None);
        assert_eq!(parse_bytes(""), None);
        assert_eq!(parse_bytes("99999999999999999999TB"), None);
    }

    #[test]
    fn nothing_but_liveness_before_postgres_runs_and_nothing_while_stopping() {
        let primary = observed(false, None, None);
        for phase in
            [Phase::Starting, Phase::InitializingNewCluster, Phase::CreatingReplica, Phase::RestoringFromBackup]
        {
            for path in ["/", "/primary", "/replica", "/read-only", "/health", "/readiness"] {
                // Even if a (temporary) server answered: never a role before the real one runs.
                assert_eq!(status(path, phase, Expected::Primary, Some(&primary)), 503, "{path} {phase:?}");
            }
            assert_eq!(status("/liveness", phase, Expected::Primary, None), 200);
            assert_eq!(status("/patroni", phase, Expected::Primary, None), 200);
        }
        for path in ["/", "/primary", "/liveness", "/patroni", "/health"] {
            assert_eq!(status(path, Phase::Stopping, Expected::Primary, Some(&primary)), 503, "{path}");
        }
        // Running, but postgres does not answer (yet): only alive.
        let not_answering = Situation { phase: Phase::Running, expected: Expected::Primary, server: Some(Err("gone")) };
        let a = answer(Method::Get, "/primary", "", &not_answering);
        assert_eq!(a.status, 503);
        assert_eq!(
            a.body,
            Body::Json(r#"{"state": "starting", "configured_role": "primary", "error": "gone"}"#.into())
        );
        assert_eq!(answer(Method::Get, "/liveness", "", &not_answering).status, 200);
    }

    #[test]
    fn methods_and_unknown_paths() {
        let primary = observed(false, None, None);
        let s = Situation { phase: Phase::Running, expected: Expected::Primary, server: Some(Ok((&primary, "{}"))) };
        assert_eq!(answer(Method::StatusOnly, "/primary", "", &s), Reply { status: 200, body: Body::None });
        assert_eq!(answer(Method::Other, "/primary", "", &s).status, 405);
        assert_eq!(answer(Method::Get, "/nope", "", &s).status, 404);
        assert_eq!(answer(Method::Get, "/replica", "lag=x", &s).status, 400);
        assert_eq!(answer(Method::Get, "/sync", "", &s).status, 503);
        assert!(asks_server("/primary") && !asks_server("/liveness") && !asks_server("/nope"));
    }
}
