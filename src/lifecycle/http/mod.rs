//! The HTTP endpoint: Patroni-compatible health checks (`/primary`, `/replica`, ...) for
//! load balancers and probes, served by the entrypoint itself (docs/http.md).
//!
//! It runs on a thread of its own with a current-thread tokio runtime, so the PID 1 loop in
//! `supervise` stays synchronous and untouched; the thread is started after privileges are
//! dropped and inherits the blocked signal mask, so signals still reach only the signalfd.
//! The server is asked over its Unix socket through one connection that is kept and reused
//! (reopened after an error), one query per request: a probe costs a fraction of a
//! millisecond and never a new backend, however many balancers ask, and the answer is never
//! stale (a promotion shows in the next probe). While no real server runs (bootstrap,
//! clone, promotion at start) nothing is asked: a temporary server never answers a probe.

pub mod routes;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use crate::postgres::health::Expected;
use crate::postgres::observe::{self, Observed};
use crate::render;
use routes::{Body, Method, Phase, Reply, Situation};

/// A client has this long to send its request head; then it gets 408 and is cut off.
/// Balancers and probes send theirs at once.
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections served at once (balancers open one per check). When all are taken, the
/// oldest one still waiting for its request head gives way to the new one, so clients that
/// hold half-sent requests cannot starve the probes (a probe sends its head at once).
const MAX_CONNECTIONS: usize = 64;
/// Connections served at once for one client address: a client that holds connections open
/// cannot take the slots other balancers need.
const MAX_CONNECTIONS_PER_CLIENT: usize = 8;
/// Request heads larger than this are refused (431) without being read further.
const MAX_HEAD: usize = 16 * 1024;
/// Asking the server (connecting, or the query) takes at most this.
const SERVER_TIMEOUT: Duration = Duration::from_secs(2);
/// After its head came in, an answer is written within this (the server asked included),
/// or the client, which does not read it, is cut off.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach the local server.
pub struct Target {
    pub socket_dir: PathBuf,
    pub port: u16,
    pub user: String,
    pub pgdata: PathBuf,
    /// `HA_MODE=native`, and the role configured is replica.
    pub native: bool,
    pub replica: bool,
    /// When this start began, and how long an upgrade at start took (for `/metrics`).
    pub began: Instant,
    pub upgrade_took: Option<Duration>,
    /// PgBouncer's port, when it runs (its socket is in `socket_dir`).
    pub pooler_port: Option<u16>,
}

/// The running endpoint: the supervisor tells it where the entrypoint is in its life.
pub struct Endpoint {
    shared: Arc<Shared>,
}

struct Shared {
    phase: AtomicU8,
    clock: std::sync::Mutex<StartClock>,
    stopping: Arc<AtomicBool>,
    target: Target,
    client: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
}

const PHASES: [Phase; 5] = [
    Phase::Starting,
    Phase::InitializingNewCluster,
    Phase::CreatingReplica,
    Phase::RestoringFromBackup,
    Phase::Running,
];

impl Endpoint {
    pub fn set_phase(&self, phase: Phase) {
        let index = PHASES.iter().position(|p| *p == phase).unwrap_or(0);
        lock(&self.shared.clock).enter(phase);
        self.shared.phase.store(index as u8, Ordering::Relaxed);
    }
}

