"""A Kubernetes API server stand-in on loopback that speaks the real list/watch wire protocol, for the
objects epp uses: pods, InferencePools, InferenceObjectives, InferenceModelRewrites and Leases.

List: paged (limit/continue), labelSelector (a=b,c=d), fieldSelector metadata.name=..., the list's
resourceVersion. Watch: chunked JSON lines from a resourceVersion, BOOKMARK events when asked for,
ERROR 410 Gone for a compacted version, ends after timeoutSeconds; `drop_watches()` cuts every open
watch connection. Leases: get, create (409 if it exists), replace with optimistic concurrency.
TokenReview and SubjectAccessReview (the metrics server's auth): `tokens` maps a bearer token to its
user, `access` holds the (user, path, verb) non-resource requests allowed; `reviews` records each.
State changes come from the test through thread-safe methods (the server runs in its own thread).
"""
from __future__ import annotations

import asyncio
import copy
import json
import threading

from aiohttp import web

CORE = "/api/v1/namespaces/{ns}/{plural}"
GROUPED = "/apis/{group}/{version}/namespaces/{ns}/{plural}"


class FakeKube:
    def __init__(self, bookmark_interval: float = 0.5) -> None:
        self.rv = 100
        self.objects: dict[tuple, dict[str, dict]] = {}      # (group, plural, ns) -> name -> object
        self.events: dict[tuple, list[tuple[int, str, dict]]] = {}
        self.compacted = 0                                   # watches from a version below this get 410
        self.bookmark_interval = bookmark_interval
        self.requests: list[str] = []                        # "LIST pods", "WATCH pods rv=..", ...
        self.verbs: set[tuple[str, str, str]] = set()        # (api group, resource, verb) as RBAC names them
        self.watch_status_410 = False                        # answer 410 as an HTTP status, not an event
        self.tokens: dict[str, dict] = {}                    # bearer token -> {"username", "groups", "uid"}
        self.access: set[tuple[str, str, str]] = set()       # (username, path, verb) allowed
        self.reviews: list[dict] = []                        # TokenReview / SubjectAccessReview bodies
        self._changed: asyncio.Condition | None = None
        self._watch_tasks: set[asyncio.Task] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = self._call(self._start())

    # ------------------------------------------------------------------ test side (any thread)

    def _call(self, coro, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def put(self, group: str, plural: str, ns: str, obj: dict) -> dict:
        return self._call(self._put(group, plural, ns, obj))

    def delete(self, group: str, plural: str, ns: str, name: str) -> None:
        self._call(self._delete(group, plural, ns, name))

    def compact(self) -> None:
        """Forget all history: every watch resuming from an older version gets 410 Gone."""
        def do():
            self.compacted = self.rv + 1
            for k in self.events:
                self.events[k] = []
        self.loop.call_soon_threadsafe(do)

    def drop_watches(self) -> None:
        def do():
            for t in list(self._watch_tasks):
                t.cancel()
        self.loop.call_soon_threadsafe(do)

    def get(self, group: str, plural: str, ns: str, name: str) -> dict | None:
        o = self.objects.get((group, plural, ns), {}).get(name)
        return copy.deepcopy(o) if o else None

    def kubeconfig(self, path: str) -> str:
        with open(path, "w") as f:
            json.dump({"apiVersion": "v1", "kind": "Config", "current-context": "fake",
                       "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
                       "users": [{"name": "u", "user": {"token": "t"}}],
                       "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u", "namespace": "default"}}]},
                      f)
        return path

    def close(self) -> None:
        self._call(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    # ------------------------------------------------------------------ state

    async def _start(self) -> int:
        self._changed = asyncio.Condition()
        app = web.Application()
        app.router.add_get("/api/v1/namespaces/{ns}/{plural}", self._list_or_watch)
        app.router.add_get("/apis/{group}/{version}/namespaces/{ns}/{plural}", self._list_or_watch)
        app.router.add_get("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}", self._lease_get)
        app.router.add_post("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases", self._lease_create)
        app.router.add_put("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}", self._lease_replace)
        app.router.add_post("/apis/authentication.k8s.io/v1/tokenreviews", self._token_review)
        app.router.add_post("/apis/authorization.k8s.io/v1/subjectaccessreviews", self._access_review)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return site._server.sockets[0].getsockname()[1]

    async def _record(self, key: tuple, kind: str, obj: dict) -> None:
        self.events.setdefault(key, []).append((self.rv, kind, copy.deepcopy(obj)))
        async with self._changed:
            self._changed.notify_all()

    async def _put(self, group: str, plural: str, ns: str, obj: dict) -> dict:
        key = (group, plural, ns)
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", ns)
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        existed = meta["name"] in self.objects.setdefault(key, {})
        self.objects[key][meta["name"]] = obj
        await self._record(key, "MODIFIED" if existed else "ADDED", obj)
        return copy.deepcopy(obj)

    async def _delete(self, group: str, plural: str, ns: str, name: str) -> None:
        key = (group, plural, ns)
        obj = self.objects.get(key, {}).pop(name, None)
        if obj is None:
            return
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        await self._record(key, "DELETED", obj)

    # ------------------------------------------------------------------ list and watch

    @staticmethod
    def _matches(obj: dict, label_sel: str, field_sel: str) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        for term in filter(None, label_sel.split(",")):
            k, _, v = term.partition("=")
            if labels.get(k) != v:
                return False
        for term in filter(None, field_sel.split(",")):
            k, _, v = term.partition("=")
            if k == "metadata.name" and obj["metadata"]["name"] != v:
                return False
        return True

    async def _list_or_watch(self, req: web.Request) -> web.StreamResponse:
        m = req.match_info
        key = (m.get("group", ""), m["plural"], m["ns"])
        q = req.query
        label_sel, field_sel = q.get("labelSelector", ""), q.get("fieldSelector", "")
        if q.get("watch") in ("true", "1", "True"):
            self.verbs.add((key[0], key[1], "watch"))
            return await self._watch(req, key, label_sel, field_sel)
        self.verbs.add((key[0], key[1], "list"))
        self.requests.append(f"LIST {m['plural']}")
        items = [o for o in sorted(self.objects.get(key, {}).values(), key=lambda o: o["metadata"]["name"])
                 if self._matches(o, label_sel, field_sel)]
        start = int(q.get("continue") or 0)
        limit = int(q.get("limit") or 0) or len(items) or 1
        page = items[start:start + limit]
        meta = {"resourceVersion": str(self.rv)}
        if start + limit < len(items):
            meta["continue"] = str(start + limit)
        return web.json_response({"kind": "List", "apiVersion": "v1", "metadata": meta, "items": page})

    async def _watch(self, req, key, label_sel, field_sel) -> web.StreamResponse:
        rv = int(req.query.get("resourceVersion") or 0)
        timeout = float(req.query.get("timeoutSeconds") or 300)
        bookmarks = req.query.get("allowWatchBookmarks") in ("true", "True", "1")
        self.requests.append(f"WATCH {key[1]} rv={rv}")
        if rv < self.compacted and self.watch_status_410:
            return web.json_response({"kind": "Status", "code": 410, "reason": "Expired"}, status=410)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(req)

        async def send(kind: str, obj: dict) -> None:
            await resp.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

        task = asyncio.current_task()
        self._watch_tasks.add(task)
        try:
            if rv < self.compacted:
                await send("ERROR", {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410,
                                     "reason": "Expired", "message": f"too old resource version: {rv}"})
                return resp
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            next_bookmark = loop.time() + self.bookmark_interval
            while loop.time() < deadline:
                for erv, kind, obj in list(self.events.get(key, [])):
                    if erv > rv:
                        rv = erv
                        if self._matches(obj, label_sel, field_sel):
                            await send(kind, obj)
                if bookmarks and loop.time() >= next_bookmark:
                    await send("BOOKMARK", {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": str(self.rv)}})
                    rv = max(rv, self.rv)
                    next_bookmark = loop.time() + self.bookmark_interval
                async with self._changed:
                    try:
                        await asyncio.wait_for(self._changed.wait(), min(0.2, max(0.01, deadline - loop.time())))
                    except asyncio.TimeoutError:
                        pass
            return resp
        except asyncio.CancelledError:
            # drop_watches(): cut the connection mid-stream, as a flaky network or API server would
            if req.transport is not None:
                req.transport.abort()
            raise
        finally:
            self._watch_tasks.discard(task)

    # ------------------------------------------------------------------ leases

    LEASES = ("coordination.k8s.io", "leases")

    async def _lease_get(self, req):
        obj = self.objects.get((*self.LEASES, req.match_info["ns"]), {}).get(req.match_info["name"])
        self.requests.append("GET lease")
        self.verbs.add((*self.LEASES, "get"))
        if obj is None:
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"}, status=404)
        return web.json_response(obj)

    async def _lease_create(self, req):
        body = await req.json()
        ns = req.match_info["ns"]
        self.requests.append("CREATE lease")
        self.verbs.add((*self.LEASES, "create"))
        if body["metadata"]["name"] in self.objects.get((*self.LEASES, ns), {}):
            return web.json_response({"kind": "Status", "code": 409, "reason": "AlreadyExists"}, status=409)
        return web.json_response(await self._put(*self.LEASES, ns, body), status=201)

    async def _lease_replace(self, req):
        body = await req.json()
        ns, name = req.match_info["ns"], req.match_info["name"]
        self.requests.append("UPDATE lease")
        self.verbs.add((*self.LEASES, "update"))
        cur = self.objects.get((*self.LEASES, ns), {}).get(name)
        if cur is None:
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"}, status=404)
        if body.get("metadata", {}).get("resourceVersion") != cur["metadata"]["resourceVersion"]:
            return web.json_response({"kind": "Status", "code": 409, "reason": "Conflict"}, status=409)
        return web.json_response(await self._put(*self.LEASES, ns, body))

    # ------------------------------------------------------------------ access reviews

    async def _token_review(self, req):
        body = await req.json()
        self.reviews.append(body)
        self.verbs.add(("authentication.k8s.io", "tokenreviews", "create"))
        user = self.tokens.get((body.get("spec") or {}).get("token", ""))
        status = {"authenticated": True, "user": user} if user else {"authenticated": False}
        return web.json_response({**body, "status": status}, status=201)

    async def _access_review(self, req):
        body = await req.json()
        self.reviews.append(body)
        self.verbs.add(("authorization.k8s.io", "subjectaccessreviews", "create"))
        spec = body.get("spec") or {}
        attrs = spec.get("nonResourceAttributes") or {}
        allowed = (spec.get("user"), attrs.get("path"), attrs.get("verb")) in self.access
        return web.json_response({**body, "status": {"allowed": allowed}}, status=201)


def pod(name: str, ip: str, labels: dict, ready: bool = True, terminating: bool = False,
        annotations: dict | None = None) -> dict:
    meta = {"name": name, "labels": labels}
    if annotations:
        meta["annotations"] = annotations
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "status": {"podIP": ip, "phase": "Running",
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def inference_pool(name: str, match_labels: dict, ports: list[int]) -> dict:
    return {"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool", "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": match_labels}, "targetPorts": [{"number": p} for p in ports],
                     "endpointPickerRef": {"name": "epp", "port": {"number": 9002}}}}
