//! TLS from the environment (docs/tls.md): the server's certificate and key, the CA that
//! verifies peers, how replicas verify their primary, and an optional client certificate for
//! the replication user. Files are read here, once, while we may still be root (mounted
//! secrets are often root's): the PEM text is kept, and `crate::pgdata::tls` installs private copies.

use std::path::PathBuf;

use super::{Parser, Secret};

/// `TLS_MODE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Off,
    /// TLS offered; plaintext still accepted.
    On,
    /// The managed hba block rejects plaintext TCP for everyone, replication included.
    Required,
}

/// A PEM file given by a variable, as read at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFile {
    pub variable: String,
    /// The other name of the same setting (Bitnami's, or ours), if it has one.
    pub alias: Option<&'static str>,
    pub path: PathBuf,
    pub pem: Secret,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerCert {
    Files {
        cert: TlsFile,
        key: TlsFile,
    },
    /// `TLS_MODE=self-signed`: made at start (replicas can then only `require`).
    SelfSigned,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub mode: TlsMode,
    /// `None` only with `TlsMode::Off`.
    pub server: Option<ServerCert>,
    /// `TLS_CA_FILE`: verifies the primary (replicas) and client certificates (servers).
    pub ca: Option<TlsFile>,
    /// `REPLICATION_SSLMODE`: libpq's sslmode for every connection to another member.
    pub replication_sslmode: String,
    /// `REPLICATION_TLS_CERT_FILE`/`_KEY_FILE`: the replication user authenticates with this
    /// certificate, and the managed hba block asks for one (`cert`).
    pub replication_client: Option<(TlsFile, TlsFile)>,
    /// Connections to other members never answer a request for the password in clear text or
    /// as MD5 (`require_auth=!password,!md5`): without TLS verifying the member, whatever
    /// answers at its address could otherwise ask for it. SCRAM, trust and certificates still
    /// work. Set once the server's major is known (libpq has the option from 16 on); not when
    /// POSTGRES_HOST_AUTH_METHOD=password, where our own members ask for it so.
    pub refuse_clear_passwords: bool,
}

/// A CA bundle can be large (Debian's ca-certificates.crt is about 220 kB).
const MAX_TLS_FILE: u64 = 4 << 20;

const SSLMODES: [&str; 6] = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"];

#[derive(Clone, Copy)]
enum Pem {
    Certificate,
    Key,
}

impl Pem {
    /// `None` when `text` is this kind of PEM, else what was expected.
    fn problem(self, text: &str) -> Option<&'static str> {
        match self {
            Pem::Certificate if text.contains("-----BEGIN CERTIFICATE-----") => None,
            Pem::Key if text.lines().any(|l| l.starts_with("-----BEGIN ") && l.ends_with("PRIVATE KEY-----")) => None,
            Pem::Certificate => Some("a PEM certificate (-----BEGIN CERTIFICATE-----)"),
            Pem::Key => Some("a PEM private key (-----BEGIN PRIVATE KEY----- or an RSA/EC one)"),
        }
    }
}

impl Tls {
    /// [`Tls::refuse_clear_passwords`] for the libpq of PostgreSQL `major` (Debian's and the
    /// official image's servers depend on a libpq at least as new as themselves).
    pub fn with_libpq_of(self, major: u32, host_auth_method: &str) -> Tls {
        let refuse_clear_passwords = major >= 16 && host_auth_method != "password";
        Tls { refuse_clear_passwords, ..self }
    }

    /// The same files read again and checked as at start (a reload after a rotation), as
    /// whoever we are now, with the start's reader (a regular file, bounded, never waited on:
    /// PID 1 runs this); the other variables are not read again.
    pub fn reread(&self) -> Result<Tls, String> {
        let read = |file: &TlsFile, kind: Pem| -> Result<TlsFile, String> {
            let text = super::Inputs::read_file(&super::ProcessInputs, &file.path, MAX_TLS_FILE)
                .map_err(|e| format!("{}: cannot read {:?}: {e}", file.variable, file.path))?;
            match kind.problem(&text) {
                None => Ok(TlsFile { pem: Secret(text), ..file.clone() }),
                Some(what) => Err(format!("{}: {:?} is not {what}", file.variable, file.path)),
            }
        };
        let server = match &self.server {
            Some(ServerCert::Files { cert, key }) => {
                Some(ServerCert::Files { cert: read(cert, Pem::Certificate)?, key: read(key, Pem::Key)? })
            }
            other => other.clone(),
        };
        let ca = self.ca.as_ref().map(|ca| read(ca, Pem::Certificate)).transpose()?;
        let replication_client = match &self.replication_client {
            Some((cert, key)) => Some((read(cert, Pem::Certificate)?, read(key, Pem::Key)?)),
            None => None,
        };
        Ok(Tls { server, ca, replication_client, ..self.clone() })
    }
}

