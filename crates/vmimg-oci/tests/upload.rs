//! Chunked uploads resume where a cut left them, against a server that
//! keeps what a cut `PATCH` brought and says so, as the OCI distribution
//! spec describes (`vmimg_testserver::uploads`): each byte crosses the
//! wire once, in one session. (Against Debian's Distribution 2.8, which
//! cannot resume, a cut restarts the part in a new session: tested in
//! `crates/vmimg/tests/oci.rs`.)

use std::io::Read;
use std::sync::Mutex;
use vmimg_fetch::{Algorithm, Hasher, Progress};
use vmimg_oci::{Reference, Registry, RegistryOptions};
use vmimg_testserver::uploads::UploadServer;

#[derive(Default)]
struct Retries(Mutex<Vec<String>>);

impl Progress for Retries {
    fn retrying(&self, error: &(dyn std::error::Error + 'static), _delay: std::time::Duration) {
        self.0.lock().unwrap().push(error.to_string());
    }
}

#[test]
fn a_cut_upload_goes_on_from_what_the_session_holds() {
    let server = UploadServer::start(5 << 20, 3);
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = vec![0u8; 100 << 20];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut bytes).unwrap();
    std::fs::write(dir.path().join("blob"), &bytes).unwrap();
    let mut hasher = Hasher::new(Algorithm::Sha256);
    hasher.update(&bytes);
    let digest = hasher.finish();

    let options = RegistryOptions {
        docker_config: Some("/nonexistent/config.json".into()),
        fetch: vmimg_fetch::FetchOptions { min_delay: std::time::Duration::from_millis(10), ..Default::default() },
        ..RegistryOptions::default()
    };
    let registry = Registry::new(options).unwrap();
    let reference: Reference = format!("{}/vm/blob:1", server.host()).parse().unwrap();
    let file = std::fs::File::open(dir.path().join("blob")).unwrap();
    let retries = Retries::default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(registry.upload_blob(&reference, &digest, &file, (0, bytes.len() as u64), &retries)).unwrap();

    assert_eq!(server.blob(&digest.to_string()), Some(bytes.len() as u64), "the blob was not stored");
    assert_eq!(retries.0.lock().unwrap().len(), 3, "each cut is told: {:?}", retries.0.lock().unwrap());
    assert_eq!(server.sessions_opened(), 1, "a cut upload started a new session");
    assert_eq!(server.received(), bytes.len() as u64, "bytes were sent twice");
}
