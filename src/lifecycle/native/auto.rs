//! `REPLICATION_ROLE=auto`: one pod template for every member of a StatefulSet. At each start
//! the role is decided from what is known then, in this order (docs/kubernetes.md):
//!
//! 1. A peer that is a writable primary of this cluster wins: an empty volume clones it, a
//!    standby follows it, and a volume that was a primary rejoins it with pg_rewind, but only
//!    when that peer is on a newer timeline (it was promoted after us). A writable peer on our
//!    timeline or an older one is a second history: refused, for an operator to settle.
//! 2. Otherwise an existing volume keeps its role: a standby stays a replica, a former
//!    primary starts as the primary (the fence then refuses if a standby shows a newer
//!    timeline). The ordinal does not demote a promoted `pg-1`.
//! 3. Otherwise (an empty volume, no primary answering) the ordinal decides: `-0` initialises
//!    the cluster, any other clones the default primary once it answers. An empty `-0` whose
//!    peers answer as members of a cluster refuses rather than found a second one.
//!
//! This decision counts only the peers that answer; the majority rule (`fence`) then applies
//! to a primary as to any other (docs/kubernetes.md, "Limits").

use crate::config::{Address, Auto, Replica, Role};
use crate::lifecycle::native::fence;
use crate::pgdata::datadir::{self, State};
use crate::pid1::supervise::Supervisor;
use crate::postgres::member::{Answer, Connector};
use crate::postgres::step::{Context, StepError};

/// What the data directory holds, as far as the decision goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Volume {
    Empty,
    Standby,
    Primary { system_id: u64, timeline: u32 },
}

/// The decision: `Ok(None)` primary, `Ok(Some(address))` replica of that member.
pub fn decide(auto: &Auto, volume: Volume, answers: &[(Address, Answer)]) -> Result<Option<Address>, String> {
    let ours = match volume {
        Volume::Primary { system_id, .. } => Some(system_id),
        _ => None,
    };
    let writable = answers
        .iter()
        .filter_map(|(address, answer)| match answer {
            Answer::Identity(i) if !i.standby && ours.is_none_or(|id| id == i.system_id) => Some((address, i)),
            _ => None,
        })
        .max_by_key(|(_, i)| i.timeline);
    let default = auto.replica.primary();
    match (volume, writable) {
        (Volume::Primary { timeline, .. }, Some((address, peer))) if peer.timeline > timeline => {
            Ok(Some(address.clone()))
        }
        (Volume::Primary { timeline, .. }, Some((address, peer))) => Err(format!(
            "{address} is a writable primary on timeline {}, and this volume was a primary on timeline {timeline}: \
             two histories. Keep the one with the writes you need: make the other a replica (empty its volume, or \
             set REPLICATION_ROLE=replica and PRIMARY_HOST to rejoin with pg_rewind)",
            peer.timeline
        )),
        (_, Some((address, _))) => Ok(Some(address.clone())),
        (Volume::Primary { .. }, None) => Ok(None),
        // A standby follows the default primary; on -0, whose default is itself, the first peer.
        (Volume::Standby, None) if auto.ordinal == 0 => {
            Ok(Some(auto.replica.replication.peers.first().cloned().unwrap_or(default)))
        }
        (Volume::Standby, None) => Ok(Some(default)),
        (Volume::Empty, None) if auto.ordinal != 0 => Ok(Some(default)),
        (Volume::Empty, None) => match answers.iter().find(|(_, a)| matches!(a, Answer::Identity(_))) {
            Some((address, _)) => Err(format!(
                "this volume is empty and {address} is a member of an existing cluster with no writable primary \
                 answering: initialising here would found a second cluster. Promote a replica (pg-entrypoint \
                 promote); this pod then clones it at its next start"
            )),
            None => Ok(None),
        },
    }
}

