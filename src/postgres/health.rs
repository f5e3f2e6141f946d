//! Whether the server is healthy for its role: the judgement `health`, `/health` and the
//! HTTP role paths share (the `health` command prints it).
//!
//! Role-aware: a primary or standalone server must accept writes (not in recovery, not
//! read-only); a replica must be in recovery with its WAL receiver streaming, and optionally
//! within a lag bound. A temporary server of the entrypoint (bootstrap, promotion) is never
//! healthy: orchestrators must not see a half-made database as ready.

use std::path::Path;
use std::time::Duration;

use crate::postgres::local::Local;
use crate::postgres::observe::Observed;

/// A bound on a replica's lag: bytes of received-but-not-replayed WAL, or time since the
/// primary was last heard from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxLag {
    Bytes(i64),
    Time(Duration),
}

/// `16MB`, `1048576`, `512kB`, `1GB` are bytes; `30s`, `2m`, `500ms` are durations.
pub fn parse_max_lag(text: &str) -> Result<MaxLag, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("--max-lag: {text:?} is not a number with a unit"))?;
    let bytes = |m: u64| Ok(MaxLag::Bytes(n.saturating_mul(m).min(i64::MAX as u64) as i64));
    match unit.trim() {
        "" | "B" => bytes(1),
        "kB" | "KB" => bytes(1 << 10),
        "MB" => bytes(1 << 20),
        "GB" => bytes(1 << 30),
        "ms" => Ok(MaxLag::Time(Duration::from_millis(n))),
        "s" => Ok(MaxLag::Time(Duration::from_secs(n))),
        "m" | "min" => n
            .checked_mul(60)
            .map(|s| MaxLag::Time(Duration::from_secs(s)))
            .ok_or_else(|| format!("--max-lag: {text:?} is too large")),
        other => Err(format!("--max-lag: unknown unit {other:?}; accepted: B, kB, MB, GB (bytes) or ms, s, m (time)")),
    }
}

/// The role the container's environment gives this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    Standalone,
    Primary,
    Replica,
}

impl Expected {
    /// From the mode and the configured role, as of now: a replica promoted at run time
    /// (`pg-entrypoint promote` left its marker in `pgdata`) is expected to be a primary, and
    /// a switchover's record says which of the two a node is.
    pub fn now(native: bool, replica: bool, pgdata: &Path) -> Expected {
        use crate::pgdata::role_record::{self, Recorded};
        let promoted = || pgdata.join(crate::config::layout::PROMOTED_MARKER).exists();
        // A switchover's decision outranks the environment, as at the start.
        let replica = match role_record::decision(pgdata) {
            Ok(Some(Recorded::Primary)) => false,
            Ok(Some(Recorded::ReplicaOf(_))) => true,
            _ => replica,
        };
        match (native, replica) {
            (false, _) => Expected::Standalone,
            (true, true) if !promoted() => Expected::Replica,
            (true, _) => Expected::Primary,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Expected::Standalone => "standalone",
            Expected::Primary => "primary",
            Expected::Replica => "replica",
        }
    }
}

/// Which role the container's environment expects (a runtime `promote` makes a replica primary).
pub fn expected_role(local: &Local) -> Expected {
    let var = |n: &str| std::env::var(n).unwrap_or_default().to_ascii_lowercase();
    let role = if var("REPLICATION_ROLE").is_empty() { var("ROLE") } else { var("REPLICATION_ROLE") };
    // Under auto the role is decided at each start; a standby's data directory says which.
    let replica = role == "replica" || (role == "auto" && local.pgdata.join("standby.signal").exists());
    Expected::now(var("HA_MODE") == "native", replica, &local.pgdata)
}

/// How many standbys `synchronous_standby_names` needs: `ANY 2 (...)`, `FIRST 2 (...)` and
/// `2 (...)` say it; the old `a, b` form and `*` need one.
pub fn required_standbys(names: &str) -> i64 {
    let rest = names.trim();
    let rest = ["any", "first"]
        .iter()
        .find_map(|kw| {
            let head = rest.get(..kw.len())?;
            head.eq_ignore_ascii_case(kw).then(|| &rest[kw.len()..])
        })
        .unwrap_or(rest)
        .trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let after = rest[digits.len()..].trim_start();
    match digits.parse() {
        Ok(n) if after.starts_with('(') => n,
        _ => 1,
    }
}

