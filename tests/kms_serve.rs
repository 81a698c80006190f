//! `tde kms serve`: the local KMS on the network, with tde's own `aws-kms:` provider as
//! its client. Accounts and principals are made with the operator's verbs on the KMS
//! directory; every request is signed (SigV4) with a principal's access key.
#![cfg(all(feature = "server", feature = "aws-kms"))]

mod common;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};

use common::Cli;

/// The Python with boto3 that `.ci/run` names in `TDE_TEST_PYTHON`.
fn python() -> String {
    std::env::var("TDE_TEST_PYTHON")
        .ok()
        .filter(|v| !v.is_empty())
        .expect("set TDE_TEST_PYTHON to a Python with boto3 (`.ci/run` does)")
}

/// Keeps an AWS client from reading this machine's AWS profile and files: it signs with
/// the credentials the test gives it, or none.
trait WithoutAwsFiles {
    fn without_aws_files(&mut self, cli: &Cli) -> &mut Self;
}

impl WithoutAwsFiles for Command {
    fn without_aws_files(&mut self, cli: &Cli) -> &mut Self {
        self.env_remove("AWS_PROFILE")
            .env("AWS_CONFIG_FILE", cli.path("no-aws-config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", cli.path("no-aws-credentials"))
    }
}

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
        .without_aws_files(cli)
        .output()
        .expect("run tde")
}

