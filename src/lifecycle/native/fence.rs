//! Native mode has no consensus store; it keeps to one rule whose safety follows from
//! majorities intersecting (docs/native-ha.md). With `REPLICATION_PEERS`, before a data
//! directory becomes a writable primary (a start as primary, a promotion at start or
//! `pg-entrypoint promote`), a majority of the members (this one included) must answer, and
//! none of those that answer may show that it must not:
//! - a peer of this cluster that is a writable primary: there must not be two;
//! - a peer on a newer timeline: another node was promoted while this one was away, and its
//!   history, not ours, is the cluster's;
//! - for a promotion, a standby on our timeline that has received more WAL than we have: it
//!   holds commits that were acknowledged and that we lack.
//!
//! A primary that reaches no majority at start runs read-only and keeps asking
//! ([`Waiter`]). A peer that answers but refuses our credentials counts as a refusal at
//! start: it is alive, and may be a new primary whose replication password was rotated.
//! While read-only, such a peer only keeps the node waiting (it is not counted).

use std::process::Command;
use std::time::{Duration, Instant};

use crate::config::{majority, Address, Replication};
use crate::pgdata::files;
use crate::pid1::supervise::Supervisor;
use crate::postgres::member::{self, Answer, Asking, Connector, Lsn};
use crate::postgres::step::{self, Context, StepError};
use crate::render::{Settings, Source};

/// This node, as the fence sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Me {
    pub system_id: u64,
    pub timeline: u32,
    /// For a promotion: the WAL this standby has. `None` when not compared.
    pub lsn: Option<Lsn>,
}

/// The decision, pure: `Err(why this node must not become writable)`.
pub fn refusal(me: &Me, answers: &[(Address, Answer)]) -> Result<(), String> {
    for (address, answer) in answers {
        let peer = match answer {
            Answer::Identity(peer) => peer,
            Answer::Unreachable(_) => continue,
            // It knows no such role, or has no pg_hba line for us: not a member of ours.
            Answer::Rejected { variable: "REPLICATION_USER", .. } => continue,
            Answer::Untrusted(reason) => {
                return Err(format!(
                    "{address} answered but its certificate is not trusted ({reason}): it is alive and may be a \
                     primary; fix REPLICATION_SSLMODE/TLS_CA_FILE or its certificate"
                ))
            }
            Answer::Rejected { variable, reason } => {
                return Err(format!(
                    "{address} answered but refused this node's {variable} ({reason}): it may be a primary whose \
                     password was rotated. If you are rotating the password, set REPLICATION_PASSWORD_PREVIOUS to the \
                     old one for this start; otherwise fix {variable}"
                ))
            }
        };
        if peer.system_id != me.system_id {
            continue; // another cluster: not ours to compare with
        }
        if !peer.standby {
            return Err(format!(
                "{address} is a writable primary of this cluster (timeline {}); there must not be two. \
                 Make this node a replica of it (REPLICATION_ROLE=replica, PRIMARY_HOST), or stop it first",
                peer.timeline
            ));
        }
        if peer.timeline > me.timeline {
            return Err(format!(
                "{address} is on timeline {}, newer than this node's {}: another node was promoted while this one \
                 was away. Make this node a replica of the new primary (REPLICATION_ROLE=replica, PRIMARY_HOST); it \
                 rejoins with pg_rewind",
                peer.timeline, me.timeline
            ));
        }
        if let Some(mine) = me.lsn.filter(|mine| peer.timeline == me.timeline && peer.lsn > *mine) {
            return Err(format!(
                "{address} has received WAL up to {}, {} bytes more than this node ({mine}): promoting this node \
                 would lose commits that were acknowledged. Promote {address} instead (the most advanced replica)",
                peer.lsn,
                peer.lsn.0 - mine.0
            ));
        }
    }
    Ok(())
}

/// Whether the members that answered (this one included) make a majority of the
/// `others + 1` members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    Majority,
    /// Why not: how many answered, how many are needed, who did not answer.
    Short(String),
}

/// How many members of our cluster answered, this one included (a peer of another cluster,
/// or one that refused us, is not counted), against the majority of `others + 1`.
pub fn standing(me: &Me, answers: &[(Address, Answer)], others: usize) -> Standing {
    let ours = |a: &Answer| matches!(a, Answer::Identity(i) if i.system_id == me.system_id);
    let answered = 1 + answers.iter().filter(|(_, a)| ours(a)).count();
    let needed = majority(others + 1);
    if others == 0 || answered >= needed {
        return Standing::Majority;
    }
    let silent: Vec<String> =
        answers.iter().filter(|(_, a)| !ours(a)).map(|(address, answer)| describe_answer(address, answer)).collect();
    Standing::Short(format!(
        "{answered} of the {} members answered (this one included) and a majority is {needed}; {}",
        others + 1,
        silent.join("; ")
    ))
}

