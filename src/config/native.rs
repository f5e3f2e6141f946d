//! `HA_MODE=native`: the role (primary, replica, auto), the replication account, the peers,
//! how a replica follows its primary, and synchronous replication.

use std::time::Duration;

use super::parser::{parse_address, PATRONI_ONLY};
use super::*;

/// Which of the three the environment asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HaMode {
    Standalone,
    Native,
    Patroni,
}

/// A native member's role as `REPLICATION_ROLE` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NativeRole {
    Primary,
    Replica,
    Auto,
}

/// `REPLICATION_ROLE` or its alias `ROLE` as given (lower case), and which of them gave it.
pub(super) struct RoleVariable {
    pub(super) variable: &'static str,
    pub(super) value: String,
}

/// How a replica follows its primary: a [`Replica`] without its replication account.
struct Upstream {
    primary_host: String,
    primary_port: u16,
    name: String,
    wait_timeout: Duration,
    reclone: bool,
    clone_from_repository: bool,
}

impl Upstream {
    fn with(self, replication: Replication) -> Replica {
        let Upstream { primary_host, primary_port, name, wait_timeout, reclone, clone_from_repository } = self;
        Replica { replication, primary_host, primary_port, name, wait_timeout, reclone, clone_from_repository }
    }
}

impl Parser<'_> {
    pub(super) fn role(&mut self, superuser: &str, http: Option<&HttpListen>) -> Option<Role> {
        let ha_variable = self.var("HA_MODE");
        let mode = self.ha_mode(ha_variable.as_deref());
        let role_variable = self.role_variable();
        if mode != HaMode::Patroni {
            // The upstream image's Patroni settings mean nothing without Patroni.
            for variable in PATRONI_ONLY {
                if self.var(variable).is_some() {
                    self.problem(variable, "is for HA_MODE=patroni (Patroni's settings); unset it");
                }
            }
        }
        match mode {
            HaMode::Patroni => return self.patroni(superuser, role_variable, http),
            HaMode::Standalone => {
                if let (Some(RoleVariable { variable, value }), None) = (&role_variable, &ha_variable) {
                    self.problem(
                        variable,
                        format!("is {value:?} but HA_MODE is not set; set HA_MODE=native for replication"),
                    );
                }
                return Some(Role::Standalone);
            }
            HaMode::Native => {}
        }
        // Ours to render (the majority rule sets its floor): an override could lower it.
        if self.var("POSTGRESQL_CONFIG_SYNCHRONOUS_STANDBY_NAMES").is_some() {
            self.problem(
                "POSTGRESQL_CONFIG_SYNCHRONOUS_STANDBY_NAMES",
                "is rendered from REPLICATION_SYNCHRONOUS_MODE/_COUNT/_REPLICAS with HA_MODE=native (the majority \
                 rule sets its floor); set those instead, or `pg-entrypoint sync` at run time",
            );
        }
        let sync = self.sync_settings();
        let (user, password) = self.replication_account(superuser, "native");
        let previous_password = self.secret("REPLICATION_PASSWORD_PREVIOUS");
        if previous_password.as_ref().is_some_and(|p| p.expose().contains(['\n', '\r'])) {
            self.problem("REPLICATION_PASSWORD_PREVIOUS", "contains a line break; any other character is accepted");
        }
        let role = match role_variable {
            None => {
                self.problem(
                    "REPLICATION_ROLE",
                    "is required with HA_MODE=native; accepted: primary, replica, auto (alias ROLE)",
                );
                return None;
            }
            Some(given) => match given.value.as_str() {
                "primary" => NativeRole::Primary,
                "replica" => NativeRole::Replica,
                "auto" => NativeRole::Auto,
                other => {
                    self.problem(
                        given.variable,
                        format!("{other:?} is not accepted; accepted: primary, replica, auto"),
                    );
                    return None;
                }
            },
        };
        let hostname = self.inputs.hostname();
        let ordinal = if role == NativeRole::Auto { self.ordinal(&hostname) } else { None };
        let upstream = match role {
            NativeRole::Primary => None,
            NativeRole::Replica => self.upstream(None),
            NativeRole::Auto => {
                let default_host = ordinal
                    .as_ref()
                    .and_then(|(set, _)| self.var("POD_SERVICE").map(|service| format!("{set}-0.{service}")));
                self.upstream(Some(default_host))
            }
        };
        let mut peers = self.peers();
        if role == NativeRole::Auto {
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
        // A follower without an upstream had its problem recorded already.
        Some(match role {
            NativeRole::Primary => Role::Primary(replication),
            NativeRole::Replica => Role::Replica(upstream?.with(replication)),
            NativeRole::Auto => {
                Role::Auto(Box::new(Auto { ordinal: ordinal?.1, replica: upstream?.with(replication) }))
            }
        })
    }

    /// `HA_MODE`, and the original image's switches: `USE_PATRONI=true` (or `PATRONI_ENABLE`)
    /// means `HA_MODE=patroni`. Citus is refused.
    fn ha_mode(&mut self, ha_variable: Option<&str>) -> HaMode {
        let mut mode = match ha_variable {
            None => HaMode::Standalone,
            Some("native") => HaMode::Native,
            Some("patroni") => HaMode::Patroni,
            Some(other) => {
                self.problem(
                    "HA_MODE",
                    format!("{other:?} is not accepted; accepted: native, patroni, or unset for a standalone server"),
                );
                HaMode::Standalone
            }
        };
        for var in ["USE_PATRONI", "PATRONI_ENABLE"] {
            match (self.boolean(var), ha_variable) {
                (Some(true), Some("native")) => {
                    self.problem(var, "is true while HA_MODE=native; only one HA method at a time: set HA_MODE=patroni, or disable Patroni");
                    mode = HaMode::Standalone;
                }
                (Some(false), Some("patroni")) => {
                    self.problem(var, "is false while HA_MODE=patroni; set one of them");
                }
                (Some(true), _) => mode = HaMode::Patroni,
                _ => {}
            }
        }
        for var in ["USE_CITUS", "CITUS_ENABLE"] {
            if self.boolean(var) == Some(true) {
                self.problem(var, "is true, but Citus is not in this image; accepted: false, or unset");
            }
        }
        mode
    }

    /// The StatefulSet ordinal in the host name, for REPLICATION_ROLE=auto: (set, ordinal).
    pub(super) fn ordinal(&mut self, hostname: &str) -> Option<(String, u32)> {
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
    pub(super) fn replication_account(&mut self, superuser: &str, mode: &str) -> (String, Option<Secret>) {
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

    /// `REPLICATION_PEERS=host[:port],...`: the other members of the cluster.
    pub(super) fn peers(&mut self) -> Vec<Address> {
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

    /// `REPLICATION_ROLE` or its alias `ROLE`.
    fn role_variable(&mut self) -> Option<RoleVariable> {
        let long = self.var("REPLICATION_ROLE").map(|v| v.to_ascii_lowercase());
        let short = self.var("ROLE").map(|v| v.to_ascii_lowercase());
        match (long, short) {
            (Some(a), Some(b)) if a != b => {
                self.problem("REPLICATION_ROLE", format!("{a:?} disagrees with ROLE={b:?}; set one of them"));
                Some(RoleVariable { variable: "REPLICATION_ROLE", value: a })
            }
            (Some(a), _) => Some(RoleVariable { variable: "REPLICATION_ROLE", value: a }),
            (None, Some(b)) => Some(RoleVariable { variable: "ROLE", value: b }),
            (None, None) => None,
        }
    }

    /// `auto_default`: for REPLICATION_ROLE=auto, the primary host when PRIMARY_HOST is unset
    /// (`None` inside: POD_SERVICE is unset too).
    fn upstream(&mut self, auto_default: Option<Option<String>>) -> Option<Upstream> {
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
        let wait_timeout = self.duration("PRIMARY_WAIT_TIMEOUT", Duration::from_secs(120));
        let reclone = self.boolean("REPLICA_RECLONE").unwrap_or(false);
        let clone_from_repository = match self.var("REPLICA_CLONE_METHOD").as_deref() {
            None | Some("basebackup") => false,
            Some("pgbackrest") if self.boolean("PGBACKREST_ENABLE") == Some(true) => true,
            Some("pgbackrest") => {
                self.problem(
                    "REPLICA_CLONE_METHOD",
                    "is pgbackrest, which needs PGBACKREST_ENABLE=true and its repository",
                );
                false
            }
            Some(other) => {
                self.problem(
                    "REPLICA_CLONE_METHOD",
                    format!("{other:?} is not accepted; accepted: basebackup, pgbackrest"),
                );
                false
            }
        };
        Some(Upstream { primary_host: host?, primary_port: port, name, wait_timeout, reclone, clone_from_repository })
    }

    pub(super) fn sync_settings(&mut self) -> SyncSettings {
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
        let count = self.whole_number("REPLICATION_SYNCHRONOUS_COUNT", 1, i32::MAX as u32);
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
pub(super) fn is_application_name(name: &str) -> bool {
    name.chars().all(|c| c.is_ascii() && !c.is_ascii_control())
}

pub(super) const NOT_KEPT_IN_APPLICATION_NAME: &str =
    "has characters PostgreSQL does not keep in application_name (it keeps printable ASCII); accepted: printable ASCII";
