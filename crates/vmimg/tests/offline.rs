//! `vmimg` without network: a host name that does not resolve fails after
//! one retry, within seconds, with the host named and what to do; a
//! registry that refuses connections is retried with backoff, and every
//! retry of `pull`, `cat`, `push`, `build`, `instance create` and `copy`
//! says so on stderr.
//!
//! `.invalid` never resolves (RFC 6761), and resolvers answer it at once.
//! The runs go through `common::vmimg`, which sets the retries (2) and
//! their first delay (10 ms).

mod common;

use common::vmimg;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The stderr of a run that must fail as unavailable (exit code 7).
fn unavailable(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    stderr
}

#[test]
fn a_host_that_does_not_resolve_fails_after_one_retry_saying_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    for (source, remedy) in [
        ("http://vmimg-test.invalid/disk.qcow2", "fetch it from a mirror you can reach, or use a local copy"),
        ("oci://vmimg-test.invalid/vm/x:1", "use a registry you can reach, or a local copy of the image"),
    ] {
        let started = Instant::now();
        let stderr = unavailable(&vmimg(&store, &["pull", source]));
        assert!(started.elapsed() < Duration::from_secs(10), "{source}: took {:?}", started.elapsed());
        let error = stderr.lines().find(|l| l.starts_with("vmimg: error: ")).unwrap_or_else(|| panic!("{stderr}"));
        assert!(
            error.contains("cannot resolve vmimg-test.invalid")
                && error.contains("no network, no DNS, or no such host")
                && error.contains(remedy),
            "{source}: {error}"
        );
        let retries: Vec<_> = stderr.lines().filter(|l| l.starts_with("vmimg: retrying in ")).collect();
        assert!(retries.len() == 1 && retries[0].contains("cannot resolve vmimg-test.invalid"), "{source}: {stderr}");
        // Delays under a second are told in milliseconds, not as 0.0s.
        assert!(retries[0].split_whitespace().nth(3).is_some_and(|d| d.ends_with("ms:")), "{stderr}");
    }
    // What the command line adds fits the command: a local copy for what gets images, not for a push.
    let key = local_image(dir.path(), &store);
    let unresolved = "oci://vmimg-test.invalid/vm/x:1";
    for (args, hint) in [
        (vec!["pull", unresolved], "oci:DIR[:NAME] or oci-archive:FILE[:NAME] for a local copy"),
        (vec!["cat", unresolved], "a mirror in --hosts-dir stands in for a registry"),
        (vec!["push", &key, unresolved, "--format", "raw"], "a mirror in --hosts-dir stands in for a registry"),
    ] {
        let stderr = unavailable(&vmimg(&store, &args));
        assert!(stderr.contains(hint), "{args:?}: {stderr}");
    }
}

/// A raw disk pulled from a local file into `store`; its key.
fn local_image(dir: &Path, store: &Path) -> String {
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![1u8; 64 << 10]).unwrap();
    let path = common::ok(store, &["pull", disk.to_str().unwrap()]);
    Path::new(&path).parent().unwrap().file_name().unwrap().to_str().unwrap().to_owned()
}

#[test]
fn every_retry_of_a_registry_that_refuses_connections_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let key = local_image(dir.path(), &store);
    let target = format!("oci://127.0.0.1:{}/vm/x:1", closed_port());
    let copied = format!("oci://127.0.0.1:{}/vm/y:1", closed_port());
    for args in [
        vec!["pull", &target],
        vec!["cat", &target],
        vec!["push", &key, &target, "--format", "raw"],
        vec!["build", &target],
        vec!["instance", "create", &target],
        vec!["copy", &target, &copied],
    ] {
        let stderr = unavailable(&vmimg(&store, &args));
        let retries: Vec<_> = stderr.lines().filter(|l| l.starts_with("vmimg: retrying in ")).collect();
        assert!(
            retries.len() == 1 && retries[0].contains("127.0.0.1"),
            "{args:?}: one retry (of 2 attempts) told: {stderr}"
        );
        assert!(!stderr.contains("cannot resolve"), "{args:?}: a refused connection is no name failure: {stderr}");
    }
}
