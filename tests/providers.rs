//! The conformance suite every KMS provider passes, one test body: generate and decrypt
//! with a context, a context mismatch refused, a stopped key refused with a typed error,
//! an unreachable server reported as retryable, throttling retried, re-encryption,
//! describe, and a store created, filled and reopened through the provider. Then a store
//! migrated across every provider with its data readable throughout.
//!
//! The local KMS runs everywhere. The others run when their feature is built and need
//! their server, which `.ci/run` starts on 127.0.0.1: OpenBao (`TDE_TEST_VAULT_ADDR`,
//! `VAULT_TOKEN`, Transit mounted at `transit`), moto (`TDE_TEST_AWS_ENDPOINT`, with
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`) and SoftHSM2 for PKCS#11
//! (`TDE_TEST_PKCS11_MODULE`, `TDE_TEST_PKCS11_TOKEN`, `TDE_PKCS11_PIN`, `SOFTHSM2_CONF`:
//! a token initialised for the run), PyKMIP for KMIP (`TDE_TEST_KMIP_ADDR` = HOST:PORT
//! and `TDE_TEST_KMIP_CERTS`, a directory with `ca.pem`, `client.pem`, `client.key` and
//! `rogue.pem`, `rogue.key` from another CA, made for the run). A built provider whose
//! server is not configured fails, it is not skipped.

mod common;

use std::sync::Arc;

use tde::cipher::{AeadKey, Suite};
use tde::kms::local::{CreateKeyOptions, LocalKms};
use tde::kms::{DataKeySpec, EncryptionContext, KeyState, Kms, KmsErrorKind};
use tde::kv::{Store, StoreOptions, TableOptions};
use tde::testing::{FaultyKms, KmsOp};

/// Stops a master key the provider's own way.
type Stop = Box<dyn Fn(&str)>;

/// A provider under test.
struct Provider {
    name: &'static str,
    kms: Arc<dyn Kms>,
    /// Two master keys the suite may use.
    key: String,
    key2: String,
    /// Stops `key` the provider's own way, after `blob` was wrapped under it; `None` if
    /// the provider's test server cannot (said when skipped).
    stop: Option<Stop>,
    /// The same provider pointed at a server that is not there.
    unreachable: Arc<dyn Kms>,
    _tmp: tempfile::TempDir,
}

fn ctx(table: &str) -> EncryptionContext {
    EncryptionContext::new()
        .with("tde:store", "conformance")
        .with("tde:table", table)
}

fn unique(prefix: &str) -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).unwrap();
    format!("{prefix}-{}", common::hex(&bytes))
}

#[cfg(any(feature = "vault", feature = "aws-kms", feature = "pkcs11", feature = "kmip"))]
fn env(name: &str, what: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| panic!("{what}: set {name} (`.ci/run` starts the server and sets it)"))
}

fn local() -> Provider {
    let tmp = tempfile::tempdir().unwrap();
    let kms = Arc::new(LocalKms::create(tmp.path().join("kms")).unwrap());
    let create = |alias: &str| {
        kms.create_key(&CreateKeyOptions {
            alias: Some(alias.into()),
            ..CreateKeyOptions::default()
        })
        .unwrap()
        .key_id
    };
    let (key, key2) = (create("alias/one"), create("alias/two"));
    let stopper = kms.clone();
    let down = Arc::new(FaultyKms::new(kms.clone()));
    down.set_outage(true);
    Provider {
        name: "local",
        kms,
        key,
        key2,
        stop: Some(Box::new(move |key| {
            stopper.disable_key(key).unwrap();
        })),
        unreachable: down,
        _tmp: tmp,
    }
}

#[cfg(feature = "vault")]
fn vault() -> Provider {
    use tde::kms::vault::VaultTransit;
    let addr = env("TDE_TEST_VAULT_ADDR", "the vault-transit provider");
    env("VAULT_TOKEN", "the vault-transit provider");
    let transit = Arc::new(VaultTransit::connect(Some(&addr), None, None).unwrap());
    let key = transit.create_key(&unique("tde-one")).unwrap();
    let key2 = transit.create_key(&unique("tde-two")).unwrap();
    let admin = transit.clone();
    Provider {
        name: "vault-transit",
        kms: transit,
        key,
        key2,
        // Transit has no disabled state: a version is stopped by raising the key's
        // min_decryption_version above it.
        stop: Some(Box::new(move |key| {
            admin.rotate_key(key).unwrap();
            admin.set_min_decryption_version(key, 2).unwrap();
        })),
        unreachable: Arc::new(VaultTransit::connect(Some("http://127.0.0.1:1"), None, None).unwrap()),
        _tmp: tempfile::tempdir().unwrap(),
    }
}

#[cfg(feature = "aws-kms")]
fn aws() -> Provider {
    use tde::kms::aws::AwsKms;
    let endpoint = env("TDE_TEST_AWS_ENDPOINT", "the aws-kms provider");
    let kms = Arc::new(AwsKms::connect(Some("us-east-1"), Some(&endpoint)).unwrap());
    let key = kms
        .create_key(Some(&format!("alias/{}", unique("tde-one"))), None)
        .unwrap();
    let key2 = kms.create_key(None, None).unwrap();
    Provider {
        name: "aws-kms (moto)",
        kms,
        key,
        key2,
        // moto does not enforce key state (a disabled key still decrypts there).
        stop: None,
        unreachable: Arc::new(AwsKms::connect(Some("us-east-1"), Some("http://127.0.0.1:1")).unwrap()),
        _tmp: tempfile::tempdir().unwrap(),
    }
}

#[cfg(feature = "pkcs11")]
fn pkcs11() -> Provider {
    use tde::kms::pkcs11::Pkcs11Kms;
    let module = env("TDE_TEST_PKCS11_MODULE", "the pkcs11 provider");
    let token = env("TDE_TEST_PKCS11_TOKEN", "the pkcs11 provider");
    let uri = tde::kms::KmsUri::parse(&format!("pkcs11:token={token}?module-path={module}")).unwrap();
    let hsm = Arc::new(Pkcs11Kms::open(&uri).unwrap());
    let key = hsm.create_key(&unique("tde-one")).unwrap();
    let key2 = hsm.create_key(&unique("tde-two")).unwrap();
    let admin = hsm.clone();
    // A token cannot be taken away in a test: the outage is injected.
    let down = Arc::new(FaultyKms::new(hsm.clone()));
    down.set_outage(true);
    Provider {
        name: "pkcs11 (SoftHSM2)",
        kms: hsm,
        key,
        key2,
        stop: Some(Box::new(move |key| admin.set_enabled(key, false).unwrap())),
        unreachable: down,
        _tmp: tempfile::tempdir().unwrap(),
    }
}

/// The `kmip://` URI of the test server, with the client certificate `who`.
#[cfg(feature = "kmip")]
fn kmip_uri(who: &str) -> String {
    let addr = env("TDE_TEST_KMIP_ADDR", "the kmip provider");
    let certs = env("TDE_TEST_KMIP_CERTS", "the kmip provider");
    format!("kmip://{addr}?cert={certs}/{who}.pem&key={certs}/{who}.key&ca={certs}/ca.pem")
}

