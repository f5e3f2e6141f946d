//! The work directory of a major-version upgrade inside PGDATA, and the stage it records.
//!
//! Its name starts with `pgsql_tmp`, which pg_basebackup skips at every level: the old
//! cluster kept there after an upgrade is never copied to a replica. postgres leaves it alone
//! (it cleans only `base/pgsql_tmp`). The stage file is replaced atomically before each step,
//! so a start after a kill knows what was under way (`crate::lifecycle::upgrade` says what each means).

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::{ignore_not_found, sync_dir, write_atomic, DataDirError};

pub const UPGRADE_WORK: &str = "pgsql_tmp.pg-entrypoint-upgrade";
const STAGE_FILE: &str = "stage";
/// The longest stage name is a few bytes.
const MAX_STAGE_FILE: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The old cluster's entries are moving from PGDATA into `old/`.
    MovingOld,
    /// initdb and pg_upgrade build `new/` from `old/`.
    Upgrading,
    /// pg_upgrade succeeded; `new/`'s entries are moving into PGDATA.
    Installing,
    /// The new cluster is in PGDATA; its first start (collations) has not finished.
    Installed,
    /// Finished; `old/` is the previous cluster, kept for the user.
    Done,
    /// A replica's data of an older major waits in `old/` while the replica is cloned again.
    Recloning,
}

impl Stage {
    const ALL: [(Stage, &'static str); 6] = [
        (Stage::MovingOld, "moving-old"),
        (Stage::Upgrading, "upgrading"),
        (Stage::Installing, "installing"),
        (Stage::Installed, "installed"),
        (Stage::Done, "done"),
        (Stage::Recloning, "recloning"),
    ];

    pub fn name(self) -> &'static str {
        Stage::ALL.iter().find(|(s, _)| *s == self).map_or("", |(_, n)| n)
    }

    fn parse(text: &str) -> Option<Stage> {
        Stage::ALL.iter().find(|(_, n)| *n == text.trim()).map(|(s, _)| *s)
    }

    /// PGDATA is not a cluster of either version until the stage is resolved.
    pub fn unfinished(self) -> bool {
        !matches!(self, Stage::Done | Stage::Recloning)
    }
}

/// The work directory of `pgdata` and its parts.
pub struct Work {
    pgdata: PathBuf,
    pub root: PathBuf,
    pub old: PathBuf,
    pub new: PathBuf,
    stage_file: PathBuf,
}

impl Work {
    pub fn of(pgdata: &Path) -> Work {
        let root = pgdata.join(UPGRADE_WORK);
        Work {
            pgdata: pgdata.to_path_buf(),
            old: root.join("old"),
            new: root.join("new"),
            stage_file: root.join(STAGE_FILE),
            root,
        }
    }

    /// The recorded stage; `None` without a work directory. A stage file we cannot read or
    /// do not know is an error: guessing could throw away a cluster. Read as root before the
    /// privilege drop, in a directory the service account owns: see [`super::read_small`]; its
    /// content is never echoed (it could be anything the link pointed at).
    pub fn stage(&self) -> Result<Option<Stage>, DataDirError> {
        let relative = Path::new(UPGRADE_WORK).join(STAGE_FILE);
        match super::read_small(&self.pgdata, &relative, MAX_STAGE_FILE) {
            Ok(text) => Stage::parse(&text).map(Some).ok_or_else(|| {
                DataDirError::io(
                    &self.root,
                    format!("{} does not name a known upgrade stage", self.stage_file.display()),
                )(io::Error::from(io::ErrorKind::InvalidData))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !self.root.exists() => Ok(None),
            // The directory without its stage: made, killed before the first stage was written.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Some(Stage::MovingOld)),
            Err(e) => Err(DataDirError::io(&self.root, "cannot read the upgrade stage")(e)),
        }
    }

    /// Records `stage` durably before the step it names begins.
    pub fn set_stage(&self, stage: Stage) -> Result<(), DataDirError> {
        let err = DataDirError::io(&self.root, "cannot record the upgrade stage");
        private_dir(&self.root)
            .and_then(|()| write_atomic(&self.stage_file, stage.name().as_bytes(), 0o600))
            .and_then(|()| sync_dir(&self.root))
            .and_then(|()| self.root.parent().map_or(Ok(()), sync_dir))
            .map_err(err)
    }

    /// Removes the whole work directory (the old cluster with it).
    pub fn remove(&self) -> Result<(), DataDirError> {
        fs::remove_dir_all(&self.root)
            .or_else(ignore_not_found)
            .and_then(|()| self.root.parent().map_or(Ok(()), sync_dir))
            .map_err(DataDirError::io(&self.root, "cannot remove the upgrade directory"))
    }
}

/// Moves every entry of `from` into `to` (made if missing), except `keep` and `lost+found`,
/// with `PG_VERSION` last: `to` looks like a cluster only once all of it is there. Safe to
/// repeat after an interruption.
pub fn move_entries(from: &Path, to: &Path, keep: &str) -> io::Result<()> {
    private_dir(to)?;
    let mut names: Vec<_> = fs::read_dir(from)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<Vec<_>>>()?
        .into_iter()
        .filter(|n| n != keep && n != super::LOST_AND_FOUND)
        .collect();
    names.sort_by_key(|n| n == "PG_VERSION");
    for name in names {
        fs::rename(from.join(&name), to.join(&name))?;
    }
    sync_dir(from)?;
    sync_dir(to)
}

/// postgres starts a data directory only if it is 0700 (or 0750); ours are 0700 from the start.
fn private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pgep-upgrade-work-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn stages_round_trip_and_an_unknown_one_is_an_error() {
        let pgdata = tmp("stages");
        let work = Work::of(&pgdata);
        assert_eq!(work.stage().unwrap(), None);
        fs::create_dir(&work.root).unwrap();
        assert_eq!(work.stage().unwrap(), Some(Stage::MovingOld), "a directory without its stage file");
        for (stage, _) in Stage::ALL {
            work.set_stage(stage).unwrap();
            assert_eq!(work.stage().unwrap(), Some(stage));
        }
        fs::write(pgdata.join(UPGRADE_WORK).join("stage"), "sideways").unwrap();
        let err = work.stage().unwrap_err().to_string();
        assert!(err.contains("does not name a known upgrade stage") && !err.contains("sideways"), "{err}");
        work.remove().unwrap();
        assert_eq!(work.stage().unwrap(), None);
        fs::remove_dir_all(&pgdata).unwrap();
    }

    #[test]
    fn entries_move_except_the_kept_one_and_a_repeat_finishes_the_job() {
        let pgdata = tmp("move");
        for name in ["PG_VERSION", "base", "global", "lost+found", UPGRADE_WORK] {
            fs::create_dir_all(pgdata.join(name)).unwrap();
        }
        let old = pgdata.join(UPGRADE_WORK).join("old");
        // As if interrupted after "base" moved.
        fs::create_dir_all(&old).unwrap();
        fs::rename(pgdata.join("base"), old.join("base")).unwrap();
        move_entries(&pgdata, &old, UPGRADE_WORK).unwrap();
        let mut left: Vec<_> = fs::read_dir(&pgdata).unwrap().map(|e| e.unwrap().file_name()).collect();
        left.sort();
        assert_eq!(left, ["lost+found", UPGRADE_WORK]);
        let mut moved: Vec<_> = fs::read_dir(&old).unwrap().map(|e| e.unwrap().file_name()).collect();
        moved.sort();
        assert_eq!(moved, ["PG_VERSION", "base", "global"]);
        fs::remove_dir_all(&pgdata).unwrap();
    }
}
