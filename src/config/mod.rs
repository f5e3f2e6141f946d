//! The environment becomes one typed, validated [`Config`]. Pure: the caller hands in the
//! variables and a way to read `*_FILE` secrets, so every rule is unit-tested directly.
//!
//! All problems are collected and reported together; each names the variable, the bad value
//! (never a secret's) and what is accepted.

#[cfg(test)]
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod layout;
mod tls;
mod upgrade;
pub use layout::{Layout, DEFAULT_SOCKET_DIR};
pub use tls::{ServerCert, Tls, TlsFile, TlsMode};
pub use upgrade::Upgrade;

/// A password. Its `Debug`/`Display` never show the value, so it cannot leak through a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub pgdata: PathBuf,
    pub superuser: String,
    /// `None` only with `POSTGRES_HOST_AUTH_METHOD=trust`.
    pub superuser_password: Option<Secret>,
    pub database: String,
    pub initdb_args: Vec<String>,
    pub initdb_waldir: Option<PathBuf>,
    pub host_auth_method: String,
    pub role: Role,
    /// `POSTGRESQL_CONFIG_<NAME>` as (lower-case setting name, value), sorted by name.
    pub overrides: Vec<(String, String)>,
    pub init_scripts_dir: PathBuf,
    pub bindir: Option<PathBuf>,
    /// After a stop signal, how long postgres gets for a fast shutdown before an immediate one.
    pub shutdown_timeout: Duration,
    /// Where the HTTP endpoint listens (`HTTP_PORT`, `HTTP_LISTEN`); `None` when disabled.
    pub http: Option<HttpListen>,
    pub tls: Tls,
    pub upgrade: Upgrade,
    /// Where our files live, from the effective settings once the start knows them.
    pub layout: Layout,
}

/// The HTTP endpoint's address: `address` when `HTTP_LISTEN` names one, else every
/// interface (IPv6 and IPv4, or IPv4 alone where IPv6 is off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpListen {
    pub address: Option<std::net::IpAddr>,
    pub port: u16,
}

impl HttpListen {
    /// The addresses to try, in order.
    pub fn candidates(&self) -> Vec<std::net::SocketAddr> {
        use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
        match self.address {
            Some(address) => vec![SocketAddr::new(address, self.port)],
            None => vec![
                SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), self.port),
                SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), self.port),
            ],
        }
    }
}

/// Patroni's REST API port: one HAProxy configuration serves both modes.
pub const DEFAULT_HTTP_PORT: u16 = 8008;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Standalone,
    Primary(Replication),
    Replica(Replica),
    /// `REPLICATION_ROLE=auto`: primary or replica, decided at start from the StatefulSet
    /// ordinal, the data directory and the peers (`native::auto`).
    Auto(Box<Auto>),
    /// `HA_MODE=patroni`: Patroni decides who is the primary.
    Patroni(Box<Patroni>),
}

/// A member of a StatefulSet whose role is decided at start (docs/kubernetes.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auto {
    /// From the host name `<set>-<ordinal>`.
    pub ordinal: u32,
    /// How it follows when it is a replica; `primary_host` is the default primary
    /// (`PRIMARY_HOST`, or `<set>-0.<POD_SERVICE>`), and the peers exclude this pod.
    pub replica: Replica,
}

impl Role {
    pub fn name(&self) -> &'static str {
        match self {
            Role::Standalone => "standalone",
            Role::Primary(_) => "primary",
            Role::Replica(_) => "replica",
            Role::Auto(_) => "auto",
            Role::Patroni(_) => "patroni member",
        }
    }
}

/// A member of a cluster that Patroni runs on etcd (docs/patroni.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patroni {
    /// `PATRONI_SCOPE`: the cluster's name, its key prefix in etcd.
    pub scope: String,
    /// `PATRONI_NAME`: this member's name (default: the hostname).
    pub name: String,
    /// `ETCD_HOSTS`; empty when the user gives Patroni its own `PATRONI_ETCD3_*` or
    /// `PATRONI_KUBERNETES_*` variables.
    pub etcd_hosts: Vec<Address>,
    pub replication_user: String,
    pub replication_password: Secret,
    pub synchronous: PatroniSync,
    /// `REPLICATION_SYNCHRONOUS_COUNT`: Patroni's `synchronous_node_count`.
    pub synchronous_count: u32,
    /// `ADVERTISE_HOST`: how other members, HAProxy and clients reach this one; `None`: the
    /// address this host's name resolves to.
    pub advertise_host: Option<String>,
    /// Where Patroni's REST API listens (`HTTP_PORT`, `HTTP_LISTEN`).
    pub rest_api: HttpListen,
    /// `PATRONI_RESTAPI_USERNAME` (default `patroni`) and `PATRONI_RESTAPI_PASSWORD`: what
    /// Patroni's state-changing calls (configuration, restart, switchover) require. GETs (the
    /// health paths HAProxy and probes use) stay open.
    pub rest_api_user: String,
    pub rest_api_password: Secret,
}

/// Patroni's `synchronous_mode` (and `synchronous_mode_strict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatroniSync {
    Off,
    /// A commit is acknowledged once a synchronous standby has it, while one is connected;
    /// with none left, the primary goes on alone (availability first).
    On,
    /// Commits wait while no synchronous standby is connected (no acknowledged commit is ever
    /// on the primary alone).
    Strict,
}

/// The replication role and, on a primary, which standbys must confirm commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replication {
    pub user: String,
    pub password: Secret,
    pub sync: SyncSettings,
    /// `REPLICATION_PEERS`: the other members, asked before this node serves writes.
    pub peers: Vec<Address>,
    /// `REPLICATION_PASSWORD_PREVIOUS`: while rotating, what peers that have not yet
    /// replicated the new password still accept.
    pub previous_password: Option<Secret>,
}

/// A member's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub host: String,
    pub port: u16,
}

impl Address {
    /// Whether this address is the node that runs on `port` of the host named `hostname`:
    /// our port, and our host name exactly or a loopback address. Conservative on purpose:
    /// dropping a real member from the count would shrink the majority, while keeping our
    /// own entry only asks one answer more.
    pub fn is_self(&self, port: u16, hostname: &str) -> bool {
        let host = self.host.trim_matches(['[', ']']);
        self.port == port
            && ((!hostname.is_empty() && host.eq_ignore_ascii_case(hostname))
                || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub replication: Replication,
    pub primary_host: String,
    pub primary_port: u16,
    /// `application_name` of this standby; its slot name is derived from it.
    pub name: String,
    pub wait_timeout: Duration,
    /// Clone again when the primary invalidated this replica's slot (it can never catch up).
    pub reclone: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncMode {
    Off,
    /// `FIRST n (...)`: the first n listed, in order of priority.
    First,
    /// `ANY n (...)`: any n of those listed (quorum).
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncSettings {
    pub mode: SyncMode,
    pub count: u32,
    /// Standby names; `["*"]` means any standby.
    pub names: Vec<String>,
}

/// One problem with one variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub variable: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.variable, self.message)
    }
}

/// Every problem found in the environment, reported together.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration ({} problem{}):\n  {}", .0.len(), if .0.len() == 1 { "" } else { "s" },
        .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
pub struct ConfigError(pub Vec<Problem>);

pub const DEFAULT_PGDATA: &str = "/var/lib/postgresql/data";
pub const DEFAULT_INIT_SCRIPTS_DIR: &str = "/docker-entrypoint-initdb.d";
const ACCEPTED_AUTH_METHODS: &[&str] = &["scram-sha-256", "md5", "password", "trust", "reject"];
/// PostgreSQL silently truncates longer identifiers (NAMEDATALEN - 1).
const MAX_IDENTIFIER_BYTES: usize = 63;
pub const OVERRIDE_PREFIX: &str = "POSTGRESQL_CONFIG_";
/// Variables that hold secrets: never passed to postgres, the PostgreSQL tools or a decompressor.
pub const SECRET_VARS: [&str; 4] =
    ["POSTGRES_PASSWORD", "REPLICATION_PASSWORD", "REPLICATION_PASSWORD_PREVIOUS", "PATRONI_RESTAPI_PASSWORD"];
/// Patroni's REST API user when `PATRONI_RESTAPI_USERNAME` is not set.
pub const DEFAULT_PATRONI_RESTAPI_USER: &str = "patroni";
/// A secret file larger than this is a mistake (`/dev/zero`, a disk image).
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// initdb's default superuser, and the official image's.
pub const DEFAULT_SUPERUSER: &str = "postgres";

/// `NAME`, or the contents of the file `NAME_FILE` names (trailing newlines dropped), for the
/// operator commands, which need a value or two without the whole configuration. Unreadable
/// or both set: none (the start-up reports those).
pub fn var_or_file(inputs: &dyn Inputs, name: &str) -> Option<String> {
    let set = |n: &str| inputs.var(n).filter(|v| !v.is_empty());
    match (set(name), set(&format!("{name}_FILE"))) {
        (Some(value), None) => Some(value),
        (None, Some(path)) => inputs
            .read_file(Path::new(&path), MAX_SECRET_FILE)
            .ok()
            .map(|t| without_newlines(&t))
            .filter(|v| !v.is_empty()),
        _ => None,
    }
}

/// A value as a problem shows it: quoted, and cut after 64 characters (a 100 kB value would
/// otherwise fill the log).
fn shown(value: &str) -> String {
    const SHOWN: usize = 64;
    match value.char_indices().nth(SHOWN) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &value[..cut], value.len()),
    }
}

/// A secret file's contents without the trailing newlines editors and `echo` add.
fn without_newlines(text: &str) -> String {
    text.trim_end_matches(['\n', '\r']).to_string()
}

/// Where the inputs come from: the process environment, the secret files, the hostname.
pub trait Inputs {
    fn var(&self, name: &str) -> Option<String>;
    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)>;
    /// A file of at most `max` bytes.
    fn read_file(&self, path: &Path, max: u64) -> std::io::Result<String>;
    fn hostname(&self) -> String;
    /// True when the variable is set to bytes that are not UTF-8 (`var` gives them lossily).
    fn not_utf8(&self, _name: &str) -> bool {
        false
    }
}

