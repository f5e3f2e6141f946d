//! PgBouncer's configuration and its hba file, and the SQL that lets its `auth_query` read
//! password hashes through one function. Pure: the caller says where things are.

use std::path::Path;

use crate::config::pooler::{Pooler, AUTH_USER};
use crate::config::{Address, TlsMode};

/// Where PgBouncer sends its clients' queries: always over TCP with each client's own
/// credentials (PgBouncer passes SCRAM through), so that the server checks every login
/// against its own pg_hba.conf and hashes (its Unix socket trusts everyone).
pub enum Target<'a> {
    /// This member's server, on the loopback address.
    Local { port: u16 },
    /// Another member (after a switchover handed this one's role to it).
    Member(&'a Address),
}

/// How PgBouncer's connections to the server use TLS: `sslmode` (libpq's names) and the CA.
pub struct ServerTls<'a> {
    pub sslmode: &'a str,
    pub ca: Option<&'a Path>,
}

/// What else the ini file names.
pub struct Files<'a> {
    pub hba: &'a Path,
    /// [`auth_file`].
    pub auth: &'a Path,
    pub socket_dir: &'a Path,
    /// The server certificate and key (our copies), when TLS is on.
    pub tls: Option<(&'a Path, &'a Path)>,
    pub server_tls: ServerTls<'a>,
}

/// The admin console's user for the entrypoint, on the socket only. No PostgreSQL role can
/// have this name (`pg_` is reserved), so it never meets a client's user in PgBouncer's list.
pub const CONSOLE_USER: &str = "pg_entrypoint";

/// `pgbouncer.ini`.
pub fn ini(pooler: &Pooler, target: &Target, files: &Files, tls: TlsMode) -> String {
    let database = match target {
        Target::Local { port } => format!("host=127.0.0.1 port={port}"),
        Target::Member(address) => format!("host={} port={}", address.host, address.port),
    };
    let mut admins = vec![CONSOLE_USER.to_string()];
    admins.extend(pooler.admin_users.iter().cloned());
    let mut out = format!(
        "# Written by pg-entrypoint from the PGBOUNCER_* variables; edits are lost.\n\
         [databases]\n* = {database}\n\n[pgbouncer]\n\
         listen_addr = {}\nlisten_port = {}\nunix_socket_dir = {}\n\
         auth_type = hba\nauth_hba_file = {}\nauth_file = {}\n\
         auth_user = {AUTH_USER}\nauth_query = SELECT usename, passwd FROM {AUTH_USER}.get_auth($1)\n\
         pool_mode = {}\nmax_client_conn = {}\ndefault_pool_size = {}\n\
         admin_users = {}\n",
        pooler.listen_addr,
        pooler.port,
        files.socket_dir.display(),
        files.hba.display(),
        files.auth.display(),
        pooler.pool_mode.name(),
        pooler.max_client_conn,
        pooler.default_pool_size,
        admins.join(","),
    );
    if !pooler.stats_users.is_empty() {
        out.push_str(&format!("stats_users = {}\n", pooler.stats_users.join(",")));
    }
    // A server that is back (after a switchover, a restart) is tried again within a second,
    // not PgBouncer's default 15; drivers' startup parameters it does not know are ignored.
    out.push_str("server_login_retry = 1\nignore_startup_parameters = extra_float_digits,options\n");
    out.push_str(&format!("server_tls_sslmode = {}\n", files.server_tls.sslmode));
    if let Some(ca) = files.server_tls.ca {
        out.push_str(&format!("server_tls_ca_file = {}\n", ca.display()));
    }
    if let (Some((cert, key)), true) = (files.tls, tls != TlsMode::Off) {
        let mode = if tls == TlsMode::Required { "require" } else { "allow" };
        out.push_str(&format!(
            "client_tls_sslmode = {mode}\nclient_tls_cert_file = {}\nclient_tls_key_file = {}\n",
            cert.display(),
            key.display()
        ));
    }
    out
}

/// PgBouncer's hba file: the entrypoint's console user on the socket (trusted there, as
/// postgres trusts its own socket), everyone else with a password checked against the
/// server's hashes (`auth_query`).
pub fn hba(pooler: &Pooler, tls: TlsMode) -> String {
    let method = &pooler.auth_type;
    let host = if tls == TlsMode::Required { "hostssl" } else { "host" };
    let mut out = format!(
        "local pgbouncer {CONSOLE_USER} trust\nlocal all {CONSOLE_USER} reject\n\
         host all {CONSOLE_USER} 0.0.0.0/0 reject\nhost all {CONSOLE_USER} ::/0 reject\nlocal all all {method}\n"
    );
    if tls == TlsMode::Required {
        out.push_str("hostnossl all all 0.0.0.0/0 reject\nhostnossl all all ::/0 reject\n");
    }
    out.push_str(&format!("{host} all all 0.0.0.0/0 {method}\n{host} all all ::/0 {method}\n"));
    out
}

