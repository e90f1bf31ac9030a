import copy
import re

import pytest
import torch

from models.architecture import adm, build_denoiser, ddpmpp, ncsnpp
from tests.conftest import perturb_, tiny_adm, tiny_ddpmpp, tiny_ncsnpp


def _inputs(spec, n=2):
    kw = spec['network_kwargs']
    res, ch = kw['img_resolution'], kw['in_channels']
    x = torch.randn(n, ch, res, res)
    sigma = torch.linspace(0.1, 20, n)
    labels = torch.nn.functional.one_hot(torch.arange(n) % kw['label_dim'], kw['label_dim']).float() if kw.get('label_dim') else None
    return x, sigma, labels


@pytest.mark.parametrize('make', [tiny_ddpmpp, tiny_ncsnpp, tiny_adm,
                                  lambda: tiny_ddpmpp(channels=1, label_dim=0, augment_dim=0),
                                  lambda: tiny_ncsnpp(channel_mult=(1, 2, 2))])
def test_denoiser_shapes_and_dtype(make):
    spec = make()
    net = build_denoiser(spec).eval()
    x, sigma, labels = _inputs(spec)
    d = net(x, sigma, labels)
    assert d.shape == x.shape and d.dtype == torch.float32
    assert torch.isfinite(d).all()


def test_skip_encoder_and_decoder_variants_run():
    spec = tiny_ddpmpp(channel_mult=(1, 2, 2))
    spec['network_kwargs'].update(encoder_type='skip', decoder_type='skip')
    net = build_denoiser(spec).eval()
    x, sigma, labels = _inputs(spec)
    assert net(x, sigma, labels).shape == x.shape


@pytest.mark.parametrize('make', [tiny_ddpmpp, tiny_adm])
def test_bottleneck_matches_the_full_pass_and_skips_the_decoder(make):
    spec = make()
    net = perturb_(build_denoiser(spec)).eval()
    x, sigma, labels = _inputs(spec)
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in net.model.dec.values()]
    feat = net(x, sigma, labels, output='bottleneck')
    assert calls == [], 'encoder-only mode must not run the decoder'
    for h in hooks:
        h.remove()
    d_both, feat_both = net(x, sigma, labels, output='both')
    torch.testing.assert_close(feat, feat_both)
    torch.testing.assert_close(d_both, net(x, sigma, labels))
    res = spec['network_kwargs']['img_resolution'] >> (len(spec['network_kwargs']['channel_mult']) - 1)
    assert feat.shape[0] == x.shape[0] and feat.shape[2:] == (res, res)


def test_cifar10_ddpmpp_bottleneck_is_8x8():
    spec = ddpmpp(label_dim=10, model_channels=16)   # CIFAR-10 layout, narrower channels to stay fast
    net = build_denoiser(spec).eval()
    feat = net(torch.randn(2, 3, 32, 32), torch.tensor([1.0, 2.0]), output='bottleneck')
    assert feat.mean(dim=1, keepdim=True).shape == (2, 1, 8, 8)


def test_text_conditioning_uses_tokens_and_masks_padding():
    spec = tiny_ddpmpp(label_dim=0, text_dim=24)
    net = perturb_(build_denoiser(spec), scale=0.1).eval()
    x, sigma, _ = _inputs(spec)
    text = torch.randn(2, 1 + 5, 24)
    text[:, 4:] = 0                                   # rows 4..5 are padding
    d = net(x, sigma, text_embeds=text)
    longer = torch.cat([text, torch.zeros(2, 7, 24)], dim=1)
    torch.testing.assert_close(net(x, sigma, text_embeds=longer), d)   # more padding, same result
    other = text.clone()
    other[:, 1] += 1.0                                # change one real token
    assert (net(x, sigma, text_embeds=other) - d).abs().max() > 1e-4
    assert torch.isfinite(net(x, sigma, text_embeds=torch.zeros_like(text))).all()  # all padding: null token


