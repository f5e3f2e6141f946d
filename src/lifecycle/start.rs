//! The start-up sequence, one function per step: validate (postgres judging the settings
//! too), classify PGDATA before touching it, prepare and drop privileges, bootstrap or
//! converge the data directory, then run and supervise postgres.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::config::{Config, Layout, ProcessInputs, Role};
use crate::lifecycle::arbitrary_uid;
use crate::lifecycle::backup::{self, restore, scheduler::Scheduler};
use crate::lifecycle::bootstrap;
use crate::lifecycle::converge;
use crate::lifecycle::http::{self, routes::Phase};
use crate::lifecycle::native::{auto, fence, handover, promote, replica, slot_keeper};
use crate::lifecycle::patroni;
use crate::lifecycle::pooler;
use crate::lifecycle::upgrade;
use crate::pgdata::datadir::{self, State};
use crate::pgdata::files;
use crate::pgdata::tls;
use crate::pid1::privileges;
use crate::pid1::supervise::{Supervisor, Tick};
use crate::postgres::server::{Bin, Sockets};
use crate::postgres::step::{self, exit, Context, StepError};
use crate::render;

/// Everything `check` and `run` decide before touching anything.
pub struct Plan {
    pub config: Config,
    pub settings: render::Settings,
    pub sockets: Sockets,
    pub bin: Bin,
    pub server_major: u32,
    /// The fingerprint of settings postgres has just passed, to record once our directory is
    /// ours (`None`: they were passed before, nothing to record).
    pub unrecorded_check: Option<String>,
}

impl Plan {
    pub fn context<'a>(&'a self, postgres_args: &'a [String]) -> Context<'a> {
        Context {
            config: &self.config,
            bin: &self.bin,
            server_major: self.server_major,
            sockets: &self.sockets,
            postgres_args,
            settings: &self.settings,
        }
    }
}

/// Step 1: the environment and the postgres arguments become a plan, or every problem is
/// reported at once.
pub fn plan(postgres_args: &[String]) -> Result<Plan, String> {
    let mut config = Config::from_inputs(&ProcessInputs).map_err(|e| e.to_string())?;
    let settings = render::settings(&config);
    let sockets = Sockets::resolve(&settings, postgres_args).map_err(|e| format!("invalid configuration: {e}"))?;
    crate::postgres::server::check_managed_args(postgres_args).map_err(|e| format!("invalid configuration: {e}"))?;
    let bin = Bin::locate(config.bindir.as_deref(), std::env::var("PATH").ok().as_deref())
        .map_err(|e| format!("invalid configuration: {e}"))?;
    // Our files where this server's sockets are (postgres arguments included).
    config.layout = Layout::new(&sockets.socket_dir, sockets.port);
    // postgres judges the settings, unless it passed these very ones before.
    let fingerprint = crate::postgres::server::settings_fingerprint(&bin, &settings, postgres_args);
    let (server_major, unrecorded_check) =
        match crate::postgres::server::recorded_check(&config.layout.settings_checked(), &fingerprint) {
            Some(major) => (major, None),
            None => {
                let major = crate::postgres::server::judge_settings(&bin, &settings, postgres_args)
                    .map_err(|e| format!("invalid configuration: {e}"))?;
                (major, Some(fingerprint))
            }
        };
    // Connections to other members (primary_conninfo among the settings) as this libpq allows.
    config.tls = config.tls.with_libpq_of(server_major, &config.host_auth_method);
    config.forget_self(sockets.port, &crate::config::Inputs::hostname(&ProcessInputs));
    let settings = render::settings(&config);
    backup::check_installed(&config)?;
    pooler::check_installed(&config)?;
    if config.init_scripts_dir.exists() && !config.init_scripts_dir.is_dir() {
        return Err(format!(
            "invalid configuration: INIT_SCRIPTS_DIR: {:?} is not a directory; accepted: a directory of scripts",
            config.init_scripts_dir
        ));
    }
    Ok(Plan { config, settings, sockets, bin, server_major, unrecorded_check })
}

