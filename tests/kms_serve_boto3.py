"""Drives `tde kms serve` with boto3, as any AWS client would, and checks the answers and
error codes. Run by tests/kms_serve.rs: argv[1] is the server's URL, argv[2] a JSON object
of principals ({"admin": {"access_key_id": ..., "secret_access_key": ..., "arn": ...},
"node": ..., "auditor": ..., "isv": ...}), argv[3] the customer's account id. Prints
"ok" at the end; any failed check raises."""

import base64
import json
import sys

import boto3
import botocore
from botocore.exceptions import ClientError

url, principals, account = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]


def client(who, **kw):
    p = principals[who]
    return boto3.client(
        "kms",
        endpoint_url=url,
        region_name=kw.pop("region", "eu-west-1"),
        aws_access_key_id=kw.pop("key_id", p["access_key_id"]),
        aws_secret_access_key=kw.pop("secret", p["secret_access_key"]),
        config=botocore.config.Config(retries={"max_attempts": 1}),
        **kw,
    )


def code_of(call):
    try:
        call()
    except ClientError as e:
        return e.response["Error"]["Code"]
    return None


def expect(code, call):
    got = code_of(call)
    assert got == code, f"expected {code}, got {got}"


admin, node, auditor, isv = (client(w) for w in ("admin", "node", "auditor", "isv"))

# Keys, aliases, listing with pagination.
keys = [admin.create_key(Description=f"k{i}")["KeyMetadata"] for i in range(3)]
key = keys[0]["KeyId"]
assert keys[0]["Arn"] == f"arn:aws:kms:eu-west-1:{account}:key/{key}", keys[0]["Arn"]
assert keys[0]["KeyState"] == "Enabled" and keys[0]["AWSAccountId"] == account
page1 = admin.list_keys(Limit=2)
assert page1["Truncated"] and len(page1["Keys"]) == 2
page2 = admin.list_keys(Limit=2, Marker=page1["NextMarker"])
listed = {k["KeyId"] for k in page1["Keys"] + page2["Keys"]}
assert {k["KeyId"] for k in keys} <= listed
admin.create_alias(AliasName="alias/app", TargetKeyId=key)
expect("AlreadyExistsException", lambda: admin.create_alias(AliasName="alias/app", TargetKeyId=key))
admin.update_alias(AliasName="alias/app", TargetKeyId=keys[1]["KeyId"])
admin.update_alias(AliasName="alias/app", TargetKeyId=key)
assert any(a["AliasName"] == "alias/app" for a in admin.list_aliases()["Aliases"])
assert admin.describe_key(KeyId="alias/app")["KeyMetadata"]["KeyId"] == key
admin.delete_alias(AliasName="alias/app")
expect("NotFoundException", lambda: admin.describe_key(KeyId="alias/app"))
admin.create_alias(AliasName="alias/app", TargetKeyId=key)

# Aliases are per account: another account's "alias/app" is its own, and says nothing of
# the customer's; an alias never points at another account's key.
isv_key = isv.create_key()["KeyMetadata"]["KeyId"]
expect("NotFoundException", lambda: isv.describe_key(KeyId="alias/app"))
isv.create_alias(AliasName="alias/app", TargetKeyId=isv_key)
assert isv.describe_key(KeyId="alias/app")["KeyMetadata"]["KeyId"] == isv_key
assert admin.describe_key(KeyId="alias/app")["KeyMetadata"]["KeyId"] == key
assert [a["TargetKeyId"] for a in isv.list_aliases()["Aliases"]] == [isv_key]
assert all(a["TargetKeyId"] != isv_key for a in admin.list_aliases()["Aliases"])
expect("AccessDeniedException", lambda: isv.create_alias(AliasName="alias/theirs", TargetKeyId=keys[0]["Arn"]))
# The customer's alias ARN names the customer's key, which the ISV may not use.
expect("AccessDeniedException", lambda: isv.describe_key(KeyId=f"arn:aws:kms:eu-west-1:{account}:alias/app"))
isv.delete_alias(AliasName="alias/app")
assert admin.describe_key(KeyId="alias/app")["KeyMetadata"]["KeyId"] == key

