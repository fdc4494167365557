//! `vmimg serve`: runs the daemon (vmimg-serve) in the foreground until
//! SIGTERM or SIGINT, logging to stderr (at info unless -v or `RUST_LOG`
//! says otherwise).

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use tokio::signal::unix::{SignalKind, signal};
use vmimg_serve::{Config, Daemon, Limits, Listen, Token};
use vmimg_store::Store;

/// What `vmimg serve` was given.
pub struct ServeArgs {
    pub listen: Vec<Listen>,
    pub token_file: Option<PathBuf>,
    pub builds: usize,
    pub allow_local: Vec<PathBuf>,
    pub openapi: bool,
}

pub fn run(open: impl FnOnce() -> Result<Store>, args: ServeArgs) -> Result<()> {
    if args.openapi {
        println!("{}", vmimg_serve::openapi().to_pretty_json()?);
        return Ok(());
    }
    let listen = if args.listen.is_empty() {
        match vmimg_serve::default_socket() {
            Some(path) => vec![Listen::Unix(path)],
            None => bail!("XDG_RUNTIME_DIR is unset: give --listen unix:PATH or --listen tcp:HOST:PORT"),
        }
    } else {
        args.listen
    };
    let token = match &args.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            Some(Token::from_file_text(&text).map_err(anyhow::Error::msg).with_context(|| path.display().to_string())?)
        }
        None => None,
    };
    let limits = Limits { builds: args.builds, ..Limits::default() };
    let store = open()?;
    crate::runtime()?.block_on(async move {
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let daemon = Daemon::start(store, Config { listen, token, local_sources: args.allow_local, limits }).await?;
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
            _ = interrupt.recv() => tracing::info!("SIGINT: stopping"),
        }
        daemon.stop().await;
        Ok(())
    })
}
