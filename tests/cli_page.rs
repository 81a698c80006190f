//! Tablespaces from the command line: `tde page create/info/verify` and `bench page`.

mod common;

use std::sync::Arc;

use common::{Cli, contains};
use tde::page::{BufferPool, Tablespace, TablespaceOptions};

#[test]
fn create_info_and_verify_a_tablespace_and_detect_tampering() {
    let cli = Cli::new();
    let file = cli.path("orders.tdb");
    let id = cli.ok(&["page", "create", &file, "--page-size", "4k"]);
    let info: serde_json::Value = serde_json::from_str(&cli.ok(&["page", "info", &file, "--json"])).unwrap();
    assert_eq!(info["id"].as_str().unwrap(), id.trim());
    assert_eq!(info["physical_page_size"], 4096);
    assert_eq!(info["master_key"], "alias/acs/tde");
    let aegis = cli.path("aegis.tdb");
    cli.ok(&["page", "create", &aegis, "--cipher", "aegis-256"]);
    let info: serde_json::Value = serde_json::from_str(&cli.ok(&["page", "info", &aegis, "--json"])).unwrap();
    assert_eq!(info["suite"], "aegis-256");
    assert_eq!(info["page_size"], 16384 - 52);

    // An engine writes pages through the library, with the KMS the header records.
    let kms = Arc::new(tde::kms::local::LocalKms::open(cli.tmp.path().join("kms")).unwrap());
    let pool = BufferPool::new(1 << 20);
    let ts = Tablespace::open(&file, &TablespaceOptions::new(kms), &pool).unwrap();
    for n in 0..10 {
        ts.write(n).unwrap()[..16].copy_from_slice(b"CLI-PAGE-MARKER!");
    }
    ts.close().unwrap();
    assert!(!contains(&std::fs::read(&file).unwrap(), b"CLI-PAGE-MARKER"));
    assert!(
        cli.ok(&["page", "verify", &file])
            .contains("10 pages, all authentic")
    );

    let mut bytes = std::fs::read(&file).unwrap();
    bytes[4096 * 6 + 10] ^= 0x40;
    std::fs::write(&file, bytes).unwrap();
    let out = cli.run(&["page", "verify", &file], b"");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("authentication failed") && err.contains("page 5"),
        "{err}"
    );

    let out = cli.run(
        &[
            "page",
            "info",
            &cli.tmp.path().join("kms").join("root.key").to_string_lossy(),
        ],
        b"",
    );
    assert!(!out.status.success(), "a file that is not a tablespace");
}

#[test]
fn bench_page_prints_ratios_as_json() {
    let cli = Cli::new();
    let out = cli.ok(&[
        "bench",
        "page",
        "--quick",
        "--json",
        "--data-mib",
        "2",
        "--rounds",
        "1",
    ]);
    let last = out.lines().last().unwrap();
    let json: serde_json::Value = serde_json::from_str(last).unwrap();
    for w in ["read_in_pool", "read_out_of_pool", "write_sync", "scan"] {
        let r = json["ratios"][w]
            .as_f64()
            .unwrap_or_else(|| panic!("no ratio for {w}: {last}"));
        assert!(r > 0.0, "{w}: {r}");
    }
    common::assert_limits_and_primitive(&json, last);
}

#[test]
fn rotate_data_and_reencrypt_a_tablespace() {
    let cli = Cli::new();
    let file = cli.path("orders.tdb");
    cli.ok(&["page", "create", &file, "--page-size", "4k"]);
    let out = cli.ok(&["rotate", &file, "--data"]);
    assert!(out.contains("data key version 2 is current"), "{out}");
    let info: serde_json::Value = serde_json::from_str(&cli.ok(&["page", "info", &file, "--json"])).unwrap();
    assert_eq!(info["data_key_version"], 2, "{info}");
    assert!(cli.ok(&["reencrypt", &file]).contains("--wait"));
    let out = cli.ok(&["reencrypt", &file, "--wait"]);
    assert!(out.contains("retired: orders.tdb data key version 1"), "{out}");
    let out = cli.ok(&["reencrypt", &file, "--wait"]);
    assert!(out.contains("nothing to re-encrypt"), "{out}");
    cli.ok(&["page", "verify", &file]);
    assert!(
        !cli.run(&["rotate", &file, "--data", "--table", "t"], b"")
            .status
            .success()
    );
}