# Data keys, encryption, the context, re-encryption.
ctx = {"tde:store": "store-1", "tde:table": "t"}
dk = admin.generate_data_key(KeyId="alias/app", KeySpec="AES_256", EncryptionContext=ctx)
assert len(dk["Plaintext"]) == 32
back = admin.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx)
assert back["Plaintext"] == dk["Plaintext"] and back["KeyId"].endswith(key)
expect("InvalidCiphertextException", lambda: admin.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext={"tde:store": "store-2"}))
expect("IncorrectKeyException", lambda: admin.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx, KeyId=keys[1]["KeyId"]))
wo = admin.generate_data_key_without_plaintext(KeyId=key, NumberOfBytes=32, EncryptionContext=ctx)
assert "Plaintext" not in wo
enc = admin.encrypt(KeyId=key, Plaintext=b"secret", EncryptionContext=ctx)
assert admin.decrypt(CiphertextBlob=enc["CiphertextBlob"], EncryptionContext=ctx)["Plaintext"] == b"secret"
moved = admin.re_encrypt(CiphertextBlob=enc["CiphertextBlob"], SourceEncryptionContext=ctx, DestinationKeyId=keys[1]["KeyId"], DestinationEncryptionContext=ctx)
assert moved["SourceKeyId"].endswith(key) and moved["KeyId"].endswith(keys[1]["KeyId"])
expect("DryRunOperationException", lambda: admin.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx, DryRun=True))

# Key states.
admin.disable_key(KeyId=key)
expect("DisabledException", lambda: admin.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx))
admin.enable_key(KeyId=key)
doomed = keys[2]["KeyId"]
sched = admin.schedule_key_deletion(KeyId=doomed, PendingWindowInDays=7)
assert sched["KeyState"] == "PendingDeletion"
expect("KMSInvalidStateException", lambda: admin.encrypt(KeyId=doomed, Plaintext=b"x"))
admin.cancel_key_deletion(KeyId=doomed)
assert not admin.get_key_rotation_status(KeyId=key)["KeyRotationEnabled"]
admin.enable_key_rotation(KeyId=key, RotationPeriodInDays=180)
status = admin.get_key_rotation_status(KeyId=key)
assert status["KeyRotationEnabled"] and status["RotationPeriodInDays"] == 180
admin.rotate_key_on_demand(KeyId=key)
assert admin.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx)["Plaintext"] == dk["Plaintext"]
expect("NotFoundException", lambda: admin.describe_key(KeyId="00000000-0000-4000-8000-000000000000"))

# Bring your own key: import parameters, material wrapped with RSA-OAEP-SHA256, import.
import os
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

