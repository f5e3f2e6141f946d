//! PGDATA and our files: what a data directory holds and how it is changed safely
//! (`datadir`: state, atomic writes, the upgrade's work area), our configuration and password
//! files (`files`), the role a switchover recorded (`role_record`), and the private copies of the TLS files (`tls`). Where each file lives is
//! decided once, by `config::Layout`; this layer writes there.

pub mod datadir;
pub mod files;
pub mod role_record;
pub mod tls;
