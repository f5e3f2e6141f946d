//! Lifecycle: what the entrypoint does to a container, in the order it does it. `start` is
//! the sequence (plan, prepare PGDATA, serve); `bootstrap`, `init_scripts` and `converge`
//! make and adjust a cluster; `native` and `patroni` are the two HA modes; `upgrade` moves a
//! cluster to a new major; `backup` archives, backs up and restores with pgBackRest; `pooler`
//! runs PgBouncer; `http` is the endpoint HAProxy and probes ask. Built on the
//! postgres plumbing below, never on the commands above.

pub mod arbitrary_uid;
pub mod backup;
pub mod bootstrap;
pub mod converge;
pub mod http;
pub mod init_scripts;
pub mod native;
pub mod patroni;
pub mod pooler;
pub mod start;
pub mod upgrade;