/// The settings of a primary that waits for a majority: read-only, and why (which `health`
/// shows). Clients that turn read-only off still get no commit acknowledged without a
/// majority's standbys ([`render::majority_sync`]).
pub fn read_only(settings: &Settings, why: &str) -> Settings {
    let mut settings = settings.clone();
    settings.insert("default_transaction_read_only".into(), ("on".into(), Source::Role));
    settings.insert(FENCE_SETTING.into(), (format!("waiting for a majority: {why}"), Source::Role));
    settings
}

/// A placeholder setting (any `prefix.name` is accepted) that carries the fence's state.
pub const FENCE_SETTING: &str = "pg_entrypoint.fence";

/// One line per peer for the log and `promote`'s output.
pub fn describe_answer(address: &Address, answer: &Answer) -> String {
    match answer {
        Answer::Identity(p) => format!(
            "{address}: {} on timeline {} at {} (system {})",
            if p.standby { "standby" } else { "primary" },
            p.timeline,
            p.lsn,
            p.system_id
        ),
        Answer::Unreachable(why) => format!("{address}: not reachable ({why})"),
        Answer::Rejected { variable, reason } => format!("{address}: refused us (check {variable}): {reason}"),
        Answer::Untrusted(reason) => format!("{address}: not trusted (TLS): {reason}"),
    }
}

/// What [`before_writable`] allows.
pub enum Writable {
    Now,
    /// No majority answered (why), and no member objected: this node (`me`) may become
    /// writable only once a majority answers.
    AfterMajority {
        why: String,
        me: Me,
    },
}

/// At start, before a data directory becomes a writable primary: asks every peer (one quick
/// attempt each) and refuses with [`StepError::Fenced`] when one shows it must not.
/// `lsn`: for a standby promoted at start, the WAL it has (compared with the other standbys).
pub fn before_writable(
    ctx: &Context,
    sup: &mut Supervisor,
    replication: &Replication,
    lsn: Option<Lsn>,
) -> Result<Writable, StepError> {
    if replication.peers.is_empty() {
        return Ok(Writable::Now);
    }
    let me = Me { lsn, ..local_identity(ctx, sup)? };
    let connector = Connector::questions(ctx.config, ctx.bin, &replication.user);
    let answers = ask_peers(sup, &connector, replication);
    // A primary keeps no password file once it has asked (one waiting read-only writes it
    // again for each round, and removes it once done).
    files::remove_passfile(connector.passfile())?;
    let answers = answers?;
    refusal(&me, &answers).map_err(StepError::Fenced)?;
    Ok(match standing(&me, &answers, ctx.config.other_members().len()) {
        Standing::Majority => Writable::Now,
        Standing::Short(why) => Writable::AfterMajority { why, me },
    })
}

/// A primary started read-only because no majority answered: asks the peers again every
/// [`WAITER_PAUSE`] from the supervision loop, until a majority answers (writable) or one
/// shows this node must not be a primary (fenced).
pub struct Waiter {
    me: Me,
    connector: Connector,
    replication: Replication,
    others: usize,
    asking: Option<Asking>,
    next: Instant,
    /// Alternates with the current password while a peer refuses it (a rotation).
    previous: bool,
    reported: String,
}

pub const WAITER_PAUSE: Duration = Duration::from_secs(2);

/// What a [`Waiter`]'s turn found.
#[derive(Debug, PartialEq, Eq)]
pub enum Waited {
    Still,
    Majority,
    Fenced(String),
}

impl Waiter {
    pub fn new(ctx: &Context, replication: &Replication, me: Me) -> Waiter {
        Waiter {
            me,
            connector: Connector::questions(ctx.config, ctx.bin, &replication.user),
            replication: replication.clone(),
            others: ctx.config.other_members().len(),
            asking: None,
            next: Instant::now() + WAITER_PAUSE,
            previous: false,
            reported: String::new(),
        }
    }

