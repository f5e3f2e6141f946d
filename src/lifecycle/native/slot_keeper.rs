//! A running replica keeps its replication slot on the primary. At start the slot gets one
//! quick attempt (a replica must start while its primary is down); after that, and after a
//! failover that repointed the replica at a primary not up yet, this keeper asks the primary
//! from the supervision loop and creates the slot as soon as it answers without one. It
//! also notices a primary of another cluster. It never blocks the loop: it starts psql and
//! collects its answer on a later tick.
//!
//! With `REPLICATION_PEERS`, it also keeps the replica following the cluster's primary: when
//! its primary does not answer, it asks the other members, and follows one that is a
//! writable primary of this cluster on a newer timeline (a promoted replica). That is how a
//! promotion reaches a majority without an operator repointing each replica
//! (docs/native-ha.md); the environment's PRIMARY_HOST is followed again at the next start.
//! When its primary answers as a standby (a switchover made it one), it follows the writable
//! member on its own timeline or a newer one.

use std::process::Command;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::config::{slot_name, Address, Config, Replica, Role};
use crate::pgdata::datadir;
use crate::pgdata::files;
use crate::pid1::supervise::Supervisor;
use crate::postgres::member::{self, Answer, Asking, Connector, Slot};
use crate::postgres::step::{self, Context};
use crate::render;

/// Between questions while all is well (a member of a majority-ruled cluster asks more often:
/// a promotion waits for it to notice its primary is gone), and while it is not.
const SETTLED: Duration = Duration::from_secs(60);
const SETTLED_AMONG_PEERS: Duration = Duration::from_secs(5);
const UNSETTLED: Duration = Duration::from_secs(3);

enum Question {
    WhoAreYou,
    CreateSlot,
    /// Our slot on a primary we no longer follow: left there, it would hold up to
    /// max_slot_wal_keep_size of WAL on that member (a standby now, after a switchover).
    DropSlotOn(Address),
}

/// How many times a stale slot is asked to go (it stays active until the old primary notices
/// we left) before it is left to max_slot_wal_keep_size.
const DROP_ATTEMPTS: u32 = 10;

struct Running {
    pid: Pid,
    question: Question,
    stdout: JoinHandle<String>,
    stderr: JoinHandle<String>,
}

pub struct SlotKeeper {
    connector: Connector,
    primary: Address,
    slot: String,
    /// This replica's configuration (PGDATA, the other members), rewritten when it follows
    /// another primary; the members stay the same set.
    config: Config,
    postgres: Pid,
    running: Option<Running>,
    /// The member we followed before, our slot still there, and attempts left to drop it
    /// (once our slot is in place on the primary we follow now).
    stale: Option<(Address, u32)>,
    slot_in_place: bool,
    /// Asking the other members for the primary, and whether ours answered as a standby.
    members: Option<(Asking, bool)>,
    next: Instant,
    /// The last state logged, so a state is logged once, not every minute.
    reported: String,
}

impl SlotKeeper {
    /// `postgres`: the server to reload when this replica follows another primary.
    pub fn new(ctx: &Context, replica: &Replica, postgres: Pid) -> SlotKeeper {
        SlotKeeper {
            connector: Connector::replica(ctx.config, ctx.bin, replica),
            primary: replica.primary(),
            slot: slot_name(&replica.name),
            config: ctx.config.clone(),
            postgres,
            running: None,
            stale: None,
            slot_in_place: false,
            members: None,
            next: Instant::now() + UNSETTLED,
            reported: String::new(),
        }
    }

    /// One turn: collect a finished question, or ask the next one when it is due. Once this
    /// node was promoted (however: `standby.signal` is gone), it follows no one: nothing more
    /// to keep, and no slot may be created on its former primary.
    pub fn tick(&mut self, sup: &mut Supervisor) {
        if let Some((asking, ours_is_a_standby)) = self.members.as_mut() {
            if let Some(answers) = asking.collect(sup) {
                let same_timeline_too = *ours_is_a_standby;
                self.members = None;
                self.follow_newer(&answers, same_timeline_too);
            }
            return;
        }
        if let Some(running) = self.running.take() {
            match sup.collect(running.pid) {
                Ok(None) => {
                    self.running = Some(running);
                    return;
                }
                Ok(Some(code)) => self.answered(sup, code, running),
                Err(e) => tracing::debug!("slot keeper: {e}"),
            }
        }
        if self.running.is_none() && Instant::now() >= self.next && self.still_a_standby() {
            match self.stale.clone() {
                Some((old, _)) if self.slot_in_place => self.ask(sup, Question::DropSlotOn(old)),
                _ => self.ask(sup, Question::WhoAreYou),
            }
        }
    }