def test_text_dropout_zeroes_the_whole_condition_in_training():
    spec = tiny_ddpmpp(label_dim=0, text_dim=8)
    spec['network_kwargs']['label_dropout'] = 1.0
    net = perturb_(build_denoiser(spec))
    x, sigma, _ = _inputs(spec)
    text = torch.randn(2, 4, 8)
    net.train()
    dropped = net(x, sigma, text_embeds=text)
    net.eval()
    torch.testing.assert_close(dropped, net(x, sigma, text_embeds=torch.zeros_like(text)))


def test_bf16_autocast_runs():
    spec = tiny_ddpmpp()
    net = build_denoiser(spec).eval()
    x, sigma, labels = _inputs(spec)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        d = net(x, sigma, labels)
    assert d.dtype == torch.float32 and torch.isfinite(d).all()


def _count(spec):
    with torch.device('meta'):
        return sum(p.numel() for p in build_denoiser(spec).parameters())


def test_published_parameter_counts():
    # EDM (Karras et al. 2022) reports 56M for DDPM++/NCSN++ on CIFAR-10 and 296M for ADM on ImageNet-64.
    assert round(_count(ddpmpp(label_dim=10)) / 1e6, 1) == 55.7
    assert round(_count(ncsnpp(label_dim=10)) / 1e6) == 56
    assert round(_count(adm()) / 1e6, 1) == 295.9


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('masked', [False, True])
def test_attention_matches_softmax_formula_in_float32_and_bf16(dtype, masked):
    from models.layers import attention
    torch.manual_seed(0)
    q, k, v = (torch.randn(6, 16, n) for n in (10, 7, 7))        # [batch*heads, channels, length]
    mask = (torch.rand(6, 1, 7) > 0.4) if masked else None
    if masked:
        mask[:, :, 0] = True                                      # every query keeps at least one key
    logits = torch.einsum('bcq,bck->bqk', q, k) / 16 ** 0.5
    if masked:
        logits = logits.masked_fill(~mask, float('-inf'))
    expected = torch.einsum('bqk,bck->bcq', logits.softmax(-1), v)
    out = attention(q.to(dtype), k.to(dtype), v.to(dtype), mask)
    assert out.dtype == dtype and out.shape == expected.shape
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out.float(), expected, atol=tol, rtol=tol)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('kw', [dict(kernel=3, up=True), dict(kernel=3, down=True), dict(kernel=0, up=True), dict(kernel=0, down=True),
                                dict(kernel=1, down=True), dict(kernel=3, up=True, fused_resample=True),
                                dict(kernel=3, down=True, fused_resample=True)])
def test_box_resampling_equals_the_depthwise_filter_exactly(kw, dtype):
    """The [1,1] filter runs as avg-pool / nearest upsampling (fast, compile-friendly); EDM's FIR convolution must agree."""
    from models.layers import Conv2d
    torch.manual_seed(0)
    conv = Conv2d(8, 8 if kw['kernel'] == 0 else 16, init_bias=0.1, **kw)
    x = torch.randn(2, 8, 8, 8).to(dtype)
    assert conv.box
    fast = conv(x)
    conv.box = False                      # EDM's depthwise (transposed) convolution with the filter buffer
    reference = conv(x)
    assert fast.shape == reference.shape == (2, conv.out_channels, 16 if kw.get('up') else 4, 16 if kw.get('up') else 4)
    assert torch.equal(fast, reference)
    assert not Conv2d(8, 8, kernel=0, down=True, resample_filter=(1, 3, 3, 1)).box      # NCSN++ keeps its FIR filter


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('channels_last', [False, True])
def test_group_norm_as_a_grouped_view_matches_the_native_kernel(dtype, channels_last):
    """The compiled generator's GroupNorm (a view [N, G, C/G, H, W] of its input) computes what group_norm does."""
    from models.layers import GroupNorm, _norm_grouped_view
    torch.manual_seed(0)
    norm = perturb_(GroupNorm(64), scale=0.5)
    x = (torch.randn(3, 64, 8, 6) * 3 + 1).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w, b = norm.weight.detach().to(dtype), norm.bias.detach().to(dtype)
    out = _norm_grouped_view(x, norm.num_groups, w, b, norm.eps)
    expected = torch.nn.functional.group_norm(x.float(), norm.num_groups, w.float(), b.float(), norm.eps)
    assert out.dtype == dtype and out.shape == x.shape
    tol = 1e-5 if dtype == torch.float32 else 1e-2           # bf16: the same float32 result, rounded once
    torch.testing.assert_close(out.float(), expected, atol=tol, rtol=tol)


