//! `tde bench kv`: the same workloads on plain RocksDB and on a tde store, side by side
//! and interleaved in one process, so the ratio (tde / plain) is meaningful on a noisy
//! machine. Each round builds both databases afresh; medians over rounds are reported.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Subcommand};
use rocksdb::{DBWithThreadMode, MultiThreaded};
use serde_json::json;
use tde::kms::local::LocalKms;
use tde::kv::{Store, StoreOptions, Table, TableOptions};

use crate::CliResult;

type Plain = DBWithThreadMode<MultiThreaded>;

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Plain RocksDB vs the tde store.
    Kv(KvArgs),
    /// The page store with sealing off vs on.
    Page(crate::bench_page::PageArgs),
    /// A re-encryption pass vs a plain full compaction of the same store.
    Reencrypt(crate::bench_reencrypt::ReencryptArgs),
    /// GenerateDataKey and Decrypt throughput and latency through `tde kms serve`
    /// (features `server` and `aws-kms`).
    KmsServe(crate::bench_serve::ServeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct KvArgs {
    /// A short run (under a minute): fewer keys and rounds.
    #[arg(long)]
    quick: bool,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
    /// Keys to load (default 1,000,000; 200,000 with --quick).
    #[arg(long)]
    keys: Option<u64>,
    /// Rounds (default 5; 3 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// Measure tde tables that also seal each value (`TableOptions::seal_values`).
    #[arg(long)]
    seal_values: bool,
    /// The tde table's cipher: aes-256-gcm, sm4-gcm or aegis-256.
    #[arg(long, default_value = "aes-256-gcm")]
    cipher: tde::cipher::Suite,
}

const VALUE_LEN: usize = 100;
const CACHE_BYTES: usize = 512 << 20;
const WORKLOADS: [&str; 4] = ["fillrandom", "readrandom_cached", "readrandom_uncached", "scan"];

/// The AES backend this build uses, for reports.
pub(crate) fn backend() -> &'static str {
    if cfg!(feature = "aws-lc") {
        "aws-lc"
    } else {
        "rustcrypto"
    }
}

/// The CPU features this binary was compiled for that matter to the ciphers. Features
/// not compiled in are still used when the CPU has them, through run-time dispatch, which
/// costs tens of nanoseconds per call (see the README's performance section).
pub(crate) fn compiled_features() -> String {
    let features = [
        ("avx2", cfg!(target_feature = "avx2")),
        ("aes", cfg!(target_feature = "aes")),
        ("pclmulqdq", cfg!(target_feature = "pclmulqdq")),
        ("avx512f", cfg!(target_feature = "avx512f")),
        ("vaes", cfg!(target_feature = "vaes")),
        ("vpclmulqdq", cfg!(target_feature = "vpclmulqdq")),
    ];
    let on: Vec<&str> = features.iter().filter(|f| f.1).map(|f| f.0).collect();
    if on.is_empty() {
        "baseline".into()
    } else {
        on.join("+")
    }
}

pub(crate) fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The i-th key: a bijection of i, so loading 0..n writes n distinct keys in random order.
pub(crate) fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&splitmix(i).to_be_bytes());
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

pub(crate) fn value(i: u64) -> [u8; VALUE_LEN] {
    let mut v = [0u8; VALUE_LEN];
    for (n, chunk) in v.chunks_mut(8).enumerate() {
        let r = splitmix(i ^ ((n as u64) << 40)).to_le_bytes();
        chunk.copy_from_slice(&r[..chunk.len()]);
    }
    v
}

/// The two systems under test, behind one interface.
enum Db {
    Plain(Plain),
    Tde(Store, Table),
}

impl Db {
    fn put(&self, k: &[u8], v: &[u8]) -> CliResult {
        match self {
            Db::Plain(db) => db.put(k, v)?,
            Db::Tde(_, t) => t.put(k, v)?,
        }
        Ok(())
    }

    fn get(&self, k: &[u8]) -> CliResult<bool> {
        Ok(match self {
            Db::Plain(db) => db.get_pinned(k)?.is_some(),
            Db::Tde(_, t) => t.get(k)?.is_some(),
        })
    }

