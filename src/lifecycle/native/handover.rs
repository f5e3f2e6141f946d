//! The supervisor's half of a switchover (the command's is `switchover`): the primary hands
//! its role over when a record in PGDATA tells it to follow another member, and at every
//! start the recorded role outranks the environment's (`pgdata::role_record`).
//!
//! Handing over is the textbook clean switchover: a fast shutdown, whose checkpoint postgres
//! sends to every connected standby before it exits, then `standby.signal`, then the start
//! again as a replica of the candidate. The candidate is promoted only once it has replayed
//! that checkpoint (the command checks), so nothing is left to rewind.

use std::time::Duration;

use crate::config::{Address, Config, Inputs, ProcessInputs, Replica, Replication, Role};
use crate::pgdata::datadir;
use crate::pgdata::role_record::{self, Record, Recorded};
use crate::postgres::step::StepError;

/// How an old primary waits for its new primary at a start (as PRIMARY_WAIT_TIMEOUT's default).
const FOLLOW_WAIT: Duration = Duration::from_secs(120);

/// The role to run under `record`, or `None` when the environment already says the same
/// (the record is then done with). `name` is this node's name when it follows (its slot's).
pub fn role_for_start(role: &Role, record: &Recorded, name: &str) -> Option<Role> {
    match (role, record) {
        (Role::Primary(_), Recorded::Primary) => None,
        (Role::Replica(replica), Recorded::ReplicaOf(at)) if replica.primary() == *at => None,
        (Role::Primary(replication), Recorded::ReplicaOf(at)) => Some(Role::Replica(follow(replication, at, name))),
        (Role::Replica(replica), Recorded::ReplicaOf(at)) => Some(Role::Replica(Replica {
            primary_host: at.host.clone(),
            primary_port: at.port,
            // The configured primary stays a member: majorities count over the same set.
            replication: Replication { peers: replica.members(), ..replica.replication.clone() },
            ..replica.clone()
        })),
        (Role::Replica(replica), Recorded::Primary) => {
            Some(Role::Primary(Replication { peers: replica.members(), ..replica.replication.clone() }))
        }
        // Resolved before the record is read; no role to record else.
        (Role::Auto(_) | Role::Standalone | Role::Patroni(_), _) => None,
    }
}

fn follow(replication: &Replication, at: &Address, name: &str) -> Replica {
    Replica {
        replication: replication.clone(),
        primary_host: at.host.clone(),
        primary_port: at.port,
        name: name.to_string(),
        wait_timeout: FOLLOW_WAIT,
        reclone: false,
        clone_from_repository: false,
    }
}

/// At start: the role a switchover decided replaces the environment's (with
/// `REPLICATION_ROLE=auto` too, after the data decided it), and a decision the environment
/// now agrees with is removed, as is a request nobody acted on.
pub fn apply_record(config: &mut Config) -> Result<(), StepError> {
    let pgdata = config.pgdata.clone();
    let remove = |what: &str| {
        role_record::remove(&pgdata).map_err(datadir::DataDirError::io(&pgdata, format!("cannot remove {what}")))
    };
    let recorded = match role_record::read(&pgdata).map_err(StepError::RoleRecord)? {
        None => return Ok(()),
        Some(Record::Request { to, .. }) => {
            tracing::warn!("removing a switchover's request to hand over to {to} that this node never acted on");
            return Ok(remove("a stale switchover request")?);
        }
        Some(Record::Decision(recorded)) => recorded,
    };
    let name = ProcessInputs.var("REPLICA_NAME").filter(|n| !n.is_empty()).unwrap_or_else(|| ProcessInputs.hostname());
    match role_for_start(&config.role, &recorded, &name) {
        Some(role) => {
            let following = match &role {
                Role::Replica(r) => format!(" of {}", r.primary()),
                _ => String::new(),
            };
            tracing::warn!(
                "a switchover made this node the {}{following}, and it stays so although the environment says {} \
                 (docs/switchover.md: set REPLICATION_ROLE and PRIMARY_HOST to match, and the record goes)",
                role.name(),
                config.role.name()
            );
            config.role = role;
        }
        None => {
            tracing::info!(
                "the environment now gives the role a switchover recorded ({}); record removed",
                recorded.line()
            );
            remove("the switchover's role record")?;
        }
    }
    Ok(())
}

/// A running primary's watch for a request to hand over: asked at each turn of the loop.
#[derive(Default)]
pub struct Watch {
    reported: String,
}

