//! The TLS files postgres and libpq read: private copies (0600, owned by the service account,
//! in the run directory beside the socket) of what the environment names, never a chmod of
//! the user's files. Mounted secrets are often root's and 0644 or 0444, which postgres refuses
//! for a key; the configuration read them while we were root, and the copies are written
//! after the privilege drop. At every start, and again on SIGHUP before postgres reloads (a
//! rotated certificate is then served without a restart).

use std::fs;
use std::io;
use std::path::Path;

use crate::config::{Config, ServerCert, TlsMode};
use crate::pgdata::datadir;

/// Writes the copies this configuration needs and removes those it does not (a key must not
/// outlive the TLS that used it). `fresh_self_signed`: make a new self-signed pair even when
/// one is there (at start; a reload keeps it).
pub fn install(config: &Config, fresh_self_signed: bool) -> io::Result<()> {
    let paths = config.layout.tls();
    let tls = &config.tls;
    let mut wanted: Vec<(&Path, String)> = Vec::new();
    match (&tls.server, tls.mode) {
        (_, TlsMode::Off) | (None, _) => {}
        (Some(ServerCert::Files { cert, key }), _) => {
            wanted.push((&paths.cert, cert.pem.expose().to_string()));
            wanted.push((&paths.key, key.pem.expose().to_string()));
        }
        (Some(ServerCert::SelfSigned), _) => {
            if fresh_self_signed || !paths.cert.exists() || !paths.key.exists() {
                let (cert, key) = self_signed()?;
                wanted.push((&paths.cert, cert));
                wanted.push((&paths.key, key));
            }
        }
    }
    if let Some(ca) = &tls.ca {
        wanted.push((&paths.ca, ca.pem.expose().to_string()));
    }
    if let Some((cert, key)) = &tls.replication_client {
        wanted.push((&paths.client_cert, cert.pem.expose().to_string()));
        wanted.push((&paths.client_key, key.pem.expose().to_string()));
    }
    let self_signed_kept = matches!(tls.server, Some(ServerCert::SelfSigned)) && tls.mode != TlsMode::Off;
    for path in paths.all() {
        match wanted.iter().find(|(p, _)| *p == path) {
            Some((_, pem)) => datadir::write_atomic(path, pem.as_bytes(), 0o600)?,
            None if self_signed_kept && (path == paths.cert || path == paths.key) => {}
            None => {
                fs::remove_file(path).or_else(|e| if e.kind() == io::ErrorKind::NotFound { Ok(()) } else { Err(e) })?
            }
        }
    }
    Ok(())
}

/// On SIGHUP: the files the environment names, read again as the service account (they may
/// have been rotated) and checked as at start; on any problem the copies in place stay and the
/// reason is logged.
pub fn refresh(config: &Config) {
    let fresh = match config.tls.reread() {
        Ok(tls) => Config { tls, ..config.clone() },
        Err(e) => {
            tracing::warn!("reload: the TLS copies were kept: {e}");
            return;
        }
    };
    match install(&fresh, false) {
        Ok(()) => tracing::info!("reload: TLS certificates and keys refreshed from the files the environment names"),
        Err(e) => tracing::warn!("reload: cannot refresh the TLS copies: {e}"),
    }
}

/// A key and a certificate for this host name (and localhost), valid from now for ten years.
fn self_signed() -> io::Result<(String, String)> {
    let hostname = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    let mut names = vec!["localhost".to_string()];
    if !hostname.is_empty() && hostname != "localhost" {
        names.insert(0, hostname);
    }
    let made = rcgen::generate_simple_self_signed(names).map_err(|e| io::Error::other(e.to_string()))?;
    tracing::info!("TLS_MODE=self-signed: made a key and a certificate for this start");
    Ok((made.cert.pem(), made.key_pair.serialize_pem()))
}

/// Each variable that names a TLS file (and its alias), with the copy made of that file: what
/// a process that may not read the user's files (Patroni's bootstrap, which runs this binary
/// again as the service account) is given instead.
pub fn copies_by_variable(config: &Config) -> Vec<(String, std::path::PathBuf)> {
    let paths = config.layout.tls();
    let tls = &config.tls;
    let mut files: Vec<(&crate::config::TlsFile, &Path)> = Vec::new();
    if let Some(ServerCert::Files { cert, key }) = &tls.server {
        files.extend([(cert, paths.cert.as_path()), (key, paths.key.as_path())]);
    }
    if let Some(ca) = &tls.ca {
        files.push((ca, &paths.ca));
    }
    if let Some((cert, key)) = &tls.replication_client {
        files.extend([(cert, paths.client_cert.as_path()), (key, paths.client_key.as_path())]);
    }
    let mut out = Vec::new();
    for (file, copy) in files {
        out.push((file.variable.clone(), copy.to_path_buf()));
        out.extend(file.alias.map(|alias| (alias.to_string(), copy.to_path_buf())));
    }
    out
}
