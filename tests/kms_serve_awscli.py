"""Drives `tde kms serve` with the aws CLI: every operation the server answers, and the
error codes. Run by tests/kms_serve.rs: argv[1] the `aws` program, argv[2] the server's
URL, argv[3] a JSON object of principals ({"admin": {...}, "node": {...}}), argv[4] a
scratch directory. Prints "ok" at the end; any failed check raises."""

import base64
import json
import os
import subprocess
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

aws, url, principals, scratch = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]


def run(who, *args):
    p = principals[who]
    env = dict(os.environ, AWS_ACCESS_KEY_ID=p["access_key_id"], AWS_SECRET_ACCESS_KEY=p["secret_access_key"])
    env.pop("AWS_PROFILE", None)
    return subprocess.run(
        [aws, "--endpoint-url", url, "--region", "eu-west-1", "--output", "json", "kms", *args],
        env=env,
        capture_output=True,
        text=True,
    )


def ok(*args, who="admin"):
    r = run(who, *args)
    assert r.returncode == 0, f"{args}: {r.stderr}"
    return json.loads(r.stdout) if r.stdout.strip() else {}


def fails(code, *args, who="admin"):
    r = run(who, *args)
    assert r.returncode != 0 and f"({code})" in r.stderr, f"{args}: expected {code}, got {r.stderr}"


def blob_file(name, b64):
    path = os.path.join(scratch, name)
    with open(path, "wb") as f:
        f.write(base64.b64decode(b64))
    return "fileb://" + path


key = ok("create-key", "--description", "aws cli")["KeyMetadata"]["KeyId"]
other = ok("create-key")["KeyMetadata"]["KeyId"]
assert ok("describe-key", "--key-id", key)["KeyMetadata"]["KeyState"] == "Enabled"
assert key in {k["KeyId"] for k in ok("list-keys")["Keys"]}
ok("create-alias", "--alias-name", "alias/cli", "--target-key-id", key)
fails("AlreadyExistsException", "create-alias", "--alias-name", "alias/cli", "--target-key-id", key)
ok("update-alias", "--alias-name", "alias/cli", "--target-key-id", other)
assert any(a["AliasName"] == "alias/cli" for a in ok("list-aliases")["Aliases"])
ok("delete-alias", "--alias-name", "alias/cli")
fails("NotFoundException", "describe-key", "--key-id", "alias/cli")

assert not ok("get-key-rotation-status", "--key-id", key)["KeyRotationEnabled"]
ok("enable-key-rotation", "--key-id", key)
assert ok("get-key-rotation-status", "--key-id", key)["KeyRotationEnabled"]
ok("rotate-key-on-demand", "--key-id", key)

ctx = "tde:store=s1"
dk = ok("generate-data-key", "--key-id", key, "--key-spec", "AES_256", "--encryption-context", ctx)
ok("generate-data-key-without-plaintext", "--key-id", key, "--number-of-bytes", "32", "--encryption-context", ctx)
blob = blob_file("dk", dk["CiphertextBlob"])
assert ok("decrypt", "--ciphertext-blob", blob, "--encryption-context", ctx)["Plaintext"] == dk["Plaintext"]
fails("InvalidCiphertextException", "decrypt", "--ciphertext-blob", blob, "--encryption-context", "tde:store=s2")
plain = os.path.join(scratch, "plain")
with open(plain, "wb") as f:
    f.write(b"secret")
enc = ok("encrypt", "--key-id", key, "--plaintext", "fileb://" + plain)
moved = ok("re-encrypt", "--ciphertext-blob", blob_file("enc", enc["CiphertextBlob"]), "--destination-key-id", other)
assert moved["KeyId"].endswith(other)

ok("disable-key", "--key-id", key)
fails("DisabledException", "decrypt", "--ciphertext-blob", blob, "--encryption-context", ctx)
ok("enable-key", "--key-id", key)
ok("schedule-key-deletion", "--key-id", other, "--pending-window-in-days", "7")
fails("KMSInvalidStateException", "encrypt", "--key-id", other, "--plaintext", "fileb://" + plain)
ok("cancel-key-deletion", "--key-id", other)

account = principals["admin"]["arn"].split(":")[4]
policy = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{account}:root"}, "Action": "kms:*", "Resource": "*"},
    {"Effect": "Allow", "Principal": {"AWS": principals["node"]["arn"]}, "Action": "kms:Describe*", "Resource": "*"}]})
ok("put-key-policy", "--key-id", key, "--policy-name", "default", "--policy", policy)
assert json.loads(ok("get-key-policy", "--key-id", key, "--policy-name", "default")["Policy"]) == json.loads(policy)
ok("describe-key", "--key-id", key, who="node")
fails("AccessDeniedException", "decrypt", "--ciphertext-blob", blob, "--encryption-context", ctx, who="node")

grant = ok("create-grant", "--key-id", key, "--grantee-principal", principals["node"]["arn"], "--operations", "Decrypt",
           "--retiring-principal", principals["node"]["arn"])
assert ok("decrypt", "--ciphertext-blob", blob, "--encryption-context", ctx, who="node")["Plaintext"] == dk["Plaintext"]
assert [g["GrantId"] for g in ok("list-grants", "--key-id", key)["Grants"]] == [grant["GrantId"]]
ok("retire-grant", "--grant-token", grant["GrantToken"], who="node")
fails("AccessDeniedException", "decrypt", "--ciphertext-blob", blob, "--encryption-context", ctx, who="node")
second = ok("create-grant", "--key-id", key, "--grantee-principal", principals["node"]["arn"], "--operations", "Decrypt")
ok("revoke-grant", "--key-id", key, "--grant-id", second["GrantId"])
assert ok("list-grants", "--key-id", key)["Grants"] == []

external = ok("create-key", "--origin", "EXTERNAL")["KeyMetadata"]["KeyId"]
params = ok("get-parameters-for-import", "--key-id", external, "--wrapping-algorithm", "RSAES_OAEP_SHA_256",
            "--wrapping-key-spec", "RSA_3072")
public = serialization.load_der_public_key(base64.b64decode(params["PublicKey"]))
wrapped = public.encrypt(os.urandom(32), padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
with open(os.path.join(scratch, "material"), "wb") as f:
    f.write(wrapped)
ok("import-key-material", "--key-id", external, "--import-token", blob_file("token", params["ImportToken"]),
   "--encrypted-key-material", "fileb://" + os.path.join(scratch, "material"),
   "--expiration-model", "KEY_MATERIAL_DOES_NOT_EXPIRE")
assert ok("describe-key", "--key-id", external)["KeyMetadata"]["KeyState"] == "Enabled"
fails("NotFoundException", "describe-key", "--key-id", "00000000-0000-4000-8000-000000000000")
print("ok")