/// The text of an open file that must be a regular one (opened without blocking: a FIFO is
/// refused here, never waited on) of at most `max` bytes (a `/dev/zero` is refused too).
pub fn read_regular(file: std::fs::File, max: u64) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    if !file.metadata()?.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut text = String::new();
    file.take(max + 1).read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(Error::new(ErrorKind::InvalidInput, format!("larger than {max} bytes")));
    }
    Ok(text)
}

/// The real process environment.
pub struct ProcessInputs;

impl Inputs for ProcessInputs {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
    }
    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        std::env::vars_os()
            .map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned()))
            .filter(|(k, _)| k.starts_with(prefix))
            .collect()
    }
    /// A secret file: a regular file (symbolic links followed, as Kubernetes mounts them) of at
    /// most `max` bytes. Opened without blocking, so a FIFO cannot hang the start.
    fn read_file(&self, path: &Path, max: u64) -> std::io::Result<String> {
        use std::os::unix::fs::OpenOptionsExt;
        read_regular(std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NONBLOCK).open(path)?, max)
    }
    fn hostname(&self) -> String {
        nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default()
    }
    fn not_utf8(&self, name: &str) -> bool {
        std::env::var_os(name).is_some_and(|v| v.to_str().is_none())
    }
}

/// A fixed set of variables, for tests.
#[cfg(test)]
#[derive(Default)]
pub struct MapInputs {
    pub vars: BTreeMap<String, String>,
    pub files: BTreeMap<PathBuf, String>,
    pub hostname: String,
}

#[cfg(test)]
impl MapInputs {
    /// These variables and this hostname, no secret files.
    pub fn with(vars: &[(&str, &str)], hostname: &str) -> MapInputs {
        MapInputs {
            vars: vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            files: BTreeMap::new(),
            hostname: hostname.into(),
        }
    }
}

#[cfg(test)]
impl Inputs for MapInputs {
    fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }
    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        self.vars.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(k, v)| (k.clone(), v.clone())).collect()
    }
    fn read_file(&self, path: &Path, _max: u64) -> std::io::Result<String> {
        self.files.get(path).cloned().ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    }
    fn hostname(&self) -> String {
        self.hostname.clone()
    }
}

impl Replica {
    pub fn primary(&self) -> Address {
        Address { host: self.primary_host.clone(), port: self.primary_port }
    }

    /// The members a replica knows: its primary, then `REPLICATION_PEERS` (each once).
    pub fn members(&self) -> Vec<Address> {
        let mut members = vec![self.primary()];
        for peer in &self.replication.peers {
            if !members.contains(peer) {
                members.push(peer.clone());
            }
        }
        members
    }
}

impl Config {
    pub fn from_inputs(inputs: &dyn Inputs) -> Result<Config, ConfigError> {
        let mut p = Parser { inputs, problems: Vec::new() };
        let config = p.config();
        match config {
            Some(config) if p.problems.is_empty() => Ok(config),
            _ => Err(ConfigError(p.problems)),
        }
    }

    /// As in the official image, the superuser password is needed only to create a cluster
    /// (an empty PGDATA that is not a replica's), unless `POSTGRES_HOST_AUTH_METHOD=trust`.
    pub fn password_problem(&self, creates_cluster: bool) -> Option<ConfigError> {
        let needed = creates_cluster && !matches!(self.role, Role::Replica(_)) && self.host_auth_method != "trust";
        (needed && self.superuser_password.is_none()).then(|| {
            ConfigError(vec![Problem {
                variable: "POSTGRES_PASSWORD".into(),
                message: "is required to initialise an empty PGDATA (or POSTGRES_PASSWORD_FILE), e.g. \
                          `docker run -e POSTGRES_PASSWORD=mysecretpassword IMAGE`; only \
                          POSTGRES_HOST_AUTH_METHOD=trust allows none (then anyone who can connect is the superuser)"
                    .into(),
            }])
        })
    }

    pub fn replication(&self) -> Option<&Replication> {
        match &self.role {
            Role::Standalone | Role::Patroni(_) => None,
            Role::Primary(r) => Some(r),
            Role::Replica(r) => Some(&r.replication),
            Role::Auto(a) => Some(&a.replica.replication),
        }
    }

    /// Each secret this configuration holds, by its variable (one of [`SECRET_VARS`]),
    /// whether it came from the variable or from its `_FILE`.
    pub fn secrets(&self) -> Vec<(&'static str, &Secret)> {
        let [superuser, replication, previous, rest_api] = SECRET_VARS;
        let mut secrets: Vec<(&'static str, &Secret)> = Vec::new();
        if let Some(password) = &self.superuser_password {
            secrets.push((superuser, password));
        }
        if let Some(r) = self.replication() {
            secrets.push((replication, &r.password));
            if let Some(old) = &r.previous_password {
                secrets.push((previous, old));
            }
        }
        if let Role::Patroni(m) = &self.role {
            secrets.push((replication, &m.replication_password));
            secrets.push((rest_api, &m.rest_api_password));
        }
        secrets
    }

    /// How this node follows a primary when it is (or may become) a replica.
    pub fn follower(&self) -> Option<&Replica> {
        match &self.role {
            Role::Replica(r) => Some(r),
            Role::Auto(a) => Some(&a.replica),
            _ => None,
        }
    }

    /// The other members whose answers make a majority (docs/native-ha.md): the peers, and a
    /// replica's primary. Empty without `REPLICATION_PEERS`: then nothing is fenced.
    pub fn other_members(&self) -> Vec<Address> {
        match (self.follower(), self.replication()) {
            (_, Some(r)) if r.peers.is_empty() => Vec::new(),
            (Some(replica), _) => replica.members(),
            (None, Some(r)) => r.peers.clone(),
            (None, None) => Vec::new(),
        }
    }

    /// Drops this node, the server on `port` of the host named `hostname`, from its own peers:
    /// it must not count twice in a majority.
    pub fn forget_self(&mut self, port: u16, hostname: &str) {
        let replication = match &mut self.role {
            Role::Primary(r) => r,
            Role::Replica(r) => &mut r.replication,
            Role::Auto(a) => &mut a.replica.replication,
            Role::Standalone | Role::Patroni(_) => return,
        };
        replication.peers.retain(|a| {
            let me = a.is_self(port, hostname);
            if me {
                tracing::info!("REPLICATION_PEERS: {a} is this node; not counted twice");
            }
            !me
        });
    }
}

/// How many members of `members` (this one included) make a majority.
pub fn majority(members: usize) -> usize {
    members / 2 + 1
}

struct Parser<'a> {
    inputs: &'a dyn Inputs,
    problems: Vec<Problem>,
}

