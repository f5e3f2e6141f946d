//! `pg-entrypoint promote [--force]`: makes this running standby the primary. Native: the
//! checks and the promotion of `lifecycle::native::promote`; Patroni: a switchover (or
//! failover) to this member, asked of Patroni.

use super::{patroni, Mode};
use crate::config::ProcessInputs;
use crate::lifecycle::native::promote::promote_running;

pub fn run(mode: Mode, force: bool) -> i32 {
    if mode == Mode::Patroni {
        if force {
            eprintln!("promote: --force is for HA_MODE=native; Patroni checks the candidate itself");
            return 2;
        }
        return patroni::promote(&ProcessInputs);
    }
    match promote_running(force) {
        Ok((timeline, auto)) => {
            let next = if auto {
                "with REPLICATION_ROLE=auto it stays the primary across restarts"
            } else {
                "set REPLICATION_ROLE=primary before the next restart"
            };
            println!("promoted: now a primary on timeline {timeline}; {next}");
            0
        }
        Err(e) => {
            eprintln!("promote: {e}");
            1
        }
    }
}
