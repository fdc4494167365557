//! Local OCI layouts and archives: container images written by umoci and
//! skopeo (from a real registry), cloud images written here with a qcow2
//! disk from qemu-img, read in directories and in archives made by skopeo,
//! GNU tar and vmimg-tar; and the layouts and archives a hostile host could
//! leave, each refused with an error that says what is wrong.

use serde_json::{Value, json};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use vmimg_fetch::{Algorithm, Digest, Hasher, Progress};
use vmimg_oci::artifact::{self, DiskFormat};
use vmimg_oci::layout::REF_NAME;
use vmimg_oci::{Error, Layout, LayoutError, LayoutRef, OciImage};
use vmimg_testserver::RegistryServer;
use vmimg_testserver::mounts::skip_missing;
use vmimg_testserver::oci_image::ImageSpec;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn sha256(bytes: &[u8]) -> Digest {
    let mut hasher = Hasher::new(Algorithm::Sha256);
    hasher.update(bytes);
    hasher.finish()
}

/// Whether every tool runs; if not, the test is skipped (failed under CI).
fn have(tools: &[(&str, &str)]) -> bool {
    for (tool, package) in tools {
        if Command::new(tool).arg("--version").output().is_err() {
            skip_missing(format!("{tool} (package {package})"));
            return false;
        }
    }
    true
}

