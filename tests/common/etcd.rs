//! A real one-member etcd on loopback (Debian's etcd-server), for Patroni members.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, http_request, wait_until, Node, TempDir};

/// Patroni sets passwords only if they are ASCII (README "Automatic failover with Patroni").
pub const PATRONI_PASSWORD: &str = "pw-1 'q' \"d\" \\b $x `t` #: y";

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
    }

    /// The HTTP status Patroni's REST API gives `path` (0 when it does not answer).
    pub fn patroni(&self, path: &str) -> u16 {
        http_request(self.http_port, &format!("GET {path} HTTP/1.0\r\n\r\n")).0
    }
}