/// Creates store `db` under `key` through the server as `who`, with table `t` holding
/// `k` = `value`; returns what `db create` printed (the store id first).
fn provision(cli: &Cli, served: &Served, who: &Credentials, db: &str, key: &str, value: &str) -> String {
    let id = ok(&as_principal(
        cli,
        served,
        who,
        &["db", "create", db, "--default-key", key],
    ));
    ok(&as_principal(cli, served, who, &["table", "create", db, "t"]));
    ok(&as_principal(cli, served, who, &["put", db, "t", "k", value]));
    id
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
    provision(&cli, &served, &admin, &db, &key, "served");
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

/// boto3, an independent AWS client, drives every operation the server answers and checks
/// AWS's error codes, and the three governance scenarios: nodes limited to their own
/// store by a key policy, an auditor who reads but cannot use keys, and another account's
/// service using a key through a grant until the grant is revoked
/// (`tests/kms_serve_boto3.py`; `TDE_TEST_PYTHON` names a Python with boto3).
#[test]
fn boto3_drives_every_operation_and_the_governance_scenarios() {
    let python = python();
    let cli = Cli::new();
    let account = cli.ok(&["kms", "account", "create", "customer"]);
    let account = account.lines().next().unwrap().to_owned();
    cli.ok(&["kms", "account", "create", "isv"]);
    let json = |c: &Credentials| serde_json::json!({"access_key_id": c.access_key_id, "secret_access_key": c.secret, "arn": c.arn});
    let principals = serde_json::json!({
        "admin": json(&principal(&cli, "dba", "customer", true)),
        "node": json(&principal(&cli, "node-1", "customer", false)),
        "auditor": json(&principal(&cli, "auditor", "customer", false)),
        "isv": json(&principal(&cli, "service", "isv", true)),
    });
    let served = serve(&cli);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kms_serve_boto3.py");
    let out = Command::new(python)
        .arg(script)
        .arg(&served.url)
        .arg(principals.to_string())
        .arg(&account)
        .without_aws_files(&cli)
        .output()
        .expect("run python");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(served);

    // Every request is in the trail, denials included, with the grant that allowed it;
    // no plaintext (the script encrypted b"secret", base64 c2VjcmV0) and no blob.
    assert!(
        cli.ok(&["kms", "audit", "verify"])
            .contains("every MAC checks out")
    );
    let node = principals["node"]["arn"].as_str().unwrap();
    let lines = cli.ok(&["kms", "audit", "show", "--json", "--principal", node]);
    let records: Vec<serde_json::Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(
        records
            .iter()
            .any(|r| r["op"] == "Decrypt" && r["outcome"] == "AccessDeniedException")
    );
    assert!(
        records
            .iter()
            .any(|r| r["op"] == "Decrypt" && r["outcome"] == "ok" && r["context"]["tde:store"] == "store-1")
    );
    let isv = principals["isv"]["arn"].as_str().unwrap();
    let isv_records = cli.ok(&["kms", "audit", "show", "--json", "--principal", isv]);
    assert!(isv_records.contains("\"grant\":"), "{isv_records}");
    let trail =
        std::fs::read_to_string(cli.tmp.path().join("kms").join(tde::kms::local::TRAIL_FILE)).unwrap();
    assert!(
        !trail.contains("c2VjcmV0") && !trail.contains("\"Plaintext\""),
        "{trail}"
    );
    assert!(trail.contains("InvalidSignatureException") && trail.contains("UnrecognizedClientException"));
    // The operator's own commands are in it too.
    assert!(
        cli.ok(&["kms", "audit", "show", "--principal", "operator"])
            .contains("principal-create")
    );
    // A root-key rotation re-seals the audit key with the rest of the state: the chain
    // and its MACs go on.
    let before = cli.ok(&["kms", "audit", "show", "--json"]).lines().count();
    cli.ok(&["kms", "rotate-root"]);
    let after = cli.ok(&["kms", "audit", "verify"]);
    assert!(after.starts_with(&format!("{} records", before + 1)), "{after}");
}

/// A `kill -9` of the server under load loses no key state, and its audit trail still
/// verifies (a torn last record, if the kill left one, is cut and recorded).
#[test]
fn a_killed_server_loses_no_key_state_and_its_trail_verifies() {
    let python = python();
    let cli = Cli::new();
    cli.ok(&["kms", "account", "create", "customer"]);
    let admin = principal(&cli, "dba", "customer", true);
    let mut served = serve(&cli);
    let key = ok(&as_principal(&cli, &served, &admin, &["kms", "create-key"]));
    let key = key.lines().next().unwrap().to_owned();
    let db = cli.path("db");
    provision(&cli, &served, &admin, &db, &key, "survives");
    // Eight clients making data keys and unwrapping them as fast as they can.
    let load = format!(
        "import boto3, threading\nk = boto3.client('kms', endpoint_url={:?}, region_name='us-east-1', aws_access_key_id={:?}, aws_secret_access_key={:?})\n\
def work():\n    while True:\n        try:\n            d = k.generate_data_key(KeyId={key:?}, KeySpec='AES_256', EncryptionContext={{'a': 'b'}})\n            k.decrypt(CiphertextBlob=d['CiphertextBlob'], EncryptionContext={{'a': 'b'}})\n            k.create_key(Description='under load')\n        except Exception:\n            return\n\
ts = [threading.Thread(target=work) for _ in range(8)]\n[t.start() for t in ts]\n[t.join() for t in ts]\n",
        served.url, admin.access_key_id, admin.secret
    );
    let mut clients = Command::new(&python)
        .arg("-c")
        .arg(load)
        .without_aws_files(&cli)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run the load");
    std::thread::sleep(std::time::Duration::from_secs(2));
    served.child.kill().expect("kill -9 the server");
    served.child.wait().unwrap();
    let _ = clients.wait();
    // Everything the server acknowledged is there; the trail verifies.
    assert!(
        cli.ok(&["kms", "audit", "verify"])
            .contains("every MAC checks out")
    );
    let served = serve(&cli);
    assert_eq!(
        ok(&as_principal(&cli, &served, &admin, &["get", &db, "t", "k"])),
        "survives\n"
    );
    let keys: serde_json::Value = serde_json::from_str(&cli.ok(&["kms", "list", "--json"])).unwrap();
    assert!(
        keys.as_array().unwrap().len() > 2,
        "keys made under load are kept"
    );
}

/// The aws CLI drives every operation the server answers and checks AWS's error codes
/// (`tests/kms_serve_awscli.py`; `TDE_TEST_AWS_CLI` names the `aws` program,
/// `TDE_TEST_PYTHON` the Python that runs the script).
#[test]
fn the_aws_cli_drives_every_operation() {
    let aws = std::env::var("TDE_TEST_AWS_CLI")
        .ok()
        .filter(|v| !v.is_empty())
        .expect("set TDE_TEST_AWS_CLI to the aws program (`.ci/run` does)");
    let python = python();
    let cli = Cli::new();
    cli.ok(&["kms", "account", "create", "customer"]);
    let json = |c: &Credentials| serde_json::json!({"access_key_id": c.access_key_id, "secret_access_key": c.secret, "arn": c.arn});
    let principals = serde_json::json!({
        "admin": json(&principal(&cli, "dba", "customer", true)),
        "node": json(&principal(&cli, "node-1", "customer", false)),
    });
    let served = serve(&cli);
    let scratch = cli.path("awscli");
    std::fs::create_dir(&scratch).unwrap();
    let out = Command::new(python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kms_serve_awscli.py"))
        .arg(&aws)
        .arg(&served.url)
        .arg(principals.to_string())
        .arg(&scratch)
        .without_aws_files(&cli)
        .output()
        .expect("run python");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Scenario 2 end to end: an ISV's store in another account runs on the customer's key
/// through a grant; the customer revokes the grant; the ISV's running key watch (which
/// asks, with a dry-run Decrypt, whether the store may still unwrap) fails its tables
/// closed within its interval, and its next open is refused.
#[test]
fn revoking_a_grant_stops_the_isvs_store() {
    let python = python();
    let cli = Cli::new();
    cli.ok(&["kms", "account", "create", "customer"]);
    cli.ok(&["kms", "account", "create", "isv"]);
    let admin = principal(&cli, "dba", "customer", true);
    let isv = principal(&cli, "service", "isv", true);
    let served = serve(&cli);
    let key = ok(&as_principal(&cli, &served, &admin, &["kms", "create-key"]));
    let key = key.lines().next().unwrap().to_owned();
    // The customer's side, with boto3.
    let boto3 = |code: &str| {
        let out = Command::new(&python)
            .arg("-c")
            .arg(format!(
                "import boto3, sys\nk = boto3.client('kms', endpoint_url={:?}, region_name='us-east-1', aws_access_key_id={:?}, aws_secret_access_key={:?})\n{code}",
                served.url, admin.access_key_id, admin.secret
            ))
            .without_aws_files(&cli)
            .output()
            .expect("run python");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let db = cli.path("isv-db");
    let err = fails(&as_principal(
        &cli,
        &served,
        &isv,
        &["db", "create", &db, "--default-key", &key],
    ));
    assert!(err.contains("access denied"), "{err}");
    // The key's policy lets the ISV read the key's metadata for good; the grant lets it
    // make and unwrap data keys. Revoking the grant changes no key state and leaves
    // DescribeKey allowed: only the watch's dry-run Decrypt can see it.
    let account = admin.arn.split(':').nth(4).unwrap().to_owned();
    boto3(&format!(
        "import json\nk.put_key_policy(KeyId={key:?}, PolicyName='default', Policy=json.dumps({{'Statement': [\
{{'Effect': 'Allow', 'Principal': {{'AWS': 'arn:aws:iam::{account}:root'}}, 'Action': 'kms:*', 'Resource': '*'}},\
{{'Effect': 'Allow', 'Principal': {{'AWS': {:?}}}, 'Action': 'kms:DescribeKey', 'Resource': '*'}}]}}))",
        isv.arn
    ));
    let grant = boto3(&format!(
        "print(k.create_grant(KeyId={key:?}, GranteePrincipal={:?}, Operations=['GenerateDataKey', 'Decrypt'])['GrantId'])",
        isv.arn
    ));
    provision(&cli, &served, &isv, &db, &key, "isv data");
    // And a tablespace under the same key.
    let ts = cli.path("isv-ts");
    ok(&as_principal(
        &cli,
        &served,
        &isv,
        &["page", "create", &ts, "--key", &key],
    ));
    ok(&as_principal(&cli, &served, &isv, &["watch", &ts, "--once"]));

    // The ISV's store and tablespace, each open with its key watch running every second.
    let kms = format!("aws-kms:?region=us-east-1&endpoint={}", served.url);
    let watch = |path: &str| {
        let mut child = cli
            .cmd(&["--kms", &kms, "watch", path, "--interval", "1"])
            .env("AWS_ACCESS_KEY_ID", &isv.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &isv.secret)
            .without_aws_files(&cli)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tde watch");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("revoked:") {
                    let _ = tx.send(line);
                    return;
                }
            }
        });
        (child, rx)
    };
    let watches = [watch(&db), watch(&ts)];
    std::thread::sleep(std::time::Duration::from_millis(1500));
    boto3(&format!(
        "k.revoke_grant(KeyId={key:?}, GrantId={:?})",
        grant.trim()
    ));
    let reports: Vec<String> = watches
        .into_iter()
        .map(|(mut child, rx)| {
            let revoked = rx.recv_timeout(std::time::Duration::from_secs(30));
            let _ = child.kill();
            let _ = child.wait();
            revoked.expect("the watch reported the revocation within 30 s (interval 1 s)")
        })
        .collect();
    assert!(reports[0].contains("table t"), "{}", reports[0]);
    assert!(reports[1].contains("isv-ts"), "{}", reports[1]);
    let err = fails(&as_principal(&cli, &served, &isv, &["get", &db, "t", "k"]));
    assert!(err.contains("access denied"), "{err}");
    let err = fails(&as_principal(&cli, &served, &isv, &["page", "verify", &ts]));
    assert!(err.contains("access denied"), "{err}");
}