fn run(command: &mut Command) {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn open(reference: &str) -> Result<Layout, Error> {
    let reference: LayoutRef = reference.parse()?;
    runtime().block_on(Layout::open(&reference))
}

fn image(layout: &Layout, tag: Option<&str>, architecture: &str) -> Result<(Digest, OciImage), Error> {
    runtime().block_on(layout.image(tag, architecture))
}

/// Records what a copy reports.
#[derive(Default)]
struct Seen {
    started: AtomicU64,
    advanced: AtomicU64,
}

impl Progress for Seen {
    fn started(&self, offset: u64, total: Option<u64>) {
        assert_eq!(offset, 0);
        self.started.store(total.unwrap(), Ordering::Relaxed);
    }
    fn advanced(&self, written: u64) {
        assert!(written >= self.advanced.swap(written, Ordering::Relaxed), "progress goes forward");
    }
}

/// Copies blob `digest` of `size` bytes out of `layout` and returns its bytes.
fn fetch(layout: &Layout, digest: &Digest, size: u64) -> Result<Vec<u8>, Error> {
    let dir = tempfile::tempdir().unwrap();
    let partial = dir.path().join("blob.part");
    let seen = Seen::default();
    let fetched = runtime().block_on(layout.fetch_blob(digest, size, &partial, &seen));
    if fetched.is_err() {
        assert!(!partial.exists(), "a failed copy leaves no partial");
    }
    let fetched = fetched?;
    assert_eq!((&fetched.digest, fetched.size), (digest, size));
    assert_eq!(seen.started.load(Ordering::Relaxed), size);
    assert_eq!(seen.advanced.load(Ordering::Relaxed), size);
    Ok(std::fs::read(&partial).unwrap())
}

// ---------------------------------------------------------------------------
// Layouts the test writes by hand.

/// A layout directory being written: blobs, then `index.json`.
struct Hand {
    dir: PathBuf,
}

impl Hand {
    fn new(dir: &Path) -> Hand {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Hand { dir: dir.to_owned() }
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs").join(digest.algorithm().name()).join(digest.hex())
    }

    /// Stores `bytes`; returns a descriptor of `media_type` for them.
    fn blob(&self, media_type: &str, bytes: &[u8]) -> Value {
        let digest = sha256(bytes);
        std::fs::write(self.blob_path(&digest), bytes).unwrap();
        json!({ "mediaType": media_type, "digest": digest, "size": bytes.len() })
    }

    fn json(&self, media_type: &str, value: &Value) -> Value {
        self.blob(media_type, &serde_json::to_vec(value).unwrap())
    }

    fn index(&self, manifests: Vec<Value>) {
        let index = json!({ "schemaVersion": 2, "mediaType": artifact::OCI_INDEX, "manifests": manifests });
        std::fs::write(self.dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    }
}

fn named(mut descriptor: Value, tag: &str) -> Value {
    descriptor["annotations"] = json!({ REF_NAME: tag });
    descriptor
}

fn for_platform(mut descriptor: Value, architecture: &str) -> Value {
    descriptor["platform"] = json!({ "os": "linux", "architecture": architecture });
    descriptor
}

fn digest_of(descriptor: &Value) -> Digest {
    descriptor["digest"].as_str().unwrap().parse().unwrap()
}

/// What [`cloud_layout`] wrote.
struct Cloud {
    hand: Hand,
    /// The amd64 manifest (through the index tagged `cloud`, and tagged `flat`).
    manifest: Digest,
    /// The arm64 manifest.
    arm: Digest,
    /// The parts, in order.
    parts: Vec<(Digest, u64)>,
}

/// A cloud image of `disk` in `parts` qcow2 parts: tagged `cloud`, an image
/// index whose linux/amd64 entry is the image (and linux/arm64 another);
/// tagged `flat`, the amd64 manifest itself.
fn cloud_layout(dir: &Path, disk: &[u8], parts: usize) -> Cloud {
    let hand = Hand::new(dir);
    hand.blob(artifact::EMPTY_CONFIG, b"{}");
    let pieces: Vec<(Digest, u64)> = disk
        .chunks(disk.len().div_ceil(parts))
        .map(|piece| (digest_of(&hand.blob(DiskFormat::Qcow2.media_type(parts), piece)), piece.len() as u64))
        .collect();
    // Stored in reverse title order: the titles say the order.
    let mut manifest =
        serde_json::to_value(artifact::manifest(DiskFormat::Qcow2, &pieces, "disk", Default::default())).unwrap();
    manifest["layers"].as_array_mut().unwrap().reverse();
    let amd = hand.json(artifact::OCI_MANIFEST, &manifest);
    let arm_part = hand.blob(DiskFormat::Raw.media_type(1), b"an arm disk");
    let arm_manifest = artifact::manifest(DiskFormat::Raw, &[(digest_of(&arm_part), 11)], "arm", Default::default());
    let arm = hand.json(artifact::OCI_MANIFEST, &serde_json::to_value(arm_manifest).unwrap());
    let index = json!({
        "schemaVersion": 2, "mediaType": artifact::OCI_INDEX,
        "manifests": [for_platform(arm.clone(), "arm64"), for_platform(amd.clone(), "amd64")]
    });
    let nested = hand.json(artifact::OCI_INDEX, &index);
    hand.index(vec![named(nested, "cloud"), named(amd.clone(), "flat")]);
    Cloud { hand, manifest: digest_of(&amd), arm: digest_of(&arm), parts: pieces }
}

/// `dir`'s content as a tar at `out`, by GNU tar with `args`.
fn gnu_tar(dir: &Path, out: &Path, args: &[&str]) {
    run(Command::new("tar").args(args).arg("-cf").arg(out).arg("-C").arg(dir).arg("."));
}

/// An archive of exactly these members, by vmimg-tar's writer.
fn archive(out: &Path, members: &[(&str, &[u8])]) {
    let mut writer = vmimg_tar::Writer::new(std::fs::File::create(out).unwrap());
    for (name, bytes) in members {
        writer.append_bytes(name, 0o644, 0, bytes).unwrap();
    }
    writer.finish().unwrap();
}

// ---------------------------------------------------------------------------
// Container images from umoci and skopeo.

/// Checks the container image `reference` names: its run config, and every
/// layer copied out and streamed, verified; returns its manifest digest.
fn check_container(reference: &str, tag: Option<&str>) -> Digest {
    let layout = open(reference).unwrap_or_else(|e| panic!("{reference}: {e}"));
    let (digest, found) = image(&layout, tag, "amd64").unwrap();
    let OciImage::Container(container) = found else { panic!("{reference}: not a container image") };
    let run = runtime().block_on(layout.run_config(&container)).unwrap();
    assert_eq!(run.command(), ["/bin/sh", "-c", "echo hi"], "{reference}");
    assert_eq!(run.env.iter().filter(|e| *e == "GREETING=hello").count(), 1, "{reference}: {:?}", run.env);
    assert!(!container.layers.is_empty());
    for layer in &container.layers {
        let (digest, size) = (&layer.descriptor.digest, layer.descriptor.size);
        let copied = fetch(&layout, digest, size).unwrap();
        let mut streamed = Vec::new();
        layout.open_blob(digest, size).unwrap().read_to_end(&mut streamed).unwrap();
        assert!(copied == streamed && sha256(&copied) == *digest, "{reference}: layer {digest}");
    }
    digest
}

#[test]
fn container_images_from_umoci_and_skopeo_in_layouts_and_archives() {
    let tools = [("umoci", "umoci"), ("skopeo", "skopeo"), ("docker-registry", "docker-registry"), ("tar", "tar")];
    if !have(&tools) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/hello"), "hello from the layout\n").unwrap();
    let spec = ImageSpec::new().dir_layer(&root).entrypoint(&["/bin/sh", "-c"]).cmd(&["echo hi"]).env("GREETING=hello");

    // umoci writes a layout; GNU tar (POSIX format: PAX headers everywhere) archives it.
    let umoci = dir.path().join("umoci");
    spec.build_layout(&umoci, "v1").unwrap();
    let from_umoci = check_container(&format!("oci:{}:v1", umoci.display()), Some("v1"));
    assert_eq!(check_container(&format!("oci:{}", umoci.display()), None), from_umoci, "one image, no name needed");
    let tarred = dir.path().join("umoci.tar");
    gnu_tar(&umoci, &tarred, &["--format=posix"]);
    assert_eq!(check_container(&format!("oci-archive:{}:v1", tarred.display()), Some("v1")), from_umoci);

    // skopeo copies a pushed image out of a registry into a layout, then into an archive.
    let registry = RegistryServer::start();
    let pushed = spec.push(&registry.host(), "test/app", "v1").unwrap();
    let copied = dir.path().join("copied");
    let skopeo = || {
        let mut command = Command::new("skopeo");
        command.args(["--insecure-policy", "copy", "--quiet", "--src-tls-verify=false"]);
        command
    };
    run(skopeo().arg(format!("docker://{}", pushed.reference)).arg(format!("oci:{}:local/app:v2", copied.display())));
    let from_registry = check_container(&format!("oci:{}:local/app:v2", copied.display()), Some("local/app:v2"));
    assert_eq!(from_registry.to_string(), pushed.digest, "the registry's manifest, byte for byte");
    let packed = dir.path().join("app.tar");
    run(skopeo()
        .arg(format!("oci:{}:local/app:v2", copied.display()))
        .arg(format!("oci-archive:{}:v3", packed.display())));
    assert_eq!(check_container(&format!("oci-archive:{}:v3", packed.display()), Some("v3")), from_registry);
}

// ---------------------------------------------------------------------------
// Cloud images written here.

/// A qcow2 disk by qemu-img, from a raw disk with data in a few places.
fn qcow2_disk(dir: &Path) -> Vec<u8> {
    let raw = dir.join("disk.raw");
    let mut bytes = vec![0u8; 8 << 20];
    for (i, at) in [0usize, 3 << 20, (8 << 20) - 4096].into_iter().enumerate() {
        bytes[at..at + 4096].fill(b'a' + i as u8);
    }
    std::fs::write(&raw, &bytes).unwrap();
    let qcow2 = dir.join("disk.qcow2");
    run(Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&qcow2));
    std::fs::read(&qcow2).unwrap()
}

#[test]
fn a_cloud_image_through_a_nested_index_in_a_directory_and_in_archives() {
    if !have(&[("qemu-img", "qemu-utils"), ("tar", "tar")]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = qcow2_disk(dir.path());
    let layout_dir = dir.path().join("layout");
    let cloud = cloud_layout(&layout_dir, &disk, 3);
    let gnu = dir.path().join("gnu.tar");
    gnu_tar(&layout_dir, &gnu, &[]);
    let posix = dir.path().join("posix.tar");
    gnu_tar(&layout_dir, &posix, &["--format=posix"]);
    let sources = [
        format!("oci:{}", layout_dir.display()),
        format!("oci-archive:{}", gnu.display()),
        format!("oci-archive:{}", posix.display()),
    ];
    for source in &sources {
        let layout = open(source).unwrap();
        assert_eq!(layout.tags(), ["cloud", "flat"]);
        for tag in ["cloud", "flat"] {
            let (digest, found) = image(&layout, Some(tag), "amd64").unwrap();
            assert_eq!(digest, cloud.manifest, "{source}:{tag}");
            let OciImage::Cloud(found) = found else { panic!("{source}:{tag}: not a cloud image") };
            assert_eq!(found.format, DiskFormat::Qcow2);
            let parts: Vec<_> = found.parts.iter().map(|p| (p.digest.clone(), p.size)).collect();
            assert_eq!(parts, cloud.parts, "{source}:{tag}: the parts in title order");
            let joined: Vec<u8> = found.parts.iter().flat_map(|p| fetch(&layout, &p.digest, p.size).unwrap()).collect();
            assert!(joined == disk, "{source}:{tag}: the parts make the disk");
        }
        let joined = dir.path().join("joined.qcow2");
        std::fs::write(&joined, &disk).unwrap();
        run(Command::new("qemu-img").args(["check", "-f", "qcow2"]).arg(&joined));
        let (arm, _) = image(&layout, Some("cloud"), "arm64").unwrap();
        assert_eq!(arm, cloud.arm, "{source}: the index's arm64 entry");
        let error = image(&layout, Some("cloud"), "s390x").unwrap_err().to_string();
        assert!(error.contains("no manifest for linux/s390x"), "{source}: {error}");
        let error = image(&layout, None, "amd64").unwrap_err().to_string();
        assert!(error.contains("holds 2 images") && error.contains("cloud, flat"), "{source}: {error}");
        let error = image(&layout, Some("nope"), "amd64").unwrap_err().to_string();
        assert!(error.contains("no image named \"nope\"") && error.contains("cloud, flat"), "{source}: {error}");
    }
}

// ---------------------------------------------------------------------------
// Hostile layout directories.

/// A small cloud layout to break: parts of plain bytes.
fn small_cloud(dir: &Path) -> Cloud {
    cloud_layout(dir, &(0..100_000u32).map(|i| (i % 253) as u8).collect::<Vec<_>>(), 2)
}

/// A small cloud layout in a directory of its own, open, and its part `i`.
fn open_small_cloud(i: usize) -> (tempfile::TempDir, Cloud, Layout, Digest, u64) {
    let dir = tempfile::tempdir().unwrap();
    let cloud = small_cloud(dir.path());
    let layout = open(&format!("oci:{}", dir.path().display())).unwrap();
    let (part, size) = cloud.parts[i].clone();
    (dir, cloud, layout, part, size)
}

fn assert_layout_error(
    outcome: Result<impl std::fmt::Debug, Error>,
    matches: impl Fn(&LayoutError) -> bool,
    what: &str,
) {
    match outcome {
        Err(Error::Layout(error)) if matches(&error) => {}
        other => panic!("{what}: {other:?}"),
    }
}

#[test]
fn a_blob_other_than_its_digest_says_is_refused() {
    let (_dir, cloud, layout, part, size) = open_small_cloud(1);
    let mut bytes = std::fs::read(cloud.hand.blob_path(&part)).unwrap();
    bytes[100] ^= 1;
    std::fs::write(cloud.hand.blob_path(&part), &bytes).unwrap();
    match fetch(&layout, &part, size) {
        Err(Error::BlobDigest { expected, actual }) => assert!(expected == part && actual == sha256(&bytes)),
        other => panic!("{other:?}"),
    }
    let error = layout.open_blob(&part, size).unwrap().read_to_end(&mut Vec::new()).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidData, "a stream fails rather than end: {error}");
    assert!(error.to_string().contains("digest mismatch"), "{error}");
    // Shorter than its descriptor.
    std::fs::write(cloud.hand.blob_path(&part), &bytes[..10]).unwrap();
    let error = fetch(&layout, &part, size).unwrap_err().to_string();
    assert!(error.contains(&format!("10 bytes where its descriptor says {size}")), "{error}");
}

#[test]
fn missing_blobs_unknown_names_and_ambiguity_are_refused() {
    let (dir, cloud, layout, part, size) = open_small_cloud(0);
    std::fs::remove_file(cloud.hand.blob_path(&part)).unwrap();
    assert_layout_error(
        fetch(&layout, &part, size),
        |e| matches!(e, LayoutError::MissingBlob { .. }),
        "a missing part",
    );
    std::fs::remove_file(cloud.hand.blob_path(&cloud.manifest)).unwrap();
    let missing = image(&layout, Some("flat"), "amd64");
    assert_layout_error(missing, |e| matches!(e, LayoutError::MissingBlob { .. }), "a missing manifest");
    let unknown = image(&layout, Some("v9"), "amd64");
    assert_layout_error(
        unknown,
        |e| matches!(e, LayoutError::UnknownTag { tags, .. } if tags == &["cloud", "flat"]),
        "v9",
    );
    let no_tag = image(&layout, None, "amd64");
    assert_layout_error(no_tag, |e| matches!(e, LayoutError::NoTag { count: 2, .. }), "two images, no name");
    // Two entries under one name.
    let flat = json!({ "mediaType": artifact::OCI_MANIFEST, "digest": cloud.manifest, "size": 1 });
    cloud.hand.index(vec![named(flat.clone(), "twice"), named(flat, "twice")]);
    let layout = open(&format!("oci:{}", dir.path().display())).unwrap();
    let twice = image(&layout, Some("twice"), "amd64");
    assert_layout_error(twice, |e| matches!(e, LayoutError::DuplicateTag { count: 2, .. }), "one name twice");
}

#[test]
fn oversized_index_manifest_and_config_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hand = Hand::new(dir.path());
    let too_big = vec![b' '; vmimg_oci::MAX_MANIFEST_BYTES + 1];
    std::fs::write(dir.path().join("index.json"), &too_big).unwrap();
    let error = open(&format!("oci:{}", dir.path().display())).unwrap_err();
    assert!(matches!(&error, Error::TooLarge { what: "index.json", .. }), "{error}");

    let manifest = hand.blob(artifact::OCI_MANIFEST, &too_big);
    hand.index(vec![manifest]);
    let layout = open(&format!("oci:{}", dir.path().display())).unwrap();
    let error = image(&layout, None, "amd64").unwrap_err();
    assert!(matches!(&error, Error::TooLarge { what: "manifest", .. }), "{error}");

    let config = hand.blob("application/vnd.oci.image.config.v1+json", &vec![b' '; 4 << 20 | 1]);
    let manifest = json!({ "schemaVersion": 2, "mediaType": artifact::OCI_MANIFEST, "config": config, "layers": [] });
    hand.index(vec![hand.json(artifact::OCI_MANIFEST, &manifest)]);
    let layout = open(&format!("oci:{}", dir.path().display())).unwrap();
    let (_, found) = image(&layout, None, "amd64").unwrap();
    let OciImage::Container(container) = found else { panic!("not a container image") };
    let error = runtime().block_on(layout.run_config(&container)).unwrap_err();
    assert!(matches!(&error, Error::TooLarge { what: "config blob", .. }), "{error}");
}

