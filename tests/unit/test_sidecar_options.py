"""epp-sidecar's flags (upstream's names and precedence) and the cached_tokens rewrite."""
from __future__ import annotations

import orjson
import pytest

from epp.sidecar import options
from epp.sidecar.usage import SSERewriter, cached_tokens_of, dumps, loads, rewrite_json, rewrite_line

MANIFEST_ARGS = ["--port=8000", "--vllm-port=8200", "--kv-connector=nixlv2", "--enable-ssrf-protection",
                 "--secure-proxy=false"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("INFERENCE_POOL", "INFERENCE_POOL_NAME", "INFERENCE_POOL_NAMESPACE", "ENABLE_PREFILLER_SAMPLING",
                 "EPP_SIDECAR_BIND_ADDRESS", "MOONCAKE_BOOTSTRAP_PORT", "P2P_CONNECTOR_PORT"):
        monkeypatch.delenv(name, raising=False)


def parse(*argv):
    return options.parse(list(argv))


def test_defaults_are_upstreams():
    c = parse()
    assert (c.port, c.model_server_port, c.kv_connector, c.data_parallel_size) == (8000, 8200, "nixlv2", 1)
    assert not c.enable_ssrf_protection and not c.enable_prefiller_sampling and c.pool_name == ""
    assert c.prefill_max_retries == 0 and c.prefill_retry_backoff == 0.2
    assert c.secure_proxy       # TLS on --port unless told otherwise, as upstream


def test_the_decode_pods_args_parse(monkeypatch):
    """manifests/model-servers/{vllm,sim}-pd: the pool from INFERENCE_POOL (Kubernetes expands
    $(POOL_NAMESPACE) in it); plain HTTP on the pod port."""
    monkeypatch.setenv("INFERENCE_POOL", "prod/vllm-llama3-8b-instruct")
    c = parse(*MANIFEST_ARGS)
    assert (c.port, c.model_server_port, c.enable_ssrf_protection, c.secure_proxy) == (8000, 8200, True, False)
    assert (c.pool_namespace, c.pool_name) == ("prod", "vllm-llama3-8b-instruct")


def test_the_local_stacks_args_parse(tmp_path):
    c = parse("--port", "9000", "--vllm-port", "9100", "--kv-connector", "nixlv2", "--enable-ssrf-protection",
              "--secure-proxy=false", "--endpoints-file", str(tmp_path / "e.yaml"))
    assert not c.secure_proxy
    assert (c.port, c.model_server_port, c.endpoints_file) == (9000, 9100, str(tmp_path / "e.yaml"))


@pytest.mark.parametrize("value,ns,name", [("pool", "default", "pool"), ("team/pool", "team", "pool")])
def test_inference_pool(monkeypatch, value, ns, name):
    c = parse("--inference-pool", value, "--enable-ssrf-protection")
    assert (c.pool_namespace, c.pool_name) == (ns, name)
    monkeypatch.setenv("INFERENCE_POOL", value)
    c = parse("--enable-ssrf-protection")
    assert (c.pool_namespace, c.pool_name) == (ns, name)


@pytest.mark.parametrize("argv,message", [
    (["--enable-ssrf-protection"], "needs the pool"),
    (["--inference-pool", "a/b/c"], "multiple slashes"),
    (["--inference-pool", "/b"], "empty namespace or name"),
    (["--kv-connector", "bogus"], "must be one of"),
    (["--kv-connector", "sglang"], "not implemented"),
    (["--ec-connector", "ec-nixl"], "not implemented"),
    (["--enable-p2p-pull"], "not implemented"),
    (["--decode-chunk-size", "256"], "not implemented"),
    (["--data-parallel-size", "0"], "positive"),
    (["--port", "65535", "--data-parallel-size", "2"], "out of range"),
    (["--enable-tls", "prefiller,nothing"], "stages must be one of"),
    (["--configuration", "{port: 1}", "--configuration-file", "x"], "mutually exclusive"),
    (["--configuration", "{no-such-flag: 1}"], "unknown key"),
    (["--configuration", "[1, 2]"], "mapping"),
    (["--configuration", "{port: nope}"], "port"),
    (["--configuration-file", "/does/not/exist"], "failed to read"),
    (["--inference-pool", "p", "--enable-ssrf-protection", "--pool-group", "inference.networking.x-k8s.io"],
     "unsupported --pool-group"),
])
def test_invalid(capsys, argv, message):
    with pytest.raises(SystemExit):
        parse(*argv)
    assert message in capsys.readouterr().err


def test_yaml_configuration_and_precedence(tmp_path, monkeypatch):
    cfg = tmp_path / "sidecar.yaml"
    cfg.write_text("port: 9000\nmodel-server-port: 9100\nenable-prefiller-sampling: true\n"
                   "prefill-retry-backoff: 1s\nenable-tls: [prefiller]\nprefill-max-retries: 3\n")
    c = parse("--configuration-file", str(cfg))
    assert (c.port, c.model_server_port, c.enable_prefiller_sampling) == (9000, 9100, True)
    assert c.prefill_retry_backoff == 1.0 and c.tls_stages == {"prefiller"} and c.prefill_max_retries == 3
    # a flag on the command line wins over the file; the deprecated --vllm-port flag wins over the file's
    # model-server-port, --model-server-port over everything
    c = parse("--configuration-file", str(cfg), "--port=7000", "--vllm-port", "7100")
    assert (c.port, c.model_server_port) == (7000, 7100)
    c = parse("--configuration-file", str(cfg), "--vllm-port", "7100", "--model-server-port=7200")
    assert c.model_server_port == 7200
    # the file wins over the environment
    monkeypatch.setenv("ENABLE_PREFILLER_SAMPLING", "false")
    assert parse("--configuration", "{enable-prefiller-sampling: true}").enable_prefiller_sampling
    monkeypatch.setenv("ENABLE_PREFILLER_SAMPLING", "true")
    assert parse().enable_prefiller_sampling


def test_go_style_flags_and_compat_flags():
    c = parse("-port=8001", "-connector=nixlv2", "-v=6", "--enable-ssrf-protection=false",
              "--enable-tls=prefiller", "--enable-tls", "decoder", "--tls-insecure-skip-verify=decoder",
              "--secure-proxy=true", "--cert-path=/certs", "--tracing", "--zap-devel", "--max-idle-conns-per-host=64",
              "--mooncake-bootstrap-port=8998", "--p2p-connector-port=7777", "--metrics-port=9091",
              "--prefill-retry-backoff=50ms", "--prefill-max-retries=2")
    assert c.port == 8001 and c.log_level == "debug" and not c.enable_ssrf_protection
    assert c.tls_stages == {"prefiller", "decoder"} and c.insecure_stages == {"decoder"}
    assert c.secure_proxy and c.cert_path == "/certs" and c.metrics_port == 9091
    assert c.prefill_retry_backoff == pytest.approx(0.05) and c.prefill_max_retries == 2
    assert parse("--zap-log-level=error").log_level == "error"
    assert parse("--model-server-port=9").model_server_port == 9


def test_cli_exposes_build_parser_for_the_manifest_check():
    from epp.sidecar import cli
    cli.build_parser().parse_args(MANIFEST_ARGS)


# ---- usage.prompt_tokens_details.cached_tokens ------------------------------------------------------

def test_cached_tokens_of_the_prefill_answer():
    assert cached_tokens_of({"usage": {"prompt_tokens_details": {"cached_tokens": 48}}}) == 48
    assert cached_tokens_of({"usage": {"prompt_tokens_details": None}}) == 0      # vLLM's null for 0
    assert cached_tokens_of({"usage": None}) == 0 and cached_tokens_of({}) == 0 and cached_tokens_of([]) == 0
    assert cached_tokens_of({"usage": {"prompt_tokens_details": {"cached_tokens": 3.0}}}) == 3


def test_rewrite_json():
    doc = {"id": "x", "usage": {"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 9}}}
    assert orjson.loads(rewrite_json(orjson.dumps(doc), 4))["usage"]["prompt_tokens_details"] == {"cached_tokens": 4}
    created = orjson.loads(rewrite_json(b'{"usage": {"prompt_tokens": 10, "prompt_tokens_details": null}}', 2))
    assert created["usage"]["prompt_tokens_details"] == {"cached_tokens": 2}
    for same in (b'{"usage": null}', b'{"choices": []}', b"not json", b"",
                 b'{"usage": {"prompt_tokens_details": {"cached_tokens": 4}}}'):
        assert rewrite_json(same, 4) is same


def test_rewrite_sse_lines():
    line = b'data: {"usage":{"prompt_tokens":5,"prompt_tokens_details":{"cached_tokens":1}}}\r\n'
    out = rewrite_line(line, 3)
    assert out.endswith(b"\r\n") and orjson.loads(out[6:])["usage"]["prompt_tokens_details"]["cached_tokens"] == 3
    assert rewrite_line(b'data:{"usage":{}}\n', 3) == b'data: {"usage":{"prompt_tokens_details":{"cached_tokens":3}}}\n'
    for same in (b"data: [DONE]\n", b": comment\n", b"event: usage\n", b'data: {"usage": null}\n', b"\n",
                 b'data: {"choices":[{"text":"the \\"usage\\" word"}]}\n'):
        assert rewrite_line(same, 3) is same


def test_sse_rewriter_holds_back_only_split_lines():
    rw = SSERewriter(0)
    plain = b'data: {"choices":[{"text":"a"}]}\n\n'
    assert rw.feed(plain) is plain                             # no usage: the same bytes, not a copy
    usage = b'data: {"usage":{"prompt_tokens_details":{"cached_tokens":9}}}\n\n'
    got = rw.feed(usage[:20]) + rw.feed(usage[20:41]) + rw.feed(usage[41:] + plain[:10]) + rw.feed(plain[10:])
    assert got == b'data: {"usage":{"prompt_tokens_details":{"cached_tokens":0}}}\n\n' + plain
    assert rw.feed(b'data: {"usage":{"x":1}}') == b"" and rw.flush() == \
        b'data: {"usage":{"x":1,"prompt_tokens_details":{"cached_tokens":0}}}'
    assert rw.flush() == b""


def test_json_values_survive_exactly():
    for big in (2 ** 64, -(2 ** 63) - 1, 123456789012345678901234567890):
        raw = b'{"kv_transfer_params": {"remote_block_ids": [1], "id": %d}}' % big
        assert loads(raw)["kv_transfer_params"]["id"] == big and type(loads(raw)["kv_transfer_params"]["id"]) is int
        assert dumps(loads(raw)) == raw.replace(b" ", b"")
    assert loads(b'{"x": NaN}')["x"] != loads(b'{"x": NaN}')["x"]     # what vLLM's Python JSON may emit