external = admin.create_key(Origin="EXTERNAL", Description="byok")["KeyMetadata"]
assert external["KeyState"] == "PendingImport" and external["Origin"] == "EXTERNAL"
expect("KMSInvalidStateException", lambda: admin.encrypt(KeyId=external["KeyId"], Plaintext=b"x"))
params = admin.get_parameters_for_import(KeyId=external["KeyId"], WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_3072")
public = serialization.load_der_public_key(params["PublicKey"])
oaep = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
wrapped = public.encrypt(os.urandom(32), oaep)
admin.import_key_material(KeyId=external["KeyId"], ImportToken=params["ImportToken"], EncryptedKeyMaterial=wrapped, ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
assert admin.describe_key(KeyId=external["KeyId"])["KeyMetadata"]["KeyState"] == "Enabled"
byok = admin.encrypt(KeyId=external["KeyId"], Plaintext=b"byok")
assert admin.decrypt(CiphertextBlob=byok["CiphertextBlob"])["Plaintext"] == b"byok"
expect("AccessDeniedException", lambda: node.get_parameters_for_import(KeyId=external["KeyId"], WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_3072"))

# Scenario 1: a node may generate and decrypt data keys for its own store only.
policy = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{account}:root"}, "Action": "kms:*", "Resource": "*"},
        {
            "Effect": "Allow",
            "Principal": {"AWS": principals["node"]["arn"]},
            "Action": ["kms:GenerateDataKey*", "kms:Decrypt", "kms:DescribeKey"],
            "Resource": "*",
            "Condition": {"StringEquals": {"kms:EncryptionContext:tde:store": "store-1"}},
        },
        {
            "Effect": "Allow",
            "Principal": {"AWS": principals["auditor"]["arn"]},
            "Action": ["kms:Describe*", "kms:List*", "kms:Get*"],
            "Resource": "*",
        },
    ],
}
admin.put_key_policy(KeyId=key, PolicyName="default", Policy=json.dumps(policy))
assert json.loads(admin.get_key_policy(KeyId=key, PolicyName="default")["Policy"]) == policy
expect("MalformedPolicyDocumentException", lambda: admin.put_key_policy(KeyId=key, PolicyName="default", Policy='{"Statement": [{"Effect": "Allow", "NotAction": "kms:*"}]}'))
lockout = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": principals["node"]["arn"]}, "Action": "kms:Decrypt", "Resource": "*"}]}
expect("MalformedPolicyDocumentException", lambda: admin.put_key_policy(KeyId=key, PolicyName="default", Policy=json.dumps(lockout)))
mine = node.generate_data_key(KeyId=key, KeySpec="AES_256", EncryptionContext=ctx)
assert node.decrypt(CiphertextBlob=mine["CiphertextBlob"], EncryptionContext=ctx)["Plaintext"] == mine["Plaintext"]
other = admin.generate_data_key(KeyId=key, KeySpec="AES_256", EncryptionContext={"tde:store": "store-2"})
expect("AccessDeniedException", lambda: node.decrypt(CiphertextBlob=other["CiphertextBlob"], EncryptionContext={"tde:store": "store-2"}))
expect("AccessDeniedException", lambda: node.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext=ctx))

# Scenario 3: an auditor reads metadata and the policy, and cannot use the key.
assert auditor.describe_key(KeyId=key)["KeyMetadata"]["KeyId"] == key
auditor.get_key_policy(KeyId=key, PolicyName="default")
auditor.list_grants(KeyId=key)
for call in (
    lambda: auditor.decrypt(CiphertextBlob=mine["CiphertextBlob"], EncryptionContext=ctx),
    lambda: auditor.generate_data_key(KeyId=key, KeySpec="AES_256", EncryptionContext=ctx),
    lambda: auditor.encrypt(KeyId=key, Plaintext=b"x"),
    lambda: auditor.disable_key(KeyId=key),
    lambda: auditor.put_key_policy(KeyId=key, PolicyName="default", Policy=json.dumps(policy)),
):
    expect("AccessDeniedException", call)

# Scenario 2: another account's service uses the key through a grant, until it is revoked.
isv_ctx = {"tde:store": "isv-store"}
expect("AccessDeniedException", lambda: isv.generate_data_key(KeyId=keys[0]["Arn"], KeySpec="AES_256", EncryptionContext=isv_ctx))
grant = admin.create_grant(
    KeyId=key,
    GranteePrincipal=principals["isv"]["arn"],
    Operations=["GenerateDataKey", "Decrypt", "DescribeKey"],
    Constraints={"EncryptionContextSubset": {"tde:store": "isv-store"}},
    Name="isv",
)
isv_dk = isv.generate_data_key(KeyId=keys[0]["Arn"], KeySpec="AES_256", EncryptionContext=isv_ctx)
assert isv.decrypt(CiphertextBlob=isv_dk["CiphertextBlob"], EncryptionContext=isv_ctx)["Plaintext"] == isv_dk["Plaintext"]
expect("AccessDeniedException", lambda: isv.decrypt(CiphertextBlob=mine["CiphertextBlob"], EncryptionContext=ctx))
listed = admin.list_grants(KeyId=key)["Grants"]
assert [g["GrantId"] for g in listed] == [grant["GrantId"]] and listed[0]["GranteePrincipal"] == principals["isv"]["arn"]
admin.revoke_grant(KeyId=key, GrantId=grant["GrantId"])
expect("AccessDeniedException", lambda: isv.decrypt(CiphertextBlob=isv_dk["CiphertextBlob"], EncryptionContext=isv_ctx))
retiring = admin.create_grant(KeyId=key, GranteePrincipal=principals["isv"]["arn"], Operations=["Decrypt"], RetiringPrincipal=principals["isv"]["arn"])
isv.retire_grant(GrantToken=retiring["GrantToken"])
assert admin.list_grants(KeyId=key)["Grants"] == []

# Authentication: altered requests, unknown keys, another secret, a stale date.
expect("UnrecognizedClientException", lambda: client("admin", key_id="TDEAAAAAAAAAAAAAAAAA").list_keys())
expect("InvalidSignatureException", lambda: client("admin", secret="not-the-secret").list_keys())


def tamper(request, **kwargs):
    request.headers["X-Amz-Date"] = "20200101T000000Z"


late = client("admin")
late.meta.events.register("before-send.kms.ListKeys", tamper)
assert code_of(lambda: late.list_keys()) in ("InvalidSignatureException", "IncompleteSignatureException")


def alter_body(request, **kwargs):
    request.body = request.body.replace(b"k0", b"k9") if request.body else request.body


altered = client("admin")
altered.meta.events.register("before-send.kms.CreateKey", alter_body)
expect("InvalidSignatureException", lambda: altered.create_key(Description="k0"))


def alter_header(request, **kwargs):
    request.headers["Content-Type"] = "application/x-amz-json-1.0"


reheaded = client("admin")
reheaded.meta.events.register("before-send.kms.ListKeys", alter_header)
expect("InvalidSignatureException", lambda: reheaded.list_keys())
print("ok")
