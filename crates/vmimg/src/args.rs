//! The option groups commands share, each flattened into the commands it
//! applies to (so that a command's `--help` shows its own options only),
//! and opening the store with them.

use anyhow::Result;
use std::path::{Path, PathBuf};
use std::time::Duration;
use vmimg_store::Store;

/// How sources resolve: the catalog, mirrors, the architecture.
#[derive(clap::Args, Clone, Default)]
#[command(next_help_heading = "Sources")]
pub struct SourceArgs {
    /// A catalog file whose aliases add to or override the embedded ones
    /// (same schema; a catalog.json in the store root is read too).
    #[arg(long, value_name = "FILE")]
    pub catalog: Option<PathBuf>,
    /// Fetch URLs starting with FROM from TO instead (a mirror), e.g.
    /// https://cloud.debian.org/images/cloud/=http://mirror.lan/debian/.
    /// Repeatable; config.json in the store root may hold {"mirrors": {FROM: TO}}.
    #[arg(long, value_name = "FROM=TO")]
    pub mirror: Vec<String>,
    /// The architecture to resolve catalog aliases and image indexes to
    /// [default: this host's].
    #[arg(long, value_parser = ["amd64", "arm64"])]
    pub arch: Option<String>,
}

/// How downloads behave when the network does not.
#[derive(clap::Args, Clone)]
#[command(next_help_heading = "Downloads")]
pub struct DownloadArgs {
    /// Attempts in a row without progress before a download gives up.
    #[arg(long, env = "VMIMG_RETRIES", default_value_t = 8, value_name = "N")]
    pub retries: usize,
    /// First delay between attempts, in milliseconds (doubles up to 30 s).
    #[arg(long, env = "VMIMG_RETRY_DELAY", default_value_t = 500, value_name = "MS")]
    pub retry_delay: u64,
    /// Cut and resume a download that sends nothing for this many seconds.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub read_timeout: u64,
    /// Cut and resume a download slower than BYTES a second, averaged over
    /// --speed-time seconds (0: never).
    #[arg(long, default_value_t = vmimg_fetch::FetchOptions::default().min_speed, value_name = "BYTES")]
    pub speed_limit: u64,
    /// The window over which --speed-limit averages, in seconds (0: no limit).
    #[arg(long, default_value_t = vmimg_fetch::FetchOptions::default().speed_window.as_secs(), value_name = "SECS")]
    pub speed_time: u64,
}

/// How registries are reached.
#[derive(clap::Args, Clone, Default)]
#[command(next_help_heading = "Registries")]
pub struct RegistryArgs {
    /// A registry host (host or host:port) to speak plain HTTP to;
    /// repeatable. Loopback hosts always are.
    #[arg(long, value_name = "HOST")]
    pub insecure_registry: Vec<String>,
    /// Registry user name [default: ~/.docker/config.json's (its credential
    /// helpers, then its auths), else anonymous].
    #[arg(long, env = "VMIMG_REGISTRY_USERNAME", requires = "secret")]
    pub username: Option<String>,
    /// Registry password or token.
    #[arg(long, env = "VMIMG_REGISTRY_PASSWORD", hide_env_values = true, requires = "username", group = "secret")]
    pub password: Option<String>,
    /// Read the registry password or token from standard input (one
    /// trailing newline dropped), as `docker login --password-stdin` does.
    #[arg(long, requires = "username", group = "secret")]
    pub password_stdin: bool,
    /// Where registry hosts are configured, as containerd reads them:
    /// DIR/HOST[:PORT]/hosts.toml (mirrors, certificates), else
    /// DIR/_default/hosts.toml [default: STORE/certs.d].
    #[arg(long, value_name = "DIR")]
    pub hosts_dir: Option<PathBuf>,
    /// Use only registry images signed with this key (a PEM ECDSA P-256
    /// public key, cosign's key-based signatures); repeatable: any of the
    /// keys. Adds to the store config's `signatures`.
    #[arg(long, value_name = "PUB")]
    pub verify_key: Vec<PathBuf>,
}

/// A password read from standard input larger than this is refused.
const MAX_PASSWORD_BYTES: u64 = 64 << 10;

