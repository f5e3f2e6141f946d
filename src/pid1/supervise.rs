//! PID 1 duties: run children, forward signals, reap orphans, pass exit statuses through.
//!
//! One mechanism for all of it: the signals we care about are blocked and read from a
//! signalfd, and one `waitpid(-1)` loop reaps every child. Statuses of the children we
//! started come out of that same loop and are kept until asked for, so reaping orphans never
//! steals them (e.g. a decompressor that exits while we wait for the psql it feeds).

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Signals we take over. Everything else keeps its default action.
const HANDLED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGCHLD,
];

/// How stop requests reach a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// postgres: SIGTERM would be a *smart* shutdown that waits for every client to leave, so
    /// SIGTERM and SIGINT both become SIGINT (fast); SIGQUIT stays immediate. If it is still
    /// running after the shutdown timeout, it gets SIGQUIT before the orchestrator's SIGKILL.
    Postgres,
    /// initdb, psql, init scripts: signals are forwarded as they are; after the shutdown
    /// timeout the child is killed (its work is redone at the next start).
    Tool,
    /// Patroni: SIGTERM is its clean stop (postgres stopped fast, the leader key released), so
    /// SIGINT becomes SIGTERM too; SIGHUP reloads its configuration. After the shutdown timeout
    /// it is killed, and the postgres it leaves is stopped by the caller.
    Patroni,
}

impl Kind {
    fn stop_signal(self, received: Signal) -> Signal {
        match (self, received) {
            (Kind::Postgres, Signal::SIGTERM) => Signal::SIGINT,
            (Kind::Patroni, Signal::SIGINT) => Signal::SIGTERM,
            (_, s) => s,
        }
    }

    fn escalation(self) -> Signal {
        match self {
            Kind::Postgres => Signal::SIGQUIT,
            Kind::Tool | Kind::Patroni => Signal::SIGKILL,
        }
    }

    /// Whether a signal that is not a stop request is passed on. SIGHUP (reload), SIGUSR1 and
    /// SIGUSR2 mean something to postgres; Python's default for SIGUSR1/2 is to die, and a tool
    /// (initdb, pg_basebackup, a script) would die of any of them: a reload must never stop
    /// anything.
    fn forwards(self, signal: Signal) -> bool {
        match self {
            Kind::Postgres => true,
            Kind::Patroni => signal == Signal::SIGHUP,
            Kind::Tool => false,
        }
    }
}

/// After a stop signal, how long postgres gets for a fast shutdown before an immediate one,
/// until the configuration says (`SHUTDOWN_TIMEOUT`): below Docker's 10 s grace period.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(8);

/// A start-up step still running after this long is logged, then after twice as long, etc.
const SLOW_STEP: Duration = Duration::from_secs(10);

/// Periodic work during supervision: how often, and what.
pub type Tick<'a> = (Duration, &'a mut dyn FnMut(&mut Supervisor));

/// What a wait is for: a named step (logged when slow), a readiness check, periodic work.
struct Waiting<'a> {
    what: Option<&'a str>,
    ready: Option<&'a mut dyn FnMut() -> bool>,
    tick: Option<Tick<'a>>,
}

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The child exited; the exit code as a shell reports it (128+N for death by signal N).
    Exited(i32),
    /// The readiness check passed while the child runs.
    Ready,
}

pub struct Supervisor {
    signals: SignalFd,
    shutdown_timeout: Duration,
    /// The first stop signal received; once set, we are on our way out.
    stop: Option<Signal>,
    stop_deadline: Option<Instant>,
    /// Children we started and have not collected yet.
    started: HashSet<Pid>,
    /// Exit codes of started children, reaped while we were waiting for another one.
    exited: HashMap<Pid, i32>,
    /// A child had to be stopped with its escalation signal.
    escalated: bool,
    /// Set with the first stop signal, for other threads (the HTTP endpoint answers 503).
    stopping: Arc<AtomicBool>,
    /// Runs when SIGHUP arrives, before it is passed on (the TLS copies are refreshed first,
    /// so that postgres's reload reads the new certificate).
    before_reload: Option<Box<dyn FnMut()>>,
    /// How many reloads (SIGHUP) were passed on: other children reload when it moves.
    reloads: u64,
}