    pub fn tick(&mut self, sup: &mut Supervisor) -> Waited {
        let Some(asking) = self.asking.as_mut() else {
            if Instant::now() >= self.next {
                self.ask(sup);
            }
            return Waited::Still;
        };
        let Some(answers) = asking.collect(sup) else { return Waited::Still };
        self.asking = None;
        self.next = Instant::now() + WAITER_PAUSE;
        let refused = |a: &Answer| matches!(a, Answer::Rejected { .. } | Answer::Untrusted(_));
        self.previous = !self.previous
            && self.replication.previous_password.is_some()
            && answers.iter().any(|(_, a)| matches!(a, Answer::Rejected { variable: "REPLICATION_PASSWORD", .. }));
        // Only what members showed fences; a refusal of our credentials is no proof, and it
        // leaves them out of the majority (the reason is in the report).
        let shown: Vec<(Address, Answer)> = answers.iter().filter(|(_, a)| !refused(a)).cloned().collect();
        match (refusal(&self.me, &shown), standing(&self.me, &answers, self.others)) {
            (Err(why), _) => return self.done(Waited::Fenced(why)),
            (Ok(()), Standing::Short(why)) => self.report(&why),
            (Ok(()), Standing::Majority) => {
                for (address, answer) in &answers {
                    tracing::info!("peer {}", describe_answer(address, answer));
                }
                return self.done(Waited::Majority);
            }
        }
        Waited::Still
    }

    fn ask(&mut self, sup: &mut Supervisor) {
        let password = match (&self.replication.previous_password, self.previous) {
            (Some(previous), true) => previous,
            _ => &self.replication.password,
        };
        if let Err(e) = files::write_passfile_with(self.connector.passfile(), &self.replication.user, password) {
            self.report(&e.to_string());
            self.next = Instant::now() + WAITER_PAUSE;
            return;
        }
        self.asking = Some(Asking::start(sup, &self.connector, &self.replication.peers));
    }

    fn done(&mut self, outcome: Waited) -> Waited {
        if let Err(e) = files::remove_passfile(self.connector.passfile()) {
            tracing::warn!("{e}");
        }
        outcome
    }

    fn report(&mut self, why: &str) {
        if why != self.reported {
            tracing::warn!("read-only, waiting for a majority: {why}");
            self.reported = why.to_string();
        }
    }
}

/// Each peer's answer; a peer refusing the password is asked again with
/// `REPLICATION_PASSWORD_PREVIOUS` when it is set (a rotation: the peers learn the new
/// password only once this primary has applied it and they have replicated it).
pub fn ask_peers(
    sup: &mut Supervisor,
    connector: &Connector,
    replication: &Replication,
) -> Result<Vec<(Address, Answer)>, StepError> {
    let ask = |sup: &mut Supervisor, address: &Address| -> Result<Answer, StepError> {
        let what = format!("psql (asking the peer {address})");
        let out = step::run_captured(sup, &what, &mut connector.ask(address, None), false)?;
        Ok(member::parse(out.code, &out.stdout, &out.stderr))
    };
    let passfile = connector.passfile();
    files::write_passfile(passfile, replication)?;
    let mut answers = Vec::new();
    for address in &replication.peers {
        answers.push((address.clone(), ask(sup, address)?));
    }
    let refused_password = |a: &Answer| matches!(a, Answer::Rejected { variable: "REPLICATION_PASSWORD", .. });
    if let Some(previous) =
        replication.previous_password.as_ref().filter(|_| answers.iter().any(|(_, a)| refused_password(a)))
    {
        files::write_passfile_with(passfile, &replication.user, previous)?;
        for (address, answer) in answers.iter_mut().filter(|(_, a)| refused_password(a)) {
            *answer = ask(sup, address)?;
        }
    }
    for (address, answer) in &answers {
        tracing::info!("peer {}", describe_answer(address, answer));
    }
    Ok(answers)
}

/// This data directory's system identifier and timeline, from pg_controldata.
pub fn local_identity(ctx: &Context, sup: &mut Supervisor) -> Result<Me, StepError> {
    let mut cmd: Command = step::tool(ctx.bin, "pg_controldata");
    // Its labels are translated in other locales.
    cmd.arg("-D").arg(&ctx.config.pgdata).env("LC_ALL", "C");
    let out = step::run_captured(sup, "pg_controldata", &mut cmd, false)?;
    match parse_controldata(&out.stdout) {
        Some((system_id, timeline)) if out.code == 0 => Ok(Me { system_id, timeline, lsn: None }),
        _ => Err(StepError::Failed { what: format!("pg_controldata ({})", out.stderr.trim()), code: out.code }),
    }
}

