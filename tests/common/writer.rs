//! A client that writes one id after another and records each acknowledged commit, for the
//! switchover tests and the benchmark: acknowledged ids are counted on the new primary, and
//! the longest time between two acknowledgements is the write pause a client saw.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::PASSWORD;

/// A client that writes one id after another through a libpq-style multi-host connection
/// (`target_session_attrs=read-write`), reconnecting after each error, and records each id
/// whose commit was acknowledged, with when.
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(i32, Instant)>>>,
    errors: Arc<Mutex<Vec<String>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Writer {
    pub fn start(nodes: &[&super::Node]) -> Writer {
        Writer::to_ports(&nodes.iter().map(|n| n.port).collect::<Vec<_>>())
    }

    pub fn to_ports(ports: &[u16]) -> Writer {
        Writer::to_ports_from(ports, 0, PASSWORD)
    }

    /// Ids after `first` (writers sharing the table each take their own range), as the
    /// superuser with `password`.
    pub fn to_ports_from(ports: &[u16], first: i32, password: &str) -> Writer {
        let mut config = postgres::Config::new();
        for port in ports {
            config.host("127.0.0.1").port(*port);
        }
        config
            .user("postgres")
            .password(password)
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(2))
            .target_session_attrs(postgres::config::TargetSessionAttrs::ReadWrite);
        let (stop, acked) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (stop_flag, record, failed) = (stop.clone(), acked.clone(), errors.clone());
        let thread = std::thread::spawn(move || {
            let mut client: Option<postgres::Client> = None;
            let mut id = first;
            while !stop_flag.load(Ordering::Relaxed) {
                let Some(c) = client.as_mut() else {
                    match config.connect(postgres::NoTls) {
                        Ok(connected) => client = Some(connected),
                        Err(e) => {
                            let why = e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_string());
                            failed.lock().unwrap().push(format!("connect: {why}"));
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                    continue;
                };
                id += 1;
                // The simple protocol: named prepared statements do not survive transaction
                // pooling (PgBouncer 1.18) when the server connection changes.
                match c.batch_execute(&format!("INSERT INTO acked VALUES ({id})")) {
                    Ok(()) => record.lock().unwrap().push((id, Instant::now())),
                    Err(e) => {
                        failed
                            .lock()
                            .unwrap()
                            .push(e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_string()));
                        client = None;
                    }
                }
            }
        });
        Writer { stop, acked, errors, thread }
    }

    /// Stops; the acknowledged ids and the longest time between two acknowledgements.
    pub fn finish(self) -> (Vec<i32>, Duration) {
        let (acked, gap, _) = self.finish_with_errors();
        (acked, gap)
    }

    /// The same, and the errors the client saw.
    pub fn finish_with_errors(self) -> (Vec<i32>, Duration, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        let acked = self.acked.lock().unwrap().clone();
        let gap = acked.windows(2).map(|w| w[1].1 - w[0].1).max().unwrap_or_default();
        let errors = self.errors.lock().unwrap().clone();
        (acked.into_iter().map(|(id, _)| id).collect(), gap, errors)
    }

    /// The errors so far (the last few).
    pub fn errors(&self) -> Vec<String> {
        let errors = self.errors.lock().unwrap();
        errors.iter().rev().take(3).cloned().collect()
    }

    pub fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }
}