#[cfg(feature = "kmip")]
fn kmip() -> Provider {
    use tde::kms::kmip::KmipKms;
    let open = |uri: &str| KmipKms::open(&tde::kms::KmsUri::parse(uri).unwrap()).unwrap();
    let server = Arc::new(open(&kmip_uri("client")));
    let key = unique("tde-one");
    server.create_key(&key).unwrap();
    let key2 = unique("tde-two");
    server.create_key(&key2).unwrap();
    let admin = server.clone();
    let certs = env("TDE_TEST_KMIP_CERTS", "the kmip provider");
    let nowhere =
        format!("kmip://127.0.0.1:1?cert={certs}/client.pem&key={certs}/client.key&ca={certs}/ca.pem");
    Provider {
        name: "kmip (PyKMIP)",
        kms: server,
        key,
        key2,
        // Revoked: no longer Active, and PyKMIP refuses to decrypt with it.
        stop: Some(Box::new(move |key| admin.revoke_key(key).unwrap())),
        unreachable: Arc::new(open(&nowhere)),
        _tmp: tempfile::tempdir().unwrap(),
    }
}

/// The one body every provider passes.
fn conformance(p: &Provider) {
    let kms = &p.kms;
    // Generate, and decrypt with the same context.
    let dk = kms
        .generate_data_key(&p.key, DataKeySpec::Aes256, &ctx("a"))
        .unwrap();
    let again = kms
        .decrypt_data_key(&dk.wrapped, DataKeySpec::Aes256, &ctx("a"))
        .unwrap();
    assert_eq!(dk.plaintext.len(), 32);
    // The same key: what one seals, the other opens.
    let sealed = AeadKey::new(Suite::Aes256Gcm, 1, &dk.plaintext)
        .unwrap()
        .seal(b"ad", b"data")
        .unwrap();
    let opened = AeadKey::new(Suite::Aes256Gcm, 1, &again)
        .unwrap()
        .open(b"ad", &sealed);
    assert_eq!(opened.unwrap(), b"data", "{}", p.name);
    let plain = kms.decrypt(dk.wrapped.as_bytes(), &ctx("a")).unwrap();
    // Another context is refused.
    let err = kms.decrypt(dk.wrapped.as_bytes(), &ctx("b")).unwrap_err();
    assert_eq!(err.kind(), KmsErrorKind::InvalidCiphertext, "{}: {err}", p.name);
    // A damaged blob is refused.
    let mut damaged = dk.wrapped.as_bytes().to_vec();
    let last = damaged.len() - 3;
    damaged[last] ^= 0x01;
    assert!(kms.decrypt(&damaged, &ctx("a")).is_err(), "{}", p.name);
    // Direct encryption of a small secret.
    let blob = kms.encrypt(&p.key, b"s3cret", &ctx("c")).unwrap();
    assert_eq!(kms.decrypt(&blob, &ctx("c")).unwrap().expose(), b"s3cret");
    // Re-encryption under another key: the same plaintext.
    let moved = kms
        .re_encrypt(dk.wrapped.as_bytes(), &ctx("a"), &p.key2, &ctx("a"))
        .unwrap();
    assert_eq!(kms.decrypt(&moved, &ctx("a")).unwrap().expose(), plain.expose());
    // Describe.
    let meta = kms.describe_key(&p.key).unwrap();
    assert_eq!(meta.state, KeyState::Enabled, "{}", p.name);
    let err = kms.describe_key(&unique("alias/no-such-key")).unwrap_err();
    assert_eq!(err.kind(), KmsErrorKind::NotFound, "{}: {err}", p.name);
    // The server is not there: unavailable, which a retry may cure.
    let err = p.unreachable.describe_key(&p.key).unwrap_err();
    assert_eq!(err.kind(), KmsErrorKind::Unavailable, "{}: {err}", p.name);
    assert!(err.is_retryable());

    // A store on the provider: one unwrap per data key at open, throttling retried.
    let tmp = tempfile::tempdir().unwrap();
    let counted = Arc::new(FaultyKms::new(kms.clone()));
    let options = || StoreOptions::new(counted.clone()).default_key(p.key.clone());
    let store = Store::create(tmp.path().join("db"), options()).unwrap();
    for table in ["a", "b"] {
        let t = store.create_table(table, &TableOptions::default()).unwrap();
        t.put("k", format!("{table} on {}", p.name)).unwrap();
    }
    drop(store);
    counted.reset_calls();
    counted.throttle_next(2);
    let store = Store::open(tmp.path().join("db"), options()).unwrap();
    assert_eq!(
        counted.calls(KmsOp::Decrypt),
        3 + 2,
        "one unwrap per data key, plus the retries"
    );
    assert_eq!(
        store.table("b").unwrap().get("k").unwrap().unwrap(),
        format!("b on {}", p.name).as_bytes()
    );
    drop(store);

    // A stopped key: a typed refusal.
    match &p.stop {
        Some(stop) => {
            stop(&p.key);
            let err = kms.decrypt(dk.wrapped.as_bytes(), &ctx("a")).unwrap_err();
            assert!(
                matches!(
                    err.kind(),
                    KmsErrorKind::Disabled | KmsErrorKind::AccessDenied | KmsErrorKind::PendingDeletion
                ),
                "{}: {err}",
                p.name
            );
            assert!(!err.is_retryable());
        }
        None => eprintln!(
            "{}: skipped the stopped-key case: this test server does not enforce key state",
            p.name
        ),
    }
}

