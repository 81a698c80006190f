//! Opening a store of 1,000 tables against a KMS that answers each call after 20 ms: one
//! unwrap per data key (1,001), at most `unwrap_parallelism` (default 32) in flight, so
//! the unwraps take about 1001 / 32 × 20 ms ≈ 0.63 s of the open. The target is an open
//! in under 2 s; the tests assert what the code controls (call counts, bounded
//! parallelism), this measures the time.
//!
//! `cargo bench --bench open`.
//!
//! With `TDE_BENCH_KMS=URI` and `TDE_BENCH_KEY=KEY` (and the provider's feature and
//! environment), it also opens a store of 100 tables through that KMS, over the network
//! for a remote provider, and prints the KMS calls an open makes.

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tde::kms::local::LocalKms;
use tde::kv::{Store, StoreOptions, TableOptions};
use tde::testing::FaultyKms;

const TABLES: usize = 1000;

fn open(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let local = Arc::new(LocalKms::create(dir.path().join("kms")).expect("kms"));
    let kms = Arc::new(FaultyKms::new(local));
    let path = dir.path().join("store");
    {
        let store = Store::create(&path, StoreOptions::new(kms.clone())).expect("store");
        for i in 0..TABLES {
            store
                .create_table(&format!("t{i:04}"), &TableOptions::default())
                .expect("table");
        }
    }
    kms.set_latency(Duration::from_millis(20));
    let mut group = c.benchmark_group("open");
    group.sample_size(10);
    group.bench_function("1000_tables_20ms_kms", |b| {
        b.iter(|| Store::open(&path, StoreOptions::new(kms.clone())).expect("open"));
    });
    group.finish();
}

/// A store of 100 tables through the KMS `TDE_BENCH_KMS` names, if it is set.
fn open_through_provider(c: &mut Criterion) {
    let (Ok(uri), Ok(key)) = (std::env::var("TDE_BENCH_KMS"), std::env::var("TDE_BENCH_KEY")) else {
        return;
    };
    let uri = tde::kms::KmsUri::parse(&uri).expect("TDE_BENCH_KMS");
    let provider = tde::kms::open_uri(&uri).expect("open the KMS");
    let kms = Arc::new(FaultyKms::new(provider));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    {
        let store = Store::create(&path, StoreOptions::new(kms.clone()).default_key(key)).expect("store");
        for i in 0..100 {
            store
                .create_table(&format!("t{i:03}"), &TableOptions::default())
                .expect("table");
        }
    }
    kms.reset_calls();
    drop(Store::open(&path, StoreOptions::new(kms.clone())).expect("open"));
    eprintln!(
        "{uri}: one open of 100 tables made {} KMS calls",
        kms.total_calls()
    );
    let mut group = c.benchmark_group("open");
    group.sample_size(10);
    group.bench_function(
        format!(
            "100_tables_{}",
            uri.to_string().split(':').next().unwrap_or("kms")
        ),
        |b| {
            b.iter(|| Store::open(&path, StoreOptions::new(kms.clone())).expect("open"));
        },
    );
    group.finish();
}

criterion_group!(benches, open, open_through_provider);
criterion_main!(benches);
