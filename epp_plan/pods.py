"""The simulated pool: one vllm_sim engine per pod (built from the same flags the benchmark's sims get),
each with the epp Endpoint the scheduler sees, and what a request body becomes inside the sim server."""
from __future__ import annotations

from dataclasses import dataclass

import orjson

from epp.datalayer.endpoint import Endpoint, Metrics
from vllm_sim import engine_setup, openai_api
from vllm_sim import tokenizer as sim_tokenizer
from vllm_sim.cli import build_parser

ROLE_LABEL = "llm-d.ai/role"
# GPUs behind one pod of each shipped latency profile (the profile's name says how many)
GPUS = {"llama-8b-h100": 1, "llama-70b-4xh100": 4}


@dataclass
class PodSpec:
    role: str                 # decode | prefill | prefill-decode
    flags: list[str]          # vllm-sim flags (engine-shaping ones matter: profile, blocks, batch limits)


class Pod:
    __slots__ = ("index", "name", "address", "role", "engine", "profile", "endpoint", "busy", "kicked", "wake_seq",
                 "gpus", "last_out")

    def __init__(self, index: int, spec: PodSpec, vocab_ids: list[int]) -> None:
        args, _ = build_parser().parse_known_args(spec.flags)
        self.index = index
        self.role = spec.role
        self.name = f"sim-{spec.role}-{index}"
        self.address = f"127.0.0.1:{8000 + index}"      # a name only: nothing is sent anywhere
        self.engine, self.profile = engine_setup.build(args, vocab_ids)
        self.gpus = GPUS.get(args.profile, 1)
        self.endpoint = Endpoint(name=self.name, address=self.address,
                                 labels={"app": "sim", ROLE_LABEL: spec.role})
        self.busy = self.kicked = False
        self.wake_seq = 0
        self.last_out = None

    def scrape(self, now_mono: float) -> None:
        """What epp's scraper reads from the sim's /metrics (vllm:num_requests_waiting / running,
        kv_cache_usage_perc, cache_config_info), as of now; tests hold this equal to parsing the page."""
        e = self.engine
        self.endpoint.metrics = Metrics(waiting=float(len(e.waiting)), running=float(len(e.running)),
                                        kv_usage=e.kv_usage(), block_size=e.cfg.block_size,
                                        num_gpu_blocks=e.cfg.num_gpu_blocks, updated=now_mono)


class Prompts:
    """Request bodies as the sim server turns them into engine input: token ids (chat through the
    template), max_tokens, ignore_eos and seed. Repeated bodies (a shared-prefix cycle) are tokenized once."""

    def __init__(self, default_max_tokens: int = 256, cache: int = 4096) -> None:
        self.tok = sim_tokenizer.load()
        self.vocab_ids = self.tok.word_token_ids()
        self.default_max_tokens = default_max_tokens
        self._cache: dict[bytes, tuple] = {}
        self._cap = cache

    def of(self, body: bytes, chat: bool) -> tuple[list[int], int, bool, int | None]:
        got = self._cache.get(body)
        if got is not None:
            return got
        g = openai_api.parse(orjson.loads(body), chat, None)
        if chat:
            ids = self.tok.encode(self.tok.apply_chat_template(g.messages, g.add_generation_prompt))
        elif g.prompt_ids is not None:
            ids = list(g.prompt_ids)
        else:
            ids = self.tok.encode(g.prompt_text)
        got = (ids, g.max_tokens if g.max_tokens is not None else self.default_max_tokens, g.ignore_eos, g.seed)
        if len(self._cache) >= self._cap:
            self._cache.pop(next(iter(self._cache)))
        self._cache[body] = got
        return got

    def text(self, ids: list[int]) -> str:
        return self.tok.decode(ids)
