//! Major-version upgrade at start (docs/upgrade.md). A cluster of an older
//! major, started by an image that carries that major's server binaries beside its own, is
//! upgraded in place by pg_upgrade when `POSTGRES_UPGRADE=auto`; without it the start is
//! refused before anything is touched.
//!
//! The work happens inside PGDATA (so hard links work when PGDATA is the volume's mount
//! point), in datadir's upgrade directory: the old cluster moves into its `old/`, initdb and
//! pg_upgrade build `new/`, and `new/` moves up into PGDATA. Each step's stage is recorded
//! before it begins, and a start after a kill resolves it first:
//! - moving-old, upgrading: the new cluster has never run as a server of ours, so the old one
//!   is intact (pg_upgrade's "Reverting to old cluster"): roll back, then start over;
//! - installing: pg_upgrade succeeded: finish moving the new cluster in;
//! - installed: the new cluster has run, and with hard links the old one is no longer safe
//!   to start: finish forward (collations), never back.
//!
//! A standby does not run pg_upgrade: its data of the older major waits in `old/` while it is
//! cloned again from its primary (once that runs the new major), and goes when the clone
//! has succeeded.

mod collation;

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::config::{Config, Replica, Role};
use crate::pgdata::datadir::{self, move_entries, DataDirError, State, UpgradeStage as Stage, UpgradeWork as Work};
use crate::pgdata::files;
use crate::pid1::supervise::{Kind, Supervisor};
use crate::postgres::member;
use crate::postgres::server::{major_of, Bin};
use crate::postgres::step::{self, Context, StepError};
use crate::postgres::tempserver::TempServer;

/// Where an image keeps another major's server binaries (Debian's and the official image's
/// layout).
pub fn old_bindir(major: u32) -> PathBuf {
    PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"))
}

/// The major of the cluster in `dir`, from its PG_VERSION ("15").
fn cluster_major(dir: &Path) -> Option<u32> {
    // Read before the privilege drop, in a directory the service account owns.
    datadir::read_small(dir, Path::new("PG_VERSION"), datadir::SMALL_FILE).ok()?.trim().parse().ok()
}

/// Step 2 (read only, before root touches PGDATA): a cluster of another major is refused
/// unless this start can upgrade it.
pub fn check_major(config: &Config, ours: u32) -> Result<(), String> {
    let pgdata = &config.pgdata;
    let Ok(State::Cluster { .. }) = datadir::inspect(pgdata) else { return Ok(()) };
    let Some(theirs) = cluster_major(pgdata) else { return Ok(()) };
    let volume = format!(
        "PGDATA {} holds a PostgreSQL {theirs} cluster and this image runs PostgreSQL {ours}",
        pgdata.display()
    );
    let untouched = "Nothing was changed";
    if theirs == ours {
        return Ok(());
    }
    if theirs > ours {
        return Err(format!(
            "{volume}: a cluster cannot be moved to an older major. Start the PostgreSQL {theirs} image. {untouched}"
        ));
    }
    let unsupported = match &config.role {
        Role::Patroni(_) => Some("HA_MODE=patroni"),
        Role::Auto(_) => Some("REPLICATION_ROLE=auto"),
        _ => None,
    };
    if let Some(mode) = unsupported {
        return Err(format!(
            "{volume}, and the upgrade at start is not offered with {mode}: upgrade it with the native roles \
             (docs/upgrade.md), or go back to the PostgreSQL {theirs} image. {untouched}"
        ));
    }
    if !config.upgrade.auto {
        return Err(format!(
            "{volume}: refusing to start it (postgres would refuse its files). To upgrade it in place, start an \
             image that also carries PostgreSQL {theirs} (pg-entrypoint:pg{ours}-upgrade) with POSTGRES_UPGRADE=auto \
             (docs/upgrade.md), or go back to the PostgreSQL {theirs} image. {untouched}"
        ));
    }
    let old = old_bindir(theirs);
    if Bin::locate(Some(&old), None).is_err() {
        return Err(format!(
            "POSTGRES_UPGRADE=auto: {volume}, and this image has no PostgreSQL {theirs} server in {}: use the \
             upgrade image, which carries both (pg-entrypoint:pg{ours}-upgrade). {untouched}",
            old.display()
        ));
    }
    Ok(())
}

