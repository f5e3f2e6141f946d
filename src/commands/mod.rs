//! The commands: one file per subcommand. The only code that prints for the user; each
//! returns the process's exit code. A command that differs between the HA modes chooses the
//! mode once, at its top ([`Mode`]).

pub mod backup;
pub mod check;
pub mod health;
pub mod patroni;
pub mod promote;
pub mod run;
pub mod status;
pub mod switchover;
pub mod sync;

use crate::config::{self, ProcessInputs};

/// Who runs postgres: the entrypoint itself (standalone or `HA_MODE=native`), or Patroni, in
/// which case the operator commands ask Patroni's REST API instead of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Native,
    Patroni,
}

impl Mode {
    pub fn of_environment() -> Mode {
        if patroni::selected(&ProcessInputs) {
            Mode::Patroni
        } else {
            Mode::Native
        }
    }
}

/// `LOG_FORMAT=json` for one JSON object per line; text otherwise. `LOG_LEVEL` is `error`,
/// `warn`, `info` (default), `debug` or `trace`. Logs go to stderr.
pub fn init_logging() {
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