impl RegistryArgs {
    /// The credentials given: --username with --password, or with the
    /// password --password-stdin reads.
    fn credentials(&self) -> Result<Option<vmimg_oci::Credentials>> {
        let password = match (&self.password, self.password_stdin) {
            (Some(password), _) => password.clone(),
            (None, true) => password_from_stdin()?,
            (None, false) => return Ok(None),
        };
        Ok(self.username.clone().map(|username| vmimg_oci::Credentials { username, password }))
    }
}

impl RegistryArgs {
    /// `--verify-key`'s keys, for every registry.
    fn policy(&self) -> Result<vmimg_oci::sign::Policy> {
        let mut policy = vmimg_oci::sign::Policy::default();
        if !self.verify_key.is_empty() {
            let keys = self.verify_key.iter().map(|path| vmimg_oci::sign::VerifyKey::from_file(path));
            let keys = keys.collect::<std::result::Result<Vec<_>, _>>().map_err(vmimg_oci::Error::from)?;
            policy.require("", keys);
        }
        Ok(policy)
    }
}

/// All of standard input but a trailing `\n` and then `\r`, as docker reads
/// `--password-stdin` (from a terminal too); empty is refused.
fn password_from_stdin() -> Result<String> {
    use std::io::Read;
    let invalid = |problem: &str| vmimg_store::Error::Invalid(format!("--password-stdin {problem}"));
    let mut text = String::new();
    std::io::stdin()
        .take(MAX_PASSWORD_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| invalid(&format!("cannot read standard input: {e}")))?;
    if text.len() as u64 > MAX_PASSWORD_BYTES {
        return Err(invalid(&format!("read more than {MAX_PASSWORD_BYTES} bytes: give it the password alone")).into());
    }
    let password = text.strip_suffix('\n').unwrap_or(&text);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        return Err(invalid("read no password: write it to vmimg's standard input").into());
    }
    Ok(password.to_owned())
}

/// What to call the image a command gets.
#[derive(clap::Args, Clone, Default)]
pub struct NamingArgs {
    /// Name the image (as `vmimg tag` does): commands then take NAME for
    /// it, and gc never evicts it.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
}

/// Everything getting a source into the store takes.
#[derive(clap::Args, Clone)]
pub struct GetArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub download: DownloadArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Conversion threads [default: one per core, at most 8].
    // With the command's own options, not under the heading before it.
    #[arg(long, value_name = "N", help_heading = None::<&str>)]
    pub threads: Option<usize>,
}

impl GetArgs {
    pub fn opening(&self) -> Opening<'_> {
        Opening {
            download: Some(&self.download),
            registry: Some(&self.registry),
            threads: self.threads,
            ..self.source.opening()
        }
    }
}

/// Everything getting a container image into the store takes: a registry
/// reference or an OCI layout names it, so no catalog alias or URL mirror
/// applies, and its layers are unpacked, never converted (no threads).
#[derive(clap::Args, Clone)]
pub struct ContainerArgs {
    /// The architecture to resolve image indexes to [default: this host's].
    #[arg(long, value_parser = ["amd64", "arm64"], help_heading = "Sources")]
    pub arch: Option<String>,
    #[command(flatten)]
    pub download: DownloadArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

impl ContainerArgs {
    pub fn opening(&self) -> Opening<'_> {
        Opening {
            arch: self.arch.as_deref(),
            download: Some(&self.download),
            registry: Some(&self.registry),
            ..Opening::default()
        }
    }
}

impl SourceArgs {
    /// The store opened with these sources and its defaults otherwise.
    pub fn opening(&self) -> Opening<'_> {
        Opening {
            catalog: self.catalog.as_deref(),
            mirrors: &self.mirror,
            arch: self.arch.as_deref(),
            ..Opening::default()
        }
    }
}

/// `--store` for a command that uses no store: clap gives a subcommand a
/// global option only where it has none of that id, so this keeps the
/// option accepted there (ignored, as before) but out of its help.
pub fn unused_store() -> clap::Arg {
    clap::Arg::new("store").long("store").value_name("DIR").value_parser(clap::value_parser!(PathBuf)).hide(true)
}

/// `-q` for a command that prints nothing but its result anyway (see
/// [`unused_store`]).
pub fn unused_quiet() -> clap::Arg {
    clap::Arg::new("quiet").short('q').long("quiet").action(clap::ArgAction::SetTrue).hide(true)
}

