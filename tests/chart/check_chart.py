#!/usr/bin/env python3
"""Checks the Helm chart charts/concord, with no cluster and no helm binary:

(a) lints it and renders it with Helm's own engine (the helm-python-sdk package bundles Helm 4 as a
    library), with the default values and with each values file beside this script;
(b) validates every rendered document against the schemas of a pinned Kubernetes version
    (kubernetes-validate, strict: unknown fields are errors);
(c) asserts what the design requires: Parallel pods, the peer Service publishing not-ready pods, a
    PodDisruptionBudget that keeps the Raft quorum (1, 3 and 5 replicas; an override above it is
    refused), the NetworkPolicy (9102 only from the scraper and node CIDRs; egress only to DNS, the peers,
    the KDS on SEV-SNP and the PCS/PCCS on TDX), the probes, the checksum annotation (and that it changes
    with the configuration), the labels, the security settings; on SEV-SNP a runtime class, an image by
    digest and a way for uid 65532 to open /dev/sev-guest (each refused when missing); on Intel TDX a
    runtime class, an image by digest, a chosen way to write configfs-tsm report entries (uid 0 with no
    capability, or the runtime's) and a source of Intel's collateral (each refused when missing); and
    that the Containerfile pins its base images by digest;
(d) runs the real binaries with every flag and environment variable the rendered StatefulSet gives each
    container, plus --check-config, as two of its pods would (POD_NAME etc. substituted), so the chart
    and the binaries cannot drift apart.

Usage: check_chart.py [--target-dir DIR] [--chart DIR] [--containerfile FILE]   (default: $CARGO_TARGET_DIR,
else target/; the binaries come from DIR/debug: run `cargo build --workspace --bins` first; --chart and
--containerfile check another copy, e.g. an older commit's). Exit 0 when every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

try:
    import helm_python as helm
    import kubernetes_validate
    import yaml
except ImportError as e:  # pragma: no cover - a setup error, said plainly
    sys.exit(f"check_chart.py: {e}; install: pip install helm-python-sdk kubernetes-validate pyyaml")

# The Kubernetes version whose schemas the rendered objects must satisfy.
KUBE_VERSION = "1.33.0"
REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "concord"
CONTAINERFILE = REPO / "Containerfile"
HERE = Path(__file__).resolve().parent
NAMESPACE = "concord-test"
PORTS = {"user": 1313, "mesh": 7777, "peer": 7778, "health": 9102, "transit": 8200}
PROBES = {
    "startupProbe": "/probe/startup",
    "livenessProbe": "/probe/liveness",
    "readinessProbe": "/probe/readiness",
}
STANDARD_LABELS = [
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
]

failures: list[str] = []


def check(ok: bool, what: str) -> None:
    if not ok:
        failures.append(what)
        print(f"  FAIL {what}")


# --- (a) lint and render -------------------------------------------------------------------------


def load_values(name: str | None) -> dict[str, Any]:
    return yaml.safe_load((HERE / name).read_text()) if name else {}


def lint(values: dict[str, Any], label: str) -> None:
    report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}")
    for m in report.get("messages", []):
        # severity 1 is information (e.g. "icon is recommended"); 2 warning, 3 error.
        check(m["severity"] < 2, f"{label}: helm lint: {m['path']}: {m['error']}")
    for e in report.get("errors") or []:
        check(False, f"{label}: helm lint: {e}")


def render(values: dict[str, Any], release: str) -> tuple[list[dict[str, Any]], str]:
    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render(values, name=release, namespace=NAMESPACE, is_install=True)
    docs: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs, notes


def merged(values: dict[str, Any]) -> dict[str, Any]:
    with helm.Chart.load(str(CHART)) as chart:
        return chart.merge_values(values)


# --- (b) schema validation -----------------------------------------------------------------------


def validate(docs: list[dict[str, Any]], label: str) -> None:
    for d in docs:
        name = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(d, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.path)
            check(False, f"{label}: {name} does not validate against Kubernetes {KUBE_VERSION}: {path}: {e.message}")
        except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.VersionNotSupportedError) as e:
            check(False, f"{label}: {name}: {e.message}")


# --- (c) structure -------------------------------------------------------------------------------


def find(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, label: str) -> dict[str, Any]:
    found = find(docs, kind)
    check(len(found) == 1, f"{label}: expected one {kind}, found {len(found)}")
    return found[0] if found else {}


def coordinator_container(sts: dict[str, Any]) -> dict[str, Any]:
    return sts["spec"]["template"]["spec"]["containers"][0]


def check_structure(docs: list[dict[str, Any]], notes: str, values: dict[str, Any], label: str) -> None:
    v = merged(values)
    replicas = int(v["replicas"])
    initial = int(v["cluster"].get("initialReplicas") or replicas)
    sts = one(docs, "StatefulSet", label)
    spec = sts["spec"]
    pod = spec["template"]
    selector = spec["selector"]["matchLabels"]

    check(spec["podManagementPolicy"] == "Parallel", f"{label}: podManagementPolicy is not Parallel")
    check(spec["replicas"] == replicas, f"{label}: StatefulSet replicas {spec['replicas']} != {replicas}")
    check(selector.items() <= pod["metadata"]["labels"].items(), f"{label}: the selector does not match the pod labels")
    check(
        "checksum/config" in pod["metadata"].get("annotations", {}),
        f"{label}: no checksum/config annotation on the pod template",
    )

    # Labels on every object.
    for d in docs:
        labels = d["metadata"].get("labels", {})
        missing = [k for k in STANDARD_LABELS if k not in labels]
        check(not missing, f"{label}: {d['kind']}/{d['metadata']['name']} lacks labels {missing}")

    # Services.
    services = {s["metadata"]["name"]: s for s in find(docs, "Service")}
    peers = services.get(spec["serviceName"])
    check(peers is not None, f"{label}: no headless Service {spec['serviceName']} for the StatefulSet")
    if peers:
        check(peers["spec"].get("clusterIP") == "None", f"{label}: the peer Service is not headless")
        check(peers["spec"].get("publishNotReadyAddresses") is True, f"{label}: the peer Service does not publish not-ready pods")
        check([p["port"] for p in peers["spec"]["ports"]] == [7778], f"{label}: the peer Service does not serve exactly 7778")
    user = services.get(v["services"]["coordinator"]["name"])
    ready = services.get(v["services"]["ready"]["name"])
    check(user is not None and ready is not None, f"{label}: the coordinator and coordinator-ready Services are missing")
    if user and ready:
        check(sorted(p["port"] for p in user["spec"]["ports"]) == [1313], f"{label}: the coordinator Service is not the user API alone")
        check(user["spec"].get("publishNotReadyAddresses") is True, f"{label}: the coordinator Service must reach fresh and recovering replicas")
        check(sorted(p["port"] for p in ready["spec"]["ports"]) == [1313, 7777, 8200], f"{label}: coordinator-ready must serve 1313, 7777 and 8200")
        check(not ready["spec"].get("publishNotReadyAddresses", False), f"{label}: coordinator-ready must select only ready pods")
    for s in services.values():
        check(s["spec"]["selector"] == selector, f"{label}: Service {s['metadata']['name']} selects other pods")

    # PodDisruptionBudget: a voluntary eviction never breaks the quorum of the voters.
    pdb = one(docs, "PodDisruptionBudget", label)
    max_unavailable = pdb.get("spec", {}).get("maxUnavailable")
    voters = min(replicas, initial)
    check(
        isinstance(max_unavailable, int) and voters - max_unavailable >= voters // 2 + 1,
        f"{label}: PDB maxUnavailable {max_unavailable} can break the quorum of {voters} voters",
    )
    check(
        max_unavailable == (voters - 1) // 2,
        f"{label}: PDB maxUnavailable {max_unavailable}, want {(voters - 1) // 2} for {voters} voters",
    )
    check(pdb.get("spec", {}).get("selector", {}).get("matchLabels") == selector, f"{label}: the PDB selects other pods")

    # NetworkPolicy: 7778 only from coordinator pods; the other ports admitted by their own rules.
    policy = one(docs, "NetworkPolicy", label)
    rules = policy.get("spec", {}).get("ingress", [])
    check(policy.get("spec", {}).get("podSelector", {}).get("matchLabels") == selector, f"{label}: the NetworkPolicy protects other pods")
    peer_rules = [r for r in rules if any(p["port"] == 7778 for p in r.get("ports", []))]
    check(len(peer_rules) == 1, f"{label}: port 7778 must be admitted by exactly one rule")
    if peer_rules:
        check(
            peer_rules[0].get("from") == [{"podSelector": {"matchLabels": selector}}],
            f"{label}: port 7778 is admitted from more than the coordinator pods: {peer_rules[0].get('from')}",
        )
        check([p["port"] for p in peer_rules[0]["ports"]] == [7778], f"{label}: the peer rule admits other ports")
    admitted = {p["port"] for r in rules for p in r.get("ports", [])}
    health = {"scraperNamespaceSelector": {}, "scraperPodSelector": {}, "nodeCidrs": [], **v["networkPolicy"].get("health", {})}
    health_open = bool(health["scraperNamespaceSelector"] or health["scraperPodSelector"] or health["nodeCidrs"])
    want_ports = set(PORTS.values()) - (set() if health_open else {9102})
    check(admitted == want_ports, f"{label}: the NetworkPolicy admits {sorted(admitted)}, want {sorted(want_ports)}")
    check_health_ingress(rules, health, label)
    egress = {"dns": [], "kdsCidrs": [], "kdsPort": 443, "pccsCidrs": [], "pccsPort": 443, **v["networkPolicy"].get("egress", {})}
    check_egress(policy, v["attestation"], egress, selector, label)

    # Probes on the health port.
    c = coordinator_container(sts)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(ports == PORTS, f"{label}: container ports {ports}, want {PORTS}")
    for probe, path in PROBES.items():
        get = c.get(probe, {}).get("httpGet", {})
        check(get.get("path") == path, f"{label}: {probe} path {get.get('path')}, want {path}")
        port = get.get("port")
        check(ports.get(port, port) == 9102, f"{label}: {probe} is not on port 9102")

    # Security: non-root, read-only root, no capability, no token, no RBAC.
    pod_spec = pod["spec"]
    ctx = c.get("securityContext", {})
    tdx_root = v["attestation"]["platform"] == "tdx" and v["attestation"]["tdx"]["reportAccess"] == "root"
    if not tdx_root:
        check(pod_spec.get("securityContext", {}).get("runAsNonRoot") is True, f"{label}: pods may run as root")
    check(ctx.get("readOnlyRootFilesystem") is True, f"{label}: the root file system is writable")
    check(ctx.get("allowPrivilegeEscalation") is False, f"{label}: privilege escalation is allowed")
    check(ctx.get("capabilities", {}).get("drop") == ["ALL"], f"{label}: capabilities are not all dropped")
    check(pod_spec.get("automountServiceAccountToken") is False, f"{label}: the service account token is mounted")
    sa = one(docs, "ServiceAccount", label)
    check(sa.get("automountServiceAccountToken") is False, f"{label}: the ServiceAccount mounts its token")
    rbac = [d["kind"] for d in docs if d["kind"] in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")]
    check(not rbac, f"{label}: the chart grants Kubernetes API access: {rbac}")

    # Storage.
    claims = spec.get("volumeClaimTemplates", [])
    check([t["metadata"]["name"] for t in claims] == ["data"], f"{label}: no volumeClaimTemplate named data")
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
    check(mounts.get("data") == "/var/lib/concord", f"{label}: the data volume is not at /var/lib/concord")

    # Confidential VMs and the platform.
    if v.get("runtimeClassName"):
        check(pod_spec.get("runtimeClassName") == v["runtimeClassName"], f"{label}: runtimeClassName is not set on the pods")
    simulated = v["attestation"]["platform"] == "simulated"
    check(("INSECURE" in notes) == simulated, f"{label}: NOTES must say INSECURE exactly when attestation is simulated")
    check("concord set" in notes and "concord verify" in notes and "port-forward" in notes, f"{label}: NOTES lacks the next steps")
    tdx = v["attestation"]["platform"] == "tdx"
    check(("Intel TDX" in notes) == tdx, f"{label}: NOTES must describe the TDX setup exactly when attestation is tdx")
    check(("uid 0" in notes) == (tdx and v["attestation"]["tdx"]["reportAccess"] == "root"), f"{label}: NOTES must say the container runs as uid 0 exactly when it does")
    image = c["image"]
    if v["image"]["digest"]:
        check(image.endswith("@" + v["image"]["digest"]), f"{label}: image {image} is not pinned to the digest {v['image']['digest']}")
    else:
        tag = v["image"]["tag"] or app_version()
        check(image.endswith(":" + tag), f"{label}: image {image} is not pinned to {tag} (image.tag, else appVersion)")
    if not simulated:
        check("@sha256:" in image, f"{label}: on SEV-SNP and TDX the image must be pinned by digest, not {image}")
        check(bool(pod_spec.get("runtimeClassName")), f"{label}: on SEV-SNP and TDX the pods need a runtimeClassName (a confidential VM)")
    if v["attestation"]["platform"] == "snp":
        check_device_access(pod_spec, c, v["attestation"]["snp"], label)
    else:
        check(not c.get("resources", {}).get("limits", {}).keys() - {"cpu", "memory"}, f"{label}: a device resource is requested off SEV-SNP")
        check(not pod_spec.get("securityContext", {}).get("supplementalGroups"), f"{label}: supplementalGroups off SEV-SNP")
        check(not any(vol.get("hostPath", {}).get("path") == "/dev/sev-guest" for vol in pod_spec.get("volumes", [])), f"{label}: /dev/sev-guest mounted off SEV-SNP")
    if v["attestation"]["platform"] == "tdx":
        check_tsm_access(pod_spec, c, v["attestation"]["tdx"], label)
    else:
        check(not any(vol.get("hostPath", {}).get("path") == "/sys/kernel/config" for vol in pod_spec.get("volumes", [])), f"{label}: configfs mounted off TDX")
        check(pod_spec.get("securityContext", {}).get("runAsUser") == 65532, f"{label}: off TDX the pod must run as uid 65532")


def check_health_ingress(rules: list[dict[str, Any]], health: dict[str, Any], label: str) -> None:
    """9102 (probes and metrics) only from the scraper's selectors and the node CIDRs: never from anyone."""
    for r in rules:
        if not any(p["port"] == 9102 for p in r.get("ports", [])):
            continue
        sources = r.get("from") or []
        check(bool(sources), f"{label}: port 9102 is admitted from anyone")
        check([p["port"] for p in r["ports"]] == [9102], f"{label}: the 9102 rule admits other ports")
        want: list[dict[str, Any]] = []
        if health["scraperNamespaceSelector"] or health["scraperPodSelector"]:
            peer: dict[str, Any] = {}
            if health["scraperNamespaceSelector"]:
                peer["namespaceSelector"] = {"matchLabels": health["scraperNamespaceSelector"]}
            if health["scraperPodSelector"]:
                peer["podSelector"] = {"matchLabels": health["scraperPodSelector"]}
            want.append(peer)
        want.extend({"ipBlock": {"cidr": cidr}} for cidr in health["nodeCidrs"])
        check(sources == want, f"{label}: port 9102 is admitted from {sources}, want the scraper and the node CIDRs {want}")


