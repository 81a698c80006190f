//! The page store with sealing off (`plain`) and on (`tde`), side by side in one run, so
//! the ratio isolates the cost of encryption: pool hits, pool misses (a read and a
//! decryption), and page writes committed every 100 writes. 16 KiB pages.
//!
//! `cargo bench --bench page` (aws-lc-rs, the default; `--no-default-features --features
//! rustcrypto` for RustCrypto).
//! `tde bench page` runs the same comparison at a larger scale with medians of rounds.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tde::kms::local::LocalKms;
use tde::page::{BufferPool, PageSize, Tablespace, TablespaceOptions};

const PAGES: u64 = 2048;
const PAGE: PageSize = PageSize::K16;

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^ (x >> 31)
}

struct Fixture {
    _dir: tempfile::TempDir,
    variants: Vec<(&'static str, std::path::PathBuf, TablespaceOptions)>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let kms = Arc::new(LocalKms::create(dir.path().join("kms")).expect("kms"));
    let base = TablespaceOptions::new(kms).page_size(PAGE);
    let variants = vec![
        (
            "plain",
            dir.path().join("plain.tdb"),
            base.clone().dangerous().unencrypted(),
        ),
        (
            "tde-aegis-256",
            dir.path().join("aegis.tdb"),
            base.clone().suite(tde::cipher::Suite::Aegis256),
        ),
        ("tde", dir.path().join("tde.tdb"), base),
    ];
    for (_, path, options) in &variants {
        let pool = BufferPool::new(64 << 20);
        let ts = Tablespace::create(path, options, &pool).expect("create");
        for n in 0..PAGES {
            ts.write(n).expect("write")[..8].copy_from_slice(&mix(n).to_le_bytes());
        }
        ts.close().expect("close");
    }
    Fixture { _dir: dir, variants }
}

fn bench(c: &mut Criterion) {
    let f = fixture();
    let logical = (PAGE.bytes() - tde::page::RESERVE) as u64;
    let cases: [(&str, usize); 2] = [
        ("read_in_pool", (PAGES as usize + 8) * PAGE.bytes()),
        ("read_out_of_pool", PAGES as usize / 20 * PAGE.bytes()),
    ];
    for (name, pool_bytes) in cases {
        let mut group = c.benchmark_group(format!("page/{name}"));
        group
            .throughput(Throughput::Bytes(logical))
            .measurement_time(Duration::from_secs(2))
            .warm_up_time(Duration::from_millis(500));
        for (variant, path, options) in &f.variants {
            let pool = BufferPool::new(pool_bytes);
            let ts = Tablespace::open(path, options, &pool).expect("open");
            let mut i = 0u64;
            group.bench_function(*variant, |b| {
                b.iter(|| {
                    i += 1;
                    black_box(ts.read(mix(i) % PAGES).expect("read")[0])
                })
            });
            ts.close().expect("close");
        }
        group.finish();
    }

    let mut group = c.benchmark_group("page/write_sync100");
    group
        .throughput(Throughput::Bytes(logical * 100))
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);
    for (variant, path, options) in &f.variants {
        let pool = BufferPool::new((PAGES as usize + 8) * PAGE.bytes());
        let ts = Tablespace::open(path, options, &pool).expect("open");
        let mut i = 0u64;
        group.bench_function(*variant, |b| {
            b.iter(|| {
                for _ in 0..100 {
                    i += 1;
                    ts.write(mix(i) % PAGES).expect("write")[..8].copy_from_slice(&i.to_le_bytes());
                }
                ts.sync().expect("sync")
            })
        });
        ts.close().expect("close");
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
