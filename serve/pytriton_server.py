"""`sida serve --triton`: a real Triton Inference Server (via PyTriton) running sida's own Backends.

Triton owns dynamic batching, KServe v2 HTTP/gRPC and its metrics (on their own ports); the FastAPI app
then talks to it through the triton Backend, like to any external Triton. PyTriton needs numpy<2
(with numpy 2 it garbles request inputs, PyTriton PR #78), and one PyTriton process per machine.
"""

import os
import sysconfig

import numpy as np
import torch


def check_numpy():
    if int(np.__version__.split('.')[0]) >= 2:
        raise RuntimeError(f'PyTriton needs numpy<2 (found {np.__version__}): with numpy 2 it garbles request inputs')


def tensors(config):
    from pytriton.model_config import Tensor
    c = config
    inputs = [Tensor(name='noise', dtype=np.float32, shape=(c.channels, c.resolution, c.resolution))]
    if c.condition['kind'] == 'class':
        inputs.append(Tensor(name='class_labels', dtype=np.int64, shape=(1,)))
    elif c.condition['kind'] == 'text':
        inputs.append(Tensor(name='text_embeds', dtype=np.float32, shape=(1 + c.condition['max_tokens'], c.condition['dim'])))
    outputs = [Tensor(name='images', dtype=np.uint8, shape=(c.image_resolution, c.image_resolution, 3))]
    return inputs, outputs


def infer_function(backend, num_classes):
    from pytriton.decorators import batch

    @batch
    def infer(**inputs):
        feeds = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
        if 'class_labels' in feeds:
            feeds['class_labels'] = feeds['class_labels'].reshape(-1)
            bad = feeds['class_labels'][(feeds['class_labels'] < 0) | (feeds['class_labels'] >= num_classes)]
            if len(bad):        # one-hot of an out-of-range label is all zeros: an unconditional image, silently
                raise ValueError(f'class_labels {bad.tolist()} out of range 0..{num_classes - 1}')
        return {'images': np.asarray(backend.generate(feeds))}
    return infer


def start_triton(served_models, http_port=8010, grpc_port=8011, metrics_port=8012, max_batch=32, max_delay_ms=0.0):
    """Bind every served model's backends into one PyTriton server, one model instance per replica (device): Triton's
    scheduler hands each batch to a free instance. Returns the running Triton object."""
    check_numpy()
    from pytriton.model_config import DynamicBatcher, ModelConfig
    from pytriton.triton import Triton, TritonConfig
    # The python-backend stub must load this interpreter's libpython (pyenv): put its LIBDIR first.
    libdir = sysconfig.get_config_var('LIBDIR')
    os.environ['LD_LIBRARY_PATH'] = ':'.join(p for p in (libdir, os.environ.get('LD_LIBRARY_PATH', '')) if p)
    triton = Triton(config=TritonConfig(http_address='127.0.0.1', http_port=http_port, grpc_address='127.0.0.1',
                                        grpc_port=grpc_port, metrics_address='127.0.0.1', metrics_port=metrics_port))
    for model in served_models:
        inputs, outputs = tensors(model.config)
        config = ModelConfig(max_batch_size=max_batch,
                             batcher=DynamicBatcher(max_queue_delay_microseconds=int(max_delay_ms * 1000)))
        classes = len(model.config.label_names)
        triton.bind(model_name=model.id, infer_func=[infer_function(r.backend, classes) for r in model.replicas],
                    inputs=inputs, outputs=outputs, config=config)
    triton.run()
    return triton
