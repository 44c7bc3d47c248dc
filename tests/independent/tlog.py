#!/usr/bin/env python3
"""Independent verifier of Concord's transparency log (docs/PROTOCOL.md §15).

Written from RFC 9162 section 2.1 (Merkle tree, inclusion and consistency proofs and their verification
algorithms) and the C2SP specifications signed-note, tlog-checkpoint and tlog-cosignature, with Python's
standard library and the `cryptography` package; it shares no code with Concord.

Usage: tlog.py FILE.json

FILE.json (written by a test or by hand) holds:
  {"origin": "...", "checkpoint_key": "<hex>",
   "witnesses": [{"name": "...", "key": "<hex>"}], "witness_threshold": N,
   "checkpoints": ["<signed note text>", ...],           oldest first
   "consistency": [{"old": i, "new": j, "proof": ["<hex>", ...]}, ...],   indexes into checkpoints
   "inclusion": [{"checkpoint": i, "index": k, "leaf": "<hex transition hash>", "proof": ["<hex>", ...]}],
   "transitions": ["<hex transition hash>", ...]}        optional: every leaf, to recompute the roots
Every checkpoint must be signed by the log key under the origin, carry at least witness_threshold valid
cosignatures; every consistency and inclusion proof must verify. Prints "OK ..." and exits 0, or prints
the first failure and exits 3.
"""

import base64
import binascii
import hashlib
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

EM_DASH = "\u2014"


class TlogFailure(Exception):
    pass


def fail(message):
    raise TlogFailure(message)


def sha256(data):
    return hashlib.sha256(data).digest()


# ---- RFC 9162 section 2.1 ----

def largest_power_of_two_below(n):
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(leaves):
    """MTH(D[n]) of section 2.1.1, leaves being the transition hashes."""
    n = len(leaves)
    if n == 0:
        return sha256(b"")
    if n == 1:
        return sha256(b"\x00" + leaves[0])
    k = largest_power_of_two_below(n)
    return sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:]))


