//! Asking another member of the cluster who it is, over a physical replication connection as
//! the replication user: its system identifier, timeline and WAL position (IDENTIFY_SYSTEM),
//! whether it is a standby (`in_hot_standby`), and optionally the state of one replication
//! slot (READ_REPLICATION_SLOT, PostgreSQL 15+). One psql run answers all of it.
//!
//! psql resolves host names with the system's resolver (our static binary has no NSS) and
//! authenticates through a 0600 password file: the password is never on a command line.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;

use nix::unistd::Pid;

use crate::config::{Address, Config, Replica};
use crate::pid1::supervise::Supervisor;
use crate::postgres::server::{Bin, BinError};
use crate::postgres::step;
use crate::render;

/// A WAL position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `16/B374D848`, as PostgreSQL prints it.
    pub fn parse(text: &str) -> Option<Lsn> {
        let (hi, lo) = text.trim().split_once('/')?;
        Some(Lsn((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Our replication slot on that member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Missing,
    Present,
    /// It exists but lost its restart LSN: the WAL a standby needs was removed.
    Invalidated,
}

/// What a member says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub system_id: u64,
    pub timeline: u32,
    /// On a primary its WAL flush position; on a standby what it has received (or replayed).
    pub lsn: Lsn,
    pub standby: bool,
    /// Asked for only when a slot name was given.
    pub slot: Option<Slot>,
}

/// The outcome of one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Identity(Identity),
    /// Down, starting, not resolvable: it may answer later.
    Unreachable(String),
    /// It answered and refused us: asking again will not help.
    Rejected {
        variable: &'static str,
        reason: String,
    },
    /// Its TLS certificate did not pass REPLICATION_SSLMODE's checks (wrong CA, wrong host
    /// name, expired), or it offers no TLS where it is required: not to be trusted.
    Untrusted(String),
}

/// How this node reaches the other members: as the replication user, through the password
/// file beside our other files (`Layout::passfile`), with REPLICATION_SSLMODE's TLS
/// (`render::client_tls`), under one application name. The one place these are put
/// together, from the effective configuration.
#[derive(Debug, Clone)]
pub struct Connector {
    bin: Bin,
    user: String,
    passfile: PathBuf,
    application_name: String,
    tls: Vec<(&'static str, String)>,
}

impl Connector {
    /// For questions (the fence, `promote`, `status`, the upgrade): named `pg-entrypoint`.
    pub fn questions(config: &Config, bin: &Bin, user: &str) -> Connector {
        Connector::named(config, bin, user, "pg-entrypoint")
    }

    /// For a replica's own business with its primary (its slot is named after it).
    pub fn replica(config: &Config, bin: &Bin, replica: &Replica) -> Connector {
        Connector::named(config, bin, &replica.replication.user, &replica.name)
    }

    fn named(config: &Config, bin: &Bin, user: &str, application_name: &str) -> Connector {
        Connector {
            bin: bin.clone(),
            user: user.to_string(),
            passfile: config.layout.passfile(),
            application_name: application_name.to_string(),
            tls: render::client_tls(config),
        }
    }

    /// The password file the connections read (written by whoever holds the password).
    pub fn passfile(&self) -> &Path {
        &self.passfile
    }

    /// The psql run that asks `address` who it is (and about `slot`).
    pub fn ask(&self, address: &Address, slot: Option<&str>) -> Command {
        let mut commands = vec!["IDENTIFY_SYSTEM".to_string(), "SHOW in_hot_standby".to_string()];
        if let Some(slot) = slot {
            commands.push(format!("READ_REPLICATION_SLOT {}", render::quote_identifier(slot)));
        }
        self.replication_psql(address, &commands)
    }

    /// A psql run of replication `commands` against `address`, output unaligned without
    /// headers.
    pub fn replication_psql(&self, address: &Address, commands: &[String]) -> Command {
        let mut psql = step::tool(&self.bin, "psql");
        let conninfo = render::conninfo(
            &address.host,
            address.port,
            &self.user,
            &self.application_name,
            &self.passfile.to_string_lossy(),
            true,
            &self.tls,
        );
        psql.args(["-X", "-q", "-A", "-t", "--no-password", "-d"]).arg(conninfo).stdin(Stdio::null());
        for command in commands {
            psql.arg("-c").arg(command);
        }
        psql
    }
}

/// The replication command that creates our physical slot, keeping WAL from now on.
pub fn create_slot(slot: &str) -> String {
    format!("CREATE_REPLICATION_SLOT {} PHYSICAL RESERVE_WAL", render::quote_identifier(slot))
}

/// Reads psql's answer to [`Connector::ask`].
pub fn parse(code: i32, stdout: &str, stderr: &str) -> Answer {
    let lines: Vec<&str> = stdout.lines().map(str::trim).collect();
    let identity = lines.first().and_then(|line| {
        let f: Vec<&str> = line.split('|').collect();
        Some((f.first()?.parse::<u64>().ok()?, f.get(1)?.parse::<u32>().ok()?, Lsn::parse(f.get(2)?)?))
    });
    let standby = match lines.get(1) {
        Some(&"on") => Some(true),
        Some(&"off") => Some(false),
        _ => None,
    };
    match (identity, standby) {
        (Some((system_id, timeline, lsn)), Some(standby)) if code == 0 => {
            let slot = lines.get(2).map(|l| slot_state(l));
            Answer::Identity(Identity { system_id, timeline, lsn, standby, slot })
        }
        _ => classify_failure(stderr),
    }
}

/// READ_REPLICATION_SLOT's row: type, restart LSN, timeline; all empty when there is none.
fn slot_state(row: &str) -> Slot {
    let fields: Vec<&str> = row.split('|').collect();
    match fields[..] {
        ["physical", "", ..] => Slot::Invalidated,
        [kind, ..] if !kind.is_empty() => Slot::Present,
        _ => Slot::Missing,
    }
}

/// Why a connection failed, from psql's message.
pub fn classify_failure(stderr: &str) -> Answer {
    let reason = stderr.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("no message").to_string();
    let reason = reason.trim_start_matches("psql: ").trim_start_matches("error: ").to_string();
    let user_refused = stderr.contains("no pg_hba.conf entry")
        || (stderr.contains("role") && stderr.contains("does not exist"))
        || stderr.contains("permission denied to start WAL sender")
        || stderr.contains("must be superuser or replication role");
    let untrusted = stderr.contains("certificate verify failed")
        || stderr.contains("does not match host name")
        || stderr.contains("server does not support SSL, but SSL was required")
        || stderr.contains("SSL error: tlsv1 alert");
    if untrusted {
        Answer::Untrusted(reason)
    } else if stderr.contains("rejects connection") && stderr.contains("no encryption") {
        Answer::Rejected { variable: "REPLICATION_SSLMODE", reason }
    } else if stderr.contains("password authentication failed") || stderr.contains("no password supplied") {
        Answer::Rejected { variable: "REPLICATION_PASSWORD", reason }
    } else if user_refused {
        Answer::Rejected { variable: "REPLICATION_USER", reason }
    } else {
        Answer::Unreachable(reason)
    }
}

/// Questions to several members at once from the supervision loop, which must never block:
/// each psql runs as a child, collected on later turns.
pub struct Asking {
    running: Vec<(Address, Pid, JoinHandle<String>, JoinHandle<String>)>,
    answers: Vec<(Address, Answer)>,
}

impl Asking {
    pub fn start(sup: &mut Supervisor, connector: &Connector, addresses: &[Address]) -> Asking {
        let mut asking = Asking { running: Vec::new(), answers: Vec::new() };
        for address in addresses {
            let mut cmd = connector.ask(address, None);
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            match sup.spawn(&mut cmd) {
                Ok(mut child) => {
                    let stdout = step::read_all(child.stdout.take(), false);
                    let stderr = step::read_all(child.stderr.take(), false);
                    asking.running.push((address.clone(), Pid::from_raw(child.id() as i32), stdout, stderr));
                }
                Err(e) => asking.answers.push((address.clone(), Answer::Unreachable(format!("cannot run psql: {e}")))),
            }
        }
        asking
    }

    /// Every answer, in the order asked, once all have come; `None` while some are pending.
    pub fn collect(&mut self, sup: &mut Supervisor) -> Option<Vec<(Address, Answer)>> {
        let mut pending = Vec::new();
        for (address, pid, stdout, stderr) in self.running.drain(..) {
            match sup.collect(pid) {
                Ok(None) => pending.push((address, pid, stdout, stderr)),
                Ok(Some(code)) => {
                    let (out, err) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
                    self.answers.push((address, parse(code, &out, &err)));
                }
                Err(e) => self.answers.push((address, Answer::Unreachable(format!("lost track of psql: {e}")))),
            }
        }
        self.running = pending;
        self.running.is_empty().then(|| std::mem::take(&mut self.answers))
    }
}

/// Asks every member a replica knows (its primary, then its peers), without a supervisor:
/// for the operator commands, which are not PID 1.
pub fn ask_members_now(config: &Config, replica: &Replica) -> Result<Vec<(Address, Answer)>, BinError> {
    let bin = Bin::locate(config.bindir.as_deref(), std::env::var("PATH").ok().as_deref())?;
    let connector = Connector::questions(config, &bin, &replica.replication.user);
    let answer = |address: &Address| match connector.ask(address, None).output() {
        Ok(out) => parse(
            out.status.code().unwrap_or(1),
            &String::from_utf8_lossy(&out.stdout),
            &String::from_utf8_lossy(&out.stderr),
        ),
        Err(e) => Answer::Unreachable(format!("cannot run psql: {e}")),
    };
    Ok(replica.members().into_iter().map(|address| (address.clone(), answer(&address))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_standby_and_slot_are_read() {
        let answer = parse(0, "7713256681068276477|2|0/1500790|\non\nphysical|0/3000000|1\n", "");
        assert_eq!(
            answer,
            Answer::Identity(Identity {
                system_id: 7713256681068276477,
                timeline: 2,
                lsn: Lsn(0x1500790),
                standby: true,
                slot: Some(Slot::Present)
            })
        );
        let Answer::Identity(primary) = parse(0, "1|1|16/B374D848|\noff\n||\n", "") else { panic!() };
        assert_eq!((primary.standby, primary.slot, primary.lsn), (false, Some(Slot::Missing), Lsn(0x16_B374_D848)));
        let Answer::Identity(lost) = parse(0, "1|1|0/0|\noff\nphysical||\n", "") else { panic!() };
        assert_eq!(lost.slot, Some(Slot::Invalidated));
        let Answer::Identity(no_slot_asked) = parse(0, "1|1|0/0|\noff\n", "") else { panic!() };
        assert_eq!(no_slot_asked.slot, None);
    }

    #[test]
    fn failures_are_classified() {
        assert_eq!(
            parse(2, "", "psql: error: connection to server at \"db\" (10.0.0.2), port 5432 failed: FATAL:  password authentication failed for user \"replicator\"\n"),
            Answer::Rejected {
                variable: "REPLICATION_PASSWORD",
                reason: "connection to server at \"db\" (10.0.0.2), port 5432 failed: FATAL:  password authentication failed for user \"replicator\"".into()
            }
        );
        assert!(matches!(
            parse(2, "", "FATAL:  no pg_hba.conf entry for replication connection from host \"10.0.0.3\""),
            Answer::Rejected { variable: "REPLICATION_USER", .. }
        ));
        for transient in [
            "psql: error: connection to server at \"127.0.0.1\", port 5999 failed: Connection refused",
            "psql: error: could not translate host name \"primary\" to address: Name or service not known",
            "FATAL:  the database system is starting up",
            "psql: error: timeout expired",
        ] {
            assert!(matches!(parse(2, "", transient), Answer::Unreachable(_)), "{transient}");
        }
    }

    #[test]
    fn lsns_round_trip() {
        assert_eq!(Lsn::parse("16/B374D848"), Some(Lsn(0x16_B374_D848)));
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn::parse("nonsense"), None);
        assert!(Lsn::parse("0/3000000") < Lsn::parse("1/0"));
    }
}