#[test]
fn back_up_restore_rewrap_and_migrate_a_tablespace() {
    let cli = Cli::new();
    let file = cli.path("orders.tdb");
    cli.ok(&["page", "create", &file]);
    let dest = cli.tmp.path().join("backups").to_string_lossy().into_owned();
    let id = cli.ok(&["backup", "create", &file, &dest]);
    assert!(cli.ok(&["backup", "list", &dest]).contains("tablespace"));
    assert!(
        cli.ok(&["backup", "verify", &dest, "--deep"])
            .contains("authenticated")
    );
    let key = cli.ok(&["kms", "create-key"]).lines().next().unwrap().to_owned();
    cli.ok(&["backup", "rewrap", &dest, "--to-key", &key]);
    let restored = cli.tmp.path().join("restored.tbs").to_string_lossy().into_owned();
    let out = cli.ok(&["backup", "restore", &dest, &restored, "--id", id.trim()]);
    assert!(out.contains("restored tablespace"), "{out}");
    cli.ok(&["rotate", &restored, "--master", "--to-key", &key]);
    let info: serde_json::Value =
        serde_json::from_str(&cli.ok(&["page", "info", &restored, "--json"])).unwrap();
    assert_eq!(info["master_key"], key.as_str(), "{info}");
    let other = cli.tmp.path().join("kms-2").to_string_lossy().into_owned();
    cli.ok(&["--kms", &other, "kms", "init"]);
    let moved_key = cli
        .ok(&["--kms", &other, "kms", "create-key"])
        .lines()
        .next()
        .unwrap()
        .to_owned();
    cli.ok(&["migrate", &restored, "--to-key", &moved_key, "--to-kms", &other]);
    cli.ok(&["page", "verify", &restored]);
}

#[test]
fn a_tablespace_has_its_audit_trail_and_lists_its_key_versions() {
    let cli = Cli::new();
    let file = cli.path("ledger.tdb");
    cli.ok(&["page", "create", &file, "--page-size", "4k"]);
    let kms = Arc::new(tde::kms::local::LocalKms::open(cli.tmp.path().join("kms")).unwrap());
    let ts = Tablespace::open(&file, &TablespaceOptions::new(kms), &BufferPool::new(1 << 20)).unwrap();
    for n in 0..7 {
        ts.write(n).unwrap()[0] = 1;
    }
    ts.close().unwrap();
    cli.ok(&["rotate", &file, "--data"]);

    // Page info reads the header without a key: versions, states and seals as recorded.
    let info: serde_json::Value = serde_json::from_str(&cli.ok(&["page", "info", &file, "--json"])).unwrap();
    let versions = info["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{info}");
    assert_eq!(versions[0]["version"], 1);
    assert_eq!(versions[0]["state"], "readable");
    assert_eq!(versions[0]["seals"], 7);
    assert_eq!(versions[1]["state"], "current");

    // The trail beside the file: create, the library's open, the CLI's opens, rotation.
    let shown = cli.ok(&["audit", "show", &file]);
    assert!(shown.contains("generate-data-key"), "{shown}");
    assert!(shown.contains("decrypt"), "{shown}");
    assert!(std::path::Path::new(&format!("{file}-audit")).exists());
    let verified = cli.ok(&["audit", "verify", &file]);
    assert!(verified.contains("chain intact"), "{verified}");
    let deep = cli.ok(&["audit", "verify", &file, "--deep"]);
    assert!(deep.contains("authenticated"), "{deep}");

    // An edited record breaks the chain.
    let trail = format!("{file}-audit");
    let text = std::fs::read_to_string(&trail).unwrap();
    std::fs::write(&trail, text.replacen("generate-data-key", "generate-data-kez", 1)).unwrap();
    let err = cli.fails(&["audit", "verify", &file]);
    assert!(err.contains("edited"), "{err}");
}