impl Parser<'_> {
    fn problem(&mut self, variable: &str, message: impl Into<String>) {
        self.problems.push(Problem { variable: variable.to_string(), message: message.into() });
    }

    /// A variable; empty counts as unset, as in the official image. Bytes that are not UTF-8
    /// are refused (a password altered by a lossy conversion would silently not work).
    fn var(&mut self, name: &str) -> Option<String> {
        if self.inputs.not_utf8(name) {
            if !self.problems.iter().any(|p| p.variable == name) {
                self.problem(name, "is not valid UTF-8; accepted: UTF-8 text");
            }
            return None;
        }
        self.inputs.var(name).filter(|v| !v.is_empty())
    }

    /// `NAME` or `NAME_FILE`, never both. File contents lose trailing newlines.
    fn secret(&mut self, name: &str) -> Option<Secret> {
        let file_var = format!("{name}_FILE");
        match (self.var(name), self.var(&file_var)) {
            (Some(_), Some(_)) => {
                self.problem(name, format!("both {name} and {file_var} are set; set only one"));
                None
            }
            (Some(value), None) => Some(Secret(value)),
            (None, Some(path)) => match self.inputs.read_file(Path::new(&path), MAX_SECRET_FILE) {
                Ok(text) => {
                    let value = without_newlines(&text);
                    if value.is_empty() {
                        self.problem(&file_var, format!("the file {path:?} is empty"));
                        None
                    } else {
                        Some(Secret(value))
                    }
                }
                Err(e) => {
                    self.problem(&file_var, format!("cannot read {path:?}: {e}"));
                    None
                }
            },
            (None, None) => None,
        }
    }

    /// `NAME`, or the contents of the file `NAME_FILE` names, as the official image's
    /// `file_env` reads `POSTGRES_USER`, `POSTGRES_DB` and `POSTGRES_INITDB_ARGS`.
    fn var_or_file(&mut self, name: &str) -> Option<String> {
        self.secret(name).map(|s| s.0)
    }

    fn identifier(&mut self, name: &str, default: &str) -> String {
        let value = self.var_or_file(name).unwrap_or_else(|| default.to_string());
        if value.len() > MAX_IDENTIFIER_BYTES {
            self.problem(
                name,
                format!("{} is {} bytes long; at most {MAX_IDENTIFIER_BYTES} are accepted", shown(&value), value.len()),
            );
        } else if value.chars().any(char::is_control) {
            self.problem(
                name,
                format!("{} contains a control character; printable characters are accepted", shown(&value)),
            );
        }
        value
    }

    fn boolean(&mut self, name: &str) -> Option<bool> {
        let value = self.var(name)?;
        let parsed = parse_bool(&value);
        if parsed.is_none() {
            self.problem(
                name,
                format!("{} is not a boolean; accepted: true/false, on/off, yes/no, 1/0", shown(&value)),
            );
        }
        parsed
    }

    fn duration(&mut self, name: &str, default: Duration) -> Duration {
        match self.var(name) {
            None => default,
            Some(value) => parse_duration(&value).unwrap_or_else(|| {
                self.problem(
                    name,
                    format!(
                        "{} is not a duration; accepted: whole seconds (\"120\", \"120s\") or minutes (\"2m\"), up to a day", shown(&value)
                    ),
                );
                default
            }),
        }
    }

    fn port(&mut self, name: &str, default: u16) -> u16 {
        match self.var(name) {
            None => default,
            Some(value) => match value.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => {
                    self.problem(name, format!("{} is not a port; accepted: 1 to 65535", shown(&value)));
                    default
                }
            },
        }
    }

    /// `HTTP_PORT` (default 8008; `0` or `off` disables) and `HTTP_LISTEN` (an IP address).
    fn http(&mut self) -> Option<HttpListen> {
        let port = match self.var("HTTP_PORT") {
            None => DEFAULT_HTTP_PORT,
            Some(off) if off == "0" || off.eq_ignore_ascii_case("off") => return None,
            Some(value) => value.parse::<u16>().unwrap_or_else(|_| {
                self.problem(
                    "HTTP_PORT",
                    format!("{} is not a port; accepted: 1 to 65535, or 0/off to disable", shown(&value)),
                );
                DEFAULT_HTTP_PORT
            }),
        };
        let address = self.var("HTTP_LISTEN").and_then(|a| match a.trim_matches(['[', ']']).parse() {
            Ok(address) => Some(address),
            Err(_) => {
                self.problem(
                    "HTTP_LISTEN",
                    format!("{a:?} is not an IP address; accepted: e.g. 0.0.0.0, ::, 127.0.0.1"),
                );
                None
            }
        });
        Some(HttpListen { address, port })
    }

    fn config(&mut self) -> Option<Config> {
        let pgdata = PathBuf::from(self.var("PGDATA").unwrap_or_else(|| DEFAULT_PGDATA.to_string()));
        if !pgdata.is_absolute() {
            self.problem("PGDATA", format!("{:?} is not an absolute path", pgdata));
        } else if pgdata.to_string_lossy().chars().any(char::is_control) {
            self.problem("PGDATA", format!("{pgdata:?} contains a control character"));
        } else if is_system_directory(&pgdata) {
            self.problem(
                "PGDATA",
                format!(
                    "{pgdata:?} is a system directory; accepted: a directory of its own, e.g. /var/lib/postgresql/data"
                ),
            );
        }
        let superuser = self.identifier("POSTGRES_USER", DEFAULT_SUPERUSER);
        if superuser.contains(['"', '$', '\'', '\\']) {
            // initdb refuses them: the bootstrap superuser owns extensions, whose scripts
            // substitute its name unquoted.
            self.problem(
                "POSTGRES_USER",
                format!("{superuser:?} contains one of \" $ ' \\, which initdb does not accept for the superuser"),
            );
        }
        self.role_name_allowed("POSTGRES_USER", &superuser);
        let database = self.identifier("POSTGRES_DB", &superuser.clone());
        if ["template0", "template1"].contains(&database.as_str()) {
            self.problem("POSTGRES_DB", format!("{database:?} is a template database; accepted: any other name"));
        }
        let host_auth_method = self.var("POSTGRES_HOST_AUTH_METHOD").unwrap_or_else(|| "scram-sha-256".to_string());
        if !ACCEPTED_AUTH_METHODS.contains(&host_auth_method.as_str()) {
            self.problem(
                "POSTGRES_HOST_AUTH_METHOD",
                format!("{host_auth_method:?} is not accepted; accepted: {}", ACCEPTED_AUTH_METHODS.join(", ")),
            );
        }
        // Needed to create a cluster, not to start one: see [`Config::password_problem`].
        let superuser_password = self.secret("POSTGRES_PASSWORD");
        let initdb_args: Vec<String> = self
            .var_or_file("POSTGRES_INITDB_ARGS")
            .map(|a| a.split_whitespace().map(String::from).collect())
            .unwrap_or_default();
        if initdb_args.iter().any(|a| a.starts_with("-D") || a.starts_with("--pgdata")) {
            self.problem(
                "POSTGRES_INITDB_ARGS",
                "sets the data directory (-D/--pgdata); accepted: other initdb options (the directory is PGDATA)",
            );
        }
        let initdb_waldir = self.var("POSTGRES_INITDB_WALDIR").map(PathBuf::from);
        if initdb_waldir.as_deref().is_some_and(|w| !w.is_absolute()) {
            self.problem("POSTGRES_INITDB_WALDIR", "must be an absolute path");
        }
        let init_scripts_dir =
            PathBuf::from(self.var("INIT_SCRIPTS_DIR").unwrap_or_else(|| DEFAULT_INIT_SCRIPTS_DIR.to_string()));
        let bindir = self.var("PG_BINDIR").map(PathBuf::from);
        let shutdown_timeout = self.duration("SHUTDOWN_TIMEOUT", crate::pid1::supervise::DEFAULT_SHUTDOWN_TIMEOUT);
        let http = self.http();
        if let Some(level) = self.var("LOG_LEVEL").filter(|l| parse_log_level(l).is_none()) {
            self.problem("LOG_LEVEL", format!("{level:?} is not accepted; accepted: error, warn, info, debug, trace"));
        }
        if let Some(format) = self.var("LOG_FORMAT").filter(|f| parse_log_format(f).is_none()) {
            self.problem("LOG_FORMAT", format!("{format:?} is not accepted; accepted: text, json"));
        }
        let overrides = self.overrides();
        let tls = self.tls();
        let upgrade = self.upgrade();
        let role = self.role(&superuser, http.as_ref())?;
        if matches!(role, Role::Primary(_) | Role::Patroni(_)) {
            self.check_primary_overrides(&overrides);
        }
        // Patroni's REST API takes the HTTP port; ours stays off.
        let http = if matches!(role, Role::Patroni(_)) { None } else { http };
        if matches!(role, Role::Patroni(_)) {
            self.patroni_quotable("POSTGRES_PASSWORD", superuser_password.as_ref());
        }
        if matches!(role, Role::Patroni(_)) && superuser_password.is_none() && host_auth_method != "trust" {
            // Patroni connects as the superuser over TCP too (pg_rewind from the new leader).
            self.problem(
                "POSTGRES_PASSWORD",
                "is required with HA_MODE=patroni (or POSTGRES_PASSWORD_FILE): Patroni connects to the other \
                 members as the superuser",
            );
        }
        let layout = Layout::from_overrides(&overrides);
        Some(Config {
            pgdata,
            superuser,
            superuser_password,
            database,
            initdb_args,
            initdb_waldir,
            host_auth_method,
            role,
            overrides,
            init_scripts_dir,
            bindir,
            shutdown_timeout,
            http,
            tls,
            upgrade,
            layout,
        })
    }

    fn overrides(&mut self) -> Vec<(String, String)> {
        let mut overrides: Vec<(String, String)> = Vec::new();
        for (var, value) in self.inputs.vars_with_prefix(OVERRIDE_PREFIX) {
            if self.inputs.not_utf8(&var) {
                self.problem(&var, "is not valid UTF-8; accepted: UTF-8 text");
                continue;
            }
            if value.is_empty() {
                continue; // empty counts as unset, as for every variable
            }
            let name = var[OVERRIDE_PREFIX.len()..].to_ascii_lowercase();
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
                && !name.starts_with(['.', '_'])
                && !name.ends_with('.');
            if !valid {
                self.problem(
                    &var,
                    "is not a setting name; accepted: POSTGRESQL_CONFIG_<NAME> with letters, digits, '_' and '.'",
                );
            } else if ["include", "include_dir", "include_if_exists"].contains(&name.as_str()) {
                self.problem(
                    &var,
                    "is an include directive, not a setting: it would bypass the settings refused here; \
                     accepted: POSTGRESQL_CONFIG_<NAME> for each setting",
                );
            } else if ["data_directory", "config_file", "hba_file", "ident_file"].contains(&name.as_str()) {
                self.problem(
                    &var,
                    "cannot be overridden: pg-entrypoint manages where the data and configuration files are",
                );
            } else {
                overrides.push((name, value));
            }
        }
        overrides.sort();
        overrides
    }

    /// Overrides that would make a primary unable to serve its replicas.
    fn check_primary_overrides(&mut self, overrides: &[(String, String)]) {
        for (name, value) in overrides {
            let lower = value.to_ascii_lowercase();
            if name == "wal_level" && !["replica", "logical"].contains(&lower.as_str()) {
                self.problem(
                    "POSTGRESQL_CONFIG_WAL_LEVEL",
                    format!("{value:?} cannot stream to replicas; accepted on a primary: replica, logical"),
                );
            }
            if name == "max_wal_senders" && lower.trim() == "0" {
                self.problem(
                    "POSTGRESQL_CONFIG_MAX_WAL_SENDERS",
                    "0 cannot serve replicas; accepted on a primary: 1 or more",
                );
            }
        }
    }

    fn role(&mut self, superuser: &str, http: Option<&HttpListen>) -> Option<Role> {
        let ha_mode = self.var("HA_MODE");
        let (mut native, mut patroni) = match ha_mode.as_deref() {
            None => (false, false),
            Some("native") => (true, false),
            Some("patroni") => (false, true),
            Some(other) => {
                self.problem(
                    "HA_MODE",
                    format!("{other:?} is not accepted; accepted: native, patroni, or unset for a standalone server"),
                );
                (false, false)
            }
        };
        // The original image's switches: USE_PATRONI=true means HA_MODE=patroni.
        for var in ["USE_PATRONI", "PATRONI_ENABLE"] {
            match (self.boolean(var), ha_mode.as_deref()) {
                (Some(true), Some("native")) => {
                    self.problem(var, "is true while HA_MODE=native; only one HA method at a time: set HA_MODE=patroni, or disable Patroni");
                    native = false;
                }
                (Some(false), Some("patroni")) => {
                    self.problem(var, "is false while HA_MODE=patroni; set one of them");
                }
                (Some(true), _) => patroni = true,
                _ => {}
            }
        }
        for var in ["USE_CITUS", "CITUS_ENABLE"] {
            if self.boolean(var) == Some(true) {
                self.problem(var, "is true, but Citus is not in this image; accepted: false, or unset");
            }
        }

        let role_name = self.role_name();
        if patroni {
            return self.patroni(superuser, role_name, http);
        }
        if !native {
            if let Some((var, value)) = role_name {
                if ha_mode.is_none() {
                    self.problem(
                        var,
                        format!("is {value:?} but HA_MODE is not set; set HA_MODE=native for replication"),
                    );
                }
            }
            return Some(Role::Standalone);
        }
        let sync = self.sync_settings();
        let (user, password) = self.replication_account(superuser, "native");
        let previous_password = self.secret("REPLICATION_PASSWORD_PREVIOUS");
        if previous_password.as_ref().is_some_and(|p| p.expose().contains(['\n', '\r'])) {
            self.problem("REPLICATION_PASSWORD_PREVIOUS", "contains a line break; any other character is accepted");
        }
        let role = match role_name {
            None => {
                self.problem(
                    "REPLICATION_ROLE",
                    "is required with HA_MODE=native; accepted: primary, replica, auto (alias ROLE)",
                );
                return None;
            }
            Some((_, value)) if value == "primary" => "primary",
            Some((_, value)) if value == "replica" => "replica",
            Some((_, value)) if value == "auto" => "auto",
            Some((var, value)) => {
                self.problem(var, format!("{value:?} is not accepted; accepted: primary, replica, auto"));
                return None;
            }
        };
        let hostname = self.inputs.hostname();
        let ordinal = if role == "auto" { self.ordinal(&hostname) } else { None };
        let replica = match role {
            "replica" => self.replica_settings(None),
            "auto" => {
                let default_host = ordinal
                    .as_ref()
                    .and_then(|(set, _)| self.var("POD_SERVICE").map(|service| format!("{set}-0.{service}")));
                self.replica_settings(Some(default_host))
            }
            _ => None,
        };
        let mut peers = self.peers();
        if role == "auto" {
            // One REPLICATION_PEERS for the whole pod template: each pod skips itself.
            let short = hostname.split('.').next().unwrap_or_default();
            peers.retain(|p| p.host != short && !p.host.starts_with(&format!("{short}.")));
            if peers.is_empty() {
                self.problem(
                    "REPLICATION_PEERS",
                    "is required with REPLICATION_ROLE=auto: every member's address (e.g. pg-0.pg,pg-1.pg,pg-2.pg; \
                     each pod skips its own), so that a restarted pod finds a member promoted meanwhile",
                );
            }
        }
        let replication = Replication { user, password: password?, sync, peers, previous_password };
        let replica = replica.map(|(primary_host, primary_port, name, wait_timeout, reclone)| Replica {
            replication: replication.clone(),
            primary_host,
            primary_port,
            name,
            wait_timeout,
            reclone,
        });
        Some(match (role, replica) {
            ("auto", Some(replica)) => Role::Auto(Box::new(Auto { ordinal: ordinal?.1, replica })),
            (_, Some(replica)) => Role::Replica(replica),
            (_, None) => Role::Primary(replication),
        })
    }

    /// The StatefulSet ordinal in the host name, for REPLICATION_ROLE=auto: (set, ordinal).
    fn ordinal(&mut self, hostname: &str) -> Option<(String, u32)> {
        let found = statefulset_ordinal(hostname);
        if found.is_none() {
            self.problem(
                "REPLICATION_ROLE",
                format!(
                    "is auto, but the host name {hostname:?} has no StatefulSet ordinal; accepted: auto in a \
                     StatefulSet pod (host name <name>-<ordinal>, e.g. pg-0), else primary or replica"
                ),
            );
        }
        found
    }

    /// `REPLICATION_USER` and `REPLICATION_PASSWORD`, needed by both HA modes.
    fn replication_account(&mut self, superuser: &str, mode: &str) -> (String, Option<Secret>) {
        let user = self.identifier("REPLICATION_USER", "replicator");
        self.role_name_allowed("REPLICATION_USER", &user);
        if user == superuser {
            self.problem(
                "REPLICATION_USER",
                format!("{user:?} is also POSTGRES_USER; the replication role must be a separate role"),
            );
        }
        let password = self.secret("REPLICATION_PASSWORD");
        if password.as_ref().is_some_and(|p| p.expose().contains(['\n', '\r'])) {
            // Replicas read it from a password file, which is line-based.
            self.problem("REPLICATION_PASSWORD", "contains a line break; any other character is accepted");
        }
        if password.is_none()
            && self.var("REPLICATION_PASSWORD_FILE").is_none()
            && self.var("REPLICATION_PASSWORD").is_none()
        {
            self.problem(
                "REPLICATION_PASSWORD",
                format!("is required with HA_MODE={mode} (or REPLICATION_PASSWORD_FILE)"),
            );
        }
        (user, password)
    }

    /// `HA_MODE=patroni`: Patroni chooses the primary, so the native role variables are
    /// refused rather than silently ignored.
    fn patroni(
        &mut self,
        superuser: &str,
        role_name: Option<(&'static str, String)>,
        http: Option<&HttpListen>,
    ) -> Option<Role> {
        if let Some((var, _)) = role_name {
            self.problem(var, "is set, but with HA_MODE=patroni Patroni decides which member is the primary; unset it");
        }
        for var in ["PRIMARY_HOST", "REPLICATION_PEERS", "REPLICATION_SYNCHRONOUS_REPLICAS"] {
            if self.var(var).is_some() {
                self.problem(
                    var,
                    "is for HA_MODE=native; with HA_MODE=patroni Patroni finds the members in etcd: unset it",
                );
            }
        }
        let scope = self.var("PATRONI_SCOPE").unwrap_or_else(|| "pg".to_string());
        if !scope.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) || scope.starts_with('.') {
            self.problem(
                "PATRONI_SCOPE",
                format!("{scope:?} is not accepted; accepted: letters, digits, '-', '_' and '.' (e.g. pg)"),
            );
        }
        let name = self.var("PATRONI_NAME").unwrap_or_else(|| self.inputs.hostname());
        if name.is_empty() {
            self.problem("PATRONI_NAME", "is empty and the hostname is unknown; set PATRONI_NAME");
        } else if !is_application_name(&name) || name.len() > MAX_IDENTIFIER_BYTES {
            self.problem(
                "PATRONI_NAME",
                format!("{name:?} is not accepted; accepted: up to {MAX_IDENTIFIER_BYTES} printable ASCII characters"),
            );
        }
        let etcd_hosts = self.etcd_hosts();
        let synchronous = match self.var("REPLICATION_SYNCHRONOUS_MODE").map(|v| v.to_ascii_lowercase()).as_deref() {
            None | Some("off") | Some("false") => PatroniSync::Off,
            Some("on") | Some("true") | Some("first") => PatroniSync::On,
            Some("strict") => PatroniSync::Strict,
            Some(other) => {
                self.problem(
                    "REPLICATION_SYNCHRONOUS_MODE",
                    format!("{other:?} is not accepted with HA_MODE=patroni; accepted: off, on, strict"),
                );
                PatroniSync::Off
            }
        };
        let synchronous_count = match self.var("REPLICATION_SYNCHRONOUS_COUNT") {
            None => 1,
            Some(value) => value.parse::<u32>().ok().filter(|n| (1..=100).contains(n)).unwrap_or_else(|| {
                self.problem(
                    "REPLICATION_SYNCHRONOUS_COUNT",
                    format!("{value:?} is not accepted; accepted: a whole number from 1 to 100"),
                );
                1
            }),
        };
        let advertise_host = self.var("ADVERTISE_HOST");
        if let Some(host) =
            advertise_host.as_ref().filter(|h| h.chars().any(|c| c.is_control() || c.is_whitespace() || c == '/'))
        {
            self.problem("ADVERTISE_HOST", format!("{host:?} is not accepted; accepted: a host name or an IP address"));
        }
        let rest_api = match http {
            Some(listen) => listen.clone(),
            None => {
                self.problem(
                    "HTTP_PORT",
                    "is off, but Patroni needs its REST API; accepted with HA_MODE=patroni: 1 to 65535",
                );
                HttpListen { address: None, port: DEFAULT_HTTP_PORT }
            }
        };
        let (replication_user, password) = self.replication_account(superuser, "patroni");
        self.patroni_quotable("REPLICATION_PASSWORD", password.as_ref());
        let (rest_api_user, rest_api_password) = self.patroni_rest_api_credentials();
        Some(Role::Patroni(Box::new(Patroni {
            scope,
            name,
            etcd_hosts,
            replication_user,
            replication_password: password?,
            synchronous,
            synchronous_count,
            advertise_host,
            rest_api,
            rest_api_user,
            // Missing is a problem already reported; the other checks still run.
            rest_api_password: rest_api_password.unwrap_or_else(|| Secret(String::new())),
        })))
    }

    /// Without credentials, anyone who reaches Patroni's REST API could change the cluster's
    /// configuration (an `archive_command` runs any shell command), restart it or fail it over:
    /// a Patroni member never starts without them.
    fn patroni_rest_api_credentials(&mut self) -> (String, Option<Secret>) {
        let user =
            self.var_or_file("PATRONI_RESTAPI_USERNAME").unwrap_or_else(|| DEFAULT_PATRONI_RESTAPI_USER.to_string());
        if user.contains(':') || user.chars().any(char::is_control) || user.len() > MAX_IDENTIFIER_BYTES {
            self.problem(
                "PATRONI_RESTAPI_USERNAME",
                format!(
                    "{} is not accepted; accepted: up to {MAX_IDENTIFIER_BYTES} printable characters without ':'",
                    shown(&user)
                ),
            );
        }
        let password = self.secret("PATRONI_RESTAPI_PASSWORD");
        if password.as_ref().is_some_and(|p| p.expose().chars().any(char::is_control)) {
            self.problem("PATRONI_RESTAPI_PASSWORD", "contains a control character; printable characters are accepted");
        }
        if password.is_none() && self.var("PATRONI_RESTAPI_PASSWORD_FILE").is_none() {
            self.problem(
                "PATRONI_RESTAPI_PASSWORD",
                "is required with HA_MODE=patroni (or PATRONI_RESTAPI_PASSWORD_FILE): without it anyone who reaches \
                 Patroni's REST API could change the configuration, restart or fail over the cluster \
                 (docker/up.sh generates one)",
            );
        }
        (user, password)
    }

    /// Patroni sets the passwords with SQL it quotes as Latin-1 and then decodes as UTF-8
    /// (Patroni 3.0's `quote_literal`), which fails on any other character than ASCII: refused
    /// here rather than as a failed bootstrap.
    fn patroni_quotable(&mut self, variable: &str, password: Option<&Secret>) {
        if password.is_some_and(|p| !p.expose().is_ascii()) {
            self.problem(
                variable,
                "contains a character outside ASCII, which Patroni cannot set as a password; accepted with \
                 HA_MODE=patroni: ASCII characters",
            );
        }
    }

    /// `ETCD_HOSTS=host[:port],...` (port 2379 by default). Patroni's own `PATRONI_ETCD3_*`
    /// variables are read by Patroni itself and win; with one of them, or with
    /// `PATRONI_KUBERNETES_*` (the Kubernetes API as the store), `ETCD_HOSTS` may be unset.
    fn etcd_hosts(&mut self) -> Vec<Address> {
        let etcd3 = ["PATRONI_ETCD3_HOSTS", "PATRONI_ETCD3_HOST", "PATRONI_ETCD3_URL", "PATRONI_ETCD3_PROXY"];
        let kubernetes = ["NAMESPACE", "LABELS", "USE_ENDPOINTS", "POD_IP", "PORTS", "SCOPE_LABEL", "ROLE_LABEL"]
            .map(|suffix| format!("PATRONI_KUBERNETES_{suffix}"));
        let on_kubernetes = kubernetes.iter().find(|v| self.var(v).is_some()).cloned();
        let Some(value) = self.var("ETCD_HOSTS") else {
            if on_kubernetes.is_none() && !etcd3.iter().any(|v| self.var(v).is_some()) {
                self.problem(
                    "ETCD_HOSTS",
                    "is required with HA_MODE=patroni: the etcd members, e.g. etcd1:2379,etcd2:2379,etcd3:2379 \
                     (or Patroni's own PATRONI_ETCD3_HOSTS, or PATRONI_KUBERNETES_* for the Kubernetes API)",
                );
            }
            return Vec::new();
        };
        if let Some(variable) = on_kubernetes {
            self.problem(
                "ETCD_HOSTS",
                format!("is set, and so is {variable}: Patroni keeps its state in one store; unset one of them"),
            );
        }
        let mut hosts = Vec::new();
        for item in value.split(',').map(str::trim) {
            match parse_address(item, 2379) {
                Some(address) if !item.contains("://") => hosts.push(address),
                _ => self.problem(
                    "ETCD_HOSTS",
                    format!("{item:?} is not an etcd address; accepted: a comma-separated list of host, host:port or [ipv6]:port"),
                ),
            }
        }
        hosts
    }

    /// Role names PostgreSQL reserves: `pg_*`, and the special names.
    fn role_name_allowed(&mut self, variable: &str, name: &str) {
        let lower = name.to_ascii_lowercase();
        let special = ["public", "none", "current_role", "current_user", "session_user"];
        if lower.starts_with("pg_") || special.contains(&lower.as_str()) {
            self.problem(
                variable,
                format!(
                    "{name:?} is reserved by PostgreSQL (pg_* and {}); accepted: any other name",
                    special.join(", ")
                ),
            );
        }
    }

    /// `REPLICATION_PEERS=host[:port],...`: the other members of the cluster.
    fn peers(&mut self) -> Vec<Address> {
        let Some(value) = self.var("REPLICATION_PEERS") else { return Vec::new() };
        let mut peers = Vec::new();
        for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match parse_address(item, 5432) {
                Some(address) => peers.push(address),
                None => self.problem(
                    "REPLICATION_PEERS",
                    format!(
                        "{item:?} is not an address; accepted: a comma-separated list of host, host:port or [ipv6]:port"
                    ),
                ),
            }
        }
        peers
    }

    /// `REPLICATION_ROLE` or its alias `ROLE`: (variable that gave it, lower-cased value).
    fn role_name(&mut self) -> Option<(&'static str, String)> {
        let long = self.var("REPLICATION_ROLE").map(|v| v.to_ascii_lowercase());
        let short = self.var("ROLE").map(|v| v.to_ascii_lowercase());
        match (long, short) {
            (Some(a), Some(b)) if a != b => {
                self.problem("REPLICATION_ROLE", format!("{a:?} disagrees with ROLE={b:?}; set one of them"));
                Some(("REPLICATION_ROLE", a))
            }
            (Some(a), _) => Some(("REPLICATION_ROLE", a)),
            (None, Some(b)) => Some(("ROLE", b)),
            (None, None) => None,
        }
    }

    /// `auto_default`: for REPLICATION_ROLE=auto, the primary host when PRIMARY_HOST is unset
    /// (`None` inside: POD_SERVICE is unset too).
    fn replica_settings(
        &mut self,
        auto_default: Option<Option<String>>,
    ) -> Option<(String, u16, String, Duration, bool)> {
        let host = self.var("PRIMARY_HOST").or(auto_default.clone().flatten());
        match &host {
            None if auto_default.is_some() => self.problem(
                "PRIMARY_HOST",
                "is required with REPLICATION_ROLE=auto unless POD_SERVICE names the StatefulSet's headless \
                 service (the default primary is then <name>-0.<POD_SERVICE>)",
            ),
            None => self.problem("PRIMARY_HOST", "is required for a replica: the host name or address of the primary"),
            Some(h) if h.chars().any(|c| c.is_control() || c.is_whitespace()) => self.problem(
                "PRIMARY_HOST",
                format!("{h:?} contains a space or control character; accepted: a host name or an address"),
            ),
            Some(_) => {}
        }
        let port = self.port("PRIMARY_PORT", 5432);
        let name_var = if self.var("REPLICA_NAME").is_none() && self.var("REPLICATION_APPNAME").is_some() {
            "REPLICATION_APPNAME"
        } else {
            "REPLICA_NAME"
        };
        let hostname = self.inputs.hostname();
        let name = self.identifier(name_var, &hostname);
        if name.is_empty() {
            self.problem("REPLICA_NAME", "is empty and the hostname is unknown; set REPLICA_NAME");
        } else if !is_application_name(&name) {
            self.problem(name_var, format!("{name:?} {NOT_KEPT_IN_APPLICATION_NAME}"));
        }
        let timeout = self.duration("PRIMARY_WAIT_TIMEOUT", Duration::from_secs(120));
        let reclone = self.boolean("REPLICA_RECLONE").unwrap_or(false);
        Some((host?, port, name, timeout, reclone))
    }

    fn sync_settings(&mut self) -> SyncSettings {
        let mode = match self.var("REPLICATION_SYNCHRONOUS_MODE").map(|v| v.to_ascii_lowercase()).as_deref() {
            None | Some("off") | Some("false") => SyncMode::Off,
            Some("on") | Some("true") | Some("first") => SyncMode::First,
            Some("any") => SyncMode::Any,
            Some(other) => {
                self.problem(
                    "REPLICATION_SYNCHRONOUS_MODE",
                    format!("{other:?} is not accepted; accepted: off/false, on/true, any (quorum), first (priority)"),
                );
                SyncMode::Off
            }
        };
        let count = match self.var("REPLICATION_SYNCHRONOUS_COUNT") {
            None => 1,
            Some(value) => match value.parse::<u32>() {
                Ok(n) if n >= 1 && n <= i32::MAX as u32 => n,
                _ => {
                    self.problem(
                        "REPLICATION_SYNCHRONOUS_COUNT",
                        format!("{value:?} is not accepted; accepted: a whole number from 1 to {}", i32::MAX),
                    );
                    1
                }
            },
        };
        let names_value = self.var("REPLICATION_SYNCHRONOUS_REPLICAS").unwrap_or_else(|| "*".to_string());
        let names: Vec<String> = names_value.split(',').map(|n| n.trim().to_string()).collect();
        if names.iter().any(|n| n.is_empty() || n.chars().any(char::is_control)) {
            self.problem(
                "REPLICATION_SYNCHRONOUS_REPLICAS",
                format!("{names_value:?} has an empty or unprintable name; accepted: a comma-separated list of replica names, or *"),
            );
        }
        for n in names.iter().filter(|n| *n != "*" && !is_application_name(n)) {
            self.problem("REPLICATION_SYNCHRONOUS_REPLICAS", format!("{n:?} {NOT_KEPT_IN_APPLICATION_NAME}"));
        }
        let slots: Vec<String> = names.iter().map(|n| slot_name(n)).collect::<Vec<String>>();
        if let Some((i, j)) = (0..names.len())
            .flat_map(|i| (i + 1..names.len()).map(move |j| (i, j)))
            .find(|&(i, j)| names[i] != "*" && slots[i] == slots[j])
        {
            self.problem(
                "REPLICATION_SYNCHRONOUS_REPLICAS",
                format!(
                    "{:?} and {:?} would share the replication slot {:?}; accepted: names that differ in letters or digits",
                    names[i], names[j], slots[i]
                ),
            );
        }
        let explicit = names.iter().all(|n| n != "*");
        if explicit && count as usize > names.len() {
            self.problem(
                "REPLICATION_SYNCHRONOUS_COUNT",
                format!(
                    "{count} is more than the {} name(s) in REPLICATION_SYNCHRONOUS_REPLICAS; accepted: 1 to {}",
                    names.len(),
                    names.len()
                ),
            );
        }
        SyncSettings { mode, count, names }
    }
}

