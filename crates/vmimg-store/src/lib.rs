//! vmimg's image store: where VM disks live on the host and how they get there.
//!
//! # The front door
//!
//! Open a store, then make one call per job. [`Store::get`] takes any
//! source as a user writes it (a catalog alias, a URL, a local file, an
//! `oci://` or `docker://` cloud image or container image, or the name of
//! an image already in the store) and returns the ready image; the store
//! decides how to fetch, verify, convert or build it. The other verbs a
//! frontend serves are one call each too: [`Store::images`] (and
//! [`Store::images_matching`], filtered), [`Store::find`],
//! [`Store::inspect`], [`Store::remove`], [`Store::create_instance`],
//! [`Store::instances`], [`Store::remove_instance`], [`Store::push`],
//! [`Store::export_bundle`], [`Store::import_bundle`], [`Manager`] for
//! builds, [`Store::usage`] and [`Store::gc`]. Every error has a kind
//! ([`Error::kind`]) to map to an exit code or an HTTP status.
//!
//! ```
//! use vmimg_store::{GetOptions, InstanceFormat, InstanceRequest, Store, StoreOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let disk = dir.path().join("disk.img");
//! # std::fs::write(&disk, vec![0u8; 1 << 20])?;
//! # let root = Some(dir.path().join("store"));
//! let store = Store::open(StoreOptions { root, ..Default::default() })?;
//! tokio::runtime::Runtime::new()?.block_on(async {
//!     // Any source: "debian-12", "https://…/disk.qcow2", "oci://registry/vm/debian:12", or a file.
//!     let image = store.get(disk.to_str().unwrap(), &GetOptions::default()).await?;
//!     assert!(!image.cached && image.path.ends_with("disk.raw"));
//!     // The same source again is a hit; so is the image's name.
//!     assert!(store.get(disk.to_str().unwrap(), &GetOptions::default()).await?.cached);
//!     assert_eq!(store.find(&image.record.name).await?, image.record);
//!
//!     let request = InstanceRequest { image: image.record.name.clone(), name: Some("vm1".into()), size: Some(2 << 20), format: InstanceFormat::Qcow2 };
//!     let instance = store.create_instance(&request).await?;
//!     assert_eq!(store.instances()?.len(), 1);
//!     println!("boot {} ({} bytes on disk in all)", instance.path.display(), store.usage().total);
//!
//!     store.remove_instance("vm1").await?;
//!     store.remove(&image.record.name, false).await?;
//!     assert!(store.images()?.is_empty());
//!     Ok::<_, vmimg_store::Error>(())
//! })?;
//! # Ok(()) }
//! ```
//!
//! # The life of a blob and of an image
//!
//! A blob (a downloaded source, a disk part, a container layer) is written
//! as a partial under `tmp/`, resumable by its name, hashed as it arrives;
//! it is invisible until it is verified against the digest and size it
//! must have and committed: renamed to `blobs/` or `layers/<alg>/<hex>`
//! and flushed (`content`). An image is made in a work directory under
//! `tmp/` while its source arrives, under its key's lock and a share of
//! the store's lease (`locks`); it is invisible until its record is written
//! and the directory renamed to `images/<key>` in one step (`publish`).
//! gc removes what no record names, never while a pull or build holds the
//! lease, and evicts only images that can be pulled again (`manage`).
//!
//! # Layers, bottom up
//!
//! - `error`, `kind`: errors and their kinds; `fsutil`: bounded reads,
//!   atomic writes, the one way to run blocking work from async code;
//! - `catalog`, `record`: the catalog, and the typed records (image,
//!   instance, source) whose JSON is the schema clients see;
//! - `store` (the layout, options, lookups), `locks` (key locks, the
//!   lease), `content` (blobs and layers by digest), `publish` (work
//!   directories made visible by one rename), `usage`, `metrics`;
//! - the features, each an `impl Store` over those: `source` (what a source
//!   names), `convert` and `unpack` (a disk from a source's bytes), `pull`,
//!   `oci` (cloud images, push), `container` and `builds` (container images
//!   to disks, the build queue), `instance`, `bundle`, `manage` (list,
//!   remove, gc), `names` (tags users give images), `versions` (a newer
//!   version of a file or URL replacing the older), `filter` (which images
//!   a listing shows), `inspect` (everything known of one image), `refresh`
//!   (catalog updates), `accepted` (the gets a daemon answered 202 for,
//!   kept until done so a restart carries them on);
//! - `get`: the front door over the features ([`Store::plan`] decides and
//!   pins what a get will make, for a caller that answers before the work
//!   is done; [`Store::get_planned`] does it).
//!
//! The store never prints and never parses command lines: the CLI does.

mod accepted;
mod builds;
mod bundle;
mod catalog;
mod container;
mod content;
mod convert;
mod error;
mod filter;
mod fsutil;
mod get;
mod growing;
mod inspect;
mod instance;
mod kind;
mod locks;
mod manage;
mod metrics;
mod names;
mod oci;
mod publish;
mod pull;
mod record;
mod refresh;
mod source;
mod store;
mod suggest;
mod unpack;
mod usage;
mod versions;

pub use accepted::Accepted;
pub use builds::{Build, BuildStatus, Manager, ManagerOptions, Totals, build_id};
pub use bundle::ExportedBundle;
pub use catalog::{Arch, Artifact, Catalog, EMBEDDED, Entry, MAX_CATALOG_BYTES, Mirrors};
pub use container::BuildObserver;
pub use error::{Error, Kept, Result};
pub use filter::ImageFilter;
pub use get::{GetOptions, Observer, Plan, Stage};
pub use inspect::{DiskFacts, Inspection, Verifier};
pub use instance::{Instance, InstanceRequest};
pub use kind::ErrorKind;
pub use manage::{GcOptions, GcReport, ImageSummary, ServiceClaim};
pub use metrics::Metrics;
pub use oci::{OciSource, PushOptions};
/// The metrics library whose registry [`Metrics::registry`] gives, at the version the store uses.
pub use prometheus_client;
pub use record::{
    Compression, ContainerInfo, ImageFormat, ImageRecord, InstanceFormat, InstanceRecord, Pulled, RootfsFormat,
    SourceFormat, SourceInfo, Status, Timestamp,
};
pub use refresh::{Change, MAX_UPSTREAM_TEXT, RefreshError, Refreshed};
pub use source::{Location, OciOrigin, OciRef, Resolved, Source, registry_reference};
pub use store::{Store, StoreOptions, default_root};
pub use suggest::Suggestion;
pub use usage::Usage;
pub use vmimg_bundle::bundle::{Error as BundleError, ExportOptions, Limits as BundleLimits};
pub use vmimg_bundle::machine::Machine;
