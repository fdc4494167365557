//! Registry credentials as docker, skopeo and podman users give them, through
//! the `vmimg` binary against a real docker-registry asking for Basic auth
//! (an htpasswd file): `--password-stdin`; Docker's credential helpers
//! (real `docker-credential-NAME` scripts first on the PATH given to vmimg)
//! in docker's order, `credHelpers`, then `credsStore`, then `auths`; a
//! helper's identity token exchanged at a token realm; and every helper
//! that fails.

mod common;

use common::{error_line, ok};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Output, Stdio};
use tempfile::TempDir;
use vmimg_testserver::{RegistryServer, TestServer};

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
    // A command refused for its arguments exits before it reads: the pipe
    // may be broken by then, and its exit status says the rest.
    match child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => panic!("writing vmimg's stdin: {e}"),
        _ => {}
    }
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

/// A `DOCKER_CONFIG` directory with its config.json, and a directory of
/// credential helpers, first on the PATH vmimg is given.
struct Docker {
    dir: TempDir,
}

impl Docker {
    fn new(config: &str) -> Docker {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        Docker { dir }
    }

    /// Adds `docker-credential-NAME`, a shell script that notes the server
    /// it was asked for in `NAME.asked` and then runs `body`.
    fn helper(self, name: &str, body: &str) -> Docker {
        let path = self.dir.path().join("bin").join(format!("docker-credential-{name}"));
        let asked = self.dir.path().join(format!("{name}.asked"));
        let script = format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread -r server\necho \"$server\" >> {}\n{body}\n",
            asked.display()
        );
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        self
    }

    /// Adds a helper that answers `user` and `secret`.
    fn answering(self, name: &str, user: &str, secret: &str) -> Docker {
        let reply = format!(r#"printf '{{"ServerURL":"%s","Username":"{user}","Secret":"{secret}"}}' "$server""#);
        self.helper(name, &reply)
    }

    /// The servers helper `name` was asked for.
    fn asked(&self, name: &str) -> Vec<String> {
        let asked = std::fs::read_to_string(self.dir.path().join(format!("{name}.asked"))).unwrap_or_default();
        asked.lines().map(str::to_owned).collect()
    }

    /// `vmimg --store STORE ARGS` with this config, and its helpers first on PATH.
    fn vmimg(&self, store: &Path, args: &[&str]) -> Output {
        let path = format!("{}:{}", self.dir.path().join("bin").display(), std::env::var("PATH").unwrap());
        common::command(store, args).env("DOCKER_CONFIG", self.dir.path()).env("PATH", path).output().unwrap()
    }
}

