//! Started as a uid other than root (`docker run --user 12345`, Kubernetes `runAsUser`,
//! OpenShift's random uids): no privileges to drop and no ownership to fix. PGDATA must be
//! this uid's own (postgres refuses anything else), and a uid missing from /etc/passwd gets a
//! user name through libnss_wrapper, as the official image gives it: initdb and single-user
//! postgres look their user up and stop without one.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{getegid, geteuid};

use crate::config::Layout;

/// Where Debian and the official image's base put the library.
const WRAPPER_DIRS: &[&str] = &["/usr/lib", "/lib"];
const WRAPPER: &str = "libnss_wrapper.so";

#[derive(Debug, thiserror::Error)]
pub enum UidError {
    #[error(
        "PGDATA {pgdata:?} cannot be created by uid {uid}: {source}. Its parent must be writable by uid {uid}: \
         mount a volume or directory that uid {uid} owns, or run as the owner of {parent:?}"
    )]
    CannotCreate { pgdata: PathBuf, parent: PathBuf, uid: u32, source: io::Error },
    #[error(
        "PGDATA {pgdata:?} belongs to uid {owner}, and this container runs as uid {uid} (docker --user, \
         runAsUser); postgres only runs on a data directory of its own user. Run as uid {owner}, give the \
         directory to uid {uid}, or set PGDATA to a subdirectory for uid {uid} to create, e.g. PGDATA={suggested:?}"
    )]
    NotOwned { pgdata: PathBuf, owner: u32, uid: u32, suggested: PathBuf },
    #[error("PGDATA {pgdata:?}: {action}: {source}")]
    Io { pgdata: PathBuf, action: &'static str, source: io::Error },
}

/// Makes PGDATA exist (0700) as this uid, or says in one line why it cannot and what to change.
pub fn prepare(pgdata: &Path, socket_dirs: &[PathBuf]) -> Result<(), UidError> {
    let uid = geteuid().as_raw();
    let io_err = |action| move |source| UidError::Io { pgdata: pgdata.into(), action, source };
    if let Err(source) = fs::DirBuilder::new().recursive(true).mode(0o700).create(pgdata) {
        let parent = pgdata.parent().unwrap_or(Path::new("/")).to_path_buf();
        return Err(UidError::CannotCreate { pgdata: pgdata.into(), parent, uid, source });
    }
    refuse_foreign_owner(pgdata)?;
    let meta = fs::metadata(pgdata).map_err(io_err("cannot inspect"))?;
    // The images ship PGDATA 1777 so that any uid can use a subdirectory; postgres wants 0700
    // (or 0750 with group access), as root makes it.
    let mode = meta.mode() & 0o777;
    if mode != 0o700 && mode != 0o750 {
        fs::set_permissions(pgdata, fs::Permissions::from_mode(0o700)).map_err(io_err("cannot chmod 0700"))?;
    }
    for dir in socket_dirs {
        // Usually there already (the images ship /var/run/postgresql 3777); postgres reports
        // a socket directory it cannot use in its own words.
        let _ = fs::DirBuilder::new().recursive(true).mode(0o2775).create(dir);
    }
    Ok(())
}

/// A PGDATA that belongs to another uid, refused in one line. Checked before PGDATA is
/// classified too, since listing it may be denied to this uid.
pub fn refuse_foreign_owner(pgdata: &Path) -> Result<(), UidError> {
    let uid = geteuid().as_raw();
    match fs::metadata(pgdata) {
        Ok(meta) if meta.uid() != uid => {
            let suggested = pgdata.join("pgdata");
            Err(UidError::NotOwned { pgdata: pgdata.into(), owner: meta.uid(), uid, suggested })
        }
        _ => Ok(()),
    }
}

/// When this uid has no /etc/passwd entry, gives it one (named `postgres`, home PGDATA)
/// through libnss_wrapper: every child inherits LD_PRELOAD and the wrapper's files, written
/// in `dir` (the socket directory: writable, and not on a read-only root filesystem).
/// Must run before any thread starts (it sets environment variables).
pub fn provide_user_name(pgdata: &Path, layout: &Layout) -> Result<(), String> {
    let (uid, gid) = (geteuid().as_raw(), getegid().as_raw());
    if has_passwd_entry(uid, &fs::read_to_string("/etc/passwd").unwrap_or_default()) {
        return Ok(());
    }
    let Some(wrapper) = find_wrapper() else {
        tracing::warn!(
            uid,
            "this uid has no entry in /etc/passwd and {WRAPPER} is not installed: initdb and single-user \
             postgres will fail to find a user name. Install libnss-wrapper, or run as a uid listed in /etc/passwd"
        );
        return Ok(());
    };
    let (passwd, group) = layout.nss_wrapper();
    let (passwd_text, group_text) = wrapper_files(uid, gid, pgdata);
    crate::pgdata::datadir::write_atomic(&passwd, passwd_text.as_bytes(), 0o644)
        .and_then(|()| crate::pgdata::datadir::write_atomic(&group, group_text.as_bytes(), 0o644))
        .map_err(|e| {
            format!(
                "uid {uid} has no entry in /etc/passwd; cannot write its nss_wrapper files {passwd:?}, {group:?}: {e}"
            )
        })?;
    tracing::info!(uid, gid, "this uid has no entry in /etc/passwd; naming it postgres through {WRAPPER}");
    std::env::set_var("LD_PRELOAD", &wrapper);
    std::env::set_var("NSS_WRAPPER_PASSWD", &passwd);
    std::env::set_var("NSS_WRAPPER_GROUP", &group);
    Ok(())
}

/// True when passwd-format `text` has an entry for `uid`.
fn has_passwd_entry(uid: u32, text: &str) -> bool {
    text.lines().any(|l| l.split(':').nth(2).and_then(|u| u.parse::<u32>().ok()) == Some(uid))
}

/// The wrapper's passwd and group files: one user, `postgres`, with this uid and gid.
fn wrapper_files(uid: u32, gid: u32, pgdata: &Path) -> (String, String) {
    (format!("postgres:x:{uid}:{gid}:PostgreSQL:{}:/bin/false\n", pgdata.display()), format!("postgres:x:{gid}:\n"))
}

/// `/usr/lib/<triplet>/libnss_wrapper.so` (Debian) or `/usr/lib/libnss_wrapper.so`.
fn find_wrapper() -> Option<PathBuf> {
    WRAPPER_DIRS.iter().find_map(|dir| {
        let dir = Path::new(dir);
        let nested = fs::read_dir(dir).ok()?.flatten().map(|e| e.path().join(WRAPPER));
        std::iter::once(dir.join(WRAPPER)).chain(nested).find(|p| fs::metadata(p).is_ok_and(|m| m.len() > 0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_entries_are_found_by_uid() {
        let text = "root:x:0:0:root:/root:/bin/bash\npostgres:x:999:999::/var/lib/postgresql:/bin/bash\n";
        assert!(has_passwd_entry(0, text) && has_passwd_entry(999, text));
        assert!(!has_passwd_entry(12345, text));
        assert!(!has_passwd_entry(9, "broken line\n"));
    }

    #[test]
    fn wrapper_files_name_the_uid_postgres() {
        let (passwd, group) = wrapper_files(12345, 0, Path::new("/var/lib/postgresql/data"));
        assert_eq!(passwd, "postgres:x:12345:0:PostgreSQL:/var/lib/postgresql/data:/bin/false\n");
        assert_eq!(group, "postgres:x:0:\n");
    }
}