/// The concrete role for this start: `Role::Primary` or `Role::Replica` (roles other than
/// auto are returned as they are). Asks each peer once; settles an unfinished bootstrap first.
pub fn resolve(ctx: &Context, sup: &mut Supervisor) -> Result<Role, StepError> {
    let Role::Auto(auto) = &ctx.config.role else { return Ok(ctx.config.role.clone()) };
    let volume = match datadir::settle(&ctx.config.pgdata)? {
        State::Cluster { standby: true } => Volume::Standby,
        State::Cluster { standby: false } => {
            let me = fence::local_identity(ctx, sup)?;
            Volume::Primary { system_id: me.system_id, timeline: me.timeline }
        }
        State::Foreign(entries) => return Err(datadir::refuse(&ctx.config.pgdata, &entries).into()),
        _ => Volume::Empty,
    };
    let replication = &auto.replica.replication;
    let answers = fence::ask_peers(sup, &Connector::questions(ctx.config, ctx.bin, &replication.user), replication)?;
    let role = match decide(auto, volume, &answers).map_err(StepError::AutoRefused)? {
        None => Role::Primary(auto.replica.replication.clone()),
        Some(primary) => {
            Role::Replica(Replica { primary_host: primary.host, primary_port: primary.port, ..auto.replica.clone() })
        }
    };
    let following = match &role {
        Role::Replica(r) => format!(" of {}", r.primary()),
        _ => String::new(),
    };
    tracing::info!(ordinal = auto.ordinal, volume = ?volume, "REPLICATION_ROLE=auto: {}{following}", role.name());
    Ok(role)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, MapInputs, Role};
    use crate::postgres::member::{Identity, Lsn};

    fn auto(hostname: &str) -> Auto {
        let vars = [
            ("POSTGRES_PASSWORD", "pw"),
            ("HA_MODE", "native"),
            ("REPLICATION_ROLE", "auto"),
            ("REPLICATION_PASSWORD", "r"),
            ("POD_SERVICE", "pg"),
            ("REPLICATION_PEERS", "pg-0.pg,pg-1.pg,pg-2.pg"),
        ];
        match Config::from_inputs(&MapInputs::with(&vars, hostname)).unwrap().role {
            Role::Auto(auto) => *auto,
            other => panic!("{other:?}"),
        }
    }

    fn peer(host: &str, standby: bool, timeline: u32) -> (Address, Answer) {
        let identity = Identity { system_id: 7, timeline, lsn: Lsn(100), standby, slot: None };
        (Address { host: host.into(), port: 5432 }, Answer::Identity(identity))
    }

    fn gone(host: &str) -> (Address, Answer) {
        (Address { host: host.into(), port: 5432 }, Answer::Unreachable("timeout expired".into()))
    }

    fn host(decision: Result<Option<Address>, String>) -> String {
        match decision {
            Ok(Some(address)) => address.host,
            Ok(None) => "primary".into(),
            Err(why) => format!("refused: {why}"),
        }
    }

    #[test]
    fn an_empty_volume_goes_by_the_ordinal_unless_a_primary_answers() {
        let (zero, two) = (auto("pg-0"), auto("pg-2"));
        assert_eq!(zero.replica.replication.peers.len(), 2, "its own entry is skipped");
        assert_eq!(host(decide(&zero, Volume::Empty, &[gone("pg-1.pg"), gone("pg-2.pg")])), "primary");
        assert_eq!(host(decide(&two, Volume::Empty, &[gone("pg-0.pg"), gone("pg-1.pg")])), "pg-0.pg");
        // After a failover pg-1 is the primary: an empty pg-0 or pg-2 clones it.
        let after = [peer("pg-1.pg", false, 2), peer("pg-2.pg", true, 2)];
        assert_eq!(host(decide(&zero, Volume::Empty, &after)), "pg-1.pg");
        assert_eq!(host(decide(&two, Volume::Empty, &[gone("pg-0.pg"), peer("pg-1.pg", false, 2)])), "pg-1.pg");
        // An empty pg-0 beside a cluster that has no primary now founds no second cluster.
        let why = host(decide(&zero, Volume::Empty, &[peer("pg-1.pg", true, 1), gone("pg-2.pg")]));
        assert!(why.starts_with("refused: this volume is empty and pg-1.pg:5432 is a member"), "{why}");
    }

    #[test]
    fn an_existing_volume_decides_over_the_ordinal() {
        let (zero, one) = (auto("pg-0"), auto("pg-1"));
        // A promoted pg-1 stays primary; the old primary pg-0 rejoins it (newer timeline).
        let promoted = Volume::Primary { system_id: 7, timeline: 2 };
        assert_eq!(host(decide(&one, promoted, &[gone("pg-0.pg"), peer("pg-2.pg", true, 2)])), "primary");
        let old = Volume::Primary { system_id: 7, timeline: 1 };
        assert_eq!(host(decide(&zero, old, &[peer("pg-1.pg", false, 2), peer("pg-2.pg", true, 2)])), "pg-1.pg");
        // A writable peer on our timeline or an older one is another history: refused.
        let why = host(decide(&one, promoted, &[peer("pg-0.pg", false, 1)]));
        assert!(why.starts_with("refused: pg-0.pg:5432 is a writable primary on timeline 1"), "{why}");
        // Another cluster's primary is not ours to follow.
        let mut foreign = peer("pg-1.pg", false, 5);
        if let Answer::Identity(i) = &mut foreign.1 {
            i.system_id = 8;
        }
        assert_eq!(host(decide(&zero, old, &[foreign])), "primary");
        // A standby follows the writable peer, else its default primary (on -0, the first peer).
        assert_eq!(host(decide(&zero, Volume::Standby, &[peer("pg-2.pg", false, 3)])), "pg-2.pg");
        assert_eq!(host(decide(&one, Volume::Standby, &[gone("pg-0.pg")])), "pg-0.pg");
        assert_eq!(host(decide(&zero, Volume::Standby, &[gone("pg-1.pg")])), "pg-1.pg");
    }
}