/// A physical slot name from a replica name: lower-case letters, digits and `_`, at most 63.
/// `pg-2` (or `pg-2.pg.default.svc...`) → `("pg", 2)`: a StatefulSet pod's set name and ordinal.
pub fn statefulset_ordinal(hostname: &str) -> Option<(String, u32)> {
    let short = hostname.split('.').next()?;
    let (set, digits) = short.rsplit_once('-')?;
    let ordinal = digits.parse().ok().filter(|_| !set.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))?;
    Some((set.to_string(), ordinal))
}

pub fn slot_name(replica_name: &str) -> String {
    let mut slot: String =
        replica_name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    slot.truncate(63);
    slot
}

/// PostgreSQL turns any character outside printable ASCII in `application_name` into `?`, so
/// a name with one never matches `synchronous_standby_names` and commits wait for ever.
fn is_application_name(name: &str) -> bool {
    name.chars().all(|c| c.is_ascii() && !c.is_ascii_control())
}

const NOT_KEPT_IN_APPLICATION_NAME: &str =
    "has characters PostgreSQL does not keep in application_name (it keeps printable ASCII); accepted: printable ASCII";

/// `LOG_LEVEL`, in any case.
pub fn parse_log_level(value: &str) -> Option<tracing::Level> {
    match value.to_ascii_lowercase().as_str() {
        "error" => Some(tracing::Level::ERROR),
        "warn" => Some(tracing::Level::WARN),
        "info" => Some(tracing::Level::INFO),
        "debug" => Some(tracing::Level::DEBUG),
        "trace" => Some(tracing::Level::TRACE),
        _ => None,
    }
}