    fn still_a_standby(&mut self) -> bool {
        if self.config.pgdata.join("standby.signal").exists() {
            return true;
        }
        self.report(true, "this node was promoted; no slot to keep on its former primary".into());
        self.next = Instant::now() + SETTLED;
        false
    }

    fn ask(&mut self, sup: &mut Supervisor, question: Question) {
        let mut cmd: Command = match &question {
            Question::WhoAreYou => self.connector.ask(&self.primary, Some(&self.slot)),
            Question::CreateSlot => self.connector.replication_psql(&self.primary, &[member::create_slot(&self.slot)]),
            Question::DropSlotOn(old) => self
                .connector
                .replication_psql(old, &[format!("DROP_REPLICATION_SLOT {}", render::quote_identifier(&self.slot))]),
        };
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        match sup.spawn(&mut cmd) {
            Ok(mut child) => {
                let stdout = step::read_all(child.stdout.take(), false);
                let stderr = step::read_all(child.stderr.take(), false);
                self.running = Some(Running { pid: Pid::from_raw(child.id() as i32), question, stdout, stderr });
            }
            Err(e) => {
                self.report(false, format!("cannot run psql to ask the primary: {e}"));
                self.next = Instant::now() + UNSETTLED;
            }
        }
    }

    fn answered(&mut self, sup: &mut Supervisor, code: i32, running: Running) {
        let stdout = running.stdout.join().unwrap_or_default();
        let stderr = running.stderr.join().unwrap_or_default();
        self.next = Instant::now() + UNSETTLED;
        if let Question::DropSlotOn(old) = &running.question {
            let gone = code == 0 || stderr.contains("does not exist");
            match self.stale.take() {
                _ if gone => {
                    tracing::info!(slot = %self.slot, "dropped our replication slot on {old}, which we no longer follow")
                }
                Some((old, left)) if left > 1 => self.stale = Some((old, left - 1)),
                _ => tracing::info!(
                    slot = %self.slot,
                    "left our replication slot on {old} ({}): it holds WAL there up to max_slot_wal_keep_size until \
                     dropped (pg_drop_replication_slot)",
                    stderr.trim()
                ),
            }
            return;
        }
        if let Question::CreateSlot = running.question {
            if code == 0 && stderr.trim().is_empty() {
                self.report(true, format!("created the missing replication slot {:?} on {}", self.slot, self.primary));
                self.next = Instant::now() + self.settled();
            } else {
                self.report(
                    false,
                    format!("cannot create the replication slot on {}: {}", self.primary, stderr.trim()),
                );
            }
            return;
        }
        match member::parse(code, &stdout, &stderr) {
            Answer::Identity(primary) => match datadir::system_identifier(&self.config.pgdata) {
                Some(ours) if ours != primary.system_id => self.report(
                    false,
                    format!(
                        "the primary {} belongs to another cluster (system identifier {}, ours {}); this replica \
                         cannot follow it. Point PRIMARY_HOST at this cluster's primary, or empty PGDATA to clone \
                         the new one",
                        self.primary, primary.system_id, ours
                    ),
                ),
                // A switchover made our primary a standby: follow the writable member.
                _ if primary.standby && self.still_a_standby() && !self.config.other_members().is_empty() => {
                    self.report(true, format!("{} is a standby now; asking the members for the primary", self.primary));
                    self.ask_members(sup, true);
                }
                _ => match primary.slot {
                    // (A standby upstream is a cascade: it needs the slot as much as a primary.)
                    Some(Slot::Missing) if self.still_a_standby() => self.ask(sup, Question::CreateSlot),
                    Some(Slot::Missing) => {}
                    Some(Slot::Invalidated) => self.report(
                        false,
                        format!(
                            "the primary invalidated the replication slot {:?}: this replica can no longer catch \
                             up. Restart it with REPLICA_RECLONE=true to clone again",
                            self.slot
                        ),
                    ),
                    _ => {
                        self.report(true, format!("replication slot {:?} present on {}", self.slot, self.primary));
                        self.slot_in_place = true;
                        self.next = if self.stale.is_some() { Instant::now() } else { Instant::now() + self.settled() };
                    }
                },
            },
            Answer::Unreachable(why) => {
                self.report(true, format!("the primary {} is not reachable: {why}", self.primary));
                if self.still_a_standby() {
                    self.ask_members(sup, false);
                }
            }
            Answer::Rejected { variable, reason } => self.report(
                false,
                format!("the primary {} refused this replica; check {variable}: {reason}", self.primary),
            ),
            Answer::Untrusted(reason) => self.report(
                false,
                format!(
                    "the primary {} is not trusted (TLS); check REPLICATION_SSLMODE, TLS_CA_FILE: {reason}",
                    self.primary
                ),
            ),
        }
    }

