"""Latency profiles: what one engine step costs on a given model and GPU.

A vLLM V1 step runs every scheduled token through the model once. Its time is modelled as

    step = fixed + prefill_token * P + decode_seq * D + kv_read_token * K

P = prefill tokens in the step, D = decoding sequences, K = KV tokens the step's attention reads
(the context already in cache for every scheduled sequence). Every term comes from FLOPs or bytes:

* fixed: the weights are read from HBM once per step whatever the batch (decode is memory-bound), plus
  host overhead (scheduling, sampling, kernel launches) and, with tensor parallelism, the all-reduces.
* prefill_token: 2 x params FLOPs per token at a realistic model FLOPs utilisation (MFU).
* decode_seq: each decoding sequence is one more row through the same matmuls (2 x params FLOPs), but
  at decode batch sizes that compute hides under the weight read: step time is max(weight read, B x
  compute) until the batch turns compute-bound at B* = weight read / per-token compute. A straight line
  through that roofline over B = 1..256 has slope ~ (256 - B*) x per-token compute / 256; we add ~5 us of
  per-sequence host work (sampling, output processing).
* kv_read_token: bytes of KV per token / effective HBM bandwidth (per GPU under TP, heads are split).

Not modelled: attention FLOPs of prefills (causal attention costs 2 x 2 x layers x heads x head_dim FLOPs per
query-key pair, 262k x prompt length FLOPs per prompt token of the 8B: +13% over its weight FLOPs at 8k,
+53% at 32k, +214% at 128k; the step time sees prefill tokens and KV reads, not pairs), speculative decoding,
CUDA-graph batch-size steps, V0's per-step Python host work.

Constants (public spec sheets): H100 SXM bf16 dense 989 TFLOP/s, HBM3 3.35 TB/s; we assume 80% of
peak bandwidth is achieved and MFU 50% (1 GPU) or 45% (TP4, communication overlaps imperfectly).
KV bytes/token = layers x kv_heads x head_dim x 2 (K and V) x 2 bytes (bf16).

llama-8b-h100 (Llama-3.1-8B, 8.03e9 params, 32 layers, 8 KV heads, head_dim 128, one H100):
  weights 16.06 GB / (0.8 x 3.35e12 B/s) = 5.99 ms; + 1.0 ms host overhead  -> fixed = 7.0 ms
  2 x 8.03e9 = 16.06 GFLOP / (0.5 x 989e12)  = 32.5 us               -> prefill_token = 32.5 us
  B* = 5.99 ms / 32.5 us = 184; (256 - 184) x 32.5 us / 256 = 9.1 us; + 5 us host -> decode_seq = 14 us
  KV 32 x 8 x 128 x 2 x 2 = 131,072 B / 2.68e12 B/s = 48.9 ns        -> kv_read_token = 48.9 ns
  blocks: 0.9 x 80 GB - 16.06 GB weights - ~4 GB activations = ~52 GB / (131,072 x 16) -> 24,800 blocks
llama-70b-4xh100 (Llama-3.1-70B, 70.6e9 params, 80 layers, 8 KV heads, head_dim 128, TP=4):
  weights 141.2 GB / 4 GPUs = 35.3 GB / 2.68e12 = 13.2 ms; + 160 all-reduces x ~15 us = 2.4 ms;
  + 1.0 ms host                                                       -> fixed = 16.6 ms
  2 x 70.6e9 = 141.2 GFLOP / (4 x 0.45 x 989e12) = 79.3 us            -> prefill_token = 79.3 us
  B* = 13.2 ms / 79.3 us = 166; (256 - 166) x 79.3 us / 256 = 27.9 us; + 5 us host -> decode_seq = 33 us
  KV 80 x 8 x 128 x 2 x 2 = 327,680 B, /4 per GPU = 81,920 B / 2.68e12 = 30.6 ns -> kv_read_token
  blocks: 4 x 72 GB - 141.2 GB - ~8 GB = ~139 GB / (327,680 x 16) -> 26,500 blocks
llama-8b-a100-40gb (the same 8B on one A100 SXM4 40GB: bf16 dense 312 TFLOP/s, HBM2 1.555 TB/s), derived
the same way with the same 80% bandwidth / 50% MFU / 1.0 ms host assumptions:
  weights 16.06 GB / (0.8 x 1.555e12 B/s) = 12.91 ms; + 1.0 ms host overhead -> fixed = 13.9 ms
  16.06 GFLOP / (0.5 x 312e12)                 = 102.9 us            -> prefill_token = 102.9 us
  B* = 12.91 ms / 102.9 us = 125; (256 - 125) x 102.9 us / 256 = 52.6 us; + 5 us host -> decode_seq = 58 us
  KV 131,072 B / (0.8 x 1.555e12 B/s)         = 105.4 ns            -> kv_read_token = 105.4 ns
  blocks: 0.9 x 40 GB - 16.06 GB weights - ~4 GB activations = ~15.9 GB / (131,072 x 16) -> 7,600 blocks
  transfers: p4d-class nodes, 400 Gb/s EFA per 8 GPUs -> 6.25 GB/s per GPU; PCIe Gen4 x16 ~25 GB/s
  So against the H100: prefill 3.2x slower, a lone decode step 2.0x, a third of the KV cache: the slow
  half of the heterogeneous scenario.
Checked against published vLLM figures (`hack/sim_calibrate.py` replays each published setup in the engine
and prints the table with its sources; no constant was fitted to them):
  8B, vLLM 0.19.1 at concurrency 1: median ITL = 6.44 ms + 43.7 ns x context. The model gives 7.01 ms +
    48.9 ns (+9% at 1k, +10% at 128k): weights stream at ~75% of peak HBM bandwidth with host work hidden,
    long KV reads at ~90%; the 80% / 1.0 ms split above is within 10% of both.
  8B, concurrency 8, 20k in / 2k out: median TTFT, median ITL and output tokens/s within 6%.
  8B single-request TTFT at 32k: ~1.42 s published = 526 TFLOP of weight GEMMs + 281 TFLOP of attention at
    ~57% MFU; the model is 23% fast there and 56% fast at 128k because the attention term is missing (above);
    up to ~16k attention adds under 27% and the 50% MFU absorbs most of it.
  8B on A100 40GB, vLLM 0.23, 1024 in / 128 out: the decode rate of a lone request (~75 tok/s published,
    1 / TPOT) -5%, and the output-throughput gain from concurrency 1 to 8 (6.6x published) -18%: each 1k prefill
    (105 ms at 50% MFU) stalls the other seven decodes for a step; a real A100 likely prefills 1k tokens
    at a higher MFU than the 16k+ prompts the H100 figures checked.
  70B TP4, vLLM 0.20.2, 1024 in / 512 out: mean TPOT at 2 and 8 req/s +12% and +20%, p99 TTFT at 8 req/s -6%.
  The same post's burst p99 TTFT (300 prompts at once, 16.9 s) would need ~55 us per prefill token (~65% MFU),
  but its FP8-KV twin (1.2 s) is out of physical reach, so that setup is not taken as evidence; the 45% MFU
  stays, as the 8 req/s TTFT tail supports it.
  vLLM 0.6 figures (V0, multi-step scheduling): TPOT -31%..+6%; TTFT inflated by the 10-step batches;
    throughput -3%..+21% on the vLLM blog's and Lambda's runs, +38% / +45% on the 5000-prompt ShareGPT runs,
    where V0's per-step Python work for 256 sequences dominated.
Transfers: KV moves between pods at the node's network bandwidth share (AWS EFA 3,200 Gb/s = 400 GB/s
per 8-GPU node -> 50 GB/s per GPU, so 50 GB/s for 8B on 1 GPU and 200 GB/s for 70B on 4 GPUs), plus
~1 ms of setup; CPU offload reloads over PCIe Gen5 x16 (~50 GB/s achieved per GPU).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class Profile:
    name: str
    fixed_s: float
    prefill_token_s: float
    decode_seq_s: float
    kv_read_token_s: float
    kv_bytes_per_token: int        # whole model (all GPUs): what a P/D transfer or an offload moves
    net_bandwidth_Bps: float       # P/D KV transfer bandwidth
    net_latency_s: float           # per-transfer setup (handshake, descriptor exchange)
    pcie_bandwidth_Bps: float      # CPU offload tier <-> GPU
    num_gpu_blocks: int            # default KV capacity at block size 16
    max_model_len: int

    def step_time(self, prefill_tokens: int, decode_seqs: int, kv_tokens_read: int) -> float:
        if prefill_tokens == 0 and decode_seqs == 0:
            return 0.0
        return (self.fixed_s + self.prefill_token_s * prefill_tokens + self.decode_seq_s * decode_seqs
                + self.kv_read_token_s * kv_tokens_read)

    def transfer_time(self, tokens: int) -> float:
        return self.net_latency_s + tokens * self.kv_bytes_per_token / self.net_bandwidth_Bps

    def reload_time(self, tokens: int) -> float:
        return tokens * self.kv_bytes_per_token / self.pcie_bandwidth_Bps


PROFILES = {
    "llama-8b-h100": Profile(
        name="llama-8b-h100", fixed_s=7.0e-3, prefill_token_s=32.5e-6, decode_seq_s=14e-6,
        kv_read_token_s=48.9e-9, kv_bytes_per_token=131_072, net_bandwidth_Bps=50e9, net_latency_s=1e-3,
        pcie_bandwidth_Bps=50e9, num_gpu_blocks=24_800, max_model_len=131_072),
    "llama-8b-a100-40gb": Profile(
        name="llama-8b-a100-40gb", fixed_s=13.9e-3, prefill_token_s=102.9e-6, decode_seq_s=58e-6,
        kv_read_token_s=105.4e-9, kv_bytes_per_token=131_072, net_bandwidth_Bps=6.25e9, net_latency_s=1e-3,
        pcie_bandwidth_Bps=25e9, num_gpu_blocks=7_600, max_model_len=131_072),
    "llama-70b-4xh100": Profile(
        name="llama-70b-4xh100", fixed_s=16.6e-3, prefill_token_s=79.3e-6, decode_seq_s=33e-6,
        kv_read_token_s=30.6e-9, kv_bytes_per_token=327_680, net_bandwidth_Bps=200e9, net_latency_s=1e-3,
        pcie_bandwidth_Bps=200e9, num_gpu_blocks=26_500, max_model_len=131_072),
}

OVERRIDABLE = [f.name for f in fields(Profile) if f.name != "name"]


def get(name: str, **overrides) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    return replace(PROFILES[name], **changes)


def replace_field(p: Profile, **changes) -> Profile:
    return replace(p, **changes)


def describe(p: Profile) -> dict:
    return asdict(p)
