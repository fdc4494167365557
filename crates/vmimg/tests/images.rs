//! The store's images as a user looks at them: `inspect` (a verified pull,
//! an unverified one, names, instances, misses and ambiguous prefixes), and
//! `images --format` and `--filter`, refusals included.

mod common;

use common::{fails_in_one_line, ok};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

/// A raw disk of 1 MiB filled with `byte`, written into `dir`.
fn disk(dir: &Path, name: &str, byte: u8) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, vec![byte; 1 << 20]).unwrap();
    path
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    format!("sha256:{}", String::from_utf8(out.stdout).unwrap().split(' ').next().unwrap())
}

/// Pulls `args` into `store`; returns the image's key (its directory's name).
fn pull(store: &Path, args: &[&str]) -> String {
    let path = ok(store, &[&["-q", "pull"], args].concat());
    Path::new(&path).parent().unwrap().file_name().unwrap().to_str().unwrap().to_owned()
}

/// Pulls a new 1 MiB disk filled with `byte`, unverified; returns its key.
fn pull_disk(dir: &Path, store: &Path, name: &str, byte: u8) -> String {
    pull(store, &[disk(dir, name, byte).to_str().unwrap()])
}

fn json(store: &Path, args: &[&str]) -> Value {
    serde_json::from_str(&ok(store, args)).unwrap()
}

/// A directory for a test's files, and a store inside it (made by its first pull).
fn new_store() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    (dir, store)
}

fn assert_contains(text: &str, pieces: &[&str]) {
    for piece in pieces {
        assert!(text.contains(piece), "{piece:?} in:\n{text}");
    }
}

#[test]
fn inspect_tells_what_verified_a_pull_with_a_digest() {
    let (dir, store) = new_store();
    let file = disk(dir.path(), "a.raw", 7);
    let digest = sha256(&file);
    let key = pull(&store, &[file.to_str().unwrap(), "--digest", &digest]);

    let inspected = json(&store, &["inspect", &key, "--json"]);
    assert_eq!(inspected["verified"], true);
    assert_eq!(inspected["verified_against"], "digest");
    assert_eq!(inspected["digest"], digest.as_str());
    assert_eq!(inspected["source_name"], file.to_str().unwrap());
    assert_eq!(inspected["origin"], file.to_str().unwrap());
    assert_eq!(inspected["disk"]["format"], "raw");
    assert_eq!(inspected["disk"]["virtual_size"], 1 << 20);
    assert!(inspected["disk"]["allocated_size"].is_u64(), "{inspected}");
    assert_eq!(inspected["instance_list"], Value::Array(Vec::new()));
    // Every key of `images --json` is there, meaning the same.
    let listed = json(&store, &["images", "--json"]);
    for (field, value) in listed[0].as_object().unwrap() {
        assert_eq!(&inspected[field], value, "{field}");
    }

    let text = ok(&store, &["inspect", &key[..10]]);
    assert_contains(
        &text,
        &[
            &format!("name:          {key}"),
            "verified:      yes, against the digest given (--digest)",
            &format!("digest:        {digest}"),
            "virtual size:  1 MiB (1048576 bytes)",
            "names:         none",
            "instances: none",
        ],
    );
    for group in ["image", "source", "disk"] {
        assert!(text.lines().any(|l| l == group), "{group} in:\n{text}");
    }
}

#[test]
fn inspect_says_an_unverified_pull_is_unverified() {
    let (dir, store) = new_store();
    let file = dir.path().join("a.qcow2");
    let out = Command::new("qemu-img").args(["create", "-f", "qcow2", file.to_str().unwrap(), "2M"]).output().unwrap();
    assert!(out.status.success());
    let key = pull(&store, &[file.to_str().unwrap()]);

    let inspected = json(&store, &["inspect", file.to_str().unwrap(), "--json"]);
    assert_eq!(inspected["name"], key.as_str(), "found by the source it was pulled from");
    assert_eq!(inspected["verified"], false);
    assert_eq!(inspected["verified_against"], Value::Null);
    assert_eq!(inspected["source_format"], "qcow2");
    assert_eq!(inspected["disk"]["virtual_size"], 2 << 20);
    let text = ok(&store, &["inspect", &key]);
    assert_contains(&text, &["verified:      no: the digest was computed", "format:        qcow2"]);
}