/// After the privilege drop, with PGDATA locked, before the role steps: resolves what an
/// interrupted upgrade left, then upgrades (or sets a standby aside) when [`check_major`] allowed
/// it. True when a new cluster was installed by this start (its statistics are then rebuilt
/// once postgres runs: [`Analyzer`]).
pub fn settle(ctx: &Context, sup: &mut Supervisor) -> Result<bool, StepError> {
    let pgdata = &ctx.config.pgdata;
    let work = Work::of(pgdata);
    let mut installed = false;
    let stage = work.stage()?;
    if stage.is_some_and(Stage::unfinished) {
        remove_stale_locks(ctx)?;
    }
    match stage {
        Some(stage @ (Stage::MovingOld | Stage::Upgrading)) => {
            tracing::warn!(stage = stage.name(), "an upgrade did not finish; restoring the old cluster first");
            roll_back(pgdata, &work)?;
        }
        Some(Stage::Installing) => {
            tracing::warn!("an upgrade did not finish moving the new cluster into PGDATA; finishing it");
            install(pgdata, &work)?;
            finish(ctx, sup, &work)?;
            installed = true;
        }
        Some(Stage::Installed) => {
            tracing::warn!("the first start of an upgraded cluster did not finish; finishing it");
            finish(ctx, sup, &work)?;
            installed = true;
        }
        Some(Stage::Done | Stage::Recloning) | None => {}
    }
    let State::Cluster { standby } = datadir::settle(pgdata)? else { return Ok(installed) };
    // Again: a rolled-back cluster was not a cluster when step 2 checked.
    check_major(ctx.config, ctx.server_major).map_err(StepError::UpgradeRefused)?;
    let Some(theirs) = cluster_major(pgdata) else { return Ok(installed) };
    if theirs >= ctx.server_major {
        return Ok(installed);
    }
    remove_stale_locks(ctx)?;
    match (&ctx.config.role, standby) {
        (Role::Replica(replica), true) => set_aside_for_clone(ctx, sup, replica, &work, theirs).map(|()| installed),
        (Role::Replica(replica), false) => Err(StepError::Upgrade(format!(
            "PGDATA holds a PostgreSQL {theirs} primary (no standby.signal) and REPLICATION_ROLE=replica: its writes \
             cannot be rewound across majors. Upgrade it as the primary, or empty PGDATA to clone {}",
            replica.primary()
        ))),
        (_, true) => Err(StepError::Upgrade(format!(
            "PGDATA holds a PostgreSQL {theirs} standby and this node is not a replica; promote it on the \
             PostgreSQL {theirs} image first, or start it as a replica to clone it again"
        ))),
        (_, false) => upgrade(ctx, sup, &work, theirs).map(|()| true),
    }
}

/// A kill leaves lock files whose PIDs a new container may reuse, before the servers this
/// module starts (pg_upgrade's, the first start's); pg_upgrade also refuses an old cluster
/// with a postmaster.pid. (An ordinary start removes them in the role steps.)
fn remove_stale_locks(ctx: &Context) -> Result<(), StepError> {
    let pgdata = &ctx.config.pgdata;
    datadir::remove_stale_socket_locks(pgdata, &ctx.sockets.socket_dirs, ctx.sockets.port)?;
    datadir::remove_stale_pidfile(pgdata)?;
    Ok(())
}

/// After the role steps succeeded: a standby set aside for a clone is no longer needed.
pub fn after_clone(pgdata: &Path) -> Result<(), StepError> {
    let work = Work::of(pgdata);
    if work.stage()? == Some(Stage::Recloning) && matches!(datadir::inspect(pgdata)?, State::Cluster { .. }) {
        tracing::info!("the replica was cloned again on the new major; removing its old data");
        work.remove()?;
    }
    Ok(())
}

