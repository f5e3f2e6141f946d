//! What is in PGDATA, and the few safe moves we make on it.
//!
//! A bootstrap (initdb + bootstrap SQL, or a clone) is built in a staging directory inside
//! PGDATA (the cluster in its `cluster/`, beside private files such as the clone's failure
//! count) and moved into place only when complete, `PG_VERSION` last. A new cluster moves in
//! with an "initialising" marker, first of all its files, that stays while the init scripts
//! run against PGDATA itself (they see the cluster at its real path, as in the official
//! image) and goes last. So PGDATA is either a complete cluster, or holds only our staging
//! directory or our marker (an interrupted bootstrap, thrown away and redone), or a complete
//! staged cluster whose move was interrupted (finished). Anything else we did not make is
//! refused, never deleted.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

mod upgrade_work;
pub use upgrade_work::{move_entries, Stage as UpgradeStage, Work as UpgradeWork, UPGRADE_WORK};

/// A bootstrap in progress. Never started as a server outside of bootstrap.
pub const STAGING: &str = ".pg-entrypoint-bootstrap";
/// A finished bootstrap being moved into PGDATA.
pub const STAGED: &str = ".pg-entrypoint-staged";
/// In PGDATA from the move of a new cluster until its init scripts have all succeeded.
pub const INITIALISING: &str = ".pg-entrypoint-initialising";
/// Fresh ext4 volumes have it; it is not data.
const LOST_AND_FOUND: &str = "lost+found";
/// In the staging directory: the standby around it is being discarded for a new clone.
const DISCARD_MARK: &str = "discarding-standby";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Missing, empty, or only `lost+found`.
    Empty,
    /// A cluster; `standby` when it has `standby.signal`.
    Cluster { standby: bool },
    /// Our staging directory, or a new cluster marked initialising: a bootstrap that did not
    /// finish.
    Interrupted,
    /// A finished bootstrap whose move into place did not finish.
    Staged,
    /// A standby being emptied for a new clone (REPLICA_RECLONE) whose emptying did not finish.
    Discarding,
    /// A major-version upgrade that did not finish (`crate::lifecycle::upgrade` resumes or rolls it back).
    Upgrading,
    /// Something we did not make: these entries.
    Foreign(Vec<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "PGDATA {pgdata:?} is not empty and is not a PostgreSQL cluster (it holds {entries}); \
         refusing to touch it. Point PGDATA at an empty directory or an existing cluster \
         (with a volume mounted at the data directory, use a subdirectory of the mount)"
    )]
    Foreign { pgdata: PathBuf, entries: String },
    #[error(
        "PGDATA {pgdata:?} is {what}; refusing to touch it. Set PGDATA to a directory (the real path, \
         not a link: root never follows a link in PGDATA)"
    )]
    NotADirectory { pgdata: PathBuf, what: &'static str },
    #[error(
        "PGDATA {pgdata:?} is in use by another pg-entrypoint (a second container on the same volume?); \
         refusing to touch it. Give each container its own volume"
    )]
    InUse { pgdata: PathBuf },
    #[error("PGDATA {pgdata:?}: {action}: {source}")]
    Io { pgdata: PathBuf, action: String, source: io::Error },
}

impl DataDirError {
    pub fn io(pgdata: &Path, action: impl Into<String>) -> impl FnOnce(io::Error) -> DataDirError + '_ {
        let action = action.into();
        move |source| DataDirError::Io { pgdata: pgdata.to_path_buf(), action, source }
    }
}

/// Before anything is created, chowned or chmodded: PGDATA is missing, or a directory (not a
/// link to one) that is empty, ours or a cluster. Anything else is refused untouched.
pub fn check_before_touching(pgdata: &Path) -> Result<(), DataDirError> {
    match fs::symlink_metadata(pgdata) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(DataDirError::io(pgdata, "cannot inspect")(e)),
        Ok(m) if m.file_type().is_symlink() => {
            return Err(DataDirError::NotADirectory { pgdata: pgdata.into(), what: "a symbolic link" })
        }
        Ok(m) if !m.is_dir() => {
            return Err(DataDirError::NotADirectory { pgdata: pgdata.into(), what: "not a directory" })
        }
        Ok(_) => {}
    }
    match inspect(pgdata)? {
        State::Foreign(entries) => Err(refuse(pgdata, &entries)),
        _ => Ok(()),
    }
}

