"""What the page's events do: call the API, keep its bytes as files, and say what happened and how long it took.

Each action returns values for its outputs; an API failure becomes a toast (gr.Warning) plus an error line in
the page, with the other outputs left as they were (gr.skip()).
"""

import asyncio
import time

import gradio as gr

from ui import files
from ui.client import ApiError

RANDOM = 'random'
LIVE_DEBOUNCE_S = 0.3      # live mode waits this long, so a burst of keystrokes or slider steps becomes one call


def condition(info, class_choice, prompt):
    """The request's condition fields for this model: class name (or none: random per seed), prompt, or nothing."""
    kind = info['condition']['kind']
    if kind == 'class':
        return {} if not class_choice or class_choice == RANDOM else {'class_name': class_choice}
    if kind == 'text':
        return {'prompt': prompt or ''}      # empty: the API answers "give a prompt", shown as such
    return {}


def seed_value(seed):
    return None if seed is None or seed == '' else int(seed)


def caption(p):
    what = p.item.get('class_name') or p.item.get('prompt') or ''
    return f'seed {p.item["seed"]}' + (f' · {what}' if what else '')


def timing_line(info, gen, count, round_trip_ms=None):
    """Backend and latency, the point of a one-step generator: the server's own time and the round trip seen here."""
    rt = gen.round_trip_ms if round_trip_ms is None else round_trip_ms
    return (f'**{gen.model}** · backend `{gen.backend}` on {info.get("device", "?")} ({info.get("precision", "?")}) · {count} · '
            f'server **{gen.server_ms:.1f} ms** (queue {gen.queue_ms:.1f}, generate {gen.generate_ms:.1f}) · '
            f'round trip **{rt:.1f} ms**')


def failed(error, before=0, after=0):
    """A readable failure: a toast, and an error line in the status output at position `before`; the rest unchanged."""
    gr.Warning(str(error))
    return (gr.skip(),) * before + (f'**Error:** {error}',) + (gr.skip(),) * after


def describe_model(info):
    c = info['condition']
    kind = {'class': f'class-conditioned ({len(c["labels"])} classes)', 'text': 'text-conditioned', 'none': 'unconditional'}[c['kind']]
    warm = 'warm' if info.get('warm') else 'cold'
    return (f'{info["resolution"]}×{info["resolution"]} · {kind} · backend `{info["backend"]}` on {info["device"]} '
            f'({info["precision"]}, {warm})')


class Actions:
    def __init__(self, api):
        self.api = api

    async def load(self, api_key):
        """Page load (and a new API key): the model list for both pickers; on failure, open the connection panel."""
        try:
            ids = [m['id'] for m in await self.api.models(api_key or None)]
        except ApiError as e:
            return failed(e, before=2) + (gr.update(open=True),)
        second = ids[1] if len(ids) > 1 else ids[0]
        return (gr.update(choices=ids, value=ids[0]), gr.update(choices=ids, value=second),
                f'{len(ids)} model(s) at {self.api.describe()}', gr.skip())

    async def pick_model(self, model, class_choice, api_key):
        """Show the condition input this model takes: a class dropdown (by name) or a prompt box."""
        try:
            info = await self.api.model(model, api_key or None)
        except ApiError as e:
            return failed(e, before=2)
        labels = info['condition']['labels']
        kind = info['condition']['kind']
        keep = class_choice if class_choice in labels else RANDOM
        return (gr.update(choices=[RANDOM, *labels], value=keep, visible=kind == 'class'), gr.update(visible=kind == 'text'),
                describe_model(info))

    async def generate(self, model, class_choice, prompt, seed, n, api_key=''):
        """n images from seed, seed + 1, ...: a gallery, a timing line and a zip of the exact PNGs."""
        try:
            info = await self.api.model(model, api_key or None)
            gen = await self.api.generate(api_key or None, model=model, n=int(n), seed=seed_value(seed),
                                          **condition(info, class_choice, prompt))
        except ApiError as e:
            return failed(e, before=1, after=1)
        paths = files.save_pictures(gen.model, gen.pictures)
        gallery = [(path, caption(p)) for path, p in zip(paths, gen.pictures)]
        archive = files.save_zip(gen.model, gen.pictures, f'{gen.model}-seed{gen.pictures[0].item["seed"]}-x{len(paths)}.zip')
        return gallery, timing_line(info, gen, f'{len(paths)} image' + ('s' if len(paths) > 1 else '')), archive

    async def live_generate(self, live, model, class_choice, prompt, seed, n, api_key=''):
        if not live:
            return gr.skip(), gr.skip(), gr.skip()
        await asyncio.sleep(LIVE_DEBOUNCE_S)
        return await self.generate(model, class_choice, prompt, seed, n, api_key)

    async def walk(self, model, class_choice, prompt, seed_a, seed_b, frames, api_key=''):
        """A seed walk: `frames` images whose noise slerps from seed_a's to seed_b's, requested together (one batch)."""
        frames = max(2, int(frames))
        try:
            info = await self.api.model(model, api_key or None)
            common = {'model': model, 'n': 1, 'seed': seed_value(seed_a) or 0, 'seed_b': seed_value(seed_b) or 0,
                      **condition(info, class_choice, prompt)}
            started = time.perf_counter()
            gens = await self.api.generate_many([{**common, 'mix': i / (frames - 1)} for i in range(frames)], api_key or None)
            round_trip = 1000 * (time.perf_counter() - started)
        except ApiError as e:
            return failed(e, before=1, after=1)
        pictures = [g.pictures[0] for g in gens]
        paths = files.save_pictures(model, pictures)
        gallery = [(path, f'mix {p.item["mix"]:.2f}') for path, p in zip(paths, pictures)]
        slowest = max(gens, key=lambda g: g.server_ms)
        archive = files.save_zip(model, pictures, f'{model}-walk-{common["seed"]}-to-{common["seed_b"]}.zip')
        return gallery, timing_line(info, slowest, f'{frames} frames (slowest shown)', round_trip) + ' for all frames', archive

    async def walk_frame(self, model, class_choice, prompt, seed_a, seed_b, mix, api_key=''):
        """The one frame at the slider's mix, for scrubbing along the walk."""
        try:
            info = await self.api.model(model, api_key or None)
            gen = await self.api.generate(api_key or None, model=model, n=1, seed=seed_value(seed_a) or 0,
                                          seed_b=seed_value(seed_b) or 0, mix=float(mix), **condition(info, class_choice, prompt))
        except ApiError as e:
            return failed(e, before=1)
        return files.save_pictures(gen.model, gen.pictures)[0], timing_line(info, gen, f'mix {float(mix):.2f}')

    async def compare(self, model_a, model_b, class_choice, prompt, seed, api_key=''):
        """Two models on the same seed and condition, side by side (each gets the condition it can take)."""
        try:
            infos = [await self.api.model(m, api_key or None) for m in (model_a, model_b)]
            seed = seed_value(seed) or 0
            # A class the other model lacks would only fail: that side draws its class from the seed instead.
            gens = await self.api.generate_many([{'model': info['id'], 'n': 1, 'seed': seed, **condition(
                info, class_choice if class_choice in info['condition']['labels'] else RANDOM, prompt)} for info in infos],
                api_key or None)
        except ApiError as e:
            return failed(e, before=2)
        paths = [files.save_pictures(g.model, g.pictures)[0] for g in gens]
        lines = [timing_line(info, g, caption(g.pictures[0])) for info, g in zip(infos, gens)]
        return paths[0], paths[1], '  \n'.join(lines)