/// pg_upgrade from `old` to this image's major, then the new cluster's first start.
fn upgrade(ctx: &Context, sup: &mut Supervisor, work: &Work, old: u32) -> Result<(), StepError> {
    let config = ctx.config;
    let pgdata = &config.pgdata;
    let started = std::time::Instant::now();
    let old_bin = Bin::locate(Some(&old_bindir(old)), None).map_err(|e| StepError::Upgrade(e.to_string()))?;
    if let Some(stage) = work.stage()? {
        tracing::info!(stage = stage.name(), path = %work.root.display(), "removing what an earlier upgrade kept");
        work.remove()?;
    }
    tracing::info!(from = old, method = config.upgrade.method.flag(), "upgrading the cluster in PGDATA");
    shut_down_cleanly(sup, &old_bin, pgdata)?;
    let io = |action: &'static str| DataDirError::io(pgdata, action);
    work.set_stage(Stage::MovingOld)?;
    move_entries(pgdata, &work.old, datadir::UPGRADE_WORK).map_err(io("cannot move the old cluster aside"))?;
    work.set_stage(Stage::Upgrading)?;
    let attempt = initdb(ctx, sup, &old_bin, work)
        .and_then(|()| {
            carry_files(&work.old, &work.new).map_err(|e| io("cannot copy the configuration files")(e).into())
        })
        .and_then(|()| pg_upgrade(ctx, sup, &old_bin, work, true))
        .and_then(|()| pg_upgrade(ctx, sup, &old_bin, work, false));
    if let Err(e) = attempt {
        if let StepError::Stopped(_) = e {
            // pg_upgrade, stopped, may leave a server of its own running in old/ or new/:
            // those go with this container, and the next start rolls back.
            tracing::warn!("stopped during the upgrade; the next start restores the old cluster and starts over");
            return Err(e);
        }
        show_upgrade_reports(&work.new);
        roll_back(pgdata, work)?;
        return Err(match e {
            StepError::Failed { what, .. } => StepError::Upgrade(format!(
                "{what} failed (its reasons are above); the PostgreSQL {old} cluster is back in PGDATA, its data untouched. \
                 Fix what it names and start again, or start the PostgreSQL {old} image"
            )),
            other => other,
        });
    }
    work.set_stage(Stage::Installing)?;
    install(pgdata, work)?;
    finish(ctx, sup, work)?;
    tracing::info!(from = old, elapsed_ms = started.elapsed().as_millis() as u64, "upgrade finished");
    Ok(())
}

/// pg_upgrade wants a cleanly shut down old cluster: one that crashed runs its recovery in
/// single-user mode first (it exits at the end of its input, with a shutdown checkpoint).
fn shut_down_cleanly(sup: &mut Supervisor, old_bin: &Bin, pgdata: &Path) -> Result<(), StepError> {
    if control_field(sup, old_bin, pgdata, "Database cluster state")?.as_deref() == Some("shut down") {
        return Ok(());
    }
    tracing::info!("the old cluster was not shut down cleanly; running its crash recovery first");
    let mut cmd = step::tool(old_bin, "postgres");
    cmd.arg("--single").arg("-D").arg(pgdata).arg("template1").stdin(Stdio::null()).stdout(Stdio::null());
    step::run(sup, "crash recovery of the old cluster (postgres --single)", &mut cmd, Kind::Tool)
}

/// One line of pg_controldata's report.
fn control_field(sup: &mut Supervisor, bin: &Bin, dir: &Path, field: &str) -> Result<Option<String>, StepError> {
    let mut cmd = step::tool(bin, "pg_controldata");
    cmd.arg("-D").arg(dir).env("LC_ALL", "C");
    let out = step::run_captured(sup, "pg_controldata", &mut cmd, false)?;
    if out.code != 0 {
        return Err(StepError::Upgrade(format!("pg_controldata failed: {}", out.stderr.trim())));
    }
    Ok(out.stdout.lines().find_map(|l| Some(l.strip_prefix(field)?.trim_start_matches(':').trim().to_string())))
}

