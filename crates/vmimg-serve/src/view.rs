//! The image object clients see: a ready image from its record, or an image
//! being made from its job, in one shape.

use crate::jobs::{ImageStatus, Job};
use serde::Serialize;
use utoipa::ToSchema;
use vmimg_store::{ErrorKind, ImageFormat, ImageRecord};

/// An image, ready or being made.
#[derive(Debug, Serialize, ToSchema)]
pub struct Image {
    /// The image's key in the store: what the other image endpoints take.
    pub name: String,
    pub status: ImageStatus,
    /// Where it comes from, as written.
    pub source: String,
    /// Place in the build queue while pending (1 is next).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<usize>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<ErrorKind>,
    /// Bytes downloaded so far (while pulling).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_done: Option<u64>,
    /// The download's size, once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    /// The source's digest (`algorithm:hex`), once ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Whether that digest was checked against the catalog, the caller's
    /// digest or the manifest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<ImageFormat>,
    /// The disk's size as the VM sees it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtual_size: Option<u64>,
    /// Bytes the disk occupies on the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocated_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub created_at: Option<String>,
    /// A container image's run settings: entrypoint, cmd, env,
    /// working_dir, user.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub config: Option<vmimg_oci::container::RunConfig>,
}

impl Image {
    pub fn ready(record: &ImageRecord) -> Image {
        Image {
            name: record.name.clone(),
            status: ImageStatus::Ready,
            source: record.source.display_name(),
            queue_position: None,
            error: None,
            error_kind: None,
            bytes_done: None,
            bytes_total: None,
            digest: record.digest.as_ref().map(ToString::to_string),
            verified: Some(record.verified),
            format: Some(record.format),
            virtual_size: Some(record.virtual_size),
            allocated_size: Some(record.allocated_size),
            created_at: Some(record.created_at.to_string()),
            config: record.container.as_ref().map(|c| c.run.clone()),
        }
    }

    /// The image `key` that `job` makes, as the job's state says.
    pub fn of_job(key: &str, job: &Job) -> Image {
        let state = job.state();
        let (error_kind, error) = state.error.map_or((None, None), |(kind, message)| (Some(kind), Some(message)));
        let pulling = state.status == ImageStatus::Pulling || state.bytes_done > 0;
        Image {
            name: key.to_owned(),
            status: state.status,
            source: job.source.clone(),
            queue_position: state.queue_position,
            error,
            error_kind,
            bytes_done: pulling.then_some(state.bytes_done),
            bytes_total: state.bytes_total,
            digest: None,
            verified: None,
            format: None,
            virtual_size: None,
            allocated_size: None,
            created_at: None,
            config: None,
        }
    }
}
