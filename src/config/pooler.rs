//! `PGBOUNCER_*`, the upstream image's names: PgBouncer in front of this member's server
//! (docs/switchover.md, "Pooling").

use super::parser::Parser;
use super::{Config, Role, Secret};

/// How PgBouncer hands server connections to clients (its `pool_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    Session,
    Transaction,
    Statement,
}

impl PoolMode {
    pub fn name(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
            PoolMode::Statement => "statement",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pooler {
    pub port: u16,
    /// PgBouncer's `listen_addr`: `*`, or addresses separated by commas.
    pub listen_addr: String,
    pub pool_mode: PoolMode,
    pub max_client_conn: u32,
    pub default_pool_size: u32,
    /// How clients over TCP authenticate: `scram-sha-256` or `md5`.
    pub auth_type: String,
    pub admin_users: Vec<String>,
    pub stats_users: Vec<String>,
}

/// The role PgBouncer's `auth_query` runs as: it may read the password hashes through one
/// function and nothing else.
pub const AUTH_USER: &str = "pgbouncer";

/// [`AUTH_USER`]'s password: derived from the superuser's (`POSTGRES_PASSWORD`, which
/// every member has), so every member computes the same one and none is stored but
/// PgBouncer's copy (0600). `None` without one (`POSTGRES_HOST_AUTH_METHOD=trust`).
pub fn auth_password(config: &Config) -> Option<Secret> {
    use hmac::{Hmac, KeyInit, Mac};
    let key = config.superuser_password.as_ref()?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.expose().as_bytes()).ok()?;
    mac.update(b"pg-entrypoint: PgBouncer's auth_user");
    let digest = mac.finalize().into_bytes();
    Some(Secret(digest.iter().map(|b| format!("{b:02x}")).collect()))
}

impl Parser<'_> {
    /// `None` unless `PGBOUNCER_ENABLE` is true (false: the others are ignored, as upstream).
    pub(super) fn pooler(
        &mut self,
        role: &Role,
        postgres_port: u16,
        superuser_password: bool,
        host_auth_method: &str,
    ) -> Option<Pooler> {
        match self.boolean("PGBOUNCER_ENABLE") {
            Some(true) => {}
            Some(false) => return None,
            None => {
                self.refuse_without_enable("PGBOUNCER_", "no pooler would run");
                return None;
            }
        }
        if matches!(role, Role::Patroni(_)) {
            self.problem("PGBOUNCER_ENABLE", "is not supported with HA_MODE=patroni in this version; unset it");
        }
        // PgBouncer logs in over TCP with each client's credentials, and as its own role with
        // a password derived from the superuser's.
        if host_auth_method == "reject" {
            self.problem(
                "PGBOUNCER_ENABLE",
                "needs clients over TCP, which POSTGRES_HOST_AUTH_METHOD=reject (EXTERNAL_ACCESS_ENABLE=false) refuses",
            );
        } else if !superuser_password && host_auth_method != "trust" {
            self.problem(
                "PGBOUNCER_ENABLE",
                "needs POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE) on every member: PgBouncer's own role's \
                 password is derived from it",
            );
        }
        let port = self.port("PGBOUNCER_LISTEN_PORT", 6432);
        if port == postgres_port {
            self.problem("PGBOUNCER_LISTEN_PORT", format!("{port} is postgres's port; accepted: another port"));
        }
        let listen_addr = self.var("PGBOUNCER_LISTEN_ADDR").unwrap_or_else(|| "*".into());
        if listen_addr
            .split(',')
            .any(|a| a.trim().is_empty() || a.trim().chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            self.problem(
                "PGBOUNCER_LISTEN_ADDR",
                format!("{listen_addr:?} is not accepted; accepted: *, or addresses separated by commas"),
            );
        }
        let pool_mode = match self.var("PGBOUNCER_POOL_MODE").map(|m| m.to_ascii_lowercase()).as_deref() {
            None | Some("session") => PoolMode::Session,
            Some("transaction") => PoolMode::Transaction,
            Some("statement") => PoolMode::Statement,
            Some(other) => {
                self.problem(
                    "PGBOUNCER_POOL_MODE",
                    format!("{other:?} is not accepted; accepted: session, transaction, statement"),
                );
                PoolMode::Session
            }
        };
        let max_client_conn = self.whole_number("PGBOUNCER_MAX_CLIENT_CONN", 100, 100_000);
        let default_pool_size = self.whole_number("PGBOUNCER_DEFAULT_POOL_SIZE", 20, 10_000);
        let auth_type =
            self.var("PGBOUNCER_AUTH_TYPE").map(|a| a.to_ascii_lowercase()).unwrap_or("scram-sha-256".into());
        if !["scram-sha-256", "md5"].contains(&auth_type.as_str()) {
            self.problem(
                "PGBOUNCER_AUTH_TYPE",
                format!("{auth_type:?} is not accepted; accepted: scram-sha-256, md5 (passwords are checked)"),
            );
        }
        let admin_users = self.users("PGBOUNCER_ADMIN_USERS");
        let stats_users = self.users("PGBOUNCER_STATS_USERS");
        Some(Pooler {
            port,
            listen_addr,
            pool_mode,
            max_client_conn,
            default_pool_size,
            auth_type,
            admin_users,
            stats_users,
        })
    }

    fn users(&mut self, variable: &str) -> Vec<String> {
        let Some(value) = self.var(variable) else { return Vec::new() };
        let users: Vec<String> = value.split(',').map(|u| u.trim().to_string()).collect();
        if users.iter().any(|u| u.is_empty() || u.chars().any(|c| c.is_whitespace() || c.is_control() || c == '"')) {
            self.problem(variable, format!("{value:?} is not accepted; accepted: role names separated by commas"));
        }
        users
    }
}
