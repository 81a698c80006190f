//! The bare primitive beside tde, measured in the same run as a bench: the suite's AEAD
//! sealing and opening, called directly (no tde code: AES-256-GCM with this build's
//! backend, SM4-GCM with `aes-gcm` over `sm4`, AEGIS-256 with the `aegis` crate), and a
//! memory copy of the same size. From them, each workload's limit: the ratio a store
//! would reach if the only cost it added to the plain system were the AEAD work the
//! workload cannot avoid (its bytes sealed and opened once, at the primitive's speed).

use std::time::{Duration, Instant};

use serde_json::json;
use tde::cipher::Suite;

/// Speeds at one message size, in bytes per second.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Speed {
    pub(crate) bytes: usize,
    pub(crate) seal: f64,
    pub(crate) open: f64,
    pub(crate) copy: f64,
}

/// How long one window of measurement lasts, and how many windows there are.
const SPAN: Duration = Duration::from_millis(40);
const WINDOWS: usize = 7;

/// Runs `f` repeatedly in [`WINDOWS`] windows of about [`SPAN`]; returns the calls per
/// second of the fastest window. The primitive's speed is what it can reach: on a shared
/// machine, a slower window measures the neighbours, not the primitive.
fn rate(mut f: impl FnMut()) -> f64 {
    for _ in 0..16 {
        f();
    }
    let mut best = 0.0f64;
    for _ in 0..WINDOWS {
        let start = Instant::now();
        let mut calls = 0u64;
        while start.elapsed() < SPAN {
            for _ in 0..16 {
                f();
            }
            calls += 16;
        }
        best = best.max(calls as f64 / start.elapsed().as_secs_f64());
    }
    best
}

/// AES-256-GCM in place: seals per second, and (copy of a sealed message into the
/// buffer, then open) pairs per second, so every open authenticates real ciphertext.
#[cfg(feature = "aws-lc")]
fn gcm(bytes: usize) -> (f64, f64) {
    use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).unwrap_or_else(|_| unreachable!()));
    let nonce = || Nonce::assume_unique_for_key([9u8; 12]);
    let mut buf = vec![0x5au8; bytes];
    let seal = rate(|| {
        let tag = key.seal_in_place_separate_tag(nonce(), Aad::from(b"aad"), &mut buf);
        std::hint::black_box(tag.is_ok());
    });
    let mut sealed = vec![0x5au8; bytes];
    let tag = key
        .seal_in_place_separate_tag(nonce(), Aad::from(b"aad"), &mut sealed)
        .unwrap_or_else(|_| unreachable!());
    let pair = rate(|| {
        buf.copy_from_slice(&sealed);
        let opened = key.open_in_place_separate_tag(nonce(), Aad::from(b"aad"), tag.as_ref(), &mut buf);
        assert!(opened.is_ok(), "the primitive failed to open what it sealed");
    });
    (seal, pair)
}

#[cfg(not(feature = "aws-lc"))]
fn gcm(bytes: usize) -> (f64, f64) {
    rustcrypto::<aes_gcm::Aes256Gcm>(&[7u8; 32], bytes)
}

/// SM4-GCM, measured as [`gcm`] measures AES-256-GCM.
fn sm4(bytes: usize) -> (f64, f64) {
    rustcrypto::<aes_gcm::AesGcm<sm4::Sm4, aes_gcm::aead::consts::U12>>(&[7u8; 16], bytes)
}

/// A GCM of RustCrypto's `aes-gcm` crate (96-bit nonces), measured as [`gcm`] measures
/// AES-256-GCM.
fn rustcrypto<A>(key: &[u8], bytes: usize) -> (f64, f64)
where
    A: aes_gcm::AeadInOut + aes_gcm::KeyInit + aes_gcm::AeadCore<NonceSize = aes_gcm::aead::consts::U12>,
{
    let key = A::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    let nonce = aes_gcm::Nonce::<aes_gcm::aead::consts::U12>::from([9u8; 12]);
    let mut buf = vec![0x5au8; bytes];
    let seal = rate(|| {
        let tag = key.encrypt_inout_detached(&nonce, b"aad", buf.as_mut_slice().into());
        std::hint::black_box(tag.is_ok());
    });
    let mut sealed = vec![0x5au8; bytes];
    let tag = key
        .encrypt_inout_detached(&nonce, b"aad", sealed.as_mut_slice().into())
        .unwrap_or_else(|_| unreachable!());
    let pair = rate(|| {
        buf.copy_from_slice(&sealed);
        let opened = key.decrypt_inout_detached(&nonce, b"aad", buf.as_mut_slice().into(), &tag);
        assert!(opened.is_ok(), "the primitive failed to open what it sealed");
    });
    (seal, pair)
}

