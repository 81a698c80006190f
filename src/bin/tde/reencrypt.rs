//! `tde rotate --data` and `tde reencrypt`, for a store or a tablespace alike.

use std::path::Path;

use tde::keys::ReencryptOptions;

use crate::CliResult;
use crate::db::open_any;
use crate::progress::Progress;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

pub(crate) fn rotate_data(flag: Option<&str>, path: &Path, table: Option<&str>) -> CliResult {
    let engine = open_any(path, flag)?;
    let rotated = engine.rotate_data_key(table)?;
    engine.close()?;
    for r in rotated {
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
    let engine = open_any(path, flag)?;
    let pending = engine.reencrypt_status()?;
    if pending.is_empty() {
        engine.close()?;
        println!("nothing to re-encrypt: every table uses only its current data key version");
        return Ok(());
    }
    for p in &pending {
        let versions: Vec<String> = p.versions.iter().map(u32::to_string).collect();
        println!(
            "{}: version(s) {} to retire, {:.1} MiB of data under them{}",
            p.table,
            versions.join(", "),
            mib(p.bytes),
            if p.started { " (pass in progress)" } else { "" }
        );
    }
    if !wait {
        engine.close()?;
        println!("run `tde reencrypt {} --wait` to re-encrypt now", path.display());
        return Ok(());
    }
    let mut progress = Progress::bytes("re-encrypting", 0);
    let mut shown = None;
    let (engine, report) = tde::keys::reencrypt_all(engine, options, &mut |p| {
        progress.set_total(p.total_bytes);
        let note = (p.waiting != shown).then(|| p.waiting.clone()).flatten();
        shown.clone_from(&p.waiting);
        progress.set(p.done_bytes, note.as_deref());
    })?;
    progress.finish(report.rewritten_bytes);
    for r in &report.retired {
        println!("retired: {} data key version {}", r.table, r.version);
    }
    if report.resealed_values > 0 {
        println!(
            "{} {} sealed again under the current version",
            report.resealed_values,
            if engine.kind() == "tablespace" {
                "pages"
            } else {
                "values"
            }
        );
    }
    if !report.pending_reopen.is_empty() {
        println!(
            "still under an old store-level key version: {}",
            report.pending_reopen.join(", ")
        );
    }
    let left = engine.reencrypt_status()?;
    engine.close()?;
    if left.is_empty() {
        println!("done: every table uses only its current data key version");
        Ok(())
    } else {
        Err(format!("{} key(s) still have old versions; run again", left.len()).into())
    }
}
