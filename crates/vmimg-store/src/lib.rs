//! vmimg's image store: where disks live on the host and how they get there.
//!
//! - [`Catalog`]: aliases pinned to dated upstream snapshots and digests;
//! - [`Store`]: the on-disk layout, cache keys, per-key locks (in-process and
//!   across processes), and [`Store::pull`], which fetches, verifies,
//!   converts and atomically publishes an image (see the `store` module for
//!   the life of an image);
//! - [`Store::import_bundle`], [`Store::export_bundle`] and
//!   [`Store::new_image`]: image bundles and blank mutable images (the
//!   `bundle` module);
//! - [`Store::build_container`]: container images made into ext4, erofs or
//!   cpio disks, their layers cached by digest (the `container` module);
//!   [`Manager`] queues such builds, a few at a time, keeps their status,
//!   follows and cancels them (also across processes), recovers those a
//!   crash interrupted, and counts them (the `builds` module);
//! - [`Store::metrics`]: builds, pulls and bytes on disk in a Prometheus
//!   registry a daemon serves (the `metrics` module);
//! - [`Store::refresh_catalog`]: moves a catalog file's aliases to their
//!   publishers' newest snapshots (the `refresh` module).
//!
//! The store never prints and never parses command lines: the CLI does.

mod builds;
mod bundle;
mod catalog;
mod container;
mod error;
mod fsutil;
mod growing;
mod instance;
mod manage;
mod metrics;
mod oci;
mod pull;
mod record;
mod refresh;
mod source;
mod store;
mod unpack;

pub use builds::{Build, BuildStatus, Manager, ManagerOptions, Totals, build_id};
pub use bundle::ExportedBundle;
pub use catalog::{Arch, Artifact, Catalog, EMBEDDED, Entry, MAX_CATALOG_BYTES, Mirrors};
pub use container::{BuildObserver, ContainerInfo, RootfsFormat};
pub use error::{Error, Result};
pub use instance::{Instance, InstanceFormat, InstanceRecord, InstanceRequest};
pub use manage::{GcReport, ImageSummary, Usage};
pub use metrics::Metrics;
pub use oci::OciSource;
/// The metrics library whose registry [`Metrics::registry`] gives, at the version the store uses.
pub use prometheus_client;
pub use pull::Pulled;
pub use record::{ImageRecord, Status};
pub use refresh::{Change, MAX_UPSTREAM_TEXT, RefreshError, Refreshed};
pub use source::{Location, Resolved, SourceInfo};
pub use store::{Store, StoreOptions, default_root};
pub use vmimg_bundle::bundle::{ExportOptions, Limits as BundleLimits};
pub use vmimg_bundle::machine::Machine;
