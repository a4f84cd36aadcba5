import json

import pytest

from epp.requestcontrol.errors import EPPError
from epp.requestcontrol.parse import api_for_path, parse_body


def ok(api, body):
    return parse_body(api, json.dumps(body).encode())


def bad(api, raw: bytes, fragment: str):
    with pytest.raises(EPPError) as e:
        parse_body(api, raw)
    assert e.value.status == 400
    assert fragment in e.value.message, e.value.message
    assert b"inference error: BadRequest" in e.value.body()


def test_paths():
    assert api_for_path("/v1/completions") == "completions"
    assert api_for_path("/v1/chat/completions?x=1") == "chat"
    assert api_for_path("/v1/responses/") == "responses"
    assert api_for_path("/v1/embeddings") is None


def test_completions_prompt_forms():
    assert ok("completions", {"model": "m", "prompt": "héllo"})[2] == "héllo".encode()
    assert ok("completions", {"model": "m", "prompt": ["a", "b"]})[2] == b"ab"
    assert ok("completions", {"model": "m", "prompt": [1, 2, 3]})[2] == b"[1,2,3]"
    assert ok("completions", {"model": "m", "prompt": [[1], [2, 3]]})[2] == b"[[1],[2,3]]"
    body, model, _, stream, salt = ok("completions", {"model": "m", "prompt": "x", "stream": True, "cache_salt": "s"})
    assert (model, stream, salt) == ("m", True, "s")


def test_chat_and_responses():
    _, _, prompt, _, _ = ok("chat", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert prompt == b'[{"role":"user","content":"hi"}]'
    assert ok("responses", {"model": "m", "input": "q", "instructions": "be brief"})[2] == b"be brief\nq"
    assert ok("responses", {"model": "m", "input": [{"role": "user", "content": "q"}]})[1] == "m"


@pytest.mark.parametrize("raw,fragment", [
    (b"", "empty"),
    (b"{not json", "not valid JSON"),
    (b"[1,2]", "must be a JSON object, got array"),
    (b'"str"', "got string"),
    (b"\xff\xfe{}", "not valid JSON"),               # not UTF-8
    (b'{"prompt": "x"}', "'model' is required"),
    (b'{"model": 5, "prompt": "x"}', "'model' must be a string, got integer"),
    (b'{"model": "", "prompt": "x"}', "must not be empty"),
    (b'{"model": "m"}', "'prompt' is required"),
    (b'{"model": "m", "prompt": 7}', "'prompt' must be"),
    (b'{"model": "m", "prompt": [1, "a"]}', "'prompt' must be"),
    (b'{"model": "m", "prompt": []}', "'prompt' must be"),
    (b'{"model": "m", "prompt": {"a": {"b": [{}]}}}', "'prompt' must be"),  # nested junk
    (b'{"model": "m", "prompt": "x", "stream": "yes"}', "'stream' must be a boolean"),
    (b'{"model": "m", "prompt": "x", "max_tokens": "3"}', "'max_tokens' must be an integer"),
    (b'{"model": "m", "prompt": "x", "max_tokens": true}', "'max_tokens' must be an integer"),
    (b'{"model": "m", "prompt": "x", "max_tokens": -1}', "must not be negative"),
])
def test_completions_malformed(raw, fragment):
    bad("completions", raw, fragment)


@pytest.mark.parametrize("raw,fragment", [
    (b'{"model": "m"}', "'messages' is required"),
    (b'{"model": "m", "messages": "hi"}', "'messages' must be an array"),
    (b'{"model": "m", "messages": []}', "must not be empty"),
    (b'{"model": "m", "messages": [1]}', "'messages[0]' must be an object"),
    (b'{"model": "m", "messages": [{"content": "x"}]}', "'messages[0].role'"),
    (b'{"model": "m", "messages": [{"role": "user", "content": 5}]}', "'messages[0].content'"),
])
def test_chat_malformed(raw, fragment):
    bad("chat", raw, fragment)


def test_responses_malformed():
    bad("responses", b'{"model": "m"}', "'input' is required")
    bad("responses", b'{"model": "m", "input": 3}', "'input' must be")


def test_ten_mib_body():
    prompt = "ab\u00e9" * (10 * 1024 * 1024 // 4)
    raw = json.dumps({"model": "m", "prompt": prompt}, ensure_ascii=False).encode()
    assert len(raw) >= 10 * 1024 * 1024
    assert parse_body("completions", raw)[2] == prompt.encode()
