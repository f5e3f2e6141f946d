//! The postgres server we run: where its binaries are, the arguments the user passed to it,
//! and what those mean for the entrypoint's own connections (one source of truth for the
//! port and socket directory: rendered settings, overridden by postgres arguments).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::render::{Settings, DEFAULT_SOCKET_DIR};

#[derive(Debug, thiserror::Error)]
pub enum BinError {
    #[error("PG_BINDIR: {0:?} has no executable `postgres` and `initdb`; set it to a PostgreSQL bin directory")]
    BadOverride(PathBuf),
    #[error(
        "cannot find the PostgreSQL server binaries: no `postgres` on PATH and none under \
         /usr/lib/postgresql/<version>/bin; install PostgreSQL or set PG_BINDIR"
    )]
    NotFound,
}

/// The directory holding `postgres`, `initdb`, `pg_ctl`, `psql`, `pg_basebackup`...
#[derive(Debug, Clone)]
pub struct Bin(PathBuf);

/// `name` as an executable file in a directory of `PATH` (pgBackRest, PgBouncer).
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| is_executable(p))
}

pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl Bin {
    /// `PG_BINDIR`, else the directory of the real `postgres` found on `PATH` (symlinks
    /// resolved, so `/usr/local/bin/postgres -> /usr/lib/postgresql/15/bin/postgres` finds
    /// its siblings), else the newest `/usr/lib/postgresql/<version>/bin`.
    pub fn locate(bindir: Option<&Path>, path_env: Option<&str>) -> Result<Bin, BinError> {
        if let Some(dir) = bindir {
            return if is_server_dir(dir) {
                Ok(Bin(dir.to_path_buf()))
            } else {
                Err(BinError::BadOverride(dir.into()))
            };
        }
        for dir in std::env::split_paths(path_env.unwrap_or("")) {
            if let Ok(real) = dir.join("postgres").canonicalize() {
                if let Some(parent) = real.parent().filter(|p| is_server_dir(p)) {
                    return Ok(Bin(parent.to_path_buf()));
                }
            }
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
            .filter(|(_, dir)| is_server_dir(dir))
            .collect();
        versions.sort();
        versions.pop().map(|(_, dir)| Bin(dir)).ok_or(BinError::NotFound)
    }

    pub fn tool(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn dir(&self) -> &Path {
        &self.0
    }
}

/// The major of `server_version_num` ("170012" is 17).
pub fn major_of(version_num: &str) -> Option<u32> {
    version_num.trim().parse::<u32>().ok().map(|n| n / 10000)
}

fn is_server_dir(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    ["postgres", "initdb"]
        .iter()
        .all(|tool| std::fs::metadata(dir.join(tool)).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// postgres arguments that would move the data or configuration files away from the ones we
/// manage (the managed settings would silently not apply) are refused.
pub fn check_managed_args(postgres_args: &[String]) -> Result<(), String> {
    const MANAGED: [&str; 4] = ["data_directory", "config_file", "hba_file", "ident_file"];
    let moved = setting_args(postgres_args).into_iter().map(|(name, _)| name).find(|n| MANAGED.contains(&n.as_str()));
    let data_dir = postgres_args.iter().any(|a| a.starts_with("-D"));
    match (moved, data_dir) {
        (Some(name), _) => Err(format!(
            "postgres argument {name}: cannot be set, pg-entrypoint manages where the data and configuration files are"
        )),
        (None, true) => Err("postgres argument -D: the data directory is PGDATA".into()),
        (None, false) => Ok(()),
    }
}

/// Lets postgres judge the settings we would write and the arguments it would get, before
/// anything is written: `postgres -C` reads them (names, values, options) against no data
/// directory. The settings go in as the configuration file, an in-memory file (memfd) it
/// reads as /dev/fd/N: so every bad one is reported at once, and no value is on a command
/// line. `Err` lists postgres's own words, naming our variable where a setting came from one;
/// `Ok` is the server's major version, which it prints.
pub fn judge_settings(bin: &Bin, settings: &Settings, postgres_args: &[String]) -> Result<u32, String> {
    let conf = in_memory_file(&crate::render::managed_conf(settings))
        .map_err(|e| format!("cannot prepare the settings for postgres to check: {e}"))?;
    let mut cmd = std::process::Command::new(bin.tool("postgres"));
    crate::pid1::supervise::clean_signals_on_exec(&mut cmd);
    cmd.args(["-C", "server_version_num", "-c"]).arg(format!("config_file=/dev/fd/{}", conf.as_raw_fd()));
    // A data directory that cannot exist: nothing on disk is read.
    for fixed in ["hba_file=/dev/null", "ident_file=/dev/null", "data_directory=/dev/null/none"] {
        cmd.arg("-c").arg(fixed);
    }
    // PGDATA in the environment would be its -D; its messages are parsed, so untranslated.
    cmd.args(postgres_args).env_remove("PGDATA");
    for var in crate::config::secret_environment() {
        cmd.env_remove(var);
    }
    cmd.env("LC_ALL", "C");
    let out = cmd.output().map_err(|e| format!("cannot run {}: {e}", bin.tool("postgres").display()))?;
    drop(conf);
    if out.status.success() {
        let printed = String::from_utf8_lossy(&out.stdout);
        return major_of(&printed).ok_or_else(|| format!("postgres -C server_version_num printed {printed:?}"));
    }
    Err(format!(
        "postgres refuses these settings or arguments:\n  {}",
        explain_refusal(&String::from_utf8_lossy(&out.stderr), settings, postgres_args).join("\n  ")
    ))
}

/// What [`judge_settings`]' verdict depends on: the settings we render, the postgres
/// arguments, and the postgres binary (path, size, modification time, inode). Recorded
/// beside our other files after a check passed, so that a restart with nothing changed
/// skips the check (about a quarter of a restart's own cost).
pub fn settings_fingerprint(bin: &Bin, settings: &Settings, postgres_args: &[String]) -> String {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    crate::render::managed_conf(settings).hash(&mut hasher);
    postgres_args.hash(&mut hasher);
    let postgres = bin.tool("postgres");
    postgres.hash(&mut hasher);
    if let Ok(meta) = std::fs::metadata(&postgres) {
        (meta.size(), meta.mtime(), meta.mtime_nsec(), meta.ino()).hash(&mut hasher);
    }
    format!("{:016x}", hasher.finish())
}

/// The server major a passed check of `fingerprint` recorded in `path`, if it did. The file
/// is written by the service account: read without following links, bounded; a forged one
/// could only skip a check of settings that postgres checks again when it starts.
pub fn recorded_check(path: &Path, fingerprint: &str) -> Option<u32> {
    let text = crate::pgdata::datadir::read_small(path.parent()?, Path::new(path.file_name()?), 256).ok()?;
    let (recorded, major) = text.trim().split_once(' ')?;
    (recorded == fingerprint).then(|| major.parse().ok()).flatten()
}

/// Records a passed check (see [`settings_fingerprint`]).
pub fn record_check(path: &Path, fingerprint: &str, major: u32) -> std::io::Result<()> {
    crate::pgdata::datadir::write_atomic(path, format!("{fingerprint} {major}\n").as_bytes(), 0o600)
}

/// How every cluster we make authenticates: local connections trusted (the official image's
/// way; the socket is the container's), TCP with SCRAM until our pg_hba.conf block is written.
pub const INITDB_AUTH: [&str; 2] = ["--auth-local=trust", "--auth-host=scram-sha-256"];

/// initdb's verdict on POSTGRES_INITDB_ARGS before anything is made: `initdb --show` parses
/// every option (an unknown one, a bad value) and exits without touching any directory. What
/// it says about who runs it is not about the arguments: as root it refuses root once they
/// passed; a uid without a passwd entry (`--user`, before nss_wrapper is set up) is not judged.
/// Judged with what the real run adds (`INITDB_AUTH`, a password file when there is a
/// password: `--show` never reads it).
pub fn judge_initdb_args(bin: &Bin, args: &[String], with_password: bool) -> Result<(), String> {
    const NOT_ABOUT_THE_ARGUMENTS: [&str; 2] = ["cannot be run as root", "could not look up effective user ID"];
    let mut cmd = std::process::Command::new(bin.tool("initdb"));
    crate::pid1::supervise::clean_signals_on_exec(&mut cmd);
    cmd.args(["--show", "-D", "/dev/null/none"]).args(INITDB_AUTH);
    if with_password {
        cmd.arg("--pwfile=/dev/null");
    }
    cmd.args(args).env_remove("PGDATA").env("LC_ALL", "C");
    for var in crate::config::secret_environment() {
        cmd.env_remove(var);
    }
    let out = cmd.output().map_err(|e| format!("cannot run {}: {e}", bin.tool("initdb").display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || NOT_ABOUT_THE_ARGUMENTS.iter().any(|m| stderr.contains(m)) {
        return Ok(());
    }
    let said: Vec<&str> = stderr.lines().filter(|l| !l.contains("hint: Try")).map(str::trim).collect();
    Err(format!("POSTGRES_INITDB_ARGS: initdb refuses them: {}", said.join("; ")))
}

/// A memfd holding `text`, inheritable by the next child.
fn in_memory_file(text: &str) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::io::Write;
    let fd = nix::sys::memfd::memfd_create(c"pg-entrypoint-settings", nix::sys::memfd::MemFdCreateFlag::empty())?;
    let mut file = std::fs::File::from(fd);
    file.write_all(text.as_bytes())?;
    Ok(file.into())
}

/// postgres's complaints, one per line (its DETAIL and HINT appended), each naming the
/// `POSTGRESQL_CONFIG_*` variable when the setting came from one and no postgres argument
/// sets it too. What postgres printed without a severity (a bad option) is kept as it is.
pub fn explain_refusal(stderr: &str, settings: &Settings, postgres_args: &[String]) -> Vec<String> {
    let from_args: Vec<String> = setting_args(postgres_args).into_iter().map(|(name, _)| name).collect();
    let mut out: Vec<String> = Vec::new();
    for line in stderr.lines() {
        let severity =
            ["LOG:  ", "FATAL:  ", "DETAIL:  ", "HINT:  "].iter().find_map(|s| Some((*s, line.split_once(s)?.1)));
        let Some((severity, message)) = severity else {
            if !line.trim().is_empty() && !line.starts_with("Try \"") {
                out.push(line.trim().to_string());
            }
            continue;
        };
        let message = message.trim().split(" in file \"/dev/fd/").next().unwrap_or_default();
        if message.starts_with("skipping missing configuration file") || message.contains("contains errors") {
            continue;
        }
        if matches!(severity, "DETAIL:  " | "HINT:  ") {
            if let Some(last) = out.last_mut() {
                last.push_str(&format!(" ({message})"));
            }
            continue;
        }
        let name = message.split_once("parameter \"").and_then(|(_, rest)| rest.split_once('"')).map(|(n, _)| n);
        out.push(match name.and_then(|n| settings.get(n).map(|(_, source)| (n, source))) {
            Some((n, crate::render::Source::Override)) if !from_args.iter().any(|a| a == n) => {
                format!("{}{}: {message}", crate::config::OVERRIDE_PREFIX, n.to_ascii_uppercase())
            }
            _ => message.to_string(),
        });
    }
    out
}

/// Where the running server can be reached locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sockets {
    pub port: u16,
    /// The first socket directory: the one the entrypoint itself uses.
    pub socket_dir: PathBuf,
    /// All socket directories, each created at start if missing.
    pub socket_dirs: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {value:?} is not a port; accepted: 1 to 65535")]
pub struct PortError {
    source_name: String,
    value: String,
}

impl Sockets {
    /// The port and sockets from the rendered settings, overridden by postgres arguments.
    pub fn resolve(settings: &Settings, postgres_args: &[String]) -> Result<Sockets, PortError> {
        let mut port = ("POSTGRESQL_CONFIG_PORT", settings.get("port").map(|(v, _)| v.clone()));
        let mut sockets = settings
            .get("unix_socket_directories")
            .map(|(v, _)| v.clone())
            .unwrap_or_else(|| DEFAULT_SOCKET_DIR.to_string());
        for (name, value) in setting_args(postgres_args) {
            match name.as_str() {
                "port" => port = ("postgres argument port", Some(value)),
                "unix_socket_directories" => sockets = value,
                _ => {}
            }
        }
        let port = match port {
            (_, None) => 5432,
            (source_name, Some(value)) => match value.trim().parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(PortError { source_name: source_name.into(), value }),
            },
        };
        let socket_dirs: Vec<PathBuf> =
            sockets.split(',').map(str::trim).filter(|s| !s.is_empty()).map(PathBuf::from).collect();
        let socket_dir = socket_dirs.first().cloned().unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_DIR));
        Ok(Sockets { port, socket_dir, socket_dirs })
    }
}

/// The settings a postgres command line sets, in order: `-c name=value`, `-cname=value`,
/// `--name=value`, and the short forms `-p port`, `-k sockets`, `-h addresses`.
pub fn setting_args(args: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.strip_prefix("--") {
            Some(long) => {
                if let Some((name, value)) = long.split_once('=') {
                    out.push((normalise(name), value.to_string()));
                }
                continue;
            }
            // `-c...`: a dash and one character (any character, so never slice inside one).
            None if arg.starts_with('-') && arg.chars().count() >= 2 => {
                let split = arg.char_indices().nth(2).map_or(arg.len(), |(i, _)| i);
                arg.split_at(split)
            }
            None => continue,
        };
        let name = match flag {
            "-c" => None,
            "-p" => Some("port"),
            "-k" => Some("unix_socket_directories"),
            "-h" => Some("listen_addresses"),
            _ => continue,
        };
        let value = if inline.is_empty() { it.next().cloned().unwrap_or_default() } else { inline.to_string() };
        match name {
            Some(name) => out.push((name.to_string(), value)),
            None => {
                if let Some((name, value)) = value.split_once('=') {
                    out.push((normalise(name), value.to_string()));
                }
            }
        }
    }
    out
}

/// postgres accepts `shared-buffers` for `shared_buffers`, in any case.
fn normalise(name: &str) -> String {
    name.trim().replace('-', "_").to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::Source;

    #[test]
    fn the_major_is_read_from_server_version_num() {
        assert_eq!(major_of("170012\n"), Some(17));
        assert_eq!(major_of("150018"), Some(15));
        assert_eq!(major_of("garbage"), None);
    }

    #[test]
    fn a_refusal_names_our_variables() {
        let mut s = Settings::new();
        s.insert("shared_buffers".into(), ("lots".into(), Source::Override));
        s.insert("wal_level".into(), ("replica".into(), Source::Role));
        let stderr = "2026-11-28 16:45:01.157 GMT [1] LOG:  invalid value for parameter \"shared_buffers\": \"lots\"\n\
                      2026-11-28 16:45:01.157 GMT [1] HINT:  Valid units for this parameter are \"B\", \"kB\".\n\
                      2026-11-28 16:45:01.157 GMT [1] LOG:  unrecognized configuration parameter \"bogus\" in file \"/dev/fd/3\" line 4\n\
                      2026-11-28 16:45:01.157 GMT [1] FATAL:  configuration file \"/dev/fd/3\" contains errors\n";
        assert_eq!(
            explain_refusal(stderr, &s, &[]),
            [
                "POSTGRESQL_CONFIG_SHARED_BUFFERS: invalid value for parameter \"shared_buffers\": \"lots\" \
                 (Valid units for this parameter are \"B\", \"kB\".)",
                "unrecognized configuration parameter \"bogus\"",
            ]
        );
        // Set by an argument too: not the variable's fault.
        let args = ["-c".to_string(), "shared_buffers=lots".to_string()];
        assert_eq!(
            explain_refusal(stderr, &s, &args)[0].split(':').next(),
            Some("invalid value for parameter \"shared_buffers\"")
        );
        // A bad option has no severity word.
        let bad = "/usr/lib/postgresql/15/bin/postgres: invalid option -- 'z'\nTry \"postgres --help\" for more information.\n";
        assert_eq!(explain_refusal(bad, &s, &[]), ["/usr/lib/postgresql/15/bin/postgres: invalid option -- 'z'"]);
    }

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_every_form_of_setting_argument() {
        let parsed = setting_args(&args(&[
            "-c",
            "port=6000",
            "-cshared_buffers=1GB",
            "--work-mem=8MB",
            "-p",
            "7000",
            "-k/tmp/s",
            "-h",
            "*",
            "-F",
            "-é",
            "-",
        ]));
        let expected: Vec<(String, String)> = [
            ("port", "6000"),
            ("shared_buffers", "1GB"),
            ("work_mem", "8MB"),
            ("port", "7000"),
            ("unix_socket_directories", "/tmp/s"),
            ("listen_addresses", "*"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(parsed, expected);
    }

    #[test]
    fn arguments_override_rendered_settings() {
        let mut s = Settings::new();
        s.insert("port".into(), ("6543".into(), Source::Override));
        s.insert("unix_socket_directories".into(), ("/run/a, /run/b".into(), Source::Override));
        let e = Sockets::resolve(&s, &[]).unwrap();
        assert_eq!((e.port, e.socket_dir.clone()), (6543, PathBuf::from("/run/a")));
        assert_eq!(e.socket_dirs, [PathBuf::from("/run/a"), PathBuf::from("/run/b")]);
        let e = Sockets::resolve(&s, &args(&["-c", "port=7000", "-k", "/x"])).unwrap();
        assert_eq!((e.port, e.socket_dir), (7000, PathBuf::from("/x")));
        let e = Sockets::resolve(&Settings::new(), &[]).unwrap();
        assert_eq!((e.port, e.socket_dir), (5432, PathBuf::from("/var/run/postgresql")));
    }

    #[test]
    fn bad_port_names_where_it_came_from() {
        let err = Sockets::resolve(&Settings::new(), &args(&["-p", "70000"])).unwrap_err();
        assert_eq!(err.to_string(), "postgres argument port: \"70000\" is not a port; accepted: 1 to 65535");
    }
}
