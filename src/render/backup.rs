//! pgBackRest's configuration file and the commands postgres runs to archive and fetch WAL.
//! Pure: the caller says where the files are.

use std::path::Path;

use crate::config::backup::Backup;

/// Where pgBackRest finds this server.
pub struct Server<'a> {
    pub pgdata: &'a Path,
    pub socket_dir: &'a Path,
    pub port: u16,
    pub superuser: &'a str,
}

/// Our choices where the user made none: the container logs to stderr (no log files), a
/// backup starts at once rather than at the next checkpoint.
const DEFAULTS: [(&str, &str); 2] = [("log-level-file", "off"), ("start-fast", "y")];

/// `pgbackrest.conf`: `[global]` from `PGBACKREST_*` (secrets included: the file is 0600),
/// then the stanza with this server.
pub fn conf(backup: &Backup, server: &Server, lock_path: &Path) -> String {
    let mut out = String::from(
        "# Written by pg-entrypoint at every start from the PGBACKREST_* variables; edits are lost.\n[global]\n",
    );
    out.push_str(&format!("lock-path={}\n", lock_path.display()));
    for (name, value) in DEFAULTS {
        if backup.option(name).is_none() {
            out.push_str(&format!("{name}={value}\n"));
        }
    }
    for option in &backup.options {
        out.push_str(&format!("{}={}\n", option.name, option.value.expose()));
    }
    out.push_str(&format!(
        "\n[{}]\npg1-path={}\npg1-port={}\npg1-socket-path={}\npg1-user={}\n",
        backup.stanza,
        server.pgdata.display(),
        server.port,
        server.socket_dir.display(),
        server.superuser
    ));
    out
}

/// The start of every pgBackRest command line: our configuration and the stanza.
pub fn command_prefix(conf: &Path, stanza: &str) -> String {
    format!("pgbackrest {} --stanza={}", shell_quote(&format!("--config={}", conf.display())), shell_quote(stanza))
}

/// postgres's `archive_command`.
pub fn archive_command(conf: &Path, stanza: &str) -> String {
    format!("{} archive-push \"%p\"", command_prefix(conf, stanza))
}

/// postgres's `restore_command`: a standby that fell behind its primary's WAL, and a
/// restore, fetch WAL from the repository.
pub fn restore_command(conf: &Path, stanza: &str) -> String {
    format!("{} archive-get %f \"%p\"", command_prefix(conf, stanza))
}

/// How often a segment is switched even when it is not full: the most an idle primary's
/// archive lags behind it (the RPO when the volume is lost).
pub const ARCHIVE_TIMEOUT: &str = "60s";

/// A word for `sh -c`: single-quoted unless plainly safe.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::backup::{BackrestOption, OptionValue};

    fn backup(options: &[(&str, &str)]) -> Backup {
        Backup {
            stanza: "main".into(),
            archive: true,
            options: options
                .iter()
                .map(|(n, v)| BackrestOption {
                    name: n.to_string(),
                    value: OptionValue::Plain(v.to_string()),
                    variable: String::new(),
                })
                .collect(),
            schedule: None,
            restore: None,
        }
    }

    #[test]
    fn the_conf_names_this_server_and_keeps_the_users_options() {
        let server =
            Server { pgdata: Path::new("/data"), socket_dir: Path::new("/run/pg"), port: 5433, superuser: "admin" };
        let text =
            conf(&backup(&[("repo1-path", "/backups"), ("start-fast", "n")]), &server, Path::new("/run/pg/locks"));
        assert!(
            text.contains("[global]\nlock-path=/run/pg/locks\nlog-level-file=off\nrepo1-path=/backups\nstart-fast=n\n"),
            "{text}"
        );
        assert!(!text.contains("start-fast=y"), "the user's choice wins: {text}");
        assert!(
            text.ends_with("[main]\npg1-path=/data\npg1-port=5433\npg1-socket-path=/run/pg\npg1-user=admin\n"),
            "{text}"
        );
    }

    #[test]
    fn commands_quote_what_the_shell_would_split() {
        assert_eq!(
            archive_command(Path::new("/var/run/postgresql/pg-entrypoint-5432.pgbackrest.conf"), "main"),
            "pgbackrest --config=/var/run/postgresql/pg-entrypoint-5432.pgbackrest.conf --stanza=main archive-push \"%p\""
        );
        assert_eq!(
            restore_command(Path::new("/run/my dir/x.conf"), "main"),
            "pgbackrest '--config=/run/my dir/x.conf' --stanza=main archive-get %f \"%p\""
        );
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
