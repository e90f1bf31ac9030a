"""What the loops draw each step: this rank's real images (or none) and the matching condition."""

import torch

from train.data import to_model_range
from train.distill import Batch


def one_hot(labels, label_dim):
    return torch.nn.functional.one_hot(labels, label_dim).float()


class ImageBatches:
    """Real images in [-1,1] with their condition: one-hot labels, caption embeddings, or nothing."""

    def __init__(self, stream, device, label_dim=0, text_table=None):
        self.stream, self.device, self.label_dim, self.text_table = stream, device, label_dim, text_table

    @property
    def draws(self):
        return self.stream.draws

    @draws.setter
    def draws(self, value):
        self.stream.draws = value
        self.stream._loader = None

    def next(self):
        images, labels, index = self.stream.next()
        real = to_model_range(images.to(self.device, non_blocking=True))
        cond = {}
        if self.label_dim:
            cond['class_labels'] = one_hot(labels.to(self.device), self.label_dim)
        if self.text_table is not None:
            cond['text_embeds'] = self.text_table.lookup(index).to(self.device)
        return Batch(real, cond)


def rank_share_of_draw(n, global_batch, seed, draw, rank, world):
    """This rank's slice of a seeded draw of `global_batch` indices in [0, n): the same global draw on every rank."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + draw)
    index = torch.randint(n, (global_batch,), generator=g)
    per_rank = global_batch // world
    return index[rank * per_rank:(rank + 1) * per_rank]


class LabelBatches:
    """Data-free SiD without a data set: uniform class labels (or none), a pure function of (seed, draw)."""

    def __init__(self, label_dim, global_batch, seed, rank, world, device):
        self.label_dim, self.global_batch, self.seed = label_dim, global_batch, seed
        self.rank, self.world, self.device, self.draws = rank, world, device, 0

    def next(self):
        cond = {}
        if self.label_dim:
            labels = rank_share_of_draw(self.label_dim, self.global_batch, self.seed, self.draws, self.rank, self.world)
            cond['class_labels'] = one_hot(labels, self.label_dim).to(self.device)
        self.draws += 1
        return Batch(None, cond)


class PromptBatches:
    """Data-free prompts (SiD-LSG): a seeded draw of prompt indices per step, encoded on the fly."""

    def __init__(self, prompts, encoder, global_batch, seed, rank, world, device):
        if not prompts:
            raise ValueError('no prompts to distil on')
        self.prompts, self.encoder, self.global_batch, self.seed = list(prompts), encoder, global_batch, seed
        self.rank, self.world, self.device, self.draws = rank, world, device, 0

    def next(self):
        mine = rank_share_of_draw(len(self.prompts), self.global_batch, self.seed, self.draws, self.rank, self.world).tolist()
        self.draws += 1
        return Batch(None, {'text_embeds': self.encoder.encode([self.prompts[i] for i in mine]).to(self.device)})


class CaptionTable:
    """Every distinct caption of a data set encoded once; batches look rows up by example index."""

    def __init__(self, captions, encoder):
        unique = sorted(set(captions))
        row = {c: i for i, c in enumerate(unique)}
        self.rows = torch.tensor([row[c] for c in captions])
        self.table = torch.cat([encoder.encode(unique[i:i + 256]) for i in range(0, len(unique), 256)])

    def lookup(self, index):
        return self.table[self.rows[torch.as_tensor(index)]]
