//! A real OCI registry on 127.0.0.1 for tests and benchmarks: Debian's
//! `docker-registry` (the Distribution server), started on a free port with
//! its own storage directory, and stopped (storage removed) on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running registry.
pub struct RegistryServer {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl RegistryServer {
    /// An open registry (no auth).
    pub fn start() -> RegistryServer {
        Self::start_with("")
    }

    /// A registry that answers every request without a bearer token with a
    /// challenge naming `realm` (Distribution's `silly` token auth: any
    /// token is accepted; the realm is the test's to serve).
    pub fn start_with_token_auth(realm: &str) -> RegistryServer {
        Self::start_with(&format!("auth:\n  silly:\n    realm: {realm}\n    service: vmimg-test\n"))
    }

    fn start_with(auth: &str) -> RegistryServer {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let dir = std::env::temp_dir().join(format!("vmimg-registry-{}-{port}", std::process::id()));
        std::fs::create_dir_all(dir.join("storage")).expect("registry storage");
        let config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    \
             rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
            dir.join("storage").display()
        );
        std::fs::write(dir.join("config.yml"), config).expect("registry config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package docker-registry; .ci/run installs it)");
        let server = RegistryServer { child, dir, port };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("docker-registry did not listen on 127.0.0.1:{} within 20 s", self.port);
    }

    /// `127.0.0.1:PORT`, the registry part of references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where the registry keeps blobs (to corrupt one in a test).
    pub fn storage(&self) -> PathBuf {
        self.dir.join("storage")
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
