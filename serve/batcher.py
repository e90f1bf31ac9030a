"""The async micro-batcher: coalesce concurrent requests into one backend call.

Requests (each a few images) wait in a bounded queue; a worker takes everything queued that fits in `max_batch`
images (natural batching: an idle server runs a lone request at once, a busy one batches what arrived while the
previous batch ran; `max_delay_ms` > 0 also waits that long for company), runs the backend on the model's own
thread (the event loop keeps serving; one thread also keeps torch.compile's CUDA graphs, which are recorded per
thread, from being captured again), and hands each request its slice. A request whose client went away is skipped.

On a GPU the backend only queues a batch (`TorchBackend.launch`) and another thread waits for its images, so the host
work of the next batch (joining the requests' inputs, padding, copies) overlaps this one on the GPU. At most
`depth` batches are queued at once, and while one is, the next is launched only when full: a partial batch formed
now would merely wait behind it, where one formed when the GPU frees up holds everything that arrived meanwhile.

Admission is by deadline: the worker measures its drain rate (images/s, an EWMA over batches), so a new request's
wait is estimated as (images ahead of it + its own) / rate; work that cannot finish before its deadline is refused
at once (the API answers 429 with a Retry-After from the estimate), and work whose deadline passes while queued is
dropped, never run. `max_queue_images` stays as a hard memory cap.
"""

import asyncio
import concurrent.futures
import dataclasses
import math
import time

import numpy as np
import torch


class QueueFull(Exception):
    def __init__(self, retry_after):
        super().__init__(f'queue full; retry after {retry_after}s')
        self.retry_after = retry_after


class DeadlineUnmeetable(QueueFull):
    """The queue ahead would take longer than the request may wait."""

    def __init__(self, estimate_s, budget_s, retry_after):
        Exception.__init__(self, f'estimated {estimate_s:.1f}s to finish, over the {budget_s:.1f}s deadline; '
                                 f'retry after {retry_after}s')
        self.estimate_s, self.budget_s, self.retry_after = estimate_s, budget_s, retry_after


class DeadlineExpired(Exception):
    """The deadline passed while the request waited in the queue: it was dropped, not run."""


class BackendFailed(Exception):
    pass


class DrainRate:
    """Images per second the backend drains: exponentially weighted moving averages of the images and of the seconds
    per batch, divided. Not an average of each batch's own rate: a batch's seconds come from time stamps taken by
    threads that the OS (or the GIL) may run late, and one stamped late makes its own batch long and the next one
    short; the seconds' average cancels that, where a rate from the short one (images / almost nothing) would pull
    the average of rates far up (the admission would then take work it cannot finish in time)."""

    def __init__(self, weight=0.2):
        self.weight, self.images_per_s = weight, None
        self.images = self.seconds = None

    def update(self, images, seconds):
        seconds = max(seconds, 0.0)
        if self.images is None:
            self.images, self.seconds = images, seconds
        else:
            self.images += self.weight * (images - self.images)
            self.seconds += self.weight * (seconds - self.seconds)
        self.images_per_s = self.images / max(self.seconds, 1e-6)

    def seconds_for(self, images):
        """Estimated seconds to drain `images`; 0 before the first measurement (nothing known: admit)."""
        return images / self.images_per_s if self.images_per_s else 0.0


@dataclasses.dataclass
class Job:
    inputs: dict
    future: asyncio.Future
    enqueued: float
    size: int
    deadline: float = math.inf          # time.perf_counter() by which it must be done


@dataclasses.dataclass
class BatchStats:
    batches: int = 0
    images: int = 0
    last_batch_size: int = 0
    failures: int = 0
    refused: int = 0                     # deadline could not be met: 429 at once
    expired: int = 0                     # deadline passed while queued: dropped, never run