#[test]
fn the_local_kms_conforms() {
    conformance(&local());
}

#[cfg(feature = "vault")]
#[test]
fn vault_transit_conforms() {
    conformance(&vault());
}

#[cfg(feature = "pkcs11")]
#[test]
fn pkcs11_conforms() {
    conformance(&pkcs11());
}

#[cfg(feature = "aws-kms")]
#[test]
fn aws_kms_conforms() {
    conformance(&aws());
}

#[cfg(feature = "kmip")]
#[test]
fn kmip_conforms() {
    conformance(&kmip());
}

/// What only KMIP has: a destroyed key is not found, and the server's mutual TLS refuses
/// a client whose certificate it does not trust (no retry can cure it).
#[cfg(feature = "kmip")]
#[test]
fn kmip_destroy_and_mutual_tls() {
    use tde::kms::kmip::KmipKms;
    let p = kmip();
    let blob = p.kms.encrypt(&p.key2, b"secret", &ctx("x")).unwrap();
    let server = KmipKms::open(&tde::kms::KmsUri::parse(&kmip_uri("client")).unwrap()).unwrap();
    server.destroy_key(&p.key2).unwrap();
    let err = p.kms.decrypt(&blob, &ctx("x")).unwrap_err();
    assert_eq!(err.kind(), KmsErrorKind::NotFound, "{err}");
    let err = server.describe_key(&p.key2).unwrap_err();
    assert_eq!(err.kind(), KmsErrorKind::NotFound, "{err}");
    // A client certificate from another CA: the handshake is refused.
    let rogue = KmipKms::open(&tde::kms::KmsUri::parse(&kmip_uri("rogue")).unwrap()).unwrap();
    let err = rogue.describe_key(&p.key).unwrap_err();
    assert_eq!(err.kind(), KmsErrorKind::AccessDenied, "{err}");
    assert!(!err.is_retryable());
    // And tde cannot be pointed at a KMIP server without a client certificate.
    let addr = env("TDE_TEST_KMIP_ADDR", "the kmip provider");
    let err = tde::kms::KmsUri::parse(&format!("kmip://{addr}?ca=/x/ca.pem")).unwrap_err();
    assert!(err.to_string().contains("mutual TLS"), "{err}");
}

