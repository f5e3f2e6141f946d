//! pg-entrypoint: the ENTRYPOINT and PID 1 of a PostgreSQL container.
//!
//! `pg-entrypoint [postgres] [ARGS]` sets up and runs the server; `check` validates and shows
//! the plan; any other first word is executed as a command, as the official image does.

mod arbitrary_uid;
mod bootstrap;
mod config;
mod converge;
mod datadir;
mod files;
mod health;
mod http;
mod init_scripts;
mod local;
mod native;
mod observe;
mod patroni;
mod privileges;
mod render;
mod server;
mod single_user;
mod start;
mod status;
mod step;
mod supervise;
mod tempserver;
mod tls;
mod upgrade;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pg-entrypoint",
    version,
    about = "Entrypoint and PID 1 for PostgreSQL containers: standalone, primary or replica",
    after_help = "Without a subcommand, or with `postgres [ARGS]` or ARGS starting with `-`, it sets up \
                  and runs postgres with those arguments. Any other command is executed as given."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Set up the data directory for the configured role and run postgres (the default).
    Run {
        /// Arguments for postgres, e.g. `-c shared_buffers=1GB`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        postgres_args: Vec<String>,
    },
    /// Validate the environment and print the plan and the configuration it would write.
    Check {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        postgres_args: Vec<String>,
    },
    /// Exit 0 if the server is healthy for its role, 1 if not; prints one line saying why.
    Health {
        /// Only check that the server answers (Kubernetes liveness).
        #[arg(long, conflicts_with = "readiness")]
        liveness: bool,
        /// Full role check (the default; Kubernetes readiness).
        #[arg(long)]
        readiness: bool,
        /// A replica lagging more than this is unhealthy: bytes (16MB) or silence from the primary (30s).
        #[arg(long, value_parser = health::parse_max_lag)]
        max_lag: Option<health::MaxLag>,
        /// A synchronous primary is unhealthy while too few synchronous standbys are connected
        /// (its commits would wait).
        #[arg(long)]
        require_sync: bool,
    },
    /// Initialise an empty PGDATA (initdb or clone, init scripts) and exit without serving;
    /// exit 0 when it already holds a cluster. Also run as `docker-ensure-initdb.sh`.
    EnsureInitdb {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        postgres_args: Vec<String>,
    },
    /// Like ensure-initdb, but fail (exit 1) when PGDATA already holds a cluster. Also run as
    /// `docker-enforce-initdb.sh`.
    EnforceInitdb {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        postgres_args: Vec<String>,
    },
    /// Print the role, timeline, LSNs and replicas as JSON.
    Status,
    /// Promote this running standby to a primary (on a new timeline). Refuses while the
    /// configured primary accepts writes or a peer has more WAL than this standby. With
    /// HA_MODE=patroni: a Patroni switchover (or failover) to this member.
    Promote {
        /// Promote without asking the primary and the peers.
        #[arg(long)]
        force: bool,
    },
}

const SUBCOMMANDS: &[&str] =
    &["run", "check", "health", "status", "promote", "ensure-initdb", "enforce-initdb", "help"];
/// The official image's script names (derived images and init containers call them), as
/// links to this binary, and the subcommand each one means.
const OFFICIAL_NAMES: &[(&str, &str)] = &[
    ("docker-entrypoint.sh", "run"),
    ("docker-ensure-initdb.sh", "ensure-initdb"),
    ("docker-enforce-initdb.sh", "enforce-initdb"),
];
/// postgres options that only print something: run postgres directly, without any set-up.
const POSTGRES_INFO_OPTIONS: &[&str] = &["-C", "--describe-config", "-V", "--version", "--help", "-?"];

fn main() {
    // Started as the postgres uid, /proc/self/environ (every password) would be readable by
    // that uid, and so by SQL roles allowed to run programs. Not dumpable: only root reads it.
    // (A switch from root to postgres clears the flag by itself; this covers a non-root start.)
    let _ = nix::sys::prctl::set_dumpable(false);
    std::process::exit(real_main());
}

