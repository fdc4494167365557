//! A real OCI registry on 127.0.0.1 for tests and benchmarks: Debian's
//! `docker-registry` (the Distribution server), started on a free port with
//! its own storage directory, and stopped (storage removed) on drop: open,
//! with token auth whose realm the test serves, or with Basic auth for one
//! user ([`RegistryServer::USER`], [`RegistryServer::PASSWORD`]).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
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
        Self::start_with(|_| String::new())
    }

    /// A registry that answers every request without a bearer token with a
    /// challenge naming `realm` (Distribution's `silly` token auth: any
    /// token is accepted; the realm is the test's to serve).
    pub fn start_with_token_auth(realm: &str) -> RegistryServer {
        Self::start_with(|_| format!("auth:\n  silly:\n    realm: {realm}\n    service: vmimg-test\n"))
    }

    /// The one user of a registry with Basic auth.
    pub const USER: &str = "vmimg";
    /// [`RegistryServer::USER`]'s password.
    pub const PASSWORD: &str = "vmimg-s3cret";
    /// [`RegistryServer::PASSWORD`], bcrypt-hashed (cost 4) as htpasswd files hold it.
    const PASSWORD_BCRYPT: &str = "$2b$04$eBPWmNTaP.6HGD.PFh5KwOVpA6jauDcfbJoUD9ptiytA2OPqo57.e";

    /// A registry that asks for Basic auth (an htpasswd file) and lets in
    /// [`RegistryServer::USER`] with [`RegistryServer::PASSWORD`] only.
    pub fn start_with_basic_auth() -> RegistryServer {
        Self::start_with(|dir| {
            let htpasswd = dir.join("htpasswd");
            std::fs::write(&htpasswd, format!("{}:{}\n", Self::USER, Self::PASSWORD_BCRYPT)).expect("htpasswd");
            format!("auth:\n  htpasswd:\n    realm: vmimg-test\n    path: {}\n", htpasswd.display())
        })
    }

    /// Starts a registry whose auth configuration `auth` writes (given the
    /// registry's own directory, for the files it needs).
    fn start_with(auth: impl FnOnce(&Path) -> String) -> RegistryServer {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let dir = std::env::temp_dir().join(format!("vmimg-registry-{}-{port}", std::process::id()));
        std::fs::create_dir_all(dir.join("storage")).expect("registry storage");
        let auth = auth(&dir);
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