/// What this start would refuse to create a cluster with, found before anything is made
/// (PGDATA read, nothing written; an unreadable PGDATA is left to the steps that report it):
/// no superuser password, POSTGRES_INITDB_ARGS that initdb refuses, or a POSTGRES_INITDB_WALDIR
/// that is not empty (an interrupted bootstrap's own WAL there is cleared by the bootstrap).
pub fn creation_problem(plan: &Plan) -> Option<String> {
    let config = &plan.config;
    let state = datadir::inspect(&config.pgdata).ok()?;
    // A restore from the repository brings its own roles and settings.
    let restores = config.backup.as_ref().is_some_and(|b| b.restore.is_some());
    let creates = matches!(state, State::Empty | State::Interrupted) && !restores;
    if let Some(problem) = config.password_problem(creates) {
        return Some(problem.to_string());
    }
    if !creates || matches!(config.role, Role::Replica(_)) {
        return None;
    }
    if let (State::Empty, Some(waldir)) = (&state, &config.initdb_waldir) {
        if std::fs::read_dir(waldir).is_ok_and(|mut entries| entries.next().is_some()) {
            return Some(format!(
                "invalid configuration: POSTGRES_INITDB_WALDIR: {} is not empty; initdb needs an empty or missing \
                 directory. Nothing was changed",
                waldir.display()
            ));
        }
    }
    crate::postgres::server::judge_initdb_args(&plan.bin, &config.initdb_args, config.superuser_password.is_some())
        .err()
        .map(|problem| format!("invalid configuration: {problem}"))
}

/// How far [`run`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// Set up and serve: the entrypoint.
    Serve,
    /// Only make sure PGDATA holds a cluster, then exit 0 (`docker-ensure-initdb.sh`, e.g. a
    /// Kubernetes init container); `enforce` fails when it already held one
    /// (`docker-enforce-initdb.sh`).
    Initialise { enforce: bool },
}

/// `pg-entrypoint [postgres] [args]`: returns the process exit code.
pub fn run(postgres_args: &[String], goal: Goal) -> i32 {
    // Signals are taken over first: a stop during validation must not be lost.
    let mut sup = match Supervisor::new() {
        Ok(sup) => sup,
        Err(e) => {
            tracing::error!("cannot set up signal handling: {e}");
            return exit::STARTUP_FAILED;
        }
    };
    start(&mut sup, postgres_args, goal).unwrap_or_else(Failure::report)
}