def test_group_norm_takes_the_grouped_view_only_when_compiled_and_asked_to():
    from models.layers import GroupNorm
    graphs = []

    def capture(gm, example_inputs):
        graphs.append({str(node.target) for node in gm.graph.nodes})
        return gm.forward

    norm, x = GroupNorm(32), torch.randn(2, 32, 4, 4)
    for grouped in (True, False):
        norm.grouped_view_when_compiled = grouped
        torch._dynamo.reset()
        torch.compile(norm, backend=capture, fullgraph=True)(x)
        assert any('group_norm' in target for target in graphs[-1]) is not grouped
        assert any('var_mean' in target for target in graphs[-1]) is grouped
    norm.grouped_view_when_compiled = True
    assert torch.equal(norm(x), torch.nn.functional.group_norm(x, 8, norm.weight, norm.bias, norm.eps))   # eager: native


@pytest.mark.parametrize('make', [tiny_ddpmpp, tiny_ncsnpp, tiny_adm])
def test_fused_affines_give_the_same_denoiser_and_leave_the_state_dict_alone(make):
    from models.layers import UNetBlock, fuse_affines
    spec = make()
    net = perturb_(build_denoiser(spec)).eval()
    x, sigma, labels = _inputs(spec)
    keys = list(net.state_dict())
    with torch.no_grad():
        expected = net(x, sigma, labels)
        fuse_affines(net.model)
        out = net(x, sigma, labels)
    blocks = [m for m in net.model.modules() if isinstance(m, UNetBlock)]
    assert net.model.fused_affines.weight.shape[0] == sum(b.affine.out_features for b in blocks) > 0
    assert list(net.state_dict()) == keys
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('make', [tiny_ddpmpp, tiny_adm])
def test_channels_last_concat_compiles_to_the_same_denoiser(make):
    """The channels-last-cat switch: the decoder's concats get inductor's layout op on their inputs and their result
    (only when compiling NHWC inputs), and the compiled denoiser computes what the eager one does."""
    import torch._inductor.inductor_prims  # noqa: F401
    from torch._inductor.utils import run_and_get_code
    spec = make()
    net = perturb_(build_denoiser(spec)).eval().to(memory_format=torch.channels_last)
    x, sigma, labels = _inputs(spec)
    with torch.no_grad():
        expected = net(x, sigma, labels)
        net.model.channels_last_cat = True
        assert torch.equal(net(x, sigma, labels), expected)                   # eager: a plain torch.cat
        nodes = []

        def capture(gm, example_inputs):
            nodes.extend(gm.graph.nodes)
            return gm.forward
        torch._dynamo.reset()
        torch.compile(net, backend=capture, fullgraph=True)(x, sigma, labels)

        def forced(node):
            return 'inductor_force_stride_order' in str(node.target)
        skip_cats = [n for n in nodes if 'method cat' in str(n.target) and all(forced(a) for a in n.args[0])]
        assert skip_cats and all(any(forced(user) for user in n.users) for n in skip_cats)   # inputs and result
        torch._dynamo.reset()
        compiled, code = run_and_get_code(torch.compile(net, options={'force_layout_optimization': True}, fullgraph=True),
                                          x, sigma, labels)
    torch.testing.assert_close(compiled, expected, atol=1e-4, rtol=1e-4)
    if make is not tiny_ddpmpp:         # ADM's attention lays its qkv out NCHW on purpose (heads x channels)
        return
    # No DDPM++ activation is laid out NCHW any more (without the switch the decoder's concats are, inductor's choice).
    # This is the CPU lowering; on CUDA inductor also computed the concat as a pointwise kernel into an NCHW buffer
    # when only the inputs were fixed (H100, 2026-12-07), which the check on the graph above covers.
    buffers = re.findall(r'empty_strided_cpu\(\((\d+), (\d+), (\d+), (\d+)\), \((\d+), (\d+), (\d+), (\d+)\)', '\n'.join(code))
    # [N,C,H,W] activations, not the 3-channel image the denoiser returns
    features = [tuple(map(int, b)) for b in buffers if b[0] == str(len(x)) and b[2] == b[3] and int(b[2]) >= 4 and int(b[1]) > 4]
    assert features and not [b for b in features if b[5] > 1]            # the channel stride is 1 in every one of them


