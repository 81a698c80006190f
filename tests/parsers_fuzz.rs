//! Every parser of bytes read from disk or from a caller, fed random and mutated input:
//! typed errors, never a panic, never a false success. Deterministic (seeded), so a
//! failure reproduces.

mod common;

use common::{Rng, TestKms, TestStore, ctx};
use tde::cipher::{AeadKey, Sealed, Suite};
use tde::kms::Kms;
use tde::kv::TableOptions;
use tde::secret::DataKey;

#[test]
fn sealed_values() {
    let mut rng = Rng(1);
    for suite in Suite::ALL {
        let key = AeadKey::new(suite, 3, &DataKey::generate(suite.key_len()).unwrap()).unwrap();
        let sealed = key.seal(b"aad", b"a value of some length").unwrap();
        for _ in 0..20_000 {
            let input = if rng.below(4) == 0 {
                rng.some_bytes(80)
            } else {
                rng.mutate(&sealed)
            };
            let _ = Sealed::parse(&input);
            if input != sealed {
                assert!(key.open(b"aad", &input).is_err(), "a modified value opened");
            }
        }
    }
}

#[test]
fn kms_blobs_and_import_tokens() {
    let t = TestKms::new();
    let key = t.kms.create_key(&Default::default()).unwrap().key_id;
    let blob = t.kms.encrypt(&key, b"secret", &ctx("t")).unwrap();
    let mut rng = Rng(2);
    for _ in 0..3_000 {
        let input = if rng.below(4) == 0 {
            rng.some_bytes(120)
        } else {
            rng.mutate(&blob)
        };
        if input != blob {
            assert!(
                t.kms.decrypt(&input, &ctx("t")).is_err(),
                "a modified blob decrypted"
            );
        }
    }
    let external = t
        .kms
        .create_key(&tde::kms::local::CreateKeyOptions {
            origin: tde::kms::Origin::External,
            ..Default::default()
        })
        .unwrap()
        .key_id;
    let params = t.kms.import_parameters(&external).unwrap();
    let wrapped = tde::kms::local::wrap_key_material(&params.public_key_der, &[5u8; 32]).unwrap();
    for _ in 0..200 {
        let token = rng.mutate(&params.import_token);
        let material = rng.mutate(&wrapped);
        if token != params.import_token || material != wrapped {
            assert!(
                t.kms
                    .import_key_material(&external, &material, &token, None)
                    .is_err()
            );
        }
    }
    t.kms
        .import_key_material(&external, &wrapped, &params.import_token, None)
        .unwrap();
}

#[test]
fn kms_state_and_keyring_files() {
    let mut rng = Rng(3);
    let t = TestKms::new();
    t.kms.create_key(&Default::default()).unwrap();
    let state = std::fs::read(t.dir().join("kms-state.a")).unwrap();
    for _ in 0..300 {
        let bad = rng.mutate(&state);
        std::fs::write(t.dir().join("kms-state.a"), &bad).unwrap();
        std::fs::write(t.dir().join("kms-state.b"), rng.mutate(&state)).unwrap();
        // Either a clean error or (when both mutations left a valid copy) a working KMS.
        if let Ok(kms) = tde::kms::local::LocalKms::open(t.dir()) {
            kms.list_keys().unwrap();
        }
    }

    let s = TestStore::new();
    let store = s.create();
    store.create_table("a", &TableOptions::default()).unwrap();
    drop(store);
    let keyring = std::fs::read(s.path().join("TDE-KEYRING.a")).unwrap();
    for _ in 0..100 {
        std::fs::write(s.path().join("TDE-KEYRING.a"), rng.mutate(&keyring)).unwrap();
        std::fs::write(s.path().join("TDE-KEYRING.b"), rng.mutate(&keyring)).unwrap();
        if let Ok(store) = s.open() {
            assert_eq!(store.tables().len(), 1);
        }
    }
}

