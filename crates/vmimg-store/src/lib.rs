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
//!   recovers those a crash interrupted, and counts them (the `builds`
//!   module);
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
mod get;
mod growing;
mod instance;
mod locks;
mod manage;
mod oci;
mod pull;
mod record;
mod refresh;
mod source;
mod store;
mod unpack;

pub use builds::{Build, BuildStatus, Histogram, Manager, ManagerOptions, Metrics, Totals, build_id};
pub use bundle::ExportedBundle;
pub use catalog::{Arch, Artifact, Catalog, EMBEDDED, Entry, MAX_CATALOG_BYTES, Mirrors};
pub use container::BuildObserver;
pub use error::{Error, Result};
pub use get::{GetOptions, Observer, Stage};
pub use instance::{Instance, InstanceRequest};
pub use manage::{GcReport, ImageSummary, Usage};
pub use oci::OciSource;

pub use record::{
    Compression, ContainerInfo, ImageFormat, ImageRecord, InstanceFormat, InstanceRecord, Pulled, RootfsFormat,
    SourceFormat, SourceInfo, Status, Timestamp,
};
pub use refresh::{Change, MAX_UPSTREAM_TEXT, RefreshError, Refreshed};
pub use source::{Location, Resolved, Source};
pub use store::{Store, StoreOptions, default_root};
pub use vmimg_bundle::bundle::{ExportOptions, Limits as BundleLimits};
pub use vmimg_bundle::machine::Machine;
