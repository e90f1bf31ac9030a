"""Shedding generation requests while the event loop runs late.

One server process takes HTTP in on one event loop, and its batchers feed the GPU from threads that share the GIL
with it. Offered more requests than the loop can take in, everything slows at once: on an H100 (2026-12-07, the zoo
model on one process, Poisson arrivals at 130% of its saturation rate) requests waited seconds before the app saw
them (client p50 2.5 s against the app's own 33 ms), 429s reached clients after up to 3 s, and the GPU, short of the
GIL, made half the images per second it made at saturation. The batcher's admission cannot see any of this: it
judges the GPU's queue, not the loop's.

So while the loop is more than `max_loop_lag_ms` behind with requests in hand (at least BUSY generation requests in
the app: one request on a loop slowed by the server's own work, a garbage collection, is not shed), new generation
requests (POSTs under /v1/) are refused with 429 `loop_overloaded` before their body is read: no validation, no
noise, no encoding, the least a refusal can cost. Health checks, metrics and pages are never shed. A busy server whose
loop is also slowed by its own work (buckets still compiling after start-up hold the GIL) sheds too: its clients
would wait for that loop all the same.
"""

import asyncio
import time
import types

from serve.errors import error_response


class LoopLag:
    """How late this event loop runs, and for how long it has: a task asks to wake every `interval` seconds and keeps
    how late its last two wake-ups came; the next one, overdue now, is at least as late as it is overdue. `ms()` asks
    for two late observations running, so a loop late again and again reads late, and one pause (a garbage
    collection, a start-up step that held the loop) does not: what queued behind a single pause is served."""

    def __init__(self, interval=0.005):
        self.interval = interval
        self.earlier = self.late = 0.0      # seconds the wake-up before last, and the last, came after they were due
        self.due = None                     # time.monotonic() of the next wake-up
        self.task = None

    def start(self):
        self.task = asyncio.get_running_loop().create_task(self._probe(), name='sida-loop-lag')

    async def stop(self):
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def _probe(self):
        while True:
            self.due = time.monotonic() + self.interval
            await asyncio.sleep(self.interval)
            self.earlier, self.late = self.late, max(0.0, time.monotonic() - self.due)

    def ms(self):
        """Milliseconds the loop was late by in two observations running, at least: the last wake-up and either the
        one before it or the next one (overdue now, so at least that late)."""
        overdue = time.monotonic() - self.due if self.due is not None else 0.0
        return 1000 * min(self.late, max(self.earlier, overdue))


BUSY = 8        # generation requests in the app, at least, before a late loop is taken for an overloaded one
SHED = types.SimpleNamespace(path='(shed)')     # what a shed request's metric names as its route (a fixed label)


class ShedWhenLate:
    """ASGI middleware: 429 for generation requests while state.lag (a running LoopLag) reads over the setting and
    at least BUSY of them are in the app."""

    def __init__(self, app, state):
        self.app, self.state = app, state
        self.in_app = 0             # generation requests passed on and not yet answered

    async def __call__(self, scope, receive, send):
        if not (scope['type'] == 'http' and scope.get('method') == 'POST' and scope.get('path', '').startswith('/v1/')):
            return await self.app(scope, receive, send)
        lag, limit = self.state.lag, self.state.settings.max_loop_lag_ms
        if limit and lag is not None and self.in_app >= BUSY and (behind := lag.ms()) > limit:
            self.state.metrics.errors.labels('loop_overloaded').inc()
            scope['route'] = SHED                   # the request metric's route label: no route was matched
            refuse = error_response(429, 'loop_overloaded', f'the server is overloaded (its event loop runs {behind:.0f} ms '
                                    f'late, over its limit of {limit:g} ms); try again shortly', {'Retry-After': '1'})
            return await refuse(scope, receive, send)
        self.in_app += 1
        try:
            return await self.app(scope, receive, send)
        finally:
            self.in_app -= 1