/// A store moves across every provider built, online, its data readable after each move
/// and after each reopen.
#[test]
fn a_store_migrates_across_every_provider() {
    let first = local();
    #[allow(unused_mut)]
    let mut chain = vec![first];
    #[cfg(feature = "vault")]
    chain.push(vault());
    #[cfg(feature = "kmip")]
    chain.push(kmip());
    #[cfg(feature = "pkcs11")]
    chain.push(pkcs11());
    #[cfg(feature = "aws-kms")]
    chain.push(aws());
    chain.push(local());

    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("db");
    let store = Store::create(
        &path,
        StoreOptions::new(chain[0].kms.clone()).default_key(chain[0].key.clone()),
    )
    .unwrap();
    let t = store.create_table("t", &TableOptions::default()).unwrap();
    t.put("k", "travels").unwrap();
    drop(t);
    for next in &chain[1..] {
        store.migrate(next.kms.clone(), &next.key, None).unwrap();
        assert_eq!(store.table("t").unwrap().get("k").unwrap().unwrap(), b"travels");
    }
    drop(store);
    let last = chain.last().unwrap();
    let store = Store::open(&path, StoreOptions::new(last.kms.clone())).unwrap();
    assert_eq!(store.table("t").unwrap().get("k").unwrap().unwrap(), b"travels");
    assert_eq!(store.recorded_kms(), last.kms.describe());
}