/// The sequence of docs/startup.md, in the official entrypoint's order; a step that fails
/// says the code to exit with.
fn start(sup: &mut Supervisor, postgres_args: &[String], goal: Goal) -> Result<i32, Failure> {
    let began = Instant::now();
    // 1. The environment and the arguments, judged before anything is touched.
    let mut plan = plan(postgres_args).map_err(Failure::config)?;
    // The upstream image's volume chosen as PGDATA (config::layout): our children see it too.
    // Single-threaded still, so the environment may change.
    if std::env::var_os("PGDATA").is_none_or(|given| plan.config.pgdata.as_os_str() != given) {
        std::env::set_var("PGDATA", &plan.config.pgdata);
    }
    sup.set_shutdown_timeout(plan.config.shutdown_timeout);
    creation_problem(&plan).map_or(Ok(()), |problem| Err(Failure::config(problem)))?;
    warn_about_the_setup(&plan);
    if let Some(sig) = sup.stop_requested() {
        tracing::warn!("stopped by {sig} before anything was done");
        return Ok(128 + sig as i32);
    }
    // 2. What PGDATA is, before root changes anything there.
    classify_data_dir(&plan)?;
    if let Some(code) = already_initialised(&plan.config, goal)? {
        return Ok(code);
    }
    patroni_problem(&plan.config, goal).map_or(Ok(()), |problem| Err(Failure::new(exit::FENCED, problem)))?;
    // 3. As root: our directories, ownership; then the service account.
    prepare(&plan).map_err(|e| Failure::new(exit::STARTUP_FAILED, e))?;
    record_settings_check(&plan);
    let _pgdata_lock = lock_data_dir(&plan.config)?;
    // Before anything reads the cluster: an older major is upgraded (or an interrupted upgrade
    // resolved), and REPLICATION_ROLE=auto becomes primary or replica.
    let upgrading = Instant::now();
    let upgraded = upgrade::settle(&plan.context(postgres_args), sup)?;
    let upgrade_took = upgraded.then(|| upgrading.elapsed());
    if matches!(plan.config.role, Role::Auto(_)) {
        plan.config.role = auto::resolve(&plan.context(postgres_args), sup)?;
    }
    // A switchover's record outranks the environment (kept to apply again after a hand-over).
    let configured = plan.config.role.clone();
    handover::apply_record(&mut plan.config)?;
    plan.settings = render::settings(&plan.config);
    let endpoint = match goal {
        Goal::Serve => {
            start_endpoint(&plan, sup, began, upgrade_took).map_err(|e| Failure::new(exit::STARTUP_FAILED, e))?
        }
        Goal::Initialise { .. } => None, // an init container serves nothing
    };
    let ctx = plan.context(postgres_args);
    if let (Role::Patroni(member), Goal::Serve) = (&plan.config.role, goal) {
        return Ok(patroni::serve(&ctx, sup, member));
    }
    // 4, 5. Bootstrap, clone or rejoin an empty PGDATA, or converge a cluster; 6. supervise.
    let waiter = bring_data_dir_to_role(&ctx, sup, endpoint.as_ref()).map_err(|e| Failure::unfinished(e, &ctx))?;
    upgrade::after_clone(&plan.config.pgdata)?;
    if goal != Goal::Serve {
        tracing::info!("PGDATA is initialised; exiting without starting postgres");
        return Ok(0);
    }
    // PgBouncer lives across a switchover's restart of postgres.
    let mut pooler = pooler::Supervised::new(&plan.config, &plan.bin, sup);
    let mut ended = supervise_postgres(&ctx, sup, endpoint.as_ref(), upgraded, waiter, pooler.as_mut());
    // A primary that handed its role over (or failed to): again, in the role recorded.
    let code = loop {
        let handed_to = match ended {
            Ended::Exit(code) => break Ok(code),
            Ended::RoleChanged { handed_to } => handed_to,
        };
        plan.config.role = configured.clone();
        if let Err(e) = handover::apply_record(&mut plan.config) {
            break Err(Failure::from(e));
        }
        plan.settings = render::settings(&plan.config);
        let ctx = plan.context(postgres_args);
        let waiter = match bring_data_dir_to_role(&ctx, sup, endpoint.as_ref()) {
            Ok(waiter) => waiter,
            Err(e) => break Err(Failure::from(e)),
        };
        if let Some(pooler) = pooler.as_mut() {
            pooler.set_config(&plan.config);
            pooler.follow(handed_to);
        }
        ended = supervise_postgres(&ctx, sup, endpoint.as_ref(), false, waiter, pooler.as_mut());
    };
    // PgBouncer goes after postgres, however the supervision ended.
    if let Some(pooler) = pooler.as_mut() {
        pooler.stop(sup);
    }
    code
}

/// Why the start gave up: the message to log and the code to exit with.
struct Failure {
    code: i32,
    message: String,
    /// Stopped by a signal rather than failed: a warning, not an error.
    stopped: bool,
}

impl Failure {
    fn new(code: i32, message: impl std::fmt::Display) -> Failure {
        Failure { code, message: message.to_string(), stopped: false }
    }

    fn config(message: impl std::fmt::Display) -> Failure {
        Failure::new(exit::CONFIG, message)
    }

