//! PGDATA and our files: what a data directory holds and how it is changed safely
//! (`datadir`: state, atomic writes, the upgrade's work area), our configuration and password
//! files (`files`), and the private copies of the TLS files (`tls`). Where each file lives is
//! decided once, by `config::Layout`; this layer writes there.

pub mod datadir;
pub mod files;
pub mod tls;
