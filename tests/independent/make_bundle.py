#!/usr/bin/env python3
"""Builds a synthetic concord-history-v1 audit bundle from docs/PROTOCOL.md, for testing auditors.

The transitions, signatures and report_data are real (derived from a fixed test seed and salt); the
report is 1184 zero bytes except report_data, and the CA certificates are throwaway self-signed ones.
Needs the `cryptography` package.

Usage: make_bundle.py OUT.json [N_TRANSITIONS]      (default 3)
"""

import base64
import datetime
import hashlib
import json
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

SEED = bytes(range(32))
SALT = bytes(range(32, 64))
NONCE = bytes(range(64, 96))


def raw_public(key):
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def self_signed_pem(common_name):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), cert.public_bytes(serialization.Encoding.DER)


def manifest_bytes(generation, owner_keys, policy_hash):
    manifest = {
        "policies": {policy_hash: {"name": f"web-{generation}", "sans": ["web"]}},
        "reference_values": {"snp": [], "simulated": []},
        "workload_owner_keys": [raw_public(k).hex() for k in owner_keys],
        "seed_share_owners": {"threshold": 1, "keys": ["11" * 32]},
    }
    return json.dumps(manifest, separators=(",", ":")).encode()


def build(n):
    signing = Ed25519PrivateKey.from_private_bytes(
        HKDF(hashes.SHA256(), 32, SALT, b"concord/v1/transition-signing").derive(SEED)
    )
    owners = [
        Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"owner %d" % i).digest()) for i in range(n)
    ]
    transitions, policies = [], {}
    previous = bytes(32)
    for i in range(n):
        document = f"policy document {i}\n".encode()
        policy_hash = hashlib.sha256(document).hexdigest()
        policies[policy_hash] = base64.b64encode(document).decode()
        # Generation i lists owner i, who authorizes generation i + 1.
        manifest = manifest_bytes(i, [owners[i]], policy_hash)
        manifest_hash = hashlib.sha256(manifest).digest()
        this_hash = hashlib.sha256(manifest_hash + previous).digest()
        # The first transition is authorized by a key its own manifest lists (owner 0).
        owner = owners[i - 1] if i > 0 else owners[0]
        transitions.append({
            "index": i,
            "manifest_hash": manifest_hash.hex(),
            "previous": previous.hex(),
            "hash": this_hash.hex(),
            "signature": signing.sign(b"concord/v1/transition" + this_hash).hex(),
            "owner_key": raw_public(owner).hex() if owner else None,
            "owner_signature": owner.sign(b"concord/v1/set-manifest" + this_hash).hex() if owner else None,
            "manifest": base64.b64encode(manifest).decode(),
        })
        previous = this_hash

    root_pem, root_der = self_signed_pem("concord root CA")
    mesh_pem, mesh_der = self_signed_pem("concord mesh CA")
    report = bytearray(1184)
    report[0x50:0x90] = hashlib.sha512(
        b"concord/v1/audit" + NONCE + raw_public(signing) + previous
        + hashlib.sha256(root_der).digest() + hashlib.sha256(mesh_der).digest()
    ).digest()
    return {
        "format": "concord-history-v1",
        "signing_key": raw_public(signing).hex(),
        "transitions": transitions,
        "policies": policies,
        "root_ca": root_pem,
        "mesh_ca": mesh_pem,
        "evidence": {"platform": "simulated", "report": base64.b64encode(bytes(report)).decode(), "nonce": NONCE.hex()},
    }


def main():
    if len(sys.argv) not in (2, 3):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    n = int(sys.argv[2]) if len(sys.argv) == 3 else 3
    with open(sys.argv[1], "w") as f:
        json.dump(build(n), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
