#!/usr/bin/env python3
"""A real Vault client (hvac, from PyPI) against Concord's transit API, for tests/tests/transit.rs.

Usage: hvac_client.py PHASE CONFIG.json STATE.json
CONFIG: {"replicas": ["127.0.0.1:PORT", ...], "tls": DIR (the initializer's tls-config),
         "foreign_tls": DIR or null}
STATE:  read and written: what one phase leaves for the next (ciphertexts made earlier).
Prints one line "ok PHASE" on success; any failed expectation raises (exit 1) with what differed.
"""
import base64
import json
import os
import socket
import ssl
import sys
import time

import hvac
import hvac.exceptions as hx
import requests


def b64(b):
    return base64.b64encode(b).decode()


def client(cfg, replica, tls=None, cert=True):
    tls = tls or cfg["tls"]
    return hvac.Client(
        url=f"https://{cfg['replicas'][replica]}",
        cert=(f"{tls}/certChain.pem", f"{tls}/key.pem") if cert else None,
        # The transit API's server certificate chains to the root CA, stable across manifests.
        verify=f"{cfg['tls']}/coordinator-root-ca.pem",
        timeout=10,
    )


def expect_error(exc_type, fn, contains=None):
    try:
        fn()
    except exc_type as e:
        if contains and contains not in str(e):
            raise AssertionError(f"expected {contains!r} in {e!r}")
        return e
    raise AssertionError(f"expected {exc_type.__name__}, got success")


def wait_latest(cfg, version, min_dec, within=60):
    """Every replica serves `orders` at `version` (after a new manifest)."""
    deadline = time.time() + within
    for i in range(len(cfg["replicas"])):
        while True:
            try:
                k = client(cfg, i).secrets.transit.read_key("orders")["data"]
                if k["latest_version"] == version and k["min_decryption_version"] == min_dec:
                    break
                last = k
            except Exception as e:  # not ready yet: 503, or no trusted certificate yet
                last = e
            if time.time() > deadline:
                raise AssertionError(f"replica {i} does not serve orders v{version}: {last!r}")
            time.sleep(0.2)