/// Without `--max-lag`, a replica is unhealthy once nothing was heard from its primary for
/// three quarters of `wal_receiver_timeout`: the standby pings a silent primary after half of
/// it, so a live primary always answers before then, and a partition shows in seconds rather
/// than when the connection finally times out.
pub fn default_bound(receiver_timeout: Duration) -> Option<MaxLag> {
    (!receiver_timeout.is_zero()).then(|| MaxLag::Time(receiver_timeout * 3 / 4))
}

/// The decision, pure: `Ok(why healthy)` or `Err(why not)`.
/// With `require_sync`, a synchronous primary whose commits would wait (too few synchronous
/// standbys connected) is unhealthy; without, it is healthy and the line says so. Not the
/// default: a readiness probe that waits for standbys which wait for the primary's address
/// (a Kubernetes Service publishes only ready pods) would never become ready.
pub fn verdict(
    expected: Expected,
    liveness: bool,
    require_sync: bool,
    o: &Observed,
    max_lag: Option<MaxLag>,
) -> Result<String, String> {
    if liveness {
        return Ok("accepting connections".into());
    }
    if expected != Expected::Replica {
        let role = expected.name();
        return match (o.in_recovery, &o.read_only) {
            (true, _) => Err(format!("configured as {role} but in recovery (read-only standby)")),
            (false, Some(why)) => Err(format!("{role}, not accepting writes: {why}")),
            (false, None) if !o.sync_names.is_empty() && o.sync_standbys < required_standbys(&o.sync_names) => {
                let why = format!(
                    "commits wait: {} of the {} synchronous standbys it needs are connected (synchronous_standby_names = {})",
                    o.sync_standbys,
                    required_standbys(&o.sync_names),
                    o.sync_names
                );
                if require_sync {
                    Err(format!("{role}, but {why}"))
                } else {
                    Ok(format!("{role}, accepting writes, but {why}"))
                }
            }
            (false, None) => Ok(format!("{role}, accepting writes")),
        };
    }
    if !o.in_recovery {
        return Err("configured as replica but not in recovery (promoted?)".into());
    }
    match o.receiver_status.as_deref() {
        Some("streaming") => {}
        Some(other) => return Err(format!("replica, WAL receiver is {other}, not streaming")),
        None => return Err("replica, not connected to its primary (no WAL receiver)".into()),
    }
    match max_lag.or_else(|| default_bound(o.receiver_timeout)) {
        Some(MaxLag::Bytes(max)) if o.lag_bytes.unwrap_or(0) > max => {
            Err(format!("replica streaming but {} bytes behind (bound {max})", o.lag_bytes.unwrap_or(0)))
        }
        Some(MaxLag::Time(max)) if o.silence.unwrap_or_default() > max => Err(format!(
            "replica streaming but nothing heard from the primary for {:.1} s (bound {:.1} s)",
            o.silence.unwrap_or_default().as_secs_f64(),
            max.as_secs_f64()
        )),
        _ => Ok(format!("replica, streaming, {} bytes to replay", o.lag_bytes.unwrap_or(0))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(in_recovery: bool, receiver: Option<&str>, lag: i64, silence_s: u64) -> Observed {
        Observed {
            in_recovery,
            read_only: None,
            receiver_status: receiver.map(String::from),
            lag_bytes: Some(lag),
            silence: Some(Duration::from_secs(silence_s)),
            receiver_timeout: Duration::ZERO,
            sync_names: String::new(),
            sync_standbys: 0,
            archive_failing: None,
        }
    }

    #[test]
    fn max_lag_units() {
        assert_eq!(parse_max_lag("16MB"), Ok(MaxLag::Bytes(16 << 20)));
        assert_eq!(parse_max_lag("1048576"), Ok(MaxLag::Bytes(1 << 20)));
        assert_eq!(parse_max_lag("30s"), Ok(MaxLag::Time(Duration::from_secs(30))));
        assert_eq!(parse_max_lag("500ms"), Ok(MaxLag::Time(Duration::from_millis(500))));
        assert!(parse_max_lag("fast").is_err());
        assert!(parse_max_lag("5 parsecs").unwrap_err().contains("unknown unit"));
        assert!(parse_max_lag("999999999999999999m").unwrap_err().contains("too large"));
    }

    #[test]
    fn primary_must_accept_writes() {
        assert!(verdict(Expected::Primary, false, false, &observed(false, None, 0, 0), None).is_ok());
        let standalone = verdict(Expected::Standalone, false, false, &observed(false, None, 0, 0), None);
        assert_eq!(standalone, Ok("standalone, accepting writes".into()));
        assert!(verdict(Expected::Primary, false, false, &observed(true, Some("streaming"), 0, 0), None)
            .unwrap_err()
            .contains("in recovery"));
        let mut ro = observed(false, None, 0, 0);
        ro.read_only = Some("default_transaction_read_only is on".into());
        assert!(verdict(Expected::Primary, false, false, &ro, None).unwrap_err().contains("not accepting writes"));
    }

    #[test]
    fn a_synchronous_primary_needs_its_standbys() {
        assert_eq!(required_standbys("ANY 2 (\"a\", \"b\", \"c\")"), 2);
        assert_eq!(required_standbys("first 1 (a)"), 1);
        assert_eq!(required_standbys("3 (a, b, c)"), 3);
        assert_eq!(required_standbys("a, b"), 1);
        assert_eq!(required_standbys("*"), 1);
        let mut o = observed(false, None, 0, 0);
        o.sync_names = "ANY 1 (\"replica-1\")".into();
        let why = verdict(Expected::Primary, false, true, &o, None).unwrap_err();
        assert!(why.starts_with("primary, but commits wait: 0 of the 1 synchronous standbys"), "{why}");
        let said = verdict(Expected::Primary, false, false, &o, None).unwrap();
        assert!(said.starts_with("primary, accepting writes, but commits wait"), "{said}");
        o.sync_standbys = 1;
        assert_eq!(verdict(Expected::Primary, false, true, &o, None), Ok("primary, accepting writes".into()));
    }

    #[test]
    fn replica_must_stream_within_the_bound() {
        assert!(verdict(Expected::Replica, false, false, &observed(true, Some("streaming"), 100, 1), None).is_ok());
        assert!(verdict(Expected::Replica, false, false, &observed(true, None, 0, 0), None)
            .unwrap_err()
            .contains("not connected"));
        assert!(verdict(Expected::Replica, false, false, &observed(false, None, 0, 0), None)
            .unwrap_err()
            .contains("not in recovery"));
        let lagging = observed(true, Some("streaming"), 2 << 20, 1);
        assert!(verdict(Expected::Replica, false, false, &lagging, Some(MaxLag::Bytes(1 << 20))).is_err());
        assert!(verdict(Expected::Replica, false, false, &lagging, Some(MaxLag::Bytes(4 << 20))).is_ok());
        let silent = observed(true, Some("streaming"), 0, 40);
        assert!(verdict(Expected::Replica, false, false, &silent, Some(MaxLag::Time(Duration::from_secs(30)))).is_err());
        // Without a bound, wal_receiver_timeout gives one: 15 s -> silent for 11.25 s is too long.
        let mut partitioned = observed(true, Some("streaming"), 0, 12);
        partitioned.receiver_timeout = Duration::from_secs(15);
        let why = verdict(Expected::Replica, false, false, &partitioned, None).unwrap_err();
        assert!(why.contains("nothing heard from the primary for 12.0 s (bound 11.2 s)"), "{why}");
        partitioned.silence = Some(Duration::from_secs(8));
        assert!(verdict(Expected::Replica, false, false, &partitioned, None).is_ok());
        // Liveness only asks whether the server answers.
        assert!(verdict(Expected::Replica, true, false, &observed(false, None, 0, 0), None).is_ok());
    }
}
