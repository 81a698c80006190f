//! `tde kms serve`: the local KMS on the network, with tde's own `aws-kms:` provider as
//! its client. Accounts and principals are made with the operator's verbs on the KMS
//! directory; every request is signed (SigV4) with a principal's access key.
#![cfg(all(feature = "server", feature = "aws-kms"))]

mod common;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};

use common::Cli;

/// A running server; killed when dropped.
struct Served {
    child: Child,
    url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(cli: &Cli) -> Served {
    let mut child = cli
        .cmd(&["kms", "serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tde kms serve");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the server's address");
    Served {
        child,
        url: line.trim().to_owned(),
    }
}

struct Credentials {
    access_key_id: String,
    secret: String,
    arn: String,
}

fn principal(cli: &Cli, name: &str, account: &str, admin: bool) -> Credentials {
    let mut args = vec!["kms", "principal", "create", name, "--account", account];
    if admin {
        args.push("--admin");
    }
    let json: serde_json::Value = serde_json::from_str(&cli.ok(&args)).unwrap();
    Credentials {
        access_key_id: json["access_key_id"].as_str().unwrap().to_owned(),
        secret: json["secret_access_key"].as_str().unwrap().to_owned(),
        arn: json["arn"].as_str().unwrap().to_owned(),
    }
}

/// `tde` with `--kms` naming the server, signing as `who`.
fn as_principal(cli: &Cli, served: &Served, who: &Credentials, args: &[&str]) -> std::process::Output {
    let kms = format!("aws-kms:?region=us-east-1&endpoint={}", served.url);
    let mut all = vec!["--kms", kms.as_str()];
    all.extend_from_slice(args);
    let mut cmd: Command = cli.cmd(&all);
    cmd.env("AWS_ACCESS_KEY_ID", &who.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &who.secret)
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", cli.path("no-aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", cli.path("no-aws-credentials"))
        .output()
        .expect("run tde")
}

fn ok(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn fails(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "unexpectedly succeeded");
    String::from_utf8(out.stderr.clone()).unwrap()
}

#[test]
fn a_store_opens_through_the_served_kms_for_its_accounts_administrators_only() {
    let cli = Cli::new();
    let account = cli.ok(&["kms", "account", "create", "customer"]);
    let account = account.lines().next().unwrap().to_owned();
    assert_eq!(account.len(), 12);
    let admin = principal(&cli, "dba", "customer", true);
    assert_eq!(admin.arn, format!("arn:aws:iam::{account}:user/dba"));
    let node = principal(&cli, "node-1", &account, false);
    cli.ok(&["kms", "account", "create", "other"]);
    let stranger = principal(&cli, "dba", "other", true);
    let listed = cli.ok(&["kms", "principal", "list"]);
    assert_eq!(listed.lines().count(), 3);
    assert!(!listed.contains(&admin.secret), "secrets are shown once");

    let served = serve(&cli);
    // One server per KMS directory.
    let err = cli.fails(&["kms", "serve", "--listen", "127.0.0.1:0"]);
    assert!(err.contains("another `tde kms serve`"), "{err}");
    // Plain HTTP only on loopback.
    let err = cli.fails(&["kms", "serve", "--listen", "0.0.0.0:0"]);
    assert!(err.contains("loopback"), "{err}");

    let key = ok(&as_principal(&cli, &served, &admin, &["kms", "create-key"]));
    let key = key.lines().next().unwrap().to_owned();
    assert!(
        key.starts_with(&format!("arn:aws:kms:us-east-1:{account}:key/")),
        "{key}"
    );
    let db = cli.path("db");
    ok(&as_principal(
        &cli,
        &served,
        &admin,
        &["db", "create", &db, "--default-key", &key],
    ));
    ok(&as_principal(
        &cli,
        &served,
        &admin,
        &["table", "create", &db, "t"],
    ));
    ok(&as_principal(
        &cli,
        &served,
        &admin,
        &["put", &db, "t", "k", "served"],
    ));
    assert_eq!(
        ok(&as_principal(&cli, &served, &admin, &["get", &db, "t", "k"])),
        "served\n"
    );

    // Under the default policy, neither a principal of the account that is not an
    // administrator nor another account may use the key.
    for who in [&node, &stranger] {
        let err = fails(&as_principal(&cli, &served, who, &["get", &db, "t", "k"]));
        assert!(err.contains("access denied"), "{err}");
    }
    // A wrong secret does not authenticate; a disabled principal is refused; a rotated
    // access key replaces the old one at once.
    let forged = Credentials {
        secret: "not the secret".into(),
        ..principal(&cli, "spare", "customer", true)
    };
    let err = fails(&as_principal(&cli, &served, &forged, &["kms", "describe", &key]));
    assert!(
        err.contains("InvalidSignature") || err.contains("signature"),
        "{err}"
    );
    cli.ok(&["kms", "principal", "disable", &admin.arn]);
    let err = fails(&as_principal(&cli, &served, &admin, &["get", &db, "t", "k"]));
    assert!(err.contains("access denied") || err.contains("disabled"), "{err}");
    cli.ok(&["kms", "principal", "enable", &admin.arn]);
    let rotated: serde_json::Value =
        serde_json::from_str(&cli.ok(&["kms", "principal", "rotate-key", &admin.arn])).unwrap();
    let err = fails(&as_principal(&cli, &served, &admin, &["get", &db, "t", "k"]));
    assert!(!err.is_empty());
    let admin = Credentials {
        access_key_id: rotated["access_key_id"].as_str().unwrap().to_owned(),
        secret: rotated["secret_access_key"].as_str().unwrap().to_owned(),
        arn: admin.arn,
    };
    assert_eq!(
        ok(&as_principal(&cli, &served, &admin, &["get", &db, "t", "k"])),
        "served\n"
    );
    // Disabling the key over the API stops the store.
    ok(&as_principal(&cli, &served, &admin, &["kms", "disable", &key]));
    let err = fails(&as_principal(&cli, &served, &admin, &["get", &db, "t", "k"]));
    assert!(err.contains("key disabled"), "{err}");
}
