//! The images being made: one job per image key, however many clients
//! asked for it, and the state each client is shown while it runs.
//!
//! A job runs [`Store::get_planned`] on its own task, so that it goes on
//! when the client that asked goes away; its state is a `watch` channel
//! that the image endpoints read and the event stream follows. A job that
//! ends ready leaves the table (the store has the image); one that fails
//! stays, so clients see why, until the image is asked for again or
//! deleted. Each request is kept in the store from before the client's 202
//! until its job ends ([`Store::accept`]), and [`Jobs::resume`] starts again
//! those a killed daemon left.

use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use utoipa::ToSchema;
use vmimg_store::{Accepted, ErrorKind, GetOptions, Manager, Observer, Plan, Result, Stage, Store};

/// Where an image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImageStatus {
    /// Accepted, waiting for a build slot.
    Pending,
    Pulling,
    Converting,
    Ready,
    Failed,
}

impl ImageStatus {
    pub fn is_done(self) -> bool {
        matches!(self, ImageStatus::Ready | ImageStatus::Failed)
    }
}

/// A job's state as clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobState {
    pub status: ImageStatus,
    /// Place in the build queue while pending (1 is next).
    pub queue_position: Option<usize>,
    pub bytes_done: u64,
    /// The download's size, once its server says it.
    pub bytes_total: Option<u64>,
    pub error: Option<(ErrorKind, String)>,
}

/// One image being made.
pub struct Job {
    /// The source as the client wrote it.
    pub source: String,
    state: watch::Sender<JobState>,
}

impl Job {
    pub fn state(&self) -> JobState {
        self.state.borrow().clone()
    }

    /// A receiver that sees the state now and every change after.
    pub fn subscribe(&self) -> watch::Receiver<JobState> {
        self.state.subscribe()
    }

    fn update(&self, change: impl FnOnce(&mut JobState)) {
        self.state.send_if_modified(|state| {
            let before = state.clone();
            change(state);
            *state != before
        });
    }
}

/// Tells a job what its get is doing.
struct JobObserver(Arc<Job>);

impl vmimg_fetch::Progress for JobObserver {
    fn started(&self, offset: u64, total: Option<u64>) {
        self.0.update(|s| {
            s.status = ImageStatus::Pulling;
            s.queue_position = None;
            s.bytes_done = offset;
            s.bytes_total = total;
        });
    }

    fn advanced(&self, written: u64) {
        self.0.update(|s| s.bytes_done = written);
    }

    fn retrying(&self, error: &(dyn std::error::Error + 'static), delay: std::time::Duration) {
        tracing::warn!(source = %self.0.source, %error, ?delay, "retrying");
    }
}

impl Observer for JobObserver {
    fn stage(&self, stage: Stage) {
        self.0.update(|s| match stage {
            Stage::Queued { position } => {
                s.status = ImageStatus::Pending;
                s.queue_position = Some(position);
            }
            Stage::Pulling => {
                s.status = ImageStatus::Pulling;
                s.queue_position = None;
            }
            Stage::Converting => {
                s.status = ImageStatus::Converting;
                s.queue_position = None;
            }
        });
    }
}

/// The jobs of one daemon, by image key.
pub struct Jobs {
    store: Store,
    builds: Manager,
    table: Mutex<HashMap<String, Arc<Job>>>,
}

impl Jobs {
    pub fn new(store: Store, builds: Manager) -> Jobs {
        Jobs { store, builds, table: Mutex::default() }
    }

    /// The job making image `key`, running or failed.
    pub fn get(&self, key: &str) -> Option<Arc<Job>> {
        self.table.lock().expect("job table").get(key).cloned()
    }

    /// Every job, running or failed, by key.
    pub fn all(&self) -> Vec<(String, Arc<Job>)> {
        let table = self.table.lock().expect("job table");
        table.iter().map(|(key, job)| (key.clone(), job.clone())).collect()
    }

