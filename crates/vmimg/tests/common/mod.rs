//! Running the `vmimg` binary as the registry tests (container, oci) do:
//! with no credentials but the test's own, and short retries.

#![allow(dead_code)] // each test file uses a part

use std::path::Path;
use std::process::{Command, Output};

/// `vmimg --store STORE ARGS`, with no credentials but the test's own.
pub fn vmimg(store: &Path, args: &[&str]) -> Output {
    command(store, args).output().unwrap()
}

/// The command [`vmimg`] runs, for a test that adds to it (the
/// environment, a working directory).
pub fn command(store: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vmimg"));
    command
        .env("DOCKER_CONFIG", "/nonexistent/vmimg-test")
        .arg("--store")
        .arg(store)
        .env("VMIMG_RETRY_DELAY", "10")
        .env("VMIMG_RETRIES", "2")
        .args(args);
    command
}

/// The exit code and the one line on stderr of a run that must fail as
/// README promises: exactly one line, starting `vmimg: error: `, nothing on
/// stdout, an exit code of 1 to 9.
pub fn error_line(out: &Output) -> (i32, String) {
    let stderr = String::from_utf8(out.stderr.clone()).unwrap();
    let code = out.status.code().unwrap_or(-1);
    assert!((1..=9).contains(&code), "should fail with 1 to 9: {:?}: {stderr}", out.status);
    assert_eq!(stderr.lines().count(), 1, "one line on stderr: {stderr}");
    assert!(stderr.starts_with("vmimg: error: "), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout: {}", String::from_utf8_lossy(&out.stdout));
    (code, stderr.trim_end().to_owned())
}

/// [`error_line`] of `vmimg --store STORE ARGS`.
pub fn fails_in_one_line(store: &Path, args: &[&str]) -> (i32, String) {
    error_line(&vmimg(store, args))
}

/// The stdout, trimmed, of a run that must succeed.
pub fn ok(store: &Path, args: &[&str]) -> String {
    String::from_utf8(succeeds(store, args).stdout).unwrap().trim().to_owned()
}

/// The stdout, trimmed, and the stderr of a run that must succeed.
pub fn ok_with_stderr(store: &Path, args: &[&str]) -> (String, String) {
    let out = succeeds(store, args);
    (String::from_utf8(out.stdout).unwrap().trim().to_owned(), String::from_utf8(out.stderr).unwrap())
}

fn succeeds(store: &Path, args: &[&str]) -> Output {
    let out = vmimg(store, args);
    assert!(out.status.success(), "vmimg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The stderr of a run that must fail with one of the exit codes README
/// lists (1 to 9: never a crash).
pub fn fails(store: &Path, args: &[&str]) -> String {
    let out = vmimg(store, args);
    assert!(matches!(out.status.code(), Some(1..=9)), "vmimg {args:?} should fail: {:?}", out.status);
    String::from_utf8(out.stderr).unwrap()
}