#[test]
fn inspect_is_found_by_a_name_and_shows_the_names() {
    let (dir, store) = new_store();
    let key = pull_disk(dir.path(), &store, "a.raw", 7);
    ok(&store, &["tag", &key, "web"]);
    ok(&store, &["tag", &key, "db"]);
    let inspected = json(&store, &["inspect", "web", "--json"]);
    assert_eq!(inspected["name"], key.as_str());
    assert_eq!(inspected["names"], serde_json::json!(["db", "web"]));
    assert_contains(&ok(&store, &["inspect", "db"]), &["names:         db, web"]);
}

#[test]
fn inspect_lists_the_instances_made_from_an_image() {
    let (dir, store) = new_store();
    let key = pull_disk(dir.path(), &store, "a.raw", 7);
    ok(&store, &["-q", "instance", "create", &key, "--name", "vm1"]);
    ok(&store, &["-q", "instance", "create", &key, "--name", "vm2", "--format", "raw", "--size", "2M"]);

    let inspected = json(&store, &["inspect", &key, "--json"]);
    assert_eq!(inspected["instances"], 2);
    let instances = inspected["instance_list"].as_array().unwrap();
    let names: Vec<&str> = instances.iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["vm1", "vm2"]);
    assert_eq!(instances[0]["format"], "qcow2");
    assert_eq!(instances[1]["virtual_size"], 2 << 20);
    assert!(Path::new(instances[1]["path"].as_str().unwrap()).is_file(), "{inspected}");
    let text = ok(&store, &["inspect", &key]);
    let instances =
        ["instances (2)", "instance:      vm1 (qcow2, 1 MiB, created ", "instance:      vm2 (raw, 2 MiB, created "];
    assert_contains(&text, &instances);
}

#[test]
fn inspect_refuses_a_miss_with_the_closest_name_and_an_ambiguous_prefix_with_both() {
    let (dir, store) = new_store();
    let keys: Vec<String> = [1, 2].map(|byte| pull_disk(dir.path(), &store, &format!("{byte}.raw"), byte)).into();

    let mut typo = keys[0].clone();
    typo.replace_range(6..7, if &keys[0][6..7] == "0" { "1" } else { "0" });
    let (code, line) = fails_in_one_line(&store, &["inspect", &typo]);
    assert_eq!(code, 3, "{line}");
    assert!(line.contains(&format!("did you mean {}?", keys[0])), "{line}");

    let (code, line) = fails_in_one_line(&store, &["inspect", "file-", "--json"]);
    assert_eq!(code, 2, "{line}");
    assert!(line.contains("starts several images") && line.contains(&keys[0]) && line.contains(&keys[1]), "{line}");
}

