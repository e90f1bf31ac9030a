"""Requests per minute per caller, as a token bucket."""

import time

from serve.errors import ApiError


class RateLimiter:
    """A token bucket per caller: `per_minute` requests, refilled continuously (0: unlimited)."""

    def __init__(self, per_minute):
        self.per_minute, self.buckets = per_minute, {}

    def check(self, key):
        if not self.per_minute:
            return
        now = time.monotonic()
        tokens, last = self.buckets.get(key, (self.per_minute, now))
        tokens = min(self.per_minute, tokens + (now - last) * self.per_minute / 60)
        if tokens < 1:
            raise ApiError(429, 'rate_limited', f'more than {self.per_minute} requests per minute for this key',
                           {'Retry-After': str(max(1, round((1 - tokens) * 60 / self.per_minute)))})
        self.buckets[key] = (tokens - 1, now)