class MicroBatcher:
    def __init__(self, backend, max_batch=32, max_delay_ms=0.0, max_queue_images=256, on_batch=None, depth=2):
        self.backend, self.max_batch, self.max_delay = backend, max_batch, max_delay_ms / 1000
        self.max_queue_images = max_queue_images
        self.queue = asyncio.Queue()
        self.queued_images = 0
        self.running_images = 0              # launched, not yet delivered
        self.drain = DrainRate()
        self.stats = BatchStats()
        self.on_batch = on_batch            # callback(batch_size, seconds) for metrics
        self.healthy = True
        self.max_depth = depth
        self._worker = None
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='sida-backend')
        self._waiter = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='sida-results')
        self._in_flight = set()              # tasks delivering launched batches
        self._idle = asyncio.Event()         # nothing launched is undelivered
        self._idle.set()
        self._slots = asyncio.Semaphore(depth)
        self._carried = None                 # a job taken from the queue that starts the next batch
        self._last_done = 0.0                # when the previous batch's images were back (its successor's busy time starts)

    @property
    def depth(self):
        """Batches on the device at once: 1 unless the backend queues them (read per batch: tests swap backends)."""
        return self.max_depth if getattr(self.backend, 'pipelined', False) else 1

    def start(self):
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self):
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        if self._in_flight:                        # launched batches finish and are delivered (a hung GPU: not forever)
            await asyncio.wait(self._in_flight, timeout=30)
        if self._carried is not None:
            self.queue.put_nowait(self._carried)   # answered below with the rest
            self._carried = None
        while not self.queue.empty():              # nobody will run these now: answer them
            job = self.queue.get_nowait()
            self.queued_images -= job.size
            if not job.future.done():
                job.future.set_exception(BackendFailed('the server is shutting down'))

    async def probe(self, inputs, timeout=30):
        """One small generation through the queue: lets an unhealthy model become ready again without traffic."""
        try:
            await asyncio.wait_for(self.submit(inputs), timeout)
        except (BackendFailed, QueueFull, DeadlineExpired, asyncio.TimeoutError):
            pass
        return self.healthy

    def _launch(self, parts, queue):
        """On the backend thread: the requests' inputs joined into one batch (host work kept off the event loop) and
        queued on the device (else generated here, as it always was); the images come from the returned object."""
        joined = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        return self.backend.launch(joined) if queue else _Done(self.backend.generate(joined))

    async def on_backend_thread(self, fn, *args):
        """Run fn on the thread every batch runs on (warm-up: torch.compile records CUDA graphs per thread)."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def estimated_wait(self, size):
        """Seconds until `size` more images would be done: everything queued or running first, then them."""
        return self.drain.seconds_for(self.queued_images + self.running_images + size)

    def admit(self, size, deadline_s=None):
        """Whether `size` more images would be taken now, by the same rules submit applies: raises QueueFull or
        DeadlineUnmeetable (a QueueFull), or ValueError for more than the queue can ever hold. Callers check first,
        before they spend anything on a request that would be refused (its noise, its prompt's encoding)."""
        if size > self.max_queue_images:
            raise ValueError(f'{size} images can never fit this server\'s queue of {self.max_queue_images}')
        if self.queued_images + size > self.max_queue_images:     # the memory cap: admit the whole request or none of it
            self.stats.refused += 1
            raise QueueFull(retry_after=max(1, math.ceil(self.drain.seconds_for(self.queued_images + size - self.max_queue_images))))
        if deadline_s is not None:
            estimate = self.estimated_wait(size)
            if estimate > deadline_s:
                # Retrying after x seconds, the queue is x * rate images shorter: it fits when x >= estimate - budget.
                self.stats.refused += 1
                raise DeadlineUnmeetable(estimate, deadline_s, max(1, math.ceil(estimate - deadline_s)))

    async def submit(self, inputs, deadline_s=None):
        """inputs: dict of CPU tensors with a leading batch axis; deadline_s: seconds the caller can wait (None: no
        deadline). Returns (images, queue_s, run_s)."""
        size = len(inputs['noise'])
        self.admit(size, deadline_s)
        now = time.perf_counter()
        deadline = math.inf if deadline_s is None else now + deadline_s
        loop = asyncio.get_running_loop()
        jobs = [Job({k: v[i:i + self.max_batch] for k, v in inputs.items()}, loop.create_future(), now,
                    min(self.max_batch, size - i), deadline) for i in range(0, size, self.max_batch)]
        for job in jobs:
            self.queued_images += job.size
            self.queue.put_nowait(job)
        try:
            results = await asyncio.gather(*(job.future for job in jobs))
        except BaseException:
            for job in jobs:                      # cancelled (client gone, timeout): the worker skips them
                job.future.cancel()
            raise
        if len(results) == 1:
            return results[0]
        return np.concatenate([r[0] for r in results]), max(r[1] for r in results), sum(r[2] for r in results)

    async def _run(self):
        while True:
            try:
                await self._collect_and_execute()
            except asyncio.CancelledError:
                raise
            except Exception:                     # never let the worker die silently: the next batch gets a fresh start
                self.healthy = False
                self.stats.failures += 1

    async def _next_job(self, deadline):
        """The next queued job: at once if one is waiting, else wait until `deadline`, and while a batch is still on
        the device until it is back too (the batch being formed could only wait behind it); None when none came."""
        while True:
            if not self.queue.empty():
                return self.queue.get_nowait()
            if self._idle.is_set():
                timeout = deadline - time.perf_counter()
                if timeout <= 0:
                    return None
                try:
                    return await asyncio.wait_for(self.queue.get(), timeout)
                except asyncio.TimeoutError:
                    return None
            job, idle = asyncio.ensure_future(self.queue.get()), asyncio.ensure_future(self._idle.wait())
            try:
                await asyncio.wait({job, idle}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                idle.cancel()
                if not job.done():
                    job.cancel()            # a cancelled get takes nothing off the queue
            if job.done() and not job.cancelled():
                return job.result()

    async def _collect_and_execute(self):
        """Take the first job, then everything already queued (and, with max_delay, what arrives within it) until
        max_batch images; a job that would overflow the batch is kept to start the next one (order is kept)."""
        jobs = [self._carried or await self.queue.get()]
        self._carried = None
        count = jobs[0].size
        deadline = time.perf_counter() + self.max_delay
        try:
            while count < self.max_batch:
                job = await self._next_job(deadline)
                if job is None:
                    break
                if count + job.size > self.max_batch:
                    self._carried = job
                    break
                jobs.append(job)
                count += job.size
        except asyncio.CancelledError:           # stopping: answer what was collected
            self.queued_images -= sum(job.size for job in jobs)
            _fail(jobs, BackendFailed('the server is shutting down'))
            raise
        await self._execute(jobs)

    async def _execute(self, jobs):
        self.queued_images -= sum(job.size for job in jobs)
        try:
            await self._slots.acquire()             # at most `depth` batches on the device
        except asyncio.CancelledError:
            _fail(jobs, BackendFailed('the server is shutting down'))
            raise
        live, now = [], time.perf_counter()
        for job in jobs:
            if job.future.done():                   # the client went away: don't spend the GPU on it
                continue
            if job.deadline < now:                  # too late to be of use: its client has been told so
                self.stats.expired += 1
                job.future.set_exception(DeadlineExpired(f'the deadline passed after {now - job.enqueued:.2f}s in the queue'))
                continue
            live.append(job)
        if not live:
            self._slots.release()
            return
        total, queued = sum(j.size for j in live), self.depth > 1
        self.running_images += total
        self._idle.clear()
        started = time.perf_counter()
        try:
            launched = await self.on_backend_thread(self._launch, [j.inputs for j in live], queued)
        except asyncio.CancelledError:
            self._delivered(total)
            _fail(live, BackendFailed('the server is shutting down'))
            raise
        except Exception as e:
            launched = _Failed(e)
        if not queued:                              # nothing overlaps: the next batch forms once this one is back
            await self._deliver(launched, live, total, started, queued)
            return
        task = asyncio.get_running_loop().create_task(self._deliver(launched, live, total, started, queued))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _deliver(self, launched, live, total, started, queued):
        """Wait for a batch's images (on the results thread when it was queued on a device) and hand each request its
        slice."""
        try:
            if queued:
                images, done = await asyncio.get_running_loop().run_in_executor(self._waiter, _finished, launched)
            else:
                images, done = _finished(launched)       # there already, or raises the backend's error
        except asyncio.CancelledError:
            _fail(live, BackendFailed('the server is shutting down'))
            raise
        except Exception as e:   # a backend failure fails these requests (only these) and marks the model unhealthy
            self._last_done = time.perf_counter()
            self.healthy = False
            self.stats.failures += 1
            _fail(live, BackendFailed(f'{type(e).__name__}: {e}'))
            return
        finally:
            self._delivered(total)
        # Its own time on the device, not its wait behind the one before; `done` is stamped where the images arrived
        # (the results thread), not when the busy event loop got round to this task.
        run_s = done - max(started, self._last_done)
        self._last_done = done
        self.healthy = True
        self.drain.update(total, run_s)
        self.stats.batches += 1
        self.stats.images += total
        self.stats.last_batch_size = total
        if self.on_batch:
            try:
                self.on_batch(total, run_s)
            except Exception:
                pass                                  # metrics must never fail a request
        start = 0
        for job in live:
            if not job.future.done():
                job.future.set_result((images[start:start + job.size], started - job.enqueued, done - started))
            start += job.size

    def _delivered(self, total):
        self.running_images -= total
        self._slots.release()
        if self.running_images == 0:
            self._idle.set()


def _finished(launched):
    """A launched batch's images and the moment they were there."""
    images = launched.result()
    return images, time.perf_counter()


def _fail(jobs, error):
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(error)


class _Done:
    """A batch generated in full on the backend thread (no queueing runtime)."""

    def __init__(self, images):
        self.images = images

    def result(self):
        return self.images


class _Failed:
    """A batch whose launch failed: its requests get the error when it is delivered."""

    def __init__(self, error):
        self.error = error

    def result(self):
        raise self.error