/// A value parser that lists the values it takes (in `--help`, the
/// completions and the man pages) and leaves the parsing, and its error
/// message, to `parser`.
#[derive(Clone)]
pub struct Listed<P> {
    parser: P,
    names: Vec<&'static str>,
}

/// `parser`, listing `names`.
pub fn listed<P>(parser: P, names: impl IntoIterator<Item = &'static str>) -> Listed<P> {
    Listed { parser, names: names.into_iter().collect() }
}

impl<P: clap::builder::TypedValueParser> clap::builder::TypedValueParser for Listed<P> {
    type Value = P::Value;

    fn parse_ref(
        &self,
        command: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> std::result::Result<P::Value, clap::Error> {
        self.parser.parse_ref(command, arg, value)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(self.names.iter().map(|name| clap::builder::PossibleValue::new(*name))))
    }
}

/// What a command gives the store beyond its directory; what it does not
/// give is the store's default.
#[derive(Default, Clone, Copy)]
pub struct Opening<'a> {
    /// A catalog file whose aliases add to the store's (`--catalog`).
    pub catalog: Option<&'a Path>,
    /// URL prefix rewrites, FROM=TO (`--mirror`).
    pub mirrors: &'a [String],
    /// The architecture to resolve to (`--arch`) [default: this host's].
    pub arch: Option<&'a str>,
    pub download: Option<&'a DownloadArgs>,
    pub registry: Option<&'a RegistryArgs>,
    pub threads: Option<usize>,
    /// The command only reads: the store is neither made nor written.
    pub read_only: bool,
    /// The command lists the store's contents: a store named but missing
    /// is refused (a typo more likely than an empty store).
    pub existing: bool,
}

impl Opening<'_> {
    /// Opens the store at `root` (the default store when None).
    pub fn open(self, root: Option<&Path>) -> Result<Store> {
        if let Some(root) = root.filter(|root| self.existing && !root.exists()) {
            return Err(vmimg_store::Error::NoStore { root: std::path::absolute(root)? }.into());
        }
        if let Some(root) = root.filter(|root| root.exists() && !root.is_dir()) {
            return Err(vmimg_store::Error::Invalid(format!(
                "--store {}: not a directory; a store is a directory (made on first use)",
                root.display()
            ))
            .into());
        }
        let mut mirrors = vmimg_store::Mirrors::default();
        for rule in self.mirrors {
            mirrors.add_rule(rule)?;
        }
        let fetch = match self.download {
            Some(download) => vmimg_fetch::FetchOptions {
                attempts: download.retries.max(1),
                min_delay: Duration::from_millis(download.retry_delay),
                read_timeout: Duration::from_secs(download.read_timeout.max(1)),
                min_speed: download.speed_limit,
                speed_window: Duration::from_secs(download.speed_time),
                ..Default::default()
            },
            None => Default::default(),
        };
        let registry = match self.registry {
            Some(r) => vmimg_oci::RegistryOptions {
                insecure: r.insecure_registry.clone(),
                credentials: r.credentials()?,
                hosts_dir: r.hosts_dir.clone(),
                policy: r.policy()?,
                ..Default::default()
            },
            None => Default::default(),
        };
        Ok(Store::open(vmimg_store::StoreOptions {
            root: root.map(Path::to_owned),
            catalog: self.catalog.map(Path::to_owned),
            mirrors,
            arch: self.arch.map(str::parse).transpose()?,
            fetch,
            registry,
            threads: self.threads.unwrap_or(0),
            read_only: self.read_only,
        })?)
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    /// Every value an option lists is one it takes (the command line may
    /// lack other things).
    #[test]
    fn listed_values_are_taken() {
        fn check(command: &clap::Command, words: &[&str]) {
            for arg in command.get_arguments().filter(|arg| arg.get_long().is_some()) {
                for value in arg.get_possible_values() {
                    let option = format!("--{}={}", arg.get_long().expect("long"), value.get_name());
                    let line = words.iter().copied().chain([option.as_str()]);
                    if let Err(e) = crate::Cli::command().try_get_matches_from(line) {
                        assert!(!matches!(e.kind(), ErrorKind::InvalidValue | ErrorKind::ValueValidation), "{e}");
                    }
                }
            }
            for sub in command.get_subcommands() {
                check(sub, &[words, &[sub.get_name()]].concat());
            }
        }
        check(&crate::Cli::command(), &["vmimg"]);
    }
}
