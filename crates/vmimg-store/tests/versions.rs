//! Names users give images, and versions of one file or URL: a touched
//! file pulled again replaces its image, `refresh` asks a URL's server with
//! a conditional request, names follow the newest version.

use std::path::{Path, PathBuf};
use vmimg_store::{Error, GcOptions, GetOptions, InstanceFormat, InstanceRequest, Pulled, Store, StoreOptions};
use vmimg_testserver::{TestServer, Versioning};

fn store(root: &Path) -> Store {
    Store::open(StoreOptions { root: Some(root.to_owned()), ..StoreOptions::default() }).unwrap()
}

/// A raw disk of 4 MiB whose second MiB is `pattern`.
fn disk_bytes(pattern: u8) -> Vec<u8> {
    let mut bytes = vec![0; 4 << 20];
    bytes[1 << 20..2 << 20].fill(pattern);
    bytes
}

fn write_disk(dir: &Path, pattern: u8) -> PathBuf {
    let path = dir.join("disk.img");
    std::fs::write(&path, disk_bytes(pattern)).unwrap();
    path
}

async fn get(store: &Store, source: &str, options: &GetOptions) -> Pulled {
    store.get(source, options).await.unwrap()
}

fn keys(store: &Store) -> Vec<String> {
    let mut keys: Vec<String> = store.records().unwrap().into_iter().map(|r| r.name).collect();
    keys.sort();
    keys
}

fn second_mib(pulled: &Pulled) -> u8 {
    let bytes = std::fs::read(&pulled.path).unwrap();
    bytes[1 << 20]
}