/// How long the phases of this start took, for `/metrics`.
struct StartClock {
    began: Instant,
    current: (Phase, Instant),
    took: Vec<(&'static str, f64)>,
}

impl StartClock {
    fn enter(&mut self, phase: Phase) {
        let (previous, since) = self.current;
        if previous == phase {
            return;
        }
        let name = match previous {
            Phase::InitializingNewCluster => Some("initdb"),
            Phase::CreatingReplica => Some("clone"),
            Phase::RestoringFromBackup => Some("restore"),
            _ => None,
        };
        self.took.extend(name.map(|n| (n, since.elapsed().as_secs_f64())));
        if phase == Phase::Running {
            self.took.push(("total", self.began.elapsed().as_secs_f64()));
        }
        self.current = (phase, Instant::now());
    }
}

impl Shared {
    fn phase(&self) -> Phase {
        if self.stopping.load(Ordering::Relaxed) {
            return Phase::Stopping;
        }
        PHASES.get(self.phase.load(Ordering::Relaxed) as usize).copied().unwrap_or(Phase::Starting)
    }
}

/// Binds `addresses` (the first that works) now, so a port in use is a start-up error, and
/// serves on a thread of its own. `stopping` is the supervisor's stop flag.
pub fn start(addresses: &[SocketAddr], target: Target, stopping: Arc<AtomicBool>) -> std::io::Result<Endpoint> {
    let mut last = std::io::Error::from(std::io::ErrorKind::AddrNotAvailable);
    let listener = addresses.iter().find_map(|a| std::net::TcpListener::bind(a).map_err(|e| last = e).ok());
    let listener = listener.ok_or(last)?;
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?;
    let mut took = Vec::new();
    took.extend(target.upgrade_took.map(|d| ("upgrade", d.as_secs_f64())));
    let clock = StartClock { began: target.began, current: (Phase::Starting, Instant::now()), took };
    let shared = Arc::new(Shared {
        phase: AtomicU8::new(0),
        clock: std::sync::Mutex::new(clock),
        stopping,
        target,
        client: tokio::sync::Mutex::new(None),
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
    let serving = shared.clone();
    std::thread::Builder::new()
        .name("http".into())
        // Its work is small: a small stack keeps the resident set small.
        .stack_size(256 * 1024)
        .spawn(move || {
            if let Err(e) = runtime.block_on(serve(listener, serving)) {
                tracing::error!("the HTTP endpoint stopped: {e}");
            }
        })?;
    tracing::info!(%address, "HTTP endpoint listening");
    Ok(Endpoint { shared })
}

async fn serve(listener: std::net::TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let per_client = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let waiting = Arc::new(std::sync::Mutex::new(WaitingForHead::default()));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of file descriptors and the like: wait a little rather than spin.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Over its own share, a client's new connection is closed (it evicts nobody).
        let Some(client_slot) = ClientSlot::take(&per_client, peer.ip()) else { continue };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if !lock(&waiting).evict_oldest() {
                    continue; // every connection is being answered: closed
                }
                match tokio::time::timeout(EVICTION_WAIT, slots.clone().acquire_owned()).await {
                    Ok(Ok(slot)) => slot,
                    _ => continue,
                }
            }
        };
        let (id, evicted) = lock(&waiting).register();
        let head = HeadWait { waiting: waiting.clone(), id, arrived: AtomicBool::new(false) };
        tokio::spawn(serve_one(stream, shared.clone(), (slot, client_slot), head, evicted));
    }
}

/// How long a new connection waits for the slot an evicted one gives back.
const EVICTION_WAIT: Duration = Duration::from_millis(200);

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Connections whose request head has not come in yet, oldest first, each with the signal
/// that makes it give its slot away.
#[derive(Default)]
struct WaitingForHead {
    next: u64,
    connections: std::collections::BTreeMap<u64, tokio::sync::oneshot::Sender<()>>,
}

impl WaitingForHead {
    fn register(&mut self) -> (u64, tokio::sync::oneshot::Receiver<()>) {
        let (tell, evicted) = tokio::sync::oneshot::channel();
        self.next += 1;
        self.connections.insert(self.next, tell);
        (self.next, evicted)
    }

    /// Tells the oldest connection still without a head to go; false when there is none.
    fn evict_oldest(&mut self) -> bool {
        while let Some((_, tell)) = self.connections.pop_first() {
            if tell.send(()).is_ok() {
                return true;
            }
        }
        false
    }
}

/// Whether a connection's request head has come in, and its entry in [`WaitingForHead`],
/// removed once it has (it can no longer be evicted) or when the connection ends.
struct HeadWait {
    waiting: Arc<std::sync::Mutex<WaitingForHead>>,
    id: u64,
    arrived: AtomicBool,
}

