"""The batcher's pipelining (a GPU backend queues a batch and returns; the next is prepared while it runs), driven by a
real torch backend whose queued batches finish when the test says so: which batches are launched while others are
still on the device, and that every request still gets its own images."""

import asyncio
import threading
import time

import numpy as np
import pytest
import torch

from export.compiled import CompileOptions
from models.bundle import load_bundle
from models.seeds import noise_for_seeds
from serve.backends import CompiledBackend, TorchBackend
from serve.batcher import BackendFailed, MicroBatcher
from tests.bench.conftest import make_bundle


class Held:
    """A launched batch whose images are computed at launch but handed over only once released."""

    def __init__(self, images, error=None):
        self.images, self.error, self.released = images, error, threading.Event()

    def result(self):
        assert self.released.wait(60), 'never released'
        if self.error:
            raise self.error
        return self.images


class QueueingBackend:
    """The real CPU torch backend, seen by the batcher as one that queues batches on a device (a GPU's behaviour)."""

    pipelined = True

    def __init__(self, backend):
        self.backend, self.launched, self.fail_next, self.hold = backend, [], False, True

    def launch(self, inputs):
        error, self.fail_next = (RuntimeError('CUDA error: an illegal memory access (injected)') if self.fail_next else None), False
        held = Held(self.backend.generate(inputs), error)
        if not self.hold:
            held.released.set()
        self.launched.append((len(inputs['noise']), held))
        return held


@pytest.fixture(scope='module')
def torch_backend(tmp_path_factory):
    return TorchBackend(load_bundle(make_bundle(tmp_path_factory.mktemp('pipeline') / 'tiny')))


def inputs_for(seeds):
    return {'noise': noise_for_seeds(seeds, (3, 16, 16)), 'class_labels': torch.tensor([s % 10 for s in seeds])}


async def until(condition, seconds=60):
    """Let the batcher run until `condition` holds (a launch runs the real model: slow on a loaded CI machine)."""
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError('timed out')


async def meanwhile(seconds=0.3):
    """Give the batcher time to do what it must not (a launch it should hold back)."""
    await asyncio.sleep(seconds)


def test_full_batches_overlap_partial_ones_wait_and_every_request_gets_its_images(torch_backend):
    queueing = QueueingBackend(torch_backend)

    async def scenario():
        batcher = MicroBatcher(queueing, max_batch=4, max_queue_images=64, depth=2)
        batcher.start()
        submit = lambda seeds: asyncio.ensure_future(batcher.submit(inputs_for(seeds)))   # noqa: E731
        a = submit(range(0, 4))
        await until(lambda: len(queueing.launched) == 1)
        assert [n for n, _ in queueing.launched] == [4]
        c = submit(range(10, 12))                      # a partial batch, with one on the device: it waits for more
        await meanwhile()
        assert len(queueing.launched) == 1 and batcher.running_images == 4 and batcher.queued_images == 2
        d = submit(range(20, 22))                      # now full: launched while the first is still out
        await until(lambda: len(queueing.launched) == 2)
        assert [n for n, _ in queueing.launched] == [4, 4] and not a.done()
        e = submit(range(30, 34))                      # full, but two batches are out (depth 2): it waits
        await meanwhile()
        assert len(queueing.launched) == 2 and batcher.running_images == 8
        queueing.launched[0][1].released.set()
        await until(lambda: len(queueing.launched) == 3)
        assert a.done() and not c.done() and [n for n, _ in queueing.launched] == [4, 4, 4]
        queueing.hold = False
        for _, held in queueing.launched:
            held.released.set()
        f = submit(range(40, 41))                      # nothing out any more: a lone image goes at once
        results = await asyncio.wait_for(asyncio.gather(a, c, d, e, f), 60)
        assert [n for n, _ in queueing.launched] == [4, 4, 4, 1]
        assert batcher.running_images == 0 and batcher._idle.is_set() and batcher.stats.batches == 4
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    for (images, _, _), seeds in zip(results, [range(0, 4), range(10, 12), range(20, 22), range(30, 34), range(40, 41)]):
        np.testing.assert_array_equal(images, torch_backend.generate(inputs_for(seeds)))


def test_a_batch_that_fails_on_the_device_fails_only_its_requests(torch_backend):
    queueing = QueueingBackend(torch_backend)

    async def scenario():
        batcher = MicroBatcher(queueing, max_batch=2, max_queue_images=64, depth=2)
        batcher.start()
        queueing.fail_next = True
        first = asyncio.ensure_future(batcher.submit(inputs_for([0, 1])))
        await until(lambda: len(queueing.launched) == 1)
        second = asyncio.ensure_future(batcher.submit(inputs_for([2, 3])))
        await until(lambda: len(queueing.launched) == 2)
        for _, held in queueing.launched:
            held.released.set()
        with pytest.raises(BackendFailed, match='illegal memory access'):
            await asyncio.wait_for(first, 60)
        images, _, _ = await asyncio.wait_for(second, 60)
        assert batcher.healthy and batcher.stats.failures == 1 and batcher.running_images == 0
        await batcher.stop()
        return images

    np.testing.assert_array_equal(asyncio.run(scenario()), torch_backend.generate(inputs_for([2, 3])))