/// AEGIS-256, measured as [`gcm`] measures AES-256-GCM.
fn aegis256(bytes: usize) -> (f64, f64) {
    use aegis::aegis256::Aegis256;
    let (key, nonce) = ([7u8; 32], [9u8; 32]);
    let mut buf = vec![0x5au8; bytes];
    let seal = rate(|| {
        std::hint::black_box(Aegis256::<16>::new(&key, &nonce).encrypt_in_place(&mut buf, b"aad"));
    });
    let mut sealed = vec![0x5au8; bytes];
    let tag = Aegis256::<16>::new(&key, &nonce).encrypt_in_place(&mut sealed, b"aad");
    let pair = rate(|| {
        buf.copy_from_slice(&sealed);
        let opened = Aegis256::<16>::new(&key, &nonce).decrypt_in_place(&mut buf, &tag, b"aad");
        assert!(opened.is_ok(), "the primitive failed to open what it sealed");
    });
    (seal, pair)
}

/// The name of the primitive measured for `suite`.
pub(crate) fn name(suite: Suite) -> String {
    match suite {
        Suite::Aes256Gcm => format!("AES-256-GCM ({})", crate::bench::backend()),
        Suite::Sm4Gcm => "SM4-GCM (aes-gcm)".into(),
        _ => "AEGIS-256 (aegis)".into(),
    }
}

/// The primitive's and a memory copy's speed at `bytes` per call.
pub(crate) fn measure(bytes: usize, suite: Suite) -> Speed {
    let (seal, copy_and_open) = match suite {
        Suite::Aes256Gcm => gcm(bytes),
        Suite::Sm4Gcm => sm4(bytes),
        _ => aegis256(bytes),
    };
    let src = vec![0xa5u8; bytes];
    let mut dst = vec![0u8; bytes];
    let copy = rate(|| {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
    });
    // An open alone: the pair's time less the copy's, never less than half the pair's.
    let open = 1.0 / (1.0 / copy_and_open - 1.0 / copy).max(0.5 / copy_and_open);
    let b = bytes as f64;
    Speed {
        bytes,
        seal: seal * b,
        open: open * b,
        copy: copy * b,
    }
}

/// The speeds at each of `sizes`, printed on one line each.
pub(crate) fn measure_all(sizes: &[usize], suite: Suite) -> Vec<Speed> {
    let speeds: Vec<Speed> = sizes.iter().map(|&b| measure(b, suite)).collect();
    for s in &speeds {
        println!(
            "bare {}, {:>5} B: seal {:.2} GB/s, open {:.2} GB/s; memory copy {:.2} GB/s",
            name(suite),
            s.bytes,
            s.seal / 1e9,
            s.open / 1e9,
            s.copy / 1e9
        );
    }
    speeds
}

/// Prints each workload's limit on one line.
pub(crate) fn print_limits(workloads: &[&str], limits: &serde_json::Map<String, serde_json::Value>) {
    println!(
        "limits set by the bare primitive: {}",
        workloads
            .iter()
            .map(|w| format!("{w} {}", limits[*w]))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// The JSON `primitive` object: what was measured, and per size, GB/s.
pub(crate) fn json(speeds: &[Speed], suite: Suite) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    out.insert("backend".into(), json!(crate::bench::backend()));
    out.insert("primitive".into(), json!(name(suite)));
    for s in speeds {
        out.insert(
            s.bytes.to_string(),
            json!({
                "seal_gb_per_sec": round3(s.seal / 1e9),
                "open_gb_per_sec": round3(s.open / 1e9),
                "copy_gb_per_sec": round3(s.copy / 1e9),
            }),
        );
    }
    serde_json::Value::Object(out)
}

/// The limit a workload's unavoidable AEAD work sets: the plain system does `plain_ops`
/// operations a second, and each operation must also seal `sealed` bytes and open
/// `opened` bytes at the primitive's speed `speed`.
pub(crate) fn limit(plain_ops: f64, sealed: f64, opened: f64, speed: &Speed) -> f64 {
    if plain_ops <= 0.0 {
        return 1.0;
    }
    let plain = 1.0 / plain_ops;
    let crypto = sealed / speed.seal + opened / speed.open;
    round3(plain / (plain + crypto))
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Bytes this process has read and written through system calls so far (Linux:
/// `/proc/self/io`, `rchar` and `wchar`); `(0, 0)` where that is not available.
pub(crate) fn io_bytes() -> (u64, u64) {
    let Ok(text) = std::fs::read_to_string("/proc/self/io") else {
        return (0, 0);
    };
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (field("rchar:"), field("wchar:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workload_without_crypto_is_at_one() {
        let s = Speed {
            bytes: 4096,
            seal: 1e9,
            open: 2e9,
            copy: 1e10,
        };
        assert_eq!(limit(1e6, 0.0, 0.0, &s), 1.0);
        // 1 µs of plain work and 4096 B opened at 2 GB/s (2.048 µs): 1 / 3.048.
        assert_eq!(limit(1e6, 0.0, 4096.0, &s), round3(1.0 / 3.048));
        assert_eq!(limit(1e6, 1000.0, 0.0, &s), round3(1.0 / 2.0));
    }

    #[test]
    fn the_primitive_is_measured() {
        let s = measure(4096, Suite::Aes256Gcm);
        assert!(s.seal > 0.0 && s.open > 0.0 && s.copy > 0.0);
        let s = measure(4096, Suite::Aegis256);
        assert!(s.seal > 0.0 && s.open > 0.0 && s.copy > 0.0);
    }
}