impl HeadWait {
    fn arrive(&self) {
        self.arrived.store(true, Ordering::Relaxed);
        lock(&self.waiting).connections.remove(&self.id);
    }

    fn arrived(&self) -> bool {
        self.arrived.load(Ordering::Relaxed)
    }
}

impl Drop for HeadWait {
    fn drop(&mut self) {
        lock(&self.waiting).connections.remove(&self.id);
    }
}

/// One request per connection (what balancers and probes send): its head within
/// [`HEAD_TIMEOUT`] or 408, then the answer within [`ANSWER_TIMEOUT`], then closed. So no
/// client, slow or silent, holds a connection slot for long.
/// One of a client address's [`MAX_CONNECTIONS_PER_CLIENT`], given back when dropped.
struct ClientSlot {
    counts: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
    client: IpAddr,
}

impl ClientSlot {
    fn take(counts: &Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>, client: IpAddr) -> Option<ClientSlot> {
        let mut map = lock(counts);
        let count = map.entry(client).or_insert(0);
        if *count >= MAX_CONNECTIONS_PER_CLIENT {
            return None;
        }
        *count += 1;
        Some(ClientSlot { counts: counts.clone(), client })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut map = lock(&self.counts);
        if let Some(count) = map.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.client);
            }
        }
    }
}

async fn serve_one(
    stream: tokio::net::TcpStream,
    shared: Arc<Shared>,
    _slots: (tokio::sync::OwnedSemaphorePermit, ClientSlot),
    head: HeadWait,
    evicted: tokio::sync::oneshot::Receiver<()>,
) {
    // A second handle on the socket, to answer 408 while hyper still owns the first.
    let Ok(std_stream) = stream.into_std() else { return };
    let Ok(late) = std_stream.try_clone() else { return };
    let Ok(stream) = tokio::net::TcpStream::from_std(std_stream) else { return };
    let head = Arc::new(head);
    let seen = head.clone();
    let service = service_fn(move |request| {
        seen.arrive();
        respond(request, shared.clone())
    });
    let connection =
        http1::Builder::new().keep_alive(false).max_buf_size(MAX_HEAD).serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = &mut connection => return,
        _ = tokio::time::sleep(HEAD_TIMEOUT) => {}
        // Evicted for a newer connection: treated as a head that took too long.
        Ok(()) = evicted => {}
    }
    if !head.arrived() {
        // A few bytes into an empty socket buffer: this write does not block.
        let _ = std::io::Write::write_all(
            &mut &late,
            b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
        );
        return;
    }
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, connection).await;
}

async fn respond(request: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = match *request.method() {
        hyper::Method::GET => Method::Get,
        hyper::Method::HEAD | hyper::Method::OPTIONS => Method::StatusOnly,
        _ => Method::Other,
    };
    let path = request.uri().path();
    if path == "/metrics" {
        return Ok(match method {
            Method::Get => reply(200, render::metrics::CONTENT_TYPE, Bytes::from(metrics(&shared).await)),
            _ => {
                let mut refused = reply(405, "text/plain; charset=utf-8", Bytes::from_static(b"only GET\n"));
                refused.headers_mut().insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static("GET"));
                refused
            }
        });
    }
    let query = request.uri().query().unwrap_or_default();
    let phase = shared.phase();
    let asks = phase == Phase::Running && method != Method::Other && routes::asks_server(path);
    // The status document only for GET: HEAD and OPTIONS (HAProxy) need the facts alone.
    let asked = if asks { Some(ask(&shared, method == Method::Get).await) } else { None };
    if phase == Phase::Stopping {
        // Let postgres's shutdown find no session of ours.
        shared.client.lock().await.take();
    }
    let server = asked.as_ref().map(|r| r.as_ref().map(|(o, doc)| (o, doc.as_str())).map_err(String::as_str));
    let expected = expected_now(&shared.target);
    let Reply { status, body } = routes::answer(method, path, query, &Situation { phase, expected, server });
    let (content_type, bytes) = match body {
        Body::None => ("application/json", Bytes::new()),
        Body::Json(json) => ("application/json", Bytes::from(json)),
        Body::Text(text) => ("text/plain; charset=utf-8", Bytes::from(text)),
    };
    Ok(reply(status, content_type, bytes))
}

