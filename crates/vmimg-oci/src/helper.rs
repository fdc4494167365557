//! Docker's credential helpers, run as docker runs them: what
//! `credsStore` and `credHelpers` in its config.json name.
//!
//! `docker-credential-NAME get`, found on PATH, reads a server URL on stdin
//! (`https://index.docker.io/v1/` for Docker Hub, else the registry's
//! `host[:port]`) and prints `{"ServerURL","Username","Secret"}`; a user
//! `<token>` means the secret is an identity token. A helper that fails
//! saying `credentials not found` has none for that server (vmimg goes on
//! anonymously, as docker does); any other failure is an error that names
//! the helper and how to check it.
//!
//! Refused: a NAME that is no plain name (a `/`, a `..`): the config names
//! a helper on PATH, never a path. Bounded: a helper's output is read up to
//! 1 MiB and it has 30 s to answer, else it is killed; it runs as a child
//! process the runtime waits on, so no thread blocks on it.

use crate::auth::{Credentials, Login};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// A helper's stdout (and stderr) past this many bytes is refused.
const MAX_OUTPUT: u64 = 1 << 20;

/// How long a helper has to answer.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The user name that says the secret is an identity token.
const TOKEN_USER: &str = "<token>";

/// Why a credential helper gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error(
        "credential helper {name:?} (credsStore or credHelpers in Docker's config.json) is no plain name: vmimg \
         runs only docker-credential-NAME from PATH, NAME without `/` or `..`; fix the config"
    )]
    BadName { name: String },
    #[error(
        "docker-credential-{name}, which Docker's config.json names for {server}, is not on PATH: install it, or \
         take it out of credsStore/credHelpers"
    )]
    Missing { name: String, server: String },
    #[error(
        "docker-credential-{name} get {problem}: check it with `printf %s {server} | docker-credential-{name} get`"
    )]
    Failed { name: String, server: String, problem: String },
}

/// What `docker-credential-NAME get` has for `server`; None when it has
/// nothing for it.
pub(crate) async fn get(name: &str, server: &str) -> Result<Option<Login>, HelperError> {
    if name.contains('/') || name.contains("..") {
        return Err(HelperError::BadName { name: name.to_owned() });
    }
    run(Command::new(format!("docker-credential-{name}")), name, server, TIMEOUT).await
}

/// Runs `command get` (the helper `name`), giving it `timeout`.
async fn run(mut command: Command, name: &str, server: &str, timeout: Duration) -> Result<Option<Login>, HelperError> {
    let failed = |problem| HelperError::Failed { name: name.to_owned(), server: server.to_owned(), problem };
    command.arg("get").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(HelperError::Missing { name: name.to_owned(), server: server.to_owned() });
        }
        Err(e) => return Err(failed(format!("cannot be run: {e}"))),
    };
    let answered = match tokio::time::timeout(timeout, answer(&mut child, server)).await {
        Ok(answered) => answered,
        Err(_) => Err(format!("did not answer within {} s and was killed", timeout.as_secs())),
    };
    match answered {
        Ok(answer) => login(answer).map_err(failed),
        Err(problem) => {
            let _ = child.kill().await;
            Err(failed(problem))
        }
    }
}

/// What a helper said, and how it ended.
struct Answer {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Writes `server` to the helper and reads what it prints until it exits.
async fn answer(child: &mut Child, server: &str) -> Result<Answer, String> {
    let mut stdin = child.stdin.take().expect("piped stdin");
    // A helper may exit without reading: what it answers tells.
    let _ = stdin.write_all(server.as_bytes()).await;
    drop(stdin);
    let (stdout, stderr) = (child.stdout.take().expect("piped stdout"), child.stderr.take().expect("piped stderr"));
    let (stdout, stderr) = tokio::try_join!(read_bounded(stdout), read_bounded(stderr))?;
    let status = child.wait().await.map_err(|e| format!("could not be waited for: {e}"))?;
    Ok(Answer { status, stdout, stderr })
}

/// All `stream` gives, refused past [`MAX_OUTPUT`].
async fn read_bounded(stream: impl AsyncRead + Unpin) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    stream.take(MAX_OUTPUT + 1).read_to_end(&mut bytes).await.map_err(|e| format!("could not be read: {e}"))?;
    if bytes.len() as u64 > MAX_OUTPUT {
        return Err(format!("printed more than {MAX_OUTPUT} bytes and was killed"));
    }
    Ok(bytes)
}