/// Reads PGDATA's top level and classifies it.
pub fn inspect(pgdata: &Path) -> Result<State, DataDirError> {
    let entries = match fs::read_dir(pgdata) {
        Ok(rd) => rd
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<io::Result<Vec<_>>>()
            .map_err(DataDirError::io(pgdata, "cannot list"))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(DataDirError::io(pgdata, "cannot list")(e)),
    };
    let upgrade = if entries.iter().any(|e| e == UPGRADE_WORK) { UpgradeWork::of(pgdata).stage()? } else { None };
    Ok(classify(
        &entries,
        pgdata.join("global/pg_control").is_file(),
        pgdata.join("standby.signal").exists(),
        pgdata.join(STAGING).join(DISCARD_MARK).exists(),
        upgrade,
    ))
}

/// The decision of [`inspect`], from the top-level names and four facts about them. A
/// finished upgrade's work directory (the old cluster kept) is not part of the cluster.
pub fn classify(
    entries: &[String],
    has_pg_control: bool,
    has_standby_signal: bool,
    discarding: bool,
    upgrade: Option<UpgradeStage>,
) -> State {
    let mut names: Vec<&str> =
        entries.iter().map(String::as_str).filter(|n| *n != LOST_AND_FOUND && *n != UPGRADE_WORK).collect();
    names.sort_unstable();
    if discarding {
        State::Discarding
    } else if upgrade.is_some_and(UpgradeStage::unfinished) {
        State::Upgrading
    } else if names.contains(&STAGED) {
        State::Staged
    } else if names.contains(&INITIALISING) {
        State::Interrupted
    } else if names.contains(&"PG_VERSION") && has_pg_control {
        State::Cluster { standby: has_standby_signal }
    } else if names.is_empty() {
        State::Empty
    } else if names == [STAGING] {
        State::Interrupted
    } else {
        State::Foreign(names.iter().map(|n| n.to_string()).collect())
    }
}

pub fn refuse(pgdata: &Path, entries: &[String]) -> DataDirError {
    let mut shown: Vec<String> = entries.iter().take(5).map(|e| format!("{e:?}")).collect();
    if entries.len() > 5 {
        shown.push(format!("and {} more", entries.len() - 5));
    }
    DataDirError::Foreign { pgdata: pgdata.to_path_buf(), entries: shown.join(", ") }
}

/// A bootstrap in progress: `root` is ours alone; `cluster` (inside it, not yet created) is
/// where initdb or pg_basebackup builds the cluster.
pub struct Staging {
    pub root: PathBuf,
    pub cluster: PathBuf,
}

/// Removes the leftovers of an interrupted bootstrap (only our own staging directory) and
/// returns a fresh, empty one.
pub fn fresh_staging(pgdata: &Path) -> Result<Staging, DataDirError> {
    if pgdata.join(INITIALISING).exists() {
        // A server of that bootstrap still running (its entrypoint died under another init)
        // must not have its directory emptied under it.
        if live_postmaster(pgdata).is_some() {
            return Err(DataDirError::io(
                pgdata,
                "a postgres of the unfinished bootstrap still runs in it; stop it first",
            )(io::Error::from(io::ErrorKind::ResourceBusy)));
        }
        tracing::warn!(pgdata = %pgdata.display(), "removing a new cluster whose init scripts did not finish; it will be redone");
        empty_external_wal(&pgdata.join("pg_wal"))
            .map_err(DataDirError::io(pgdata, "cannot empty the WAL directory of the interrupted bootstrap"))?;
        discard_all(pgdata)?;
    }
    let root = pgdata.join(STAGING);
    if root.exists() {
        tracing::warn!(path = %root.display(), "removing an interrupted bootstrap; it will be redone");
        empty_external_wal(&root.join("cluster/pg_wal"))
            .map_err(DataDirError::io(pgdata, "cannot empty the WAL directory of the interrupted bootstrap"))?;
        fs::remove_dir_all(&root).map_err(DataDirError::io(pgdata, "cannot remove the interrupted bootstrap"))?;
    }
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&root)
        .map_err(DataDirError::io(pgdata, "cannot create the staging directory"))?;
    Ok(Staging { cluster: root.join("cluster"), root })
}

