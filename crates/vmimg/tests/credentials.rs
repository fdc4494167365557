//! Registry credentials as docker, skopeo and podman users give them, through
//! the `vmimg` binary against a real docker-registry asking for Basic auth
//! (an htpasswd file): `--password-stdin`.

mod common;

use common::{error_line, ok};
use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};
use vmimg_testserver::RegistryServer;

/// A 1 MiB disk in a store of its own, pushed to `registry` as `vm/disk:1`
/// (with the registry's user and password when it asks for them); returns
/// the reference and the disk.
fn pushed(registry: &RegistryServer, dir: &Path, login: bool) -> (String, Vec<u8>) {
    let disk: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("disk.raw"), &disk).unwrap();
    let store = dir.join("pushing");
    let path = ok(&store, &["pull", dir.join("disk.raw").to_str().unwrap()]);
    let key = Path::new(&path).parent().unwrap().file_name().unwrap().to_str().unwrap().to_owned();
    let target = format!("oci://{}/vm/disk:1", registry.host());
    let mut push = vec!["push", &key, &target, "--format", "raw"];
    if login {
        push.extend(["--username", RegistryServer::USER, "--password", RegistryServer::PASSWORD]);
    }
    ok(&store, &push);
    (target, disk)
}

/// `vmimg --store STORE ARGS` with `stdin` written to its standard input.
fn with_stdin(store: &Path, args: &[&str], stdin: &str) -> Output {
    let mut command = common::command(store, args);
    let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn password_stdin_reads_the_password_as_docker_login_does() {
    let registry = RegistryServer::start_with_basic_auth();
    let dir = tempfile::tempdir().unwrap();
    let (target, disk) = pushed(&registry, dir.path(), true);
    let user = ["--username", RegistryServer::USER, "--password-stdin"];
    let store = dir.path().join("store");
    let pull = |stdin: &str| with_stdin(&store, &[&["pull", &target][..], &user].concat(), stdin);

    let out = pull(&format!("{}\r\n", RegistryServer::PASSWORD));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let path = String::from_utf8(out.stdout).unwrap();
    assert!(std::fs::read(path.trim()).unwrap() == disk);
    let (code, line) =
        error_line(&with_stdin(&store, &["cat", &target, "--username", "vmimg", "--password-stdin"], "nope\n"));
    assert!(code == 8 && line.contains("access denied") && line.contains("--password-stdin"), "{line}");
    let (code, line) = error_line(&pull(""));
    assert!(code == 2 && line.contains("--password-stdin read no password"), "{line}");
    let (code, line) = error_line(&with_stdin(&store, &["pull", &target, "--password-stdin"], "x"));
    assert!(code == 2 && line.contains("--username"), "--password-stdin alone: {line}");
    let both = [&["pull", &target, "--password", "x"][..], &user].concat();
    let (code, line) = error_line(&with_stdin(&store, &both, "x"));
    assert!(code == 2 && line.contains("cannot be used with"), "--password and --password-stdin: {line}");
}