    /// A failed bootstrap, clone or rejoin, saying whether the next start redoes it.
    fn unfinished(e: StepError, ctx: &Context) -> Failure {
        let mut failure = Failure::from(e);
        if datadir::bootstrap_unfinished(&ctx.config.pgdata) {
            failure.message.push_str("; the unfinished bootstrap is redone at the next start");
        }
        failure
    }

    fn report(self) -> i32 {
        if self.stopped {
            tracing::warn!("{}", self.message);
        } else {
            tracing::error!("{}", self.message);
        }
        self.code
    }
}

impl From<StepError> for Failure {
    fn from(e: StepError) -> Failure {
        Failure { code: e.exit_code(), stopped: matches!(e, StepError::Stopped(_)), message: e.to_string() }
    }
}

/// What deserves a warning before anything is done: a variable that looks misspelt, a
/// trusting server, a small /dev/shm.
fn warn_about_the_setup(plan: &Plan) {
    for warning in &plan.config.unknown_variables {
        tracing::warn!("{warning}");
    }
    if plan.config.host_auth_method == "trust" {
        tracing::warn!(
            "POSTGRES_HOST_AUTH_METHOD=trust: anyone who reaches this server over TCP may connect as any role, \
             superuser included, without a password"
        );
    }
    for rule in plan.config.hba_added.iter().filter(|r| r.split_whitespace().any(|f| f == "trust" || f == "password")) {
        tracing::warn!("PG_HBA_ADD: {rule:?} lets clients in without a password, or sends it in clear text");
    }
    warn_if_small_shm(std::path::Path::new("/dev/shm"));
}

/// Step 2: PGDATA is ours to touch (not another uid's, not in a state we must not change),
/// and its major is one this server can run or upgrade.
fn classify_data_dir(plan: &Plan) -> Result<(), Failure> {
    let startup = |e: &dyn std::fmt::Display| Failure::new(exit::STARTUP_FAILED, e);
    if !nix::unistd::geteuid().is_root() {
        arbitrary_uid::refuse_foreign_owner(&plan.config.pgdata).map_err(|e| startup(&e))?;
    }
    datadir::check_before_touching(&plan.config.pgdata).map_err(|e| startup(&e))?;
    upgrade::check_major(&plan.config, plan.server_major).map_err(Failure::config)
}

/// `ensure-initdb` and `enforce-initdb` on a PGDATA that already holds a cluster: the code to
/// exit with (0 and 1), or `None` to go on.
fn already_initialised(config: &Config, goal: Goal) -> Result<Option<i32>, Failure> {
    let Goal::Initialise { enforce } = goal else { return Ok(None) };
    if !matches!(datadir::inspect(&config.pgdata), Ok(State::Cluster { .. })) {
        return Ok(None);
    }
    let pgdata = config.pgdata.display();
    if enforce {
        return Err(Failure::new(
            exit::STARTUP_FAILED,
            format!("PGDATA {pgdata} already holds a cluster; enforce-initdb initialises only an empty one"),
        ));
    }
    tracing::info!("PGDATA {pgdata} already holds a cluster; nothing to initialise");
    Ok(Some(0))
}

/// Once our directory is ours: the settings postgres passed need no check at the next start.
fn record_settings_check(plan: &Plan) {
    if let Some(fingerprint) = &plan.unrecorded_check {
        let path = plan.config.layout.settings_checked();
        if let Err(e) = crate::postgres::server::record_check(&path, fingerprint, plan.server_major) {
            tracing::debug!("cannot record the settings check in {}: {e}", path.display());
        }
    }
}

/// One entrypoint per PGDATA. Under Patroni, its bootstrap runs `enforce-initdb` while our
/// PID 1 holds the lock: no lock then.
fn lock_data_dir(config: &Config) -> Result<Option<nix::fcntl::Flock<std::fs::File>>, Failure> {
    if std::env::var_os(patroni::UNDER_PATRONI).is_some() {
        return Ok(None);
    }
    datadir::lock(&config.pgdata).map(Some).map_err(|e| Failure::new(exit::STARTUP_FAILED, e))
}