/// With POSTGRES_INITDB_WALDIR, the staged cluster's pg_wal is a link to that directory.
/// initdb accepted it only empty, so what it holds now is the interrupted bootstrap's WAL:
/// emptied, or the next initdb would refuse it. The directory itself stays.
fn empty_external_wal(pg_wal: &Path) -> io::Result<()> {
    let Ok(target) = fs::read_link(pg_wal) else { return Ok(()) };
    for entry in fs::read_dir(&target)? {
        let path = entry?.path();
        if fs::symlink_metadata(&path)?.is_dir() {
            fs::remove_dir_all(&path)?;
        } else {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// What PGDATA is once a move into place or a discard of ours that was interrupted is finished.
pub fn settle(pgdata: &Path) -> Result<State, DataDirError> {
    let mut state = inspect(pgdata)?;
    if state == State::Staged {
        tracing::info!("finishing the move of a completed bootstrap into PGDATA");
        finish_staged(pgdata)?;
        state = inspect(pgdata)?;
    }
    if state == State::Discarding {
        tracing::info!("finishing the discard of a standby that is being cloned again");
        finish_discard(pgdata)?;
        state = inspect(pgdata)?;
    }
    Ok(state)
}

/// Moves a finished bootstrap from the staging directory into PGDATA; with `initialising`,
/// marked so until [`finish_initialising`].
pub fn install_staging(pgdata: &Path, staging: Staging, initialising: bool) -> Result<(), DataDirError> {
    let err = |action: &str| DataDirError::io(pgdata, action.to_string());
    if initialising {
        fs::write(staging.cluster.join(INITIALISING), b"").map_err(err("cannot mark the new cluster initialising"))?;
    }
    fs::rename(&staging.cluster, pgdata.join(STAGED)).map_err(err("cannot mark the bootstrap finished"))?;
    sync_dir(pgdata).map_err(err("cannot sync"))?;
    finish_staged(pgdata)
}

/// Moves every entry of the staged cluster up into PGDATA, the initialising marker first and
/// `PG_VERSION` last, so PGDATA only looks like a finished cluster once all of it is there.
/// Safe to repeat after an interruption.
pub fn finish_staged(pgdata: &Path) -> Result<(), DataDirError> {
    let err = |action: &str| DataDirError::io(pgdata, action.to_string());
    let leftover = pgdata.join(STAGING);
    if leftover.exists() {
        fs::remove_dir_all(&leftover).map_err(err("cannot remove the staging directory"))?;
    }
    let staged = pgdata.join(STAGED);
    let mut names: Vec<_> = fs::read_dir(&staged)
        .map_err(err("cannot list the staged cluster"))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()
        .map_err(err("cannot list the staged cluster"))?;
    names.sort_by_key(|n| (n != INITIALISING, n == "PG_VERSION"));
    for name in names {
        fs::rename(staged.join(&name), pgdata.join(&name)).map_err(err("cannot move the staged cluster into place"))?;
    }
    sync_dir(pgdata).map_err(err("cannot sync"))?;
    fs::remove_dir(&staged).map_err(err("cannot remove the empty staging directory"))?;
    sync_dir(pgdata).map_err(err("cannot sync"))
}

/// The init scripts succeeded: the new cluster is finished.
pub fn finish_initialising(pgdata: &Path) -> Result<(), DataDirError> {
    fs::remove_file(pgdata.join(INITIALISING))
        .or_else(ignore_not_found)
        .and_then(|()| sync_dir(pgdata))
        .map_err(DataDirError::io(pgdata, "cannot mark the new cluster finished"))
}

/// A bootstrap was under way and did not finish: the next start redoes it.
pub fn bootstrap_unfinished(pgdata: &Path) -> bool {
    pgdata.join(STAGING).exists() || pgdata.join(INITIALISING).exists()
}

/// Empties a standby's PGDATA before it is cloned again (REPLICA_RECLONE). Only ever done to
/// a data directory classified as a standby cluster: a copy of its primary.
pub fn empty_standby(pgdata: &Path) -> Result<(), DataDirError> {
    if inspect(pgdata)? != (State::Cluster { standby: true }) {
        return Err(DataDirError::io(pgdata, "refusing to empty a data directory that is not a standby")(
            io::Error::from(io::ErrorKind::InvalidInput),
        ));
    }
    discard_all(pgdata)
}

/// Empties PGDATA (a standby, or a bootstrap that did not finish). Resumable: a marker in the
/// staging directory says a discard is under way, entries are moved into it, then it is
/// removed; a start that finds the marker finishes the job ([`State::Discarding`]).
pub fn discard_all(pgdata: &Path) -> Result<(), DataDirError> {
    let root = pgdata.join(STAGING);
    fs::create_dir_all(&root).map_err(DataDirError::io(pgdata, "cannot create the staging directory"))?;
    fs::write(root.join(DISCARD_MARK), b"").map_err(DataDirError::io(pgdata, "cannot mark the discard"))?;
    sync_dir(&root).and_then(|()| sync_dir(pgdata)).map_err(DataDirError::io(pgdata, "cannot sync"))?;
    finish_discard(pgdata)
}

/// Moves every entry but the staging directory (and lost+found) into it, then removes it.
pub fn finish_discard(pgdata: &Path) -> Result<(), DataDirError> {
    let err = |action: &str| DataDirError::io(pgdata, action.to_string());
    let discard = pgdata.join(STAGING).join("discarded");
    move_entries(pgdata, &discard, STAGING).map_err(err("cannot move the entries aside"))?;
    fs::remove_dir_all(pgdata.join(STAGING)).map_err(err("cannot remove the discarded standby"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Removes `postmaster.pid` left by a postgres that no longer runs. postgres itself refuses
/// to start when the recorded PID is alive, and in a new container that PID often belongs to
/// an unrelated process. The file is kept when a postgres process works in this PGDATA.
pub fn remove_stale_pidfile(pgdata: &Path) -> Result<(), DataDirError> {
    remove_stale_lock(&pgdata.join("postmaster.pid"), pgdata, |pid| postgres_owns(pid, pgdata))
}

/// The same for the lock files of our Unix sockets (`.s.PGSQL.<port>.lock`): a socket
/// directory that outlived its server (`docker restart` keeps the container's files) holds
/// the old PID. Kept while any postgres process has that PID (it may be another cluster's).
pub fn remove_stale_socket_locks(pgdata: &Path, socket_dirs: &[PathBuf], port: u16) -> Result<(), DataDirError> {
    for dir in socket_dirs {
        remove_stale_lock(&dir.join(format!(".s.PGSQL.{port}.lock")), pgdata, is_postgres)?;
    }
    Ok(())
}

fn remove_stale_lock(lock: &Path, pgdata: &Path, live: impl Fn(i32) -> bool) -> Result<(), DataDirError> {
    let (Some(dir), Some(name)) = (lock.parent(), lock.file_name()) else { return Ok(()) };
    let Ok(text) = read_small(dir, Path::new(name), SMALL_FILE) else { return Ok(()) };
    let pid = lock_pid(&text);
    if pid.is_some_and(live) {
        return Ok(()); // let postgres report the conflict in its own words
    }
    tracing::info!(pid = ?pid, file = %lock.display(), "removing a stale lock file");
    fs::remove_file(lock)
        .or_else(ignore_not_found)
        .map_err(DataDirError::io(pgdata, format!("cannot remove {}", lock.display())))
}

/// Earlier versions kept the replication password file inside PGDATA, from where clones and
/// rewinds copied it; it is now kept outside ([`crate::config::Layout::passfile`]).
pub fn remove_legacy_passfile(pgdata: &Path) -> Result<(), DataDirError> {
    fs::remove_file(pgdata.join(crate::config::layout::LEGACY_PASSFILE))
        .or_else(ignore_not_found)
        .map_err(DataDirError::io(pgdata, "cannot remove the old password file"))
}

/// Held for the entrypoint's whole life (the lock goes with the process): a second
/// entrypoint on the same PGDATA (two containers on one volume) stops before it changes
/// anything there.
pub fn lock(pgdata: &Path) -> Result<nix::fcntl::Flock<fs::File>, DataDirError> {
    let dir = fs::File::open(pgdata).map_err(DataDirError::io(pgdata, "cannot open"))?;
    nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| match errno {
        nix::errno::Errno::EWOULDBLOCK => DataDirError::InUse { pgdata: pgdata.into() },
        e => DataDirError::io(pgdata, "cannot lock")(e.into()),
    })
}

/// Reads a small file at `relative` under `dir`, a directory the service account may control,
/// safely as root: no component of `relative` is followed when it is a link (a link to a
/// root-only file would bring that file into our messages), only a regular file is read, it is
/// opened without blocking (a FIFO would hang the start beyond any signal), and a file larger
/// than `max` bytes is refused (a link to `/dev/zero`).
pub fn read_small(dir: &Path, relative: &Path, max: u64) -> io::Result<String> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::Mode;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut current = OwnedFd::from(fs::File::open(dir)?);
    let parts: Vec<_> = relative.components().collect();
    for (i, part) in parts.iter().enumerate() {
        let kind = if i + 1 == parts.len() { OFlag::O_NONBLOCK } else { OFlag::O_DIRECTORY };
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | kind;
        let fd = openat(Some(current.as_raw_fd()), part.as_os_str(), flags, Mode::empty())?;
        // SAFETY: openat just returned this descriptor; nothing else owns or closes it.
        current = unsafe { OwnedFd::from_raw_fd(fd) };
    }
    crate::config::read_regular(fs::File::from(current), max)
}

/// postmaster.pid and PG_VERSION hold a few short lines.
pub const SMALL_FILE: u64 = 4096;

/// The postmaster `postmaster.pid` names, when it is a live postgres working in `pgdata`.
pub fn live_postmaster(pgdata: &Path) -> Option<i32> {
    let pid = lock_pid(&read_small(pgdata, Path::new("postmaster.pid"), SMALL_FILE).ok()?)?;
    postgres_owns(pid, pgdata).then_some(pid)
}

/// The PID a postgres lock file (`postmaster.pid`, `.s.PGSQL.<port>.lock`) starts with.
fn lock_pid(text: &str) -> Option<i32> {
    text.lines().next()?.trim().parse::<i32>().ok().filter(|p| *p > 0)
}

/// True when `pid` is a live postgres process (a zombie has no command line).
fn is_postgres(pid: i32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split(|b| *b == 0).next().is_some_and(|a0| String::from_utf8_lossy(a0).contains("postgres")))
        .unwrap_or(false)
}

/// True when `pid` is a postgres process whose working directory is `pgdata`.
fn postgres_owns(pid: i32, pgdata: &Path) -> bool {
    let cwd = fs::read_link(format!("/proc/{pid}/cwd")).ok();
    let ours = pgdata.canonicalize().ok();
    is_postgres(pid) && cwd.is_some() && cwd == ours
}

pub fn ignore_not_found(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// The cluster's system identifier: the first field of `global/pg_control` (in the
/// machine's byte order, as every PostgreSQL version writes it). `None` without a cluster.
pub fn system_identifier(pgdata: &Path) -> Option<u64> {
    Some(u64::from_ne_bytes(control_head(pgdata)?[..8].try_into().ok()?))
}

/// Whether the cluster's last server stopped with a shutdown checkpoint as a primary (state
/// `shut down`, 1 in pg_control): its WAL ends there, and a switchover candidate that has
/// it can be promoted with nothing for this one to rewind.
pub fn shut_down_cleanly(pgdata: &Path) -> bool {
    control_head(pgdata).is_some_and(|head| head[16..20] == 1u32.to_ne_bytes())
}

/// The first bytes of `global/pg_control`, whose layout is the same from PostgreSQL 11 on:
/// the system identifier, the control and catalog versions, the state, the time and the
/// checkpoint's location, then the copy of the checkpoint record (its redo location, then
/// its timeline, at byte 48).
fn control_head(pgdata: &Path) -> Option<[u8; 52]> {
    let mut bytes = [0u8; 52];
    let mut file = fs::File::open(pgdata.join("global/pg_control")).ok()?;
    io::Read::read_exact(&mut file, &mut bytes).ok()?;
    Some(bytes)
}

/// The newest timeline this data directory knows: its latest checkpoint's (or
/// restartpoint's), or a newer one whose history file a standby has already fetched into
/// `pg_wal` (a restartpoint on the new timeline may come minutes after the switch).
pub fn latest_timeline(pgdata: &Path) -> Option<u32> {
    let histories = fs::read_dir(pgdata.join("pg_wal")).ok()?.filter_map(|entry| {
        let name = entry.ok()?.file_name().into_string().ok()?;
        let hex = name.strip_suffix(".history").filter(|h| h.len() == 8)?;
        u32::from_str_radix(hex, 16).ok()
    });
    let checkpoint = u32::from_ne_bytes(control_head(pgdata)?[48..52].try_into().ok()?);
    histories.chain([checkpoint]).max()
}

/// Writes a file so that a reader (or a crash) sees the old or the new content, never half.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.pg-entrypoint-tmp",
        path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
    ));
    // A fresh file, never through a link planted at the temporary name.
    fs::remove_file(&tmp).or_else(ignore_not_found)?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.write_all(contents)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn classification() {
        assert_eq!(classify(&[], false, false, false, None), State::Empty);
        assert_eq!(classify(&names(&["lost+found"]), false, false, false, None), State::Empty);
        assert_eq!(
            classify(&names(&["PG_VERSION", "base", "global"]), true, false, false, None),
            State::Cluster { standby: false }
        );
        assert_eq!(
            classify(&names(&["PG_VERSION", "global"]), true, true, false, None),
            State::Cluster { standby: true }
        );
        assert_eq!(classify(&names(&[STAGING, "lost+found"]), false, false, false, None), State::Interrupted);
        // A new cluster whose init scripts did not finish: complete-looking, yet unfinished.
        assert_eq!(
            classify(&names(&["PG_VERSION", "base", "global", INITIALISING]), true, false, false, None),
            State::Interrupted
        );
        assert_eq!(classify(&names(&["base", STAGED]), false, false, false, None), State::Staged);
        assert_eq!(classify(&names(&["PG_VERSION", STAGED]), true, false, false, None), State::Staged);
        // PG_VERSION without pg_control is not a cluster we can start: refuse, never delete.
        assert_eq!(
            classify(&names(&["PG_VERSION"]), false, false, false, None),
            State::Foreign(names(&["PG_VERSION"]))
        );
        assert_eq!(
            classify(&names(&["notes.txt", STAGING]), false, false, false, None),
            State::Foreign(names(&[STAGING, "notes.txt"]))
        );
        assert_eq!(classify(&names(&[".hidden"]), false, false, false, None), State::Foreign(names(&[".hidden"])));
    }

    #[test]
    fn a_discard_under_way_wins_over_everything() {
        assert_eq!(classify(&names(&["PG_VERSION", "base", STAGING]), true, true, true, None), State::Discarding);
    }

    #[test]
    fn an_upgrade_directory_is_an_unfinished_upgrade_or_else_not_part_of_the_cluster() {
        let cluster = names(&["PG_VERSION", "base", "global", UPGRADE_WORK]);
        assert_eq!(classify(&cluster, true, false, false, Some(UpgradeStage::Done)), State::Cluster { standby: false });
        assert_eq!(classify(&cluster, true, false, false, Some(UpgradeStage::Installed)), State::Upgrading);
        let only_work = names(&[UPGRADE_WORK]);
        for stage in [UpgradeStage::MovingOld, UpgradeStage::Upgrading, UpgradeStage::Installing] {
            assert_eq!(classify(&only_work, false, false, false, Some(stage)), State::Upgrading);
        }
        assert_eq!(classify(&only_work, false, false, false, Some(UpgradeStage::Recloning)), State::Empty);
        assert_eq!(
            classify(&names(&[UPGRADE_WORK, STAGING]), false, false, false, Some(UpgradeStage::Recloning)),
            State::Interrupted
        );
    }

    #[test]
    fn refusal_lists_a_few_entries() {
        let many: Vec<String> = (0..8).map(|i| format!("f{i}")).collect();
        let msg = refuse(Path::new("/d"), &many).to_string();
        assert!(msg.contains("\"f0\", \"f1\", \"f2\", \"f3\", \"f4\", and 3 more"), "{msg}");
    }

    #[test]
    fn staged_cluster_moves_into_place_and_can_resume() {
        let dir = std::env::temp_dir().join(format!("pgep-unit-staged-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let staging = fresh_staging(&dir.join("data")).err().map(|_| ());
        assert!(staging.is_some(), "PGDATA must exist first");
        fs::create_dir_all(dir.join("data")).unwrap();
        let pgdata = dir.join("data");
        let staging = fresh_staging(&pgdata).unwrap();
        fs::create_dir_all(staging.cluster.join("global")).unwrap();
        for f in ["PG_VERSION", "postgresql.conf", "global/pg_control"] {
            fs::write(staging.cluster.join(f), f).unwrap();
        }
        fs::write(staging.root.join("pgpass"), "x").unwrap();
        assert_eq!(inspect(&pgdata).unwrap(), State::Interrupted);
        // Interrupted after the rename and one move: the next start finishes the move.
        fs::write(staging.cluster.join(INITIALISING), "").unwrap();
        fs::rename(&staging.cluster, pgdata.join(STAGED)).unwrap();
        fs::rename(pgdata.join(STAGED).join("postgresql.conf"), pgdata.join("postgresql.conf")).unwrap();
        assert_eq!(inspect(&pgdata).unwrap(), State::Staged);
        finish_staged(&pgdata).unwrap();
        // Moved in, but its init scripts have not run: still unfinished, and thrown away.
        assert_eq!(inspect(&pgdata).unwrap(), State::Interrupted);
        assert_eq!(fs::read_to_string(pgdata.join("PG_VERSION")).unwrap(), "PG_VERSION");
        assert!(!pgdata.join(STAGING).exists(), "the staging directory is left over");
        let again = fresh_staging(&pgdata).unwrap();
        assert_eq!(fs::read_dir(&pgdata).unwrap().count(), 1, "only the new staging directory");
        assert!(again.root.is_dir() && !pgdata.join("PG_VERSION").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stale_pidfile_is_removed_unless_postgres_owns_it() {
        let dir = std::env::temp_dir().join(format!("pgep-unit-pid-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        // Our own PID is alive but not a postgres working in `dir`: stale.
        fs::write(dir.join("postmaster.pid"), format!("{}\n{}\n", std::process::id(), dir.display())).unwrap();
        remove_stale_pidfile(&dir).unwrap();
        assert!(!dir.join("postmaster.pid").exists());
        remove_stale_pidfile(&dir).unwrap(); // no file: nothing to do
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn atomic_write_sets_mode() {
        let dir = std::env::temp_dir().join(format!("pgep-unit-write-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pass");
        write_atomic(&f, b"secret", 0o600).unwrap();
        assert_eq!(fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read(&f).unwrap(), b"secret");
        fs::remove_dir_all(&dir).unwrap();
    }
}
