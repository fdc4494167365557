//! Container root filesystems: OCI image layers applied into a directory,
//! and the disks a micro-VM boots from made of that directory.
//!
//! - [`apply`]: applies layer tars (plain, gzip or zstd) in order, with OCI
//!   whiteouts, hard links, symlinks, device nodes, xattrs, owners and
//!   modes; nothing is ever written outside the root, whatever a layer says;
//! - [`merge`]: the same layers merged in memory and written out as one
//!   tar stream with exact owners and devices, by any user, with no tree
//!   on the host;
//! - [`ext4`]: ext4 disks through e2fsprogs' `mkfs.ext4 -d`, sized from the
//!   tree so they never run out of blocks or inodes, checked with `e2fsck`;
//!   and empty sparse ext4 disks for volumes;
//! - [`erofs`]: compressed read-only erofs disks through erofs-utils;
//! - [`cpio`]: initramfs archives (newc), written natively;
//! - [`depth`]: the one bound on how deep a tree may nest, which every
//!   part above enforces (the tools crash on deeper trees).
//!
//! This crate knows files and processes only: no network, no store.

pub mod apply;
pub mod cpio;
pub mod depth;
pub mod erofs;
pub mod ext4;
pub mod merge;
mod tool;
