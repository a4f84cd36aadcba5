"""Who may read the metrics server: a bearer token is authenticated with a TokenReview and the user is
authorized with a SubjectAccessReview for the non-resource path and verb, with the caches upstream's
controller-runtime filter uses (token 1 min; allowed 5 min, denied 30 s)."""
from __future__ import annotations

import hashlib
import logging
import time

from kubernetes_asyncio import client

log = logging.getLogger(__name__)

TOKEN_TTL = 60.0
ALLOW_TTL = 300.0
DENY_TTL = 30.0
CALL_TIMEOUT = 10.0


class AccessReviews:
    def __init__(self, api: client.ApiClient) -> None:
        self.authn = client.AuthenticationV1Api(api)
        self.authz = client.AuthorizationV1Api(api)
        self._users: dict[str, tuple[float, dict | None]] = {}
        self._decisions: dict[tuple, tuple[float, bool]] = {}

    async def check(self, token: str | None, path: str, verb: str) -> tuple[int, str] | None:
        """None when allowed, else (status, message) as upstream answers."""
        if not token:
            return 401, "Unauthorized"
        try:
            user = await self._user(token)
        except Exception as e:  # the API server could not be asked
            log.warning("metrics auth: TokenReview failed: %s", e)
            return 500, "Authentication failed"
        if user is None:
            return 401, "Unauthorized"
        name = user.get("username", "")
        try:
            allowed = await self._allowed(user, path, verb)
        except Exception as e:
            log.warning("metrics auth: SubjectAccessReview for %s failed: %s", name, e)
            return 500, f"Authorization for user {name} failed"
        if not allowed:
            return 403, f"Authorization denied for user {name}"
        return None

    async def _user(self, token: str) -> dict | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        t = time.monotonic()
        hit = self._users.get(key)
        if hit is not None and hit[0] > t:
            return hit[1]
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
        r = await self.authn.create_token_review(body, _request_timeout=CALL_TIMEOUT)
        st = r.status
        user = None
        if st is not None and st.authenticated and st.user is not None:
            u = st.user
            user = {"username": u.username or "", "uid": u.uid or "", "groups": list(u.groups or []),
                    "extra": {k: list(v) for k, v in (u.extra or {}).items()}}
        self._users[key] = (t + TOKEN_TTL, user)
        if len(self._users) > 4096:
            self._users = {k: v for k, v in self._users.items() if v[0] > t}
        return user

    async def _allowed(self, user: dict, path: str, verb: str) -> bool:
        key = (user["username"], user["uid"], tuple(user["groups"]), path, verb)
        t = time.monotonic()
        hit = self._decisions.get(key)
        if hit is not None and hit[0] > t:
            return hit[1]
        spec = {"user": user["username"], "groups": user["groups"], "nonResourceAttributes": {"path": path, "verb": verb}}
        if user["uid"]:
            spec["uid"] = user["uid"]
        if user["extra"]:
            spec["extra"] = user["extra"]
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
        r = await self.authz.create_subject_access_review(body, _request_timeout=CALL_TIMEOUT)
        allowed = bool(r.status is not None and r.status.allowed)
        self._decisions[key] = (t + (ALLOW_TTL if allowed else DENY_TTL), allowed)
        if len(self._decisions) > 4096:
            self._decisions = {k: v for k, v in self._decisions.items() if v[0] > t}
        return allowed