#[test]
fn file_headers() {
    let mut rng = Rng(4);
    let s = TestStore::new();
    {
        let store = s.create();
        let t = store.create_table("a", &TableOptions::default()).unwrap();
        t.put(b"k", b"v").unwrap();
        store.flush().unwrap();
    }
    let sst = std::fs::read_dir(s.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "sst"))
        .unwrap();
    let original = std::fs::read(&sst).unwrap();
    for _ in 0..60 {
        let mut bad = original.clone();
        let i = rng.below(68);
        bad[i] ^= 1 << rng.below(8);
        std::fs::write(&sst, &bad).unwrap();
        let result = s.open().and_then(|store| store.table("a")?.get(b"k"));
        assert!(result.is_err(), "a damaged header at byte {i} went unnoticed");
    }
    std::fs::write(&sst, &original).unwrap();
    assert_eq!(
        s.open().unwrap().table("a").unwrap().get(b"k").unwrap().unwrap(),
        b"v"
    );
}

#[test]
fn tablespace_headers_pages_and_journals() {
    use tde::page::{BufferPool, PageFile, PageSize, Tablespace, TablespaceOptions};
    use tde::testing::{CrashIo, IoFault};

    let kms = TestKms::new();
    let options = TablespaceOptions::new(std::sync::Arc::new(kms.kms))
        .page_size(PageSize::K4)
        .checkpoint_bytes(1 << 30);
    // Pages 0..6 checkpointed into the file; then pages 3..6 and 6..9 rewritten and
    // committed to the journal in two batches, without a checkpoint.
    let io = CrashIo::new();
    let pool = BufferPool::new(1 << 20);
    let ts = Tablespace::create_with(io.clone(), "fuzz", &options, &pool).unwrap();
    for n in 0..6 {
        ts.write(n).unwrap()[..4].copy_from_slice(b"old!");
    }
    ts.checkpoint().unwrap();
    for batch in 0..2 {
        for n in 3 + batch * 3..6 + batch * 3 {
            ts.write(n).unwrap()[..4].copy_from_slice(b"new!");
        }
        ts.sync().unwrap();
    }
    // Keep the journal as it is: closing must not checkpoint.
    io.set_fault(IoFault::FailFrom { op: 0 });
    drop(ts);
    let (data, journal) = (io.bytes(PageFile::Data), io.bytes(PageFile::Journal));

    let model = |n: usize, batches: u8| -> [u8; 4] {
        match n {
            0..3 => *b"old!",
            3..6 if batches >= 1 => *b"new!",
            3..6 => *b"old!",
            6..9 if batches >= 2 => *b"new!",
            _ => [0; 4],
        }
    };
    let mut rng = Rng(0x7ab1e5);
    let mut outcomes = [0usize; 3];
    for round in 0..400 {
        let copy = io.after_crash(false);
        let (file, range) = match round % 3 {
            0 => (PageFile::Data, 0..4096),
            1 => (PageFile::Journal, 0..journal.len()),
            _ => (PageFile::Data, 4096..data.len()),
        };
        let original = if file == PageFile::Data { &data } else { &journal };
        let mutated = [
            &original[..range.start],
            &rng.mutate(&original[range.clone()]),
            &original[range.end..],
        ]
        .concat();
        copy.set_bytes(file, mutated);
        // Must not panic. If it opens, every page is refused or matches the state after
        // zero, one or two batches, the same state for every page.
        let pool = BufferPool::new(1 << 20);
        let Ok(ts) = Tablespace::open_with(copy, &options, &pool) else {
            outcomes[0] += 1;
            continue;
        };
        let pages: Vec<Option<[u8; 4]>> = (0..10)
            .map(|n| ts.read(n).ok().map(|p| p[..4].try_into().unwrap()))
            .collect();
        let consistent = (0..=2).any(|batches| {
            pages
                .iter()
                .enumerate()
                .all(|(n, p)| p.is_none_or(|p| p == model(n, batches)))
        });
        assert!(consistent, "round {round}: {pages:?}");
        outcomes[if pages.iter().all(Option::is_some) { 1 } else { 2 }] += 1;
    }
    assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
}