/// `LOG_FORMAT`: true for JSON lines, false for text.
pub fn parse_log_format(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "text" => Some(false),
        "json" => Some(true),
        _ => None,
    }
}

/// Directories of the operating system that must never become a data directory (root would
/// hand them to the postgres user).
fn is_system_directory(path: &Path) -> bool {
    const SYSTEM: &[&str] = &[
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/home",
        "/lib",
        "/lib64",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/srv",
        "/sys",
        "/tmp",
        "/usr",
        "/var",
        "/var/lib",
        "/var/run",
        "/var/log",
        "/usr/local",
        "/usr/local/bin",
        "/usr/bin",
        "/usr/lib",
    ];
    let normal: PathBuf = path.components().collect();
    SYSTEM.iter().any(|s| normal == Path::new(s))
}

/// `host`, `host:port` or `[ipv6]:port`.
pub fn parse_address(text: &str, default_port: u16) -> Option<Address> {
    let (host, port) = match text.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']')?;
            (host, after.strip_prefix(':'))
        }
        None if text.matches(':').count() == 1 => {
            let (host, port) = text.split_once(':')?;
            (host, Some(port))
        }
        None => (text, None),
    };
    let port = match port {
        None => default_port,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0)?,
    };
    let printable = !host.is_empty() && !host.chars().any(|c| c.is_control() || c.is_whitespace());
    printable.then(|| Address { host: host.to_string(), port })
}

