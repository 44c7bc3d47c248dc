#!/usr/bin/env python3
"""Checks docs/manifest.schema.json against docs/examples/manifest.json.

The example must validate; each variant below breaks one rule of docs/MANIFEST.md and must be
rejected. Needs the `jsonschema` package (pip install jsonschema). Exits 0 when all checks hold,
1 otherwise.

Usage: check_schema.py [SCHEMA [EXAMPLE]]
"""

import copy
import json
import pathlib
import sys

from jsonschema import Draft202012Validator

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"


def variants(example):
    """Yields (description, invalid manifest) pairs, each derived from the valid example."""
    policy_keys = list(example["policies"])

    def mutate(description, change):
        manifest = copy.deepcopy(example)
        change(manifest)
        return description, manifest

    yield mutate("unknown top-level field", lambda m: m.update(version=1))
    yield mutate(
        "unknown policy field",
        lambda m: m["policies"][policy_keys[0]].update(secret="x"),
    )
    yield mutate(
        "unknown reference value field",
        lambda m: m["reference_values"]["snp"][0].update(allow_smt=True),
    )
    yield mutate(
        "short policy hash",
        lambda m: m["policies"].update({policy_keys[0][:62]: m["policies"].pop(policy_keys[0])}),
    )
    yield mutate(
        "uppercase policy hash",
        lambda m: m["policies"].update(
            {policy_keys[0].upper(): m["policies"].pop(policy_keys[0])}
        ),
    )
    yield mutate("bad role", lambda m: m["policies"][policy_keys[0]].update(role="admin"))
    yield mutate(
        "missing sans",
        lambda m: m["policies"][policy_keys[0]].pop("sans"),
    )
    yield mutate(
        "short measurement",
        lambda m: m["reference_values"]["snp"][0]["trusted_measurements"].append("00" * 32),
    )
    yield mutate(
        "short chip id",
        lambda m: m["reference_values"]["snp"][0]["allowed_chip_ids"].append("00" * 48),
    )
    yield mutate("unknown product", lambda m: m["reference_values"]["snp"][0].update(product="Naples"))
    yield mutate(
        "TCB component above 255",
        lambda m: m["reference_values"]["snp"][0]["minimum_tcb"].update(microcode=256),
    )
    yield mutate(
        "TCB component not an integer",
        lambda m: m["reference_values"]["snp"][0]["minimum_tcb"].update(snp="8"),
    )
    yield mutate(
        "fmc on Milan",
        lambda m: m["reference_values"]["snp"][0]["minimum_tcb"].update(fmc=1),
    )
    yield mutate(
        "short simulated root",
        lambda m: m["reference_values"]["simulated"][0].update(root="ff"),
    )
    yield mutate("short owner key", lambda m: m["workload_owner_keys"].append("ab" * 31))
    yield mutate("threshold 0", lambda m: m["seed_share_owners"].update(threshold=0))
    yield mutate("threshold 256", lambda m: m["seed_share_owners"].update(threshold=256))
    yield mutate("no share owner keys", lambda m: m["seed_share_owners"].update(keys=[]))
    yield mutate(
        "duplicate share owner key",
        lambda m: m["seed_share_owners"]["keys"].append(m["seed_share_owners"]["keys"][0]),
    )
    yield mutate("missing seed_share_owners", lambda m: m.pop("seed_share_owners"))
    yield mutate(
        "no trusted measurement",
        lambda m: m["reference_values"]["snp"][0].update(trusted_measurements=[]),
    )
    yield mutate(
        "empty allowed_chip_ids",
        lambda m: m["reference_values"]["snp"][0].update(allowed_chip_ids=[]),
    )
    yield mutate(
        "empty workload_secret_id",
        lambda m: m["policies"][policy_keys[1]].update(workload_secret_id=""),
    )
    yield mutate(
        "duplicate owner key",
        lambda m: m["workload_owner_keys"].append(m["workload_owner_keys"][0]),
    )
    yield mutate("all-zero share owner key", lambda m: m["seed_share_owners"]["keys"].append("00" * 32))
    web = policy_keys[1]
    for description, key in [
        ("transit key version 0", {"latest_version": 0}),
        ("transit key unknown field", {"derived": True}),
        ("transit key unknown operation", {"allow": {"sign": [web]}}),
        ("transit key allow not a policy hash", {"allow": {"encrypt": ["web"]}}),
        ("transit key allow listed twice", {"allow": {"encrypt": [web, web]}}),
    ]:
        yield mutate(description, lambda m, key=key: m.update(transit_keys={"orders": key}))
    yield mutate("transit key name with a slash", lambda m: m.update(transit_keys={"a/b": {}}))


