//! A real one-member etcd on loopback (Debian's etcd-server), for Patroni members.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, http_request, processes, wait_until, Node, TempDir};

/// Patroni sets passwords only if they are ASCII (docs/patroni.md).
pub const PATRONI_PASSWORD: &str = "pw-1 'q' \"d\" \\b $x `t` #: y";
/// What Patroni's REST API asks for on calls that change something (user `patroni`).
pub const REST_API_PASSWORD: &str = "api: 'q' $x é";

pub struct Etcd {
    pub port: u16,
    child: Child,
    _dir: TempDir,
}

impl Etcd {
    pub fn start() -> Etcd {
        let dir = TempDir::new("etcd");
        let (port, peer) = (free_port(), free_port());
        let client = format!("http://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.0.join("log")).unwrap();
        let child = Command::new("etcd")
            .args(["--name", "e1", "--data-dir"])
            .arg(dir.0.join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("e1={peer_url}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd is installed (scripts/ensure-deps.sh)");
        let etcd = Etcd { port, child, _dir: dir };
        wait_until(Duration::from_secs(30), || {
            http_request(port, "GET /health HTTP/1.0\r\n\r\n").1.contains("\"health\":\"true\"")
        });
        etcd
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    /// A member of the Patroni cluster `scope` on `etcd`, named `name`, reachable on loopback.
    pub fn as_patroni_member(&mut self, etcd: &Etcd, scope: &str, name: &str) -> &mut Node {
        self.set("HA_MODE", "patroni")
            .set("PATRONI_SCOPE", scope)
            .set("PATRONI_NAME", name)
            .set("ETCD_HOSTS", &format!("127.0.0.1:{}", etcd.port))
            .set("ADVERTISE_HOST", "127.0.0.1")
            .set("POSTGRES_PASSWORD", PATRONI_PASSWORD)
            .set("REPLICATION_PASSWORD", PATRONI_PASSWORD)
            .set("PATRONI_RESTAPI_PASSWORD", REST_API_PASSWORD)
    }

    /// Kills the member as `docker kill` does: the entrypoint's process group (it and Patroni)
    /// and the postmaster, which Patroni starts in a session of its own (in a container, the
    /// death of PID 1 takes it too; here it would live on as a primary without Patroni).
    pub fn kill_member(&mut self) {
        let pidfile = std::fs::read_to_string(self.pgdata.join("postmaster.pid")).unwrap_or_default();
        let postmaster = pidfile.lines().next().and_then(|l| l.trim().parse::<i32>().ok());
        self.kill_all();
        if let Some(pid) = postmaster {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            let data = self.pgdata.display().to_string();
            wait_until(Duration::from_secs(10), || {
                !processes()
                    .iter()
                    .any(|p| p.state != 'Z' && p.cmdline.contains("postgres") && p.cmdline.contains(&data))
            });
        }
    }

    /// True once Patroni has recorded a synchronous standby in etcd (`sync_standby` in its
    /// `/cluster`): in synchronous mode only that member may take over from a dead leader, so
    /// until then a leader's death leaves the cluster without one.
    pub fn has_sync_standby(&self) -> bool {
        http_request(self.http_port, "GET /cluster HTTP/1.0\r\n\r\n").1.contains("\"sync_standby\"")
    }

    /// The HTTP status Patroni's REST API gives `path` (0 when it does not answer).
    pub fn patroni(&self, path: &str) -> u16 {
        http_request(self.http_port, &format!("GET {path} HTTP/1.0\r\n\r\n")).0
    }
}
