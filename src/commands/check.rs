//! `pg-entrypoint check [ARGS]`: validates the environment and prints the plan and the
//! configuration a start would write, without writing anything.

use crate::config;
use crate::lifecycle::{patroni, start, upgrade};
use crate::pgdata::datadir;
use crate::postgres::step;
use crate::render;

/// Prints what `run` would do, without doing it. Exit 0 when valid, 78 otherwise.
pub fn run(postgres_args: &[String]) -> i32 {
    super::init_logging();
    let plan = match start::plan(postgres_args) {
        Ok(plan) => plan,
        Err(message) => {
            eprintln!("{message}");
            return step::exit::CONFIG;
        }
    };
    let c = &plan.config;
    if let Some(problem) = start::creation_problem(&plan) {
        eprintln!("{problem}");
        return step::exit::CONFIG;
    }
    if let Err(problem) = upgrade::check_major(c, plan.server_major) {
        eprintln!("{problem}");
        return step::exit::CONFIG;
    }
    let state = match datadir::inspect(&c.pgdata) {
        Ok(state) => format!("{state:?}"),
        Err(e) => format!("unreadable ({e})"),
    };
    let password = |set: bool| if set { "set (hidden)" } else { "not set" };
    for warning in &c.unknown_variables {
        println!("warning:         {warning}");
    }
    println!("pg-entrypoint:   {}", env!("CARGO_PKG_VERSION"));
    println!("role:            {}", c.role.name());
    match crate::pgdata::role_record::read(&c.pgdata) {
        Ok(Some(record)) => println!(
            "switchover:      PGDATA's record says {:?}: it outranks the role above until REPLICATION_ROLE and \
             PRIMARY_HOST say the same (docs/switchover.md)",
            record.line()
        ),
        Ok(None) => {}
        Err(why) => println!("switchover:      {why}"),
    }
    if let Some(p) = &c.pooler {
        println!(
            "PgBouncer:       port {}, {} pooling, clients authenticate with {}",
            p.port,
            p.pool_mode.name(),
            p.auth_type
        );
    }
    println!("PGDATA:          {} ({state})", c.pgdata.display());
    println!("binaries:        {}", plan.bin.dir().display());
    println!("superuser:       {} (password {})", c.superuser, password(c.superuser_password.is_some()));
    println!("database:        {}", c.database);
    println!("port, socket:    {}, {}", plan.sockets.port, plan.sockets.socket_dir.display());
    if let Some(r) = c.replication() {
        println!("replication:     user {} (password {})", r.user, password(true));
        let peers: Vec<String> = r.peers.iter().map(ToString::to_string).collect();
        println!(
            "peers:           {}",
            if peers.is_empty() { "none (REPLICATION_PEERS)".into() } else { peers.join(", ") }
        );
    }
    if let config::Role::Patroni(m) = &c.role {
        let etcd: Vec<String> = m.etcd_hosts.iter().map(ToString::to_string).collect();
        println!(
            "patroni:         scope {}, member {}, REST API port {} (changes need user {}, password {})",
            m.scope,
            m.name,
            m.rest_api.port,
            m.rest_api_user,
            password(true)
        );
        println!(
            "etcd:            {}",
            if etcd.is_empty() {
                "none: Patroni's own PATRONI_ETCD3_* or PATRONI_KUBERNETES_* (the Kubernetes API) name its store".into()
            } else {
                etcd.join(", ")
            }
        );
        println!("replication:     user {} (password {})", m.replication_user, password(true));
        println!("synchronous:     {:?}", m.synchronous);
        println!("--- {} is written at start (passwords in it) ---", patroni::config_file(c).display());
        return 0;
    }
    println!("TLS:             {}", tls_plan(&c.tls));
    let u = &c.upgrade;
    println!(
        "upgrade:         {}",
        if u.auto {
            format!(
                "POSTGRES_UPGRADE=auto ({}, old cluster {}, indexes on changed collations {})",
                u.method.flag(),
                if u.keep_old { "kept" } else { "removed" },
                if u.reindex { "rebuilt" } else { "refused" }
            )
        } else {
            "off: a cluster of an older major is refused".into()
        }
    );
    if let config::Role::Auto(a) = &c.role {
        println!(
            "auto:            ordinal {}: decided at start from PGDATA and the peers; with an empty volume and no \
             primary answering, {}",
            a.ordinal,
            if a.ordinal == 0 { "the primary" } else { "a replica of the default primary" }
        );
    }
    if let Some(r) = c.follower() {
        println!(
            "primary:         {}:{} as {} (wait up to {:?})",
            r.primary_host, r.primary_port, r.name, r.wait_timeout
        );
    }
    if c.replication().is_some() {
        let sync = plan.settings.get("synchronous_standby_names").map_or("", |(v, _)| v.as_str());
        println!("synchronous:     '{sync}' from REPLICATION_SYNCHRONOUS_* (`pg-entrypoint sync` changes it until the next start)");
    }
    println!("\n--- {} ---\n{}", crate::config::layout::MANAGED_CONF, render::managed_conf(&plan.settings));
    println!("--- pg_hba.conf (managed block) ---\n{}", render::hba_block(c));
    0
}

/// `check`'s one line about TLS.
fn tls_plan(tls: &config::Tls) -> String {
    let server = match (&tls.server, tls.mode) {
        (_, config::TlsMode::Off) | (None, _) => "off".to_string(),
        (Some(config::ServerCert::SelfSigned), _) => "on, self-signed certificate made at start".to_string(),
        (Some(config::ServerCert::Files { cert, .. }), mode) => format!(
            "{}, certificate {}",
            if mode == config::TlsMode::Required { "required (plaintext TCP rejected)" } else { "on" },
            cert.path.display()
        ),
    };
    let ca = tls.ca.as_ref().map_or(String::new(), |ca| format!(", CA {}", ca.path.display()));
    let client = if tls.replication_client.is_some() { ", replication user by client certificate" } else { "" };
    format!("{server}{ca}; members reached with sslmode={}{client}", tls.replication_sslmode)
}