#[test]
fn images_format_prints_fields_through_a_template() {
    let (dir, store) = new_store();
    let file = disk(dir.path(), "a.raw", 7);
    let key = pull(&store, &[file.to_str().unwrap(), "--digest", &sha256(&file)]);

    let line = ok(&store, &["images", "--format", "{{.name}} {{.source.kind}}\\t{{.virtual_size}} {{.verified}}"]);
    assert_eq!(line, format!("{key} file\t1048576 true"));
    // A declared field no listed image has prints as nothing.
    assert_eq!(ok(&store, &["images", "--format", "[{{.container}}]"]), "[]");
    let table = ok(&store, &["images", "--format", "table {{.name}}\\t{{.bytes_on_disk}}\\t{{.format}}"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(
        lines[0].starts_with("NAME ") && lines[0].contains("BYTES ON DISK") && lines[0].ends_with("FORMAT"),
        "{table}"
    );
    // Columns as wide as their widest cell, three spaces apart.
    let column = key.len() + 3;
    assert_eq!(lines[0].find("BYTES ON DISK"), Some(column), "{table}");
    assert!(lines[1].starts_with(&format!("{key}   ")) && lines[1][column..].starts_with(char::is_numeric), "{table}");
    assert_eq!(lines[0].find("FORMAT"), lines[1].find("raw"), "{table}");
    assert_eq!(ok(&store, &["images", "--format", "json"]), ok(&store, &["images", "--json"]));
    assert_eq!(ok(&store, &["images", "--format", "table"]), ok(&store, &["images"]));
}

#[test]
fn images_format_refuses_unknown_fields_and_what_is_not_a_field() {
    let (dir, store) = new_store();
    pull_disk(dir.path(), &store, "a.raw", 7);
    let (code, line) = fails_in_one_line(&store, &["images", "--format", "{{.nmae}}"]);
    assert_eq!(code, 2, "{line}");
    assert!(line.contains("unknown field \"nmae\" (did you mean name?): the fields are "), "{line}");
    assert!(line.contains("bytes_on_disk") && line.contains("last_used_at"), "{line}");
    for (template, says) in [("{{json .}}", "is not a field"), ("{{.name", "without its }}")] {
        let (code, line) = fails_in_one_line(&store, &["images", "--format", template]);
        assert_eq!(code, 2, "{line}");
        assert!(line.contains(says), "{template}: {line}");
    }
    let (code, line) = fails_in_one_line(&store, &["images", "--format", "json", "--json"]);
    assert_eq!(code, 2, "{line}");
}

#[test]
fn images_filter_keeps_what_meets_every_condition() {
    let (dir, store) = new_store();
    let verified_file = disk(dir.path(), "verified.raw", 1);
    let first = pull(&store, &[verified_file.to_str().unwrap(), "--digest", &sha256(&verified_file)]);
    std::thread::sleep(Duration::from_millis(1100)); // creation times are to the second
    let second = pull_disk(dir.path(), &store, "plain.raw", 2);
    std::thread::sleep(Duration::from_millis(1100));
    let third = pull_disk(dir.path(), &store, "other.raw", 3);
    ok(&store, &["-q", "instance", "create", &third, "--name", "vm"]);
    let old = SystemTime::now() - Duration::from_secs(3 * 86400);
    let record = std::fs::File::options().append(true).open(store.join("images").join(&second).join("image.json"));
    record.unwrap().set_modified(old).unwrap();

    let names = |filters: &[&str]| {
        let args: Vec<&str> = filters.iter().flat_map(|f| ["--filter", f]).collect();
        let listed = ok(&store, &[&["images", "--format", "{{.name}}"], &args[..]].concat());
        let mut names: Vec<String> = listed.lines().map(str::to_owned).collect();
        names.sort();
        names
    };
    let sorted = |keys: &[&String]| {
        let mut keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        keys.sort();
        keys
    };
    assert_eq!(names(&["kind=file"]), sorted(&[&first, &second, &third]));
    assert_eq!(names(&["kind=url"]), sorted(&[]));
    assert_eq!(names(&["verified=true"]), sorted(&[&first]));
    assert_eq!(names(&["source=plain"]), sorted(&[&second]));
    assert_eq!(names(&["in-use=true"]), sorted(&[&third]));
    assert_eq!(names(&["in-use=false", "verified=false"]), sorted(&[&second]));
    assert_eq!(names(&[&format!("before={second}")]), sorted(&[&first]));
    assert_eq!(names(&[&format!("since={}", &second[..8])]), sorted(&[&third]));
    assert_eq!(names(&["unused-for=2d"]), sorted(&[&second]));
    assert_eq!(names(&["format=raw", "unused-for=1w"]), sorted(&[]));
}

#[test]
fn images_filter_refuses_unknown_keys_values_and_images() {
    let (dir, store) = new_store();
    pull_disk(dir.path(), &store, "a.raw", 7);
    for (filter, says) in [
        (
            "colour=red",
            "unknown filter \"colour\": the filters are kind, source, format, verified, in-use, before, since, unused-for",
        ),
        ("kind", "is not KEY=VALUE"),
        ("kind=fiel", "kind takes alias, url, file, bundle, blank, oci, layout"),
        ("in-use=yes", "in-use takes true or false"),
        ("unused-for=a-while", "unused-for takes a duration"),
    ] {
        let (code, line) = fails_in_one_line(&store, &["images", "--filter", filter]);
        assert_eq!(code, 2, "{filter}: {line}");
        assert!(line.contains(says), "{filter}: {line}");
    }
    let (code, line) = fails_in_one_line(&store, &["images", "--filter", "before=no-such-image"]);
    assert_eq!(code, 3, "{line}");
    assert!(line.contains("no image named \"no-such-image\""), "{line}");
}
