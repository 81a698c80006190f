//! `tde bench kms-serve`: GenerateDataKey and Decrypt through `tde kms serve`, with 32
//! concurrent clients signing their requests (tde's `aws-kms:` provider), over loopback
//! HTTP. A local KMS and a principal are made in a temporary directory; every request is
//! authenticated, authorised and recorded in the audit trail, as in production.

use clap::Args;

use crate::CliResult;

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// A short run: 3 seconds per operation instead of 10.
    #[arg(long)]
    quick: bool,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
}

#[cfg(all(feature = "server", feature = "aws-kms"))]
pub(crate) fn run(args: ServeArgs) -> CliResult {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use tde::kms::{DataKeySpec, EncryptionContext, Kms};

    let dir = tempfile::tempdir()?;
    let kms = Arc::new(tde::kms::local::LocalKms::create(dir.path().join("kms"))?);
    kms.create_account("bench")?;
    let creds = kms.create_principal("bench", "bench", true)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let server_kms = kms.clone();
    std::thread::spawn(move || {
        let options = tde::server::ServeOptions {
            listen: "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
            rate_limit: 1_000_000,
            ..Default::default()
        };
        let _ = tde::server::serve(server_kms, options, |addr| {
            let _ = tx.send(addr);
        });
    });
    let addr = rx.recv_timeout(Duration::from_secs(10))?;
    let endpoint = format!("http://{addr}");
    let client = Arc::new(tde::kms::aws::AwsKms::connect_with_key(
        "us-east-1",
        Some(&endpoint),
        &creds.info.access_key_id,
        &creds.secret_access_key,
    )?);
    let key = client.create_key(None, Some("bench"))?;
    let ctx = EncryptionContext::new().with("tde:store", "bench");
    let blob = client.generate_data_key(&key, DataKeySpec::Aes256, &ctx)?.wrapped;
    let seconds = if args.quick { 3 } else { 10 };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    let mut results = serde_json::Map::new();
    for op in ["GenerateDataKey", "Decrypt"] {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let threads: Vec<_> = (0..args.clients.max(1))
            .map(|_| {
                let (client, key, ctx, blob) = (client.clone(), key.clone(), ctx.clone(), blob.clone());
                std::thread::spawn(move || -> Result<Vec<Duration>, String> {
                    let mut latencies = Vec::new();
                    while Instant::now() < deadline {
                        let start = Instant::now();
                        let r = match op {
                            "GenerateDataKey" => client
                                .generate_data_key(&key, DataKeySpec::Aes256, &ctx)
                                .map(drop),
                            _ => client.decrypt(blob.as_bytes(), &ctx).map(drop),
                        };
                        r.map_err(|e| e.to_string())?;
                        latencies.push(start.elapsed());
                    }
                    Ok(latencies)
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in threads {
            all.extend(t.join().map_err(|_| "a client thread panicked")??);
        }
        all.sort();
        let n = all.len();
        let pct = |p: f64| {
            all.get(((n as f64 * p) as usize).min(n.saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        let per_sec = n as f64 / seconds as f64;
        println!(
            "{op:<16} {per_sec:>9.0} requests/s   p50 {:>7.2} ms   p99 {:>7.2} ms   ({} clients, {seconds} s)",
            pct(0.50).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            args.clients
        );
        results.insert(
            op.to_owned(),
            serde_json::json!({
                "requests_per_second": per_sec.round(),
                "p50_ms": pct(0.50).as_secs_f64() * 1e3,
                "p99_ms": pct(0.99).as_secs_f64() * 1e3,
            }),
        );
    }
    let records = kms.audit_trail()?.len();
    println!("{records} requests recorded in the audit trail (group commit); CPU: {cpu}");
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "clients": args.clients,
                "seconds": seconds,
                "cpu": cpu,
                "operations": results,
                "audit_records": records,
            })
        );
    }
    Ok(())
}

#[cfg(not(all(feature = "server", feature = "aws-kms")))]
pub(crate) fn run(_args: ServeArgs) -> CliResult {
    Err("`tde bench kms-serve` needs tde built with the `server` and `aws-kms` features".into())
}
