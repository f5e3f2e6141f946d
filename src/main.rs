//! pg-entrypoint: the ENTRYPOINT and PID 1 of a PostgreSQL container.
//!
//! `pg-entrypoint [postgres] [ARGS]` sets up and runs the server; `check` validates and shows
//! the plan; any other first word is executed as a command, as the official image does.

// The layers, top to bottom; a module imports only from its own layer and those below
// (`tests/layers.rs` checks it). docs/architecture.md tours them.
mod commands;
mod config;
mod lifecycle;
mod pgdata;
mod pid1;
mod postgres;
mod render;

use clap::{Parser, Subcommand};

use commands::Mode;
use postgres::health;

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
    /// Hand the primary role to a streaming replica with no acknowledged commit lost: the
    /// old primary follows the new one, and both keep their roles across restarts. With
    /// HA_MODE=patroni: Patroni's switchover.
    Switchover {
        /// The member to hand over to, as the members know it (host or host:port; Patroni:
        /// the member's name). Default: the most advanced streaming replica.
        #[arg(long)]
        to: Option<String>,
    },
    /// Backups with pgBackRest (PGBACKREST_ENABLE): `backup [full|diff|incr]` takes one now
    /// on the primary, `backup list` shows the repository, `backup verify` restores the latest
    /// backup into a scratch directory and checks that it starts and answers.
    Backup {
        /// full, diff, incr (default: pgBackRest's, incr, or full when there is none), list or verify.
        what: Option<String>,
        /// list: pgBackRest's JSON.
        #[arg(long)]
        json: bool,
        /// Back up from this replica (not supported: refused).
        #[arg(long)]
        standby: bool,
        /// verify: where the scratch copy goes (default: the temporary directory).
        #[arg(long)]
        into: Option<std::path::PathBuf>,
    },
    /// Change synchronous replication on the running primary, by a reload, until the next
    /// start; without options, show what is in force. Also run as `pg-reload-sync-config.sh`.
    Sync {
        /// As REPLICATION_SYNCHRONOUS_MODE: off, on/first, any (quorum).
        #[arg(long, alias = "sync-mode")]
        mode: Option<String>,
        /// As REPLICATION_SYNCHRONOUS_COUNT.
        #[arg(long, alias = "sync-count")]
        count: Option<String>,
        /// As REPLICATION_SYNCHRONOUS_REPLICAS: names, or *.
        #[arg(long, alias = "sync-replicas")]
        replicas: Option<String>,
    },
}

const SUBCOMMANDS: &[&str] = &[
    "run",
    "check",
    "health",
    "status",
    "promote",
    "switchover",
    "sync",
    "backup",
    "ensure-initdb",
    "enforce-initdb",
    "help",
];
/// The official image's script names (derived images and init containers call them), as
/// links to this binary, and the subcommand each one means.
const OFFICIAL_NAMES: &[(&str, &str)] = &[
    ("docker-entrypoint.sh", "run"),
    ("docker-ensure-initdb.sh", "ensure-initdb"),
    ("docker-enforce-initdb.sh", "enforce-initdb"),
    // The upstream image's script for the same.
    ("pg-reload-sync-config.sh", "sync"),
];

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
        return pid1::supervise::exec(&raw);
    }
    let Some(args) = raw.iter().map(|a| a.to_str().map(String::from)).collect::<Option<Vec<String>>>() else {
        eprintln!("pg-entrypoint: an argument is not valid UTF-8; postgres settings and our options must be");
        return 2;
    };
    let first = args.first().map(String::as_str);
    match first {
        None => return commands::run::serve(&[]),
        Some("postgres") => return commands::run::serve(&args[1..]),
        // As in the official image, a leading `-` means postgres arguments: `--version` is
        // postgres's (ours: `pg-entrypoint help`).
        Some(a) if a.starts_with('-') => return commands::run::serve(&args),
        _ => {}
    }
    match Cli::parse_from(std::iter::once("pg-entrypoint".to_string()).chain(args)).command {
        Cmd::Run { postgres_args } => commands::run::serve(&postgres_args),
        Cmd::EnsureInitdb { postgres_args } => commands::run::initialise_only(&postgres_args, false),
        Cmd::EnforceInitdb { postgres_args } => commands::run::initialise_only(&postgres_args, true),
        Cmd::Check { postgres_args } => commands::check::run(&postgres_args),
        Cmd::Health { liveness, readiness: _, max_lag, require_sync } => {
            commands::health::run(Mode::of_environment(), liveness, require_sync, max_lag)
        }
        Cmd::Status => commands::status::run(Mode::of_environment()),
        Cmd::Promote { force } => commands::promote::run(Mode::of_environment(), force),
        Cmd::Switchover { to } => commands::switchover::run(Mode::of_environment(), to.as_deref()),
        Cmd::Backup { what, json, standby, into } => {
            use commands::backup::Action;
            let action = match what.as_deref() {
                Some("list") => Action::List { json },
                Some("verify") => Action::Verify { into },
                None => Action::Take { kind: None, standby },
                Some(kind) => match config::backup::BackupKind::parse(kind) {
                    Some(kind) => Action::Take { kind: Some(kind), standby },
                    None => {
                        eprintln!("backup: {kind:?} is not accepted; accepted: full, diff, incr, list, verify");
                        return 2;
                    }
                },
            };
            commands::backup::run(action)
        }
        Cmd::Sync { mode, count, replicas } => {
            commands::sync::run(Mode::of_environment(), commands::sync::Change { mode, count, replicas })
        }
    }
}