def phase_basic(cfg, st):
    n = len(cfg["replicas"])
    first, last = client(cfg, 0), client(cfg, n - 1)
    h = first.sys.read_health_status(method="GET")
    h = h if isinstance(h, dict) else h.json()
    assert h["sealed"] is False, h
    # Encrypt on one replica, decrypt on another.
    ct = first.secrets.transit.encrypt_data("orders", plaintext=b64(b"order 66"))["data"]
    assert ct["ciphertext"].startswith("vault:v1:") and ct["key_version"] == 1, ct
    pt = last.secrets.transit.decrypt_data("orders", ciphertext=ct["ciphertext"])["data"]["plaintext"]
    assert base64.b64decode(pt) == b"order 66"
    # With associated data.
    ad = first.secrets.transit.encrypt_data(
        "orders", plaintext=b64(b"bound"), associated_data=b64(b"row 7"))["data"]["ciphertext"]
    assert last.secrets.transit.decrypt_data(
        "orders", ciphertext=ad, associated_data=b64(b"row 7"))["data"]["plaintext"] == b64(b"bound")
    # Batches.
    items = [{"plaintext": b64(f"item {i}".encode()), "reference": f"r{i}"} for i in range(5)]
    res = first.secrets.transit.encrypt_data("orders", plaintext=None, batch_input=items)["data"]["batch_results"]
    assert [r["reference"] for r in res] == [f"r{i}" for i in range(5)], res
    dec = last.secrets.transit.decrypt_data(
        "orders", ciphertext=None, batch_input=[{"ciphertext": r["ciphertext"]} for r in res])["data"]["batch_results"]
    assert [base64.b64decode(r["plaintext"]) for r in dec] == [f"item {i}".encode() for i in range(5)]
    # Data keys: plaintext and wrapped; the wrapped one is decrypted after the rotation.
    dk = first.secrets.transit.generate_data_key("orders", key_type="plaintext")["data"]
    assert len(base64.b64decode(dk["plaintext"])) == 32
    assert last.secrets.transit.decrypt_data("orders", ciphertext=dk["ciphertext"])["data"]["plaintext"] == dk["plaintext"]
    wk = first.secrets.transit.generate_data_key("orders", key_type="wrapped", bits=512)["data"]
    assert "plaintext" not in wk, wk
    # Key metadata.
    k = last.secrets.transit.read_key("orders")["data"]
    assert (k["type"], k["latest_version"], k["min_decryption_version"]) == ("aes256-gcm96", 1, 1), k
    assert list(k["keys"]) == ["1"], k
    # Refusals, each as Vault answers them.
    expect_error(hx.Forbidden, lambda: first.secrets.transit.encrypt_data("ledger", plaintext=b64(b"x")),
                 "permission denied")
    expect_error(hx.Forbidden, lambda: first.secrets.transit.read_key("ledger"))
    expect_error(hx.InvalidRequest, lambda: first.secrets.transit.encrypt_data("missing", plaintext=b64(b"x")),
                 "encryption key not found")
    expect_error(hx.InvalidPath, lambda: first.secrets.transit.read_key("missing"))
    raw = base64.b64decode(ct["ciphertext"].split(":")[2])
    tampered = "vault:v1:" + b64(raw[:-1] + bytes([raw[-1] ^ 1]))
    expect_error(hx.InvalidRequest, lambda: last.secrets.transit.decrypt_data("orders", ciphertext=tampered),
                 "message authentication failed")
    expect_error(hx.InvalidPath, lambda: first.secrets.transit.sign_data("orders", hash_input=b64(b"x")))
    # No client certificate, or one from another deployment: the TLS handshake fails.
    for tls, cert in [(None, False), (cfg.get("foreign_tls"), True)]:
        if tls is None and cert:
            continue
        try:
            client(cfg, 0, tls=tls, cert=cert).secrets.transit.encrypt_data("orders", plaintext=b64(b"x"))
        except (requests.exceptions.SSLError, requests.exceptions.ConnectionError):
            pass
        else:
            raise AssertionError(f"a client with cert={cert} tls={tls} was served")
    st.update(v1=ct["ciphertext"], wrapped=wk, secret=b64(b"order 66"))


def phase_rotated(cfg, st):
    wait_latest(cfg, 2, 1)
    c = client(cfg, 1)
    # The workload's certificate is from the previous mesh CA: accepted within the grace period.
    new = c.secrets.transit.rewrap_data("orders", ciphertext=st["v1"])["data"]
    assert new["ciphertext"].startswith("vault:v2:") and new["key_version"] == 2, new
    assert c.secrets.transit.decrypt_data("orders", ciphertext=new["ciphertext"])["data"]["plaintext"] == st["secret"]
    assert c.secrets.transit.decrypt_data("orders", ciphertext=st["v1"])["data"]["plaintext"] == st["secret"]
    # The wrapped data key made before the rotation decrypts.
    pt = c.secrets.transit.decrypt_data("orders", ciphertext=st["wrapped"]["ciphertext"])["data"]["plaintext"]
    assert len(base64.b64decode(pt)) == 64
    assert c.secrets.transit.encrypt_data("orders", plaintext=b64(b"n"))["data"]["key_version"] == 2
    assert sorted(c.secrets.transit.read_key("orders")["data"]["keys"]) == ["1", "2"]
    st.update(v2=new["ciphertext"])


def phase_stale_refused(cfg, st):
    """The workload's certificate is from a mesh CA two manifests old: once the replica serves the
    latest manifest, the handshake fails."""
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            client(cfg, 0).secrets.transit.read_key("orders")
        except (requests.exceptions.SSLError, requests.exceptions.ConnectionError):
            return
        time.sleep(0.2)
    raise AssertionError("a certificate from a mesh CA two manifests old is still served after 60 s")


def phase_min_decryption(cfg, st):
    wait_latest(cfg, 2, 2)
    c = client(cfg, 2)
    expect_error(hx.InvalidRequest, lambda: c.secrets.transit.decrypt_data("orders", ciphertext=st["v1"]),
                 "disallowed by policy (too old)")
    assert c.secrets.transit.decrypt_data("orders", ciphertext=st["v2"])["data"]["plaintext"] == st["secret"]


