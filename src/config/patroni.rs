//! `HA_MODE=patroni`: the cluster and member names, etcd, synchronous mode, the REST API and
//! its credentials, and what Patroni can quote.

use super::native::{is_application_name, RoleVariable};
use super::parser::{parse_address, shown, MAX_IDENTIFIER_BYTES};
use super::*;

impl Parser<'_> {
    /// `HA_MODE=patroni`: Patroni chooses the primary, so the native role variables are
    /// refused rather than silently ignored.
    pub(super) fn patroni(
        &mut self,
        superuser: &str,
        role_variable: Option<RoleVariable>,
        http: Option<&HttpListen>,
    ) -> Option<Role> {
        if let Some(given) = role_variable {
            self.problem(
                given.variable,
                "is set, but with HA_MODE=patroni Patroni decides which member is the primary; unset it",
            );
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
        let synchronous = match self.synchronous_mode_variable().as_deref() {
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
        let synchronous_count = self.whole_number("REPLICATION_SYNCHRONOUS_COUNT", 1, 100);
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
        let dcs = self.patroni_dcs();
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
            dcs,
        })))
    }

    /// `REPLICATION_SYNCHRONOUS_MODE`, or the upstream image's `PATRONI_SYNCHRONOUS_MODE` (true
    /// or false) and `PATRONI_SYNCHRONOUS_MODE_STRICT`, lower-cased; both set and different:
    /// a problem.
    fn synchronous_mode_variable(&mut self) -> Option<String> {
        let ours = self.var("REPLICATION_SYNCHRONOUS_MODE").map(|v| v.to_ascii_lowercase());
        let upstream = match (self.boolean("PATRONI_SYNCHRONOUS_MODE"), self.boolean("PATRONI_SYNCHRONOUS_MODE_STRICT"))
        {
            (Some(true), Some(true)) => Some("strict"),
            (Some(true), _) => Some("on"),
            (Some(false), _) => Some("off"),
            (None, Some(true)) => {
                self.problem("PATRONI_SYNCHRONOUS_MODE_STRICT", "is true without PATRONI_SYNCHRONOUS_MODE=true");
                None
            }
            (None, _) => None,
        };
        for refused in ["PATRONI_SYNCHRONOUS_MODE_TYPE", "PATRONI_SYNCHRONOUS_MODE_TIMEOUT"] {
            if self.var(refused).is_some() {
                self.problem(
                    refused,
                    "is not supported here; accepted: REPLICATION_SYNCHRONOUS_MODE=off, on or strict",
                );
            }
        }
        match (ours, upstream) {
            (Some(a), Some(b)) if normal_sync(&a) != b => {
                self.problem(
                    "PATRONI_SYNCHRONOUS_MODE",
                    format!("means {b:?}, but REPLICATION_SYNCHRONOUS_MODE={a:?}; set one of them"),
                );
                Some(a)
            }
            (Some(a), _) => Some(a),
            (None, b) => b.map(String::from),
        }
    }

    /// Patroni's timings and choices, the upstream image's `PATRONI_*` names, within Patroni's
    /// own rule: `loop_wait + 2 * retry_timeout <= ttl`.
    fn patroni_dcs(&mut self) -> PatroniDcs {
        let default = PatroniDcs::default();
        let ttl = self.whole_number("PATRONI_TTL", default.ttl, 3600);
        let loop_wait = self.whole_number("PATRONI_LOOP_WAIT", default.loop_wait, 3600);
        let retry_timeout = self.whole_number("PATRONI_RETRY_TIMEOUT", default.retry_timeout, 3600);
        // Patroni raises smaller values by itself, silently: refused here instead.
        for (variable, value, least) in
            [("PATRONI_TTL", ttl, 20), ("PATRONI_LOOP_WAIT", loop_wait, 1), ("PATRONI_RETRY_TIMEOUT", retry_timeout, 3)]
        {
            if value < least {
                self.problem(variable, format!("is {value} s; Patroni accepts at least {least}"));
            }
        }
        if loop_wait + 2 * retry_timeout > ttl {
            self.problem(
                "PATRONI_TTL",
                format!(
                    "is {ttl} s, less than PATRONI_LOOP_WAIT ({loop_wait}) + 2 × PATRONI_RETRY_TIMEOUT ({retry_timeout}), \
                     which Patroni requires"
                ),
            );
        }
        let maximum_lag_on_failover = match self.var("PATRONI_MAX_LAG") {
            None => default.maximum_lag_on_failover,
            Some(value) => value.parse::<u64>().unwrap_or_else(|_| {
                self.problem("PATRONI_MAX_LAG", format!("{value:?} is not accepted; accepted: a number of bytes"));
                default.maximum_lag_on_failover
            }),
        };
        for watchdog in ["PATRONI_WATCHDOG_MODE", "PATRONI_WATCHDOG_DEVICE", "PATRONI_WATCHDOG_SAFETY_MARGIN"] {
            if self.var(watchdog).is_some() {
                self.problem(watchdog, "is not supported: containers here have no watchdog device; unset it");
            }
        }
        if self.var("PATRONI_WAL_KEEP_SEGMENTS").is_some() {
            self.problem(
                "PATRONI_WAL_KEEP_SEGMENTS",
                "is wal_keep_segments, gone since PostgreSQL 13; accepted: POSTGRESQL_CONFIG_WAL_KEEP_SIZE (e.g. 1GB)",
            );
        }
        // The upstream image's leader callbacks for pgBackRest: here the backup keeper does that
        // work on the leader whenever backups are on.
        if self.boolean("PATRONI_PGBACKREST_CALLBACKS") == Some(true) && self.boolean("PGBACKREST_ENABLE") != Some(true)
        {
            self.problem(
                "PATRONI_PGBACKREST_CALLBACKS",
                "is true, but PGBACKREST_ENABLE is not; set PGBACKREST_ENABLE=true (the leader then creates the \
                 stanza and takes the scheduled backups)",
            );
        }
        PatroniDcs {
            ttl,
            loop_wait,
            retry_timeout,
            maximum_lag_on_failover,
            use_pg_rewind: self.boolean("PATRONI_USE_PG_REWIND").unwrap_or(default.use_pg_rewind),
            use_slots: self.boolean("PATRONI_USE_SLOTS").unwrap_or(default.use_slots),
        }
    }

    /// Without credentials, anyone who reaches Patroni's REST API could change the cluster's
    /// configuration (an `archive_command` runs any shell command), restart it or fail it over:
    /// a Patroni member never starts without them.
    pub(super) fn patroni_rest_api_credentials(&mut self) -> (String, Option<Secret>) {
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
    pub(super) fn patroni_quotable(&mut self, variable: &str, password: Option<&Secret>) {
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
    pub(super) fn etcd_hosts(&mut self) -> Vec<Address> {
        let etcd3 = ["PATRONI_ETCD3_HOSTS", "PATRONI_ETCD3_HOST", "PATRONI_ETCD3_URL", "PATRONI_ETCD3_PROXY"];
        let kubernetes = ["NAMESPACE", "LABELS", "USE_ENDPOINTS", "POD_IP", "PORTS", "SCOPE_LABEL", "ROLE_LABEL"]
            .map(|suffix| format!("PATRONI_KUBERNETES_{suffix}"));
        let on_kubernetes = kubernetes.iter().find(|v| self.var(v).is_some()).cloned();
        // The upstream image's ETCD_HOST and ETCD_PORT: one member.
        // ETCD_PORT=tcp://... is Kubernetes' link to a Service named etcd, not a port.
        let port = self.var("ETCD_PORT").filter(|p| !known::is_service_link("ETCD_PORT", p));
        let single = self.var("ETCD_HOST").map(|host| match &port {
            Some(port) => format!("{host}:{port}"),
            None => host,
        });
        if single.is_none() && port.is_some() {
            self.problem("ETCD_PORT", "is set without ETCD_HOST; set ETCD_HOSTS=host:port (or ETCD_HOST too)");
        }
        let value = match (self.var("ETCD_HOSTS"), single) {
            (Some(hosts), Some(_)) => {
                self.problem("ETCD_HOST", "is set, and so is ETCD_HOSTS; set ETCD_HOSTS alone (host:port,...)");
                Some(hosts)
            }
            (hosts, single) => hosts.or(single),
        };
        let Some(value) = value else {
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
}

/// A `REPLICATION_SYNCHRONOUS_MODE` value as Patroni mode reads it: off, on or strict.
fn normal_sync(value: &str) -> &str {
    match value {
        "false" => "off",
        "true" | "first" => "on",
        other => other,
    }
}