fn real_main() -> i32 {
    let mut raw: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let called_as = std::env::args_os().next().map(std::path::PathBuf::from);
    let called_as = called_as.as_ref().and_then(|p| p.file_name()).and_then(|n| n.to_str()).unwrap_or_default();
    if let Some((_, subcommand)) = OFFICIAL_NAMES.iter().find(|(name, _)| *name == called_as) {
        if *subcommand != "run" {
            raw.insert(0, subcommand.into());
        }
    }
    // Another command gets its arguments as they are, bytes included.
    let is_command = raw
        .first()
        .and_then(|a| a.to_str())
        .is_some_and(|a| !a.starts_with('-') && !SUBCOMMANDS.contains(&a) && a != "postgres");
    if is_command {
        return supervise::exec(&raw);
    }
    let Some(args) = raw.iter().map(|a| a.to_str().map(String::from)).collect::<Option<Vec<String>>>() else {
        eprintln!("pg-entrypoint: an argument is not valid UTF-8; postgres settings and our options must be");
        return 2;
    };
    let first = args.first().map(String::as_str);
    match first {
        None => return run(&[]),
        Some("postgres") => return run(&args[1..]),
        // As in the official image, a leading `-` means postgres arguments: `--version` is
        // postgres's (ours: `pg-entrypoint help`).
        Some(a) if a.starts_with('-') => return run(&args),
        _ => {}
    }
    match Cli::parse_from(std::iter::once("pg-entrypoint".to_string()).chain(args)).command {
        Cmd::Run { postgres_args } => run(&postgres_args),
        Cmd::EnsureInitdb { postgres_args } => initialise_only(&postgres_args, false),
        Cmd::EnforceInitdb { postgres_args } => initialise_only(&postgres_args, true),
        Cmd::Check { postgres_args } => {
            init_logging();
            check(&postgres_args)
        }
        Cmd::Health { liveness, readiness: _, max_lag, require_sync } if patroni_mode() => {
            if max_lag.is_some() || require_sync {
                eprintln!("health: --max-lag and --require-sync are for HA_MODE=native; Patroni's readiness applies");
                return 2;
            }
            patroni::operate::health(&config::ProcessInputs, liveness)
        }
        Cmd::Health { liveness, readiness: _, max_lag, require_sync } => health::run(liveness, require_sync, max_lag),
        Cmd::Status if patroni_mode() => patroni::operate::status(&config::ProcessInputs),
        Cmd::Status => status::run(),
        Cmd::Promote { force: true } if patroni_mode() => {
            eprintln!("promote: --force is for HA_MODE=native; Patroni checks the candidate itself");
            2
        }
        Cmd::Promote { .. } if patroni_mode() => patroni::operate::promote(&config::ProcessInputs),
        Cmd::Promote { force } => native::promote::promote_running(force),
    }
}

fn patroni_mode() -> bool {
    patroni::operate::selected(&config::ProcessInputs)
}

fn run(postgres_args: &[String]) -> i32 {
    if postgres_args.iter().any(|a| POSTGRES_INFO_OPTIONS.contains(&a.as_str())) {
        // No configuration is needed to print something: only where postgres is.
        let bindir = std::env::var("PG_BINDIR").ok().filter(|d| !d.is_empty()).map(std::path::PathBuf::from);
        let mut argv = vec![String::from("postgres")];
        if let Ok(bin) = server::Bin::locate(bindir.as_deref(), std::env::var("PATH").ok().as_deref()) {
            argv[0] = bin.tool("postgres").display().to_string();
        }
        argv.extend(postgres_args.iter().cloned());
        return supervise::exec(&argv);
    }
    init_logging();
    start::run(postgres_args, start::Goal::Serve)
}

fn initialise_only(postgres_args: &[String], enforce: bool) -> i32 {
    // `[postgres] [ARGS]`, as the official script takes them.
    let args = postgres_args.strip_prefix(&[String::from("postgres")]).unwrap_or(postgres_args);
    init_logging();
    let code = start::run(args, start::Goal::Initialise { enforce });
    patroni::note_failed_bootstrap(code);
    code
}

/// `LOG_FORMAT=json` for one JSON object per line; text otherwise. `LOG_LEVEL` is `error`,
/// `warn`, `info` (default), `debug` or `trace`. Logs go to stderr.
fn init_logging() {
    // Invalid values are reported by the configuration check; the defaults serve until then.
    let var = |name: &str| std::env::var(name).ok();
    let level = var("LOG_LEVEL").as_deref().and_then(config::parse_log_level).unwrap_or(tracing::Level::INFO);
    let json = var("LOG_FORMAT").as_deref().and_then(config::parse_log_format).unwrap_or(false);
    // A failed write to stderr (its reader gone) is dropped: by default the subscriber reports
    // it with `eprintln!`, which panics on the same broken pipe, and a panicking PID 1 exits
    // before forwarding the stop to postgres.
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_max_level(level)
        .log_internal_errors(false);
    if json {
        builder.json().init();
    } else {
        builder.with_target(false).init();
    }
}

/// Prints what `run` would do, without doing it. Exit 0 when valid, 78 otherwise.
fn check(postgres_args: &[String]) -> i32 {
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
    if let Err(problem) = upgrade::check(c, plan.server_major) {
        eprintln!("{problem}");
        return step::exit::CONFIG;
    }
    let state = match datadir::inspect(&c.pgdata) {
        Ok(state) => format!("{state:?}"),
        Err(e) => format!("unreadable ({e})"),
    };
    let password = |set: bool| if set { "set (hidden)" } else { "not set" };
    println!("pg-entrypoint:   {}", env!("CARGO_PKG_VERSION"));
    println!("role:            {}", c.role.name());
    println!("PGDATA:          {} ({state})", c.pgdata.display());
    println!("binaries:        {}", plan.bin.dir().display());
    println!("superuser:       {} (password {})", c.superuser, password(c.superuser_password.is_some()));
    println!("database:        {}", c.database);
    println!("port, socket:    {}, {}", plan.endpoint.port, plan.endpoint.socket_dir.display());
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
    println!("\n--- {} ---\n{}", render::MANAGED_CONF, render::managed_conf(&plan.settings));
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
