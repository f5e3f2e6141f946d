//! Started as root: prepare the directories postgres needs, then become the `postgres` user
//! with plain syscalls (no su, no gosu, no shell). A static binary has no NSS, so the account
//! is read from `/etc/passwd` and `/etc/group` directly.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use std::ffi::{CString, OsStr};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;

use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{fchown, fchownat, setgid, setgroups, setuid, Gid, Uid};

pub const SERVICE_USER: &str = "postgres";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    pub home: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("no user {0:?} in /etc/passwd: the image must have the PostgreSQL service account")]
    NoAccount(String),
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path:?}: cannot {action}: {source}")]
    Prepare { path: PathBuf, action: &'static str, source: io::Error },
    #[error(
        "PGDATA {pgdata:?} is not reachable by the user {user:?}: it cannot enter {blocking:?} \
         (mode {mode:o}, owner uid {owner}). Make that directory traversable (chmod o+x) or \
         choose a PGDATA under a reachable directory"
    )]
    Unreachable { pgdata: PathBuf, user: String, blocking: PathBuf, mode: u32, owner: u32 },
    #[error(
        "{link:?} (on the way to {path:?}) is a symbolic link in a directory the user {user:?} can change; \
         root does not follow it. Use the real path"
    )]
    LinkInParent { path: PathBuf, link: PathBuf, user: String },
    #[error("cannot switch to the user {user:?}: {source}")]
    Switch { user: String, source: nix::Error },
}

/// Finds `name` in passwd-format and group-format text.
pub fn lookup(name: &str, passwd: &str, group: &str) -> Option<Account> {
    let fields: Vec<&str> =
        passwd.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| f.first() == Some(&name))?;
    let [_, _, uid, gid, _, home, ..] = fields[..] else { return None };
    let (uid, gid) = (uid.parse().ok()?, gid.parse().ok()?);
    let mut groups: Vec<u32> = group
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let member = f.get(3)?.split(',').any(|m| m == name);
            if member {
                f.get(2)?.parse().ok()
            } else {
                None
            }
        })
        .collect();
    groups.retain(|g| *g != gid);
    groups.insert(0, gid);
    Some(Account { name: name.to_string(), uid, gid, groups, home: PathBuf::from(home) })
}

pub fn service_account() -> Result<Account, PrivilegeError> {
    let read =
        |path: &str| fs::read_to_string(path).map_err(|source| PrivilegeError::Read { path: path.into(), source });
    lookup(SERVICE_USER, &read("/etc/passwd")?, &read("/etc/group").unwrap_or_default())
        .ok_or_else(|| PrivilegeError::NoAccount(SERVICE_USER.into()))
}

fn prepare_err<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(io::Error) -> PrivilegeError + 'a {
    move |source| PrivilegeError::Prepare { path: path.to_path_buf(), action, source }
}

/// As root: make PGDATA (0700), the socket directories and the WAL directory exist and belong
/// to `account`. Ownership is fixed only where it is wrong: when PGDATA itself already belongs
/// to the account, its contents are not walked (no recursive chown of a big cluster at boot).
pub fn prepare_as_root(pgdata: &Path, extra_dirs: &[PathBuf], account: &Account) -> Result<(), PrivilegeError> {
    for dir in std::iter::once(pgdata).chain(extra_dirs.iter().map(PathBuf::as_path)) {
        no_link_the_account_controls(dir, account)?;
    }
    make_owned_dir(pgdata, account, 0o700)?;
    // From here on PGDATA is an open descriptor: a directory swapped for a link cannot
    // redirect the mode change or the ownership walk.
    let dir = Dir::open(pgdata, WALK_FLAGS, Mode::empty()).map_err(|e| prepare_err(pgdata, "open")(e.into()))?;
    let meta = fstat(dir.as_raw_fd()).map_err(|e| prepare_err(pgdata, "inspect")(e.into()))?;
    let mode = meta.st_mode & 0o777;
    if mode != 0o700 && mode != 0o750 {
        fchmod(dir.as_raw_fd(), Mode::from_bits_truncate(0o700))
            .map_err(|e| prepare_err(pgdata, "chmod 0700")(e.into()))?;
    }
    if meta.st_uid != account.uid {
        tracing::info!(path = %pgdata.display(), "PGDATA belongs to another user; fixing ownership where it is wrong");
        let (uid, gid) = (Some(Uid::from_raw(account.uid)), Some(Gid::from_raw(account.gid)));
        fchown(dir.as_raw_fd(), uid, gid).map_err(|e| prepare_err(pgdata, "chown")(e.into()))?;
        fix_ownership(dir, pgdata, account)?;
    }
    for dir in extra_dirs {
        make_owned_dir(dir, account, 0o2775)?;
    }
    check_reachable(pgdata, account)
}