def check_egress(policy: dict[str, Any], attestation: dict[str, Any], egress: dict[str, Any], selector: dict[str, str], label: str) -> None:
    """Egress only to DNS, the peers' 7778, (SEV-SNP) the KDS and (TDX) the PCS/PCCS: never to any destination."""
    spec = policy.get("spec", {})
    check("Egress" in spec.get("policyTypes", []), f"{label}: the NetworkPolicy does not restrict egress")
    allowed: set[tuple[int, str]] = set()
    for r in spec.get("egress", []):
        to = r.get("to") or []
        ports = {(p["port"], p.get("protocol", "TCP")) for p in r.get("ports", [])}
        check(bool(to), f"{label}: an egress rule admits every destination: {r}")
        check(bool(ports), f"{label}: an egress rule admits every port: {r}")
        allowed |= ports
        if ports == {(7778, "TCP")}:
            check(to == [{"podSelector": {"matchLabels": selector}}], f"{label}: egress to 7778 goes beyond the coordinator pods: {to}")
        elif ports == {(53, "UDP"), (53, "TCP")}:
            check(to == egress["dns"], f"{label}: egress to DNS goes elsewhere than networkPolicy.egress.dns: {to}")
        elif attestation["platform"] == "tdx":
            check(ports == {(egress["pccsPort"], "TCP")}, f"{label}: unexpected egress ports {sorted(ports)}")
            check(to == [{"ipBlock": {"cidr": c}} for c in egress["pccsCidrs"]], f"{label}: egress to the PCS/PCCS goes beyond pccsCidrs: {to}")
        else:
            check(ports == {(egress["kdsPort"], "TCP")}, f"{label}: unexpected egress ports {sorted(ports)}")
            check(to == [{"ipBlock": {"cidr": c}} for c in egress["kdsCidrs"]], f"{label}: egress to the KDS goes beyond kdsCidrs: {to}")
    want = {(7778, "TCP"), (53, "UDP"), (53, "TCP")}
    if attestation["platform"] == "snp" and attestation["snp"]["kdsUrl"] != "off" and egress["kdsCidrs"]:
        want.add((egress["kdsPort"], "TCP"))
    if attestation["platform"] == "tdx" and attestation["tdx"]["pccsUrl"] != "off" and egress["pccsCidrs"]:
        want.add((egress["pccsPort"], "TCP"))
    check(allowed == want, f"{label}: egress admits {sorted(allowed)}, want {sorted(want)}")