@pytest.mark.parametrize('make', [tiny_ddpmpp, tiny_ncsnpp, tiny_adm])
def test_split_skip_and_planar_qkv_give_the_same_denoiser_and_leave_the_state_dict_alone(make):
    """split-skip (decoder blocks take (x, skip) apart, the skip convolved per part) and planar-qkv (the qkv projection
    reordered so q, k, v are views) compute what the plain network does, in eager and compiled (inductor, CPU)."""
    from models.layers import UNetBlock
    spec = make()
    net = perturb_(build_denoiser(spec)).eval().to(memory_format=torch.channels_last)
    x, sigma, labels = _inputs(spec)
    keys = list(net.state_dict())
    attending = [b for b in net.model.modules() if isinstance(b, UNetBlock) and b.num_heads]
    assert attending
    with torch.no_grad():
        expected = net(x, sigma, labels)
        net.model.split_skip_from = 1
        for block in attending:
            block.plan_qkv()
        split = {}
        for name, block in net.model.dec.items():       # the blocks that get (x, skip) see a tuple
            if isinstance(block, UNetBlock):
                block.register_forward_pre_hook(lambda m, args, name=name: split.__setitem__(name, isinstance(args[0], tuple)))
        out = net(x, sigma, labels)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        assert any(split.values()) and not all(split.values())      # concat blocks split; up and same-width blocks not
        assert list(net.state_dict()) == keys
        torch._dynamo.reset()
        compiled = torch.compile(net, options={'force_layout_optimization': True, 'force_pointwise_cat': True},
                                 fullgraph=True)(x, sigma, labels)
    torch.testing.assert_close(compiled, expected, atol=1e-4, rtol=1e-4)


def test_planar_qkv_hands_the_attention_views_of_one_projection(monkeypatch):
    """With planar-qkv the traced graph feeds scaled_dot_product_attention slices of the qkv convolution's output (no
    contiguous copies in between); in EDM's order, and below the batch planar-qkv starts at, the inputs are made
    contiguous first."""
    import export.compiled
    from export.compiled import CompileOptions, prepare_denoiser
    spec = tiny_ddpmpp()
    x, sigma, labels = _inputs(spec)

    def copies_before_attention(spec_text):
        net = prepare_denoiser(build_denoiser(spec).eval(), 'bf16', CompileOptions.parse(spec_text))
        nodes = []

        def capture(gm, example_inputs):
            nodes.extend(gm.graph.nodes)
            return gm.forward
        torch._dynamo.reset()
        with torch.no_grad():
            torch.compile(net, backend=capture, fullgraph=True)(x.to(memory_format=torch.channels_last), sigma, labels)
        sdpa = [n for n in nodes if 'scaled_dot_product_attention' in str(n.target)]
        assert sdpa

        def copied(node, depth=0):       # a contiguous/clone on the way back to the qkv convolution
            if depth > 8 or not hasattr(node, 'target'):
                return False
            if any(op in str(node.target) for op in ('contiguous', 'clone', 'float')):
                return True
            if 'conv2d' in str(node.target):
                return False
            return any(copied(a, depth + 1) for a in node.args if hasattr(a, 'target'))
        return [copied(a) for n in sdpa for a in n.args[:3]]
    assert all(copies_before_attention('default+channels-last'))
    assert all(copies_before_attention('default+channels-last+planar-qkv'))       # batch 2: below LARGE_BATCH
    monkeypatch.setattr(export.compiled, 'LARGE_BATCH', 1)
    assert not any(copies_before_attention('default+channels-last+planar-qkv'))