/// As root: an empty directory of another owner (a volume Docker or Kubernetes mounted
/// root-owned) is given to `account`, 0750; made when missing. A directory that holds
/// anything keeps its owner: its files are someone's.
pub fn own_empty_dir(dir: &Path, account: &Account) -> Result<(), PrivilegeError> {
    no_link_the_account_controls(dir, account)?;
    make_owned_dir(dir, account, 0o750)?;
    let opened = Dir::open(dir, WALK_FLAGS, Mode::empty()).map_err(|e| prepare_err(dir, "open")(e.into()))?;
    let meta = fstat(opened.as_raw_fd()).map_err(|e| prepare_err(dir, "inspect")(e.into()))?;
    let empty = fs::read_dir(dir).map_err(prepare_err(dir, "list"))?.next().is_none();
    if meta.st_uid != account.uid && empty {
        fchown(opened.as_raw_fd(), Some(Uid::from_raw(account.uid)), Some(Gid::from_raw(account.gid)))
            .map_err(|e| prepare_err(dir, "chown")(e.into()))?;
        fchmod(opened.as_raw_fd(), Mode::from_bits_truncate(0o750)).map_err(|e| prepare_err(dir, "chmod")(e.into()))?;
    }
    Ok(())
}

/// Refuses a path with a symbolic link among its parents that the service account could have
/// planted: a link not owned by root, in a directory the account can change (its own, or
/// writable by its group or everyone). Such a link (say `/var/lib/postgresql/18 -> /etc` on a
/// volume the account owns) would lead root's mkdir, chmod and chown elsewhere. A link owned
/// by root was made by root (the account cannot make one), e.g. the official PostgreSQL 18
/// image's `/var/lib/postgresql/data -> .`, or `/var/run -> /run`: followed.
fn no_link_the_account_controls(path: &Path, account: &Account) -> Result<(), PrivilegeError> {
    let mut ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
    ancestors.reverse();
    for dir in ancestors.iter().skip(1) {
        let Ok(meta) = fs::symlink_metadata(dir) else { break }; // missing: we create the rest
        if !meta.file_type().is_symlink() || meta.uid() == 0 {
            continue;
        }
        let holder = fs::symlink_metadata(dir.parent().unwrap_or(Path::new("/")))
            .map_err(prepare_err(dir, "inspect the directory holding"))?;
        let writable_by_account = holder.uid() == account.uid
            || holder.mode() & 0o002 != 0
            || (holder.mode() & 0o020 != 0 && (holder.gid() == account.gid || account.groups.contains(&holder.gid())));
        if writable_by_account {
            return Err(PrivilegeError::LinkInParent {
                path: path.into(),
                link: dir.to_path_buf(),
                user: account.name.clone(),
            });
        }
    }
    Ok(())
}

/// Creates `dir` (and missing parents, root's, 0755) if needed; gives `account` and `mode`
/// only to a directory we created. Every step goes through descriptors: each new directory is
/// made with `mkdirat` in its open parent and opened again without following a link before
/// its mode and owner change, so a process of the account that swaps it for a link (in a
/// parent it owns) makes the start fail instead of redirecting root's chmod and chown.
fn make_owned_dir(dir: &Path, account: &Account, mode: u32) -> Result<(), PrivilegeError> {
    if dir.exists() {
        return Ok(());
    }
    let mut missing: Vec<&Path> = dir.ancestors().take_while(|a| !a.exists()).collect();
    missing.reverse();
    let Some(existing) = missing.first().and_then(|first| first.parent()) else {
        return Err(prepare_err(dir, "create")(io::Error::from(io::ErrorKind::NotFound)));
    };
    // The existing ancestors were checked for links the account could plant.
    let mut parent = Dir::open(existing, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| prepare_err(existing, "open")(e.into()))?;
    for (i, path) in missing.iter().enumerate() {
        let err = |action: &'static str| move |e: nix::Error| prepare_err(path, action)(e.into());
        let name = path.file_name().ok_or_else(|| err("create")(nix::Error::EINVAL))?;
        match mkdirat(Some(parent.as_raw_fd()), name, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => return Err(err("create")(e)),
        }
        let opened = Dir::openat(Some(parent.as_raw_fd()), name, WALK_FLAGS, Mode::empty()).map_err(err("open"))?;
        let fd = opened.as_raw_fd();
        if fstat(fd).map_err(err("inspect"))?.st_uid != nix::unistd::geteuid().as_raw() {
            // Not the directory we made: someone put theirs in its place.
            return Err(err("create (it was replaced while being created)")(nix::Error::EEXIST));
        }
        if i + 1 == missing.len() {
            fchmod(fd, Mode::from_bits_truncate(mode)).map_err(err("chmod"))?;
            fchown(fd, Some(Uid::from_raw(account.uid)), Some(Gid::from_raw(account.gid))).map_err(err("chown"))?;
        } else {
            fchmod(fd, Mode::from_bits_truncate(0o755)).map_err(err("chmod"))?;
        }
        parent = opened;
    }
    Ok(())
}

