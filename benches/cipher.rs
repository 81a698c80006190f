//! Seal and open throughput per suite (AES-256-GCM, SM4-GCM, AEGIS-256) and backend:
//! 100-byte values (a typical key-value row, where per-call setup dominates) and 4 KiB and
//! 16 KiB buffers.
//!
//! Each group also runs a bare AEAD crate called directly (`raw/...`: in place, fixed
//! nonce; `raw/aes-256-gcm/rustcrypto` is the `aes-gcm` crate) beside tde's sealed format
//! (fresh nonce, header, copy into the output buffer), so the cost of tde's layer is a
//! ratio from one run, independent of how fast this machine happens to be today.
//!
//! `cargo bench --bench cipher` (both AES backends: aws-lc-rs, the default, and
//! RustCrypto's `aes-gcm`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tde::cipher::{AeadKey, Backend, Suite};
use tde::secret::DataKey;

const SIZES: [usize; 3] = [100, 4 * 1024, 16 * 1024];

fn label(size: usize) -> String {
    if size.is_multiple_of(1024) {
        format!("{}KiB", size / 1024)
    } else {
        format!("{size}B")
    }
}

fn variants() -> Vec<(&'static str, Suite, Backend)> {
    #[allow(unused_mut)]
    let mut v = vec![
        ("aes-256-gcm/rustcrypto", Suite::Aes256Gcm, Backend::RustCrypto),
        ("sm4-gcm/rustcrypto", Suite::Sm4Gcm, Backend::RustCrypto),
        ("aegis-256", Suite::Aegis256, Backend::default()),
    ];
    #[cfg(feature = "aws-lc")]
    v.insert(1, ("aes-256-gcm/aws-lc", Suite::Aes256Gcm, Backend::AwsLc));
    v
}

fn bench(c: &mut Criterion) {
    let aad = b"store=s1 table=users key=0000000000000042";
    for (op, sealing) in [("seal", true), ("open", false)] {
        let mut group = c.benchmark_group(op);
        group
            .measurement_time(Duration::from_secs(2))
            .warm_up_time(Duration::from_millis(500));
        for (name, suite, backend) in variants() {
            let dk = DataKey::generate(suite.key_len()).expect("key");
            let key = AeadKey::with_backend(suite, 1, &dk, backend).expect("key");
            for size in SIZES {
                let plain = vec![0x5au8; size];
                let sealed = key.seal(aad, &plain).expect("seal");
                let mut out = Vec::with_capacity(size + tde::cipher::OVERHEAD);
                group.throughput(Throughput::Bytes(size as u64));
                group.bench_function(format!("{name}/{}", label(size)), |b| {
                    b.iter(|| {
                        out.clear();
                        if sealing {
                            key.seal_into(aad, black_box(&plain), &mut out).expect("seal");
                        } else {
                            key.open_into(aad, black_box(&sealed), &mut out).expect("open");
                        }
                        black_box(out.len())
                    })
                });
            }
        }
        raw(&mut group, sealing);
        group.finish();
    }
}

/// The primitives alone, for the ratio.
fn raw(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, sealing: bool) {
    use aes_gcm::{AeadInOut, Aes256Gcm, KeyInit, Nonce};
    let aad = b"store=s1 table=users key=0000000000000042";
    let cipher = Aes256Gcm::new_from_slice(&[7u8; 32]).expect("key");
    let nonce = Nonce::from([1u8; 12]);
    for size in SIZES {
        let mut buf = vec![0x5au8; size];
        let tag = cipher
            .encrypt_inout_detached(&nonce, aad, (&mut buf[..]).into())
            .expect("seal");
        let sealed = buf.clone();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("raw/aes-256-gcm/rustcrypto/{}", label(size)), |b| {
            b.iter(|| {
                if sealing {
                    let _tag = black_box(
                        cipher
                            .encrypt_inout_detached(&nonce, aad, (&mut buf[..]).into())
                            .expect("seal"),
                    );
                } else {
                    buf.copy_from_slice(&sealed);
                    cipher
                        .decrypt_inout_detached(&nonce, aad, (&mut buf[..]).into(), &tag)
                        .expect("open");
                }
            })
        });
        {
            use aegis::aegis256::Aegis256;
            let (key, nonce) = ([7u8; 32], [1u8; 32]);
            let mut buf = vec![0x5au8; size];
            let tag = Aegis256::<16>::new(&key, &nonce).encrypt_in_place(&mut buf, aad);
            let sealed = buf.clone();
            group.bench_function(format!("raw/aegis-256/{}", label(size)), |b| {
                b.iter(|| {
                    let cipher = Aegis256::<16>::new(&key, &nonce);
                    if sealing {
                        black_box(cipher.encrypt_in_place(&mut buf, aad));
                    } else {
                        buf.copy_from_slice(&sealed);
                        cipher.decrypt_in_place(&mut buf, &tag, aad).expect("open");
                    }
                })
            });
        }
        #[cfg(feature = "aws-lc")]
        {
            use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce as AwsNonce, UnboundKey};
            let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).expect("key"));
            let tag = key
                .seal_in_place_separate_tag(
                    AwsNonce::assume_unique_for_key([1u8; 12]),
                    Aad::from(aad),
                    &mut buf,
                )
                .expect("seal");
            let sealed = buf.clone();
            group.bench_function(format!("raw/aes-256-gcm/aws-lc/{}", label(size)), |b| {
                b.iter(|| {
                    let n = AwsNonce::assume_unique_for_key([1u8; 12]);
                    if sealing {
                        let _tag = black_box(
                            key.seal_in_place_separate_tag(n, Aad::from(aad), &mut buf)
                                .expect("seal"),
                        );
                    } else {
                        buf.copy_from_slice(&sealed);
                        key.open_in_place_separate_tag(n, Aad::from(aad), tag.as_ref(), &mut buf)
                            .expect("open");
                    }
                })
            });
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