def test_split_skip_writes_no_concat_buffer(monkeypatch):
    """Compiled (inductor, CPU lowering, no buffer reuse), each decoder block with a concatenated input allocates one
    buffer of its width and resolution fewer with split-skip: the concat itself (the normalised input of its first
    convolution is still written; each width here belongs to one such block)."""
    from torch._inductor.utils import run_and_get_code

    from export.compiled import CompileOptions, inductor_options_for, prepare_denoiser
    from models.layers import UNetBlock
    spec = tiny_ddpmpp()
    x, sigma, labels = _inputs(spec)

    def concat_shaped_buffers(spec_text):
        options = CompileOptions.parse(spec_text)
        net = prepare_denoiser(perturb_(build_denoiser(spec)).eval(), 'fp32', options)
        torch._dynamo.reset()
        with torch.no_grad():
            _, code = run_and_get_code(torch.compile(net, options={**inductor_options_for(net, options), 'allow_buffer_reuse': False},
                                                     fullgraph=True),
                                       x.to(memory_format=torch.channels_last), sigma, labels)
        buffers = re.findall(r'empty_strided_cpu\(\((\d+), (\d+), (\d+), (\d+)\)', '\n'.join(code))
        widths = {(b.in_channels, int(name.split('x')[0])) for name, b in net.model.dec.items()
                  if isinstance(b, UNetBlock) and b.in_channels != b.out_channels}
        return {w: sum(1 for b in buffers if (int(b[1]), int(b[2])) == w and int(b[0]) == len(x)) for w in widths}
    import export.compiled
    monkeypatch.setattr(export.compiled, 'LARGE_BATCH', 1)         # split from batch 1 on (the inputs are 2 images)
    base, split = (concat_shaped_buffers(f'default+channels-last+{switch}') for switch in ('channels-last-cat', 'split-skip'))
    assert split == {width: n - 1 for width, n in base.items()}        # one buffer fewer per concat block: the concat


@pytest.mark.parametrize('offset', [0.0, 20.0])
def test_folded_affine_is_group_norm_with_the_blocks_add_and_scale(offset):
    """x * a + b == group_norm(x + pre) * scale + shift, also for activations whose mean is far from zero (the
    variance comes from E[x^2] - E[x]^2)."""
    from models.layers import GroupNorm, folded_affine
    torch.manual_seed(0)
    norm = GroupNorm(64)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(3, 64, 8, 8).to(memory_format=torch.channels_last) + offset
    pre, scale, shift = (torch.randn(3, 64, 1, 1) for _ in range(3))
    group_norm = lambda t: torch.nn.functional.group_norm(t, norm.num_groups, norm.weight, norm.bias, norm.eps)  # noqa: E731
    with torch.no_grad():
        for kwargs, expected in (({}, group_norm(x)), ({'pre': pre}, group_norm(x + pre)),
                                 ({'scale': scale, 'shift': shift}, group_norm(x) * scale + shift)):
            a, b = folded_affine(x, norm, **kwargs)
            assert a.shape == b.shape == (3, 64, 1, 1)
            torch.testing.assert_close(x * a + b, expected, atol=1e-4 * (1 + offset), rtol=1e-4)


