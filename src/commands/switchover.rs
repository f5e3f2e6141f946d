//! `pg-entrypoint switchover [--to MEMBER]`: hands the primary role to a replica (native:
//! `lifecycle::native::switchover`; Patroni: asked of Patroni).

use std::time::Duration;

use super::{patroni, Mode};
use crate::config::{Config, ProcessInputs};
use crate::lifecycle::native::switchover;
use crate::postgres::admin::Admin;
use crate::postgres::local::Local;
use crate::postgres::server::Bin;
use nix::sys::signal::Signal;

pub fn run(mode: Mode, to: Option<&str>) -> i32 {
    if mode == Mode::Patroni {
        return patroni::switchover(&ProcessInputs, to);
    }
    match native(to) {
        Ok(done) => {
            println!(
                "switchover: {} is the primary, {} streams from it; writes waited {} ms",
                done.to,
                done.from,
                done.writes_stopped.as_millis()
            );
            0
        }
        Err(e) => {
            eprintln!("switchover: {e}");
            1
        }
    }
}

fn native(to: Option<&str>) -> Result<switchover::Done, String> {
    // The configuration (and any secret file only root may read) first, then no more root.
    let config = Config::from_inputs(&ProcessInputs).map_err(|e| e.to_string())?;
    let local = Local::open().map_err(|e| e.to_string())?;
    let mut client = local.connect(Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let config = local.running_config(&mut client, config);
    drop(client);
    let bin =
        Bin::locate(config.bindir.as_deref(), std::env::var("PATH").ok().as_deref()).map_err(|e| e.to_string())?;
    if config.superuser_password.is_none() && config.host_auth_method != "trust" {
        return Err("a switchover connects to the other members as POSTGRES_USER: set POSTGRES_PASSWORD or \
                    POSTGRES_PASSWORD_FILE as on the members"
            .into());
    }
    // Not stopped halfway by Ctrl-C or a stop signal (between the hand-over and the promotion
    // no member is writable; every wait is bounded), and the password file always removed.
    let mut stops = nix::sys::signal::SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT] {
        stops.add(signal);
    }
    nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_BLOCK, Some(&stops), None)
        .map_err(|e| format!("cannot hold off stop signals: {e}"))?;
    let admin = Admin::new(&config, &bin, config.superuser_password.as_ref()).map_err(|e| {
        let path = config.layout.admin_passfile(std::process::id());
        format!("cannot write the password file {}: {e}", path.display())
    })?;
    switchover::run(&config, &admin, to)
}
