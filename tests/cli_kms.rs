//! `tde kms ...` from the command line: the spellings scripts rely on, exit codes, and
//! messages a person can act on.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Cli {
    tmp: tempfile::TempDir,
}

impl Cli {
    fn new() -> Cli {
        Cli {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    fn kms_dir(&self) -> PathBuf {
        self.tmp.path().join("kms")
    }

    fn cmd(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tde"));
        cmd.env_remove("TDE_KMS_PASSPHRASE")
            .env("TDE_KMS", self.kms_dir())
            .env("HOME", self.tmp.path().join("home"))
            .env_remove("XDG_DATA_HOME")
            .env_remove("TDE_HOME");
        cmd
    }

    fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        common::run_with_stdin(self.cmd().args(args), stdin)
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args, b"");
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and expects failure; returns stderr.
    fn fails(&self, args: &[&str], stdin: &[u8]) -> String {
        let out = self.run(args, stdin);
        assert!(!out.status.success(), "{args:?} unexpectedly succeeded");
        String::from_utf8(out.stderr).unwrap()
    }

    fn init(&self) {
        self.ok(&["kms", "init"]);
    }

    fn create_key(&self, extra: &[&str]) -> String {
        let mut args = vec!["kms", "create-key"];
        args.extend_from_slice(extra);
        self.ok(&args).lines().next().unwrap().to_owned()
    }

    fn encrypt(&self, key: &str, plaintext: &[u8], context: &[&str]) -> Vec<u8> {
        let mut args = vec!["kms", "encrypt", key];
        for c in context {
            args.extend(["--context", c]);
        }
        let out = self.run(&args, plaintext);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    fn decrypt(&self, blob: &[u8], context: &[&str]) -> Output {
        let mut args = vec!["kms", "decrypt"];
        for c in context {
            args.extend(["--context", c]);
        }
        self.run(&args, blob)
    }
}

fn describe(cli: &Cli, key: &str) -> serde_json::Value {
    serde_json::from_str(&cli.ok(&["kms", "describe", key])).unwrap()
}

#[test]
fn init_create_list_describe() {
    let cli = Cli::new();
    cli.init();
    assert!(tde::kms::local::default_key_file(&cli.kms_dir()).exists());
    assert!(!cli.kms_dir().join("root.key").exists());
    let err = cli.fails(&["kms", "init"], b"");
    assert!(err.contains("already exists"), "{err}");

    let key = cli.create_key(&[
        "--alias",
        "alias/app",
        "--description",
        "app data",
        "--rotation-days",
        "90",
    ]);
    assert_eq!(key.len(), 36, "{key}");
    let sm4 = cli.create_key(&["--spec", "sm4"]);
    let list = cli.ok(&["kms", "list"]);
    assert!(
        list.contains(&key) && list.contains(&sm4) && list.contains("alias/app"),
        "{list}"
    );
    let json: serde_json::Value = serde_json::from_str(&cli.ok(&["kms", "list", "--json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);

    let meta = describe(&cli, "alias/app");
    assert_eq!(meta["key_id"], key.as_str());
    assert_eq!(meta["state"], "Enabled");
    assert_eq!(meta["spec"], "aes-256");
    assert_eq!(meta["description"], "app data");
    assert_eq!(meta["rotation"]["interval_days"], 90);
    assert_eq!(describe(&cli, &sm4)["spec"], "sm4");

    cli.ok(&["kms", "alias", "alias/other", &key]);
    assert_eq!(describe(&cli, "alias/other")["key_id"], key.as_str());
    let err = cli.fails(&["kms", "describe", "alias/missing"], b"");
    assert!(err.contains("alias/missing"), "{err}");
}

#[test]
fn encrypt_decrypt_context_rotation_and_the_6_kib_limit() {
    let cli = Cli::new();
    cli.init();
    let key = cli.create_key(&[]);
    let blob = cli.encrypt(&key, b"db password", &["app=billing", "env=prod"]);
    let out = cli.decrypt(&blob, &["env=prod", "app=billing"]);
    assert!(out.status.success());
    assert_eq!(out.stdout, b"db password");

    let out = cli.decrypt(&blob, &["app=billing"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("encryption context"));

    cli.ok(&["kms", "rotate", &key]);
    let rotated = cli.ok(&["kms", "rotate", &key]);
    assert!(rotated.contains("primary version 3"), "{rotated}");
    assert_eq!(
        cli.decrypt(&blob, &["app=billing", "env=prod"]).stdout,
        b"db password"
    );

    let max = cli.encrypt(&key, &vec![b'a'; 6144], &[]);
    assert_eq!(cli.decrypt(&max, &[]).stdout, vec![b'a'; 6144]);
    let err = cli.fails(&["kms", "encrypt", &key], &vec![b'a'; 6145]);
    assert!(err.contains("6144"), "{err}");
    let err = cli.fails(&["kms", "encrypt", &key, "--context", "novalue"], b"x");
    assert!(err.contains("KEY=VALUE"), "{err}");
}

#[test]
fn disable_enable_and_deletion() {
    let cli = Cli::new();
    cli.init();
    let key = cli.create_key(&[]);
    let blob = cli.encrypt(&key, b"x", &[]);
    assert!(cli.ok(&["kms", "disable", &key]).contains("Disabled"));
    let out = cli.decrypt(&blob, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("disabled"));
    assert!(cli.ok(&["kms", "enable", &key]).contains("Enabled"));
    assert_eq!(cli.decrypt(&blob, &[]).stdout, b"x");

    let err = cli.fails(&["kms", "schedule-deletion", &key, "--days", "6"], b"");
    assert!(err.contains("7 to 30"), "{err}");
    let out = cli.ok(&["kms", "schedule-deletion", &key, "--days", "7"]);
    assert!(out.contains("destroyed on"), "{out}");
    assert_eq!(describe(&cli, &key)["state"], "PendingDeletion");
    assert!(String::from_utf8_lossy(&cli.decrypt(&blob, &[]).stderr).contains("scheduled for deletion"));
    cli.ok(&["kms", "cancel-deletion", &key]);
    assert_eq!(describe(&cli, &key)["state"], "Disabled");
}

#[test]
fn service_key_cannot_be_disabled() {
    let cli = Cli::new();
    cli.init();
    let meta = describe(&cli, "alias/acs/tde");
    assert_eq!(meta["service_key"], true);
    let err = cli.fails(&["kms", "disable", "alias/acs/tde"], b"");
    assert!(err.contains("cannot be disabled"), "{err}");
    let err = cli.fails(&["kms", "schedule-deletion", "alias/acs/tde"], b"");
    assert!(err.contains("cannot be deleted"), "{err}");
    assert_eq!(describe(&cli, "alias/acs/tde")["state"], "Enabled");
}

#[test]
fn import_works_and_expires() {
    let cli = Cli::new();
    cli.init();
    let key = cli.create_key(&["--origin", "external"]);
    assert_eq!(describe(&cli, &key)["state"], "PendingImport");
    let params = cli.tmp.path().join("params");
    let listed = cli.ok(&["kms", "import-params", &key, "--out", params.to_str().unwrap()]);
    assert_eq!(listed.lines().count(), 3);
    let der = std::fs::read(params.join("wrapping-key.der")).unwrap();
    let pem = std::fs::read_to_string(params.join("wrapping-key.pem")).unwrap();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    let wrapped = tde::kms::local::wrap_key_material(&der, &[9u8; 32]).unwrap();
    let material = cli.tmp.path().join("material.wrapped");
    std::fs::write(&material, wrapped).unwrap();

    // Long enough for three commands on a loaded machine (RFC 3339 seconds truncate it by
    // up to a second); the test then waits it out.
    let expiry = std::time::SystemTime::now() + std::time::Duration::from_secs(6);
    let expires = humantime::format_rfc3339_seconds(expiry);
    let token = params.join("import-token.bin");
    let out = cli.ok(&[
        "kms",
        "import",
        &key,
        "--material",
        material.to_str().unwrap(),
        "--token",
        token.to_str().unwrap(),
        "--expires",
        &expires.to_string(),
    ]);
    assert!(out.contains("Enabled"), "{out}");
    let blob = cli.encrypt(&key, b"imported", &[]);
    assert_eq!(cli.decrypt(&blob, &[]).stdout, b"imported");

    let wait = expiry
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    std::thread::sleep(wait + std::time::Duration::from_millis(1500));
    let out = cli.decrypt(&blob, &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expired"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(describe(&cli, &key)["material_expired"], true);

    let err = cli.fails(
        &[
            "kms",
            "import",
            &key,
            "--material",
            "/nonexistent",
            "--token",
            token.to_str().unwrap(),
        ],
        b"",
    );
    assert!(err.contains("/nonexistent"), "{err}");
    let err = cli.fails(
        &[
            "kms",
            "import",
            &key,
            "--material",
            material.to_str().unwrap(),
            "--token",
            token.to_str().unwrap(),
            "--expires",
            "tomorrow",
        ],
        b"",
    );
    assert!(err.contains("RFC 3339"), "{err}");
}

#[test]
fn kms_is_chosen_by_flag_env_or_default_and_must_exist() {
    let cli = Cli::new();
    // A named directory that does not exist is an error, not a new KMS.
    let err = cli.fails(&["kms", "list"], b"");
    assert!(err.contains("tde kms init"), "{err}");
    assert!(!cli.kms_dir().exists());

    // --kms before or after the subcommand, with or without local:.
    let other = cli.tmp.path().join("other");
    let other_uri = format!("local:{}", other.display());
    cli.ok(&["kms", "init", other.to_str().unwrap()]);
    cli.ok(&["--kms", &other_uri, "kms", "create-key", "--alias", "alias/x"]);
    let listed = cli.ok(&["kms", "list", "--kms", other.to_str().unwrap()]);
    assert!(listed.contains("alias/x"), "{listed}");

    // Without --kms and TDE_KMS: the default under the user's data directory.
    let out = cli
        .cmd()
        .env_remove("TDE_KMS")
        .args(["kms", "init"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let default = cli.tmp.path().join("home/.local/share/tde/kms");
    assert!(default.join("kms-state.a").exists());
    let out = cli
        .cmd()
        .env_remove("TDE_KMS")
        .args(["kms", "list"])
        .output()
        .unwrap();
    assert!(out.status.success());

    let err = cli.fails(&["--kms", "gcp-kms://eu-west-1", "kms", "list"], b"");
    assert!(err.contains("unsupported KMS scheme"), "{err}");
    let err = cli.fails(&["--kms", "aws-kms://eu-west-1", "kms", "list"], b"");
    assert!(err.contains("takes only parameters"), "{err}");
    // A provider manages its keys with its own tools where tde has no equivalent verb.
    let err = cli.fails(&["--kms", "aws-kms:?region=eu-west-1", "kms", "list"], b"");
    assert!(err.contains("not supported by aws-kms"), "{err}");
}

#[test]
fn passphrase_from_the_environment() {
    let cli = Cli::new();
    let with_pass = |args: &[&str], pass: &str| {
        cli.cmd()
            .env("TDE_KMS_PASSPHRASE", pass)
            .args(args)
            .output()
            .unwrap()
    };
    assert!(with_pass(&["kms", "init"], "s3cret passphrase").status.success());
    assert!(!cli.kms_dir().join("root.key").exists());
    assert!(
        with_pass(&["kms", "create-key"], "s3cret passphrase")
            .status
            .success()
    );
    let out = with_pass(&["kms", "list"], "wrong");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"));
    let err = cli.fails(&["kms", "list"], b"");
    assert!(err.contains("TDE_KMS_PASSPHRASE"), "{err}");
}

#[test]
fn root_key_file_elsewhere() {
    let cli = Cli::new();
    let root = cli.tmp.path().join("secrets").join("kms-root.key");
    std::fs::create_dir_all(root.parent().unwrap()).unwrap();
    cli.ok(&["kms", "init", "--root-key-file", root.to_str().unwrap()]);
    assert!(root.exists());
    assert!(!cli.kms_dir().join("root.key").exists());
    cli.create_key(&[]);
    assert!(Path::new(&root).exists());
}

#[test]
fn rotate_root_and_change_passphrase() {
    let cli = Cli::new();
    cli.init();
    let key = cli.create_key(&[]);
    let blob = cli.encrypt(&key, b"secret", &["a=b"]);
    let root = tde::kms::local::default_key_file(&cli.kms_dir());
    let before = std::fs::read(&root).unwrap();
    cli.ok(&["kms", "rotate-root"]);
    assert_ne!(std::fs::read(&root).unwrap(), before);
    let out = cli.decrypt(&blob, &["a=b"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, b"secret");
    let err = cli.fails(&["kms", "change-passphrase"], b"");
    assert!(err.contains("TDE_KMS_NEW_PASSPHRASE"), "{err}");
}