#[test]
fn credential_helpers_come_first_in_dockers_order() {
    let registry = RegistryServer::start_with_basic_auth();
    let dir = tempfile::tempdir().unwrap();
    let (target, disk) = pushed(&registry, dir.path(), true);
    let host = registry.host();
    let (user, password) = (RegistryServer::USER, RegistryServer::PASSWORD);
    let wrong_auths = format!(r#""auths": {{"{host}": {{"username": "{user}", "password": "wrong"}}}}"#);
    let cat = |docker: &Docker| docker.vmimg(&dir.path().join("store"), &["cat", &target]);

    // credHelpers' helper for the host, before credsStore and auths.
    let docker =
        Docker::new(&format!(r#"{{{wrong_auths}, "credsStore": "store", "credHelpers": {{"{host}": "host"}}}}"#))
            .answering("host", user, password)
            .answering("store", user, "wrong");
    let out = cat(&docker);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout == disk);
    assert_eq!(docker.asked("host"), vec![host.clone()], "asked once, for host:port");
    assert!(docker.asked("store").is_empty(), "credsStore asked though credHelpers names a helper");

    // credsStore, before auths.
    let docker =
        Docker::new(&format!(r#"{{{wrong_auths}, "credsStore": "store"}}"#)).answering("store", user, password);
    let out = cat(&docker);
    assert!(out.status.success() && out.stdout == disk, "{}", String::from_utf8_lossy(&out.stderr));

    // A helper with nothing for the registry: anonymous, which it refuses.
    let not_found = "echo 'credentials not found in native keychain'; exit 1";
    let docker = Docker::new(r#"{"credsStore": "empty"}"#).helper("empty", not_found);
    let (code, line) = error_line(&cat(&docker));
    assert!(code == 8 && line.contains("access denied") && line.contains("docker login"), "{line}");
    assert_eq!(docker.asked("empty").len(), 1);
}

#[test]
fn helpers_that_fail_are_named_and_bounded() {
    let registry = RegistryServer::start_with_basic_auth();
    let dir = tempfile::tempdir().unwrap();
    let (target, _) = pushed(&registry, dir.path(), true);
    let fails = |config: &str, helper: Option<&str>| {
        let docker = Docker::new(config);
        let docker = match helper {
            Some(body) => docker.helper("broken", body),
            None => docker,
        };
        error_line(&docker.vmimg(&dir.path().join("store"), &["pull", &target]))
    };
    let broken = r#"{"credsStore": "broken"}"#;

    let (code, line) = fails(r#"{"credsStore": "absent"}"#, None);
    assert!(code == 3 && line.contains("docker-credential-absent") && line.contains("not on PATH"), "{line}");
    let (code, line) = fails(r#"{"credsStore": "../../bin/sh"}"#, None);
    assert!(code == 2 && line.contains("no plain name"), "{line}");
    let (code, line) = fails(broken, Some("echo 'the keychain is locked' >&2; exit 4"));
    assert!(code == 8 && line.contains("exit status: 4") && line.contains("the keychain is locked"), "{line}");
    assert!(line.contains(&format!("printf %s {} | docker-credential-broken get", registry.host())), "{line}");
    let (code, line) = fails(broken, Some("echo garbage"));
    assert!(code == 8 && line.contains("docker-credential-broken get printed no credentials JSON"), "{line}");
    let (code, line) = fails(broken, Some("exec head -c 2000000 /dev/zero"));
    assert!(code == 8 && line.contains("more than 1048576 bytes and was killed"), "{line}");
    // An identity token cannot answer Basic auth.
    let docker = Docker::new(broken).answering("broken", "<token>", "refresh");
    let (code, line) = error_line(&docker.vmimg(&dir.path().join("store"), &["pull", &target]));
    assert!(code == 8 && line.contains("identity token"), "{line}");
}

/// A helper's identity token (user `<token>`) goes to the token realm as
/// docker sends it: an OAuth2 refresh-token grant, a form POST.
#[test]
fn an_identity_token_is_exchanged_at_the_realm() {
    let tokens = TestServer::start();
    tokens.add("/token", br#"{"access_token": "vmimg-test-token"}"#.to_vec());
    let registry = RegistryServer::start_with_token_auth(&tokens.url("/token"));
    let dir = tempfile::tempdir().unwrap();
    let (target, disk) = pushed(&registry, dir.path(), false);
    let docker = Docker::new(r#"{"credsStore": "desktop"}"#).answering("desktop", "<token>", "refresh-123");

    let out = docker.vmimg(&dir.path().join("store"), &["cat", &target]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout == disk);
    let posts: Vec<_> = tokens.log().into_iter().filter(|r| r.method == "POST").collect();
    assert!(!posts.is_empty(), "no grant was posted: {:?}", tokens.log());
    let form = String::from_utf8(posts[0].body.clone()).unwrap();
    for field in [
        "grant_type=refresh_token",
        "refresh_token=refresh-123",
        "service=vmimg-test",
        "scope=repository%3Avm%2Fdisk%3Apull",
        "client_id=vmimg",
    ] {
        assert!(form.split('&').any(|pair| pair == field), "{field} missing from {form}");
    }
    assert!(posts.iter().all(|r| r.authorization.is_none()), "the grant carries the token in its form only");
}