impl Parser<'_> {
    pub(super) fn tls(&mut self) -> Tls {
        let mode_name = self.aliased("TLS_MODE", None).map(|(_, v)| v.to_ascii_lowercase());
        let enable = self.boolean("POSTGRESQL_ENABLE_TLS");
        let cert = self.tls_file("TLS_CERT_FILE", "POSTGRESQL_TLS_CERT_FILE", Pem::Certificate);
        let key = self.tls_file("TLS_KEY_FILE", "POSTGRESQL_TLS_KEY_FILE", Pem::Key);
        let ca = self.tls_file("TLS_CA_FILE", "POSTGRESQL_TLS_CA_FILE", Pem::Certificate);
        let files_given = self.var("TLS_CERT_FILE").is_some()
            || self.var("POSTGRESQL_TLS_CERT_FILE").is_some()
            || self.var("TLS_KEY_FILE").is_some()
            || self.var("POSTGRESQL_TLS_KEY_FILE").is_some();
        let mode = match (mode_name.as_deref(), enable) {
            (Some("off"), _) | (None, Some(false)) => TlsMode::Off,
            (Some("on"), _) | (Some("self-signed"), _) => TlsMode::On,
            (Some("required"), _) => TlsMode::Required,
            (None, Some(true)) => TlsMode::On,
            (None, None) if files_given => TlsMode::On,
            (None, None) => TlsMode::Off,
            (Some(other), _) => {
                self.problem(
                    "TLS_MODE",
                    format!("{other:?} is not accepted; accepted: off, on, required, self-signed"),
                );
                TlsMode::Off
            }
        };
        let self_signed = mode_name.as_deref() == Some("self-signed");
        let server = match (mode, self_signed, cert, key) {
            (TlsMode::Off, ..) => {
                if files_given {
                    self.problem(
                        "TLS_MODE",
                        "is off, but TLS_CERT_FILE/TLS_KEY_FILE are set; accepted: on or required with them, or \
                         unset them",
                    );
                }
                None
            }
            (_, true, ..) if files_given => {
                self.problem(
                    "TLS_MODE",
                    "is self-signed, but TLS_CERT_FILE/TLS_KEY_FILE are set; accepted: on or required with them",
                );
                None
            }
            (_, true, ..) => Some(ServerCert::SelfSigned),
            (_, false, Some(cert), Some(key)) => Some(ServerCert::Files { cert, key }),
            (_, false, ..) => {
                if !self.problems.iter().any(|p| p.variable.contains("TLS_")) {
                    self.problem(
                        "TLS_CERT_FILE",
                        "and TLS_KEY_FILE are both required for TLS (TLS_MODE on or required); or TLS_MODE=self-signed",
                    );
                }
                None
            }
        };
        let client_cert = self.tls_file("REPLICATION_TLS_CERT_FILE", "", Pem::Certificate);
        let client_key = self.tls_file("REPLICATION_TLS_KEY_FILE", "", Pem::Key);
        let replication_client = match (client_cert, client_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                self.problem(
                    "REPLICATION_TLS_CERT_FILE",
                    "and REPLICATION_TLS_KEY_FILE go together: set both (a client certificate and its key) or neither",
                );
                None
            }
        };
        if replication_client.is_some() && (mode == TlsMode::Off || ca.is_none()) {
            self.problem(
                "REPLICATION_TLS_CERT_FILE",
                "needs TLS (TLS_MODE on or required) and TLS_CA_FILE, which verifies the members' client certificates",
            );
        }
        let default_sslmode = if ca.is_some() { "verify-full" } else { "prefer" };
        let replication_sslmode = match self.var("REPLICATION_SSLMODE").map(|v| v.to_ascii_lowercase()) {
            None => default_sslmode.to_string(),
            Some(m) if SSLMODES.contains(&m.as_str()) => m,
            Some(m) => {
                self.problem(
                    "REPLICATION_SSLMODE",
                    format!("{m:?} is not accepted; accepted: {}", SSLMODES.join(", ")),
                );
                default_sslmode.to_string()
            }
        };
        if replication_sslmode.starts_with("verify") && ca.is_none() {
            self.problem(
                "REPLICATION_SSLMODE",
                format!(
                    "is {replication_sslmode}, which needs TLS_CA_FILE: the CA that signed the primary's certificate"
                ),
            );
        }
        if mode == TlsMode::Required && ["disable", "allow"].contains(&replication_sslmode.as_str()) {
            self.problem(
                "REPLICATION_SSLMODE",
                format!("is {replication_sslmode}, but TLS_MODE=required refuses plaintext replication"),
            );
        }
        Tls { mode, server, ca, replication_sslmode, replication_client, refuse_clear_passwords: false }
    }

    /// `ours`, or Bitnami's name for it (`theirs`); both set and different is a problem.
    fn aliased(&mut self, ours: &str, theirs: Option<&str>) -> Option<(String, String)> {
        let a = self.var(ours);
        let b = theirs.and_then(|t| self.var(t));
        match (a, b, theirs) {
            (Some(a), Some(b), Some(theirs)) if a != b => {
                self.problem(ours, format!("{a:?} disagrees with {theirs}={b:?}; set one of them"));
                Some((ours.to_string(), a))
            }
            (Some(a), _, _) => Some((ours.to_string(), a)),
            (None, Some(b), Some(theirs)) => Some((theirs.to_string(), b)),
            _ => None,
        }
    }

    /// A PEM file named by `ours` (or its alias `theirs`, "" for none), read and checked.
    fn tls_file(&mut self, ours: &'static str, theirs: &'static str, kind: Pem) -> Option<TlsFile> {
        let (variable, path) = self.aliased(ours, Some(theirs).filter(|t| !t.is_empty()))?;
        let text = match self.inputs.read_file(std::path::Path::new(&path), MAX_TLS_FILE) {
            Ok(text) => text,
            Err(e) => {
                self.problem(&variable, format!("cannot read {path:?}: {e}"));
                return None;
            }
        };
        if let Some(what) = kind.problem(&text) {
            self.problem(&variable, format!("{path:?} is not {what}"));
            return None;
        }
        let alias = [ours, theirs].into_iter().find(|name| !name.is_empty() && *name != variable);
        Some(TlsFile { variable, alias, path: PathBuf::from(path), pem: Secret(text) })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, MapInputs, ServerCert, TlsMode};

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n";

    fn parse(vars: &[(&str, &str)]) -> Result<Config, String> {
        let mut vars = vars.to_vec();
        vars.push(("POSTGRES_PASSWORD", "pw"));
        let mut inputs = MapInputs::with(&vars, "db-1");
        for (path, text) in [("/s/tls.crt", CERT), ("/s/tls.key", KEY), ("/s/ca.crt", CERT), ("/s/junk", "hello")] {
            inputs.files.insert(path.into(), text.into());
        }
        Config::from_inputs(&inputs).map_err(|e| e.to_string())
    }

    const FILES: [(&str, &str); 2] = [("TLS_CERT_FILE", "/s/tls.crt"), ("TLS_KEY_FILE", "/s/tls.key")];

    #[test]
    fn certificate_files_turn_tls_on_and_a_ca_makes_replicas_verify() {
        let off = parse(&[]).unwrap().tls;
        assert_eq!((off.mode, off.replication_sslmode.as_str()), (TlsMode::Off, "prefer"));
        let on = parse(&FILES).unwrap().tls;
        assert_eq!(on.mode, TlsMode::On);
        assert!(matches!(on.server, Some(ServerCert::Files { .. })));
        let mut vars = FILES.to_vec();
        vars.extend([("TLS_CA_FILE", "/s/ca.crt"), ("TLS_MODE", "Required")]);
        let required = parse(&vars).unwrap().tls;
        assert_eq!((required.mode, required.replication_sslmode.as_str()), (TlsMode::Required, "verify-full"));
        // Bitnami's names mean the same.
        let bitnami = parse(&[
            ("POSTGRESQL_ENABLE_TLS", "yes"),
            ("POSTGRESQL_TLS_CERT_FILE", "/s/tls.crt"),
            ("POSTGRESQL_TLS_KEY_FILE", "/s/tls.key"),
        ])
        .unwrap()
        .tls;
        assert_eq!(bitnami.mode, TlsMode::On);
        let self_signed = parse(&[("TLS_MODE", "self-signed")]).unwrap().tls;
        assert_eq!(self_signed.server, Some(ServerCert::SelfSigned));
    }

    #[test]
    fn contradictions_are_refused_naming_the_variable() {
        let problems = |vars: &[(&str, &str)]| parse(vars).unwrap_err();
        let mut vars = FILES.to_vec();
        vars.push(("TLS_MODE", "off"));
        assert!(problems(&vars).contains("TLS_MODE: is off, but TLS_CERT_FILE/TLS_KEY_FILE are set"));
        vars.pop();
        vars.push(("TLS_MODE", "self-signed"));
        assert!(problems(&vars).contains("TLS_MODE: is self-signed, but TLS_CERT_FILE/TLS_KEY_FILE are set"));
        let err = problems(&[("REPLICATION_SSLMODE", "verify-ca")]);
        assert!(err.contains("REPLICATION_SSLMODE: is verify-ca, which needs TLS_CA_FILE"), "{err}");
        let mut vars = FILES.to_vec();
        vars.extend([("TLS_MODE", "required"), ("REPLICATION_SSLMODE", "disable")]);
        assert!(problems(&vars).contains("TLS_MODE=required refuses plaintext replication"));
        let err = problems(&[("REPLICATION_TLS_CERT_FILE", "/s/tls.crt")]);
        assert!(err.contains("REPLICATION_TLS_CERT_FILE: and REPLICATION_TLS_KEY_FILE go together"), "{err}");
        let err = problems(&[("TLS_MODE", "on"), ("TLS_CERT_FILE", "/s/junk"), ("TLS_KEY_FILE", "/s/tls.key")]);
        assert!(err.contains("TLS_CERT_FILE: \"/s/junk\" is not a PEM certificate"), "{err}");
    }
}
