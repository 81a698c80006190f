//! Quickstart: envelope encryption with the embedded local KMS.
//!
//! Creates a local KMS in a temporary directory, a master key, and a data key for one
//! table; seals a record, writes what a storage engine would keep on disk, "restarts",
//! unwraps the data key through the KMS and reads the record back; then shows that a
//! tampered record and a disabled master key both fail closed. Finally the same through
//! the encrypted RocksDB store, which does all of this per table.
//!
//! Run: `cargo run --release --example quickstart`

use std::path::Path;

use tde::cipher::{AeadKey, Suite};
use tde::kms::local::{CreateKeyOptions, LocalKms};
use tde::kms::{DataKeySpec, EncryptionContext, Kms};
use tde::kv::{Store, StoreOptions, TableOptions};
use tde::secret::WrappedKey;

const RECORD_KEY: &[u8] = b"patients/42";
const RECORD: &[u8] = b"Alice Example, born 1970-01-01, allergic to penicillin";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let kms_dir = tmp.path().join("kms");
    let data_dir = tmp.path().join("data");
    std::fs::create_dir_all(&data_dir)?;

    // 1. A local KMS: master keys sealed under a root key file (mode 0600).
    let kms = LocalKms::create(&kms_dir)?;
    println!("1. local KMS created in {}", kms_dir.display());

    // 2. A master key (CMK). It never leaves the KMS.
    let cmk = kms.create_key(&CreateKeyOptions {
        alias: Some("alias/quickstart".into()),
        description: "quickstart master key".into(),
        ..CreateKeyOptions::default()
    })?;
    println!(
        "2. master key {} ({}, {})",
        cmk.key_id,
        cmk.aliases.join(","),
        cmk.spec
    );

    // 3. A data key for the table, bound to it by the encryption context.
    let context = EncryptionContext::new()
        .with("store", "quickstart")
        .with("table", "patients");
    let dk = kms.generate_data_key("alias/quickstart", DataKeySpec::Aes256, &context)?;
    println!(
        "3. data key for table \"patients\": {} bytes in memory only; wrapped key (EDK) {} bytes, stored",
        dk.plaintext.len(),
        dk.wrapped.as_bytes().len()
    );
    std::fs::write(data_dir.join("patients.edk"), dk.wrapped.as_bytes())?;

    // 4. Seal a record. The associated data binds it to its table and key.
    let aad = associated_data(RECORD_KEY);
    let sealed = AeadKey::new(Suite::Aes256Gcm, 1, &dk.plaintext)?.seal(&aad, RECORD)?;
    std::fs::write(data_dir.join("patients.dat"), &sealed)?;
    drop(dk); // the plaintext data key is wiped here
    println!(
        "4. sealed a {}-byte record into {} bytes (AES-256-GCM, random nonce, tag)",
        RECORD.len(),
        sealed.len()
    );

    // 5. What is on disk.
    println!("5. on disk:");
    let mut found = false;
    for path in files(tmp.path())? {
        let bytes = std::fs::read(&path)?;
        found |= bytes.windows(5).any(|w| w == b"Alice");
        let shown = if path.ends_with(tde::kms::local::DEFAULT_ROOT_KEY_FILE) {
            "(the root key: secret, never printed; keep it on another device)".to_owned()
        } else {
            bytes[..bytes.len().min(16)]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        println!(
            "   {:<28} {:>6} bytes  {shown}",
            path.strip_prefix(tmp.path())?.display(),
            bytes.len()
        );
    }
    println!(
        "   the word \"Alice\" appears on disk: {}",
        if found { "YES" } else { "no" }
    );

    // 6. "Restart": only the EDK is on disk; the KMS unwraps it once, at open.
    let kms = LocalKms::open(&kms_dir)?;
    let wrapped = WrappedKey::from_bytes(std::fs::read(data_dir.join("patients.edk"))?);
    let dk = kms.decrypt_data_key(&wrapped, DataKeySpec::Aes256, &context)?;
    let key = AeadKey::new(Suite::Aes256Gcm, 1, &dk)?;
    let stored = std::fs::read(data_dir.join("patients.dat"))?;
    println!(
        "6. after restart: {}",
        String::from_utf8_lossy(&key.open(&aad, &stored)?)
    );

    // 7. One flipped byte, or the record moved under another key: refused.
    let mut tampered = stored.clone();
    tampered[30] ^= 1;
    println!("7. one flipped byte: {}", key.open(&aad, &tampered).unwrap_err());
    println!(
        "   moved to patients/43: {}",
        key.open(&associated_data(b"patients/43"), &stored).unwrap_err()
    );

    // 8. Emergency stop: a disabled master key unwraps nothing.
    kms.disable_key("alias/quickstart")?;
    println!(
        "8. master key disabled: {}",
        kms.decrypt_data_key(&wrapped, DataKeySpec::Aes256, &context)
            .unwrap_err()
    );
    kms.enable_key("alias/quickstart")?;

    // 9. The encrypted store: a data key per table, every file ciphertext.
    let store_dir = tmp.path().join("store");
    let store = Store::create(&store_dir, StoreOptions::new(std::sync::Arc::new(kms)))?;
    let patients = store.create_table(
        "patients",
        &TableOptions::default().master_key("alias/quickstart"),
    )?;
    let visits = store.create_table("visits", &TableOptions::default())?;
    patients.put(RECORD_KEY, RECORD)?;
    let mut batch = store.batch();
    batch.put(&visits, b"visit/1", b"Alice Example, 2026-11-02, check-up");
    store.write(batch)?;
    store.flush()?;
    let leaked = files(&store_dir)?
        .iter()
        .filter(|p| std::fs::read(p).is_ok_and(|b| b.windows(5).any(|w| w == b"Alice")))
        .count();
    println!(
        "9. store with tables {:?}: {} files on disk, {leaked} containing \"Alice\"; read back: {}",
        store.tables().iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        files(&store_dir)?.len(),
        String::from_utf8_lossy(&patients.get(RECORD_KEY)?.unwrap_or_default())
    );
    println!("\nFrom the shell: tde kms --help, tde db --help, tde table --help, tde backup --help");
    println!(
        "Next: cargo run --release --example clinic (backup, key rotation, restore, revocation, shredding)"
    );
    Ok(())
}

/// Binds a record to its table and key.
fn associated_data(record_key: &[u8]) -> Vec<u8> {
    [b"table=patients key=".as_slice(), record_key].concat()
}

fn files(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(files(&path)?);
        } else {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}