/// The command line with `--kms` naming each external provider: a store created on
/// OpenBao Transit, written, backed up and verified deeply, migrated to AWS KMS (moto)
/// online, and read again; `tde kms` verbs the provider has, and a clear refusal of the
/// others.
#[cfg(all(feature = "vault", feature = "aws-kms"))]
#[test]
fn the_command_line_works_with_every_provider() {
    let cli = common::Cli::new();
    let vault = format!(
        "vault-transit:{}",
        env("TDE_TEST_VAULT_ADDR", "the vault-transit provider")
    );
    let aws = format!(
        "aws-kms:?region=us-east-1&endpoint={}",
        env("TDE_TEST_AWS_ENDPOINT", "the aws-kms provider")
    );
    let db = cli.path("db");
    let err = cli.fails(&["--kms", &vault, "db", "create", &db]);
    assert!(err.contains("--default-key"), "{err}");
    let name = unique("cli");
    assert_eq!(
        cli.ok(&["--kms", &vault, "kms", "create-key", "--alias", &name])
            .trim(),
        name
    );
    cli.ok(&["--kms", &vault, "db", "create", &db, "--default-key", &name]);
    // The store records the URI: later commands need no --kms.
    cli.ok(&["table", "create", &db, "t"]);
    cli.ok(&["put", &db, "t", "k", "on transit"]);
    assert_eq!(cli.ok(&["get", &db, "t", "k"]), "on transit\n");
    let dest = cli.path("backups");
    cli.ok(&["backup", "create", &db, &dest]);
    assert!(
        cli.ok(&["backup", "verify", &dest, "--deep"])
            .contains("1 records authenticated")
    );
    let alias = format!("alias/{name}");
    cli.ok(&["--kms", &aws, "kms", "create-key", "--alias", &alias]);
    // The backup taken on Transit, rewrapped for AWS without touching its data files,
    // restores with AWS alone.
    cli.ok(&["backup", "rewrap", &dest, "--to-kms", &aws, "--to-key", &alias]);
    let restored = cli.path("restored");
    cli.ok(&["backup", "restore", &dest, &restored]);
    assert_eq!(cli.ok(&["get", &restored, "t", "k"]), "on transit\n");
    cli.ok(&["migrate", &db, "--to-kms", &aws, "--to-key", &alias]);
    assert_eq!(cli.ok(&["get", &db, "t", "k"]), "on transit\n");
    // A tablespace on a provider: created under a named key, verified, backed up and
    // deeply verified, rotated and re-encrypted.
    let ts = cli.path("pages.tdb");
    let err = cli.fails(&["--kms", &vault, "page", "create", &ts]);
    assert!(err.contains("--key"), "{err}");
    cli.ok(&[
        "--kms",
        &vault,
        "page",
        "create",
        &ts,
        "--key",
        &name,
        "--page-size",
        "4k",
    ]);
    cli.ok(&["page", "verify", &ts]);
    let ts_dest = cli.path("ts-backups");
    cli.ok(&["backup", "create", &ts, &ts_dest]);
    assert!(
        cli.ok(&["backup", "verify", &ts_dest, "--deep"])
            .contains("records authenticated")
    );
    cli.ok(&["rotate", &ts, "--data"]);
    assert!(cli.ok(&["reencrypt", &ts, "--wait"]).contains("retired:"));
    assert!(
        cli.ok(&["audit", "verify", &ts, "--deep"])
            .contains("authenticated")
    );
    let described = cli.ok(&["--kms", &vault, "kms", "describe", &name]);
    assert!(described.contains("\"state\": \"Enabled\""), "{described}");
    cli.ok(&["--kms", &vault, "kms", "rotate", &name]);
    let described = cli.ok(&["--kms", &vault, "kms", "describe", &name]);
    assert!(described.contains("\"primary_version\": 2"), "{described}");
    let err = cli.fails(&["--kms", &vault, "kms", "disable", &name]);
    assert!(err.contains("not supported by vault-transit"), "{err}");
    let err = cli.fails(&["--kms", &aws, "kms", "list"]);
    assert!(err.contains("not supported by aws-kms"), "{err}");
    // Direct encryption through a provider.
    let blob = cli.run(&["--kms", &aws, "kms", "encrypt", &alias], b"small secret");
    assert!(blob.status.success());
    let plain = cli.run(&["--kms", &aws, "kms", "decrypt"], &blob.stdout);
    assert_eq!(plain.stdout, b"small secret");
    cli.ok(&["--kms", &aws, "kms", "disable", &alias]);
    let described = cli.ok(&["--kms", &aws, "kms", "describe", &alias]);
    assert!(described.contains("\"state\": \"Disabled\""), "{described}");
    cli.ok(&["--kms", &aws, "kms", "enable", &alias]);
    #[cfg(feature = "pkcs11")]
    {
        // A key made on the token, the store moved there, read back; the PIN comes from
        // the environment and is recorded nowhere.
        let hsm = format!(
            "pkcs11:token={}?module-path={}",
            env("TDE_TEST_PKCS11_TOKEN", "the pkcs11 provider"),
            env("TDE_TEST_PKCS11_MODULE", "the pkcs11 provider")
        );
        let label = unique("cli");
        cli.ok(&["--kms", &hsm, "kms", "create-key", "--alias", &label]);
        cli.ok(&["migrate", &db, "--to-kms", &hsm, "--to-key", &label]);
        assert_eq!(cli.ok(&["get", &db, "t", "k"]), "on transit\n");
        // The emergency stop: a disabled key on the token, and the store does not open.
        cli.ok(&["--kms", &hsm, "kms", "disable", &label]);
        let err = cli.fails(&["get", &db, "t", "k"]);
        assert!(err.contains("key disabled"), "{err}");
        cli.ok(&["--kms", &hsm, "kms", "enable", &label]);
        assert_eq!(cli.ok(&["get", &db, "t", "k"]), "on transit\n");
    }
    #[cfg(feature = "kmip")]
    {
        // A key made on the KMIP server, the store moved there; revoking the key stops
        // the store, and KMIP's immediate destroy is not offered as a scheduled deletion.
        let kmip = kmip_uri("client");
        let name = unique("cli");
        cli.ok(&["--kms", &kmip, "kms", "create-key", "--alias", &name]);
        cli.ok(&["migrate", &db, "--to-kms", &kmip, "--to-key", &name]);
        assert_eq!(cli.ok(&["get", &db, "t", "k"]), "on transit\n");
        let described = cli.ok(&["--kms", &kmip, "kms", "describe", &name]);
        assert!(described.contains("KMIP state: Active"), "{described}");
        let err = cli.fails(&["--kms", &kmip, "kms", "schedule-deletion", &name]);
        assert!(err.contains("no waiting period"), "{err}");
        cli.ok(&["--kms", &kmip, "kms", "disable", &name]);
        let err = cli.fails(&["get", &db, "t", "k"]);
        assert!(err.contains("key disabled"), "{err}");
    }
}
