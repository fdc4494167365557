//! A real OCI registry on 127.0.0.x for tests and benchmarks: Debian's
//! `docker-registry` (the Distribution server), started on a free port with
//! its own storage directory, and stopped (storage removed) on drop: open,
//! with token auth whose realm the test serves, or with Basic auth for one
//! user ([`RegistryServer::USER`], [`RegistryServer::PASSWORD`]); on any
//! loopback address, over TLS with a certificate the test made
//! ([`crate::tls`]), or as a pull-through cache of another registry
//! (Distribution's proxy mode), its access log kept to count requests.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to start a registry beyond the defaults (open, plain HTTP on
/// 127.0.0.1, no access log).
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// The loopback address to listen on (127.0.0.1 when None).
    pub ip: Option<String>,
    /// Serve TLS with this certificate and key (PEM files)...
    pub tls: Option<(PathBuf, PathBuf)>,
    /// ...and ask clients for a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
    /// Be a pull-through cache of the registry at this URL.
    pub proxy: Option<String>,
    /// Log every request (see [`RegistryServer::requests`]).
    pub access_log: bool,
}

/// A running registry.
pub struct RegistryServer {
    child: Child,
    dir: PathBuf,
    ip: String,
    port: u16,
    scheme: &'static str,
}

impl RegistryServer {
    /// An open registry (no auth).
    pub fn start() -> RegistryServer {
        Self::start_with(|_| String::new())
    }

    /// A registry as `config` says (open).
    pub fn start_configured(config: &RegistryConfig) -> RegistryServer {
        Self::launch(config, |_| String::new())
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
        Self::launch(&RegistryConfig::default(), auth)
    }

    fn launch(config: &RegistryConfig, auth: impl FnOnce(&Path) -> String) -> RegistryServer {
        let ip = config.ip.clone().unwrap_or_else(|| "127.0.0.1".to_owned());
        let port = TcpListener::bind((ip.as_str(), 0)).and_then(|l| l.local_addr()).expect("a free port").port();
        let dir = std::env::temp_dir().join(format!("vmimg-registry-{}-{ip}-{port}", std::process::id()));
        std::fs::create_dir_all(dir.join("storage")).expect("registry storage");
        let auth = auth(&dir);
        let mut http = format!("http:\n  addr: {ip}:{port}\n");
        if let Some((cert, key)) = &config.tls {
            http += &format!("  tls:\n    certificate: {}\n    key: {}\n", cert.display(), key.display());
            if let Some(ca) = &config.client_ca {
                http += &format!("    clientcas:\n      - {}\n", ca.display());
            }
        }
        let proxy = config.proxy.as_ref().map(|url| format!("proxy:\n  remoteurl: {url}\n")).unwrap_or_default();
        let yaml = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: {}\nstorage:\n  filesystem:\n    \
             rootdirectory: {}\n  delete:\n    enabled: true\n{http}{proxy}{auth}",
            !config.access_log,
            dir.join("storage").display()
        );
        std::fs::write(dir.join("config.yml"), yaml).expect("registry config");
        let log = std::fs::File::create(dir.join("log")).expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(log.try_clone().expect("registry log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package docker-registry; .ci/run installs it)");
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        let server = RegistryServer { child, dir, ip, port, scheme };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect((self.ip.as_str(), self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("docker-registry did not listen on {} within 20 s", self.host());
    }

    /// `127.0.0.1:PORT`, the registry part of references.
    pub fn host(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// `http://HOST` or `https://HOST`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.host())
    }

    /// The requests logged so far (with [`RegistryConfig::access_log`]):
    /// `METHOD PATH` of each, in order.
    pub fn requests(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        // Combined log format: `… "GET /v2/x/blobs/sha256:… HTTP/1.1" 200 …`.
        log.lines()
            .filter_map(|line| line.split('"').nth(1))
            .filter_map(|request| request.rsplit_once(' ').map(|(method_path, _)| method_path.to_owned()))
            .filter(|request| request.contains(" /v2"))
            .collect()
    }

    /// Stops the registry now (a mirror that dies), keeping its directory
    /// until drop.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
