//! Backups in S3-compatible object storage (`s3://BUCKET/PREFIX`), against a real S3 API
//! server (moto in CI): the same content-addressed, incremental layout and the same
//! hostile-input rules as directory backups.
//!
//! Needs the `s3` feature, `TDE_TEST_S3_BUCKET` (an existing bucket), the endpoint and
//! credentials in the standard AWS variables (`AWS_ENDPOINT_URL_S3`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`), and `TDE_TEST_PYTHON`, a
//! Python with boto3, the independent client through which the tests play the attacker
//! who can write the bucket. `.ci/run` starts moto and sets them all.
#![cfg(feature = "s3")]

mod common;

use std::process::Command;

use common::{TestPages, TestStore};
use tde::Error;
use tde::backup::Destination;
use tde::kv::TableOptions;

fn env(name: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| panic!("set {name} (`.ci/run` starts moto and sets it)"))
}

/// A fresh prefix in the test bucket: (`s3://BUCKET/PREFIX`, bucket, prefix).
fn fresh() -> (String, String, String) {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).unwrap();
    let bucket = env("TDE_TEST_S3_BUCKET");
    let prefix = format!("tests/{}", common::hex(&bytes));
    (format!("s3://{bucket}/{prefix}"), bucket, prefix)
}

/// Runs `code` with boto3's S3 client as `s3`, the bucket as `bucket` and `args` as
/// `sys.argv[1:]`; its standard output.
fn boto3(code: &str, bucket: &str, args: &[&str]) -> String {
    let script = format!(
        "import sys, boto3\ns3 = boto3.client('s3')\nbucket = {bucket:?}\nargs = sys.argv[1:]\n{code}\n"
    );
    let out = Command::new(env("TDE_TEST_PYTHON"))
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "boto3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn keys(bucket: &str, prefix: &str) -> Vec<String> {
    boto3(
        "for o in s3.list_objects_v2(Bucket=bucket, Prefix=args[0]).get('Contents', []): print(o['Key'])",
        bucket,
        &[prefix],
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

fn put(bucket: &str, key: &str, body: &str) {
    boto3(
        "s3.put_object(Bucket=bucket, Key=args[0], Body=args[1].encode())",
        bucket,
        &[key, body],
    );
}

fn get(bucket: &str, key: &str) -> String {
    boto3(
        "sys.stdout.write(s3.get_object(Bucket=bucket, Key=args[0])['Body'].read().decode())",
        bucket,
        &[key],
    )
}

fn delete(bucket: &str, key: &str) {
    boto3("s3.delete_object(Bucket=bucket, Key=args[0])", bucket, &[key]);
}

fn fill(store: &tde::kv::Store, n: u32) {
    let t = store.table("t").unwrap();
    for i in 0..n {
        t.put(format!("k{i:05}"), format!("value {i}")).unwrap();
    }
}

#[test]
fn store_backups_live_in_object_storage() {
    let (url, bucket, prefix) = fresh();
    let dest = Destination::parse(&url).unwrap();
    assert_eq!(dest.to_string(), url);
    assert!(dest.local_path().is_none());
    let t = TestStore::new();
    let store = t.create();
    store.create_table("t", &TableOptions::default()).unwrap();
    fill(&store, 500);
    let first = tde::backup::create(&store, &dest).unwrap();
    fill(&store, 1000);
    let second = tde::backup::create(&store, &dest).unwrap();
    assert!(second.copied_bytes < second.bytes, "incremental: {second:?}");
    let listed = tde::backup::list(&dest).unwrap();
    assert_eq!(
        listed.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        [first.id.as_str(), second.id.as_str()]
    );
    // Nothing in the bucket but the layout: objects named by their SHA-256, manifests.
    for key in keys(&bucket, &prefix) {
        let rest = key.strip_prefix(&format!("{prefix}/")).unwrap();
        let ok = rest.strip_prefix("objects/").is_some_and(|sha| sha.len() == 64)
            || rest
                .strip_prefix("backups/")
                .is_some_and(|m| m.ends_with(".json"));
        assert!(ok, "unexpected object {key}");
    }
    let report = tde::backup::verify(&dest, None).unwrap();
    assert_eq!(report.backups, 2);
    let deep = tde::backup::verify_deep(&dest, Some(&first.id), t.options()).unwrap();
    assert_eq!(deep.records, Some(500));
    drop(store);

    // Restored from the bucket with the KMS alone.
    let restored = t.tmp.path().join("restored");
    let copy = tde::backup::restore(&dest, None, &restored, t.options()).unwrap();
    assert_eq!(
        copy.table("t").unwrap().get("k00999").unwrap().unwrap(),
        b"value 999"
    );
    drop(copy);

    // Rewrapped for another master key in place; the old keyring objects go.
    let other = t
        .local()
        .create_key(&tde::kms::local::CreateKeyOptions {
            alias: Some("alias/elsewhere".into()),
            ..Default::default()
        })
        .unwrap();
    let before = keys(&bucket, &format!("{prefix}/objects/")).len();
    tde::backup::rewrap(&dest, Some(&first.id), t.kms.clone(), None, &other.key_id, None).unwrap();
    assert!(keys(&bucket, &format!("{prefix}/objects/")).len() <= before + 1);
    let again = t.tmp.path().join("again");
    let copy = tde::backup::restore(&dest, Some(&first.id), &again, t.options()).unwrap();
    assert_eq!(
        copy.table("t").unwrap().get("k00499").unwrap().unwrap(),
        b"value 499"
    );
    drop(copy);

    // The KMS calls of the deep verification and the rewrap are in the bucket's trail.
    let records = tde::backup::audit_records(&dest).unwrap();
    assert!(records.len() >= 4, "{records:?}");
    let (n, _) = tde::backup::verify_destination_audit(&dest).unwrap();
    assert_eq!(n, records.len() as u64);
}

#[test]
fn tablespace_backups_live_in_object_storage() {
    let (url, _, _) = fresh();
    let dest = Destination::parse(&url).unwrap();
    let t = TestPages::new();
    let pool = tde::page::BufferPool::new(4 << 20);
    let ts = tde::page::Tablespace::create(t.path("a.tdb"), &t.options(), &pool).unwrap();
    for n in 0..20 {
        ts.write(n).unwrap().fill(7);
    }
    ts.sync().unwrap();
    tde::backup::create_tablespace(&ts, &dest).unwrap();
    drop(ts);
    let deep = tde::backup::verify_deep_tablespace(&dest, None, &t.options()).unwrap();
    assert_eq!(deep.records, Some(20));
    let back = tde::backup::restore_tablespace(&dest, None, &t.path("b.tdb"), &t.options(), &pool).unwrap();
    assert!(back.read(19).unwrap().iter().all(|b| *b == 7));
}

/// Whoever can write the bucket can damage, remove or forge anything there: each is a
/// clear error naming the backup, never data.
#[test]
fn a_tampered_bucket_is_refused() {
    let (url, bucket, prefix) = fresh();
    let dest = Destination::parse(&url).unwrap();
    let t = TestStore::new();
    let store = t.create();
    store.create_table("t", &TableOptions::default()).unwrap();
    fill(&store, 100);
    let report = tde::backup::create(&store, &dest).unwrap();
    drop(store);
    let manifest_key = format!("{prefix}/backups/{}.json", report.id);
    let manifest = get(&bucket, &manifest_key);
    let m = tde::backup::find(&dest, None).unwrap();
    let victim = m.files.iter().max_by_key(|f| f.size).unwrap();
    let object_key = format!("{prefix}/objects/{}", victim.sha256);

    // A replaced object: its checksum does not match.
    put(&bucket, &object_key, "forged bytes");
    let err = tde::backup::verify(&dest, None).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("does not match its checksum"), "{err}");
    let target = t.tmp.path().join("r1");
    assert!(tde::backup::restore(&dest, None, &target, t.options()).is_err());
    assert!(!target.exists() || std::fs::read_dir(&target).unwrap().next().is_none());

    // A removed object: missing, by name.
    delete(&bucket, &object_key);
    let err = tde::backup::verify(&dest, None).unwrap_err();
    assert!(err.to_string().contains("is missing"), "{err}");

    // An edited manifest: its checksum fails (one re-checksummed as well fails its HMAC
    // at restore, as in a directory; see tests/hostile_backup.rs).
    put(
        &bucket,
        &manifest_key,
        &manifest.replacen("\"size\": ", "\"size\": 1", 1),
    );
    let err = tde::backup::list(&dest).unwrap_err();
    assert!(err.to_string().contains("modified"), "{err}");

    // Keys that are not backups are ignored; a manifest whose id is not its name is not
    // taken for another backup.
    put(&bucket, &manifest_key, &manifest);
    put(&bucket, &format!("{prefix}/backups/notes.txt"), "hello");
    put(&bucket, &format!("{prefix}/backups/-.json"), "{}");
    assert_eq!(tde::backup::list(&dest).unwrap().len(), 1);
    // A key that is not a valid object path stops the listing with an error, never
    // becomes a file name.
    let escape = format!("{prefix}/backups/../../escape.json");
    put(&bucket, &escape, "{}");
    let err = tde::backup::list(&dest).unwrap_err();
    assert!(err.to_string().contains("invalid path"), "{err}");
    delete(&bucket, &escape);
    put(
        &bucket,
        &format!("{prefix}/backups/20990101T000000.000000000Z.json"),
        &manifest,
    );
    let err = tde::backup::list(&dest).unwrap_err();
    assert!(err.to_string().contains("is not its file name"), "{err}");
}

/// A backup is its manifest, written last: objects uploaded by a backup that never
/// finished are not a backup, and the next backup reuses them. Objects above the
/// single-request size go up as multipart uploads.
#[test]
fn an_unfinished_backup_is_invisible_and_large_files_go_in_parts() {
    let (url, bucket, prefix) = fresh();
    let dest = Destination::parse(&url).unwrap();
    let t = TestStore::new();
    let store = t.create();
    store.create_table("t", &TableOptions::default()).unwrap();
    let table = store.table("t").unwrap();
    let mut big = vec![0u8; 1 << 20];
    for i in 0..20 {
        getrandom::fill(&mut big).unwrap();
        table.put(format!("big{i}"), &big).unwrap();
    }
    drop(table);
    let report = tde::backup::create(&store, &dest).unwrap();
    let largest = tde::backup::find(&dest, None)
        .unwrap()
        .files
        .iter()
        .map(|f| f.size)
        .max()
        .unwrap();
    assert!(largest > 16 << 20, "a file above the single-PUT size: {largest}");
    // As if the process had died before the manifest: no backup.
    delete(&bucket, &format!("{prefix}/backups/{}.json", report.id));
    assert!(tde::backup::list(&dest).unwrap().is_empty());
    let err = tde::backup::find(&dest, None).unwrap_err();
    assert!(err.to_string().contains("holds no backup"), "{err}");
    let again = tde::backup::create(&store, &dest).unwrap();
    assert!(
        again.copied_bytes < report.copied_bytes / 2,
        "{again:?} after {report:?}"
    );
    drop(store);
    let restored = t.tmp.path().join("restored");
    let copy = tde::backup::restore(&dest, None, &restored, t.options()).unwrap();
    assert_eq!(
        copy.table("t").unwrap().get("big19").unwrap().unwrap().len(),
        1 << 20
    );
}

/// `tde backup` and `tde audit` take `s3://` destinations.
#[test]
fn the_command_line_takes_s3_destinations() {
    let (url, _, _) = fresh();
    let cli = common::Cli::new();
    let db = cli.path("db");
    cli.ok(&["db", "create", &db]);
    cli.ok(&["table", "create", &db, "t"]);
    cli.ok(&["put", &db, "t", "k", "in the bucket"]);
    let id = cli.ok(&["backup", "create", &db, &url]);
    assert!(cli.ok(&["backup", "list", &url]).contains(id.trim()));
    assert!(cli.ok(&["backup", "verify", &url]).contains("checksums match"));
    assert!(
        cli.ok(&["backup", "verify", &url, "--deep"])
            .contains("1 records authenticated")
    );
    let restored = cli.path("restored");
    cli.ok(&["backup", "restore", &url, &restored]);
    assert_eq!(cli.ok(&["get", &restored, "t", "k"]), "in the bucket\n");
    assert!(cli.ok(&["audit", "show", &url]).contains("decrypt"));
    assert!(cli.ok(&["audit", "verify", &url]).contains("chain intact"));
    let err = cli.fails(&["backup", "list", "s3://Not_A_Bucket/x"]);
    assert!(err.contains("not a valid bucket name"), "{err}");
}
