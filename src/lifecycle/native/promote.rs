//! Promotion, always onto a new timeline (what pg_rewind and the other replicas need to tell
//! its history from the old primary's; simply deleting standby.signal would not switch).
//!
//! - At start: a standby data directory whose configured role is now primary or standalone.
//! - At run time: `pg-entrypoint promote`. It leaves [`PROMOTED_MARKER`] in PGDATA so that a
//!   restart with the environment still saying `replica` refuses to start instead of
//!   rewinding away the writes made since (set the role to primary, and the marker goes).

use std::fs;
use std::process::Stdio;
use std::time::Duration;

use crate::config::layout::{PROMOTED_MARKER, ROLE_RECORD};
use crate::config::{Config, ProcessInputs, Role};
use crate::lifecycle::native::fence::{self, Me};
use crate::pgdata::datadir::DataDirError;
use crate::pgdata::files;
use crate::pgdata::role_record::{self, Recorded};
use crate::pid1::supervise::{Kind, Supervisor};
use crate::postgres::local::{describe, Local};
use crate::postgres::member::{self, Lsn};
use crate::postgres::step::{self, Context, StepError};
use crate::postgres::tempserver::TempServer;

/// Before converging an existing cluster: reconcile a run-time promotion with the role.
pub fn check_runtime_promotion(ctx: &Context, standby: bool) -> Result<(), StepError> {
    let marker = ctx.config.pgdata.join(PROMOTED_MARKER);
    if !marker.exists() {
        return Ok(());
    }
    match (&ctx.config.role, standby) {
        (Role::Replica(r), false) => Err(StepError::PromotedButReplica { host: r.primary_host.clone() }),
        // The environment now agrees (primary/standalone), or the promotion never happened.
        _ => {
            fs::remove_file(&marker)
                .map_err(DataDirError::io(&ctx.config.pgdata, "cannot remove the promotion marker"))?;
            Ok(())
        }
    }
}

/// Creates the marker without following a link (this command often runs as root, in a
/// directory the postgres user controls), owned like PGDATA so that clones can read it.
fn write_marker(path: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let created =
        fs::OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(nix::libc::O_NOFOLLOW).open(path);
    let mut file = match created {
        Ok(file) => file,
        // Left by an earlier attempt that timed out: keep it (it is ours if it is no link).
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if fs::symlink_metadata(path)?.file_type().is_symlink() {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "it is a symbolic link"));
            }
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let owner = fs::metadata(path.parent().unwrap_or(std::path::Path::new(".")))?;
    nix::unistd::fchown(
        std::os::fd::AsRawFd::as_raw_fd(&file),
        Some(nix::unistd::Uid::from_raw(owner.uid())),
        Some(nix::unistd::Gid::from_raw(owner.gid())),
    )?;
    file.write_all(b"promoted by pg-entrypoint promote\n")
}

/// What this standby has: its cluster, timeline and WAL (received or replayed, the larger).
const STANDBY_POSITION_SQL: &str = "SELECT (SELECT system_identifier FROM pg_control_system())::text,
       greatest((SELECT timeline_id FROM pg_control_checkpoint()),
                (SELECT min_recovery_end_timeline FROM pg_control_recovery()),
                (SELECT received_tli FROM pg_stat_wal_receiver))::int,
       greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::text";