    /// Asks the other members who the primary is (`follow_newer` takes the answers).
    fn ask_members(&mut self, sup: &mut Supervisor, ours_is_a_standby: bool) {
        let others: Vec<Address> = self.config.other_members().into_iter().filter(|a| *a != self.primary).collect();
        if !others.is_empty() {
            self.members = Some((Asking::start(sup, &self.connector, &others), ours_is_a_standby));
        }
    }

    fn settled(&self) -> Duration {
        if self.config.other_members().is_empty() {
            SETTLED
        } else {
            SETTLED_AMONG_PEERS
        }
    }

    /// Follows the member that [`newer_primary`] finds, if any: the new primary_conninfo
    /// written, postgres reloaded (its WAL receiver reconnects), the slot asked for at once.
    /// `same_timeline_too` when our primary is a standby now: we may have followed it onto the
    /// new primary's timeline already.
    fn follow_newer(&mut self, answers: &[(Address, Answer)], same_timeline_too: bool) {
        let (Some(system_id), Some(timeline)) =
            (datadir::system_identifier(&self.config.pgdata), datadir::latest_timeline(&self.config.pgdata))
        else {
            return;
        };
        let above = if same_timeline_too { timeline.saturating_sub(1) } else { timeline };
        let Some((address, theirs)) = newer_primary(system_id, above, answers) else { return };
        if let Role::Replica(replica) = &mut self.config.role {
            // The old primary stays a member: the majority is counted over the same set.
            let old = replica.primary();
            if !replica.replication.peers.contains(&old) {
                replica.replication.peers.push(old);
            }
            replica.primary_host = address.host.clone();
            replica.primary_port = address.port;
        }
        let settings = render::settings(&self.config);
        match files::write_config_and_reload(&self.config, &settings, &self.config.pgdata, self.postgres) {
            Ok(()) => {
                tracing::warn!(
                    "the primary {} {} and {address} is a writable primary of this cluster on timeline {theirs} \
                     (this replica's: {timeline}): following {address} (until the next start; set PRIMARY_HOST to \
                     keep it)",
                    self.primary,
                    if same_timeline_too { "is a standby now" } else { "does not answer" }
                );
                self.stale = Some((std::mem::replace(&mut self.primary, address), DROP_ATTEMPTS));
                self.slot_in_place = false;
                self.reported.clear();
                self.next = Instant::now();
            }
            Err(e) => tracing::error!("cannot follow {address}: {e}"),
        }
    }

    /// Logs a state when it changes: at INFO when it is expected to pass, else at ERROR.
    fn report(&mut self, benign: bool, state: String) {
        if state == self.reported {
            return;
        }
        if benign {
            tracing::info!("slot keeper: {state}");
        } else {
            tracing::error!("slot keeper: {state}");
        }
        self.reported = state;
    }
}

/// The member to follow once this replica's primary is gone: a writable primary of this
/// cluster on a timeline above `timeline` (the newest, if several), with its timeline.
pub fn newer_primary(system_id: u64, timeline: u32, answers: &[(Address, Answer)]) -> Option<(Address, u32)> {
    answers
        .iter()
        .filter_map(|(address, answer)| match answer {
            Answer::Identity(i) if !i.standby && i.system_id == system_id && i.timeline > timeline => {
                Some((address.clone(), i.timeline))
            }
            _ => None,
        })
        .max_by_key(|(_, t)| *t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::member::{Identity, Lsn};

    #[test]
    fn a_replica_follows_only_a_newer_writable_primary_of_its_cluster() {
        let at = |host: &str| Address { host: host.into(), port: 5432 };
        let member = |host: &str, standby, system_id, timeline| {
            (at(host), Answer::Identity(Identity { system_id, timeline, lsn: Lsn(0), standby, slot: None }))
        };
        let gone = (at("p"), Answer::Unreachable("timeout".into()));
        assert_eq!(newer_primary(7, 1, &[gone.clone(), member("r2", true, 7, 1)]), None);
        assert_eq!(newer_primary(7, 1, &[member("r1", false, 7, 1)]), None, "same timeline: a second history");
        assert_eq!(newer_primary(7, 1, &[member("x", false, 8, 5)]), None, "another cluster");
        assert_eq!(
            newer_primary(7, 1, &[gone, member("r1", false, 7, 2), member("r2", false, 7, 3)]),
            Some((at("r2"), 3))
        );
    }
}