/// Over TLS (the certificates `.ci/run` makes for the run, in `TDE_TEST_TLS_CERTS`:
/// `server.pem`/`server.key` for 127.0.0.1, signed by `ca.pem`): boto3 verifies the
/// server's certificate and is served; the server is also free to listen beyond loopback.
#[test]
fn the_server_speaks_tls() {
    let python = python();
    let certs = std::env::var("TDE_TEST_TLS_CERTS")
        .ok()
        .filter(|v| !v.is_empty())
        .expect("set TDE_TEST_TLS_CERTS (`.ci/run` makes the certificates)");
    let cli = Cli::new();
    cli.ok(&["kms", "account", "create", "customer"]);
    let admin = principal(&cli, "dba", "customer", true);
    let cert = format!("{certs}/server.pem");
    let key = format!("{certs}/server.key");
    let mut child = cli
        .cmd(&[
            "kms",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tde kms serve");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the server's address");
    let served = Served {
        child,
        url: line.trim().to_owned(),
    };
    assert!(served.url.starts_with("https://127.0.0.1:"), "{}", served.url);
    let out = Command::new(&python)
        .arg("-c")
        .arg(format!(
            "import boto3\nk = boto3.client('kms', endpoint_url={:?}, region_name='us-east-1', verify={:?}, aws_access_key_id={:?}, aws_secret_access_key={:?})\nprint(k.create_key()['KeyMetadata']['KeyState'])",
            served.url,
            format!("{certs}/ca.pem"),
            admin.access_key_id,
            admin.secret
        ))
        .without_aws_files(&cli)
        .output()
        .expect("run python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Enabled");
}

/// Scenario 1 with real stores: two database nodes share one key; the key policy lets
/// each unwrap data keys only under its own store's context, so each opens its own store
/// and neither can open the other's.
#[test]
fn a_node_cannot_open_another_nodes_store() {
    let python = python();
    let cli = Cli::new();
    let account = cli.ok(&["kms", "account", "create", "customer"]);
    let account = account.lines().next().unwrap().to_owned();
    let admin = principal(&cli, "dba", "customer", true);
    let nodes = [
        principal(&cli, "node-1", "customer", false),
        principal(&cli, "node-2", "customer", false),
    ];
    let served = serve(&cli);
    let key = ok(&as_principal(&cli, &served, &admin, &["kms", "create-key"]));
    let key = key.lines().next().unwrap().to_owned();
    // The administrator provisions one store per node.
    let mut stores = Vec::new();
    for (i, _) in nodes.iter().enumerate() {
        let db = cli.path(&format!("store-{i}"));
        let id = provision(&cli, &served, &admin, &db, &key, &format!("node {i}"));
        stores.push((db, id.trim().to_owned()));
    }
    let statements: Vec<serde_json::Value> = std::iter::once(serde_json::json!({
        "Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{account}:root")},
        "Action": "kms:*", "Resource": "*"
    }))
    .chain(nodes.iter().zip(&stores).map(|(node, (_, id))| {
        serde_json::json!({
            "Effect": "Allow", "Principal": {"AWS": node.arn},
            "Action": ["kms:GenerateDataKey*", "kms:Decrypt", "kms:DescribeKey"], "Resource": "*",
            "Condition": {"StringEquals": {"kms:EncryptionContext:tde:store": id}}
        })
    }))
    .collect();
    let policy = serde_json::json!({"Version": "2012-10-17", "Statement": statements}).to_string();
    let out = Command::new(&python)
        .arg("-c")
        .arg(format!(
            "import boto3, sys\nk = boto3.client('kms', endpoint_url={:?}, region_name='us-east-1', aws_access_key_id={:?}, aws_secret_access_key={:?})\nk.put_key_policy(KeyId={key:?}, PolicyName='default', Policy=sys.argv[1])",
            served.url, admin.access_key_id, admin.secret
        ))
        .arg(&policy)
        .without_aws_files(&cli)
        .output()
        .expect("run python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (i, node) in nodes.iter().enumerate() {
        let (own, _) = &stores[i];
        let (other, _) = &stores[1 - i];
        assert_eq!(
            ok(&as_principal(&cli, &served, node, &["get", own, "t", "k"])),
            format!("node {i}\n")
        );
        let err = fails(&as_principal(&cli, &served, node, &["get", other, "t", "k"]));
        assert!(err.contains("access denied"), "{err}");
    }
}