/// `pg-entrypoint promote`: promotes the running standby and waits until it accepts writes.
/// Unless `force`, it first asks the configured primary and the peers, and refuses while the
/// primary still accepts writes or another standby has more WAL than this one. Returns the
/// new timeline, and whether the role is `auto` (decided by the data at the next start).
pub fn promote_running(force: bool) -> Result<(i32, bool), String> {
    // The configuration (and any secret file only root may read) first, then no more root.
    let config = Config::from_inputs(&ProcessInputs);
    let auto = config.as_ref().is_ok_and(|c| matches!(c.role, Role::Auto(_)));
    let local = Local::open().map_err(|e| e.to_string())?;
    let mut client = local.connect(Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let config = config.map(|c| local.running_config(&mut client, c));
    let in_recovery: bool = client.query_one("SELECT pg_is_in_recovery()", &[]).map_err(|e| describe(&e))?.get(0);
    if !in_recovery {
        return Err("this server is not a standby (it already accepts writes); nothing to promote".into());
    }
    let row = client.query_one(STANDBY_POSITION_SQL, &[]).map_err(|e| describe(&e))?;
    let me = Me {
        system_id: row.get::<_, String>(0).parse().map_err(|_| "unreadable system identifier".to_string())?,
        timeline: row.get::<_, i32>(1) as u32,
        lsn: row.get::<_, Option<String>>(2).as_deref().and_then(Lsn::parse),
    };
    // The number of other members, and whether --force overrode a failed check.
    let members = match (&config, force) {
        (Ok(config), _) if config.follower().is_some() => Some(check_before_promoting(config, &me, force)?),
        (Ok(_), false) => {
            return Err("the environment does not configure this node as a replica (HA_MODE=native, \
                        REPLICATION_ROLE=replica); use --force to promote without asking the other members"
                .into())
        }
        (Err(e), false) => return Err(format!("{e}\n(use --force to promote without asking the other members)")),
        (_, true) => {
            eprintln!("promote: ERROR: --force: no replica configuration to find the other members by; not asked");
            None
        }
    };
    let marker = local.path(PROMOTED_MARKER);
    write_marker(&marker).map_err(|e| format!("cannot write {marker:?}: {e}"))?;
    // A switchover's record that this node follows another would otherwise hand the role
    // straight back: it says primary from now on.
    if role_record::read(&local.pgdata).is_ok_and(|r| r.is_some()) {
        role_record::write(&local.pgdata, &Recorded::Primary)
            .map_err(|e| format!("cannot write {:?}: {e}", local.path(ROLE_RECORD)))?;
    }
    let promoted =
        client.query_one("SELECT pg_promote(true, 60)", &[]).map_err(|e| describe(&e)).map(|r| r.get::<_, bool>(0));
    match promoted {
        Ok(true) => {}
        // The request stands and postgres may still finish it: keep the marker, so that a
        // restart with the environment saying replica cannot rewind the writes away.
        Ok(false) => return Err("promotion requested but not finished within 60 s; it may still complete".into()),
        Err(e) => {
            fs::remove_file(&marker).ok();
            return Err(e);
        }
    }
    // A checkpoint now writes the new timeline into the control file, which PostgreSQL 15's
    // pg_rewind reads when the old primary rejoins (native::replica::checkpoint_source).
    if let Err(e) = client.batch_execute("CHECKPOINT") {
        println!("promote: warning: CHECKPOINT after the promotion failed: {}", describe(&e));
    }
    let row = client
        .query_one(
            "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int,
                    current_setting('synchronous_standby_names'),
                    (SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum'))",
            &[],
        )
        .map_err(|e| describe(&e))?;
    let (timeline, sync_names, sync_standbys): (i32, String, i64) = (row.get(0), row.get(1), row.get(2));
    match (members, config) {
        // The promotion is complete once a majority is on the new timeline: its commits are
        // acknowledged from then on (render::majority_sync), and an old primary that comes
        // back finds the new timeline on any majority it asks.
        (Some((others, true)), Ok(_)) if others > 0 => eprintln!(
            "promote: ERROR: --force: not waiting for a majority of the members to follow this node; its commits \
             wait until one does"
        ),
        (Some((others, false)), Ok(config)) if others > 0 => wait_for_majority(&config, &me, timeline as u32, others)?,
        _ => {
            let needed = crate::postgres::health::required_standbys(&sync_names);
            if !sync_names.is_empty() && sync_standbys < needed {
                // The other replicas still follow the old primary: until one follows this one,
                // every commit here waits (synchronous replication keeps its promise).
                println!(
                    "promote: warning: commits on this primary wait for {needed} synchronous standby(s) \
                     (synchronous_standby_names = {sync_names}) and none follows it yet: repoint a replica at it \
                     now (PRIMARY_HOST, restart)"
                );
            }
        }
    }
    Ok((timeline, auto))
}

/// Asks the configured primary and the peers; `Err` when promoting would make a second
/// primary or lose acknowledged commits, or when no majority answered to tell. With `force`
/// what could not be checked is printed as an error and the promotion goes ahead. Returns
/// how many other members there are (0: no REPLICATION_PEERS, nothing fenced), and whether
/// `force` overrode a check.
fn check_before_promoting(config: &Config, me: &Me, force: bool) -> Result<(usize, bool), String> {
    let Some(replica) = config.follower() else { return Ok((0, false)) };
    let others = config.other_members().len();
    let checked = member::ask_members_now(config, replica).map_err(|e| e.to_string()).and_then(|answers| {
        for (address, answer) in &answers {
            println!("promote: {}", fence::describe_answer(address, answer));
        }
        fence::refusal(me, &answers).and_then(|()| match fence::standing(me, &answers, others) {
            fence::Standing::Majority => Ok(()),
            fence::Standing::Short(why) => Err(format!("a promotion needs a majority: {why}")),
        })
    });
    match checked {
        Ok(()) => Ok((others, false)),
        Err(why) if force => {
            eprintln!("promote: ERROR: --force: promoting although {why}");
            Ok((others, true))
        }
        Err(why) => Err(format!("refusing to promote: {why} (--force promotes anyway)")),
    }
}

/// How long `promote` waits for a majority to follow the new primary.
const MAJORITY_WAIT: Duration = Duration::from_secs(60);

/// Waits until a majority of the members (this one included) is on `timeline`: the other
/// replicas follow a newer primary by themselves once theirs is gone (slot_keeper).
fn wait_for_majority(config: &Config, me: &Me, timeline: u32, others: usize) -> Result<(), String> {
    let Some(replica) = config.follower() else { return Ok(()) };
    let needed = crate::config::majority(others + 1);
    let started = std::time::Instant::now();
    loop {
        let answers = member::ask_members_now(config, replica).map_err(|e| e.to_string())?;
        let following: Vec<String> = answers
            .iter()
            .filter(|(_, a)| matches!(a, member::Answer::Identity(i) if i.system_id == me.system_id && i.standby && i.timeline >= timeline))
            .map(|(address, _)| address.to_string())
            .collect();
        if 1 + following.len() >= needed {
            println!(
                "promote: {} of the {} members are on timeline {timeline} (this one and {}): commits here are \
                 acknowledged once a majority has them",
                1 + following.len(),
                others + 1,
                following.join(", ")
            );
            return Ok(());
        }
        if started.elapsed() >= MAJORITY_WAIT {
            return Err(format!(
                "promoted to timeline {timeline}, but after {} s only {} of the {} members are on it and a majority \
                 is {needed}: commits here wait until a majority follows this node. Check that the other replicas \
                 reach it (their logs, `pg-entrypoint status` there), or repoint them (PRIMARY_HOST, restart)",
                MAJORITY_WAIT.as_secs(),
                1 + following.len(),
                others + 1
            ));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

pub fn promote_standby(ctx: &Context, sup: &mut Supervisor) -> Result<(), StepError> {
    let pgdata = &ctx.config.pgdata;
    tracing::warn!(
        role = ctx.config.role.name(),
        "PGDATA is a standby but the configured role is {}: promoting it",
        ctx.config.role.name()
    );
    // The new role's configuration: no primary_conninfo, so it does not follow anyone.
    files::write_config(ctx.config, ctx.settings, pgdata)
        .map_err(DataDirError::io(pgdata, "cannot write the configuration"))?;
    let server = TempServer::start(ctx, sup, pgdata, &["standby", "ready"], &[pgdata.to_path_buf()])?;
    if let Some(replication) = ctx.config.replication().filter(|r| !r.peers.is_empty()) {
        // Compared with the peers once all the WAL this standby received is replayed.
        let fenced = replayed_wal(ctx, sup, &server)
            .and_then(|lsn| fence::before_writable(ctx, sup, replication, Some(lsn)))
            .and_then(|writable| match writable {
                fence::Writable::Now => Ok(()),
                fence::Writable::AfterMajority { why, .. } => {
                    Err(StepError::Fenced(format!("a promotion needs a majority: {why}")))
                }
            });
        if let Err(e) = fenced {
            server.stop(sup)?;
            return Err(e);
        }
    }
    let mut cmd = step::tool(ctx.bin, "pg_ctl");
    cmd.arg("promote").arg("-D").arg(pgdata).args(["-w", "-t", "120"]).stdout(Stdio::null());
    let promoted = step::run(sup, "pg_ctl promote", &mut cmd, Kind::Tool);
    server.stop(sup)?;
    promoted?;
    tracing::warn!("promoted: this server is no longer a standby");
    Ok(())
}

/// The temporary standby's replay position once it stops moving (it replays what is in
/// pg_wal, then waits for more that never comes: it follows no one now).
fn replayed_wal(ctx: &Context, sup: &mut Supervisor, server: &TempServer) -> Result<Lsn, StepError> {
    let mut last: Option<Lsn> = None;
    // Four reads a second for at most 30 s; replaying local WAL takes far less.
    for _ in 0..120 {
        let mut psql = step::tool(ctx.bin, "psql");
        // template1: there on every cluster (a "postgres" database may have been dropped).
        server.client_env(&mut psql, &ctx.config.superuser, "template1");
        psql.args(["-X", "-A", "-t", "-c", "SELECT pg_last_wal_replay_lsn()"]);
        let out = step::run_captured(sup, "psql (reading the replay position)", &mut psql, false)?;
        let Some(lsn) = Lsn::parse(&out.stdout).filter(|_| out.code == 0) else {
            return Err(StepError::Failed { what: format!("psql ({})", out.stderr.trim()), code: out.code });
        };
        if last == Some(lsn) {
            return Ok(lsn);
        }
        last = Some(lsn);
        step::pause(sup, Duration::from_millis(250), "waiting for replay")?;
    }
    Ok(last.unwrap_or(Lsn(0)))
}