def verify_inclusion(leaf, index, size, proof, root):
    """Section 2.1.3.2."""
    if index >= size:
        fail(f"inclusion: index {index} is not below size {size}")
    fn, sn = index, size - 1
    r = sha256(b"\x00" + leaf)
    for p in proof:
        if sn == 0:
            fail("inclusion: proof too long")
        if fn % 2 == 1 or fn == sn:
            r = sha256(b"\x01" + p + r)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = sha256(b"\x01" + r + p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        fail("inclusion: proof too short")
    if r != root:
        fail("inclusion: the proof does not lead to the root")


def verify_consistency(first, second, first_hash, second_hash, proof):
    """Section 2.1.4.2."""
    if first > second:
        fail(f"consistency: old size {first} is larger than new size {second} (a rollback)")
    if first == 0:
        fail("consistency: old size 0")
    if first == second:
        if proof:
            fail("consistency: equal sizes need an empty proof")
        if first_hash != second_hash:
            fail(f"consistency: two different roots for size {first} (a fork)")
        return
    if first & (first - 1) == 0:
        proof = [first_hash] + list(proof)
    if not proof:
        fail("consistency: empty proof")
    fn, sn = first - 1, second - 1
    while fn % 2 == 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            fail("consistency: proof too long")
        if fn % 2 == 1 or fn == sn:
            fr = sha256(b"\x01" + c + fr)
            sr = sha256(b"\x01" + c + sr)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = sha256(b"\x01" + sr + c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        fail("consistency: proof too short")
    if fr != first_hash:
        fail("consistency: the proof does not lead to the old root (a fork)")
    if sr != second_hash:
        fail("consistency: the proof does not lead to the new root")


# ---- C2SP signed-note, tlog-checkpoint, tlog-cosignature ----

def origin_for(deployment_id):
    return "concord/v1/deployment/" + deployment_id.hex()


def key_id(name, alg, key):
    return sha256(name.encode() + b"\n" + bytes([alg]) + key)[:4]


def parse_note(text):
    """(body, [(name, key id, signature bytes)])."""
    if "\n\n" not in text:
        fail("note: no blank line")
    cut = text.rindex("\n\n")
    body, sigs = text[: cut + 1], text[cut + 2:]
    if not sigs.endswith("\n"):
        fail("note: the last signature line does not end in a newline")
    out = []
    for line in sigs[:-1].split("\n"):
        if not line.startswith(EM_DASH + " "):
            fail(f"note: bad signature line {line!r}")
        parts = line[2:].split(" ")
        if len(parts) != 2 or not parts[0] or "+" in parts[0]:
            fail(f"note: bad signature line {line!r}")
        try:
            raw = base64.b64decode(parts[1], validate=True)
        except binascii.Error:
            fail(f"note: signature of {parts[0]} is not base64")
        if len(raw) < 5:
            fail(f"note: signature of {parts[0]} too short")
        out.append((parts[0], raw[:4], raw[4:]))
    return body, out


def parse_checkpoint_body(body):
    lines = body.split("\n")
    if len(lines) != 4 or lines[3] != "":
        fail("checkpoint: not exactly three lines")
    origin, size, root = lines[:3]
    if not size.isdigit() or (len(size) > 1 and size[0] == "0") or not size.isascii():
        fail(f"checkpoint: bad size {size!r}")
    try:
        root_bytes = base64.b64decode(root, validate=True)
    except binascii.Error:
        fail("checkpoint: root not base64")
    if len(root_bytes) != 32 or base64.b64encode(root_bytes).decode() != root:
        fail("checkpoint: root not 32 bytes of canonical base64")
    return origin, int(size), root_bytes


def ed25519_ok(key, signature, message):
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(signature, message)
        return True
    except (InvalidSignature, ValueError):
        return False


def verify_checkpoint(text, origin, key):
    """(size, root) of a checkpoint signed by `key` under the name `origin`."""
    body, sigs = parse_note(text)
    found_origin, size, root = parse_checkpoint_body(body)
    if found_origin != origin:
        fail(f"checkpoint: origin {found_origin!r}, expected {origin!r}")
    kid = key_id(origin, 0x01, key)
    if not any(n == origin and k == kid and ed25519_ok(key, s, body.encode()) for n, k, s in sigs):
        fail("checkpoint: no valid signature by the log key")
    return size, root


def cosignature_times(text, witnesses):
    """{witness name: timestamp} of the valid cosignature/v1 signatures on the note."""
    body, sigs = parse_note(text)
    out = {}
    for w in witnesses:
        name, key = w["name"], bytes.fromhex(w["key"])
        kid = key_id(name, 0x04, key)
        for n, k, s in sigs:
            if n != name or k != kid or len(s) != 72:
                continue
            ts = int.from_bytes(s[:8], "big")
            if ts >= 2**63:
                continue
            message = b"cosignature/v1\ntime " + str(ts).encode() + b"\n" + body.encode()
            if ed25519_ok(key, s[8:], message):
                out[name] = ts
    return out


def check(doc):
    origin = doc["origin"]
    key = bytes.fromhex(doc["checkpoint_key"])
    witnesses = doc.get("witnesses", [])
    threshold = doc.get("witness_threshold", 0)
    heads = []
    for i, text in enumerate(doc["checkpoints"]):
        try:
            size, root = verify_checkpoint(text, origin, key)
        except TlogFailure as e:
            fail(f"checkpoint {i}: {e}")
        cosigned = cosignature_times(text, witnesses)
        if len(cosigned) < threshold:
            fail(f"checkpoint {i} (size {size}): {len(cosigned)} valid cosignatures, {threshold} required")
        heads.append((size, root))
    leaves = [bytes.fromhex(h) for h in doc.get("transitions", [])]
    for i, (size, root) in enumerate(heads):
        if leaves and size <= len(leaves) and mth(leaves[:size]) != root:
            fail(f"checkpoint {i}: root is not MTH of the first {size} transitions")
    for c in doc.get("consistency", []):
        (s1, r1), (s2, r2) = heads[c["old"]], heads[c["new"]]
        verify_consistency(s1, s2, r1, r2, [bytes.fromhex(h) for h in c["proof"]])
    for p in doc.get("inclusion", []):
        size, root = heads[p["checkpoint"]]
        verify_inclusion(bytes.fromhex(p["leaf"]), p["index"], size, [bytes.fromhex(h) for h in p["proof"]], root)
    return len(heads), len(doc.get("consistency", [])), len(doc.get("inclusion", []))


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        with open(sys.argv[1], "rb") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        n, c, i = check(doc)
    except TlogFailure as e:
        print(f"FAIL {e}")
        return 3
    print(f"OK {n} checkpoints, {c} consistency proofs, {i} inclusion proofs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
