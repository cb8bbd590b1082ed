"""What lets a request go out: the API key, the rate limit and the budget cap."""

from __future__ import annotations

import os
import threading
import time

from arena_cje.backends.openai_compatible.errors import BudgetExceededError


def resolve_api_key(api_key: str | None, api_key_env: str | None = "FIREWORKS_API_KEY") -> str | None:
    """Find the API key: the explicit value (Kedro's credentials, passed by the caller), then the
    environment variable. Returns ``None`` when no key is configured (fine for local servers
    without authentication)."""
    if api_key:
        return str(api_key)
    if api_key_env and os.environ.get(api_key_env):
        return os.environ[api_key_env]
    return None


class _RateLimiter:
    """Spaces request starts at least 60/rpm seconds apart across all threads."""

    def __init__(self, requests_per_minute: float | None) -> None:
        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


class _Budget:
    """Spend so far plus in-flight reservations must stay within the cap."""

    def __init__(self, cap_usd: float | None, spent_usd: float) -> None:
        self.cap = cap_usd
        self.spent = spent_usd
        self.reserved = 0.0
        self._lock = threading.Lock()

    def reserve(self, estimate: float) -> None:
        with self._lock:
            if self.cap is not None and self.spent + self.reserved + estimate > self.cap:
                raise BudgetExceededError(
                    f"budget cap reached: spent ${self.spent:.4f} + in flight ${self.reserved:.4f} + next request "
                    f"up to ${estimate:.4f} would exceed backend.openai_compatible.budget_usd = ${self.cap:.2f}; raise the cap "
                    "to continue (completed requests are kept and will not be repeated)"
                )
            self.reserved += estimate

    def settle(self, estimate: float, actual: float) -> None:
        with self._lock:
            self.reserved -= estimate
            self.spent += actual