impl Watch {
    /// The member to hand over to, when a request that has not expired asks for one that this
    /// node counts among its members. The request becomes the decision first (atomically), so
    /// that it is acted on once; anything else is withdrawn and reported.
    pub fn requested(&mut self, config: &Config) -> Option<Address> {
        // Only a primary hands over (a replica's record says whom it follows).
        if config.pgdata.join("standby.signal").exists() {
            return None;
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let problem = match role_record::read(&config.pgdata) {
            Ok(Some(Record::Request { to, until })) if until < now => {
                role_record::remove(&config.pgdata).ok();
                format!("a switchover's request to hand over to {to}: it expired before this node saw it")
            }
            Ok(Some(Record::Request { to, .. })) if config.other_members().contains(&to) => {
                match role_record::write(&config.pgdata, &Recorded::ReplicaOf(to.clone())) {
                    Ok(()) => return Some(to),
                    Err(e) => format!("a switchover to {to}: cannot record it ({e})"),
                }
            }
            Ok(Some(Record::Request { to, .. })) => {
                // Withdrawn, so that the switchover sees the refusal and says so.
                role_record::remove(&config.pgdata).ok();
                format!("a switchover to {to}, which is not among this node's members (REPLICATION_PEERS)")
            }
            Ok(_) => return None,
            Err(why) => why,
        };
        if problem != self.reported {
            tracing::error!("refusing {problem}");
            self.reported = problem;
        }
        None
    }
}

/// After the fast shutdown that hands over to `to`: the stopped primary becomes a standby
/// (the next start follows `to`, as recorded). `Err(why)` when postgres did not stop with a
/// shutdown checkpoint: the record says primary again, and this node starts as the primary.
pub fn become_standby(pgdata: &std::path::Path, code: i32, to: &Address) -> Result<(), String> {
    let why = if code != 0 {
        format!("postgres exited with {code} instead of shutting down cleanly")
    } else if !datadir::shut_down_cleanly(pgdata) {
        "pg_control does not say \"shut down\"".to_string()
    } else {
        return datadir::write_atomic(&pgdata.join("standby.signal"), b"", 0o600)
            .map_err(|e| format!("cannot write standby.signal: {e}"))
            .inspect(|()| tracing::info!("the old primary is shut down; starting as a standby of {to}"));
    };
    role_record::write(pgdata, &Recorded::Primary)
        .map_err(|e| format!("{why}, and the role record cannot say primary again: {e}"))?;
    Err(format!("the hand-over to {to} failed ({why}); starting again as the primary"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MapInputs;

    fn role(vars: &[(&str, &str)]) -> Role {
        let mut all = vec![("POSTGRES_PASSWORD", "pw"), ("HA_MODE", "native"), ("REPLICATION_PASSWORD", "r")];
        all.extend_from_slice(vars);
        Config::from_inputs(&MapInputs::with(&all, "node")).unwrap().role
    }

    fn at(host: &str) -> Address {
        Address { host: host.into(), port: 5432 }
    }

    #[test]
    fn the_record_outranks_the_environment_until_they_agree() {
        let primary = role(&[("REPLICATION_ROLE", "primary"), ("REPLICATION_PEERS", "r1,r2")]);
        let replica = role(&[
            ("REPLICATION_ROLE", "replica"),
            ("PRIMARY_HOST", "p"),
            ("REPLICA_NAME", "r1"),
            ("REPLICATION_PEERS", "p,r2"),
        ]);
        // The old primary follows the candidate under its own name.
        let Some(Role::Replica(old)) = role_for_start(&primary, &Recorded::ReplicaOf(at("r1")), "p") else { panic!() };
        assert_eq!((old.primary(), old.name.as_str()), (at("r1"), "p"));
        assert_eq!(old.members(), [at("r1"), at("r2")]);
        // The candidate is a primary whose members still include the old primary.
        let Some(Role::Primary(new)) = role_for_start(&replica, &Recorded::Primary, "r1") else { panic!() };
        assert_eq!(new.peers, [at("p"), at("r2")]);
        // A replica told to follow another member keeps its configured primary as a member.
        let Some(Role::Replica(moved)) = role_for_start(&replica, &Recorded::ReplicaOf(at("r2")), "r1") else {
            panic!()
        };
        assert_eq!((moved.primary(), moved.members()), (at("r2"), vec![at("r2"), at("p")]));
        // Agreement: the record is done with.
        assert_eq!(role_for_start(&primary, &Recorded::Primary, "p"), None);
        assert_eq!(role_for_start(&replica, &Recorded::ReplicaOf(at("p")), "r1"), None);
    }
}