/// A data directory Patroni has managed is only started by Patroni: started alone, it could
/// become a second primary beside the leader Patroni elected meanwhile (docs/patroni.md,
/// "Back to native mode").
fn patroni_problem(config: &Config, goal: Goal) -> Option<String> {
    let alone = !matches!(config.role, Role::Patroni(_)) && goal == Goal::Serve;
    (alone && patroni::managed_by_patroni(&config.pgdata)).then(|| {
        format!(
            "refusing to start: PGDATA {} was managed by Patroni ({} is there) and HA_MODE is {}; started without \
             Patroni it could become a second primary. Set HA_MODE=patroni, or, to leave Patroni for good, stop every \
             member, then remove {} from each PGDATA and start the former leader first",
            config.pgdata.display(),
            crate::config::layout::PATRONI_DYNAMIC_CONF,
            if config.role == Role::Standalone { "unset" } else { "native" },
            crate::config::layout::PATRONI_DYNAMIC_CONF
        )
    })
}

/// Step 3b: the HTTP endpoint listens from now on; it answers 503 to role checks until the
/// real postgres runs (docs/http.md).
fn start_endpoint(
    plan: &Plan,
    sup: &Supervisor,
    began: Instant,
    upgrade_took: Option<std::time::Duration>,
) -> Result<Option<http::Endpoint>, String> {
    let Some(listen) = &plan.config.http else { return Ok(None) };
    let c = &plan.config;
    let target = http::Target {
        socket_dir: plan.sockets.socket_dir.clone(),
        port: plan.sockets.port,
        user: c.superuser.clone(),
        pgdata: c.pgdata.clone(),
        native: c.role != Role::Standalone,
        replica: matches!(c.role, Role::Replica(_)),
        began,
        upgrade_took,
        pooler_port: c.pooler.as_ref().map(|p| p.port),
    };
    http::start(&listen.candidates(), target, sup.stop_flag())
        .map(Some)
        .map_err(|e| format!("HTTP_PORT {}: cannot listen: {e}; set HTTP_PORT to a free port, or to off", listen.port))
}

/// How often the supervision loop hands out turns (the slot keeper, the majority waiter, the
/// analyzer after an upgrade); each keeps its own schedule and never blocks.
const TICK: std::time::Duration = std::time::Duration::from_secs(1);
const POOLER_TICK: std::time::Duration = std::time::Duration::from_millis(250);

/// Below this, /dev/shm is a known trap: Docker and Kubernetes give containers 64 MB.
const SMALL_SHM: u64 = 128 << 20;

/// postgres keeps the shared memory of parallel queries in /dev/shm; in Docker's default
/// 64 MB they fail on real data with "could not resize shared memory segment".
fn warn_if_small_shm(shm: &std::path::Path) {
    let Ok(fs) = nix::sys::statvfs::statvfs(shm) else { return };
    let size = fs.blocks() * fs.fragment_size();
    if size < SMALL_SHM {
        tracing::warn!(
            size_mb = size >> 20,
            "/dev/shm is small: parallel queries may fail with \"could not resize shared memory segment\"; give \
             the container more (docker run --shm-size=256m, compose shm_size: 256mb, Kubernetes: an emptyDir \
             with medium Memory at /dev/shm)"
        );
    }
}

