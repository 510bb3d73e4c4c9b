"""The last requests the API answered, for `GET /admin/requests` (the web page's Activity view).

A bounded ring, filled by the metrics from each request's record once it is answered: route,
model, status, tokens, time to first token, duration. Never the prompt, the answer or a header.
Only the API's routes go in it: the probes, /metrics and the admin routes the page itself
polls would push the requests a person wants to see out of the ring.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

# Routes outside /v1 that serve models; every /v1 route counts too.
MODEL_ROUTES = {"/tokenize", "/detokenize", "/rerank"}


class RecentRequests:
    def __init__(self, size: int = 200):
        self._ring: deque[dict[str, Any]] = deque(maxlen=size)

    @staticmethod
    def shown(route: str) -> bool:
        return route.startswith("/v1/") or route in MODEL_ROUTES

    def add(self, method: str, route: str, status: int, model: str, prompt_tokens: int,
            completion_tokens: int, ttft: float | None, seconds: float) -> None:
        if not self.shown(route):
            return
        self._ring.append({
            "time": time.time(), "method": method, "route": route, "model": model or None,
            "status": status, "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "ttft": None if ttft is None else round(ttft, 4), "seconds": round(seconds, 4)})

    def newest_first(self, limit: int | None = None) -> list[dict[str, Any]]:
        items = list(reversed(self._ring))
        return items if limit is None else items[:limit]