def phase_encrypt_many(cfg, st):
    c = client(cfg, 0)
    made = {}
    for i in range(20):
        p = b64(f"before the outage {i}".encode())
        made[c.secrets.transit.encrypt_data("orders", plaintext=p)["data"]["ciphertext"]] = p
    st.update(made=made)


def phase_decrypt_many(cfg, st):
    wait_latest(cfg, 1, 1)
    n = len(cfg["replicas"])
    for i, (ct, p) in enumerate(st["made"].items()):
        c = client(cfg, i % n)
        assert c.secrets.transit.decrypt_data("orders", ciphertext=ct)["data"]["plaintext"] == p, (i % n, ct)


def phase_unreachable(cfg, st):
    """A replica never ready since it started has no certificate to serve: the connection fails."""
    for i in range(len(cfg["replicas"])):
        try:
            client(cfg, i).secrets.transit.decrypt_data("orders", ciphertext=next(iter(st["made"])))
        except (requests.exceptions.SSLError, requests.exceptions.ConnectionError):
            continue
        raise AssertionError(f"replica {i} served while recovering")


def phase_grace_expires(cfg, st):
    """After a rotation the previous mesh CA's certificate works for the grace period, then is refused:
    on the connection kept from within the grace (403 at the next request), and at a new handshake."""
    wait_latest(cfg, 2, 1)
    kept = client(cfg, 0)
    assert kept.secrets.transit.read_key("orders")["data"]["latest_version"] == 2
    time.sleep(cfg["grace"] + 1.5)
    expect_error(hx.Forbidden, lambda: kept.secrets.transit.read_key("orders"), "no longer accepts")
    try:
        client(cfg, 0).secrets.transit.read_key("orders")
    except (requests.exceptions.SSLError, requests.exceptions.ConnectionError):
        return
    raise AssertionError("a new connection with the previous mesh CA's certificate was served after the grace")


def phase_serve_all(cfg, st):
    """Every replica serves (so each has made its server certificate while ready)."""
    wait_latest(cfg, 1, 1)
    c = client(cfg, 0)
    st.update(
        v1=c.secrets.transit.encrypt_data("orders", plaintext=b64(b"kept"))["data"]["ciphertext"],
        secret=b64(b"kept"),
        wrapped=c.secrets.transit.generate_data_key("orders", key_type="wrapped", bits=512)["data"],
    )


def phase_sealed(cfg, st):
    """Replica `cfg["sealed"]` lacks the latest manifest's secrets: 503 in Vault's shapes."""
    i = cfg["sealed"]
    tls = cfg["tls"]
    url = f"https://{cfg['replicas'][i]}"
    kw = dict(cert=(f"{tls}/certChain.pem", f"{tls}/key.pem"), verify=f"{tls}/coordinator-root-ca.pem", timeout=10)
    deadline = time.time() + 30
    while True:
        r = requests.get(f"{url}/v1/sys/health", **kw)
        if r.status_code == 503:
            break
        if time.time() > deadline:
            raise AssertionError(f"replica {i} still answers {r.status_code} {r.text}")
        time.sleep(0.2)
    assert r.json()["sealed"] is True, r.text
    e = expect_error(hx.VaultDown, lambda: client(cfg, i).secrets.transit.decrypt_data("orders", ciphertext=st["v1"]))
    assert "not ready" in str(e), e