impl Supervisor {
    /// Blocks the handled signals (so they queue on the signalfd instead of killing us or being
    /// lost) and makes us the reaper of orphans even when we are not PID 1.
    pub fn new() -> io::Result<Supervisor> {
        let mut mask = SigSet::empty();
        for s in HANDLED {
            mask.add(s);
        }
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        // Orphans of our children are re-parented to us instead of to a PID 1 that may not
        // reap them (e.g. under `docker run --init` we are not PID 1 ourselves).
        nix::sys::prctl::set_child_subreaper(true)?;
        Ok(Supervisor {
            signals,
            // Until the configuration is read.
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            stop: None,
            stop_deadline: None,
            started: HashSet::new(),
            exited: HashMap::new(),
            escalated: false,
            stopping: Arc::new(AtomicBool::new(false)),
            before_reload: None,
            reloads: 0,
        })
    }

    /// True from the first stop signal on, readable from another thread.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stopping.clone()
    }

    /// How long a fast shutdown may take (SHUTDOWN_TIMEOUT), once the configuration is known.
    pub fn set_shutdown_timeout(&mut self, timeout: Duration) {
        self.shutdown_timeout = timeout;
    }

    /// The stop signal received so far, if any (reads pending signals without waiting).
    pub fn stop_requested(&mut self) -> Option<Signal> {
        while let Ok(Some(info)) = self.signals.read_signal() {
            if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                if is_stop(sig) {
                    self.note_stop(sig);
                }
            }
        }
        self.stop
    }

    /// Starts a child with a clean signal state: the mask we block is inherited through
    /// fork and exec, and a postgres started with SIGTERM blocked could never be stopped.
    pub fn spawn(&mut self, command: &mut Command) -> io::Result<Child> {
        clean_signals_on_exec(command);
        let child = command.spawn()?;
        self.started.insert(Pid::from_raw(child.id() as i32));
        Ok(child)
    }

    /// Waits for `pid` (a step of the start-up, named `what`) to exit, forwarding signals to it
    /// and reaping any other child. Sleeps until a signal arrives: an idle supervisor costs no
    /// CPU. A step that runs much longer than usual is logged with what we wait for.
    pub fn wait(&mut self, pid: Pid, kind: Kind, what: &str) -> io::Result<i32> {
        let mut waiting = Waiting { what: Some(what), ready: None, tick: None };
        match self.wait_for(pid, kind, &mut waiting)? {
            Outcome::Exited(code) => Ok(code),
            Outcome::Ready => unreachable!("there is no readiness check"),
        }
    }

    /// Like [`Supervisor::wait`], but also returns `Ready` as soon as `ready()` is true
    /// (checked every few milliseconds while the child runs).
    pub fn wait_until(
        &mut self,
        pid: Pid,
        kind: Kind,
        what: &str,
        ready: &mut dyn FnMut() -> bool,
    ) -> io::Result<Outcome> {
        self.wait_for(pid, kind, &mut Waiting { what: Some(what), ready: Some(ready), tick: None })
    }

    /// Supervises the server (postgres, or Patroni) until it exits; returns its exit code as a
    /// shell reports it. `tick` runs every `interval` while no stop is under way (periodic work
    /// that must not block the loop: it may spawn children and collect them later with
    /// [`Supervisor::collect`]).
    pub fn supervise(&mut self, pid: Pid, kind: Kind, tick: Option<Tick>) -> io::Result<i32> {
        match self.wait_for(pid, kind, &mut Waiting { what: None, ready: None, tick })? {
            Outcome::Exited(code) => Ok(code),
            Outcome::Ready => unreachable!("there is no readiness check"),
        }
    }

    /// What to do on SIGHUP before postgres is told to reload.
    pub fn set_before_reload(&mut self, before: Box<dyn FnMut()>) {
        self.before_reload = Some(before);
    }

    /// Stops a child of ours that is not the supervised server (a backup, PgBouncer): SIGTERM,
    /// then SIGKILL after `grace`. Its exit code (137 when it had to be killed).
    pub fn terminate(&mut self, pid: Pid, grace: Duration) -> i32 {
        kill(pid, Signal::SIGTERM).ok();
        let deadline = Instant::now() + grace;
        loop {
            match self.collect(pid) {
                Ok(Some(code)) => return code,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    kill(pid, Signal::SIGKILL).ok();
                    return 137;
                }
            }
        }
    }

    /// How many reloads (SIGHUP) were passed on so far.
    pub fn reloads(&self) -> u64 {
        self.reloads
    }

    /// True once a child had to be stopped with the escalation signal (docs/variables.md, "Exit codes").
    pub fn escalated(&self) -> bool {
        self.escalated
    }

    /// Takes over a process one of our children left behind (re-parented to us, the
    /// subreaper), so it is waited for and stopped like a child we started. False when it is
    /// already gone.
    pub fn adopt(&mut self, pid: Pid) -> bool {
        self.started.insert(pid);
        // Reaped as an orphan before this call: its status is lost, and so is the process.
        if kill(pid, None).is_err() {
            self.started.remove(&pid);
            return false;
        }
        true
    }

    /// The exit code of a started child if it has exited, without waiting.
    pub fn collect(&mut self, pid: Pid) -> io::Result<Option<i32>> {
        self.reap(pid)
    }

    fn wait_for(&mut self, pid: Pid, kind: Kind, waiting: &mut Waiting) -> io::Result<Outcome> {
        const READY_POLL: Duration = Duration::from_millis(5);
        let started = Instant::now();
        let mut next_notice = SLOW_STEP;
        let mut next_tick = waiting.tick.as_ref().map(|(interval, _)| Instant::now() + *interval);
        let mut escalated = false;
        // A stop that arrived before this child existed still applies to it.
        if let Some(sig) = self.stop {
            send(pid, kind.stop_signal(sig));
        }
        loop {
            if let Some(code) = self.reap(pid)? {
                return Ok(Outcome::Exited(code));
            }
            if self.stop.is_none() && waiting.ready.as_mut().is_some_and(|ready| ready()) {
                return Ok(Outcome::Ready);
            }
            if let Some(deadline) = self.stop_deadline {
                if !escalated && Instant::now() >= deadline {
                    tracing::error!(
                        pid = pid.as_raw(),
                        timeout_s = self.shutdown_timeout.as_secs(),
                        "still running {} s after the stop request (SHUTDOWN_TIMEOUT); sending {}",
                        self.shutdown_timeout.as_secs(),
                        kind.escalation()
                    );
                    send(pid, kind.escalation());
                    escalated = true;
                    self.escalated = true;
                }
            }
            if let Some(what) = waiting.what.filter(|_| started.elapsed() >= next_notice) {
                tracing::warn!(pid = pid.as_raw(), "still waiting for {what} after {} s", started.elapsed().as_secs());
                next_notice *= 2;
            }
            if let (Some(at), Some((interval, tick)), None) = (next_tick, waiting.tick.as_mut(), self.stop) {
                if Instant::now() >= at {
                    tick(self);
                    next_tick = Some(Instant::now() + *interval);
                }
            }
            let mut timeout = if self.stop.is_none() && waiting.ready.is_some() { Some(READY_POLL) } else { None };
            let mut wake_at = |at: Instant| {
                let left = at.saturating_duration_since(Instant::now());
                timeout = Some(timeout.map_or(left, |t: Duration| t.min(left)));
            };
            if let (Some(deadline), false) = (self.stop_deadline, escalated) {
                wake_at(deadline);
            }
            if waiting.what.is_some() {
                wake_at(started + next_notice);
            }
            if let (Some(at), None) = (next_tick, self.stop) {
                wake_at(at);
            }
            self.wait_for_signal(timeout)?;
            while let Some(info) = self.signals.read_signal()? {
                let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else { continue };
                match sig {
                    Signal::SIGCHLD => {}
                    s if is_stop(s) => {
                        self.note_stop(s);
                        send(pid, kind.stop_signal(s));
                    }
                    s if kind.forwards(s) => {
                        if s == Signal::SIGHUP {
                            self.reloads += 1;
                        }
                        if let (Signal::SIGHUP, Some(before)) = (s, self.before_reload.as_mut()) {
                            before();
                        }
                        send(pid, s)
                    }
                    s => tracing::info!(signal = %s, "not passed on"),
                }
            }
        }
    }

    /// Sleeps for `duration` (e.g. between attempts to reach the primary), reaping orphans;
    /// returns early with the signal if a stop is requested.
    pub fn pause(&mut self, duration: Duration) -> io::Result<Option<Signal>> {
        let deadline = Instant::now() + duration;
        loop {
            if let Some(sig) = self.stop_requested() {
                return Ok(Some(sig));
            }
            self.reap_all()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.wait_for_signal(Some(left))?;
        }
    }

    fn note_stop(&mut self, sig: Signal) {
        if self.stop.is_none() {
            self.stopping.store(true, Ordering::Relaxed);
            tracing::info!(signal = %sig, "stop requested");
            self.stop = Some(sig);
            self.stop_deadline = Some(Instant::now() + self.shutdown_timeout);
        }
    }

    fn wait_for_signal(&self, timeout: Option<Duration>) -> io::Result<()> {
        let timeout = match timeout {
            None => PollTimeout::NONE,
            // Round up so a deadline a fraction of a millisecond away does not spin.
            Some(t) => PollTimeout::try_from(t + Duration::from_micros(999)).unwrap_or(PollTimeout::MAX),
        };
        let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(&self.signals), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Reaps every exited child; returns the exit code of `pid` once it has exited.
    fn reap(&mut self, pid: Pid) -> io::Result<Option<i32>> {
        self.reap_all()?;
        Ok(self.exited.remove(&pid))
    }

    /// Reaps every exited child: orphans are simply gone; our own children's exit codes are
    /// kept for whoever waits for them.
    fn reap_all(&mut self) -> io::Result<()> {
        loop {
            let (p, code) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(p, code)) => (p, code),
                Ok(WaitStatus::Signaled(p, sig, _)) => (p, 128 + sig as i32),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(()),
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            if self.started.remove(&p) {
                self.exited.insert(p, code);
            }
        }
    }
}