#[test]
fn symbolic_links_in_a_layout_directory_are_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let layout_dir = dir.path().join("layout");
    let cloud = small_cloud(&layout_dir);
    let reference = format!("oci:{}", layout_dir.display());

    // A blob that is a link to a file outside, with the right bytes.
    let (part, size) = cloud.parts[0].clone();
    let blob = cloud.hand.blob_path(&part);
    let copy = outside.path().join("part");
    std::fs::rename(&blob, &copy).unwrap();
    std::os::unix::fs::symlink(&copy, &blob).unwrap();
    let layout = open(&reference).unwrap();
    assert_layout_error(fetch(&layout, &part, size), |e| matches!(e, LayoutError::NotAFile { .. }), "a linked blob");
    std::fs::remove_file(&blob).unwrap();
    std::fs::rename(&copy, &blob).unwrap();
    assert!(fetch(&layout, &part, size).is_ok(), "the blob itself is read");

    // The blobs directory a link to a copy outside.
    let blobs = layout_dir.join("blobs");
    run(Command::new("cp").arg("-a").arg(&blobs).arg(outside.path().join("blobs")));
    std::fs::remove_dir_all(&blobs).unwrap();
    std::os::unix::fs::symlink(outside.path().join("blobs"), &blobs).unwrap();
    assert_layout_error(fetch(&layout, &part, size), |e| matches!(e, LayoutError::NotAFile { .. }), "linked blobs/");
    let linked = image(&layout, Some("flat"), "amd64");
    assert_layout_error(linked, |e| matches!(e, LayoutError::NotAFile { .. }), "a manifest behind a link");

    // index.json a link, and a FIFO where a blob should be.
    std::fs::remove_file(&blobs).unwrap();
    std::fs::create_dir_all(blobs.join("sha256")).unwrap();
    run(Command::new("mkfifo").arg(cloud.hand.blob_path(&part)));
    assert_layout_error(fetch(&layout, &part, size), |e| matches!(e, LayoutError::NotAFile { .. }), "a FIFO");
    let index = layout_dir.join("index.json");
    std::fs::rename(&index, outside.path().join("index.json")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("index.json"), &index).unwrap();
    assert_layout_error(open(&reference), |e| matches!(e, LayoutError::NotAFile { .. }), "a linked index.json");
}