/// Directories of the walk: opened without following a link, as directories only.
const WALK_FLAGS: OFlag = OFlag::O_RDONLY.union(OFlag::O_DIRECTORY).union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC);

/// Gives `account` every entry under `dir` whose owner is wrong. Entries are named relative to
/// the open directory, never by full path, and no symbolic link is followed (a link's own
/// owner is changed), so a process of the volume's owner swapping a directory for a link
/// during the walk makes it fail, never chown anything outside PGDATA.
fn fix_ownership(mut dir: Dir, path: &Path, account: &Account) -> Result<(), PrivilegeError> {
    let names: Vec<CString> = dir
        .iter()
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_owned())
        .filter(|name| name.as_bytes() != b"." && name.as_bytes() != b"..")
        .collect();
    let fd = dir.as_raw_fd();
    let (uid, gid) = (Uid::from_raw(account.uid), Gid::from_raw(account.gid));
    for name in names {
        let entry_path = path.join(OsStr::from_bytes(name.as_bytes()));
        let entry = entry_path.as_path();
        let err = |action: &'static str| move |e: nix::Error| prepare_err(entry, action)(e.into());
        let meta = fstatat(Some(fd), name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW).map_err(err("inspect"))?;
        if meta.st_uid != account.uid || meta.st_gid != account.gid {
            fchownat(Some(fd), name.as_c_str(), Some(uid), Some(gid), AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(err("chown"))?;
        }
        if SFlag::from_bits_truncate(meta.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR {
            let sub = Dir::openat(Some(fd), name.as_c_str(), WALK_FLAGS, Mode::empty()).map_err(err("open"))?;
            fix_ownership(sub, &entry_path, account)?;
        }
    }
    Ok(())
}

/// Every ancestor of PGDATA must be enterable by the account, or initdb fails obscurely.
pub fn check_reachable(pgdata: &Path, account: &Account) -> Result<(), PrivilegeError> {
    for dir in pgdata.ancestors().skip(1) {
        let Ok(meta) = fs::metadata(dir) else { continue };
        let mode = meta.permissions().mode();
        let bit = if meta.uid() == account.uid {
            0o100
        } else if account.groups.contains(&meta.gid()) {
            0o010
        } else {
            0o001
        };
        if mode & bit == 0 {
            return Err(PrivilegeError::Unreachable {
                pgdata: pgdata.to_path_buf(),
                user: account.name.clone(),
                blocking: dir.to_path_buf(),
                mode: mode & 0o7777,
                owner: meta.uid(),
            });
        }
    }
    Ok(())
}

/// setgroups, setgid, setuid, in that order (each needs the privilege the next one drops).
pub fn become_user(account: &Account) -> Result<(), PrivilegeError> {
    let err = |source| PrivilegeError::Switch { user: account.name.clone(), source };
    let groups: Vec<Gid> = account.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    setgroups(&groups).map_err(err)?;
    setgid(Gid::from_raw(account.gid)).map_err(err)?;
    setuid(Uid::from_raw(account.uid)).map_err(err)?;
    std::env::set_var("HOME", &account.home);
    std::env::set_var("USER", &account.name);
    std::env::set_var("LOGNAME", &account.name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_passwd_and_group_without_nss() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\npostgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n";
        let group = "ssl-cert:x:103:postgres\npostgres:x:104:\nother:x:200:alice,postgres,bob\n";
        let a = lookup("postgres", passwd, group).unwrap();
        assert_eq!(
            a,
            Account {
                name: "postgres".into(),
                uid: 101,
                gid: 104,
                groups: vec![104, 103, 200],
                home: "/var/lib/postgresql".into()
            }
        );
        assert_eq!(lookup("nobody", passwd, group), None);
        assert_eq!(lookup("postgres", "postgres:x:notanumber:1::/:/bin/sh\n", ""), None);
    }
}