def test_stopping_with_batches_out_answers_every_request(torch_backend):
    """Two batches out, a third waiting for a slot and a fourth job kept to start the batch after it: stopping delivers
    the two and fails the others with a reason; nothing is left hanging."""
    queueing = QueueingBackend(torch_backend)

    async def scenario():
        batcher = MicroBatcher(queueing, max_batch=4, max_queue_images=64, depth=2)
        batcher.start()
        submit = lambda seeds: asyncio.ensure_future(batcher.submit(inputs_for(seeds)))   # noqa: E731
        out = [submit(range(0, 4)), submit(range(4, 8))]
        await until(lambda: len(queueing.launched) == 2)
        waiting = [submit(range(8, 11)), submit(range(11, 14))]     # 3 + 3 > 4: the second starts the next batch
        await meanwhile()
        assert batcher._carried is not None and len(queueing.launched) == 2
        asyncio.get_running_loop().call_later(0.2, lambda: [held.released.set() for _, held in queueing.launched])
        await batcher.stop()
        results = await asyncio.wait_for(asyncio.gather(*out, *waiting, return_exceptions=True), 60)
        assert batcher.queued_images == 0 and batcher.running_images == 0
        return results

    first, second, third, fourth = asyncio.run(scenario())
    assert first[0].shape == second[0].shape == (4, 16, 16, 3)
    for error in (third, fourth):
        assert isinstance(error, BackendFailed) and 'shutting down' in str(error)


def test_the_drain_rate_is_the_devices_even_when_the_loop_is_late(torch_backend):
    """A device that takes 50 ms a batch, one batch after another, and an event loop that is mostly busy elsewhere, so
    deliveries resume back to back: the measured rate (which admission and replica choice rely on) stays within what
    the device can do (4 images / 50 ms) and near what was achieved, not the thousands a batch timed from the loop's
    late wake-ups would give."""
    queueing, device_s = QueueingBackend(torch_backend), 0.05
    queueing.hold = True

    def device():                       # a serial GPU: each launched batch done 50 ms after the one before
        done = 0
        while done < 8:
            if len(queueing.launched) > done:
                time.sleep(device_s)
                queueing.launched[done][1].released.set()
                done += 1
            else:
                time.sleep(0.001)

    async def scenario():
        batcher = MicroBatcher(queueing, max_batch=4, max_queue_images=64, depth=2)
        batcher.start()
        worker = threading.Thread(target=device, daemon=True)
        worker.start()
        started = time.perf_counter()
        requests = [asyncio.ensure_future(batcher.submit(inputs_for(range(4 * i, 4 * i + 4)))) for i in range(8)]
        while not all(r.done() for r in requests):
            time.sleep(0.12)            # the loop busy elsewhere (blocking on purpose)
            await asyncio.sleep(0.01)
        achieved = 32 / (time.perf_counter() - started)
        await asyncio.gather(*requests)
        await batcher.stop()
        worker.join(10)
        return batcher.drain.images_per_s, achieved

    rate, achieved = asyncio.run(scenario())
    assert 0.5 * achieved < rate < 1.25 * 4 / device_s, (rate, achieved)


def test_a_late_time_stamp_does_not_inflate_the_drain_rate():
    """4 images every 50 ms (80 images/s), one batch's end stamped 45 ms late: that batch reads 95 ms and the next 5
    ms. The rate stays near 80/s; an average of per-batch rates would jump (4 images / 5 ms is 800/s)."""
    from serve.batcher import DrainRate
    drain = DrainRate()
    for seconds in [0.05] * 5 + [0.095, 0.005] + [0.05] * 2:
        drain.update(4, seconds)
        assert 60 < drain.images_per_s < 100, drain.images_per_s
    for seconds in (0.1, -0.05):        # two batches delivered out of order: the later one spans both, the other
        drain.update(4, seconds)        # is negative, counted as no time
        assert 60 < drain.images_per_s < 100, drain.images_per_s


def test_a_backend_that_does_not_queue_runs_one_batch_at_a_time(torch_backend):
    """The CPU torch backend generates in full on its thread: depth 1 whatever is asked, so nothing changes there."""
    assert not torch_backend.pipelined and MicroBatcher(torch_backend, depth=2).depth == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU: pinned-memory copies and CUDA graphs')
@pytest.mark.parametrize('spec', ['reduce-overhead+channels-last', 'default+whole-graph'])
def test_batches_queued_back_to_back_on_the_gpu_keep_their_images(tmp_path, spec):
    """Two batches of one bucket queued before either is read: the second graph replay must not overwrite the first's
    images (they are copied out behind it on the same stream), and both equal what one call at a time gives."""
    bundle = load_bundle(make_bundle(tmp_path / 'tiny'))
    backend = CompiledBackend(bundle, device='cuda', buckets=(4,), options=CompileOptions.parse(spec))
    backend.warmup()
    one, two = inputs_for(range(0, 4)), inputs_for(range(4, 8))
    first, second = backend.launch(one), backend.launch(two)
    np.testing.assert_array_equal(second.result(), backend.generate(two))
    np.testing.assert_array_equal(first.result(), backend.generate(one))
