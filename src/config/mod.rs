//! The environment becomes one typed, validated [`Config`]. Pure: the caller hands in the
//! variables and a way to read `*_FILE` secrets, so every rule is unit-tested directly.
//!
//! All problems are collected and reported together; each names the variable, the bad value
//! (never a secret's) and what is accepted.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub mod backup;
mod inputs;
pub mod known;
pub mod layout;
mod native;
mod parser;
mod patroni;
pub mod pooler;
mod server;
mod tls;
mod upgrade;
#[cfg(test)]
pub use inputs::MapInputs;
pub use inputs::{read_regular, secret_environment, var_or_file, Inputs, ProcessInputs};
pub use layout::{Layout, DEFAULT_SOCKET_DIR};
pub use native::slot_name;
use parser::Parser;
pub use parser::{
    parse_address, parse_bool, parse_log_format, parse_log_level, translated_patroni_names, var_or_alias,
};
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
    /// `PG_HBA_ADD_<n>`: the user's `pg_hba.conf` rules, first in our managed block.
    pub hba_added: Vec<String>,
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
    /// `PGBACKREST_*`: archiving, backups, a restore at start; `None` when off.
    pub backup: Option<backup::Backup>,
    /// `PGBOUNCER_ENABLE`: PgBouncer in front of this member; `None` when off.
    pub pooler: Option<pooler::Pooler>,
    /// Where our files live, from the effective settings once the start knows them.
    pub layout: Layout,
    /// Variables that look like ours but are not (misspelt?), each with a hint: warned about.
    pub unknown_variables: Vec<Problem>,
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
    /// Patroni's timings and choices, written to `bootstrap.dcs` (so they apply when the
    /// cluster is created in etcd; later, `patronictl edit-config`).
    pub dcs: PatroniDcs,
}

/// `PATRONI_TTL`, `_LOOP_WAIT`, `_RETRY_TIMEOUT`, `_MAX_LAG`, `_USE_PG_REWIND`, `_USE_SLOTS`
/// (the upstream image's names). By default: a leader cut off from etcd loses its key after
/// `ttl` 20 s; Patroni requires `loop_wait + 2 * retry_timeout <= ttl`. Shorter means faster
/// failover and more false ones when etcd or the network stalls (docs/patroni.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatroniDcs {
    pub ttl: u32,
    pub loop_wait: u32,
    pub retry_timeout: u32,
    /// A replica further behind than this (bytes) is not promoted automatically.
    pub maximum_lag_on_failover: u64,
    pub use_pg_rewind: bool,
    pub use_slots: bool,
}

impl Default for PatroniDcs {
    fn default() -> PatroniDcs {
        PatroniDcs {
            ttl: 20,
            loop_wait: 5,
            retry_timeout: 5,
            maximum_lag_on_failover: 1_048_576,
            use_pg_rewind: true,
            use_slots: true,
        }
    }
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
    /// `REPLICA_CLONE_METHOD=pgbackrest`: made from the repository's latest backup (no load on
    /// the primary), then streaming; pg_basebackup when the repository cannot serve.
    pub clone_from_repository: bool,
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
pub const OVERRIDE_PREFIX: &str = "POSTGRESQL_CONFIG_";
/// Variables that hold secrets: never passed to postgres, the PostgreSQL tools or a decompressor.
pub const SECRET_VARS: [&str; 4] =
    ["POSTGRES_PASSWORD", "REPLICATION_PASSWORD", "REPLICATION_PASSWORD_PREVIOUS", "PATRONI_RESTAPI_PASSWORD"];
/// Every variable that can hold a secret, ours and the upstream image's name for one: removed
/// from the environment of every child (postgres, the tools, Patroni, a decompressor).
pub const SECRET_ENVIRONMENT: [&str; 5] =
    [SECRET_VARS[0], SECRET_VARS[1], SECRET_VARS[2], SECRET_VARS[3], "PATRONI_REPLICATION_PASSWORD"];
/// Patroni's REST API user when `PATRONI_RESTAPI_USERNAME` is not set.
pub const DEFAULT_PATRONI_RESTAPI_USER: &str = "patroni";

/// initdb's default superuser, and the official image's.
pub const DEFAULT_SUPERUSER: &str = "postgres";

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
        let mut p = Parser { inputs, problems: Vec::new(), from_alias: Vec::new() };
        let config = p.config();
        match config {
            Some(config) if p.problems.is_empty() => Ok(config),
            _ => {
                // A misspelt variable is a likely cause of the problems: named with them.
                let misspelt = p.unknown_variables();
                p.problems.extend(misspelt);
                Err(ConfigError(p.problems))
            }
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

#[cfg(test)]
mod tests;