#[test]
fn what_is_not_a_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let not = |reference: String, why: &str| {
        let error = open(&reference).unwrap_err();
        assert!(
            matches!(error, Error::Layout(LayoutError::NotLayout { .. })) && error.to_string().contains(why),
            "{error}"
        );
    };
    not(format!("oci:{}", dir.path().join("missing").display()), "No such file");
    not(format!("oci:{}", dir.path().display()), "no oci-layout");
    std::fs::write(dir.path().join("oci-layout"), r#"{"imageLayoutVersion":"2.0.0"}"#).unwrap();
    not(format!("oci:{}", dir.path().display()), "version \"2.0.0\"");
    std::fs::write(dir.path().join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    not(format!("oci:{}", dir.path().display()), "no index.json");
    std::fs::write(dir.path().join("index.json"), b"[]").unwrap();
    not(format!("oci:{}", dir.path().display()), "index.json");
    not(format!("oci:{}", dir.path().join("oci-layout").display()), "oci-archive:");
}

// ---------------------------------------------------------------------------
// Hostile archives.

/// The members of a valid archive of `cloud`'s layout, by name.
fn members(cloud: &Cloud) -> Vec<(String, Vec<u8>)> {
    let mut found = Vec::new();
    for name in ["oci-layout", "index.json"] {
        found.push((name.to_owned(), std::fs::read(cloud.hand.dir.join(name)).unwrap()));
    }
    for entry in std::fs::read_dir(cloud.hand.dir.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let name = format!("blobs/sha256/{}", entry.file_name().to_str().unwrap());
        found.push((name, std::fs::read(entry.path()).unwrap()));
    }
    found
}

fn write_members(out: &Path, members: &[(String, Vec<u8>)]) {
    let borrowed: Vec<(&str, &[u8])> = members.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    archive(out, &borrowed);
}

fn archive_refusal(out: &Path, why: &str) {
    let error = open(&format!("oci-archive:{}", out.display())).unwrap_err();
    let refused = matches!(&error, Error::Layout(LayoutError::Archive { .. }));
    assert!(refused && error.to_string().contains(why), "{why}: {error}");
}

#[test]
fn hostile_archives_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = small_cloud(&dir.path().join("layout"));
    let good = members(&cloud);
    let out = dir.path().join("archive.tar");

    // The members as they are, with a long (PAX) name beside them: read in place.
    let mut long = good.clone();
    long.push((format!("extra/{}", "x".repeat(150)), b"ignored".to_vec()));
    write_members(&out, &long);
    let layout = open(&format!("oci-archive:{}", out.display())).unwrap();
    let (digest, _) = image(&layout, Some("cloud"), "amd64").unwrap();
    assert_eq!(digest, cloud.manifest);
    let (part, size) = &cloud.parts[1];
    assert!(fetch(&layout, part, *size).unwrap() == std::fs::read(cloud.hand.blob_path(part)).unwrap());

    let with = |extra: (&str, &[u8])| {
        let mut members = good.clone();
        members.insert(1, (extra.0.to_owned(), extra.1.to_vec()));
        members
    };
    write_members(&out, &with(("blobs/sha256/../../../etc/passwd", b"x")));
    archive_refusal(&out, "a name with '..'");
    write_members(&out, &with(("/etc/passwd", b"x")));
    archive_refusal(&out, "an absolute name");
    write_members(&out, &with(("./index.json", b"{}")));
    archive_refusal(&out, "\"index.json\" appears twice");

    // Cut inside the last blob (a part): its size runs past the end of the file.
    let mut cut = good.clone();
    let at = cut.iter().position(|(name, _)| name.ends_with(part.hex())).unwrap();
    let last = cut.remove(at);
    cut.push(last);
    write_members(&out, &cut);
    let len = std::fs::metadata(&out).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&out).unwrap().set_len(len - 1024 - 4096).unwrap();
    archive_refusal(&out, "runs past the end of the archive");

    // A header that does not check.
    write_members(&out, &good);
    let mut bytes = std::fs::read(&out).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&out, &bytes).unwrap();
    archive_refusal(&out, "wrong checksum");

    // Too many headers.
    let many: Vec<(String, Vec<u8>)> =
        (0..=vmimg_oci::layout::MAX_ARCHIVE_HEADERS).map(|i| (format!("f{i}"), Vec::new())).collect();
    write_members(&out, &many);
    archive_refusal(&out, "more than 65536 tar headers");

    // A blob with the wrong bytes is read in place and refused by its digest.
    let mut wrong = good.clone();
    let at = wrong.iter().position(|(name, _)| name.ends_with(part.hex())).unwrap();
    wrong[at].1[7] ^= 1;
    write_members(&out, &wrong);
    let layout = open(&format!("oci-archive:{}", out.display())).unwrap();
    assert!(matches!(fetch(&layout, part, *size), Err(Error::BlobDigest { .. })));
}

#[test]
fn links_in_an_archive_are_refused() {
    if !have(&[("tar", "tar")]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let layout_dir = dir.path().join("layout");
    let cloud = small_cloud(&layout_dir);
    let out = dir.path().join("archive.tar");
    let (part, _) = &cloud.parts[0];
    let blob = cloud.hand.blob_path(part);

    // A blob stored as a hard link to another member.
    std::fs::hard_link(&blob, layout_dir.join("copy-of-part")).unwrap();
    gnu_tar(&layout_dir, &out, &[]);
    archive_refusal(&out, "is a link");
    std::fs::remove_file(layout_dir.join("copy-of-part")).unwrap();

    // A blob stored as a symbolic link.
    std::fs::remove_file(&blob).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &blob).unwrap();
    gnu_tar(&layout_dir, &out, &[]);
    archive_refusal(&out, "is a link");
}
