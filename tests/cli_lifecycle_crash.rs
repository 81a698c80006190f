//! Data key rotation and re-encryption from the command line, and crashes (the process
//! killed with SIGKILL) in the middle of re-encryption, backup, rewrap and migration:
//! afterwards the store opens, every acknowledged write reads back, and the operation
//! completes when run again.

mod common;

use std::process::Stdio;

use common::Cli;
use std::time::Duration;

/// Starts `args` and kills it (SIGKILL) after `after`; whether it finished first does not
/// matter.
fn kill_after(cli: &Cli, args: &[&str], after: Duration) {
    let mut child = cli
        .cmd(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    let _ = child.kill();
    let _ = child.wait();
}

/// A store with tables `a` (the service key) and `b` (alias/app), `rows` rows each.
fn store(cli: &Cli, rows: usize) -> String {
    cli.ok(&["kms", "create-key", "--alias", "alias/app"]);
    let db = cli.path("db");
    cli.ok(&["db", "create", &db]);
    cli.ok(&["table", "create", &db, "a"]);
    cli.ok(&["table", "create", &db, "b", "--key", "alias/app"]);
    load(cli, &db, 0, rows);
    db
}

fn load(cli: &Cli, db: &str, from: usize, to: usize) {
    for table in ["a", "b"] {
        let lines: String = (from..to)
            .map(|i| format!("k{i:08}\tvalue {i} {}\n", "z".repeat(90)))
            .collect();
        cli.ok_in(&["load", db, table], lines.as_bytes());
    }
}

/// Every table reads back completely and authentically, with `rows` rows each.
fn verify(cli: &Cli, db: &str, rows: usize) {
    let out = cli.ok(&["verify", db]);
    for table in ["a", "b"] {
        assert!(
            out.contains(&format!("{table}: {rows} records, all authentic")),
            "{out}"
        );
    }
}

#[test]
fn rotate_data_and_reencrypt_from_the_cli() {
    let cli = Cli::new();
    let db = store(&cli, 20_000);
    let out = cli.ok(&["rotate", &db, "--data"]);
    assert!(out.contains("a: data key version 2 is current"), "{out}");
    assert!(out.contains("(store): data key version 2"), "{out}");

    let status = cli.ok(&["reencrypt", &db]);
    assert!(status.contains("a: version(s) 1 to retire"), "{status}");
    assert!(status.contains("--wait"), "{status}");

    let (out, progress) = cli.ok_both(&["reencrypt", &db, "--wait", "--rate", "50"], b"");
    assert!(out.contains("retired: a data key version 1"), "{out}");
    assert!(out.contains("retired: b data key version 1"), "{out}");
    assert!(out.contains("retired: (store) data key version 1"), "{out}");
    assert!(
        out.contains("done: every table uses only its current data key version"),
        "{out}"
    );
    // Not a terminal: plain progress lines.
    assert!(progress.contains("re-encrypting: done"), "{progress}");
    assert!(progress.contains("MiB ("), "{progress}");
    assert!(cli.ok(&["reencrypt", &db]).contains("nothing to re-encrypt"));
    verify(&cli, &db, 20_000);
    let audit = cli.ok(&["audit", "show", &db]);
    assert!(audit.contains("retire-data-key"), "{audit}");

    let out = cli.run(&["rotate", &db, "--data", "--to-key", "alias/app"], b"");
    assert!(!out.status.success(), "--to-key goes with --master only");
    let out = cli.run(&["rotate", &db], b"");
    assert!(!out.status.success(), "--master or --data is required");
    let out = cli.run(&["reencrypt", &db, "--rate", "0", "--wait"], b"");
    assert!(!out.status.success());
}

#[test]
fn a_killed_reencryption_resumes_and_loses_nothing() {
    let cli = Cli::new();
    let mut rows = 100_000;
    let db = store(&cli, rows);
    cli.ok(&["rotate", &db, "--data"]);
    let mut remaining = Vec::new();
    for (round, ms) in [150u64, 400, 700, 1000].into_iter().enumerate() {
        // ~20 MiB of old files at 8 MB/s: each kill lands mid-pass.
        kill_after(
            &cli,
            &["reencrypt", &db, "--wait", "--rate", "8"],
            Duration::from_millis(ms),
        );
        verify(&cli, &db, rows);
        // Acknowledged writes between crashes.
        load(&cli, &db, rows, rows + 1000);
        rows += 1000;
        let status = cli.ok(&["reencrypt", &db]);
        remaining.push(status.clone());
        assert!(
            status.contains("to retire") || status.contains("nothing to re-encrypt"),
            "round {round}: {status}"
        );
    }
    assert!(
        remaining.iter().any(|s| s.contains("pass in progress")),
        "no kill landed mid-pass: {remaining:?}"
    );
    let out = cli.ok(&["reencrypt", &db, "--wait"]);
    assert!(
        out.contains("done") || out.contains("nothing to re-encrypt"),
        "{out}"
    );
    assert!(cli.ok(&["reencrypt", &db]).contains("nothing to re-encrypt"));
    verify(&cli, &db, rows);
}

#[test]
fn a_killed_backup_leaves_the_store_and_earlier_backups_intact() {
    let cli = Cli::new();
    let mut rows = 30_000;
    let db = store(&cli, rows);
    let dest = cli.path("backups");
    cli.ok(&["backup", "create", &db, &dest]);
    for ms in [5u64, 20, 60, 120, 250] {
        load(&cli, &db, rows, rows + 500);
        rows += 500;
        kill_after(&cli, &["backup", "create", &db, &dest], Duration::from_millis(ms));
        verify(&cli, &db, rows);
        let out = cli.ok(&["backup", "verify", &dest]);
        assert!(!out.contains("FAILED"), "{out}");
    }
    let (_, progress) = cli.ok_both(&["backup", "create", &db, &dest], b"");
    assert!(progress.contains("backing up: done"), "{progress}");
    let (_, progress) = cli.ok_both(&["backup", "verify", &dest], b"");
    assert!(progress.contains("verifying: done"), "{progress}");
    let restored = cli.path("restored");
    cli.ok(&["backup", "restore", &dest, &restored]);
    verify(&cli, &restored, rows);
}

#[test]
fn a_killed_master_key_rotation_or_migration_leaves_a_store_that_opens() {
    let cli = Cli::new();
    let rows = 5_000;
    let db = store(&cli, rows);
    let other = cli.path("kms2");
    cli.ok(&["--kms", &other, "kms", "init"]);
    cli.ok(&["--kms", &other, "kms", "create-key", "--alias", "alias/moved"]);
    for ms in [0u64, 3, 8, 15, 30, 60] {
        kill_after(
            &cli,
            &["rotate", &db, "--master", "--to-key", "alias/app"],
            Duration::from_millis(ms),
        );
        verify(&cli, &db, rows);
        kill_after(
            &cli,
            &["migrate", &db, "--to-key", "alias/moved", "--to-kms", &other],
            Duration::from_millis(ms),
        );
        // The store opens with whichever keyring the crash left: the old or the new.
        verify(&cli, &db, rows);
    }
    cli.ok(&["migrate", &db, "--to-key", "alias/moved", "--to-kms", &other]);
    cli.ok(&["rotate", &db, "--master"]);
    verify(&cli, &db, rows);
}