#[tokio::test]
async fn names_are_tags_that_commands_take_and_gc_keeps() {
    let (src, root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = store(root.path());
    let file = write_disk(src.path(), 1);
    let named = GetOptions { name: Some("base".into()), ..GetOptions::default() };
    let pulled = get(&store, file.to_str().unwrap(), &named).await;
    assert_eq!(pulled.names, ["base"]);
    assert_eq!(store.find("base").await.unwrap().name, pulled.record.name);
    assert_eq!(store.images().unwrap()[0].names, ["base"]);
    assert!(get(&store, "base", &GetOptions::default()).await.cached, "a name is a source");

    store.tag(&pulled.record.name, "also").await.unwrap();
    assert_eq!(store.names_of(&pulled.record.name).unwrap(), ["also", "base"]);
    let report = store.gc(&GcOptions { keep_under: Some(0), ..GcOptions::default() }).await.unwrap();
    assert!(report.images.is_empty(), "gc never evicts a named image: {report:?}");

    for (name, why) in [("debian-12", "an alias"), (pulled.record.name.as_str(), "a key"), ("../x", "no name")] {
        let refused = store.tag("base", name).await;
        assert!(matches!(refused, Err(Error::Invalid(_) | Error::Exists { .. } | Error::InvalidName { .. })), "{why}");
    }
    assert_eq!(store.untag("also").unwrap(), pulled.record.name);
    assert!(matches!(store.untag("also"), Err(Error::NotFound { .. })));
    store.remove("base", false).await.unwrap();
    assert!(store.names().unwrap().is_empty(), "removing an image removes its names");
    assert!(!root.path().join("names/base").exists());
}

#[tokio::test]
async fn a_touched_file_pulled_again_replaces_its_image_and_takes_its_names() {
    let (src, root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = store(root.path());
    let file = write_disk(src.path(), 1);
    let source = file.to_str().unwrap();
    let first = get(&store, source, &GetOptions { name: Some("dev".into()), ..GetOptions::default() }).await;
    std::thread::sleep(std::time::Duration::from_millis(20));
    write_disk(src.path(), 2);
    assert_eq!(store.find(source).await.unwrap().name, first.record.name, "an edited file still finds its image");
    let second = get(&store, source, &GetOptions::default()).await;
    assert!(!second.cached && second.record.name != first.record.name);
    assert_eq!(second.replaced, std::slice::from_ref(&first.record.name));
    assert_eq!((second_mib(&second), second.names.as_slice()), (2, ["dev".to_owned()].as_slice()));
    assert_eq!(keys(&store), std::slice::from_ref(&second.record.name), "one image per file");
    assert!(get(&store, source, &GetOptions::default()).await.cached);

    // A version a qcow2 instance stands on stays until the instance goes.
    let request = InstanceRequest {
        image: second.record.name.clone(),
        name: Some("vm".into()),
        size: None,
        format: InstanceFormat::Qcow2,
    };
    store.create_instance(&request).await.unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    write_disk(src.path(), 3);
    let third = get(&store, source, &GetOptions::default()).await;
    assert!(third.replaced.is_empty(), "{:?}", third.replaced);
    assert_eq!(keys(&store).len(), 2);
    assert_eq!(store.find("dev").await.unwrap().name, third.record.name, "the name moved to the newest");
}

#[tokio::test]
async fn refresh_asks_the_server_and_pulls_only_a_new_version() {
    let (server, root) = (TestServer::start(), tempfile::tempdir().unwrap());
    let store = store(root.path());
    server.add("/disk.img", disk_bytes(1));
    let url = server.url("/disk.img");
    let plain = GetOptions::default();
    let refresh = GetOptions { refresh: true, ..GetOptions::default() };
    let first = get(&store, &url, &plain).await;
    assert!(
        matches!(&first.record.source, vmimg_store::SourceInfo::Url { validators, .. } if validators.etag.is_some())
    );

    let gets = server.requests("/disk.img");
    assert!(get(&store, &url, &refresh).await.cached, "unchanged upstream: a hit");
    // The server logs a request after answering it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while server.requests("/disk.img") <= gets && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let asked = &server.log().into_iter().filter(|r| r.path == "/disk.img").nth(gets).expect("the conditional request");
    assert_eq!((asked.status, asked.if_none_match.is_some()), (304, true), "{asked:?}");

    server.add("/disk.img", disk_bytes(2));
    assert_eq!(second_mib(&get(&store, &url, &plain).await), 1, "without refresh, the store's version");
    let second = get(&store, &url, &refresh).await;
    assert!(!second.cached && second.record.name.starts_with(&first.record.name));
    assert_eq!((second_mib(&second), second.replaced.as_slice()), (2, [first.record.name.clone()].as_slice()));
    assert_eq!(store.find(&url).await.unwrap().name, second.record.name);
    assert!(get(&store, &url, &plain).await.cached);
    assert!(get(&store, &url, &refresh).await.cached);
    assert_eq!(keys(&store), std::slice::from_ref(&second.record.name));
}

#[tokio::test]
async fn refresh_without_etags_goes_by_last_modified_or_pulls_again() {
    let (server, root) = (TestServer::start(), tempfile::tempdir().unwrap());
    let store = store(root.path());
    let refresh = GetOptions { refresh: true, ..GetOptions::default() };
    let dated = Versioning { etag: false, conditional: false, ..Versioning::default() };
    server.add_with("/dated.img", disk_bytes(1), dated);
    let url = server.url("/dated.img");
    let first = get(&store, &url, &GetOptions::default()).await;
    assert!(get(&store, &url, &refresh).await.cached, "a 200 with the same Last-Modified is no change");
    server.add("/dated.img", disk_bytes(2));
    assert_eq!(second_mib(&get(&store, &url, &refresh).await), 2);

    let bare = Versioning { etag: false, last_modified: false, ..Versioning::default() };
    server.add_with("/bare.img", disk_bytes(3), bare);
    let url = server.url("/bare.img");
    let old = get(&store, &url, &GetOptions::default()).await;
    let new = get(&store, &url, &refresh).await;
    assert!(!new.cached && new.replaced == [old.record.name.clone()], "nothing to ask: pulled again");
    assert!(!keys(&store).contains(&first.record.name));
}