def transit_example(example):
    """The example with a `transit_keys` section as MANIFEST.md documents it: must be valid."""
    manifest = copy.deepcopy(example)
    web = list(example["policies"])[1]
    manifest["transit_keys"] = {
        "orders": {
            "latest_version": 2,
            "min_decryption_version": 1,
            "allow": {"encrypt": [web], "decrypt": [web], "rewrap": [web], "datakey": [web]},
        },
        "audit-log.v1": {},
    }
    return manifest


def main():
    schema_path = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else DOCS / "manifest.schema.json"
    example_path = (
        pathlib.Path(sys.argv[2]) if len(sys.argv) > 2 else DOCS / "examples" / "manifest.json"
    )
    schema = json.loads(schema_path.read_text())
    example = json.loads(example_path.read_text())

    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)

    failures = 0
    errors = sorted(validator.iter_errors(example), key=lambda e: list(e.path))
    for error in errors:
        print(f"FAIL example: {'/'.join(map(str, error.path))}: {error.message}")
        failures += 1
    if not errors:
        print(f"ok   {example_path.name} is valid")

    if validator.is_valid(transit_example(example)):
        print("ok   a manifest with transit_keys is valid")
    else:
        print("FAIL a manifest with transit_keys is rejected")
        failures += 1

    for description, manifest in variants(example):
        if validator.is_valid(manifest):
            print(f"FAIL accepted: {description}")
            failures += 1
        else:
            print(f"ok   rejected: {description}")

    # Hex values other than policy keys may be written in either case.
    upper = copy.deepcopy(example)
    snp = upper["reference_values"]["snp"][0]
    snp["trusted_measurements"] = [v.upper() for v in snp["trusted_measurements"]]
    upper["workload_owner_keys"] = [k.upper() for k in upper["workload_owner_keys"]]
    if validator.is_valid(upper):
        print("ok   uppercase measurement and owner keys are valid")
    else:
        print("FAIL uppercase measurement or owner keys rejected")
        failures += 1

    # Optional members with safe defaults: the lists default to empty, the switches to false.
    defaults = copy.deepcopy(example)
    defaults["reference_values"]["snp"][0].pop("allow_debug")
    defaults["reference_values"]["snp"][0].pop("allow_migration_agent")
    defaults["reference_values"].pop("simulated")
    if validator.is_valid(defaults):
        print("ok   omitted allow_* switches and reference value lists are valid")
    else:
        print("FAIL omitted optional reference value members rejected")
        failures += 1

    # reference_values.tdx (issue 10): the normative field names, and what the schema refuses.
    tdx_entry = {
        "trusted_mrtd": ["ab" * 48],
        "rtmr": {"0": ["cd" * 48], "3": ["EF" * 48]},
        "trusted_mrseam": ["01" * 48],
        "minimum_tee_tcb_svn": "06010300000000000000000000000000",
        "allowed_tcb_statuses": ["UpToDate", "SWHardeningNeeded"],
        "allow_debug": False,
    }
    with_tdx = copy.deepcopy(example)
    with_tdx["reference_values"]["tdx"] = [tdx_entry, {"trusted_mrtd": ["ab" * 48]}]
    if validator.is_valid(with_tdx):
        print("ok   a manifest with reference_values.tdx is valid")
    else:
        print("FAIL a manifest with reference_values.tdx rejected")
        failures += 1
    for description, change in [
        ("tdx: Revoked among the allowed statuses", lambda e: e["allowed_tcb_statuses"].append("Revoked")),
        ("tdx: RTMR index 4", lambda e: e["rtmr"].update({"4": ["00" * 48]})),
        ("tdx: short MRTD", lambda e: e["trusted_mrtd"].append("00" * 32)),
        ("tdx: short TEE TCB SVN", lambda e: e.update(minimum_tee_tcb_svn="00" * 8)),
        ("tdx: unknown field", lambda e: e.update(mrtd=["ab" * 48])),
        ("tdx: no trusted_mrtd", lambda e: e.pop("trusted_mrtd")),
        ("tdx: empty allowed statuses", lambda e: e.update(allowed_tcb_statuses=[])),
    ]:
        manifest = copy.deepcopy(with_tdx)
        change(manifest["reference_values"]["tdx"][0])
        if validator.is_valid(manifest):
            print(f"FAIL accepted: {description}")
            failures += 1
        else:
            print(f"ok   rejected: {description}")

    # A minimal, final manifest must stay valid.
    minimal = {
        "policies": {},
        "reference_values": {},
        "workload_owner_keys": [],
        "seed_share_owners": {"threshold": 1, "keys": ["11" * 32]},
    }
    if validator.is_valid(minimal):
        print("ok   minimal final manifest is valid")
    else:
        print("FAIL minimal final manifest rejected")
        failures += 1

    if failures:
        print(f"{failures} check(s) failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
