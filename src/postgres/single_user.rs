//! SQL before any listener exists: `postgres --single` on a data directory, for the first
//! boot's statements and for (re)applying the replication role at every start of a primary.
//!
//! A single-user backend reads the same configuration as the server, ours and the user's
//! included, so every setting that could make it block (synchronous replication: there is no
//! walsender to confirm anything), log the statements (they carry password verifiers) or parse
//! string literals differently is forced on its command line, which wins over every file.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use nix::unistd::Pid;

use crate::config::Replication;
use crate::pid1::supervise::{Kind, Supervisor};
use crate::postgres::step::{self, Context, StepError};
use crate::render;

/// Settings of the single-user session, whatever the configuration files say.
pub const FORCED_SETTINGS: &[&str] = &[
    // Stop at the first error instead of going on with the next statement.
    "exit_on_error=on",
    // Blocking (besides render::NO_SYNCHRONOUS_WAIT): read-only sessions and timeouts.
    "default_transaction_read_only=off",
    "statement_timeout=0",
    "lock_timeout=0",
    // Leaking: every path that can write a statement (with its verifier) to the log.
    "log_statement=none",
    "log_min_error_statement=panic",
    "log_min_duration_statement=-1",
    "log_min_duration_sample=-1",
    "log_statement_sample_rate=0",
    "log_transaction_sample_rate=0",
    "log_duration=off",
    "debug_print_parse=off",
    "debug_print_rewritten=off",
    "debug_print_plan=off",
    // Parsing: our literals are written for standard-conforming strings.
    "standard_conforming_strings=on",
];

/// The replication role's statements, its password as a SCRAM verifier computed here.
pub fn replication_role(r: &Replication) -> Vec<String> {
    render::replication_role_sql(&r.user, &scram(r.password.expose()))
}

/// A SCRAM-SHA-256 verifier: postgres stores it as given, so no plaintext reaches it.
pub fn scram(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}

/// Runs `statements` in single-user mode on `dir`: no listener, no temporary server.
pub fn run(ctx: &Context, sup: &mut Supervisor, dir: &Path, statements: &[String]) -> Result<(), StepError> {
    if statements.is_empty() {
        return Ok(());
    }
    let what = "bootstrap SQL (postgres --single)";
    let mut cmd = step::tool(ctx.bin, "postgres");
    cmd.arg("--single").arg("-j").arg("-D").arg(dir);
    for setting in render::NO_SYNCHRONOUS_WAIT.iter().chain(FORCED_SETTINGS) {
        cmd.arg("-c").arg(setting);
    }
    cmd.arg("postgres").stdin(Stdio::piped()).stdout(Stdio::null());
    let mut child = sup.spawn(&mut cmd).map_err(|source| StepError::Spawn { what: what.into(), source })?;
    // With -j a statement ends with ";" and an empty line. Names cannot contain line breaks
    // (config rejects control characters), so no statement ends early.
    let input: String = statements.iter().map(|s| format!("{s};\n\n")).collect();
    if let Some(mut stdin) = child.stdin.take() {
        // A write error means the backend died; its exit code says why.
        let _ = stdin.write_all(input.as_bytes());
    }
    step::finish(sup, what, Pid::from_raw(child.id() as i32), Kind::Tool)
}
