//! The role a switchover gave this data directory (`config::layout::ROLE_RECORD`): one line,
//! `primary` or `replica <host>:<port>`. It outranks the environment's role at every start,
//! so that both nodes of a switchover keep their new roles across restarts with unchanged
//! variables, and it goes once the environment says the same (docs/switchover.md).
//!
//! The `switchover` command writes it through the member's own server (`COPY ... TO`, as
//! the superuser), since it may run on another member: the server writes it as the service
//! account, into its data directory.

use std::fs;
use std::io;
use std::path::Path;

use crate::config::layout::ROLE_RECORD;
use crate::config::{parse_address, Address};

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

/// The record's text: its first line that is not empty.
pub fn parse(text: &str) -> Result<Recorded, String> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default();
    match line.split_once(' ') {
        None if line == "primary" => Ok(Recorded::Primary),
        Some(("replica", address)) => parse_address(address.trim(), 5432)
            .map(Recorded::ReplicaOf)
            .ok_or_else(|| format!("{address:?} is not an address")),
        _ => Err(format!("{line:?} is neither \"primary\" nor \"replica <host>:<port>\"")),
    }
}

/// The record in `pgdata`, if any. `Err` names the file: an unreadable record is never
/// guessed at (remove it to go by the environment).
pub fn read(pgdata: &Path) -> Result<Option<Recorded>, String> {
    let path = pgdata.join(ROLE_RECORD);
    match fs::read_to_string(&path) {
        Ok(text) => parse(&text).map(Some).map_err(|why| {
            format!("{}: {why}; remove the file to go by REPLICATION_ROLE and PRIMARY_HOST", path.display())
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

pub fn remove(pgdata: &Path) -> io::Result<()> {
    match fs::remove_file(pgdata.join(ROLE_RECORD)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_what_it_says() {
        let at = Address { host: "replica-1".into(), port: 5433 };
        for record in [Recorded::Primary, Recorded::ReplicaOf(at)] {
            assert_eq!(parse(&format!("{}\n", record.line())), Ok(record));
        }
        let v6 = parse("replica [fd00::2]:5432").unwrap();
        assert_eq!(v6, Recorded::ReplicaOf(Address { host: "fd00::2".into(), port: 5432 }));
        assert_eq!(parse("\n replica db \n"), Ok(Recorded::ReplicaOf(Address { host: "db".into(), port: 5432 })));
    }

    #[test]
    fn anything_else_is_refused_not_guessed() {
        for text in ["", "standby", "primary now", "replica", "replica a:b", "replica :5432"] {
            assert!(parse(text).is_err(), "{text:?}");
        }
    }
}
