//! `tde bench page`: the page store with sealing off and on, side by side and interleaved
//! in one process, so the ratio (encrypted / plain) isolates the cost of encryption. Both
//! variants use the same format, journal, pool and I/O; only the sealing differs.

use std::path::Path;
use std::sync::Arc;

use clap::Args;
use serde_json::json;
use tde::kms::local::LocalKms;
use tde::page::{BufferPool, PageSize, Tablespace, TablespaceOptions};

use crate::CliResult;
use crate::bench::{round_line, splitmix, summarize, timed};

#[derive(Debug, Args)]
pub(crate) struct PageArgs {
    /// A short run (under a minute): fewer pages, operations and rounds.
    #[arg(long)]
    quick: bool,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
    /// Physical page size: 4k, 8k, 16k, 32k or 64k.
    #[arg(long, default_value = "16k")]
    page_size: PageSize,
    /// Data size in MiB (default 256; 64 with --quick).
    #[arg(long)]
    data_mib: Option<u64>,
    /// Rounds (default 5; 3 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// The encrypted tablespace's cipher: aes-256-gcm, sm4-gcm or aegis-256.
    #[arg(long, default_value = "aes-256-gcm")]
    cipher: tde::cipher::Suite,
}

const WORKLOADS: [&str; 4] = ["read_in_pool", "read_out_of_pool", "write_sync", "scan"];
const SYNC_EVERY: u64 = 100;

struct Sizes {
    pages: u64,
    reads: u64,
    writes: u64,
}

fn options(
    kms: &Arc<LocalKms>,
    size: PageSize,
    encrypted: bool,
    suite: tde::cipher::Suite,
) -> TablespaceOptions {
    let options = TablespaceOptions::new(kms.clone()).page_size(size).suite(suite);
    if encrypted {
        options
    } else {
        options.dangerous().unencrypted()
    }
}

fn stamp(page: &mut [u8], n: u64) {
    for (i, chunk) in page.chunks_mut(8).enumerate() {
        let r = splitmix(n ^ ((i as u64) << 32)).to_le_bytes();
        chunk.copy_from_slice(&r[..chunk.len()]);
    }
}

fn fill(path: &Path, options: &TablespaceOptions, pages: u64) -> CliResult {
    let pool = BufferPool::new(64 << 20);
    let ts = Tablespace::create(path, options, &pool)?;
    for n in 0..pages {
        stamp(&mut ts.write(n)?, n);
        if n % 256 == 255 {
            ts.sync()?;
        }
    }
    ts.close()?;
    Ok(())
}

/// One round: both variants, every workload, alternating which goes first.
fn round(
    root: &Path,
    kms: &Arc<LocalKms>,
    size: PageSize,
    s: &Sizes,
    plain_first: bool,
    suite: tde::cipher::Suite,
) -> CliResult<[[f64; 2]; 4]> {
    let paths = [root.join("plain.tdb"), root.join("tde.tdb")];
    let opts = [options(kms, size, false, suite), options(kms, size, true, suite)];
    for (path, o) in paths.iter().zip(&opts) {
        tde::page::Tablespace::remove(path)?;
        fill(path, o, s.pages)?;
    }
    let order: [usize; 2] = if plain_first { [0, 1] } else { [1, 0] };
    let all = (s.pages as usize + 16) * size.bytes();
    let small = (all / 20).max(16 * size.bytes());
    let mut results = [[0.0; 2]; 4];
    for &w in &order {
        let (path, o) = (&paths[w], &opts[w]);
        // Random reads, the whole tablespace in the pool (warmed by a scan).
        let pool = BufferPool::new(all);
        let ts = Tablespace::open(path, o, &pool)?;
        for n in 0..s.pages {
            std::hint::black_box(ts.read(n)?[0]);
        }
        let hits = s.reads * 25;
        results[0][w] = timed(hits, || {
            for i in 0..hits {
                std::hint::black_box(ts.read(splitmix(i) % s.pages)?[0]);
            }
            Ok(())
        })?;
        // Random page writes, a sync every 100.
        results[2][w] = timed(s.writes, || {
            for i in 0..s.writes {
                let n = splitmix(i ^ 0x77) % s.pages;
                ts.write(n)?[..8].copy_from_slice(&i.to_le_bytes());
                if i % SYNC_EVERY == SYNC_EVERY - 1 {
                    ts.sync()?;
                }
            }
            ts.sync()?;
            Ok(())
        })?;
        ts.close()?;

        // Random reads and a sequential scan with a pool of 5% of the data.
        let pool = BufferPool::new(small);
        let ts = Tablespace::open(path, o, &pool)?;
        results[1][w] = timed(s.reads, || {
            for i in 0..s.reads {
                std::hint::black_box(ts.read(splitmix(i ^ 0x5eed) % s.pages)?[0]);
            }
            Ok(())
        })?;
        results[3][w] = timed(s.pages * 2, || {
            for _ in 0..2 {
                for n in 0..s.pages {
                    std::hint::black_box(ts.read(n)?[0]);
                }
            }
            Ok(())
        })?;
        ts.close()?;
    }
    Ok(results)
}