/// The new cluster, as the old one was made where pg_upgrade needs it: the same install user,
/// data checksums and WAL segment size (locale and encoding pg_upgrade carries itself).
fn initdb(ctx: &Context, sup: &mut Supervisor, old_bin: &Bin, work: &Work) -> Result<(), StepError> {
    let config = ctx.config;
    let checksums = control_field(sup, old_bin, &work.old, "Data page checksum version")?;
    let segment = control_field(sup, old_bin, &work.old, "Bytes per WAL segment")?;
    fs::remove_dir_all(&work.new)
        .or_else(datadir::ignore_not_found)
        .map_err(DataDirError::io(&config.pgdata, "cannot remove an unfinished new cluster"))?;
    let mut cmd = step::initdb(ctx, &work.new);
    if checksums.as_deref().is_some_and(|v| v != "0") {
        cmd.arg("--data-checksums");
    }
    if let Some(mb) = segment.and_then(|s| s.parse::<u64>().ok()).map(|bytes| bytes >> 20) {
        cmd.arg(format!("--wal-segsize={mb}"));
    }
    cmd.args(&config.initdb_args);
    step::run(sup, "initdb (the new cluster)", &mut cmd, Kind::Tool)
}

/// Entries of a data directory that belong to the cluster's own format or state, not to the
/// user's configuration: `base`, `global`, every `pg_*` but the `.conf` files (`pg_wal` may
/// be a link to POSTGRES_INITDB_WALDIR), and the state files.
fn cluster_entry(name: &str) -> bool {
    const STATE_FILES: [&str; 10] = [
        "PG_VERSION",
        "postmaster.pid",
        "postmaster.opts",
        "backup_label",
        "backup_label.old",
        "tablespace_map",
        "tablespace_map.old",
        "current_logfiles",
        "standby.signal",
        "recovery.signal",
    ];
    name == "base"
        || name == "global"
        || (name.starts_with("pg_") && !name.ends_with(".conf"))
        || STATE_FILES.contains(&name)
}

/// The user's files in the old data directory (postgresql.conf and its edits,
/// postgresql.auto.conf, pg_hba.conf, pg_ident.conf, included files, certificates, our
/// managed files) replace initdb's in the new one.
fn carry_files(old: &Path, new: &Path) -> io::Result<()> {
    for entry in fs::read_dir(old)? {
        let entry = entry?;
        let name = entry.file_name();
        if !cluster_entry(&name.to_string_lossy()) {
            copy_tree(&entry.path(), &new.join(&name))?;
        }
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    if meta.file_type().is_symlink() {
        let _ = fs::remove_file(to);
        std::os::unix::fs::symlink(fs::read_link(from)?, to)
    } else if meta.is_dir() {
        fs::create_dir_all(to)?;
        fs::set_permissions(to, meta.permissions())?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        fs::copy(from, to).map(drop)
    }
}

/// Where the servers of the upgrade listen (pg_upgrade's two, the new cluster's first start):
/// a 0700 directory of ours beside the real socket, so no client, probe or health check
/// reaches a server that is about to go away, or the old major.
fn private_sockets(ctx: &Context) -> Result<PathBuf, StepError> {
    let dir = ctx.config.layout.upgrade_sockets();
    let err = |action: &'static str| DataDirError::io(&dir, action);
    fs::create_dir(&dir)
        .or_else(|e| if e.kind() == io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) })
        .map_err(err("cannot create"))?;
    // The socket directory is sticky: only we (or root) could have put something else there.
    let meta = fs::symlink_metadata(&dir).map_err(err("cannot inspect"))?;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(err("is not a directory of ours")(io::Error::from(io::ErrorKind::AlreadyExists)).into());
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(err("cannot chmod 0700"))?;
    // A kill leaves the lock of a server that listened here; its PID may be reused.
    datadir::remove_stale_socket_locks(&ctx.config.pgdata, std::slice::from_ref(&dir), ctx.sockets.port)?;
    Ok(dir)
}