/// The operator's verbs on the directory: a key made there is served once it is given to
/// an account, and a key policy that shuts everyone out is repaired with `tde kms policy
/// put`, which checks the document as PutKeyPolicy does.
#[test]
fn the_operator_assigns_keys_and_repairs_policies() {
    let cli = Cli::new();
    let account = cli.ok(&["kms", "account", "create", "customer"]);
    let account = account.lines().next().unwrap().to_owned();
    let admin = principal(&cli, "dba", "customer", true);
    let key = cli.ok(&["kms", "create-key"]);
    let key = key.lines().next().unwrap().to_owned();
    let served = serve(&cli);
    let describe = |who: &Credentials| as_principal(&cli, &served, who, &["kms", "describe", &key]);
    fails(&describe(&admin));
    let err = cli.fails(&["kms", "policy", "get", &key]);
    assert!(err.contains("assign-key"), "{err}");
    cli.ok(&["kms", "account", "assign-key", "customer", &key]);
    assert!(ok(&describe(&admin)).contains(&key));
    let default_policy = cli.ok(&["kms", "policy", "get", &key]);
    assert!(
        default_policy.contains(&format!("arn:aws:iam::{account}:root")),
        "{default_policy}"
    );

    // A policy that names no one the server knows: the administrators are shut out.
    let locked = cli.path("locked.json");
    std::fs::write(
        &locked,
        r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::999999999999:root"}, "Action": "kms:*", "Resource": "*"}]}"#,
    )
    .unwrap();
    cli.ok(&["kms", "policy", "put", &key, "--file", &locked]);
    let err = fails(&describe(&admin));
    assert!(err.contains("access denied"), "{err}");
    // Outside the documented subset: refused, the policy in force unchanged.
    let bad = cli.path("bad.json");
    std::fs::write(
        &bad,
        r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "NotAction": "kms:Decrypt", "Resource": "*"}]}"#,
    )
    .unwrap();
    cli.fails(&["kms", "policy", "put", &key, "--file", &bad]);
    assert!(cli.ok(&["kms", "policy", "get", &key]).contains("999999999999"));
    // The repair, from standard input.
    let out = cli.run(&["kms", "policy", "put", &key], default_policy.as_bytes());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(ok(&describe(&admin)).contains(&key));
    // A key has one account for good.
    cli.ok(&["kms", "account", "create", "other"]);
    let err = cli.fails(&["kms", "account", "assign-key", "other", &key]);
    assert!(err.contains(&account), "{err}");
    let trail = cli.ok(&["kms", "audit", "show", "--principal", "operator"]);
    assert!(
        trail.contains("policy-put") && trail.contains("account-assign-key"),
        "{trail}"
    );
}