def check_device_access(pod_spec: dict[str, Any], c: dict[str, Any], snp: dict[str, Any], label: str) -> None:
    """The container runs as uid 65532 with no capability: it reaches /dev/sev-guest only through a group
    that owns the device, or a device plugin's resource (the runtime then gives it the pod's user)."""
    ctx = pod_spec.get("securityContext", {})
    check(ctx.get("runAsUser") == 65532 and ctx.get("runAsNonRoot") is True, f"{label}: the pod does not run as uid 65532")
    groups = ctx.get("supplementalGroups", [])
    limits = c.get("resources", {}).get("limits", {})
    mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
    access = snp.get("deviceAccess")
    if access == "group":
        check(groups == [snp["deviceGroup"]], f"{label}: supplementalGroups {groups}, want the device's group [{snp['deviceGroup']}]")
    elif access == "resource":
        check(limits.get(snp["deviceResource"]) == 1, f"{label}: the container does not request the device plugin's {snp['deviceResource']}")
        check("/dev/sev-guest" not in mounts, f"{label}: a hostPath hides the device plugin's /dev/sev-guest")
        check(not groups, f"{label}: supplementalGroups {groups} without deviceAccess=group")
    else:
        check(False, f"{label}: on SEV-SNP uid 65532 has no way to open /dev/sev-guest (deviceAccess {access!r})")