/// PgBouncer's `auth_file`: the console user with a random password it never needs (the hba
/// file trusts it on the socket and rejects it elsewhere; PgBouncer 1.18 fails on a console
/// user it does not list), and the auth_user's password, when there is one (it logs in with
/// it on another member after a switchover; on this member's socket it needs none).
pub fn auth_file(console_password: &str, auth_user_password: Option<&str>) -> String {
    let line = |user: &str, password: &str| format!("\"{user}\" \"{}\"\n", password.replace('"', "\"\""));
    let mut out = line(CONSOLE_USER, console_password);
    if let Some(password) = auth_user_password {
        out.push_str(&line(AUTH_USER, password));
    }
    out
}

/// On the primary: the role `auth_query` connects as, with its password as a SCRAM
/// `verifier` (the same on every member: it is derived, `config::pooler::auth_password`).
pub fn auth_role_sql(verifier: Option<&str>) -> String {
    let mut sql = format!(
        "DO $pgep$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{AUTH_USER}') THEN CREATE ROLE {AUTH_USER} LOGIN; END IF;
END $pgep$;\n"
    );
    if let Some(verifier) = verifier {
        sql.push_str(&format!("ALTER ROLE {AUTH_USER} LOGIN PASSWORD {};\n", crate::render::quote_literal(verifier)));
    }
    sql
}

/// In each database (PgBouncer 1.18 runs `auth_query` in the client's database): the one
/// function that role may call, returning one login role's hash (none once it expired). A
/// function forged in a database of someone else's gains nothing: the server checks each
/// login again ([`Target`]).
pub const AUTH_FUNCTION_SQL: &str = "CREATE SCHEMA IF NOT EXISTS pgbouncer;
CREATE OR REPLACE FUNCTION pgbouncer.get_auth(p_usename text) RETURNS TABLE (usename name, passwd text)
  LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog
  AS $pgep$ SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END
            FROM pg_catalog.pg_authid WHERE rolname = p_usename AND rolcanlogin $pgep$;
REVOKE ALL ON FUNCTION pgbouncer.get_auth(text) FROM PUBLIC;
GRANT USAGE ON SCHEMA pgbouncer TO pgbouncer;
GRANT EXECUTE ON FUNCTION pgbouncer.get_auth(text) TO pgbouncer;";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::pooler::PoolMode;

    fn pooler() -> Pooler {
        Pooler {
            port: 6432,
            listen_addr: "*".into(),
            pool_mode: PoolMode::Transaction,
            max_client_conn: 100,
            default_pool_size: 20,
            auth_type: "scram-sha-256".into(),
            admin_users: vec!["ops".into()],
            stats_users: vec![],
        }
    }

    #[test]
    fn the_ini_sends_clients_to_the_target_and_the_console_to_the_service_account() {
        let files = Files {
            hba: Path::new("/run/pg/hba"),
            auth: Path::new("/run/pg/auth"),
            socket_dir: Path::new("/run/pg"),
            tls: None,
            server_tls: ServerTls { sslmode: "verify-full", ca: Some(Path::new("/run/pg/ca.crt")) },
        };
        let local = ini(&pooler(), &Target::Local { port: 5432 }, &files, TlsMode::Off);
        assert!(local.contains("* = host=127.0.0.1 port=5432\n"), "{local}");
        assert!(local.contains("server_tls_sslmode = verify-full\nserver_tls_ca_file = /run/pg/ca.crt\n"), "{local}");
        assert!(
            local.contains("admin_users = pg_entrypoint,ops\n") && local.contains("pool_mode = transaction\n"),
            "{local}"
        );
        assert!(!local.contains("client_tls"), "{local}");
        let there = Address { host: "replica-1".into(), port: 5433 };
        let moved = ini(&pooler(), &Target::Member(&there), &files, TlsMode::Off);
        assert!(moved.contains("* = host=replica-1 port=5433\n"), "{moved}");
    }

    #[test]
    fn with_tls_required_plaintext_is_rejected() {
        let text = hba(&pooler(), TlsMode::Required);
        assert_eq!(
            text,
            "local pgbouncer pg_entrypoint trust\nlocal all pg_entrypoint reject\n\
             host all pg_entrypoint 0.0.0.0/0 reject\nhost all pg_entrypoint ::/0 reject\n\
             local all all scram-sha-256\nhostnossl all all 0.0.0.0/0 reject\n\
             hostnossl all all ::/0 reject\nhostssl all all 0.0.0.0/0 scram-sha-256\nhostssl all all ::/0 scram-sha-256\n"
        );
    }
}