/// Step 3: as root, make the directories and become `postgres`; otherwise work as we are
/// (docs/official-image.md: `--user`).
fn prepare(plan: &Plan) -> Result<(), Box<dyn std::error::Error>> {
    let pgdata = &plan.config.pgdata;
    if nix::unistd::geteuid().is_root() {
        let account = privileges::service_account()?;
        let mut dirs: Vec<PathBuf> = plan.sockets.socket_dirs.clone();
        dirs.extend(plan.config.layout.passfile().parent().map(PathBuf::from));
        dirs.extend(plan.config.initdb_waldir.clone());
        privileges::prepare_as_root(pgdata, &dirs, &account)?;
        // A repository on a path of this container: a volume mounted empty, or made here.
        if let Some(repo) = plan.config.backup.as_ref().and_then(|b| b.posix_repository()) {
            privileges::own_empty_dir(&repo, &account)?;
        }
        privileges::become_user(&account)?;
        tracing::debug!(user = %account.name, uid = account.uid, "dropped privileges");
    } else {
        arbitrary_uid::prepare(pgdata, &plan.sockets.socket_dirs)?;
        arbitrary_uid::provide_user_name(pgdata, &plan.config.layout)?;
    }
    // The configuration read the TLS files as root; the copies belong to the account.
    tls::install(&plan.config, true).map_err(|e| format!("cannot write the TLS files beside the socket: {e}"))?;
    backup::write_conf(&plan.config).map_err(|e| {
        format!("cannot write pgBackRest's configuration {}: {e}", plan.config.layout.backrest_conf().display())
    })?;
    Ok(())
}

/// Steps 4 and 5: bootstrap an empty data directory, or converge an existing one. The HTTP
/// endpoint, if any, says which (it starts as "starting"). A primary that reached no
/// majority of its members starts read-only, with the [`fence::Waiter`] returned here.
fn bring_data_dir_to_role(
    ctx: &Context,
    sup: &mut Supervisor,
    endpoint: Option<&http::Endpoint>,
) -> Result<Option<fence::Waiter>, StepError> {
    let report = |phase| endpoint.map_or((), |e| e.set_phase(phase));
    let pgdata = &ctx.config.pgdata;
    if !matches!(ctx.config.role, Role::Replica(_)) {
        // Only a replica keeps the replication password on disk (e.g. left by its life as one).
        files::remove_passfile(&ctx.config.layout.passfile())?;
    }
    // Left by a server of an earlier life of this container (`docker restart`); the temporary
    // server of a bootstrap uses the same sockets.
    datadir::remove_stale_socket_locks(pgdata, &ctx.sockets.socket_dirs, ctx.sockets.port)?;
    let mut state = datadir::settle(pgdata)?;
    // From the repository: the restored cluster then starts as any existing one (a primary
    // with peers asks them first, as below).
    let restore = ctx.config.backup.as_ref().and_then(|b| b.restore.as_ref());
    if let (State::Empty | State::Interrupted, Some(restore), false) =
        (&state, restore, matches!(ctx.config.role, Role::Replica(_)))
    {
        report(Phase::RestoringFromBackup);
        restore::at_start(ctx, sup, restore)?;
        state = datadir::settle(pgdata)?;
    }
    if let State::Cluster { standby } = state {
        if ctx.config.superuser_password.is_some() {
            // As in the official image; a changed password would otherwise seem applied.
            tracing::info!("PGDATA holds a cluster: POSTGRES_PASSWORD is not applied (change it with ALTER ROLE)");
        }
        datadir::remove_stale_pidfile(pgdata)?;
        datadir::remove_legacy_passfile(pgdata)?;
        if !matches!(ctx.config.role, Role::Replica(_)) {
            backup::check_restore_over(ctx.config, pgdata).map_err(StepError::RestoreRefused)?;
        }
        promote::check_runtime_promotion(ctx, standby)?;
    }
    match (state, &ctx.config.role) {
        (State::Foreign(entries), _) => Err(datadir::refuse(pgdata, &entries).into()),
        (State::Empty | State::Interrupted, Role::Replica(replica)) => {
            report(Phase::CreatingReplica);
            replica::clone(ctx, sup, replica)?;
            replica::converge(ctx, sup, replica, true).map(|()| None)
        }
        // A cluster created now has no history another member could be ahead of.
        (State::Empty | State::Interrupted, _) => {
            report(Phase::InitializingNewCluster);
            bootstrap::initialise(ctx, sup).map(|()| None)
        }
        (State::Cluster { standby: true }, Role::Replica(replica)) => {
            replica::converge(ctx, sup, replica, false).map(|()| None)
        }
        (State::Cluster { standby: false }, Role::Replica(replica)) => {
            replica::rejoin(ctx, sup, replica)?;
            replica::converge(ctx, sup, replica, true).map(|()| None)
        }
        (State::Cluster { standby: true }, _) => {
            promote::promote_standby(ctx, sup)?;
            converge::existing_cluster(ctx, sup).map(|()| None)
        }
        (State::Cluster { standby: false }, Role::Primary(replication)) => {
            match fence::before_writable(ctx, sup, replication, None)? {
                fence::Writable::Now => converge::existing_cluster(ctx, sup).map(|()| None),
                fence::Writable::AfterMajority { why, me } => {
                    tracing::warn!("starting read-only until a majority of the members answers: {why}");
                    let settings = fence::read_only(ctx.settings, &why);
                    converge::existing_cluster(&Context { settings: &settings, ..*ctx }, sup)?;
                    Ok(Some(fence::Waiter::new(ctx, replication, me)))
                }
            }
        }
        (State::Cluster { standby: false }, _) => converge::existing_cluster(ctx, sup).map(|()| None),
        (State::Staged | State::Discarding | State::Upgrading, _) => unreachable!("finished above"),
    }
}