    /// The job making `plan`'s image: the one running, or a new one (in
    /// place of one that failed), its request kept in the store until it
    /// ends so that a restarted daemon carries it on.
    pub async fn start(self: &Arc<Self>, plan: Plan, source: &str, options: &GetOptions) -> Result<Arc<Job>> {
        let key = plan.key().to_owned();
        let job = {
            let mut table = self.table.lock().expect("job table");
            if let Some(job) = table.get(&key).filter(|job| job.state().status != ImageStatus::Failed) {
                return Ok(job.clone());
            }
            let initial = JobState {
                status: if plan.is_build() { ImageStatus::Pending } else { ImageStatus::Pulling },
                queue_position: None,
                bytes_done: 0,
                bytes_total: None,
                error: None,
            };
            let job = Arc::new(Job { source: source.to_owned(), state: watch::Sender::new(initial) });
            table.insert(key.clone(), job.clone());
            job
        };
        if let Err(e) = self.store.accept(&Accepted::new(&key, source, options)).await {
            self.table.lock().expect("job table").remove(&key);
            return Err(e);
        }
        let jobs = self.clone();
        let (running, options) = (job.clone(), options.clone());
        tokio::spawn(async move { jobs.run(key, plan, options, running).await });
        Ok(job)
    }

    /// Starts again the requests a killed daemon had accepted and not
    /// finished (their partial downloads resume).
    pub async fn resume(self: &Arc<Self>) {
        let accepted = match self.store.accepted().await {
            Ok(accepted) => accepted,
            Err(e) => return tracing::error!(error = %e, "cannot list the requests a previous daemon accepted"),
        };
        for request in accepted {
            let request = match request {
                Ok(request) => request,
                Err(e) => {
                    tracing::error!(error = %e, "an accepted request does not read: it is left as it is");
                    continue;
                }
            };
            let options = request.options();
            let started = match self.store.plan(&request.source, &options).await {
                Ok(plan) if plan.key() != request.key => {
                    tracing::warn!(source = %request.source, was = %request.key, now = %plan.key(), "the source names another image now");
                    let _ = self.store.settle(&request.key).await;
                    self.start(plan, &request.source, &options).await
                }
                Ok(plan) => self.start(plan, &request.source, &options).await,
                Err(e) => Err(e),
            };
            match started {
                Ok(_) => tracing::info!(image = %request.key, source = %request.source, "resumed an accepted request"),
                Err(e) => {
                    tracing::error!(image = %request.key, source = %request.source, error = %e, "an accepted request cannot resume");
                    let _ = self.store.settle(&request.key).await;
                }
            }
        }
    }

    async fn run(&self, key: String, plan: Plan, options: GetOptions, job: Arc<Job>) {
        let options = GetOptions {
            observer: Some(Arc::new(JobObserver(job.clone()))),
            builds: Some(self.builds.clone()),
            ..options
        };
        let result = self.store.get_planned(&plan, &options).await;
        if let Err(e) = self.store.settle(&key).await {
            tracing::warn!(image = %key, error = %e, "cannot forget a finished request: a restart will find it ready");
        }
        match result {
            Ok(_) => {
                job.update(|s| {
                    s.status = ImageStatus::Ready;
                    s.queue_position = None;
                });
                self.table.lock().expect("job table").remove(&key);
            }
            Err(e) => {
                tracing::warn!(image = %key, source = %job.source, error = %e, "image failed");
                job.update(|s| {
                    s.status = ImageStatus::Failed;
                    s.queue_position = None;
                    s.error = Some((e.kind(), e.to_string()));
                });
            }
        }
    }

    /// Forgets the failed job of `key`; false if none failed (a running
    /// job cannot be forgotten).
    pub fn forget_failed(&self, key: &str) -> bool {
        let mut table = self.table.lock().expect("job table");
        match table.get(key) {
            Some(job) if job.state().status == ImageStatus::Failed => table.remove(key).is_some(),
            _ => false,
        }
    }

    /// Whether a job is making image `key` now.
    pub fn is_running(&self, key: &str) -> bool {
        self.get(key).is_some_and(|job| !job.state().status.is_done())
    }
}