def phase_too_large(cfg, st):
    """A body over the limit gets Vault's error shape with 413, whether its length is declared (hvac, as
    `requests` sends a body: all of it, without waiting for `100 Continue`, and only then reads the
    answer) or not (chunked). The replica reads and discards what the client still sends after the
    answer before it closes, so the answer is not lost to a reset (tried several times: a reset depends
    on timing)."""
    big = b64(b"A" * (4 << 20))
    for attempt in range(5):
        c = client(cfg, attempt % len(cfg["replicas"]))
        e = expect_error(hx.UnexpectedError, lambda: c.secrets.transit.encrypt_data("orders", plaintext=big),
                         "larger than")
        assert "413" in str(e) or "split the batch" in str(e), e
    tls = cfg["tls"]
    kw = dict(cert=(f"{tls}/certChain.pem", f"{tls}/key.pem"), verify=f"{tls}/coordinator-root-ca.pem", timeout=10)

    def chunks():
        yield b'{"plaintext":"'
        for _ in range(80):
            yield b"A" * (64 << 10)
        yield b'"}'

    for attempt in range(3):
        r = requests.post(f"https://{cfg['replicas'][0]}/v1/transit/encrypt/orders", data=chunks(), **kw)
        assert r.status_code == 413 and "split the batch" in r.text, (r.status_code, r.text)
    # What is read after the answer is bounded: a client that declares 1 GiB and keeps sending is cut
    # off after about 4 times the limit (16 MiB) or 2 s, whichever comes first.
    ctx = ssl.create_default_context(cafile=f"{tls}/coordinator-root-ca.pem")
    ctx.load_cert_chain(f"{tls}/certChain.pem", f"{tls}/key.pem")
    host, port = cfg["replicas"][0].rsplit(":", 1)

    def declare_1_gib_and_send(chunk, pause, within):
        """Sends chunks of a body declared as 1 GiB until the replica cuts the connection or
        `within` seconds pass; returns the bytes sent and the seconds taken."""
        sent, started = 0, time.time()
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=host) as s:
                s.sendall(b"POST /v1/transit/encrypt/orders HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n")
                try:
                    while sent < (1 << 30) and time.time() - started < within:
                        s.sendall(b"A" * chunk)
                        sent += chunk
                        time.sleep(pause)
                except OSError:
                    pass
        return sent, time.time() - started

    sent, took = declare_1_gib_and_send(64 << 10, 0, 20)
    print(f"a client that kept sending after the answer was cut off after {sent >> 20} MiB, {took:.2f} s",
          file=sys.stderr)
    assert sent < (48 << 20) and took < 8, (sent, took)
    # And in time: a client that keeps trickling after the answer (well within the idle timeout) is cut
    # off after about 2 s.
    sent, took = declare_1_gib_and_send(1024, 0.05, 20)
    print(f"a client that trickled after the answer was cut off after {took:.2f} s", file=sys.stderr)
    assert took < 8, (sent, took)
    # The connection's slot is given back: a normal request still works.
    assert client(cfg, 0).secrets.transit.encrypt_data("orders", plaintext=b64(b"small"))["data"]["ciphertext"]


def phase_hvac_accepts(cfg, st):
    """Responses captured with curl (CONFIG's "captured": [[status, body], ...]) are what hvac takes."""
    for status, body in cfg["captured"]:
        doc = json.loads(body)
        if status < 400 and "initialized" in doc:  # sys/health: Vault's own fields, no envelope
            assert doc["sealed"] is False and doc["initialized"] is True, body
            continue
        if status < 400:
            for field in ["request_id", "lease_id", "renewable", "lease_duration", "data", "wrap_info", "warnings", "auth"]:
                assert field in doc, (field, body)
            continue
        assert isinstance(doc.get("errors"), list), body
        want = {400: hx.InvalidRequest, 403: hx.Forbidden, 404: hx.InvalidPath, 503: hx.VaultDown}[status]
        try:
            hvac.utils.raise_for_error("POST", "/v1/x", status, body, errors=doc["errors"])
        except want:
            continue
        raise AssertionError(f"hvac did not raise {want.__name__} for {status} {body}")


PHASES = {
    "basic": phase_basic,
    "rotated": phase_rotated,
    "min_decryption": phase_min_decryption,
    "stale_refused": phase_stale_refused,
    "encrypt_many": phase_encrypt_many,
    "decrypt_many": phase_decrypt_many,
    "hvac_accepts": phase_hvac_accepts,
    "too_large": phase_too_large,
    "unreachable": phase_unreachable,
    "grace_expires": phase_grace_expires,
    "serve_all": phase_serve_all,
    "sealed": phase_sealed,
}

if __name__ == "__main__":
    phase, config, state = sys.argv[1:4]
    cfg = json.load(open(config))
    st = json.load(open(state)) if os.path.exists(state) else {}
    PHASES[phase](cfg, st)
    json.dump(st, open(state, "w"))
    print(f"ok {phase}")
