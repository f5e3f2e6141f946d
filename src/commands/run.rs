//! `pg-entrypoint [run] [postgres] [ARGS]` sets PGDATA up for the role and serves;
//! `ensure-initdb` and `enforce-initdb` only set it up (the official image's scripts).

use crate::lifecycle::start;

/// postgres options that only print something: run postgres directly, without any set-up.
const POSTGRES_INFO_OPTIONS: &[&str] = &["-C", "--describe-config", "-V", "--version", "--help", "-?"];

pub fn serve(postgres_args: &[String]) -> i32 {
    if postgres_args.iter().any(|a| POSTGRES_INFO_OPTIONS.contains(&a.as_str())) {
        // No configuration is needed to print something: only where postgres is.
        let bindir = std::env::var("PG_BINDIR").ok().filter(|d| !d.is_empty()).map(std::path::PathBuf::from);
        let mut argv = vec![String::from("postgres")];
        if let Ok(bin) = crate::postgres::server::Bin::locate(bindir.as_deref(), std::env::var("PATH").ok().as_deref())
        {
            argv[0] = bin.tool("postgres").display().to_string();
        }
        argv.extend(postgres_args.iter().cloned());
        return crate::pid1::supervise::exec(&argv);
    }
    super::init_logging();
    start::run(postgres_args, start::Goal::Serve)
}

pub fn initialise_only(postgres_args: &[String], enforce: bool) -> i32 {
    // `[postgres] [ARGS]`, as the official script takes them.
    let args = postgres_args.strip_prefix(&[String::from("postgres")]).unwrap_or(postgres_args);
    super::init_logging();
    let code = start::run(args, start::Goal::Initialise { enforce });
    crate::lifecycle::patroni::note_failed_bootstrap(code);
    code
}