/// The login an answer holds: None for `credentials not found` (or an
/// empty secret); the problem otherwise.
fn login(answer: Answer) -> Result<Option<Login>, String> {
    let said = String::from_utf8_lossy(&answer.stdout);
    if !answer.status.success() {
        if said.trim().to_ascii_lowercase().starts_with("credentials not found") {
            return Ok(None);
        }
        let stderr = String::from_utf8_lossy(&answer.stderr);
        let told = said.lines().chain(stderr.lines()).map(str::trim).find(|line| !line.is_empty());
        let told: String = told.unwrap_or("no message").chars().take(200).collect();
        return Err(format!("failed ({}): {told}", answer.status));
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Reply {
        username: String,
        secret: String,
    }
    let reply: Reply =
        serde_json::from_slice(&answer.stdout).map_err(|e| format!("printed no credentials JSON ({e})"))?;
    Ok(match reply {
        Reply { secret, .. } if secret.is_empty() => None,
        Reply { username, secret } if username == TOKEN_USER => Some(Login::IdentityToken(secret)),
        Reply { username, secret } => Some(Login::Password(Credentials { username, password: secret })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Runs a helper named `test` whose script is `body`, with a 1 s timeout.
    async fn helper(body: &str) -> Result<Option<Login>, HelperError> {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("docker-credential-test");
        std::fs::write(&program, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        run(Command::new(&program), "test", "127.0.0.1:5000", Duration::from_secs(1)).await
    }

    fn problem(result: Result<Option<Login>, HelperError>) -> String {
        match result {
            Err(HelperError::Failed { problem, .. }) => problem,
            other => panic!("a failure, not {other:?}"),
        }
    }

    #[tokio::test]
    async fn answers() {
        let reply = r#"read url; echo "{\"ServerURL\":\"$url\",\"Username\":\"u\",\"Secret\":\"p\"}""#;
        let Some(Login::Password(credentials)) = helper(reply).await.unwrap() else { panic!("a password") };
        assert_eq!((credentials.username.as_str(), credentials.password.as_str()), ("u", "p"));
        let token = r#"echo '{"ServerURL":"x","Username":"<token>","Secret":"refresh"}'"#;
        assert!(matches!(helper(token).await.unwrap(), Some(Login::IdentityToken(t)) if t == "refresh"));
        let none = "echo 'credentials not found in native keychain'; exit 1";
        assert!(helper(none).await.unwrap().is_none());
        assert!(helper(r#"echo '{"Username":"","Secret":""}'"#).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn failures_are_bounded_and_say_what_happened() {
        let failed = problem(helper("echo 'keychain locked' >&2; exit 3").await);
        assert!(failed.contains("exit status: 3") && failed.contains("keychain locked"), "{failed}");
        assert!(problem(helper("echo garbage").await).contains("printed no credentials JSON"));
        assert!(problem(helper("exec head -c 2000000 /dev/zero").await).contains("more than 1048576 bytes"));
        let started = std::time::Instant::now();
        assert!(problem(helper("exec sleep 60").await).contains("did not answer within 1 s and was killed"));
        assert!(started.elapsed() < Duration::from_secs(10), "the helper was not killed");
    }

    #[tokio::test]
    async fn only_plain_names_on_path_run() {
        for name in ["../../bin/sh", "/bin/sh", "a/b"] {
            assert!(matches!(get(name, "x").await, Err(HelperError::BadName { .. })), "{name}");
        }
        let missing = get("vmimg-test-no-such-helper", "x").await.unwrap_err().to_string();
        assert!(
            missing.contains("docker-credential-vmimg-test-no-such-helper") && missing.contains("PATH"),
            "{missing}"
        );
    }
}