pub(crate) fn run(args: &PageArgs) -> CliResult {
    let mib = args.data_mib.unwrap_or(if args.quick { 64 } else { 256 }).max(1);
    let rounds = args.rounds.unwrap_or(if args.quick { 3 } else { 5 }).max(1);
    let size = args.page_size;
    let pages = (mib << 20) / size.bytes() as u64;
    let s = Sizes {
        pages,
        reads: if args.quick { 40_000 } else { 200_000 },
        writes: if args.quick { 2_000 } else { 10_000 },
    };
    let tmp = tempfile::tempdir()?;
    let kms = Arc::new(LocalKms::create(tmp.path().join("kms"))?);
    let backend = crate::bench::backend();
    eprintln!(
        "tde bench page: {mib} MiB in {pages} pages of {} KiB, {rounds} rounds, {} ({backend}), data under {}",
        size.bytes() >> 10,
        args.cipher,
        tmp.path().display()
    );
    let speeds = crate::bench_primitive::measure_all(&[size.bytes()], args.cipher);
    let mut per_round = Vec::new();
    for r in 0..rounds {
        let out = round(tmp.path(), &kms, size, &s, r % 2 == 0, args.cipher)?;
        eprintln!("  round {}: {}", r + 1, round_line(&WORKLOADS, &out));
        per_round.push(out);
    }
    let results: Vec<Vec<[f64; 2]>> = per_round.iter().map(|r| r.to_vec()).collect();
    let (ratios, workloads) = summarize(&WORKLOADS, &results, "pages");
    // Each workload's limit: a pool hit needs no cryptography; a page read from the file
    // opens one page; a page write seals one.
    let plain = |i: usize| crate::bench::median(results.iter().map(|r| r[i][0]).collect());
    let page = size.bytes() as f64;
    let speed = &speeds[0];
    let limit = crate::bench_primitive::limit;
    let mut limits = serde_json::Map::new();
    limits.insert(WORKLOADS[0].into(), json!(1.0));
    limits.insert(WORKLOADS[1].into(), json!(limit(plain(1), 0.0, page, speed)));
    limits.insert(WORKLOADS[2].into(), json!(limit(plain(2), page, 0.0, speed)));
    limits.insert(WORKLOADS[3].into(), json!(limit(plain(3), 0.0, page, speed)));
    crate::bench_primitive::print_limits(&WORKLOADS, &limits);
    if args.json {
        println!(
            "{}",
            json!({
                "data_mib": mib,
                "page_bytes": size.bytes(),
                "rounds": rounds,
                "backend": backend,
                "cipher": args.cipher.name(),
                "workloads": workloads,
                "ratios": ratios,
                "limits": limits,
                "primitive": crate::bench_primitive::json(&speeds, args.cipher),
            })
        );
    }
    Ok(())
}
