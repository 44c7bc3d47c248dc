#!/usr/bin/env python3
"""Independent auditor of a Concord audit bundle (history.json, format concord-history-v1).

Written from docs/PROTOCOL.md §10 alone, with Python's standard library and the `cryptography`
package; it shares no code with Concord. It checks every hash link, manifest hash, transition hash,
coordinator signature, owner authorization (against the previous manifest's workload_owner_keys; for
the first transition against its own manifest's, and none only when that manifest lists no key),
the policy documents, and that the report's report_data binds the nonce, the signing key, the latest
transition and both CA certificates. It does NOT verify the attestation report itself (signature,
certificate chain, reference values): that needs the platform's trust anchors.

Usage: audit_bundle.py [--nonce HEX] [--since HASH] history.json

  --nonce HEX   also require evidence.nonce to equal HEX (the nonce you sent to GetHistory)
  --since HASH  also require a transition with this hash: it must be an ancestor of (or equal to)
                the latest, else the history was rolled back or forked

Prints "OK <n> transitions" and exits 0, or prints the first failure and exits 3.
Exit 2 on a usage error, 1 if the file cannot be read.
"""

import argparse
import base64
import binascii
import hashlib
import json
import re
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography import x509

import tlog

FORMAT = "concord-history-v1"
TRANSITION_LABEL = b"concord/v1/transition"
SET_MANIFEST_LABEL = b"concord/v1/set-manifest"
AUDIT_LABEL = b"concord/v1/audit"
REPORT_SIZE = 1184
REPORT_DATA = slice(0x50, 0x90)
# Intel TDX quotes (PROTOCOL.md, TDX evidence; Intel's DCAP quote format): a 48-byte header whose first
# two bytes are the version (little-endian); v4: the TD report body follows; v5: a body descriptor (u16
# type, 2 = TD report 1.0 or 3 = TD report 1.5, u32 size) comes first. REPORTDATA is at offset 520 of
# the body, 64 bytes. Only where the report data sits is read here: the quote's signatures and Intel's
# collateral are `concord attestation verify-quote`'s to check.
TDX_HEADER = 48
TDX_REPORT_DATA_IN_BODY = 520


def tdx_report_data(quote: bytes) -> slice:
    """The slice of a TDX quote that holds REPORTDATA, or raises AuditFailure."""
    if len(quote) < TDX_HEADER + 6:
        fail(f"evidence.report: a TDX quote of {len(quote)} bytes is truncated")
    version = int.from_bytes(quote[0:2], "little")
    if version == 4:
        body = TDX_HEADER
    elif version == 5:
        body_type = int.from_bytes(quote[TDX_HEADER:TDX_HEADER + 2], "little")
        if body_type not in (2, 3):
            fail(f"evidence.report: TDX quote v5 body type {body_type} is not a TD report")
        body = TDX_HEADER + 6
    else:
        fail(f"evidence.report: TDX quote version {version} (4 and 5 are known)")
    start = body + TDX_REPORT_DATA_IN_BODY
    if len(quote) < start + 64:
        fail(f"evidence.report: a TDX quote of {len(quote)} bytes is truncated")
    return slice(start, start + 64)
ZERO_HASH = bytes(32)

BUNDLE_MEMBERS = {"format", "signing_key", "transitions", "policies", "root_ca", "mesh_ca", "evidence"}
# §10, §15: the latest checkpoint and its key, together or not at all
BUNDLE_OPTIONAL = {"checkpoint", "checkpoint_key"}
TRANSITION_MEMBERS = {
    "index", "manifest_hash", "previous", "hash", "signature", "owner_key", "owner_signature", "manifest",
}
EVIDENCE_REQUIRED = {"platform", "report", "nonce"}
EVIDENCE_OPTIONAL = {"certificates", "crls"}
PEM_CERT = re.compile(
    r"\A-----BEGIN CERTIFICATE-----\r?\n([A-Za-z0-9+/=\r\n]+?)-----END CERTIFICATE-----\r?\n?\Z"
)


class AuditFailure(Exception):
    """The bundle is not a valid, consistent concord-history-v1 history."""


def fail(message):
    raise AuditFailure(message)