/// How supervising postgres ended.
enum Ended {
    /// The process exits with this code.
    Exit(i32),
    /// postgres stopped for a switchover: the start goes on in the role now recorded, a
    /// replica of `handed_to` (`None`: the hand-over failed, a primary again).
    RoleChanged { handed_to: Option<crate::config::Address> },
}

/// Step 6: run postgres and pass its exit status through (docs/variables.md, "Exit codes"). With a
/// `waiter` it runs read-only until a majority answers, or stops when one shows it must not
/// be a primary (exit [`exit::FENCED`]).
fn supervise_postgres(
    ctx: &Context,
    sup: &mut Supervisor,
    endpoint: Option<&http::Endpoint>,
    upgraded: bool,
    mut waiter: Option<fence::Waiter>,
    mut pooler: Option<&mut pooler::Supervised>,
) -> Ended {
    let mut cmd: Command = step::tool(ctx.bin, "postgres");
    cmd.arg("-D").arg(&ctx.config.pgdata).args(ctx.postgres_args);
    let child = match sup.spawn(&mut cmd) {
        Ok(child) => child,
        Err(e) => {
            tracing::error!("cannot start postgres: {e}");
            return Ended::Exit(exit::STARTUP_FAILED);
        }
    };
    let pid = Pid::from_raw(child.id() as i32);
    if ctx.config.tls.mode != crate::config::TlsMode::Off {
        let config = ctx.config.clone();
        sup.set_before_reload(Box::new(move || tls::refresh(&config)));
    }
    if let Some(endpoint) = endpoint {
        endpoint.set_phase(Phase::Running);
    }
    tracing::info!(pid = pid.as_raw(), role = ctx.config.role.name(), port = ctx.sockets.port, "postgres started");
    crate::pid1::supervise::trim_resident_code();
    let mut keeper = match &ctx.config.role {
        Role::Replica(replica) => Some(slot_keeper::SlotKeeper::new(ctx, replica, pid)),
        _ => None,
    };
    let mut analyzer = upgraded.then(|| upgrade::Analyzer::new(ctx));
    let mut backups = ctx.config.backup.as_ref().and_then(|b| Scheduler::new(ctx.config, ctx.bin, b, upgraded));
    let mut fenced = false;
    // A member among peers may be asked to hand over (`switchover`) whenever it is the primary.
    let mut handover = (!ctx.config.other_members().is_empty()).then(handover::Watch::default);
    let mut handing_over: Option<crate::config::Address> = None;
    let ticking = keeper.is_some()
        || analyzer.is_some()
        || waiter.is_some()
        || backups.is_some()
        || handover.is_some()
        || pooler.is_some();
    // A pooler resumes its clients after a switchover within a quarter of a second.
    let interval = if pooler.is_some() { POOLER_TICK } else { TICK };
    let mut turn = |sup: &mut Supervisor| {
        if let Some(to) = handover.as_mut().and_then(|watch| watch.requested(ctx.config)) {
            tracing::warn!(
                "switchover: handing the primary role to {to}: fast shutdown (postgres sends its last WAL to the \
                 standbys before it exits)"
            );
            handover = None;
            if let Some(pooler) = pooler.as_mut() {
                pooler.pause();
            }
            handing_over = Some(to);
            nix::sys::signal::kill(pid, Signal::SIGINT).ok();
        }
        if let Some(pooler) = pooler.as_mut() {
            pooler.tick(sup);
        }
        if let Some(keeper) = keeper.as_mut() {
            keeper.tick(sup);
        }
        if let Some(backups) = backups.as_mut() {
            backups.tick(sup);
        }
        if let Some(analyzer) = analyzer.as_mut() {
            analyzer.tick(sup);
        }
        match waiter.as_mut().map(|w| w.tick(sup)) {
            None | Some(fence::Waited::Still) => {}
            Some(fence::Waited::Majority) => {
                // The settings without read-only, then a reload: writable from the next
                // transaction of every session. If that fails, the next round tries again.
                match files::write_config_and_reload(ctx.config, ctx.settings, &ctx.config.pgdata, pid) {
                    Ok(()) => {
                        waiter = None;
                        tracing::info!("a majority of the members answered: accepting writes");
                    }
                    Err(e) => tracing::error!("a majority answered but the configuration could not be applied: {e}"),
                }
            }
            Some(fence::Waited::Fenced(why)) => {
                waiter = None;
                fenced = true;
                tracing::error!("refusing to become a writable primary: {why}; stopping");
                // A fast shutdown: the read-only server acknowledged no write.
                nix::sys::signal::kill(pid, Signal::SIGINT).ok();
            }
        }
    };
    let tick: Option<Tick> = ticking.then_some((interval, &mut turn));
    let code = match sup.supervise(pid, crate::pid1::supervise::Kind::Postgres, tick) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("lost track of postgres: {e}");
            return Ended::Exit(exit::STARTUP_FAILED);
        }
    };
    if let Some(backups) = backups.as_mut() {
        backups.stop(sup);
    }
    // The replication password file served postgres (its walreceiver): it goes with postgres.
    if let Err(e) = files::remove_passfile(&ctx.config.layout.passfile()) {
        tracing::warn!("{e}");
    }
    let stopped = sup.stop_requested();
    if sup.escalated() {
        tracing::error!(
            code,
            "postgres did not finish its fast shutdown within SHUTDOWN_TIMEOUT and was stopped immediately; \
             nothing committed is lost, the next start runs crash recovery"
        );
        return Ended::Exit(exit::SHUTDOWN_ESCALATED);
    }
    if fenced {
        return Ended::Exit(exit::FENCED);
    }
    if let (Some(to), None) = (handing_over, stopped) {
        return match handover::become_standby(&ctx.config.pgdata, code, &to) {
            Ok(()) => Ended::RoleChanged { handed_to: Some(to) },
            Err(why) => {
                tracing::error!("switchover: {why}");
                Ended::RoleChanged { handed_to: None }
            }
        };
    }
    match (code, stopped) {
        (0, _) => tracing::info!(code, "postgres exited"),
        (c, _) if c > 128 => tracing::error!(code, "postgres died of signal {}", c - 128),
        (_, Some(_)) => tracing::warn!(code, "postgres exited with an error while stopping"),
        _ => tracing::error!(code, "postgres exited with an error"),
    }
    Ended::Exit(code)
}