fn reply(status: u16, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::SERVICE_UNAVAILABLE);
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    if status == 405 {
        response
            .headers_mut()
            .insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD, OPTIONS"));
    }
    response
}

fn expected_now(target: &Target) -> Expected {
    Expected::now(target.native, target.replica, &target.pgdata)
}

/// The server's facts, and its status document when `document` (else empty).
async fn ask(shared: &Shared, document: bool) -> Result<(Observed, String), String> {
    let peers = observe::Peers::default();
    let role = expected_now(&shared.target).name();
    let row = if document {
        query_one(shared, observe::STATUS_SQL, &observe::params(&role, &peers)).await?
    } else {
        query_one(shared, observe::FACTS_SQL, &[]).await?
    };
    Ok((observe::observed(&row), if document { observe::document(&row) } else { String::new() }))
}

/// One query through the kept connection, (re)connecting first when needed; an error or a
/// timeout drops the connection, so the next request starts afresh.
async fn query_one(
    shared: &Shared,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<tokio_postgres::Row, String> {
    let mut client = shared.client.lock().await;
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        *client = Some(connect(&shared.target).await?);
    }
    let Some(c) = client.as_ref() else { return Err("not connected".into()) };
    match tokio::time::timeout(SERVER_TIMEOUT, c.query_one(sql, params)).await {
        Ok(Ok(row)) => Ok(row),
        Ok(Err(e)) => {
            client.take();
            Err(crate::postgres::local::describe(&e))
        }
        Err(_) => {
            client.take();
            Err(format!("the server did not answer within {} s", SERVER_TIMEOUT.as_secs()))
        }
    }
}

/// `GET /metrics`: the server asked once while it runs; otherwise what the entrypoint knows.
async fn metrics(shared: &Shared) -> String {
    let asked = if shared.phase() == Phase::Running {
        query_one(shared, observe::METRICS_SQL, &[]).await.map(|row| observe::metrics(&row)).ok()
    } else {
        None
    };
    let (scope, server) = match asked {
        Some((scope, server)) => (scope, Some(server)),
        None => (
            crate::pgdata::datadir::system_identifier(&shared.target.pgdata).map_or(String::new(), |id| id.to_string()),
            None,
        ),
    };
    let start_phases = lock(&shared.clock).took.clone();
    let pooler_up = match shared.target.pooler_port {
        Some(port) => {
            let socket = shared.target.socket_dir.join(format!(".s.PGSQL.{port}"));
            Some(tokio::net::UnixStream::connect(socket).await.is_ok())
        }
        None => None,
    };
    render::metrics::exposition(&render::metrics::Sample { scope, server, start_phases, pooler_up })
}

async fn connect(target: &Target) -> Result<tokio_postgres::Client, String> {
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(&target.socket_dir)
        .port(target.port)
        .user(&target.user)
        .dbname("postgres")
        .application_name("pg-entrypoint http")
        // The server gives up on a query of ours that it cannot answer in time, so a
        // timed-out probe leaves no backend behind working for nobody.
        .options(format!("-c statement_timeout={}", SERVER_TIMEOUT.as_millis()))
        .connect_timeout(SERVER_TIMEOUT);
    let (client, connection) = tokio::time::timeout(SERVER_TIMEOUT, config.connect(tokio_postgres::NoTls))
        .await
        .map_err(|_| "connecting to the server timed out".to_string())?
        .map_err(|e| crate::postgres::local::describe(&e))?;
    tokio::spawn(connection);
    Ok(client)
}
