//! A real S3-compatible server on loopback: moto's server mode (from PyPI; installed by
//! scripts/ensure-deps.sh) behind HAProxy for HTTPS, as pgBackRest requires it. (moto's own
//! TLS closes connections without TLS's close_notify, which pgBackRest's OpenSSL 3 rightly
//! reports as an unexpected end of file.)

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_until, Node, TempDir};

pub struct S3 {
    /// The HTTPS port.
    pub port: u16,
    pub bucket: String,
    children: Vec<Child>,
    _dir: TempDir,
}

/// The keys moto accepts (any); the secret is given to the node as a root 0600 file.
pub const S3_KEY: &str = "AKIAPGENTRYPOINT";
pub const S3_SECRET: &str = "s3-secret-not-for-logs";

impl S3 {
    pub fn start() -> S3 {
        let dir = TempDir::new("s3");
        let (plain, port) = (free_port(), free_port());
        let log = || std::fs::File::create(dir.0.join("log")).unwrap();
        let moto = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &plain.to_string()])
            .stdin(Stdio::null())
            .stdout(log())
            .stderr(log())
            .spawn()
            .expect("python3 runs (scripts/ensure-deps.sh installs moto[server])");
        let ca = super::certs::Ca::new("s3 test CA");
        let pair = ca.issue(&dir.0, "s3", "127.0.0.1", &["127.0.0.1"], false);
        let pem = dir.0.join("s3.pem");
        let both = [std::fs::read_to_string(&pair.cert).unwrap(), std::fs::read_to_string(&pair.key).unwrap()];
        std::fs::write(&pem, both.concat()).unwrap();
        let cfg = dir.0.join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
                 frontend s3\n  bind 127.0.0.1:{port} ssl crt {}\n  default_backend moto\n\
                 backend moto\n  server moto 127.0.0.1:{plain}\n",
                pem.display()
            ),
        )
        .unwrap();
        let haproxy = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy is installed (scripts/ensure-deps.sh)");
        let bucket = "pg-entrypoint".to_string();
        let url = format!("https://127.0.0.1:{port}/{bucket}");
        let s3 = S3 { port, bucket, children: vec![moto, haproxy], _dir: dir };
        // Ready once the bucket is made through HTTPS.
        wait_until(Duration::from_secs(30), || {
            Command::new("curl")
                .args(["-skf", "-X", "PUT", &url, "-o", "/dev/null"])
                .status()
                .is_ok_and(|s| s.success())
        });
        s3
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Node {
    /// Backups to `s3`, the secret key in a root-only file as docker/up.sh writes secrets.
    pub fn with_s3_backups(&mut self, s3: &S3) -> &mut Node {
        let secret = self.root_secret("s3_key_secret", S3_SECRET);
        self.set("PGBACKREST_ENABLE", "true")
            .set("PGBACKREST_REPO1_TYPE", "s3")
            .set("PGBACKREST_REPO1_S3_ENDPOINT", "127.0.0.1")
            .set("PGBACKREST_REPO1_STORAGE_PORT", &s3.port.to_string())
            .set("PGBACKREST_REPO1_S3_BUCKET", &s3.bucket)
            .set("PGBACKREST_REPO1_S3_REGION", "us-east-1")
            .set("PGBACKREST_REPO1_S3_URI_STYLE", "path")
            .set("PGBACKREST_REPO1_STORAGE_VERIFY_TLS", "false")
            .set("PGBACKREST_REPO1_PATH", "/cluster")
            .set("PGBACKREST_REPO1_S3_KEY", S3_KEY)
            .set("PGBACKREST_REPO1_S3_KEY_SECRET_FILE", &secret.display().to_string())
    }
}
