//! After an upgrade across C library or ICU versions (the PostgreSQL 15 image is Debian
//! bookworm's glibc 2.36, the 17 image trixie's 2.41), text may sort differently than when
//! its indexes were built: such an index can miss rows. PostgreSQL records the collation
//! version each database and collation was built with; where it differs from the library's
//! now, the indexes that use that collation are rebuilt and the recorded version refreshed
//! (which also ends PostgreSQL's "collation version mismatch" warnings).

use std::path::Path;
use std::time::Duration;

use crate::postgres::step::Context;

/// Databases whose default collation's recorded version differs from the library's. A
/// version that is not recorded (template0 after pg_upgrade, the C locale) is never checked,
/// and cannot be refreshed.
const STALE_DATABASES: &str = "SELECT datname FROM pg_database \
     WHERE datcollversion <> pg_database_collation_actual_version(oid) ORDER BY datname";

/// In one database: the collations whose recorded version differs (oid 100 is the database
/// default, included when the database itself is stale: $1), and the indexes with a key
/// column on one of them.
const STALE_COLLATIONS: &str = "SELECT oid, format('%I.%I', collnamespace::regnamespace, collname) FROM pg_collation \
     WHERE collversion <> pg_collation_actual_version(oid)";
const AFFECTED_INDEXES: &str = "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_index i \
     JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE i.indcollation::oid[] && $1::oid[] ORDER BY 1";

struct Database {
    name: String,
    stale: bool,
}

/// Rebuilds what the collation changes affect, database by database, or, with `reindex`
/// false, refuses while any index is affected. Every database is refreshed last.
/// `sockets`: where the temporary server of the first start listens.
pub fn refresh(ctx: &Context, sockets: &Path, reindex: bool) -> Result<(), String> {
    let mut admin = connect(ctx, sockets, "template1")?;
    let stale: Vec<String> =
        admin.query(STALE_DATABASES, &[]).map_err(|e| query_failed(&e))?.iter().map(|r| r.get(0)).collect();
    let connectable: Vec<String> = admin
        .query("SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname", &[])
        .map_err(|e| query_failed(&e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let databases: Vec<Database> =
        connectable.into_iter().map(|name| Database { stale: stale.contains(&name), name }).collect();
    let mut refused = Vec::new();
    for db in &databases {
        let mut client = connect(ctx, sockets, &db.name)?;
        let collations: Vec<(u32, String)> = client
            .query(STALE_COLLATIONS, &[])
            .map_err(|e| query_failed(&e))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let mut oids: Vec<u32> = collations.iter().map(|(oid, _)| *oid).collect();
        if db.stale {
            oids.push(100); // DEFAULT_COLLATION_OID
        }
        let indexes: Vec<String> =
            client.query(AFFECTED_INDEXES, &[&oids]).map_err(|e| query_failed(&e))?.iter().map(|r| r.get(0)).collect();
        if !reindex {
            refused.extend(indexes.iter().map(|i| format!("{}: {i}", db.name)));
            continue;
        }
        if !indexes.is_empty() {
            tracing::info!(database = %db.name, count = indexes.len(), "rebuilding indexes whose collation version changed");
        }
        for index in &indexes {
            client.batch_execute(&format!("REINDEX INDEX {index}")).map_err(|e| query_failed(&e))?;
        }
        for (_, collation) in &collations {
            client
                .batch_execute(&format!("ALTER COLLATION {collation} REFRESH VERSION"))
                .map_err(|e| query_failed(&e))?;
        }
    }
    if !refused.is_empty() {
        let shown: Vec<&String> = refused.iter().take(10).collect();
        return Err(format!(
            "{} index(es) use a collation whose version changed and may return wrong results: {}{}. \
             POSTGRES_UPGRADE_REINDEX=false refuses to start them; set it to true (the default) to rebuild them \
             at this start",
            refused.len(),
            shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
            if refused.len() > shown.len() { ", ..." } else { "" }
        ));
    }
    for name in &stale {
        tracing::info!(database = %name, "recording the collation version of the new C library");
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {} REFRESH COLLATION VERSION",
                crate::render::quote_identifier(name)
            ))
            .map_err(|e| query_failed(&e))?;
    }
    Ok(())
}

fn connect(ctx: &Context, dir: &Path, database: &str) -> Result<postgres::Client, String> {
    let (port, user) = (ctx.sockets.port, &ctx.config.superuser);
    crate::postgres::local::socket_client(dir, port, user, database, Duration::from_secs(10))
        .map_err(|e| format!("cannot connect to {database:?}: {}", crate::postgres::local::describe(&e)))
}

fn query_failed(e: &postgres::Error) -> String {
    format!("checking collation versions failed: {}", crate::postgres::local::describe(e))
}
