"""P/D round trip between two sim processes, with vLLM's NixlConnector contract."""
import importlib.util
import json
import time
import urllib.error
import urllib.request

import orjson
import pytest

from .conftest import TIMEOUT

KVT = json.dumps({"kv_connector": "NixlConnector", "kv_role": "kv_both"})
PREFILL_PARAMS = {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
                  "remote_block_ids": None, "remote_host": None, "remote_port": None}


def post(url, body):
    req = urllib.request.Request(url, data=orjson.dumps(body), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
        return orjson.loads(r.read())


def get(url):
    with urllib.request.urlopen(url, timeout=TIMEOUT) as r:
        return orjson.loads(r.read())


def round_trip(prefill, decode, prompt):
    # the routing sidecar's prefill leg: stream off, one token, do_remote_decode
    body = {"model": "sim-model", "prompt": prompt, "max_tokens": 1, "max_completion_tokens": 1, "stream": False,
            "kv_transfer_params": PREFILL_PARAMS}
    pre = post(prefill.url + "/v1/completions", body)
    kvp = pre["kv_transfer_params"]
    # decode leg: the original body plus the prefill response's kv_transfer_params verbatim
    dec = post(decode.url + "/v1/completions", {"model": "sim-model", "prompt": prompt, "max_tokens": 8,
                                                "ignore_eos": True, "kv_transfer_params": kvp})
    return pre, kvp, dec


def test_pd_round_trip_http_fallback(sim_process):
    flags = ("--kv-transfer-config", KVT, "--kv-transport", "http", "--time-scale", "20")
    prefill = sim_process(*flags, "--engine-id", "prefill-0")
    decode = sim_process(*flags)
    prefill.wait_healthy(), decode.wait_healthy()
    prompt = "the customer asks about the invoice and the shipping policy " * 20
    pre, kvp, dec = round_trip(prefill, decode, prompt)
    n_prompt = pre["usage"]["prompt_tokens"]
    assert pre["choices"][0]["finish_reason"] == "length" and pre["usage"]["completion_tokens"] == 1
    assert kvp["do_remote_prefill"] is True and kvp["do_remote_decode"] is False
    assert kvp["remote_engine_id"] == "prefill-0" and kvp["tp_size"] == 1
    assert kvp["remote_host"] == "127.0.0.1" and kvp["remote_port"] == prefill.port
    assert len(kvp["remote_block_ids"]) == -(-n_prompt // 16) and kvp["remote_request_id"]
    # blocks were pinned until pulled, then released
    p_eng = get(prefill.url + "/debug/engine")
    assert p_eng["pinned"] == 0 and p_eng["pd"]["served"] == 1 and p_eng["pd"]["released"] == 1
    d_eng = get(decode.url + "/debug/engine")
    assert d_eng["pd"]["pulls"] == 1 and d_eng["pd"]["pull_failures"] == 0
    # every block holding one of the first n_prompt - 1 tokens (the decoder computes the last one itself)
    assert d_eng["pd"]["bytes_pulled"] == -(-(n_prompt - 1) // 16) * 16 * 4
    assert d_eng["pd"]["transport"] == "http"
    print(f"\nP/D bytes moved by: {d_eng['pd']['transport']} ({d_eng['pd']['bytes_pulled']} bytes)")
    # the decoder did not prefill: every prompt token but the last came over the wire
    assert dec["usage"]["prompt_tokens_details"]["cached_tokens"] == n_prompt - 1
    assert dec["usage"]["completion_tokens"] == 8
    # the same prompt again: the decoder now has it in its own prefix cache
    _, _, dec2 = round_trip(prefill, decode, prompt)
    assert dec2["usage"]["prompt_tokens_details"]["cached_tokens"] == n_prompt - 1
    # ...and pulls only the partial tail block it could not cache
    d2 = get(decode.url + "/debug/engine")["pd"]
    assert d2["pulls"] == 2 and d2["bytes_pulled"] - d_eng["pd"]["bytes_pulled"] == (1 if (n_prompt - 1) % 16 else 0) * 64


def test_without_connector_params_are_ignored(sim_process):
    s = sim_process("--time-scale", "20").wait_healthy()
    r = post(s.url + "/v1/completions", {"prompt": "abc " * 40, "max_tokens": 3, "kv_transfer_params": PREFILL_PARAMS})
    assert r["kv_transfer_params"] is None and r["usage"]["completion_tokens"] == 3   # no early stop
    fake = {"do_remote_prefill": True, "do_remote_decode": False, "remote_block_ids": [1, 2, 3],
            "remote_engine_id": "x", "remote_host": "127.0.0.1", "remote_port": 1, "tp_size": 1}
    r = post(s.url + "/v1/completions", {"prompt": "xyz " * 40, "max_tokens": 3, "kv_transfer_params": fake})
    assert r["usage"]["prompt_tokens_details"]["cached_tokens"] == 0                   # prefilled again


def test_failed_pull_falls_back_to_local_prefill(sim_process):
    s = sim_process("--kv-transfer-config", KVT, "--kv-transport", "http", "--time-scale", "20").wait_healthy()
    fake = {"do_remote_prefill": True, "do_remote_decode": False, "remote_block_ids": list(range(10)),
            "remote_engine_id": "gone", "remote_host": "127.0.0.1", "remote_port": 1, "tp_size": 1,
            "remote_request_id": "r"}
    r = post(s.url + "/v1/completions", {"prompt": "xyz " * 40, "max_tokens": 3, "kv_transfer_params": fake})
    assert r["usage"]["completion_tokens"] == 3
    assert get(s.url + "/debug/engine")["pd"]["pull_failures"] == 1


@pytest.mark.skipif(importlib.util.find_spec("nixl") is None, reason="nixl not installed")
def test_pd_round_trip_over_nixl(sim_process):
    env = {"UCX_NET_DEVICES": "lo", "UCX_TLS": "tcp,self,sm"}
    flags = ("--kv-transfer-config", KVT, "--kv-transport", "nixl", "--time-scale", "20")
    prefill = sim_process(*flags, env=env)
    decode = sim_process(*flags, env=env)
    try:
        prefill.wait_healthy(30), decode.wait_healthy(30)
    except AssertionError as exc:
        pytest.skip(f"NIXL agent could not start here: {exc}")
    prompt = "nixl moves these blocks over ucx on loopback " * 20
    pre, kvp, dec = round_trip(prefill, decode, prompt)
    d_eng = get(decode.url + "/debug/engine")
    print(f"\nP/D bytes moved by: {d_eng['pd']['transport']} ({d_eng['pd']['bytes_pulled']} bytes)")
    assert d_eng["pd"]["transport"] == "nixl" and d_eng["pd"]["pulls"] == 1
    assert d_eng["pd"]["bytes_pulled"] == -(-(pre["usage"]["prompt_tokens"] - 1) // 16) * 64
    assert dec["usage"]["prompt_tokens_details"]["cached_tokens"] == pre["usage"]["prompt_tokens"] - 1
    deadline = time.monotonic() + TIMEOUT      # the READ's notification releases the pinned blocks
    while get(prefill.url + "/debug/engine")["pinned"] != 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert get(prefill.url + "/debug/engine")["pinned"] == 0


def test_pd_through_the_built_in_sidecar(sim_process):
    flags = ("--kv-transfer-config", KVT, "--kv-transport", "http", "--time-scale", "20")
    prefill = sim_process(*flags, "--max-model-len", "512")
    decode = sim_process(*flags, "--pd-sidecar")
    prefill.wait_healthy(), decode.wait_healthy()
    prompt = "a long shared context for the sidecar to disaggregate " * 15
    body = {"prompt": prompt, "max_tokens": 5, "ignore_eos": True, "stream": False}
    req = urllib.request.Request(decode.url + "/v1/completions", data=orjson.dumps(body),
                                 headers={"Content-Type": "application/json",
                                          "x-prefiller-host-port": f"127.0.0.1:{prefill.port}",
                                          "x-request-id": "req-42"})
    with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
        doc = orjson.loads(r.read())
    assert doc["id"] == "cmpl-req-42" and doc["usage"]["completion_tokens"] == 5
    assert doc["usage"]["prompt_tokens_details"]["cached_tokens"] == 0     # what the prefill leg reported
    d = get(decode.url + "/debug/engine")
    assert d["sidecar"]["prefill_legs"] == 1 and d["pd"]["pulls"] == 1
    # a 4xx from the prefiller goes back to the client (this prompt fits the decoder, not the prefiller)
    bad = urllib.request.Request(decode.url + "/v1/completions",
                                 data=orjson.dumps({"prompt": "word " * 600, "max_tokens": 1}),
                                 headers={"Content-Type": "application/json",
                                          "x-prefiller-host-port": f"127.0.0.1:{prefill.port}"})
    try:
        urllib.request.urlopen(bad, timeout=TIMEOUT)
        raise AssertionError("expected 400")
    except urllib.error.HTTPError as e:
        assert e.code == 400 and "maximum context length is 512" in orjson.loads(e.read())["error"]["message"]
    # an unreachable prefiller: decode alone
    lone = urllib.request.Request(decode.url + "/v1/completions",
                                  data=orjson.dumps({"prompt": "solo " * 30, "max_tokens": 2}),
                                  headers={"Content-Type": "application/json", "x-prefiller-host-port": "127.0.0.1:1"})
    with urllib.request.urlopen(lone, timeout=TIMEOUT) as r:
        assert orjson.loads(r.read())["usage"]["completion_tokens"] == 2
    assert get(decode.url + "/debug/engine")["sidecar"]["prefill_fallbacks"] == 1
