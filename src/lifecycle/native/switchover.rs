//! `pg-entrypoint switchover [--to MEMBER]` in native mode: the primary role handed to a
//! streaming replica with no acknowledged commit lost (docs/switchover.md). Run on any
//! member with its own environment; it reaches the members as the superuser (`admin`).
//!
//! 1. Every member is asked its state; exactly one must be a writable primary, and the
//!    candidate (named, or the most advanced) must stream from it within [`MAX_LAG`].
//! 2. A record in the primary's PGDATA asks its supervisor to hand over (`handover`): a fast
//!    shutdown, which sends the last WAL to the connected standbys, then a start as a standby
//!    of the candidate. Writes stop here.
//! 3. Once the old primary answers as a standby, the candidate must have replayed its shutdown
//!    checkpoint: it then holds every commit, and is recorded primary and promoted. The old
//!    primary follows it onto the new timeline with nothing to rewind; so does the third member
//!    (its slot keeper finds the new primary).
//!
//! A failure after step 2 promotes the old primary again (its record says primary): it stays
//! the primary, on a new timeline, and the reason is returned.

use std::time::{Duration, Instant};

use crate::config::layout::ROLE_RECORD;
use crate::config::{parse_address, Address, Config, Inputs, ProcessInputs};
use crate::pgdata::role_record::{self, Record, Recorded};
use crate::postgres::admin::{Admin, At};
use crate::postgres::member::Lsn;
use crate::render;

/// A candidate further behind than this (replayed WAL) is refused: its promotion would wait
/// for it to catch up while writes are stopped.
pub const MAX_LAG: u64 = 16 << 20;
/// How long the old primary may take to stop and start as a standby.
const HANDOVER_WAIT: Duration = Duration::from_secs(60);
/// How long the candidate may take to replay the old primary's last WAL once it stopped.
const CATCH_UP_WAIT: Duration = Duration::from_secs(15);
/// How long the old primary may take to stream from the new one.
const FOLLOW_WAIT: Duration = Duration::from_secs(30);
/// Between two questions while waiting.
const POLL: Duration = Duration::from_millis(100);

/// What a member says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub standby: bool,
    pub system_id: String,
    /// A primary's current WAL position; a standby's replayed one.
    pub lsn: Lsn,
    /// The WAL receiver's status (`streaming`), empty without one.
    pub receiver: String,
    /// The first line of its role record, empty without one.
    pub record: String,
}

const STATE_SQL: &str = "SELECT pg_is_in_recovery(),
       (SELECT system_identifier FROM pg_control_system())::text,
       CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END,
       coalesce((SELECT status FROM pg_stat_wal_receiver), ''),
       split_part(coalesce(pg_read_file('pg-entrypoint.role', 0, 200, true), ''), E'\\n', 1)";

fn parse_state(rows: &[Vec<String>]) -> Option<State> {
    let row = rows.first()?;
    Some(State {
        standby: row.first()? == "t",
        system_id: row.get(1)?.clone(),
        lsn: Lsn::parse(row.get(2)?).unwrap_or(Lsn(0)),
        receiver: row.get(3)?.clone(),
        record: row.get(4)?.clone(),
    })
}

/// A member, where the superuser reaches it, and the address the others know it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub at: At,
    pub address: Address,
}

