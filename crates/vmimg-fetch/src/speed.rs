//! The low-speed cut, as curl's `--speed-limit`/`--speed-time`: a body that
//! brings fewer than `min_speed` bytes a second, averaged over
//! `speed_window`, is cut with [`Error::TooSlow`]. `read_timeout` catches a
//! body that goes silent; this catches one that drips a byte at a time,
//! which would otherwise hold a download forever.
//!
//! Windows follow each other from the moment the body is first read; each
//! is judged when it ends, whether a chunk arrives then or not. The end of
//! the body is never judged: a short last window is not a slow one.
//!
//! This module only measures and cuts: retrying is the caller's business.

use crate::download::FetchOptions;
use crate::error::{Error, Result};
use futures_util::{Stream, StreamExt};
use std::time::Duration;
use tokio::time::Instant;

/// A response body read under the speed floor.
pub(crate) struct PacedBody<'a, S> {
    url: &'a str,
    body: S,
    floor: Option<Floor>,
}

/// The window being measured.
struct Floor {
    min_speed: u64,
    window: Duration,
    since: Instant,
    bytes: u64,
}

impl<'a, S, B> PacedBody<'a, S>
where
    S: Stream<Item = reqwest::Result<B>> + Unpin,
    B: AsRef<[u8]>,
{
    /// `body` of `url`, under the floor `options` set (none when
    /// `min_speed` or `speed_window` is zero).
    pub(crate) fn new(url: &'a str, body: S, options: &FetchOptions) -> Self {
        let floor = (options.min_speed > 0 && !options.speed_window.is_zero()).then(|| Floor {
            min_speed: options.min_speed,
            window: options.speed_window,
            since: Instant::now(),
            bytes: 0,
        });
        PacedBody { url, body, floor }
    }

    /// The next chunk, `None` at the end of the body.
    pub(crate) async fn next(&mut self) -> Result<Option<B>> {
        let Some(floor) = &mut self.floor else {
            return self.body.next().await.transpose().map_err(|e| Error::transfer(self.url, e));
        };
        loop {
            // Dropping `next()` at the window's end loses nothing: it only polls.
            let Ok(next) = tokio::time::timeout_at(floor.since + floor.window, self.body.next()).await else {
                floor.judge(self.url)?;
                continue;
            };
            let chunk = next.transpose().map_err(|e| Error::transfer(self.url, e))?;
            if let Some(chunk) = &chunk {
                floor.bytes += chunk.as_ref().len() as u64;
                floor.judge(self.url)?;
            }
            return Ok(chunk);
        }
    }
}

impl Floor {
    /// Once the window is over: cuts a body that brought too little in it,
    /// else starts the next window.
    fn judge(&mut self, url: &str) -> Result<()> {
        let elapsed = self.since.elapsed();
        if elapsed < self.window {
            return Ok(());
        }
        let speed = (self.bytes as f64 / elapsed.as_secs_f64()) as u64;
        if speed < self.min_speed {
            return Err(Error::TooSlow { url: url.to_owned(), speed, window: self.window, min_speed: self.min_speed });
        }
        (self.since, self.bytes) = (Instant::now(), 0);
        Ok(())
    }
}