def strict_json(data, what):
    """Parses JSON, rejecting duplicate member names and non-standard constants (NaN, Infinity)."""

    def no_duplicates(pairs):
        obj = {}
        for key, value in pairs:
            if key in obj:
                fail(f"{what}: duplicate member {key!r}")
            obj[key] = value
        return obj

    def no_constants(name):
        fail(f"{what}: invalid JSON constant {name}")

    try:
        return json.loads(data, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except (ValueError, RecursionError) as e:
        fail(f"{what}: not JSON: {e}")


def members(obj, required, optional, what):
    if not isinstance(obj, dict):
        fail(f"{what}: not an object")
    missing = required - obj.keys()
    if missing:
        fail(f"{what}: missing {sorted(missing)}")
    unknown = obj.keys() - required - optional
    if unknown:
        fail(f"{what}: unknown members {sorted(unknown)}")


def hex_bytes(value, size, what, any_case=False):
    """Bundle hex is lowercase; manifests may use either case outside policy hashes (MANIFEST.md)."""
    digits = "0-9a-fA-F" if any_case else "0-9a-f"
    if not isinstance(value, str) or not re.fullmatch(f"[{digits}]{{{2 * size}}}", value):
        fail(f"{what}: not {size} bytes of {'hex' if any_case else 'lowercase hex'}")
    return bytes.fromhex(value)


def b64_bytes(value, what):
    if not isinstance(value, str):
        fail(f"{what}: not a string")
    try:
        decoded = base64.b64decode(value, validate=True)
    except binascii.Error as e:
        fail(f"{what}: bad base64: {e}")
    if base64.b64encode(decoded).decode() != value:
        fail(f"{what}: base64 not in canonical padded form")
    return decoded


def pem_certificate_der(pem, what):
    """Returns the DER of the single certificate in `pem`, after checking it parses."""
    if not isinstance(pem, str):
        fail(f"{what}: not a string")
    match = PEM_CERT.match(pem)
    if not match:
        fail(f"{what}: not exactly one PEM CERTIFICATE block")
    body = "".join(match.group(1).split())
    der = b64_bytes(body, f"{what}: PEM body")
    try:
        x509.load_der_x509_certificate(der)
    except Exception as e:  # the parser raises several types (ValueError, InvalidVersion, …)
        fail(f"{what}: bad certificate: {e}")
    return der


def verify_ed25519(public_key, signature, message, what):
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        fail(f"{what}: signature does not verify")


def sha256(data):
    return hashlib.sha256(data).digest()


def parse_manifest(data, what):
    """The parts of a manifest the audit needs; the full rules are in docs/MANIFEST.md."""
    manifest = strict_json(data, what)
    if not isinstance(manifest, dict):
        fail(f"{what}: not a JSON object")
    owners = manifest.get("workload_owner_keys")
    if not isinstance(owners, list):
        fail(f"{what}: workload_owner_keys missing or not an array")
    owner_keys = {
        hex_bytes(k, 32, f"{what}: workload_owner_keys[{n}]", any_case=True) for n, k in enumerate(owners)
    }
    policies = manifest.get("policies")
    if not isinstance(policies, dict):
        fail(f"{what}: policies missing or not an object")
    for key in policies:
        hex_bytes(key, 32, f"{what}: policy key")
    share_owners = manifest.get("seed_share_owners")
    if not isinstance(share_owners, dict) or not isinstance(share_owners.get("keys"), list):
        fail(f"{what}: seed_share_owners missing or malformed")
    threshold = share_owners.get("threshold")
    if type(threshold) is not int:
        fail(f"{what}: seed_share_owners.threshold is not an integer")
    share_keys = tuple(
        hex_bytes(k, 32, f"{what}: seed_share_owners.keys[{n}]", any_case=True)
        for n, k in enumerate(share_owners["keys"])
    )
    return owner_keys, set(policies), (threshold, share_keys)


def deployment_id_of(share_owners, owner_keys, first_manifest):
    """PROTOCOL.md §8.1: the deployment id a first manifest makes."""
    threshold, share_keys = share_owners
    data = b"concord/v1/deployment" + bytes([threshold])
    data += len(share_keys).to_bytes(4, "big") + b"".join(sorted(share_keys))
    data += len(owner_keys).to_bytes(4, "big") + b"".join(sorted(owner_keys))
    if not owner_keys:
        data += sha256(first_manifest)
    return sha256(data)


def audit(bundle_bytes, nonce=None, since=None):
    """Returns (number of transitions, evidence platform), or raises AuditFailure with the first failure."""
    bundle = strict_json(bundle_bytes, "bundle")
    members(bundle, BUNDLE_MEMBERS, BUNDLE_OPTIONAL, "bundle")
    if bundle["format"] != FORMAT:
        fail(f"bundle: format is {bundle['format']!r}, expected {FORMAT!r}")
    signing_key = hex_bytes(bundle["signing_key"], 32, "signing_key")

    transitions = bundle["transitions"]
    if not isinstance(transitions, list) or not transitions:
        fail("transitions: not a non-empty array")

    previous_hash = ZERO_HASH
    previous_owner_keys = None
    first_share_owners = None
    policy_keys = set()
    hashes = []
    for i, t in enumerate(transitions):
        what = f"transition {i}"
        members(t, TRANSITION_MEMBERS, set(), what)
        index = t["index"]
        if type(index) is not int or index != i:
            fail(f"{what}: index is {index!r}, expected {i}")
        manifest_hash = hex_bytes(t["manifest_hash"], 32, f"{what}: manifest_hash")
        previous = hex_bytes(t["previous"], 32, f"{what}: previous")
        this_hash = hex_bytes(t["hash"], 32, f"{what}: hash")
        signature = hex_bytes(t["signature"], 64, f"{what}: signature")
        manifest = b64_bytes(t["manifest"], f"{what}: manifest")

        if previous != previous_hash:
            fail(f"{what}: previous is {previous.hex()}, expected {previous_hash.hex()}")
        if sha256(manifest) != manifest_hash:
            fail(f"{what}: manifest does not hash to manifest_hash")
        if sha256(manifest_hash + previous) != this_hash:
            fail(f"{what}: hash is not SHA-256(manifest_hash || previous)")
        verify_ed25519(signing_key, signature, TRANSITION_LABEL + this_hash, f"{what}: coordinator signature")

        # The first transition is authorized by a key its own manifest lists (PROTOCOL.md §5); only a
        # first manifest that lists no owner key has nobody to sign and carries no authorization.
        this_owner_keys, keys, share_owners = parse_manifest(manifest, f"{what}: manifest")
        authorizers = this_owner_keys if i == 0 else previous_owner_keys
        if i == 0 and not authorizers:
            if t["owner_key"] is not None or t["owner_signature"] is not None:
                fail(f"{what}: owner_key and owner_signature must be null for a first manifest with no workload_owner_keys")
        elif t["owner_key"] is None and t["owner_signature"] is None:
            if i == 0:
                fail(f"{what}: the first transition carries no owner authorization, but its manifest lists workload_owner_keys")
            fail(f"{what}: no owner authorization")
        else:
            owner_key = hex_bytes(t["owner_key"], 32, f"{what}: owner_key")
            owner_signature = hex_bytes(t["owner_signature"], 64, f"{what}: owner_signature")
            if owner_key not in authorizers:
                whose = "its own manifest's" if i == 0 else "the previous manifest's"
                fail(f"{what}: owner_key {owner_key.hex()} is not in {whose} workload_owner_keys")
            verify_ed25519(owner_key, owner_signature, SET_MANIFEST_LABEL + this_hash, f"{what}: owner authorization")

        if i == 0:
            deployment_id = deployment_id_of(share_owners, this_owner_keys, manifest)
        previous_owner_keys = this_owner_keys
        if first_share_owners is None:
            first_share_owners = share_owners
        elif share_owners != first_share_owners:
            fail(f"{what}: seed_share_owners differs from the first manifest's")
        policy_keys |= keys
        previous_hash = this_hash
        hashes.append(this_hash)
    latest = previous_hash

    policies = bundle["policies"]
    if not isinstance(policies, dict):
        fail("policies: not an object")
    for key, document in policies.items():
        expected = hex_bytes(key, 32, "policies: key")
        if sha256(b64_bytes(document, f"policy {key}")) != expected:
            fail(f"policy {key}: document does not hash to its key")
    missing = policy_keys - policies.keys()
    if missing:
        fail(f"policies: no document for {sorted(missing)[0]}")

    root_der = pem_certificate_der(bundle["root_ca"], "root_ca")
    mesh_der = pem_certificate_der(bundle["mesh_ca"], "mesh_ca")

    evidence = bundle["evidence"]
    members(evidence, EVIDENCE_REQUIRED, EVIDENCE_OPTIONAL, "evidence")
    if evidence["platform"] not in ("snp", "simulated", "tdx"):
        fail(f"evidence: unknown platform {evidence['platform']!r}")
    report = b64_bytes(evidence["report"], "evidence.report")
    if evidence["platform"] == "tdx":
        report_data_at = tdx_report_data(report)
    elif len(report) != REPORT_SIZE:
        fail(f"evidence.report: {len(report)} bytes, expected {REPORT_SIZE}")
    else:
        report_data_at = REPORT_DATA
    evidence_nonce = hex_bytes(evidence["nonce"], 32, "evidence.nonce")
    if "certificates" in evidence:
        certificates = evidence["certificates"]
        if not isinstance(certificates, list):
            fail("evidence.certificates: not an array")
        for n, cert in enumerate(certificates):
            b64_bytes(cert, f"evidence.certificates[{n}]")
    if "crls" in evidence:
        # AMD's CRLs (PROTOCOL.md, the audit bundle's evidence.crls): decoded here; their signatures and
        # freshness are the SNP verifier's to check, which this script leaves to `concord attestation`.
        crls = evidence["crls"]
        if not isinstance(crls, list):
            fail("evidence.crls: not an array")
        for n, crl in enumerate(crls):
            b64_bytes(crl, f"evidence.crls[{n}]")
    if nonce is not None and evidence_nonce != nonce:
        fail("evidence.nonce is not the nonce that was sent")
    checkpoint_key = b""
    if ("checkpoint" in bundle) != ("checkpoint_key" in bundle):
        fail("checkpoint and checkpoint_key come together or not at all")
    if "checkpoint" in bundle:
        checkpoint_key = hex_bytes(bundle["checkpoint_key"], 32, "checkpoint_key")
        if not isinstance(bundle["checkpoint"], str):
            fail("checkpoint: not a string")
        origin = tlog.origin_for(deployment_id)
        try:
            size, root = tlog.verify_checkpoint(bundle["checkpoint"], origin, checkpoint_key)
        except tlog.TlogFailure as e:
            fail(f"checkpoint: {e}")
        if size != len(hashes) or root != tlog.mth(hashes):
            fail("checkpoint: size or root hash is not the Merkle tree of the history's transition hashes")
    expected_report_data = hashlib.sha512(
        AUDIT_LABEL + evidence_nonce + signing_key + latest + sha256(root_der) + sha256(mesh_der)
        + checkpoint_key
    ).digest()
    if report[report_data_at] != expected_report_data:
        fail("evidence: report_data does not bind the nonce, signing key, latest transition and CAs")

    if since is not None and since not in hashes:
        fail(f"--since {since.hex()} is not in the history: rollback or fork")

    return len(transitions), evidence["platform"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", help="path to history.json")
    parser.add_argument("--nonce", help="expected evidence nonce, 64 hex")
    parser.add_argument("--since", help="a transition hash seen earlier, 64 hex")
    args = parser.parse_args()  # exits 2 on a usage error

    def hex_arg(value, name):
        if value is None:
            return None
        if not re.fullmatch("[0-9a-f]{64}", value):
            parser.error(f"{name} must be 64 lowercase hex characters")
        return bytes.fromhex(value)

    nonce = hex_arg(args.nonce, "--nonce")
    since = hex_arg(args.since, "--since")
    try:
        with open(args.bundle, "rb") as f:
            data = f.read()
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        n, platform = audit(data, nonce=nonce, since=since)
    except AuditFailure as e:
        print(f"FAIL {e}")
        return 3
    if platform == "simulated":
        print("INSECURE: simulated attestation", file=sys.stderr)
    print(f"OK {n} transitions")
    print("note: the attestation report's signature and reference values were not verified", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