def check_tsm_access(pod_spec: dict[str, Any], c: dict[str, Any], tdx: dict[str, Any], label: str) -> None:
    """configfs-tsm report entries are root-owned (inblob mode 0200): with reportAccess=root the container
    runs as uid 0, and nothing else is given up (no capability, no escalation, read-only root, gid 65532);
    with reportAccess=runtime it stays uid 65532. configfs is mounted read-write iff mountConfigfs."""
    ctx = pod_spec.get("securityContext", {})
    cctx = c.get("securityContext", {})
    access = tdx.get("reportAccess")
    if access == "root":
        check(ctx.get("runAsUser") == 0 and ctx.get("runAsNonRoot") is False, f"{label}: reportAccess=root, but the pod runs as {ctx.get('runAsUser')} (runAsNonRoot {ctx.get('runAsNonRoot')})")
    elif access == "runtime":
        check(ctx.get("runAsUser") == 65532 and ctx.get("runAsNonRoot") is True, f"{label}: reportAccess=runtime must keep uid 65532")
    else:
        check(False, f"{label}: on TDX no way to write configfs-tsm report entries was chosen (reportAccess {access!r})")
    check(ctx.get("runAsGroup") == 65532 and ctx.get("fsGroup") == 65532, f"{label}: the pod's group is not 65532")
    check("runAsUser" not in cctx and "runAsNonRoot" not in cctx, f"{label}: the container overrides the pod's user")
    check(cctx.get("capabilities", {}).get("drop") == ["ALL"] and not cctx.get("capabilities", {}).get("add"), f"{label}: the TDX container holds a capability")
    check(cctx.get("privileged") is False and cctx.get("allowPrivilegeEscalation") is False, f"{label}: the TDX container is privileged or may escalate")
    check(cctx.get("readOnlyRootFilesystem") is True, f"{label}: the TDX container's root file system is writable")
    volumes = {vol["name"]: vol for vol in pod_spec.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    configfs = mounts.get("/sys/kernel/config")
    check((configfs is not None) == bool(tdx["mountConfigfs"]), f"{label}: /sys/kernel/config mounted iff mountConfigfs")
    if configfs is not None:
        check(not configfs.get("readOnly", False), f"{label}: configfs is mounted read-only: no quote can be requested")
        check(volumes.get(configfs["name"], {}).get("hostPath", {}).get("path") == "/sys/kernel/config", f"{label}: the configfs mount is not the hostPath /sys/kernel/config")
    for path, m in mounts.items():
        if path != "/sys/kernel/config" and path != "/var/lib/concord":
            check(m.get("readOnly") is True, f"{label}: {path} is mounted writable")


def check_containerfile() -> None:
    """Every base image of the Containerfile is pinned by digest: literally, or by a required build
    argument the build itself checks (no default, so no tag can slip in)."""
    text = CONTAINERFILE.read_text()
    lines = [l.strip() for l in text.replace("\\\n", " ").splitlines() if l.strip() and not l.strip().startswith("#")]
    args: dict[str, str | None] = {}
    stages: set[str] = set()
    froms = 0
    for line in lines:
        words = line.split()
        if words[0].upper() == "ARG":
            name, _, default = words[1].partition("=")
            args.setdefault(name, default or None)
        if words[0].upper() != "FROM":
            continue
        froms += 1
        ref = words[1]
        if len(words) >= 4 and words[2].upper() == "AS":
            stages.add(words[3])
        if ref in stages:
            continue
        m = re.fullmatch(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", ref)
        if m:
            name = m.group(1)
            check(name in args and args[name] is None, f"Containerfile: FROM {ref}: {name} must be a build argument without a default")
            check(
                f'"{name}=${name}"' in text and "@sha256:[0-9a-f]{64}" in text,
                f"Containerfile: FROM {ref}: the build does not check that {name} names a digest",
            )
        else:
            check(bool(re.search(r"@sha256:[0-9a-f]{64}$", ref)), f"Containerfile: FROM {ref} is not pinned by digest")
    check(froms >= 2, f"Containerfile: expected a build and a runtime stage, found {froms} FROM lines")



def check_pdb_override() -> None:
    for replicas, override in ((3, 1), (5, 2), (5, 1), (1, 0)):
        docs, _ = render({**SIMULATED, "replicas": replicas, "podDisruptionBudget": {"maxUnavailable": override}}, "concord")
        pdb = one(docs, "PodDisruptionBudget", f"override {override} of {replicas}")
        got = pdb.get("spec", {}).get("maxUnavailable")
        check(got == override, f"PDB override {override} with {replicas} replicas rendered as {got}")


def app_version() -> str:
    with helm.Chart.load(str(CHART)) as chart:
        return str(chart.metadata["appVersion"])


def checksum(values: dict[str, Any]) -> str:
    docs, _ = render(values, "concord")
    sts = one(docs, "StatefulSet", "checksum")
    return sts["spec"]["template"]["metadata"]["annotations"]["checksum/config"]


def deep_merge(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in change.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def check_checksum() -> None:
    def checksum_with(change: dict[str, Any]) -> str:
        return checksum(deep_merge(SNP_REQUIRED, change))

    base = checksum_with({})
    for change in (
        {"logLevel": "debug"},
        {"logFormat": "text"},
        {"cluster": {"domain": "corp.example"}},
        {"attestation": {"snp": {"kdsUrl": "off"}}},
        {"attestation": {"snp": {"reference": {"product": "Milan"}}}},
        {"attestation": {"snp": {"acceptStaleAmdCrlFor": "12h"}}},
        {"attestation": {"evidence": "per-handshake"}},
    ):
        check(checksum_with(change) != base, f"checksum/config does not change when {change} changes")
    check(checksum_with({"podAnnotations": {"a": "b"}}) == base, "checksum/config changes with values outside the configuration")
    tdx_base = checksum(TDX_REQUIRED)
    for change in (
        {"attestation": {"tdx": {"pccsUrl": "https://pccs.example.org"}}},
        {"attestation": {"tdx": {"collateralConfigMap": "tdx-collateral"}}},
    ):
        check(checksum(deep_merge(TDX_REQUIRED, change)) != tdx_base, f"checksum/config does not change when {change} changes on TDX")


DIGEST = "sha256:" + "ab" * 32
SNP_GROUP = {"attestation": {"platform": "snp", "snp": {"deviceAccess": "group", "deviceGroup": 600}}}
SIMULATED = {
    "attestation": {
        "platform": "simulated",
        "simulated": {"rootSecret": "r", "policy": "p", "measurement": "4d" * 48},
    }
}


def check_refusals() -> None:
    for values, says in (
        # values.schema.json
        ({"attestation": {"platform": "sev"}}, "'snp', 'tdx', 'simulated'"),
        ({"attestation": {"evidence": "sometimes"}}, "'batched', 'per-handshake'"),
        ({"attestation": {"snp": {"acceptStaleAmdCrlFor": "3 days"}}}, "acceptStaleAmdCrlFor"),
        (deep_merge(SNP_REQUIRED, {"attestation": {"snp": {"acceptStaleAmdCrlFor": "31d"}}}), "at most 30d"),
        (deep_merge(SNP_REQUIRED, {"attestation": {"snp": {"acceptStaleAmdCrlFor": "721h"}}}), "at most 30d"),
        ({"attestation": {"tdx": {"pccsUrl": "api.trustedservices.intel.com"}}}, "pccsUrl"),
        ({"attestation": {"tdx": {"reportAccess": "group"}}}, "'', 'root', 'runtime'"),
        ({"attestation": {"snp": {"kdsUrl": "kdsintf.amd.com"}}}, "kdsUrl"),
        ({"podAntiAffinity": "maybe"}, "'soft', 'hard', 'none'"),
        ({"deploymentId": "AB" * 32}, "deploymentId"),
        ({"replica": 5}, "additional properties 'replica' not allowed"),
        # the templates' own checks (concord.validate)
        ({"attestation": {"platform": "simulated"}}, "rootSecret"),
        ({"attestation": {"platform": "simulated", "simulated": {"rootSecret": "r", "policy": "p"}}}, "measurement"),
        # SEV-SNP: a confidential VM, an image by digest, and a way for uid 65532 to open the device
        ({"image": {"digest": DIGEST}, **SNP_GROUP}, "needs runtimeClassName"),
        ({"runtimeClassName": "kata-qemu-snp", **SNP_GROUP}, "needs image.digest"),
        ({"runtimeClassName": "kata-qemu-snp", "image": {"digest": DIGEST}}, "needs attestation.snp.deviceAccess"),
        (
            {"runtimeClassName": "kata-qemu-snp", "image": {"digest": DIGEST}, "attestation": {"snp": {"deviceAccess": "group"}}},
            "needs attestation.snp.deviceGroup",
        ),
        (
            {"runtimeClassName": "kata-qemu-snp", "image": {"digest": DIGEST}, "attestation": {"snp": {"deviceAccess": "resource"}}},
            "needs attestation.snp.deviceResource",
        ),
        (
            {
                "runtimeClassName": "kata-qemu-snp",
                "image": {"digest": DIGEST},
                "attestation": {"snp": {"deviceAccess": "resource", "deviceResource": "example.org/sev", "mountDevice": True}},
            },
            "mountDevice must be false",
        ),
        # Intel TDX: a trust domain, an image by digest, a way to write report entries, a collateral source
        (deep_merge(TDX_REQUIRED, {"runtimeClassName": ""}), "attestation.platform=tdx needs runtimeClassName"),
        (deep_merge(TDX_REQUIRED, {"image": {"digest": ""}}), "attestation.platform=tdx needs image.digest"),
        (deep_merge(TDX_REQUIRED, {"attestation": {"tdx": {"reportAccess": ""}}}), "needs attestation.tdx.reportAccess"),
        (deep_merge(TDX_REQUIRED, {"attestation": {"tdx": {"pccsUrl": "off"}}}), "needs attestation.tdx.collateralConfigMap"),
        # the PodDisruptionBudget's override never lets evictions break the quorum
        ({**SIMULATED, "replicas": 3, "podDisruptionBudget": {"maxUnavailable": 2}}, "break the Raft quorum"),
        ({**SIMULATED, "replicas": 5, "podDisruptionBudget": {"maxUnavailable": 3}}, "break the Raft quorum"),
        ({**SIMULATED, "replicas": 1, "podDisruptionBudget": {"maxUnavailable": 1}}, "break the Raft quorum"),
        # an empty DNS peer list would become "egress to anywhere"
        ({**SIMULATED, "networkPolicy": {"egress": {"dns": []}}}, "networkPolicy.egress.dns is empty"),
    ):
        try:
            render(values, "concord")
            check(False, f"values {values} rendered; they must be refused")
        except helm.HelmError as e:
            check(says in str(e), f"values {values}: the refusal does not say {says!r}: {e}")


# --- (d) the binaries with the chart's flags -----------------------------------------------------


def container_env(c: dict[str, Any], docs: list[dict[str, Any]], pod_name: str) -> dict[str, str]:
    """The environment Kubernetes gives the container: envFrom ConfigMaps, then env (which wins)."""
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in find(docs, "ConfigMap")}
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref is None:
            check(False, f"envFrom source {source} cannot be resolved offline")
            continue
        check(ref["name"] in config_maps, f"envFrom names a ConfigMap the chart does not render: {ref['name']}")
        env.update(config_maps.get(ref["name"], {}))
    fields = {"metadata.name": pod_name, "metadata.namespace": NAMESPACE}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif "fieldRef" in e.get("valueFrom", {}):
            path = e["valueFrom"]["fieldRef"]["fieldPath"]
            check(path in fields, f"env {e['name']}: field {path} is not substituted by this check")
            env[e["name"]] = fields.get(path, "")
        else:
            check(False, f"env {e['name']}: source {e.get('valueFrom')} cannot be resolved offline")
    return env


def run_check_config(bin_dir: Path, c: dict[str, Any], env: dict[str, str], label: str) -> dict[str, Any] | None:
    argv = list(c.get("command", [])) + list(c.get("args", []))
    check(bool(argv), f"{label}: the container names no command")
    if not argv:
        return None
    binary = bin_dir / Path(argv[0]).name
    if not binary.exists():
        check(False, f"{label}: {binary} is missing: run `cargo build --workspace --bins` first")
        return None
    proc = subprocess.run(
        [str(binary), *argv[1:], "--check-config"],
        env=env,  # exactly the pod's environment, nothing from this machine
        capture_output=True,
        text=True,
        timeout=30,
    )
    check(proc.returncode == 0, f"{label}: {binary.name} --check-config exited {proc.returncode}: {proc.stderr.strip()}")
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)


def check_binaries(docs: list[dict[str, Any]], values: dict[str, Any], bin_dir: Path, label: str) -> None:
    v = merged(values)
    sts = one(docs, "StatefulSet", label)
    name = sts["metadata"]["name"]
    replicas = int(v["replicas"])
    initial = int(v["cluster"].get("initialReplicas") or replicas)
    for ordinal in sorted({0, replicas - 1}):
        pod_name = f"{name}-{ordinal}"
        for c in sts["spec"]["template"]["spec"].get("initContainers", []) + sts["spec"]["template"]["spec"]["containers"]:
            where = f"{label}: pod {pod_name}, container {c['name']}"
            env = container_env(c, docs, pod_name)
            config = run_check_config(bin_dir, c, env, where)
            if config is None or c["name"] != "coordinator":
                continue
            check(config["node_id"] == ordinal + 1, f"{where}: node id {config['node_id']}, want {ordinal + 1}")
            own = config["peers"].get(str(ordinal + 1), "")
            want = f"{pod_name}.{sts['spec']['serviceName']}.{NAMESPACE}.svc.{v['cluster']['domain']}:7778"
            check(own == want, f"{where}: its own peer address {own!r}, want {want!r}")
            check(len(config["peers"]) == max(initial, ordinal + 1), f"{where}: {len(config['peers'])} peers for {initial} initial replicas")
            for api, port in PORTS.items():
                listen = config[f"{api}_listen"]
                check(listen.endswith(f":{port}"), f"{where}: {api} listens on {listen}, the chart expects {port}")
            check(config["platform"]["kind"] == v["attestation"]["platform"], f"{where}: platform {config['platform']['kind']}")
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            check(config["data_dir"] in mounts, f"{where}: the data dir {config['data_dir']} is not a mounted volume")
            if config["platform"]["kind"] == "simulated":
                for key in ("simulated_root", "simulated_policy"):
                    path = config["platform"][key]
                    check(any(path.startswith(m) for m in mounts), f"{where}: {key} {path} is not on a mounted volume")
            if config["platform"]["kind"] == "snp":
                check_snp_config(config, v["attestation"]["snp"], mounts, docs, where)
            if config["platform"]["kind"] == "tdx":
                check_tdx_config(config, v["attestation"]["tdx"], mounts, where)
            check(config.get("evidence") == v["attestation"]["evidence"], f"{where}: evidence {config.get('evidence')!r}, the values say {v['attestation']['evidence']!r}")
            if config["platform"]["kind"] in ("snp", "tdx"):
                stale = duration_seconds(v["attestation"]["snp"]["acceptStaleAmdCrlFor"])
                got = config["platform"].get("accept_stale_amd_crl_for_seconds")
                check(got == stale, f"{where}: accepts a stale AMD CRL for {got} s, the values say {stale} s")
            want_id = v.get("deploymentId") or None
            check(config.get("deployment_id") == want_id, f"{where}: deployment id {config.get('deployment_id')!r}, the values say {want_id!r}")
            literal = any(e["name"] == "CONCORD_DEPLOYMENT_ID" and "value" in e for e in c.get("env", []))
            check(literal == bool(want_id), f"{where}: CONCORD_DEPLOYMENT_ID must be a literal in the pod spec (measured), not from a ConfigMap")


def check_snp_config(config: dict[str, Any], snp: dict[str, Any], mounts: set[str], docs: list[dict[str, Any]], where: str) -> None:
    """The SNP flags the coordinator reads are the chart's values, and every path it reads is mounted."""
    p = config["platform"]
    check(p["kds_url"] == snp["kdsUrl"], f"{where}: kds_url {p['kds_url']}, the values say {snp['kdsUrl']}")
    cache = p["vcek_cache_dir"] or ""
    check(cache.startswith(config["data_dir"] + "/"), f"{where}: the VCEK cache {cache} is not on the data volume")
    for key, wanted in (("vcek_dir", bool(snp["vcekConfigMap"])), ("snp_reference", bool(snp["reference"]))):
        path = p[key]
        check((path is not None) == wanted, f"{where}: {key} is {path!r} but the values {'do' if wanted else 'do not'} give it")
        if path is not None:
            check(any(path == m or path.startswith(m + "/") for m in mounts), f"{where}: {key} {path} is not on a mounted volume")
    check(("/dev/sev-guest" in mounts) == bool(snp["mountDevice"]), f"{where}: /dev/sev-guest mounted iff mountDevice")
    if snp["reference"]:
        data = [d.get("data", {}) for d in find(docs, "ConfigMap") if d["metadata"]["name"].endswith("-snp")]
        check(len(data) == 1, f"{where}: no single -snp ConfigMap for the reference values")
        if data:
            check(json.loads(data[0].get("reference.json", "null")) == snp["reference"], f"{where}: reference.json is not the reference value")


def check_tdx_config(config: dict[str, Any], tdx: dict[str, Any], mounts: set[str], where: str) -> None:
    """The TDX flags the coordinator reads are the chart's values, and every path it reads is mounted."""
    p = config["platform"]
    check(p["pccs_url"] == tdx["pccsUrl"], f"{where}: pccs_url {p['pccs_url']}, the values say {tdx['pccsUrl']}")
    cache = p["tdx_collateral_cache_dir"] or ""
    check(cache.startswith(config["data_dir"] + "/"), f"{where}: the collateral cache {cache} is not on the data volume")
    check(p["tdx_collateral"] is None, f"{where}: a fixed --tdx-collateral file {p['tdx_collateral']!r} would never be refreshed")
    path = p["tdx_collateral_dir"]
    wanted = bool(tdx["collateralConfigMap"])
    check((path is not None) == wanted, f"{where}: tdx_collateral_dir is {path!r} but the values {'do' if wanted else 'do not'} give it")
    if path is not None:
        check(any(path == m or path.startswith(m + "/") for m in mounts), f"{where}: tdx_collateral_dir {path} is not on a mounted volume")
    check(p["vcek_dir"] is None and p["snp_reference"] is None, f"{where}: SEV-SNP paths given on TDX")


def duration_seconds(text: str) -> int:
    """`12h`, `3d`, ... as the coordinator's --accept-stale-amd-crl-for reads them."""
    return int(text[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[text[-1]]


# --- main ----------------------------------------------------------------------------------------


# The least that the defaults (platform snp) need: a confidential-VM runtime, an image by digest, and
# how the container opens /dev/sev-guest.
SNP_REQUIRED = {"runtimeClassName": "kata-cc-isolation", "image": {"digest": DIGEST}, **SNP_GROUP}

# The least that platform tdx needs: a trust-domain runtime, an image by digest, and how report entries
# are written (Intel's PCS is the default collateral source).
TDX_REQUIRED = {
    "runtimeClassName": "kata-qemu-tdx",
    "image": {"digest": DIGEST},
    "attestation": {"platform": "tdx", "tdx": {"reportAccess": "root"}},
}

SCENARIOS = [
    # (label, values file, extra values, release name)
    ("defaults + the SNP values they require", None, SNP_REQUIRED, "concord"),
    ("platform=tdx + the values it requires", None, TDX_REQUIRED, "concord"),
    ("values-tdx.yaml", "values-tdx.yaml", {}, "concord"),
    (
        "platform=tdx, reportAccess=runtime, no configfs mount",
        None,
        {**TDX_REQUIRED, "attestation": {"platform": "tdx", "tdx": {"reportAccess": "runtime", "mountConfigfs": False}}},
        "concord",
    ),
    (
        "evidence=per-handshake, a stale AMD CRL accepted for 3d",
        None,
        deep_merge(SNP_REQUIRED, {"attestation": {"evidence": "per-handshake", "snp": {"acceptStaleAmdCrlFor": "3d"}}}),
        "concord",
    ),
    ("acceptStaleAmdCrlFor=720h, the limit", None, deep_merge(SNP_REQUIRED, {"attestation": {"snp": {"acceptStaleAmdCrlFor": "720h"}}}), "concord"),
    ("values-5-replicas.yaml", "values-5-replicas.yaml", {}, "ha"),
    ("values-simulated.yaml", "values-simulated.yaml", {}, "concord"),
    ("values-snp.yaml", "values-snp.yaml", {}, "concord"),
    ("replicas=1", None, {**SNP_REQUIRED, "replicas": 1}, "concord"),
    ("deploymentId", None, {**SNP_REQUIRED, "deploymentId": "ab" * 32}, "concord"),
]


def main() -> int:
    global CHART, CONTAINERFILE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--target-dir",
        default=os.environ.get("CARGO_TARGET_DIR", str(REPO / "target")),
        help="cargo's target directory (binaries in DIR/debug)",
    )
    parser.add_argument("--chart", default=str(CHART), help="the chart to check (default: charts/concord)")
    parser.add_argument("--containerfile", default=str(CONTAINERFILE), help="the Containerfile to check")
    args = parser.parse_args()
    CHART, CONTAINERFILE = Path(args.chart), Path(args.containerfile)
    bin_dir = Path(args.target_dir) / "debug"
    print(f"helm {helm.helm_sdk_version()} (helm-python-sdk {helm.__version__}), Kubernetes schemas {KUBE_VERSION}, binaries in {bin_dir}")

    for label, file, extra, release in SCENARIOS:
        values = {**load_values(file), **extra}
        print(f"{label}: lint, render, validate, structure, binaries")
        lint(values, label)
        try:
            docs, notes = render(values, release)
        except helm.HelmError as e:
            check(False, f"{label}: render failed: {e}")
            continue
        validate(docs, label)
        try:
            check_structure(docs, notes, values, label)
            check_binaries(docs, values, bin_dir, label)
        except (KeyError, IndexError, TypeError, helm.HelmError) as e:
            check(False, f"{label}: the rendered objects lack what the checks expect: {type(e).__name__} {e}")
    for what, run in (
        ("checksum/config follows the configuration", check_checksum),
        ("bad values are refused with a reason", check_refusals),
        ("the PodDisruptionBudget's override is taken up to the quorum's limit", check_pdb_override),
        ("the Containerfile pins its base images by digest", check_containerfile),
    ):
        print(what)
        try:
            run()
        except helm.HelmError as e:
            check(False, f"{what}: rendering failed: {e}")

    if failures:
        print(f"\ncheck_chart.py: {len(failures)} check(s) failed:", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        return 1
    print("check_chart.py: every check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
