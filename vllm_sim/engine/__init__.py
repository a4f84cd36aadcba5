"""The simulated engine: KV cache with prefix caching and vLLM V1's step scheduler."""
from .clock import Clock, ManualClock, ScaledClock
from .kv_cache import Cleared, KVCache, Removed, Stored, block_key
from .request import Request, Status
from .scheduler import Engine, EngineConfig, StepOutput, TokenOutput

__all__ = ["Clock", "ManualClock", "ScaledClock", "Cleared", "KVCache", "Removed", "Stored", "block_key",
           "Request", "Status", "Engine", "EngineConfig", "StepOutput", "TokenOutput"]
