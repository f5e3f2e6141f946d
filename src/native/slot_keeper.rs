//! A running replica keeps its replication slot on the primary. At start the slot gets one
//! quick attempt (a replica must start while its primary is down); after that, and after a
//! failover that repointed the replica at a primary not up yet, this keeper asks the primary
//! from the supervision loop and creates the slot as soon as it answers without one. It
//! also notices a primary of another cluster. It never blocks the loop: it starts psql and
//! collects its answer on a later tick.

use std::path::PathBuf;
use std::process::Command;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::config::{slot_name, Address, Replica};
use crate::datadir;
use crate::native::member::{self, Answer, Credentials, Slot};
use crate::server::Bin;
use crate::step;
use crate::supervise::Supervisor;

/// How often the supervision loop hands the keeper a turn.
pub const TICK: Duration = Duration::from_secs(5);
/// Between questions while all is well, and while it is not.
const SETTLED: Duration = Duration::from_secs(60);
const UNSETTLED: Duration = Duration::from_secs(10);

enum Question {
    WhoAreYou,
    CreateSlot,
}

struct Running {
    pid: Pid,
    question: Question,
    stdout: JoinHandle<String>,
    stderr: JoinHandle<String>,
}

pub struct SlotKeeper {
    bin: Bin,
    primary: Address,
    user: String,
    name: String,
    slot: String,
    passfile: PathBuf,
    /// `render::client_tls`.
    tls: Vec<(&'static str, String)>,
    pgdata: PathBuf,
    running: Option<Running>,
    next: Instant,
    /// The last state logged, so a state is logged once, not every minute.
    reported: String,
}

impl SlotKeeper {
    pub fn new(
        bin: &Bin,
        replica: &Replica,
        pgdata: &std::path::Path,
        passfile: PathBuf,
        tls: Vec<(&'static str, String)>,
    ) -> SlotKeeper {
        SlotKeeper {
            bin: bin.clone(),
            primary: replica.primary(),
            user: replica.replication.user.clone(),
            name: replica.name.clone(),
            slot: slot_name(&replica.name),
            passfile,
            tls,
            pgdata: pgdata.to_path_buf(),
            running: None,
            next: Instant::now() + TICK,
            reported: String::new(),
        }
    }

    /// One turn: collect a finished question, or ask the next one when it is due. Once this
    /// node was promoted (however: `standby.signal` is gone), it follows no one: nothing more
    /// to keep, and no slot may be created on its former primary.
    pub fn tick(&mut self, sup: &mut Supervisor) {
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
            self.ask(sup, Question::WhoAreYou);
        }
    }

    fn still_a_standby(&mut self) -> bool {
        if self.pgdata.join("standby.signal").exists() {
            return true;
        }
        self.report(true, "this node was promoted; no slot to keep on its former primary".into());
        self.next = Instant::now() + SETTLED;
        false
    }

    fn ask(&mut self, sup: &mut Supervisor, question: Question) {
        let creds =
            Credentials { user: &self.user, passfile: &self.passfile, application_name: &self.name, tls: &self.tls };
        let mut cmd: Command = match question {
            Question::WhoAreYou => member::ask(&self.bin, &self.primary, &creds, Some(&self.slot)),
            Question::CreateSlot => {
                member::replication_psql(&self.bin, &self.primary, &creds, &[member::create_slot(&self.slot)])
            }
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
        if let Question::CreateSlot = running.question {
            if code == 0 && stderr.trim().is_empty() {
                self.report(true, format!("created the missing replication slot {:?} on {}", self.slot, self.primary));
                self.next = Instant::now() + SETTLED;
            } else {
                self.report(
                    false,
                    format!("cannot create the replication slot on {}: {}", self.primary, stderr.trim()),
                );
            }
            return;
        }
        match member::parse(code, &stdout, &stderr) {
            Answer::Identity(primary) => match datadir::system_identifier(&self.pgdata) {
                Some(ours) if ours != primary.system_id => self.report(
                    false,
                    format!(
                        "the primary {} belongs to another cluster (system identifier {}, ours {}); this replica \
                         cannot follow it. Point PRIMARY_HOST at this cluster's primary, or empty PGDATA to clone \
                         the new one",
                        self.primary, primary.system_id, ours
                    ),
                ),
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
                        self.next = Instant::now() + SETTLED;
                    }
                },
            },
            Answer::Unreachable(why) => {
                self.report(true, format!("the primary {} is not reachable: {why}", self.primary))
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
