//! A clinic's patient-records service on tde, in the order an operator meets things:
//! two tables under different master keys, a backup, a master-key rotation and a
//! data-key rotation while the service keeps writing, a restore elsewhere, an emergency disable that stops
//! decryption, and a crypto-shred.
//!
//! `cargo run --release --example clinic` (everything happens in a temporary directory,
//! with the embedded local KMS).

use std::sync::Arc;
use std::time::Duration;

use tde::kms::local::{CreateKeyOptions, LocalKms};
use tde::kv::{ReencryptOptions, Store, StoreOptions, TableOptions};

fn step(n: u32, what: &str) {
    println!("\n[{n}] {what}");
}

fn main() -> tde::Result<()> {
    let dir = tempfile::tempdir().map_err(|e| tde::Error::InvalidArgument(e.to_string()))?;
    let kms = Arc::new(LocalKms::create(dir.path().join("kms"))?);
    let options = || StoreOptions::new(kms.clone());

    step(
        1,
        "Open the records store: patients under the clinic's own master key, visits under the service key",
    );
    let clinic_key = kms
        .create_key(&CreateKeyOptions {
            description: "clinic patient records".into(),
            ..CreateKeyOptions::default()
        })?
        .key_id;
    let store = Store::create(dir.path().join("records"), options())?;
    let patients = store.create_table(
        "patients",
        &TableOptions::default().master_key(clinic_key.clone()),
    )?;
    let visits = store.create_table("visits", &TableOptions::default())?;
    for (id, name) in [(1, "Ada Lovelace"), (2, "Alan Turing"), (3, "Grace Hopper")] {
        patients.put(
            format!("patient/{id}").as_bytes(),
            format!("{name}, allergies: none").as_bytes(),
        )?;
        visits.put(format!("visit/{id}/2026-11-25").as_bytes(), b"check-up")?;
    }
    for info in store.tables() {
        println!("    table {:<9} master key {}", info.name, info.master_key);
    }

    step(
        2,
        "Take a backup: ciphertext files plus wrapped keys, checked without any key",
    );
    let backups = dir.path().join("backups");
    let backup = tde::backup::create(&store, &backups)?;
    let checked = tde::backup::verify(&backups, None)?;
    println!(
        "    backup {} ({} files); verified {} bytes without a key",
        backup.id, backup.files, checked.bytes
    );

    step(
        3,
        "Rotate the clinic's master key (rewrap) and the patients' data key (re-encrypt), while the service keeps writing",
    );
    kms.rotate_key(&clinic_key)?;
    std::thread::scope(|s| -> tde::Result<()> {
        let writer = s.spawn(|| {
            for n in 4..2000 {
                patients.put(format!("patient/{n}").as_bytes(), b"new patient")?;
            }
            Ok::<_, tde::Error>(())
        });
        let report = store.rewrap(Some("patients"), None)?;
        println!(
            "    rewrapped {} data key(s); no data file rewritten",
            report.wrapped_keys
        );
        for rotated in store.rotate_data_key(Some("patients"))? {
            println!(
                "    new writes to {} use data key version {}",
                rotated.table, rotated.version
            );
        }
        let report = store.reencrypt(ReencryptOptions::default()).wait()?;
        for retired in &report.retired {
            println!(
                "    re-encrypted {} values; data key version {} of {} retired (its wrapped key destroyed)",
                report.resealed_values, retired.version, retired.table
            );
        }
        writer
            .join()
            .map_err(|_| tde::Error::InvalidArgument("writer panicked".into()))?
    })?;
    println!("    {} patients on file", patients.iter()?.count());

    step(4, "Restore the backup elsewhere (needs the KMS)");
    let copy = tde::backup::restore(&backups, None, &dir.path().join("restored"), options())?;
    let ada = copy.table("patients")?.get(b"patient/1")?.unwrap_or_default();
    println!(
        "    restored copy reads patient/1: {}",
        String::from_utf8_lossy(&ada)
    );
    drop(copy);

    step(
        5,
        "Emergency: disable the clinic's master key; the watch fails the table closed",
    );
    let watch = store.watch_keys(Duration::from_millis(200));
    kms.disable_key(&clinic_key)?;
    // Within one interval (give a busy machine a few).
    let mut outcome = patients.get(b"patient/1");
    for _ in 0..20 {
        if outcome.is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        outcome = patients.get(b"patient/1");
    }
    match outcome {
        Err(e) => println!("    patients: {e}"),
        Ok(_) => println!("    patients: still readable (the watch has not run yet)"),
    }
    println!("    visits still work: {} visits", visits.iter()?.count());
    drop(watch);
    drop((patients, visits, store));
    kms.enable_key(&clinic_key)?;
    let store = Store::open(dir.path().join("records"), options())?;
    println!(
        "    key re-enabled and store reopened: {} patients",
        store.table("patients")?.iter()?.count()
    );

    step(
        6,
        "Crypto-shred the visits table: no copy of its key is left in the store",
    );
    store.shred_table("visits")?;
    println!(
        "    tables now: {:?}",
        store.tables().iter().map(|t| t.name.clone()).collect::<Vec<_>>()
    );
    println!(
        "    (the backup still holds the visits key, wrapped by the service key: destroying that master key is what shreds the backup's copy)"
    );

    step(7, "Every KMS call above is in the hash-chained audit trail");
    let (records, _) = tde::audit::verify(store.path(), &store.store_id())?;
    println!("    {records} audit records, chain intact");
    Ok(())
}
