//! `tde bench reencrypt`: the rate of a re-encryption pass against the rate of a plain
//! full compaction of the same store, measured side by side, alternating, in one process.

use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use serde_json::json;
use tde::kms::local::LocalKms;
use tde::kv::{ReencryptOptions, Store, StoreOptions, TableOptions};

use crate::CliResult;
use crate::bench::{dir_size, key, median, value};

#[derive(Debug, Args)]
pub(crate) struct ReencryptArgs {
    /// A short run: a 128 MiB store and 2 rounds.
    #[arg(long)]
    quick: bool,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
    /// Size of the store's SST files in MiB (default 1024; 128 with --quick).
    #[arg(long)]
    mib: Option<u64>,
    /// Rounds (default 3; 2 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// Measure a table that also seals each value.
    #[arg(long)]
    seal_values: bool,
    /// Compactions the pass runs at once (default: the machine's cores, at most 4).
    #[arg(long)]
    threads: Option<usize>,
}

fn mb_per_sec(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

pub(crate) fn run(args: &ReencryptArgs) -> CliResult {
    let target = args.mib.unwrap_or(if args.quick { 128 } else { 1024 }) << 20;
    let rounds = args.rounds.unwrap_or(if args.quick { 2 } else { 3 }).max(1);
    let tmp = tempfile::tempdir()?;
    let kms = Arc::new(LocalKms::create(tmp.path().join("kms"))?);
    let dir = tmp.path().join("store");
    let store = Store::create(&dir, StoreOptions::new(kms))?;
    let table = store.create_table("bench", &TableOptions::default().seal_values(args.seal_values))?;
    eprintln!(
        "tde bench reencrypt: loading a {} MiB store (value sealing {})",
        target >> 20,
        if args.seal_values { "on" } else { "off" }
    );
    let mut i = 0u64;
    loop {
        for _ in 0..50 {
            let mut batch = store.batch();
            for _ in 0..2_000 {
                batch.put(&table, key(i), value(i));
                i += 1;
            }
            store.write(batch)?;
        }
        store.flush()?;
        // Obsolete files linger until RocksDB deletes them: measure after a compaction.
        if dir_size(&dir) >= target {
            store.compact()?;
            if dir_size(&dir) >= target {
                break;
            }
        }
    }
    let bytes = dir_size(&dir);
    eprintln!(
        "  {i} keys, {:.0} MiB of SST files",
        bytes as f64 / f64::from(1 << 20)
    );

    let mut options = ReencryptOptions::default();
    if let Some(n) = args.threads {
        options = options.threads(n);
    }
    let mut compaction = Vec::new();
    let mut reencrypt = Vec::new();
    let mut ratios = Vec::new();
    for r in 0..rounds {
        let mut pair = [0.0f64; 2];
        // Alternate which goes first.
        for which in if r % 2 == 0 { [0, 1] } else { [1, 0] } {
            if which == 0 {
                let before = dir_size(&dir);
                let start = Instant::now();
                store.compact()?;
                pair[0] = mb_per_sec(before, start.elapsed().as_secs_f64());
            } else {
                store.rotate_data_key(Some("bench"))?;
                let start = Instant::now();
                let report = store.reencrypt(options).wait()?;
                pair[1] = mb_per_sec(report.rewritten_bytes, start.elapsed().as_secs_f64());
            }
        }
        eprintln!(
            "  round {}: compaction {:.1} MB/s, re-encryption {:.1} MB/s, ratio {:.3}",
            r + 1,
            pair[0],
            pair[1],
            pair[1] / pair[0]
        );
        compaction.push(pair[0]);
        reencrypt.push(pair[1]);
        ratios.push(pair[1] / pair[0]);
    }
    let (c, e, ratio) = (median(compaction), median(reencrypt), median(ratios));
    println!("full compaction (no key change): {c:.1} MB/s");
    let threads = options.thread_count();
    let plural = if threads == 1 { "" } else { "s" };
    println!("re-encryption (rotate + pass, {threads} compaction{plural} at once): {e:.1} MB/s");
    println!("ratio (re-encryption / compaction): {ratio:.3}");
    if args.json {
        println!(
            "{}",
            json!({
                "store_bytes": bytes,
                "keys": i,
                "rounds": rounds,
                "value_seal": args.seal_values,
                "threads": options.thread_count(),
                "compaction_mb_per_sec": (c * 10.0).round() / 10.0,
                "reencrypt_mb_per_sec": (e * 10.0).round() / 10.0,
                "ratio": (ratio * 1000.0).round() / 1000.0,
            })
        );
    }
    Ok(())
}
