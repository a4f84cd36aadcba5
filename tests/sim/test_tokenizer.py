"""The shipped tokenizer: reproducible from its build script, and the documented chat format."""
import os

from vllm_sim import tokenizer
from vllm_sim.tokenizer import build


def test_build_reproduces_the_shipped_file(tmp_path):
    build.main([str(tmp_path)])
    shipped = os.path.join(tokenizer.DEFAULT_DIR, "tokenizer.json")
    assert (tmp_path / "tokenizer.json").read_bytes() == open(shipped, "rb").read()
    assert os.path.getsize(shipped) < 2_000_000


def test_encode_decode_and_chat_format():
    tok = tokenizer.load()
    assert tok.vocab_size == 8192
    ids = tok.encode("Hello, world! The gateway routes 12345 requests.")
    assert tok.decode(ids) == "Hello, world! The gateway routes 12345 requests."
    msgs = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "image_url"},
                                         {"type": "text", "text": "there"}]}]
    text = tok.apply_chat_template(msgs)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
                    "<|im_start|>assistant\n")
    ids = tok.encode(text)
    assert ids[0] == 1 and ids.count(1) == 3 and ids.count(2) == 2     # special tokens matched as one id each
    assert tok.apply_chat_template(msgs, add_generation_prompt=False).endswith("there<|im_end|>\n")
    assert tok.eos_token_id == 2
    assert tokenizer.load() is tok                                       # cached per directory


async def test_server_uses_the_tokenizer_directory_given(tmp_path):
    import shutil

    from .conftest import InProcSim
    for f in ("tokenizer.json", "chat_template.jinja"):
        shutil.copy(os.path.join(tokenizer.DEFAULT_DIR, f), tmp_path / f)
    async with InProcSim("--tokenizer", str(tmp_path)) as sim:
        st, t = await sim.post("/tokenize", {"prompt": "gateway"})
        assert st == 200 and t["tokens"] == tokenizer.load().encode("gateway")
        assert sim.server.tok.directory == str(tmp_path)