/// The decision, pure: which answering member is the primary and which the candidate.
pub fn choose<'a>(
    states: &'a [(Member, Result<State, String>)],
    to: Option<&Member>,
) -> Result<(&'a Member, &'a Member), String> {
    let writable: Vec<&(Member, Result<State, String>)> =
        states.iter().filter(|(_, s)| s.as_ref().is_ok_and(|s| !s.standby)).collect();
    let (primary, primary_state) = match writable.as_slice() {
        [(member, Ok(state))] => (member, state),
        [] => {
            return Err(format!(
                "no member answers as a writable primary ({}); a switchover needs one: for a failover use \
                 `pg-entrypoint promote` on the most advanced replica",
                describe(states)
            ))
        }
        _ => {
            return Err(format!("more than one member is a writable primary ({}); settle that first", describe(states)))
        }
    };
    if matches!(role_record::parse(&primary_state.record), Ok(Record::Request { .. })) {
        return Err(format!(
            "{} is already handing over ({ROLE_RECORD} says {:?})",
            primary.address, primary_state.record
        ));
    }
    let lag = |state: &State| primary_state.lsn.0.saturating_sub(state.lsn.0);
    let eligible = |member: &Member, state: &Result<State, String>| -> Result<u64, String> {
        let state = state.as_ref().map_err(|e| format!("it does not answer: {e}"))?;
        if !state.standby {
            return Err("it is the primary".into());
        }
        if state.system_id != primary_state.system_id {
            return Err(format!("it is a standby of another cluster (system identifier {})", state.system_id));
        }
        if state.receiver != "streaming" {
            let status = if state.receiver.is_empty() { "none" } else { &state.receiver };
            return Err(format!("it is not streaming from the primary (WAL receiver: {status})"));
        }
        if lag(state) > MAX_LAG {
            return Err(format!("it lags {} bytes behind (at most {MAX_LAG})", lag(state)));
        }
        if !member.address.host.chars().all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c)) {
            return Err("its address has characters a host name or address does not".into());
        }
        Ok(lag(state))
    };
    match to {
        Some(named) => {
            let (member, state) = states
                .iter()
                .find(|(m, _)| m == named)
                .ok_or_else(|| format!("{} is not a member (members: {})", named.address, describe(states)))?;
            eligible(member, state).map_err(|why| format!("cannot hand over to {}: {why}", member.address))?;
            Ok((primary, member))
        }
        None => states
            .iter()
            .filter_map(|(m, s)| eligible(m, s).ok().map(|lag| (m, lag)))
            .min_by_key(|(_, lag)| *lag)
            .map(|(m, _)| (primary, m))
            .ok_or_else(|| {
                let why: Vec<String> = states
                    .iter()
                    .filter(|(m, _)| m != primary)
                    .map(|(m, s)| format!("{}: {}", m.address, eligible(m, s).err().unwrap_or_default()))
                    .collect();
                format!("no replica can take over: {}", why.join("; "))
            }),
    }
}

fn describe(states: &[(Member, Result<State, String>)]) -> String {
    let each = states.iter().map(|(m, s)| match s {
        Ok(s) if s.standby => format!("{} standby", m.address),
        Ok(_) => format!("{} primary", m.address),
        Err(e) => format!("{} unreachable: {e}", m.address),
    });
    each.collect::<Vec<_>>().join(", ")
}

/// The members this node knows, itself included (under its host name and port).
fn members(config: &Config) -> Vec<Member> {
    let (_, port) = config.layout.server();
    let me = Member { at: At::Here, address: Address { host: ProcessInputs.hostname(), port } };
    let others = config.other_members().into_iter().map(|a| Member { at: At::Member(a.clone()), address: a });
    std::iter::once(me).chain(others).collect()
}