/// pg_upgrade itself, or its `--check`. Both servers it starts listen only on our private
/// socket directory, trust local connections through a pg_hba.conf of their own (the user's
/// may ask for passwords), and run without TLS or archiving.
fn pg_upgrade(ctx: &Context, sup: &mut Supervisor, old_bin: &Bin, work: &Work, check: bool) -> Result<(), StepError> {
    let config = ctx.config;
    let sockets = private_sockets(ctx)?;
    let hba = work.root.join("pg_hba.conf");
    fs::write(&hba, "local all all trust\n")
        .map_err(DataDirError::io(&config.pgdata, "cannot write pg_upgrade's pg_hba.conf"))?;
    let options = format!("-c hba_file='{}' -c ssl=off -c archive_mode=off", hba.display());
    let port = ctx.sockets.port.to_string();
    let mut cmd = step::tool(ctx.bin, "pg_upgrade");
    cmd.current_dir(&work.root)
        .arg("--old-bindir")
        .arg(old_bin.dir())
        .arg("--new-bindir")
        .arg(ctx.bin.dir())
        .arg("--old-datadir")
        .arg(&work.old)
        .arg("--new-datadir")
        .arg(&work.new)
        .arg("--username")
        .arg(&config.superuser)
        .arg("--socketdir")
        .arg(&sockets)
        .args(["--old-port", &port, "--new-port", &port, "--old-options", &options, "--new-options", &options])
        .arg(config.upgrade.method.flag());
    if check {
        cmd.arg("--check");
    }
    step::run(sup, if check { "pg_upgrade --check" } else { "pg_upgrade" }, &mut cmd, Kind::Tool)
}

/// pg_upgrade's reports of what it refused (lists of objects, the servers' log) are in the
/// new data directory, which the roll-back removes: their ends go to the log first.
fn show_upgrade_reports(new: &Path) {
    let mut files = Vec::new();
    let mut dirs = vec![new.join("pg_upgrade_output.d")];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "txt") || path.ends_with("log/pg_upgrade_server.log") {
                files.push(path);
            }
        }
    }
    files.sort();
    for path in files {
        let text = fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n  ");
        if !tail.is_empty() {
            tracing::error!("pg_upgrade report {}:\n  {tail}", path.display());
        }
    }
}

/// Puts the old cluster back as it was before the upgrade began. With `--link`, pg_upgrade
/// renamed its pg_control to pg_control.old when it started linking; as the new cluster never
/// ran, renaming it back makes the old cluster usable again.
fn roll_back(pgdata: &Path, work: &Work) -> Result<(), StepError> {
    let io = |action: &'static str| DataDirError::io(pgdata, action);
    for dir in [&work.old, &work.new] {
        if let Some(pid) = datadir::live_postmaster(dir) {
            return Err(StepError::Upgrade(format!(
                "a postgres started by pg_upgrade (pid {pid}) still runs in {}; stop it, then start again",
                dir.display()
            )));
        }
    }
    let control = work.old.join("global/pg_control");
    if !control.exists() && control.with_file_name("pg_control.old").exists() {
        fs::rename(control.with_file_name("pg_control.old"), &control).map_err(io("cannot restore pg_control"))?;
    }
    if work.new.exists() {
        fs::remove_dir_all(&work.new).map_err(io("cannot remove the unfinished new cluster"))?;
    }
    if work.old.exists() {
        move_entries(&work.old, pgdata, "").map_err(io("cannot move the old cluster back"))?;
    }
    work.remove()?;
    tracing::info!("the old cluster is back in PGDATA");
    Ok(())
}

