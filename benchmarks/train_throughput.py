"""Distillation throughput, kept for old command lines: the same as `sida bench train` (train/throughput.py).

    python benchmarks/train_throughput.py --batch 128 --iters 20 --out benchmarks/results
    python benchmarks/train_throughput.py --configs fp32,bf16,bf16-compile --network demo --device cpu --batch 8 --iters 3
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sida.cli import main  # noqa: E402

if __name__ == '__main__':
    main(['bench', 'train', *sys.argv[1:]], prog_name='benchmarks/train_throughput.py')
