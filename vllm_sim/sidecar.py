"""llm-d's routing sidecar, folded into the decode sim (`--pd-sidecar`), so a pool does P/D end to end.

With `x-prefiller-host-port: host:port[,more]` on a completion request, the first entry gets the prefill
leg: the original body with stream off, stream_options dropped, max_tokens = max_completion_tokens = 1 and
kv_transfer_params asking for a remote decode, under the same x-request-id. A 4xx from the prefiller goes
back to the client; a 5xx or an unreachable prefiller means decode-only with the original body. Otherwise
the decode leg is the original body plus the prefill response's kv_transfer_params, verbatim.
"""
from __future__ import annotations

import logging

import aiohttp
import orjson

from .errors import APIError

log = logging.getLogger("vllm_sim.sidecar")
HEADER = "x-prefiller-host-port"
PREFILL_PARAMS = {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
                  "remote_block_ids": None, "remote_host": None, "remote_port": None}


class Sidecar:
    def __init__(self):
        self.session: aiohttp.ClientSession | None = None
        self.counts = {"prefill_legs": 0, "prefill_fallbacks": 0}

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600))

    async def stop(self) -> None:
        if self.session:
            await self.session.close()

    async def prefill(self, target: str, path: str, body: dict, request_id: str | None) -> dict | None:
        """Run the prefill leg; returns its kv_transfer_params, or None to decode alone.
        Raises APIError with the prefiller's own 4xx."""
        host = target.split(",")[0].strip()
        leg = {k: v for k, v in body.items() if k != "stream_options"}
        leg.update(stream=False, max_tokens=1, max_completion_tokens=1, kv_transfer_params=dict(PREFILL_PARAMS))
        headers = {"Content-Type": "application/json"}
        if request_id:
            headers["x-request-id"] = request_id
        self.counts["prefill_legs"] += 1
        try:
            async with self.session.post(f"http://{host}{path}", data=orjson.dumps(leg), headers=headers) as r:
                raw = await r.read()
                if 400 <= r.status < 500:
                    try:
                        err = orjson.loads(raw)["error"]
                        raise APIError(r.status, err.get("message", ""), err.get("type"))
                    except (ValueError, KeyError, TypeError):
                        raise APIError(r.status, raw.decode(errors="replace"))
                if r.status != 200:
                    raise RuntimeError(f"prefiller answered {r.status}")
                doc = orjson.loads(raw)
        except APIError:
            raise
        except Exception as exc:
            log.warning("prefill leg to %s failed (%s): decoding alone", host, exc)
            self.counts["prefill_fallbacks"] += 1
            return None
        return {"kv_transfer_params": doc.get("kv_transfer_params"),
                "cached_tokens": ((doc.get("usage") or {}).get("prompt_tokens_details") or {}).get("cached_tokens")}
