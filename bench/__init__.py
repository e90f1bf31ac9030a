"""`sida bench`: generation, serving and training measured the same way on every machine.

Each run writes `<out>/<device-slug>/<date>-<name>.json` (machine, code, settings, result rows) and its
PNG plots beside it; `sida bench report` rebuilds bench/README.md from every JSON file found.
The generation, teacher-vs-student and training paths import neither FastAPI nor anything else that only
the server needs: the GPU machines run them with torch, numpy, click, tqdm, matplotlib and safetensors.
"""