/// `--to`: a member by its address as configured (`host` or `host:port`), or by host alone
/// when that is unambiguous (this node by its host name).
pub fn find_member(members: &[Member], to: &str) -> Result<Member, String> {
    let not_an_address = || format!("--to {to:?} is not an address; accepted: host or host:port");
    // Port 0 stands for "none given": then the host alone may name a member.
    let given = parse_address(to, 0).ok_or_else(not_an_address)?;
    let wanted = Address { port: if given.port == 0 { 5432 } else { given.port }, ..given.clone() };
    let by_host: Vec<&Member> = members.iter().filter(|m| m.address.host.eq_ignore_ascii_case(&wanted.host)).collect();
    if let Some(m) = members.iter().find(|m| m.address == wanted) {
        return Ok(m.clone());
    }
    match by_host.as_slice() {
        [one] if given.port == 0 => Ok((*one).clone()),
        _ => Err(format!(
            "--to {to:?} is not a member; accepted: {}",
            members.iter().map(|m| m.address.to_string()).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// What a finished switchover reports.
pub struct Done {
    pub from: Address,
    pub to: Address,
    /// From the request to the old primary until the candidate accepted writes.
    pub writes_stopped: Duration,
}

pub fn run(config: &Config, admin: &Admin, to: Option<&str>) -> Result<Done, String> {
    if config.replication().is_none_or(|r| r.peers.is_empty()) {
        return Err("a switchover needs HA_MODE=native and REPLICATION_PEERS (the members to hand over among)".into());
    }
    let members = members(config);
    let named = to.map(|to| find_member(&members, to)).transpose()?;
    let states: Vec<(Member, Result<State, String>)> = members.iter().map(|m| (m.clone(), ask(admin, &m.at))).collect();
    let (primary, candidate) = choose(&states, named.as_ref())?;
    println!("switchover: from {} to {} ({})", primary.address, candidate.address, describe(&states));
    // The candidate's slot on the primary, stale once it leads (dropped at the end).
    let slot = admin
        .query(&candidate.at, "SELECT current_setting('primary_slot_name')")
        .ok()
        .and_then(|rows| rows.first()?.first().cloned())
        .filter(|s| !s.is_empty());
    // A checkpoint now leaves the shutdown checkpoint little to write while writes wait.
    admin.query(&primary.at, "CHECKPOINT").map_err(|e| format!("CHECKPOINT on {}: {e}", primary.address))?;
    request_handover(admin, primary, candidate)?;
    let stopped = Instant::now();
    let handed = hand_over(admin, primary, candidate);
    let result = match handed {
        Ok(()) => {
            Ok(Done { from: primary.address.clone(), to: candidate.address.clone(), writes_stopped: stopped.elapsed() })
        }
        Err(Failed::Before(why)) => Err(why),
        Err(Failed::Unsettled(why)) => Err(format!(
            "{why}. Nothing more is done automatically: see `pg-entrypoint status` on each member, and once no member \
             is writable, `pg-entrypoint promote` on the most advanced one"
        )),
        Err(Failed::After(why)) => Err(match restore_primary(admin, primary, &members) {
            Ok(()) => format!("{why}; {} is the primary again, writable (on a new timeline)", primary.address),
            Err(e) => format!(
                "{why}; and {} was not made the primary again: {e}. Promote the most advanced member \
                 (`pg-entrypoint promote` there)",
                primary.address
            ),
        }),
    }?;
    wait_following(admin, primary, candidate)?;
    if let Some(slot) = slot {
        drop_stale_slot(admin, primary, &slot);
    }
    Ok(result)
}

/// The new primary's slot on the old one would hold up to max_slot_wal_keep_size of WAL there.
fn drop_stale_slot(admin: &Admin, old: &Member, slot: &str) {
    let sql = format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = {} AND NOT active",
        render::quote_literal(slot)
    );
    if let Err(e) = admin.query(&old.at, &sql) {
        println!("switchover: warning: the slot {slot:?} on {} is left ({e}); drop it there", old.address);
    }
}

fn ask(admin: &Admin, at: &At) -> Result<State, String> {
    parse_state(&admin.query(at, STATE_SQL)?).ok_or_else(|| "an unreadable answer".to_string())
}

/// How long the primary's supervisor may take to see the request (it looks every second); a
/// request older than that is ignored and removed, never acted on late.
const REQUEST_VALID_S: u64 = 30;

/// Writes the request that asks the primary to hand over to `candidate`, valid for
/// [`REQUEST_VALID_S`] by the primary's own clock, unless another switchover's request is
/// there (serialised by an advisory lock).
fn request_handover(admin: &Admin, primary: &Member, candidate: &Member) -> Result<(), String> {
    let line = format!(
        "{} || ' until ' || (extract(epoch FROM now())::bigint + {REQUEST_VALID_S})",
        render::quote_literal(&Recorded::ReplicaOf(candidate.address.clone()).line())
    );
    let check = "PERFORM pg_advisory_xact_lock(7436201);
           IF split_part(coalesce(pg_read_file(file, 0, 200, true), ''), E'\\n', 1) LIKE 'replica % until %' THEN
             RAISE EXCEPTION 'a switchover is already under way';
           END IF;";
    admin
        .query(&primary.at, &record_sql(&line, check))
        .map(|_| ())
        .map_err(|e| format!("cannot ask {} to hand over: {e}", primary.address))
}

/// SQL that runs `check`, then writes the value of the SQL expression `line` as the member's
/// record (COPY wants an absolute path; the server writes it as itself, into its PGDATA).
fn record_sql(line: &str, check: &str) -> String {
    format!(
        "DO $pgep$ DECLARE file text := {file}; BEGIN
           {check}
           EXECUTE format('COPY (SELECT %L) TO %L', {line}, current_setting('data_directory') || '/' || file);
         END $pgep$",
        file = render::quote_literal(ROLE_RECORD),
    )
}

/// SQL that records the member it runs on as the primary.
fn primary_record_sql() -> String {
    record_sql(&render::quote_literal(&Recorded::Primary.line()), "")
}

enum Failed {
    /// Nothing changed: the primary is still the primary.
    Before(String),
    /// The old primary is a standby now, and the candidate was never asked to promote.
    After(String),
    /// The candidate was asked to promote (or became writable otherwise) and is not confirmed:
    /// promoting the old primary again could make two primaries.
    Unsettled(String),
}

fn hand_over(admin: &Admin, primary: &Member, candidate: &Member) -> Result<(), Failed> {
    // The old primary stops, then answers as a standby (or as the primary, if it gave up).
    let started = Instant::now();
    let old = loop {
        match ask(admin, &primary.at) {
            Ok(state) if state.standby => break state,
            // It gave up (its record says primary again), or refused (it withdrew the request).
            Ok(state) if state.record.is_empty() || state.record == Recorded::Primary.line() => {
                return Err(Failed::Before(format!(
                    "{} did not hand over and is still the primary; its log says why",
                    primary.address
                )))
            }
            _ if started.elapsed() > HANDOVER_WAIT => {
                return Err(Failed::Before(format!(
                    "{} did not come back as a standby within {} s; see its log",
                    primary.address,
                    HANDOVER_WAIT.as_secs()
                )))
            }
            _ => std::thread::sleep(POLL),
        }
    };
    // Its shutdown checkpoint: the end of the WAL the candidate must have.
    let last = admin
        .query(&primary.at, "SELECT checkpoint_lsn FROM pg_control_checkpoint()")
        .ok()
        .and_then(|rows| Lsn::parse(rows.first()?.first()?))
        .ok_or_else(|| Failed::After(format!("cannot read the shutdown checkpoint of {}", primary.address)))?;
    let caught_up = Instant::now();
    loop {
        match ask(admin, &candidate.at) {
            Ok(state) if state.standby && state.system_id == old.system_id && state.lsn > last => break,
            Ok(state) if !state.standby => {
                return Err(Failed::Unsettled(format!(
                    "{} became writable before the old primary's last WAL was confirmed on it",
                    candidate.address
                )))
            }
            result if caught_up.elapsed() > CATCH_UP_WAIT => {
                let why = result
                    .map_or_else(|e| format!("it does not answer: {e}"), |s| format!("it replayed up to {}", s.lsn));
                return Err(Failed::After(format!(
                    "{} did not replay the old primary's last WAL ({last}) within {} s: {why}",
                    candidate.address,
                    CATCH_UP_WAIT.as_secs()
                )));
            }
            _ => std::thread::sleep(POLL),
        }
    }
    // Recorded first: a restart of the candidate with the environment saying replica keeps it
    // primary. From the promotion request on, the only way is forward.
    admin
        .query(&candidate.at, &primary_record_sql())
        .map_err(|e| Failed::Unsettled(format!("cannot record {} as the primary: {e}", candidate.address)))?;
    promote(admin, candidate).map_err(|e| Failed::Unsettled(format!("{}: {e}", candidate.address)))
}

/// Asks `member` to promote, and waits until it accepts writes.
fn promote(admin: &Admin, member: &Member) -> Result<(), String> {
    let asked = admin.query(&member.at, "SELECT pg_promote(true, 60)");
    if asked.as_ref().is_ok_and(|rows| rows.first().and_then(|r| r.first()).is_some_and(|v| v == "t")) {
        return Ok(());
    }
    // Not confirmed (an error, a lost connection, 60 s): it may still finish.
    let started = Instant::now();
    while started.elapsed() < FOLLOW_WAIT {
        if ask(admin, &member.at).is_ok_and(|state| !state.standby) {
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
    Err(format!("the promotion was asked for and is not confirmed ({})", asked.err().unwrap_or_default()))
}

/// A hand-over that failed before the candidate was asked to promote: the old primary, a
/// standby now with every commit, becomes the primary again, unless a member is writable.
fn restore_primary(admin: &Admin, primary: &Member, members: &[Member]) -> Result<(), String> {
    let writable: Vec<String> = members
        .iter()
        .filter(|m| *m != primary && ask(admin, &m.at).is_ok_and(|s| !s.standby))
        .map(|m| m.address.to_string())
        .collect();
    if !writable.is_empty() {
        return Err(format!("{} accepts writes now", writable.join(", ")));
    }
    admin.query(&primary.at, &primary_record_sql())?;
    promote(admin, primary)
}

/// The old primary streams from the new one: the hand-over is complete.
fn wait_following(admin: &Admin, old: &Member, new: &Member) -> Result<(), String> {
    let started = Instant::now();
    loop {
        match ask(admin, &old.at) {
            Ok(state) if state.standby && state.receiver == "streaming" => return Ok(()),
            _ if started.elapsed() > FOLLOW_WAIT => {
                return Err(format!(
                    "{} is the primary now, but {} does not stream from it after {} s; see its log",
                    new.address,
                    old.address,
                    FOLLOW_WAIT.as_secs()
                ))
            }
            _ => std::thread::sleep(POLL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(host: &str) -> Member {
        Member {
            at: At::Member(Address { host: host.into(), port: 5432 }),
            address: Address { host: host.into(), port: 5432 },
        }
    }

    fn state(standby: bool, lsn: u64, receiver: &str) -> Result<State, String> {
        Ok(State { standby, system_id: "7".into(), lsn: Lsn(lsn), receiver: receiver.into(), record: String::new() })
    }

    #[test]
    fn the_most_advanced_streaming_replica_is_chosen() {
        let states = vec![
            (member("p"), state(false, 1000, "")),
            (member("r1"), state(true, 900, "streaming")),
            (member("r2"), state(true, 990, "streaming")),
            (member("r3"), Err("timeout".into())),
        ];
        let (primary, candidate) = choose(&states, None).unwrap();
        assert_eq!((primary.address.host.as_str(), candidate.address.host.as_str()), ("p", "r2"));
        assert_eq!(choose(&states, Some(&member("r1"))).unwrap().1.address.host, "r1");
    }

    #[test]
    fn a_lagging_disconnected_or_unknown_candidate_is_refused() {
        let states = vec![
            (member("p"), state(false, MAX_LAG + 1000, "")),
            (member("r1"), state(true, 900, "streaming")),
            (member("r2"), state(true, MAX_LAG + 1000, "")),
        ];
        let why = choose(&states, Some(&member("r1"))).unwrap_err();
        assert!(why.contains("r1:5432: it lags"), "{why}");
        let why = choose(&states, Some(&member("r2"))).unwrap_err();
        assert!(why.contains("not streaming"), "{why}");
        let why = choose(&states, Some(&member("x"))).unwrap_err();
        assert!(why.contains("x:5432 is not a member"), "{why}");
        assert!(choose(&states, None).unwrap_err().starts_with("no replica can take over"));
        let why = choose(&states, Some(&member("p"))).unwrap_err();
        assert!(why.contains("it is the primary"), "{why}");
    }

    #[test]
    fn no_primary_two_primaries_or_one_handing_over_is_refused() {
        let none = vec![(member("r1"), state(true, 1, "")), (member("r2"), state(true, 1, ""))];
        assert!(choose(&none, None).unwrap_err().starts_with("no member answers as a writable primary"));
        let two = vec![(member("p"), state(false, 1, "")), (member("r1"), state(false, 1, ""))];
        assert!(choose(&two, None).unwrap_err().starts_with("more than one member"));
        let mut busy = state(false, 1, "").unwrap();
        busy.record = "replica r1:5432 until 1765000000".into();
        let states = vec![(member("p"), Ok(busy)), (member("r1"), state(true, 1, "streaming"))];
        assert!(choose(&states, None).unwrap_err().contains("already handing over"));
    }

    #[test]
    fn to_names_a_member_by_address_or_by_host() {
        let members = vec![
            member("p"),
            member("r1"),
            Member {
                at: At::Member(Address { host: "r2".into(), port: 6000 }),
                address: Address { host: "r2".into(), port: 6000 },
            },
        ];
        assert_eq!(find_member(&members, "r1").unwrap(), member("r1"));
        assert_eq!(find_member(&members, "r2").unwrap().address.port, 6000);
        assert!(find_member(&members, "r2:7000").unwrap_err().contains("is not a member"));
        assert!(find_member(&members, "a b").unwrap_err().contains("not an address"));
    }
}