/// The system identifier and the newest timeline pg_controldata mentions.
pub fn parse_controldata(text: &str) -> Option<(u64, u32)> {
    let field = |label: &str| {
        text.lines().find_map(|l| l.strip_prefix(label)).map(|v| v.trim().trim_start_matches(':').trim().to_string())
    };
    let system_id = field("Database system identifier")?.parse().ok()?;
    let timeline = ["Latest checkpoint's TimeLineID", "Min recovery ending loc's timeline"]
        .iter()
        .filter_map(|label| field(label)?.parse::<u32>().ok())
        .max()?;
    Some((system_id, timeline))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::member::Identity;

    fn peer(host: &str, standby: bool, timeline: u32, lsn: u64) -> (Address, Answer) {
        let identity = Identity { system_id: 7, timeline, lsn: Lsn(lsn), standby, slot: None };
        (Address { host: host.into(), port: 5432 }, Answer::Identity(identity))
    }

    const ME: Me = Me { system_id: 7, timeline: 1, lsn: None };

    #[test]
    fn a_writable_peer_or_a_newer_timeline_fences() {
        assert_eq!(refusal(&ME, &[peer("r1", true, 1, 100)]), Ok(()));
        let two = refusal(&ME, &[peer("r1", true, 1, 100), peer("r2", false, 1, 5)]).unwrap_err();
        assert!(two.starts_with("r2:5432 is a writable primary of this cluster (timeline 1)"), "{two}");
        let newer = refusal(&ME, &[peer("r1", true, 2, 100)]).unwrap_err();
        assert!(newer.contains("timeline 2, newer than this node's 1"), "{newer}");
        // Unreachable peers and other clusters do not count.
        let mut other = peer("x", false, 9, 0);
        if let Answer::Identity(i) = &mut other.1 {
            i.system_id = 8;
        }
        let gone = (Address { host: "gone".into(), port: 5432 }, Answer::Unreachable("timeout expired".into()));
        assert_eq!(refusal(&ME, &[other, gone]), Ok(()));
        // A peer that answers but refuses us is alive: it counts.
        let refused =
            Answer::Rejected { variable: "REPLICATION_PASSWORD", reason: "password authentication failed".into() };
        let why = refusal(&ME, &[(Address { host: "b".into(), port: 5432 }, refused)]).unwrap_err();
        assert!(why.starts_with("b:5432 answered but refused this node"), "{why}");
    }

    #[test]
    fn a_promotion_needs_the_most_wal() {
        let me = Me { lsn: Some(Lsn(1000)), ..ME };
        assert_eq!(refusal(&me, &[peer("r2", true, 1, 1000)]), Ok(()));
        let behind = refusal(&me, &[peer("r2", true, 1, 1500)]).unwrap_err();
        assert!(
            behind.contains("500 bytes more than this node") && behind.contains("Promote r2:5432 instead"),
            "{behind}"
        );
        // Without an LSN (a start as primary) only roles and timelines count.
        assert_eq!(refusal(&ME, &[peer("r2", true, 1, 1500)]), Ok(()));
    }

    #[test]
    fn a_majority_must_answer() {
        let gone = |host: &str| (Address { host: host.into(), port: 5432 }, Answer::Unreachable("timeout".into()));
        assert_eq!(standing(&ME, &[], 0), Standing::Majority);
        assert_eq!(standing(&ME, &[peer("r1", true, 1, 0), gone("r2")], 2), Standing::Majority);
        let Standing::Short(why) = standing(&ME, &[gone("r1"), gone("r2")], 2) else { panic!() };
        assert!(
            why.starts_with(
                "1 of the 3 members answered (this one included) and a majority is 2; r1:5432: not reachable (timeout)"
            ),
            "{why}"
        );
        // Two members need both; a member of another cluster is not one of ours.
        assert!(matches!(standing(&ME, &[gone("r1")], 1), Standing::Short(_)));
        let mut other = peer("x", true, 1, 0);
        if let Answer::Identity(i) = &mut other.1 {
            i.system_id = 8;
        }
        assert!(matches!(
            standing(&ME, &[other, peer("r2", true, 1, 0), gone("r3"), gone("r4")], 4),
            Standing::Short(_)
        ));
    }

    #[test]
    fn controldata_gives_identity_and_timeline() {
        let text = "pg_control version number:            1300\n\
                    Database system identifier:           7713256681068276477\n\
                    Latest checkpoint's TimeLineID:       2\n\
                    Min recovery ending loc's timeline:   3\n";
        assert_eq!(parse_controldata(text), Some((7713256681068276477, 3)));
        assert_eq!(parse_controldata("nothing"), None);
    }
}