    fn scan(&self) -> CliResult<u64> {
        let mut n = 0;
        match self {
            Db::Plain(db) => {
                let mut it = db.raw_iterator();
                it.seek_to_first();
                while it.valid() {
                    std::hint::black_box(it.value());
                    n += 1;
                    it.next();
                }
                it.status()?;
            }
            Db::Tde(_, t) => {
                for item in t.iter()? {
                    std::hint::black_box(item?);
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    fn settle(&self) -> CliResult {
        match self {
            Db::Plain(db) => {
                db.flush()?;
                db.compact_range(None::<&[u8]>, None::<&[u8]>);
            }
            Db::Tde(store, _) => {
                store.flush()?;
                store.compact()?;
            }
        }
        Ok(())
    }
}

fn open_plain(dir: &Path, cache: Option<usize>) -> CliResult<Db> {
    let mut opts = StoreOptions::rocksdb_options(cache, true);
    opts.create_if_missing(true);
    Ok(Db::Plain(Plain::open(&opts, dir)?))
}

fn open_tde(
    dir: &Path,
    kms: &Arc<LocalKms>,
    cache: Option<usize>,
    value_seal: bool,
    suite: tde::cipher::Suite,
) -> CliResult<Db> {
    let options = StoreOptions::new(kms.clone()).block_cache_bytes(cache);
    let store = if dir.exists() {
        Store::open(dir, options)?
    } else {
        let store = Store::create(dir, options)?;
        store.create_table(
            "bench",
            &TableOptions::default().suite(suite).seal_values(value_seal),
        )?;
        store
    };
    let table = store.table("bench")?;
    Ok(Db::Tde(store, table))
}

pub(crate) fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "sst"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

pub(crate) fn timed(ops: u64, f: impl FnOnce() -> CliResult) -> CliResult<f64> {
    let start = Instant::now();
    f()?;
    Ok(ops as f64 / start.elapsed().as_secs_f64())
}

pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// One round's ratios (tde / plain) on one line, for progress output.
pub(crate) fn round_line(workloads: &[&str], results: &[[f64; 2]]) -> String {
    workloads
        .iter()
        .zip(results)
        .map(|(w, r)| format!("{w} {:.3}", r[1] / r[0]))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints each workload's median throughput for both systems and the median ratio over
/// the rounds; returns the JSON `ratios` and `workloads` maps (`unit`: "ops" or "pages").
pub(crate) fn summarize(
    workloads: &[&str],
    per_round: &[Vec<[f64; 2]>],
    unit: &str,
) -> (
    serde_json::Map<String, serde_json::Value>,
    serde_json::Map<String, serde_json::Value>,
) {
    println!(
        "{:<22} {:>14} {:>14} {:>8}",
        "workload",
        format!("plain {unit}/s"),
        format!("tde {unit}/s"),
        "ratio"
    );
    let mut ratios = serde_json::Map::new();
    let mut by_workload = serde_json::Map::new();
    for (i, w) in workloads.iter().enumerate() {
        let plain = median(per_round.iter().map(|r| r[i][0]).collect());
        let tde = median(per_round.iter().map(|r| r[i][1]).collect());
        let ratio = median(per_round.iter().map(|r| r[i][1] / r[i][0]).collect());
        println!("{w:<22} {plain:>14.0} {tde:>14.0} {ratio:>8.3}");
        ratios.insert((*w).to_owned(), json!((ratio * 1000.0).round() / 1000.0));
        by_workload.insert(
            (*w).to_owned(),
            json!({format!("plain_{unit}_per_sec"): plain.round(), format!("tde_{unit}_per_sec"): tde.round()}),
        );
    }
    (ratios, by_workload)
}

/// One round: both systems, every workload, alternating which goes first.
fn round(
    root: &Path,
    kms: &Arc<LocalKms>,
    keys: u64,
    plain_first: bool,
    value_seal: bool,
    suite: tde::cipher::Suite,
) -> CliResult<Round> {
    let dirs = [root.join("plain"), root.join("tde")];
    for d in &dirs {
        let _ = std::fs::remove_dir_all(d);
    }
    let order: [usize; 2] = if plain_first { [0, 1] } else { [1, 0] };
    let open = |which: usize, cache: Option<usize>| -> CliResult<Db> {
        if which == 0 {
            open_plain(&dirs[0], cache)
        } else {
            open_tde(&dirs[1], kms, cache, value_seal, suite)
        }
    };
    let mut results = [[0.0; 2]; 4];
    let mut plain_fill_io = (0, 0);
    let reads = keys;
    // fillrandom
    for &w in &order {
        let db = open(w, Some(CACHE_BYTES))?;
        let before = crate::bench_primitive::io_bytes();
        results[0][w] = timed(keys, || {
            for i in 0..keys {
                db.put(&key(i), &value(i))?;
            }
            Ok(())
        })?;
        if w == 0 {
            let after = crate::bench_primitive::io_bytes();
            plain_fill_io = (after.0 - before.0, after.1 - before.1);
        }
        db.settle()?;
    }
    // readrandom with a large block cache, warmed by a scan.
    for &w in &order {
        let db = open(w, Some(CACHE_BYTES))?;
        db.scan()?;
        results[1][w] = timed(reads, || {
            for i in 0..reads {
                std::hint::black_box(db.get(&key(splitmix(i ^ 0x5eed) % keys))?);
            }
            Ok(())
        })?;
        results[3][w] = timed(keys, || db.scan().map(|_| ()))?;
    }
    // readrandom with the block cache disabled: every read decrypts its block.
    for &w in &order {
        let db = open(w, Some(0))?;
        results[2][w] = timed(reads, || {
            for i in 0..reads {
                std::hint::black_box(db.get(&key(splitmix(i ^ 0xcafe) % keys))?);
            }
            Ok(())
        })?;
    }
    Ok(Round {
        results,
        sizes: [dir_size(&dirs[0]), dir_size(&dirs[1])],
        plain_fill_io,
    })
}

/// What one round measured.
struct Round {
    /// Per workload: [plain, tde] operations per second.
    results: [[f64; 2]; 4],
    /// SST bytes: [plain, tde].
    sizes: [u64; 2],
    /// Bytes plain RocksDB read and wrote (system calls) while it loaded the keys.
    plain_fill_io: (u64, u64),
}

/// Each workload's limit (JSON `limits`, the keys of `ratios`): the ratio a store that
/// authenticates every byte of every file would reach if its only added cost were the
/// AEAD work the workload cannot avoid, at the bare primitive's speed measured in this
/// run. Loading seals every byte plain RocksDB writes (WAL, flushes, compactions) and
/// opens every byte its compactions read; a cached read needs no cryptography; an
/// uncached read opens one 4 KiB data block; a scan opens every SST byte once.
fn limits(
    per_round: &[Round],
    keys: u64,
    small: &crate::bench_primitive::Speed,
    large: &crate::bench_primitive::Speed,
) -> serde_json::Map<String, serde_json::Value> {
    use crate::bench_primitive::limit;
    let plain = |i: usize| median(per_round.iter().map(|r| r.results[i][0]).collect());
    let per_key = |x: u64| x as f64 / keys.max(1) as f64;
    let io = per_round.last().map_or((0, 0), |r| r.plain_fill_io);
    let sst = per_round.last().map_or(0, |r| r.sizes[0]);
    let mut out = serde_json::Map::new();
    out.insert(
        WORKLOADS[0].into(),
        json!(limit(plain(0), per_key(io.1), per_key(io.0), large)),
    );
    out.insert(WORKLOADS[1].into(), json!(1.0));
    out.insert(WORKLOADS[2].into(), json!(limit(plain(2), 0.0, 4096.0, small)));
    out.insert(
        WORKLOADS[3].into(),
        json!(limit(plain(3), 0.0, per_key(sst), large)),
    );
    out
}

pub(crate) fn run(cmd: BenchCommand) -> CliResult {
    let args = match cmd {
        BenchCommand::Kv(args) => args,
        BenchCommand::Page(args) => return crate::bench_page::run(&args),
        BenchCommand::Reencrypt(args) => return crate::bench_reencrypt::run(&args),
        BenchCommand::KmsServe(args) => return crate::bench_serve::run(args),
    };
    let keys = args.keys.unwrap_or(if args.quick { 200_000 } else { 1_000_000 });
    let rounds = args.rounds.unwrap_or(if args.quick { 3 } else { 5 }).max(1);
    let tmp = tempfile::tempdir()?;
    let kms = Arc::new(LocalKms::create(tmp.path().join("kms"))?);
    let backend = backend();
    let sealing = if args.seal_values { "on" } else { "off" };
    let features = compiled_features();
    eprintln!(
        "tde bench kv: {keys} keys, {VALUE_LEN}-byte values, {rounds} rounds, {} ({backend}, compiled for {features}), value sealing {sealing}",
        args.cipher
    );

    let speeds = crate::bench_primitive::measure_all(&[4096, 16384], args.cipher);
    let mut per_round: Vec<Round> = Vec::new();
    for r in 0..rounds {
        let out = round(tmp.path(), &kms, keys, r % 2 == 0, args.seal_values, args.cipher)?;
        eprintln!("  round {}: {}", r + 1, round_line(&WORKLOADS, &out.results));
        per_round.push(out);
    }

    let results: Vec<Vec<[f64; 2]>> = per_round.iter().map(|r| r.results.to_vec()).collect();
    let (ratios, workloads) = summarize(&WORKLOADS, &results, "ops");
    let limits = limits(&per_round, keys, &speeds[0], &speeds[1]);
    crate::bench_primitive::print_limits(&WORKLOADS, &limits);
    let sizes = per_round.last().map(|r| r.sizes).unwrap_or_default();
    let size_ratio = if sizes[0] > 0 {
        sizes[1] as f64 / sizes[0] as f64
    } else {
        0.0
    };
    println!(
        "on-disk size (SST): plain {} bytes, tde {} bytes, ratio {size_ratio:.3}",
        sizes[0], sizes[1]
    );
    if args.json {
        println!(
            "{}",
            json!({
                "keys": keys,
                "rounds": rounds,
                "value_bytes": VALUE_LEN,
                "backend": backend,
                "compiled_features": features,
                "value_seal": args.seal_values,
                "cipher": args.cipher.name(),
                "workloads": workloads,
                "ratios": ratios,
                "limits": limits,
                "primitive": crate::bench_primitive::json(&speeds, args.cipher),
                "size_ratio": (size_ratio * 1000.0).round() / 1000.0,
            })
        );
    }
    Ok(())
}