pub fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" => Some(true),
        "false" | "off" | "no" | "0" => Some(false),
        _ => None,
    }
}

fn parse_duration(value: &str) -> Option<Duration> {
    let value = value.trim();
    let (number, unit) = match value.strip_suffix('s') {
        Some(n) => (n, 1),
        None => match value.strip_suffix('m') {
            Some(n) => (n, 60),
            None => (value, 1),
        },
    };
    // At most a day: longer is a typo, and far-future deadlines overflow.
    number.parse::<u64>().ok().and_then(|n| n.checked_mul(unit)).filter(|s| *s <= 86_400).map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_knows_itself_among_its_peers() {
        let at = |host: &str, port| Address { host: host.into(), port };
        assert!(at("pg-0", 5432).is_self(5432, "pg-0"));
        assert!(at("DB.example", 5432).is_self(5432, "db.example"));
        assert!(!at("pg-0", 5433).is_self(5432, "pg-0"));
        // Another host whose name shares a first label is another member.
        assert!(!at("db.dc2.example", 5432).is_self(5432, "db"));
        assert!(!at("db", 5432).is_self(5432, "db.dc1.example"));
        // Loopback is this host: only the port tells members on one host apart.
        assert!(at("127.0.0.1", 55511).is_self(55511, ""));
        assert!(at("[::1]", 55511).is_self(55511, ""));
        assert!(!at("127.0.0.1", 55512).is_self(55511, ""));
        assert!(!at("10.0.0.1", 5432).is_self(5432, ""), "an address is not resolved or bound");
    }

    fn inputs(vars: &[(&str, &str)]) -> MapInputs {
        MapInputs::with(vars, "host-a")
    }

    fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_inputs(&inputs(vars))
    }

    fn problems(vars: &[(&str, &str)]) -> Vec<String> {
        parse(vars).expect_err("expected a configuration error").0.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_http_endpoint_is_on_by_default_and_can_be_moved_or_disabled() {
        let c = parse(&[("POSTGRES_PASSWORD", "pw")]).unwrap();
        assert_eq!(c.http, Some(HttpListen { address: None, port: 8008 }));
        assert_eq!(c.http.unwrap().candidates().len(), 2, "IPv6 and IPv4 both tried");
        for off in ["0", "off", "OFF"] {
            assert_eq!(parse(&[("POSTGRES_PASSWORD", "pw"), ("HTTP_PORT", off)]).unwrap().http, None);
        }
        let c = parse(&[("POSTGRES_PASSWORD", "pw"), ("HTTP_PORT", "9000"), ("HTTP_LISTEN", "[::1]")]).unwrap();
        assert_eq!(c.http.unwrap().candidates(), ["[::1]:9000".parse().unwrap()]);
        let p = problems(&[("POSTGRES_PASSWORD", "pw"), ("HTTP_PORT", "http"), ("HTTP_LISTEN", "localhost")]);
        assert_eq!(
            p,
            [
                "HTTP_PORT: \"http\" is not a port; accepted: 1 to 65535, or 0/off to disable",
                "HTTP_LISTEN: \"localhost\" is not an IP address; accepted: e.g. 0.0.0.0, ::, 127.0.0.1"
            ]
        );
    }

    #[test]
    fn defaults_match_the_official_image() {
        let c = parse(&[("POSTGRES_PASSWORD", "pw")]).unwrap();
        assert_eq!(c.pgdata, PathBuf::from("/var/lib/postgresql/data"));
        assert_eq!(c.superuser, "postgres");
        assert_eq!(c.database, "postgres");
        assert_eq!(c.host_auth_method, "scram-sha-256");
        assert_eq!(c.role, Role::Standalone);
        assert_eq!(c.init_scripts_dir, PathBuf::from("/docker-entrypoint-initdb.d"));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(8));
    }

    #[test]
    fn peers_are_addresses_with_a_default_port() {
        let primary =
            [("POSTGRES_PASSWORD", "pw"), ("HA_MODE", "native"), ("ROLE", "primary"), ("REPLICATION_PASSWORD", "r")];
        let mut vars = primary.to_vec();
        vars.push(("REPLICATION_PEERS", "replica-1, 10.0.0.3:6432,[::1]:5433,"));
        let c = parse(&vars).unwrap();
        let addr = |h: &str, p| Address { host: h.into(), port: p };
        assert_eq!(
            c.replication().unwrap().peers,
            [addr("replica-1", 5432), addr("10.0.0.3", 6432), addr("::1", 5433)]
        );
        vars.pop();
        vars.push(("REPLICATION_PEERS", "a b,db:99999"));
        assert_eq!(
            problems(&vars),
            [
                "REPLICATION_PEERS: \"a b\" is not an address; accepted: a comma-separated list of host, host:port or [ipv6]:port",
                "REPLICATION_PEERS: \"db:99999\" is not an address; accepted: a comma-separated list of host, host:port or [ipv6]:port",
            ]
        );
    }

    #[test]
    fn paths_hosts_log_settings_and_includes_are_checked() {
        let out = problems(&[
            ("POSTGRES_PASSWORD", "pw"),
            ("PGDATA", "/usr/"),
            ("LOG_LEVEL", "loud"),
            ("LOG_FORMAT", "xml"),
            ("POSTGRESQL_CONFIG_INCLUDE_DIR", "/etc"),
            ("POSTGRESQL_CONFIG_WORK_MEM", ""),
        ]);
        assert_eq!(
            out,
            [
                "PGDATA: \"/usr/\" is a system directory; accepted: a directory of its own, e.g. /var/lib/postgresql/data",
                "LOG_LEVEL: \"loud\" is not accepted; accepted: error, warn, info, debug, trace",
                "LOG_FORMAT: \"xml\" is not accepted; accepted: text, json",
                "POSTGRESQL_CONFIG_INCLUDE_DIR: is an include directive, not a setting: it would bypass the settings \
                 refused here; accepted: POSTGRESQL_CONFIG_<NAME> for each setting",
            ]
        );
        assert!(problems(&[("POSTGRES_PASSWORD", "pw"), ("PGDATA", "/data\n2")])[0].contains("control character"));
        let replica = [
            ("POSTGRES_PASSWORD", "pw"),
            ("HA_MODE", "native"),
            ("ROLE", "replica"),
            ("REPLICATION_PASSWORD", "r"),
            ("PRIMARY_HOST", "db 1"),
        ];
        assert!(problems(&replica)[0].starts_with("PRIMARY_HOST: \"db 1\" contains a space"));
        // An empty override counts as unset.
        let c =
            parse(&[("POSTGRES_PASSWORD", "pw"), ("POSTGRESQL_CONFIG_WORK_MEM", ""), ("LOG_LEVEL", "WARN")]).unwrap();
        assert!(c.overrides.is_empty());
    }

    #[test]
    fn reserved_names_and_names_postgres_would_alter_are_refused() {
        let out = problems(&[
            ("POSTGRES_PASSWORD", "pw"),
            ("POSTGRES_USER", "pg_admin"),
            ("POSTGRES_DB", "template1"),
            ("POSTGRES_INITDB_ARGS", "--data-checksums -D /elsewhere"),
        ]);
        assert!(out[0].starts_with("POSTGRES_USER: \"pg_admin\" is reserved by PostgreSQL"), "{out:?}");
        assert!(out[1].starts_with("POSTGRES_DB: \"template1\" is a template database"), "{out:?}");
        assert!(out[2].starts_with("POSTGRES_INITDB_ARGS: sets the data directory"), "{out:?}");
        let replica = [
            ("POSTGRES_PASSWORD", "pw"),
            ("HA_MODE", "native"),
            ("ROLE", "replica"),
            ("REPLICATION_PASSWORD", "r"),
            ("PRIMARY_HOST", "db"),
            ("REPLICATION_USER", "public"),
            ("REPLICA_NAME", "réplica"),
            ("REPLICATION_SYNCHRONOUS_MODE", "any"),
            ("REPLICATION_SYNCHRONOUS_REPLICAS", "a-b,a_b"),
            ("REPLICATION_SYNCHRONOUS_COUNT", "3000000000"),
        ];
        let out = problems(&replica);
        assert!(out.iter().any(|p| p.starts_with("REPLICATION_USER: \"public\" is reserved")), "{out:?}");
        assert!(
            out.iter().any(|p| p.starts_with("REPLICA_NAME: \"réplica\" has characters PostgreSQL does not keep")),
            "{out:?}"
        );
        assert!(
            out.iter().any(|p| p.contains("\"a-b\" and \"a_b\" would share the replication slot \"a_b\"")),
            "{out:?}"
        );
        assert!(out.iter().any(|p| p.starts_with("REPLICATION_SYNCHRONOUS_COUNT: \"3000000000\"")), "{out:?}");
    }

    #[test]
    fn database_defaults_to_the_user() {
        let c = parse(&[("POSTGRES_PASSWORD", "pw"), ("POSTGRES_USER", "alice")]).unwrap();
        assert_eq!(c.database, "alice");
    }

    #[test]
    fn password_is_required_only_to_create_a_cluster_unless_trust() {
        let c = parse(&[]).unwrap();
        assert!(c.password_problem(false).is_none(), "an initialised volume starts without it");
        let err = c.password_problem(true).unwrap().to_string();
        assert!(err.contains("POSTGRES_PASSWORD: is required to initialise an empty PGDATA"), "{err}");
        assert!(parse(&[("POSTGRES_HOST_AUTH_METHOD", "trust")]).unwrap().password_problem(true).is_none());
        let replica =
            parse(&[("HA_MODE", "native"), ("ROLE", "replica"), ("REPLICATION_PASSWORD", "r"), ("PRIMARY_HOST", "p")]);
        assert!(replica.unwrap().password_problem(true).is_none(), "a replica clones, it does not initdb");
    }

    #[test]
    fn the_official_images_file_variables_are_read_from_files() {
        let mut i = inputs(&[
            ("POSTGRES_PASSWORD", "pw"),
            ("POSTGRES_USER_FILE", "/run/secrets/user"),
            ("POSTGRES_DB_FILE", "/run/secrets/db"),
            ("POSTGRES_INITDB_ARGS_FILE", "/run/secrets/args"),
        ]);
        i.files.insert("/run/secrets/user".into(), "alice\n".into());
        i.files.insert("/run/secrets/db".into(), "app\n".into());
        i.files.insert("/run/secrets/args".into(), "--data-checksums\n".into());
        let c = Config::from_inputs(&i).unwrap();
        assert_eq!((c.superuser.as_str(), c.database.as_str()), ("alice", "app"));
        assert_eq!(c.initdb_args, ["--data-checksums"]);
        i.vars.insert("POSTGRES_USER".into(), "bob".into());
        let err = Config::from_inputs(&i).unwrap_err().to_string();
        assert!(err.contains("both POSTGRES_USER and POSTGRES_USER_FILE are set"), "{err}");
    }

    #[test]
    fn auto_takes_the_ordinal_from_the_host_name() {
        let vars: &[(&str, &str)] = &[
            ("POSTGRES_PASSWORD", "pw"),
            ("HA_MODE", "native"),
            ("REPLICATION_ROLE", "auto"),
            ("REPLICATION_PASSWORD", "r"),
            ("POD_SERVICE", "pg"),
            ("REPLICATION_PEERS", "pg-0.pg,pg-1.pg:5433,pg-2.pg"),
        ];
        let auto = |hostname: &str| Config::from_inputs(&MapInputs::with(vars, hostname));
        let Role::Auto(one) = auto("pg-1").unwrap().role else { panic!("not auto") };
        assert_eq!(one.ordinal, 1);
        assert_eq!((one.replica.primary_host.as_str(), one.replica.name.as_str()), ("pg-0.pg", "pg-1"));
        let peers: Vec<String> = one.replica.replication.peers.iter().map(ToString::to_string).collect();
        assert_eq!(peers, ["pg-0.pg:5432", "pg-2.pg:5432"], "its own entry is skipped");
        let Role::Auto(zero) = auto("pg-0").unwrap().role else { panic!("not auto") };
        assert_eq!(zero.ordinal, 0);
        assert_eq!(statefulset_ordinal("db-cluster-12.pg.ns.svc"), Some(("db-cluster".into(), 12)));
        for hostname in ["pg-x", "web", "pg-", "-3", "pg-+1"] {
            let err = auto(hostname).unwrap_err().to_string();
            assert!(
                err.contains(&format!("REPLICATION_ROLE: is auto, but the host name {hostname:?} has no StatefulSet")),
                "{err}"
            );
        }
        // No POD_SERVICE and no PRIMARY_HOST; no peers but itself.
        let mut bare: Vec<(&str, &str)> = vars.iter().filter(|(k, _)| *k != "POD_SERVICE").copied().collect();
        let err = Config::from_inputs(&MapInputs::with(&bare, "pg-1")).unwrap_err().to_string();
        assert!(err.contains("PRIMARY_HOST: is required with REPLICATION_ROLE=auto unless POD_SERVICE"), "{err}");
        bare.push(("PRIMARY_HOST", "db-main"));
        bare.retain(|(k, _)| *k != "REPLICATION_PEERS");
        bare.push(("REPLICATION_PEERS", "pg-1"));
        let err = Config::from_inputs(&MapInputs::with(&bare, "pg-1")).unwrap_err().to_string();
        assert!(err.contains("REPLICATION_PEERS: is required with REPLICATION_ROLE=auto"), "{err}");
    }

    #[test]
    fn secret_from_file_loses_trailing_newlines_only() {
        let mut i = inputs(&[("POSTGRES_PASSWORD_FILE", "/run/secrets/pw")]);
        i.files.insert("/run/secrets/pw".into(), " p a$s\n\n".into());
        let c = Config::from_inputs(&i).unwrap();
        assert_eq!(c.superuser_password.unwrap().expose(), " p a$s");
    }

    #[test]
    fn both_secret_forms_is_an_error_that_does_not_echo_the_secret() {
        let mut i = inputs(&[("POSTGRES_PASSWORD", "hunter2"), ("POSTGRES_PASSWORD_FILE", "/f")]);
        i.files.insert("/f".into(), "x".into());
        let err = Config::from_inputs(&i).unwrap_err().to_string();
        assert!(err.contains("both POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE are set"), "{err}");
        assert!(!err.contains("hunter2"));
    }

    #[test]
    fn unreadable_secret_file_names_the_variable() {
        let p = problems(&[("POSTGRES_PASSWORD_FILE", "/nope")]);
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("POSTGRES_PASSWORD_FILE: cannot read \"/nope\""), "{p:?}");
    }

    #[test]
    fn all_problems_are_reported_together() {
        let p = problems(&[
            ("HA_MODE", "paxos"),
            ("POSTGRES_HOST_AUTH_METHOD", "ident"),
            ("PGDATA", "relative/dir"),
            ("SHUTDOWN_TIMEOUT", "soon"),
        ]);
        let vars: Vec<&str> = p.iter().map(|s| s.split(':').next().unwrap()).collect();
        assert_eq!(vars, ["PGDATA", "POSTGRES_HOST_AUTH_METHOD", "SHUTDOWN_TIMEOUT", "HA_MODE"], "{p:?}");
    }

    #[test]
    fn native_primary() {
        let c = parse(&[
            ("POSTGRES_PASSWORD", "pw"),
            ("HA_MODE", "native"),
            ("ROLE", "Primary"),
            ("REPLICATION_PASSWORD", "rpw"),
        ])
        .unwrap();
        let Role::Primary(r) = c.role else { panic!("not a primary: {:?}", c.role) };
        assert_eq!(r.user, "replicator");
        assert_eq!(r.password.expose(), "rpw");
        assert_eq!(r.sync, SyncSettings { mode: SyncMode::Off, count: 1, names: vec!["*".into()] });
    }

    #[test]
    fn native_needs_role_and_replication_password() {
        let p = problems(&[("POSTGRES_PASSWORD", "pw"), ("HA_MODE", "native")]);
        assert_eq!(
            p,
            [
                "REPLICATION_PASSWORD: is required with HA_MODE=native (or REPLICATION_PASSWORD_FILE)",
                "REPLICATION_ROLE: is required with HA_MODE=native; accepted: primary, replica, auto (alias ROLE)",
            ]
        );
    }

    #[test]
    fn role_and_alias_must_agree() {
        let p = problems(&[
            ("POSTGRES_PASSWORD", "pw"),
            ("HA_MODE", "native"),
            ("REPLICATION_PASSWORD", "r"),
            ("REPLICATION_ROLE", "primary"),
            ("ROLE", "replica"),
        ]);
        assert_eq!(p, ["REPLICATION_ROLE: \"primary\" disagrees with ROLE=\"replica\"; set one of them"]);
    }

    #[test]
    fn role_without_ha_mode_is_an_error() {
        let p = problems(&[("POSTGRES_PASSWORD", "pw"), ("REPLICATION_ROLE", "replica")]);
        assert_eq!(p, ["REPLICATION_ROLE: is \"replica\" but HA_MODE is not set; set HA_MODE=native for replication"]);
    }

    #[test]
    fn replica_needs_primary_host_and_takes_hostname_as_name() {
        let native =
            [("POSTGRES_PASSWORD", "pw"), ("HA_MODE", "native"), ("ROLE", "replica"), ("REPLICATION_PASSWORD", "r")];
        assert_eq!(
            problems(&native),
            ["PRIMARY_HOST: is required for a replica: the host name or address of the primary"]
        );
        let mut vars = native.to_vec();
        vars.push(("PRIMARY_HOST", "db-primary"));
        let Role::Replica(r) = parse(&vars).unwrap().role else { panic!() };
        assert_eq!((r.primary_host.as_str(), r.primary_port, r.name.as_str()), ("db-primary", 5432, "host-a"));
        assert_eq!(r.wait_timeout, Duration::from_secs(120));
        vars.push(("REPLICATION_APPNAME", "replica-2"));
        vars.push(("PRIMARY_WAIT_TIMEOUT", "2m"));
        let Role::Replica(r) = parse(&vars).unwrap().role else { panic!() };
        assert_eq!(r.name, "replica-2");
        assert_eq!(r.wait_timeout, Duration::from_secs(120));
    }

    #[test]
    fn patroni_or_citus_with_native_is_an_error() {
        let p = problems(&[
            ("POSTGRES_PASSWORD", "pw"),
            ("HA_MODE", "native"),
            ("ROLE", "primary"),
            ("REPLICATION_PASSWORD", "r"),
            ("PATRONI_ENABLE", "YES"),
            ("USE_CITUS", "1"),
        ]);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].starts_with("PATRONI_ENABLE: is true while HA_MODE=native; only one HA method"));
        assert_eq!(p[1], "USE_CITUS: is true, but Citus is not in this image; accepted: false, or unset");
        assert_eq!(
            problems(&[("POSTGRES_PASSWORD", "pw"), ("HA_MODE", "patroni"), ("USE_PATRONI", "false")])[0],
            "USE_PATRONI: is false while HA_MODE=patroni; set one of them"
        );
        assert_eq!(
            problems(&[("POSTGRES_PASSWORD", "pw"), ("USE_CITUS", "maybe")]),
            ["USE_CITUS: \"maybe\" is not a boolean; accepted: true/false, on/off, yes/no, 1/0"]
        );
    }

    const PATRONI: [(&str, &str); 5] = [
        ("POSTGRES_PASSWORD", "pw"),
        ("REPLICATION_PASSWORD", "r"),
        ("PATRONI_RESTAPI_PASSWORD", "api"),
        ("ETCD_HOSTS", "etcd1, etcd2:2390"),
        ("USE_PATRONI", "yes"),
    ];

    #[test]
    fn patroni_member() {
        let mut vars = PATRONI.to_vec();
        vars.extend([("REPLICATION_SYNCHRONOUS_MODE", "on"), ("HTTP_PORT", "8009")]);
        let c = parse(&vars).unwrap();
        let Role::Patroni(m) = &c.role else { panic!("{:?}", c.role) };
        assert_eq!((m.scope.as_str(), m.name.as_str()), ("pg", "host-a"));
        let hosts: Vec<String> = m.etcd_hosts.iter().map(ToString::to_string).collect();
        assert_eq!(hosts, ["etcd1:2379", "etcd2:2390"]);
        assert_eq!((m.synchronous, m.synchronous_count, m.rest_api.port), (PatroniSync::On, 1, 8009));
        assert_eq!(c.http, None, "our endpoint stays off: Patroni's REST API has the port");
        assert_eq!(c.replication(), None);
        assert_eq!((m.rest_api_user.as_str(), m.rest_api_password.expose()), ("patroni", "api"));
    }

    #[test]
    fn patroni_needs_rest_api_credentials() {
        let mut vars = PATRONI.to_vec();
        vars.retain(|(k, _)| *k != "PATRONI_RESTAPI_PASSWORD");
        let p = problems(&vars);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("PATRONI_RESTAPI_PASSWORD: is required with HA_MODE=patroni"), "{p:?}");
        vars.extend([("PATRONI_RESTAPI_PASSWORD", "a\u{7}b"), ("PATRONI_RESTAPI_USERNAME", "ad:min")]);
        let p = problems(&vars);
        assert!(p[0].starts_with("PATRONI_RESTAPI_USERNAME: \"ad:min\" is not accepted"), "{p:?}");
        assert!(p[1].starts_with("PATRONI_RESTAPI_PASSWORD: contains a control character"), "{p:?}");
        assert!(!p.iter().any(|p| p.contains("a\u{7}b")), "the password is never echoed: {p:?}");
    }

    #[test]
    fn patroni_refuses_what_it_decides_itself() {
        let mut vars = PATRONI.to_vec();
        vars.retain(|(k, _)| *k != "ETCD_HOSTS" && *k != "POSTGRES_PASSWORD");
        vars.extend([
            ("ROLE", "replica"),
            ("PRIMARY_HOST", "pg-0"),
            ("REPLICATION_SYNCHRONOUS_MODE", "any"),
            ("HTTP_PORT", "off"),
            ("PATRONI_SCOPE", "a/b"),
        ]);
        let p = problems(&vars);
        let vars: Vec<&str> = p.iter().map(|s| s.split(':').next().unwrap()).collect();
        assert_eq!(
            vars,
            [
                "ROLE",
                "PRIMARY_HOST",
                "PATRONI_SCOPE",
                "ETCD_HOSTS",
                "REPLICATION_SYNCHRONOUS_MODE",
                "HTTP_PORT",
                "POSTGRES_PASSWORD"
            ],
            "{p:?}"
        );
        assert!(p[0].contains("Patroni decides which member is the primary"), "{p:?}");
        let bad_etcd = problems(&[PATRONI[0], PATRONI[1], PATRONI[2], PATRONI[4], ("ETCD_HOSTS", "http://etcd1:2379")]);
        assert_eq!(
            bad_etcd,
            ["ETCD_HOSTS: \"http://etcd1:2379\" is not an etcd address; accepted: a comma-separated list of host, host:port or [ipv6]:port"]
        );
        // Patroni's own variable is enough.
        assert!(parse(&[PATRONI[0], PATRONI[1], PATRONI[2], PATRONI[4], ("PATRONI_ETCD3_HOSTS", "'e1:2379'")]).is_ok());
        // Or the Kubernetes API as Patroni's store, but not both stores.
        assert!(
            parse(&[PATRONI[0], PATRONI[1], PATRONI[2], PATRONI[4], ("PATRONI_KUBERNETES_NAMESPACE", "db")]).is_ok()
        );
        let both = problems(&[
            PATRONI[0],
            PATRONI[1],
            PATRONI[2],
            PATRONI[4],
            ("ETCD_HOSTS", "etcd1"),
            ("PATRONI_KUBERNETES_USE_ENDPOINTS", "true"),
        ]);
        assert_eq!(
            both,
            ["ETCD_HOSTS: is set, and so is PATRONI_KUBERNETES_USE_ENDPOINTS: Patroni keeps its state in one store; unset one of them"]
        );
    }

    #[test]
    fn sync_count_cannot_exceed_names() {
        let p = problems(&[
            ("POSTGRES_PASSWORD", "pw"),
            ("HA_MODE", "native"),
            ("ROLE", "primary"),
            ("REPLICATION_PASSWORD", "r"),
            ("REPLICATION_SYNCHRONOUS_MODE", "any"),
            ("REPLICATION_SYNCHRONOUS_COUNT", "3"),
            ("REPLICATION_SYNCHRONOUS_REPLICAS", "replica-1, replica-2"),
        ]);
        assert_eq!(
            p,
            ["REPLICATION_SYNCHRONOUS_COUNT: 3 is more than the 2 name(s) in REPLICATION_SYNCHRONOUS_REPLICAS; accepted: 1 to 2"]
        );
    }

    #[test]
    fn overrides_are_lower_cased_sorted_and_checked() {
        let c = parse(&[
            ("POSTGRES_PASSWORD", "pw"),
            ("POSTGRESQL_CONFIG_WORK_MEM", "8MB"),
            ("POSTGRESQL_CONFIG_MAX_CONNECTIONS", "200"),
        ])
        .unwrap();
        assert_eq!(c.overrides, [("max_connections".into(), "200".into()), ("work_mem".into(), "8MB".into())]);
        let p =
            problems(&[("POSTGRES_PASSWORD", "pw"), ("POSTGRESQL_CONFIG_HBA_FILE", "/x"), ("POSTGRESQL_CONFIG_", "1")]);
        assert_eq!(p.len(), 2, "{p:?}");
    }

    #[test]
    fn a_primary_cannot_turn_off_wal_for_replicas() {
        let p = problems(&[
            ("POSTGRES_PASSWORD", "pw"),
            ("HA_MODE", "native"),
            ("ROLE", "primary"),
            ("REPLICATION_PASSWORD", "r"),
            ("POSTGRESQL_CONFIG_WAL_LEVEL", "minimal"),
        ]);
        assert_eq!(p, ["POSTGRESQL_CONFIG_WAL_LEVEL: \"minimal\" cannot stream to replicas; accepted on a primary: replica, logical"]);
    }

    #[test]
    fn identifiers_are_bounded_and_printable() {
        let long = "x".repeat(64);
        let p = problems(&[("POSTGRES_PASSWORD", "pw"), ("POSTGRES_USER", &long), ("POSTGRES_DB", "a\nb")]);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].starts_with("POSTGRES_USER:") && p[0].contains("64 bytes long; at most 63"));
        assert!(p[1].starts_with("POSTGRES_DB:") && p[1].contains("control character"));
        // Quotes, spaces and unicode are fine: they are quoted wherever they are used.
        assert!(parse(&[("POSTGRES_PASSWORD", "pw"), ("POSTGRES_USER", "Al ice-O.Neil ü")]).is_ok());
        assert!(parse(&[("POSTGRES_PASSWORD", "pw"), ("POSTGRES_DB", "d\"b'$\\")]).is_ok());
        assert_eq!(
            problems(&[("POSTGRES_PASSWORD", "pw"), ("POSTGRES_USER", "o'neil")]),
            ["POSTGRES_USER: \"o'neil\" contains one of \" $ ' \\, which initdb does not accept for the superuser"]
        );
    }

    #[test]
    fn booleans_and_durations() {
        for (s, b) in [
            ("TRUE", true),
            ("on", true),
            ("Yes", true),
            ("1", true),
            ("false", false),
            ("OFF", false),
            ("no", false),
            ("0", false),
        ] {
            assert_eq!(parse_bool(s), Some(b), "{s}");
        }
        assert_eq!(parse_bool("y"), None);
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("3m"), Some(Duration::from_secs(180)));
        assert_eq!(parse_duration("-1"), None);
        assert_eq!(parse_duration("999999999999999999m"), None);
        assert_eq!(parse_duration("86401"), None);
    }
}
