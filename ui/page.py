"""The page: Gradio Blocks laid out and wired to `ui.actions`. It knows the API only through a `SidaApi`."""

import random

import gradio as gr

from ui.actions import RANDOM, Actions

EXAMPLE_PROMPTS = ['a red car', 'a ship at sea', 'a small bird on a branch', 'a horse in a field', 'a cat sleeping on a sofa']
SEED_SPAN = 2 ** 31            # randomised seeds stay short enough to read and type back
# Generated images are small (32x32 for CIFAR-10): show them big, with square pixels rather than blur; and let a
# gallery of one row be one row high (Gradio's grid keeps a 320 px minimum otherwise).
CSS = ('#sida-gallery img, #sida-walk img, #sida-walk-frame img, .sida-compare img { image-rendering: pixelated; }\n'
       '#sida-walk-frame img, .sida-compare img { width: 100%; height: 100%; object-fit: contain; }\n'
       '#sida-gallery .grid-wrap, #sida-walk .grid-wrap { min-height: 0; }')


def random_seed():
    return random.randrange(SEED_SPAN)


def build_page(api):
    """The demo as a gr.Blocks; mount it with ui.mount (in-process) or run it with `sida ui --api URL`."""
    act = Actions(api)
    # delete_cache: every 10 minutes, drop generated files older than an hour.
    with gr.Blocks(title='sida · one-step image generation', analytics_enabled=False, delete_cache=(600, 3600)) as page:
        gr.Markdown('# sida · one-step image generation\n'
                    'Each image is **one** network evaluation of a SiD/SiDA-distilled generator, so the page can keep up with '
                    'you: turn on **Live**, or scrub the **Seed walk**.')
        with gr.Row():
            model = gr.Dropdown(label='Model', choices=[], allow_custom_value=True, scale=1, elem_id='sida-model')
            class_choice = gr.Dropdown(label='Class', choices=[RANDOM], value=RANDOM, allow_custom_value=True, scale=1,
                                       elem_id='sida-class', info='"random": each seed draws its own class.')
            with gr.Column(visible=False, scale=2) as text_box:
                prompt = gr.Textbox(label='Prompt', value='', placeholder='a red car', max_lines=2, elem_id='sida-prompt')
                gr.Examples(EXAMPLE_PROMPTS, inputs=prompt, label='Example prompts')
        model_info = gr.Markdown(elem_id='sida-model-info')

        with gr.Tabs():
            with gr.Tab('Generate', id='generate'):
                with gr.Row(equal_height=True):
                    seed = gr.Number(label='Seed', value=0, precision=0, minimum=0, elem_id='sida-seed')
                    dice = gr.Button('Random seed', elem_id='sida-dice')
                    n = gr.Slider(1, 16, value=4, step=1, label='Images', elem_id='sida-n')
                    live = gr.Checkbox(label='Live: regenerate on every change', value=False, elem_id='sida-live')
                go = gr.Button('Generate', variant='primary', elem_id='sida-generate')
                gallery = gr.Gallery(label='Images', columns=8, height='auto', object_fit='contain', elem_id='sida-gallery',
                                     buttons=['download', 'fullscreen'])
                status = gr.Markdown(label='status', elem_id='sida-status')
                archive = gr.DownloadButton('Download all (zip)', elem_id='sida-zip')

            with gr.Tab('Seed walk', id='walk'):
                gr.Markdown('The noise of seed A slerped towards the noise of seed B: the path between two images.')
                with gr.Row(equal_height=True):
                    seed_a = gr.Number(label='Seed A', value=0, precision=0, minimum=0, elem_id='sida-seed-a')
                    seed_b = gr.Number(label='Seed B', value=1, precision=0, minimum=0, elem_id='sida-seed-b')
                    frames = gr.Slider(2, 16, value=8, step=1, label='Frames')
                walk_go = gr.Button('Walk', variant='primary', elem_id='sida-walk-go')
                walk_gallery = gr.Gallery(label='Frames', columns=8, height='auto', object_fit='contain', elem_id='sida-walk',
                                          buttons=['download', 'fullscreen'])
                mix = gr.Slider(0, 1, value=0.5, step=0.01, label='Mix (0 = seed A, 1 = seed B): drag to scrub', elem_id='sida-mix')
                walk_frame = gr.Image(label='Frame at mix', type='filepath', height=256, interactive=False, elem_id='sida-walk-frame')
                walk_status = gr.Markdown(label='status', elem_id='sida-walk-status')
                walk_archive = gr.DownloadButton('Download frames (zip)')

            with gr.Tab('Compare', id='compare'):
                gr.Markdown('Two models, one seed and condition.')
                with gr.Row(equal_height=True):
                    model_b = gr.Dropdown(label='Model B', choices=[], allow_custom_value=True)
                    compare_go = gr.Button('Compare on this seed', variant='primary')
                with gr.Row():
                    image_a = gr.Image(label='Model A', type='filepath', height=256, interactive=False, elem_classes='sida-compare')
                    image_b = gr.Image(label='Model B', type='filepath', height=256, interactive=False, elem_classes='sida-compare')
                compare_status = gr.Markdown(label='status', elem_id='sida-compare-status')

        with gr.Accordion('Connection', open=False) as connection_panel:
            gr.Markdown(f'API: {api.describe()}')
            api_key = gr.Textbox(label='API key (if the server asks for one)', value='', type='password')
            connection = gr.Markdown(elem_id='sida-connection')

        condition_in = [model, class_choice, prompt]
        shown = [gallery, status, archive]
        # Public endpoints (also for gradio_client): generate, walk, walk_frame, compare. The rest is page plumbing.
        go.click(act.generate, [*condition_in, seed, n, api_key], shown, api_name='generate', concurrency_limit=None)
        walk_go.click(act.walk, [*condition_in, seed_a, seed_b, frames, api_key], [walk_gallery, walk_status, walk_archive],
                      api_name='walk', concurrency_limit=None)
        # Scrubbing: each slider move asks for its frame; always_last drops the moves that a running call outpaced.
        mix.input(act.walk_frame, [*condition_in, seed_a, seed_b, mix, api_key], [walk_frame, walk_status], api_name='walk_frame',
                  trigger_mode='always_last', show_progress='hidden', concurrency_limit=None)
        compare_go.click(act.compare, [model, model_b, class_choice, prompt, seed, api_key], [image_a, image_b, compare_status],
                         api_name='compare', concurrency_limit=None)

        # Live mode: any change regenerates. One event for all triggers, so always_last keeps the newest pending change
        # while one runs, and results arrive in order.
        live_in = [live, *condition_in, seed, n, api_key]
        gr.on([model.change, class_choice.change, prompt.change, seed.change, n.change, live.change], act.live_generate, live_in,
              shown, trigger_mode='always_last', show_progress='minimal', api_visibility='private', concurrency_limit=None)
        dice.click(random_seed, None, seed, api_visibility='private')
        model.change(act.pick_model, [model, class_choice, api_key], [class_choice, text_box, model_info], api_visibility='private')
        page.load(act.load, api_key, [model, model_b, connection, connection_panel], api_visibility='private')
        api_key.submit(act.load, api_key, [model, model_b, connection, connection_panel], api_visibility='private')
    return page