def test_folded_norm_compiles_to_the_same_denoiser_with_its_affines_realised(monkeypatch):
    """Every norm of a compiled DDPM++ through folded_affine (from batch 1 here): the eager denoiser's output, and each
    norm's realised affines are [N, C] buffers of their own in the generated code (fewer without the layout op)."""
    from torch._inductor.utils import run_and_get_code

    import models.layers
    from export.compiled import CompileOptions, prepare_denoiser
    from models.layers import GroupNorm
    spec = tiny_ddpmpp()
    x, sigma, labels = _inputs(spec)
    options = CompileOptions.parse('default+channels-last+folded-norm')
    base = perturb_(build_denoiser(spec)).eval()
    with torch.no_grad():
        expected = base(x, sigma, labels)

    def compiled():
        net = prepare_denoiser(copy.deepcopy(base), 'fp32', options)
        norms = [m for m in net.modules() if isinstance(m, GroupNorm)]
        assert norms and all(m.folded_min_batch for m in norms)
        for m in norms:
            m.folded_min_batch = 1
        torch._dynamo.reset()
        with torch.no_grad():
            out, code = run_and_get_code(torch.compile(net, options={**options.inductor_options(), 'allow_buffer_reuse': False},
                                                       fullgraph=True), x.to(memory_format=torch.channels_last), sigma, labels)
        affines = re.findall(r'empty_strided_cpu\(\((\d+), (\d+)\), \((\d+), 1\)', '\n'.join(code))
        return out, sum(1 for n, c, _ in affines if int(n) == len(x)), len(norms)
    out, realised, norms = compiled()
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    monkeypatch.setattr(models.layers, '_realised', lambda t: t)
    _, inlined, _ = compiled()
    assert realised - inlined >= norms


def test_folded_torch_norm_gives_the_same_vae_decoder_and_keeps_its_state_dict(monkeypatch):
    """folded-torch-norm on a (tiny, random) diffusers VAE decoder: every torch.nn.GroupNorm becomes a folded one
    sharing its parameters, the eager decoder is untouched, and compiled (inductor, CPU) it decodes what it did,
    every norm traced through folded_affine."""
    from diffusers import AutoencoderKL

    import models.layers
    from models.layers import FoldedTorchGroupNorm, fold_torch_group_norms
    traced, real = [], models.layers.folded_affine
    monkeypatch.setattr(models.layers, 'folded_affine', lambda x, norm, *a, **k: traced.append(norm) or real(x, norm, *a, **k))
    from models.random_sd import CONFIGS
    torch.manual_seed(0)
    decoder = AutoencoderKL(**CONFIGS['tiny']['vae']).decoder.eval()
    for m in decoder.modules():             # non-trivial affines, so a mixed-up weight or bias would show
        if isinstance(m, torch.nn.GroupNorm):
            torch.nn.init.normal_(m.weight, 1, 0.2)
            torch.nn.init.normal_(m.bias, 0, 0.2)
    latents = torch.randn(2, 4, 8, 8)
    keys = list(decoder.state_dict())
    with torch.no_grad():
        expected = decoder(latents)
        norms = sum(isinstance(m, torch.nn.GroupNorm) for m in decoder.modules())
        assert fold_torch_group_norms(decoder, min_elements=1) == norms > 0
        assert all(type(m) is FoldedTorchGroupNorm for m in decoder.modules() if isinstance(m, torch.nn.GroupNorm))
        assert list(decoder.state_dict()) == keys
        assert torch.equal(decoder(latents), expected)                     # eager: torch's group_norm
        torch._dynamo.reset()
        assert not traced
        compiled = torch.compile(decoder, fullgraph=True)(latents)
    torch.testing.assert_close(compiled, expected, atol=1e-4, rtol=1e-4)
    assert len({id(m) for m in traced}) == norms
