//! The store from the command line: `tde db`, `tde table`, records, `load`, `verify`,
//! and `bench kv`.

mod common;

use std::path::PathBuf;

use common::{Cli, contains, files_below};

#[test]
fn create_tables_records_scan_and_verify() {
    let cli = Cli::new();
    let db = cli.path("db");
    cli.ok(&["db", "create", &db]);
    let key = cli.ok(&["kms", "create-key", "--alias", "alias/pii"]);
    let key = key.trim();
    cli.ok(&[
        "table",
        "create",
        &db,
        "people",
        "--key",
        "alias/pii",
        "--seal-values",
    ]);
    cli.ok(&["table", "create", &db, "events", "--cipher", "sm4-gcm"]);
    cli.ok(&["table", "create", &db, "logs", "--cipher", "aegis-256"]);
    cli.ok(&["put", &db, "logs", "k", "an aegis value"]);
    assert_eq!(cli.ok(&["get", &db, "logs", "k"]).trim(), "an aegis value");
    let err = cli.fails(&["table", "create", &db, "events"]);
    assert!(err.contains("already exists"), "{err}");
    let listed = cli.ok(&["table", "list", &db]);
    assert!(
        listed.contains("people")
            && listed.contains("alias/pii")
            && listed.contains("sm4-gcm")
            && listed.contains("aegis-256"),
        "{listed}"
    );
    let json: serde_json::Value = serde_json::from_str(&cli.ok(&["table", "list", &db, "--json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3);
    // Each data key version as an object: version, state, seals.
    let versions = &json[0]["versions"];
    assert_eq!(versions[0]["version"], 1, "{json}");
    assert_eq!(versions[0]["state"], "current", "{json}");
    assert_eq!(versions[0]["seals"], 0, "{json}");
    // Values are sealed one by one only where asked (`--seal-values`).
    let sealing = |name: &str| {
        json.as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap()["value_seal"]
            .clone()
    };
    assert_eq!(sealing("people"), true, "{json}");
    assert_eq!(sealing("events"), false, "{json}");

    cli.ok(&["put", &db, "people", "p/1", "Ada Lovelace"]);
    cli.ok(&["put", &db, "people", "p/2", "Alan Turing"]);
    cli.ok(&["put", &db, "people", "q/1", "Grace Hopper"]);
    assert_eq!(cli.ok(&["get", &db, "people", "p/2"]), "Alan Turing\n");
    let err = cli.fails(&["get", &db, "people", "p/9"]);
    assert!(err.contains("not found"), "{err}");
    cli.ok(&["del", &db, "people", "p/2"]);
    cli.fails(&["get", &db, "people", "p/2"]);
    assert_eq!(
        cli.ok(&["scan", &db, "people", "--prefix", "p/"]),
        "p/1\tAda Lovelace\n"
    );
    assert_eq!(cli.ok(&["scan", &db, "people"]).lines().count(), 2);
    let err = cli.fails(&["scan", &db, "nobody"]);
    assert!(err.contains("no table"), "{err}");

    let verified = cli.ok(&["verify", &db]);
    assert!(verified.contains("verified 3 records in 3 tables"), "{verified}");
    assert!(verified.contains("authenticated every byte of"), "{verified}");
    let upgraded = cli.ok(&["upgrade", &db]);
    assert!(upgraded.contains("nothing to upgrade"), "{upgraded}");

    cli.ok(&["table", "create", &db, "scratch"]);
    cli.ok(&["put", &db, "scratch", "k", "v"]);
    cli.ok(&["table", "drop", &db, "scratch"]);
    assert!(!cli.ok(&["table", "list", &db]).contains("scratch"));
    let err = cli.fails(&["get", &db, "scratch", "k"]);
    assert!(err.contains("no table"), "{err}");
    let err = cli.fails(&["table", "drop", &db, "scratch"]);
    assert!(err.contains("no table"), "{err}");

    // The store keeps using the KMS it was created with, even if TDE_KMS changes.
    let out = cli
        .cmd(&["get", &db, "people", "p/1"])
        .env("TDE_KMS", cli.tmp.path().join("elsewhere"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // An explicit --kms overrides it: a KMS without the keys cannot open the store.
    let other = cli.tmp.path().join("other-kms");
    cli.ok(&["kms", "init", other.to_str().unwrap()]);
    let err = cli.fails(&["--kms", other.to_str().unwrap(), "get", &db, "people", "p/1"]);
    assert!(err.contains("could not be unwrapped"), "{err}");

    // A disabled key stops the store opening, naming the table and key.
    cli.ok(&["kms", "disable", key]);
    let err = cli.fails(&["get", &db, "events", "x"]);
    assert!(err.contains("people") && err.contains("disabled"), "{err}");
    cli.ok(&["kms", "enable", key]);
}

#[test]
fn load_writes_batches_and_leaves_no_plaintext() {
    let cli = Cli::new();
    let db = cli.path("db");
    cli.ok(&["db", "create", &db]);
    cli.ok(&["table", "create", &db, "t"]);
    let mut input = String::new();
    for i in 0..5000 {
        input.push_str(&format!("key{i:05}\tPLAINTEXT-MARKER-{i}\n"));
    }
    cli.ok_in(&["load", &db, "t"], input.as_bytes());
    let scanned = cli.ok(&["scan", &db, "t", "--prefix", "key0001"]);
    assert_eq!(scanned.lines().count(), 10);
    assert!(scanned.starts_with("key00010\tPLAINTEXT-MARKER-10\n"));
    for (path, bytes) in files_below(&PathBuf::from(&db)) {
        assert!(
            !contains(&bytes, b"PLAINTEXT-MARKER"),
            "{} holds plaintext",
            path.display()
        );
    }
    let err = String::from_utf8(cli.run(&["load", &db, "t"], b"no tab here\n").stderr).unwrap();
    assert!(err.contains("KEY<TAB>VALUE"), "{err}");
    assert!(cli.ok(&["verify", &db]).contains("5000 records"));
}

#[test]
fn bench_kv_prints_ratios_as_json() {
    let cli = Cli::new();
    let out = cli.ok(&["bench", "kv", "--json", "--keys", "3000", "--rounds", "1"]);
    let last = out.lines().last().unwrap();
    let json: serde_json::Value = serde_json::from_str(last).unwrap();
    for w in ["fillrandom", "readrandom_cached", "readrandom_uncached", "scan"] {
        let r = json["ratios"][w]
            .as_f64()
            .unwrap_or_else(|| panic!("no ratio for {w}: {last}"));
        assert!(r > 0.0, "{w}: {r}");
    }
    common::assert_limits_and_primitive(&json, last);
    assert!(json["size_ratio"].as_f64().unwrap() > 0.0);
}
