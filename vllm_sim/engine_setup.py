"""The engine a `vllm-sim` command line describes: latency profile, KV-cache size and batch limits.
The server builds its engine here, and so does anything else that runs the same engine on its own clock
(the capacity planner), so one set of flags means one engine wherever it runs."""
from __future__ import annotations

import logging

from . import profiles
from .engine import Engine, EngineConfig

log = logging.getLogger("vllm_sim")


def profile_of(args) -> profiles.Profile:
    overrides = {k: getattr(args, k, None) for k in profiles.OVERRIDABLE}
    if args.max_model_len is not None:
        overrides["max_model_len"] = args.max_model_len
    return profiles.get(args.profile, **overrides)


def build(args, vocab_ids: list[int]) -> tuple[Engine, profiles.Profile]:
    """(engine, profile) for parsed vllm-sim args; vocab_ids are the token ids it samples from."""
    profile = profile_of(args)
    num_blocks = args.num_gpu_blocks_override or profile.num_gpu_blocks * 16 // args.block_size
    if profile.max_model_len > num_blocks * args.block_size:
        # vLLM refuses to start when one max-length sequence cannot fit in the KV cache; a simulator
        # with a deliberately tiny cache is more useful serving shorter sequences
        log.warning("max_model_len %d exceeds the KV cache (%d tokens); capping it",
                    profile.max_model_len, num_blocks * args.block_size)
        profile = profiles.replace_field(profile, max_model_len=num_blocks * args.block_size)
    cfg = EngineConfig(num_gpu_blocks=num_blocks, block_size=args.block_size, max_num_seqs=args.max_num_seqs,
                       max_num_batched_tokens=args.max_num_batched_tokens,
                       max_model_len=profile.max_model_len, offload_blocks=args.kv_offload_blocks,
                       hash_seed=args.seed, pin_timeout_s=args.kv_transfer_timeout,
                       max_loras=args.max_loras if args.enable_lora else 0,
                       enable_prefix_caching=args.enable_prefix_caching, vocab_ids=vocab_ids)
    return Engine(cfg, profile, seed=args.seed), profile
