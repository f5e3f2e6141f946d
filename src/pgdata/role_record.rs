//! The role a switchover gave this data directory (`config::layout::ROLE_RECORD`), one line:
//!
//! - `primary`, or `replica <host>:<port>`: a decision. It outranks the environment's role at
//!   every start, so that both nodes of a switchover keep their new roles across restarts with
//!   unchanged variables, and it goes once the environment says the same (docs/switchover.md).
//! - `replica <host>:<port> until <epoch>`: a request to the running primary to hand over,
//!   valid until then (the server's clock). The supervisor that acts on it rewrites it as a
//!   decision first; one nobody acted on expires, and a start removes it.
//!
//! The `switchover` command writes records through the member's own server (`COPY ... TO`,
//! as the superuser), since it may run on another member; the supervisor rewrites them
//! atomically. Files in PGDATA travel (pg_basebackup, pg_rewind, backups): a copy is cleared
//! where a node becomes a standby of another ([`remove`], [`keep_across`]).

use std::fs;
use std::io;
use std::path::Path;

use crate::config::layout::ROLE_RECORD;
use crate::config::{parse_address, Address};
use crate::pgdata::datadir;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    Primary,
    ReplicaOf(Address),
}

impl Recorded {
    /// The line that says it, as [`parse`] reads it.
    pub fn line(&self) -> String {
        match self {
            Recorded::Primary => "primary".into(),
            Recorded::ReplicaOf(address) => format!("replica {address}"),
        }
    }
}

/// What the file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Decision(Recorded),
    /// Hand over to this member, if asked before `until` (epoch seconds).
    Request {
        to: Address,
        until: u64,
    },
}

impl Record {
    pub fn line(&self) -> String {
        match self {
            Record::Decision(recorded) => recorded.line(),
            Record::Request { to, until } => format!("replica {to} until {until}"),
        }
    }
}

/// The record's text: its first line that is not empty.
pub fn parse(text: &str) -> Result<Record, String> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default();
    let words: Vec<&str> = line.split_whitespace().collect();
    let address = |a: &str| parse_address(a, 5432).ok_or_else(|| format!("{a:?} is not an address"));
    match words.as_slice() {
        ["primary"] => Ok(Record::Decision(Recorded::Primary)),
        ["replica", at] => Ok(Record::Decision(Recorded::ReplicaOf(address(at)?))),
        ["replica", at, "until", epoch] => Ok(Record::Request {
            to: address(at)?,
            until: epoch.parse().map_err(|_| format!("{epoch:?} is not a time in seconds"))?,
        }),
        _ => Err(format!("{line:?} is neither \"primary\" nor \"replica <host>:<port>\"")),
    }
}

/// The record in `pgdata`, if any, read without following a link (`check` runs as root).
/// `Err` names the file: an unreadable record is never guessed at.
pub fn read(pgdata: &Path) -> Result<Option<Record>, String> {
    match datadir::read_small(pgdata, Path::new(ROLE_RECORD), datadir::SMALL_FILE) {
        Ok(text) => parse(&text).map(Some).map_err(|why| {
            format!(
                "{}: {why}; remove the file to go by REPLICATION_ROLE and PRIMARY_HOST",
                pgdata.join(ROLE_RECORD).display()
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", pgdata.join(ROLE_RECORD).display())),
    }
}

/// The decision recorded, if any (a request is not one).
pub fn decision(pgdata: &Path) -> Result<Option<Recorded>, String> {
    Ok(match read(pgdata)? {
        Some(Record::Decision(recorded)) => Some(recorded),
        _ => None,
    })
}

/// Writes `recorded` as the decision, atomically and durably.
pub fn write(pgdata: &Path, recorded: &Recorded) -> io::Result<()> {
    datadir::write_atomic(&pgdata.join(ROLE_RECORD), format!("{}\n", recorded.line()).as_bytes(), 0o600)
}

pub fn remove(pgdata: &Path) -> io::Result<()> {
    match fs::remove_file(pgdata.join(ROLE_RECORD)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Runs `copy` (pg_rewind, which copies the source's files over ours) and puts this node's
/// own record back as it was.
pub fn keep_across<T>(pgdata: &Path, copy: impl FnOnce() -> T) -> io::Result<T> {
    let ours = fs::read(pgdata.join(ROLE_RECORD)).ok();
    let result = copy();
    match ours {
        Some(bytes) => datadir::write_atomic(&pgdata.join(ROLE_RECORD), &bytes, 0o600)?,
        None => remove(pgdata)?,
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(host: &str, port: u16) -> Address {
        Address { host: host.into(), port }
    }

    #[test]
    fn a_record_reads_back_what_it_says() {
        for recorded in [Recorded::Primary, Recorded::ReplicaOf(at("replica-1", 5433))] {
            assert_eq!(parse(&format!("{}\n", recorded.line())), Ok(Record::Decision(recorded)));
        }
        let v6 = parse("replica [fd00::2]:5432").unwrap();
        assert_eq!(v6, Record::Decision(Recorded::ReplicaOf(at("fd00::2", 5432))));
        assert_eq!(parse("\n replica db \n"), Ok(Record::Decision(Recorded::ReplicaOf(at("db", 5432)))));
        assert_eq!(
            parse("replica db:6000 until 1765000000\n"),
            Ok(Record::Request { to: at("db", 6000), until: 1_765_000_000 })
        );
    }

    #[test]
    fn anything_else_is_refused_not_guessed() {
        for text in ["", "standby", "primary now", "replica", "replica a:b", "replica :5432", "replica a until soon"] {
            assert!(parse(text).is_err(), "{text:?}");
        }
    }
}
