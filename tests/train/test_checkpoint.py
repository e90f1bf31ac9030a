import json

import torch

from train import checkpoint as ckpt


def _fake(tmp, value):
    (tmp / 'state' / 'progress.json').write_text(json.dumps({'value': value}))


def test_write_is_atomic_and_overwrite_keeps_the_old_until_the_swap(tmp_path):
    first = ckpt.write_checkpoint(tmp_path, 100, lambda d: _fake(d, 1))
    assert ckpt.find_latest(tmp_path) == first
    ckpt.write_checkpoint(tmp_path, 100, lambda d: _fake(d, 2))          # same name: replaced
    assert json.loads((first / 'state' / 'progress.json').read_text()) == {'value': 2}
    assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['checkpoint-000000000100']


def test_crash_debris_is_cleaned_and_a_swapped_out_checkpoint_restored(tmp_path):
    ckpt.write_checkpoint(tmp_path, 100, lambda d: _fake(d, 1))
    root = tmp_path / 'checkpoints'
    # A crash between the two renames of an overwrite: the final is aside as .old, the new one still .tmp.
    (root / 'checkpoint-000000000200').mkdir()
    (root / 'checkpoint-000000000200' / 'state').mkdir()
    _fake(root / 'checkpoint-000000000200', 'old')
    (root / 'checkpoint-000000000200').rename(root / 'checkpoint-000000000200.old')
    (root / 'checkpoint-000000000300.tmp' / 'state').mkdir(parents=True)
    ckpt.prune(root, keep_last=5)
    assert sorted(p.name for p in root.iterdir()) == ['checkpoint-000000000100', 'checkpoint-000000000200']
    assert ckpt.find_latest(tmp_path).name == 'checkpoint-000000000200'


def test_optimizer_state_round_trip_without_pickle(tmp_path):
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.Adam([p], lr=1e-3, betas=(0.0, 0.999))
    p.grad = torch.ones(3)
    opt.step()
    ckpt.save_optimizer(tmp_path / 'opt.safetensors', opt)
    q = torch.nn.Parameter(p.detach().clone())
    other = torch.optim.Adam([q], lr=5.0)
    ckpt.load_optimizer(tmp_path / 'opt.safetensors', other)
    assert other.param_groups[0]['lr'] == 1e-3 and other.param_groups[0]['betas'] == (0.0, 0.999)
    assert torch.equal(other.state[q]['exp_avg'], opt.state[p]['exp_avg'])


def test_resume_keeps_this_machines_optimizer_kernel_and_the_checkpoints_hyperparameters(tmp_path):
    p = torch.nn.Parameter(torch.randn(4))
    saved = torch.optim.Adam([p], lr=1e-3, betas=(0.0, 0.999))     # e.g. written on CPU or by an older version
    p.grad = torch.ones(4)
    saved.step()
    ckpt.save_optimizer(tmp_path / 'opt.safetensors', saved)
    resumed = torch.optim.Adam([p], lr=5.0, betas=(0.9, 0.9), fused=True)
    ignored = ckpt.load_optimizer(tmp_path / 'opt.safetensors', resumed)
    group = resumed.param_groups[0]
    assert group['fused'] is True and group['lr'] == 1e-3 and group['betas'] == (0.0, 0.999)
    assert ignored == ['lr 0.001 kept, not 5.0', 'betas (0.0, 0.999) kept, not (0.9, 0.9)']    # said, not silent
    assert ckpt.load_optimizer(tmp_path / 'opt.safetensors', resumed, scheduled=('lr', 'betas')) == []
    torch.testing.assert_close(resumed.state[p]['exp_avg_sq'], saved.state[p]['exp_avg_sq'])