/// Moves the upgraded cluster from `new/` into PGDATA (`PG_VERSION` last).
fn install(pgdata: &Path, work: &Work) -> Result<(), StepError> {
    if work.new.exists() {
        move_entries(&work.new, pgdata, "")
            .map_err(DataDirError::io(pgdata, "cannot move the new cluster into place"))?;
        fs::remove_dir(&work.new).map_err(DataDirError::io(pgdata, "cannot remove the empty new directory"))?;
    }
    work.set_stage(Stage::Installed)?;
    Ok(())
}

/// The new cluster's first start, on a temporary server: extensions pg_upgrade found out of
/// date are updated, indexes on collations whose version changed are rebuilt and the
/// versions refreshed. Then the upgrade is done; the old cluster is kept or removed.
fn finish(ctx: &Context, sup: &mut Supervisor, work: &Work) -> Result<(), StepError> {
    let config = ctx.config;
    let sockets = private_sockets(ctx)?;
    let server = TempServer::start(ctx, sup, &config.pgdata, &["ready"], std::slice::from_ref(&sockets))?;
    let result = update_extensions(ctx, sup, &server, work)
        .and_then(|()| collation::refresh(ctx, &sockets, config.upgrade.reindex).map_err(StepError::Upgrade));
    let stopped = server.stop(sup);
    result.and(stopped)?;
    let _ = fs::remove_dir_all(&sockets);
    work.set_stage(Stage::Done)?;
    let old = cluster_major(&work.old).map_or("old".to_string(), |m| format!("PostgreSQL {m}"));
    if config.upgrade.keep_old {
        tracing::info!(
            path = %work.old.display(),
            "the {old} cluster is kept (unusable with --link once the new one ran; pg_basebackup skips it); remove \
             it, or set POSTGRES_UPGRADE_KEEP_OLD=false, once the upgrade is known good"
        );
    } else {
        work.remove()?;
        tracing::info!("the {old} cluster was removed (POSTGRES_UPGRADE_KEEP_OLD=false)");
    }
    Ok(())
}

/// pg_upgrade writes update_extensions.sql when an extension has a newer version in the new
/// major (docs/upgrade.md, step 4).
fn update_extensions(ctx: &Context, sup: &mut Supervisor, server: &TempServer, work: &Work) -> Result<(), StepError> {
    let script = work.root.join("update_extensions.sql");
    if !script.exists() {
        return Ok(());
    }
    tracing::info!("updating the extensions pg_upgrade found out of date");
    let mut psql = step::tool(ctx.bin, "psql");
    server.client_env(&mut psql, &ctx.config.superuser, "template1");
    psql.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"]).arg(&script).stdout(Stdio::null());
    step::run(sup, "psql (update_extensions.sql)", &mut psql, Kind::Tool)?;
    fs::remove_file(&script).map_err(DataDirError::io(&ctx.config.pgdata, "cannot remove update_extensions.sql"))?;
    Ok(())
}

/// A standby of the older major: clone it again once its primary runs the new one, its old
/// data set aside meanwhile ([`after_clone`] removes it).
fn set_aside_for_clone(
    ctx: &Context,
    sup: &mut Supervisor,
    replica: &Replica,
    work: &Work,
    theirs: u32,
) -> Result<(), StepError> {
    let ours = ctx.server_major;
    let primary = replica.primary();
    let connector = member::Connector::questions(ctx.config, ctx.bin, &replica.replication.user);
    files::write_passfile(connector.passfile(), &replica.replication)?;
    let mut psql = connector.replication_psql(&primary, &["SHOW server_version_num".into()]);
    let out = step::run_captured(sup, "psql (asking the primary its version)", &mut psql, false)?;
    let primary_major = major_of(&out.stdout);
    if primary_major != Some(ours) {
        let what = match primary_major {
            Some(m) => format!("runs PostgreSQL {m}"),
            None => format!("did not answer ({})", out.stderr.lines().next().unwrap_or("no message").trim()),
        };
        return Err(StepError::Upgrade(format!(
            "this replica's data is PostgreSQL {theirs} and it would be cloned again from its primary {primary} on \
             PostgreSQL {ours}, but the primary {what}. Upgrade the primary first (docs/upgrade.md); nothing was changed here"
        )));
    }
    if work.stage()?.is_some() {
        work.remove()?;
    }
    tracing::info!(from = theirs, "the primary runs PostgreSQL {ours}: cloning this replica again, its old data set aside until the clone succeeds");
    // Moving out is rolled back if interrupted; only a complete move counts as set aside.
    work.set_stage(Stage::MovingOld)?;
    move_entries(&ctx.config.pgdata, &work.old, datadir::UPGRADE_WORK)
        .map_err(DataDirError::io(&ctx.config.pgdata, "cannot set the old data aside"))?;
    work.set_stage(Stage::Recloning)?;
    Ok(())
}