fn is_stop(sig: Signal) -> bool {
    matches!(sig, Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT)
}

fn send(pid: Pid, sig: Signal) {
    // ESRCH: the child exited and awaits reaping; nothing to do.
    if let Err(e) = kill(pid, sig) {
        if e != Errno::ESRCH {
            tracing::warn!(pid = pid.as_raw(), signal = %sig, error = %e, "cannot signal child");
        }
    }
}

/// Makes `command` start with default signal dispositions and nothing blocked, whatever this
/// process blocks (the mask is inherited through fork and exec).
pub fn clean_signals_on_exec(command: &mut Command) {
    // SAFETY: the closure runs between fork and exec; it only calls sigaction and
    // sigprocmask, which are async-signal-safe, and allocates nothing.
    unsafe { command.pre_exec(reset_signal_state) };
}

/// Runs in the child between fork and exec: default dispositions, nothing blocked.
fn reset_signal_state() -> io::Result<()> {
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            // SAFETY: installing SIG_DFL replaces no handler that could be running.
            let _ = unsafe { sigaction(sig, &default) };
        }
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
    Ok(())
}

/// Drops this process's mapped code pages from its page tables before the long supervision.
/// Start-up touched (and the kernel's fault-around mapped) most of the binary's code, which
/// the supervision loop never runs again; the pages stay in the page cache and come back on
/// demand. Only executable mappings of our own binary are trimmed: they are never written,
/// so nothing is lost (writable or relocated data mappings are left alone).
pub fn trim_resident_code() {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else { return };
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return };
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [range, perms, _, _, _, path, ..] = fields[..] else { continue };
        if perms != "r-xp" || std::path::Path::new(path) != exe {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) else { continue };
        let Some(addr) = std::ptr::NonNull::new(start as *mut std::ffi::c_void) else { continue };
        // SAFETY: the range is a read-only, executable, file-backed private mapping of our own
        // binary (from /proc/self/maps); MADV_DONTNEED on it only unmaps pages, which fault
        // back in unchanged from the file when executed again.
        let _ = unsafe { nix::sys::mman::madvise(addr, end - start, nix::sys::mman::MmapAdvise::MADV_DONTNEED) };
    }
}

/// Replaces this process with `argv` (`docker run IMAGE bash`). Returns only on failure,
/// with the shell's exit code: 127 when not found, 126 when it cannot be executed.
pub fn exec<S: AsRef<std::ffi::OsStr>>(argv: &[S]) -> i32 {
    let err = Command::new(&argv[0]).args(&argv[1..]).exec();
    // Not eprintln!: it panics when stderr is gone, and the exit code must still come out.
    let _ = writeln!(io::stderr(), "pg-entrypoint: cannot execute {:?}: {err}", argv[0].as_ref());
    if err.kind() == io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}
