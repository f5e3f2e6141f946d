//! SQL as the superuser on any member, for `switchover`: this node's server over its Unix
//! socket (no password, as the other operator commands), another member over TCP with
//! POSTGRES_PASSWORD through a 0600 password file that lives as long as this value, and
//! REPLICATION_SSLMODE's TLS. psql makes each connection (host names resolve as for the
//! members' own questions); each query is one connection, so a member that restarts midway
//! is simply asked again.

use std::path::PathBuf;
use std::process::Stdio;

use crate::config::{Address, Config, Secret};
use crate::pgdata::datadir;
use crate::postgres::server::Bin;
use crate::postgres::step;
use crate::render;

/// A member as the superuser reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum At {
    /// This node's server.
    Here,
    Member(Address),
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            At::Here => f.write_str("this node"),
            At::Member(address) => write!(f, "{address}"),
        }
    }
}

pub struct Admin {
    bin: Bin,
    user: String,
    socket: (PathBuf, u16),
    /// `None`: POSTGRES_HOST_AUTH_METHOD=trust, no password to send.
    passfile: Option<PathBuf>,
    tls: Vec<(&'static str, String)>,
}

impl Admin {
    /// Writes the password file (beside our other files) when there is a password to send.
    pub fn new(config: &Config, bin: &Bin, password: Option<&Secret>) -> std::io::Result<Admin> {
        let (dir, port) = config.layout.server();
        let passfile = match password {
            Some(password) => {
                let path = config.layout.admin_passfile(std::process::id());
                datadir::write_atomic(&path, render::pgpass(&config.superuser, password.expose()).as_bytes(), 0o600)?;
                Some(path)
            }
            None => None,
        };
        Ok(Admin {
            bin: bin.clone(),
            user: config.superuser.clone(),
            socket: (dir.to_path_buf(), port),
            passfile,
            tls: render::client_tls(config),
        })
    }

    /// The rows of `sql` on `at`, each a list of columns. `Err` carries psql's message.
    pub fn query(&self, at: &At, sql: &str) -> Result<Vec<Vec<String>>, String> {
        let conninfo = match at {
            At::Here => format!(
                "host={} port={} user={} dbname=template1 application_name=pg-entrypoint connect_timeout=5",
                render::quote_conninfo(&self.socket.0.to_string_lossy()),
                self.socket.1,
                render::quote_conninfo(&self.user)
            ),
            At::Member(address) => {
                let passfile = self.passfile.as_ref().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
                let info = render::conninfo(
                    &address.host,
                    address.port,
                    &self.user,
                    "pg-entrypoint",
                    &passfile,
                    false,
                    &self.tls,
                );
                format!("{info} dbname=template1")
            }
        };
        let mut psql = step::tool(&self.bin, "psql");
        psql.args(["-X", "-q", "-A", "-t", "-F", "|", "--no-password", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(conninfo)
            .arg("-c")
            .arg(sql)
            .stdin(Stdio::null());
        let out = psql.output().map_err(|e| format!("cannot run psql: {e}"))?;
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stderr);
            let said = said.trim().trim_start_matches("psql: ").trim_start_matches("error: ");
            return Err(said.lines().next().unwrap_or("psql failed").to_string());
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('|').map(str::to_string).collect())
            .collect())
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        if let Some(path) = &self.passfile {
            std::fs::remove_file(path).ok();
        }
    }
}