/// `vacuumdb --all --analyze-in-stages` once the upgraded server is up: pg_upgrade does not
/// carry the planner's statistics. Driven from the supervision loop's tick; never blocks it.
pub struct Analyzer {
    bin: Bin,
    pgdata: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    user: String,
    state: AnalyzerState,
}

enum AnalyzerState {
    Waiting,
    Running(nix::unistd::Pid),
    Finished,
}

impl Analyzer {
    pub fn new(ctx: &Context) -> Analyzer {
        Analyzer {
            bin: ctx.bin.clone(),
            pgdata: ctx.config.pgdata.clone(),
            socket_dir: ctx.sockets.socket_dir.clone(),
            port: ctx.sockets.port,
            user: ctx.config.superuser.clone(),
            state: AnalyzerState::Waiting,
        }
    }

    pub fn tick(&mut self, sup: &mut Supervisor) {
        match self.state {
            AnalyzerState::Waiting => {
                if crate::postgres::local::pidfile_status(&self.pgdata.join("postmaster.pid")).as_deref()
                    != Some("ready")
                {
                    return;
                }
                let mut cmd = step::tool(&self.bin, "vacuumdb");
                cmd.args(["--all", "--analyze-in-stages", "--host"]).arg(&self.socket_dir).args([
                    "--port",
                    &self.port.to_string(),
                    "--username",
                    &self.user,
                ]);
                tracing::info!("rebuilding the planner statistics after the upgrade (vacuumdb --analyze-in-stages)");
                self.state = match sup.spawn(&mut cmd) {
                    Ok(child) => AnalyzerState::Running(nix::unistd::Pid::from_raw(child.id() as i32)),
                    Err(e) => {
                        tracing::error!("cannot run vacuumdb: {e}; run `vacuumdb --all --analyze-in-stages` yourself");
                        AnalyzerState::Finished
                    }
                };
            }
            AnalyzerState::Running(pid) => {
                match sup.collect(pid) {
                    Ok(None) => return,
                    Ok(Some(0)) => tracing::info!("planner statistics rebuilt"),
                    Ok(Some(code)) => tracing::error!(
                        code,
                        "vacuumdb failed; run `vacuumdb --all --analyze-in-stages` yourself (queries may be slow until then)"
                    ),
                    Err(e) => tracing::error!("lost track of vacuumdb: {e}"),
                }
                self.state = AnalyzerState::Finished;
            }
            AnalyzerState::Finished => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::cluster_entry;

    #[test]
    fn the_users_files_are_carried_and_the_clusters_own_are_not() {
        for ours in
            ["base", "global", "pg_wal", "pg_xact", "pg_tblspc", "PG_VERSION", "postmaster.opts", "backup_label"]
        {
            assert!(cluster_entry(ours), "{ours}");
        }
        for users in [
            "postgresql.conf",
            "postgresql.auto.conf",
            "pg_hba.conf",
            "pg_ident.conf",
            "pg-entrypoint.conf",
            "conf.d",
            "server.crt",
        ] {
            assert!(!cluster_entry(users), "{users}");
        }
    }
}
