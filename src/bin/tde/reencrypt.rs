//! `tde rotate --data` and `tde reencrypt`.

use std::path::Path;
use std::time::Duration;

use tde::kv::ReencryptOptions;

use crate::CliResult;
use crate::db::open_store;
use crate::progress::Progress;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// A page-store tablespace is a file; a key-value store is a directory.
fn is_tablespace(path: &Path) -> bool {
    path.is_file()
}

pub(crate) fn rotate_data(flag: Option<&str>, path: &Path, table: Option<&str>) -> CliResult {
    if is_tablespace(path) {
        if table.is_some() {
            return Err("--table applies to key-value stores; a tablespace has one data key".into());
        }
        let ts = crate::page::open(path, flag, &tde::page::BufferPool::new(1 << 20))?;
        let version = ts.rotate_data_key()?;
        ts.close()?;
        println!(
            "{}: data key version {version} is current for new writes",
            path.display()
        );
        println!(
            "older versions stay readable until `tde reencrypt {} --wait` rewrites their pages and retires them",
            path.display()
        );
        return Ok(());
    }
    let store = open_store(path, flag)?;
    for r in store.rotate_data_key(table)? {
        println!(
            "{}: data key version {} is current for new writes",
            r.table, r.version
        );
    }
    println!(
        "older versions stay readable until `tde reencrypt {} --wait` moves their data and retires them",
        path.display()
    );
    Ok(())
}

pub(crate) fn run(flag: Option<&str>, path: &Path, rate: Option<f64>, wait: bool) -> CliResult {
    let mut options = ReencryptOptions::default();
    if let Some(rate) = rate {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(format!("--rate must be a positive number of MB/s, not {rate}").into());
        }
        options = options.rate_limit((rate * 1e6) as u64);
    }
    if is_tablespace(path) {
        return tablespace(flag, path, options.rate_bytes(), wait);
    }
    let mut store = open_store(path, flag)?;
    let pending = store.reencrypt_status()?;
    if pending.is_empty() {
        println!("nothing to re-encrypt: every table uses only its current data key version");
        return Ok(());
    }
    for p in &pending {
        let versions: Vec<String> = p.versions.iter().map(u32::to_string).collect();
        println!(
            "{}: version(s) {} to retire, {:.1} MiB of files under them{}",
            p.table,
            versions.join(", "),
            mib(p.bytes),
            if p.started { " (pass in progress)" } else { "" }
        );
    }
    if !wait {
        println!("run `tde reencrypt {} --wait` to re-encrypt now", path.display());
        return Ok(());
    }
    // The store-level key's last files (MANIFEST, CURRENT, LOG) are replaced when the
    // store opens, so a second round after a reopen finishes it.
    for round in 0..2 {
        let job = store.reencrypt(options);
        let mut progress = Progress::bytes("re-encrypting", 0);
        let mut shown = None;
        loop {
            let finished = job.is_finished();
            let p = job.progress();
            progress.set_total(p.total_bytes);
            let note = (p.waiting != shown).then(|| p.waiting.clone()).flatten();
            shown.clone_from(&p.waiting);
            progress.set(p.done_bytes, note.as_deref());
            if finished {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let report = job.wait()?;
        progress.finish(report.rewritten_bytes);
        for r in &report.retired {
            println!("retired: {} data key version {}", r.table, r.version);
        }
        if report.resealed_values > 0 {
            println!(
                "{} values sealed again under the current version",
                report.resealed_values
            );
        }
        if report.pending_reopen.is_empty() {
            break;
        }
        if round == 1 {
            println!(
                "still under an old store-level key version: {}",
                report.pending_reopen.join(", ")
            );
            break;
        }
        drop(store);
        store = open_store(path, flag)?;
    }
    let left = store.reencrypt_status()?;
    if left.is_empty() {
        println!("done: every table uses only its current data key version");
        Ok(())
    } else {
        Err(format!("{} key(s) still have old versions; run again", left.len()).into())
    }
}

fn tablespace(flag: Option<&str>, path: &Path, rate: Option<u64>, wait: bool) -> CliResult {
    let info = tde::page::Tablespace::inspect(path)?;
    if !wait {
        println!(
            "{}: data key version {} is current; `tde reencrypt {} --wait` rewrites every page \
             under an older version and retires it",
            path.display(),
            info.data_key_version,
            path.display()
        );
        return Ok(());
    }
    let ts = crate::page::open(path, flag, &tde::page::BufferPool::new(16 << 20))?;
    let page = (ts.page_size() + tde::page::RESERVE) as u64;
    let mut progress = Progress::bytes("re-encrypting", 0);
    let report = ts.reencrypt(rate, &mut |done, total| {
        progress.set_total(total * page);
        progress.set(done * page, None);
    })?;
    ts.close()?;
    progress.finish(report.rewritten * page);
    for version in &report.retired {
        println!("retired: data key version {version}");
    }
    if report.retired.is_empty() {
        println!("nothing to re-encrypt: every page uses the current data key version");
    } else {
        println!(
            "done: {} pages sealed again under the current version",
            report.rewritten
        );
    }
    Ok(())
}
