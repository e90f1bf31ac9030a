"""Triton python-backend model: serves a sida bundle with sida's own PyTorch generator.

Copied as <model>/1/model.py by `sida export triton-repo --runtime python`; the bundle sits beside it
in <model>/1/bundle/. The server's Python must be able to import torch and sida's packages: the
config's `sida_root` parameter (added to sys.path) points at the installed project.
"""

import json
import os
import sys

import numpy as np


class TritonPythonModel:
    def initialize(self, args):
        import triton_python_backend_utils as pb_utils  # provided by the python backend
        self.pb = pb_utils
        config = json.loads(args['model_config'])
        params = {k: v['string_value'] for k, v in config.get('parameters', {}).items()}
        root = params.get('sida_root', '')
        if root and root not in sys.path:
            sys.path.insert(0, root)
        import torch

        from models.bundle import load_bundle
        if int(params.get('torch_threads') or 0) > 0:          # 0 = leave PyTorch's default
            torch.set_num_threads(int(params['torch_threads']))
        gpu = args.get('model_instance_kind') == 'GPU' and torch.cuda.is_available()
        self.device = f'cuda:{args.get("model_instance_device_id", 0)}' if gpu else 'cpu'
        bundle_dir = os.path.join(args['model_repository'], args['model_version'], 'bundle')
        self.generator = load_bundle(bundle_dir, device=self.device, return_float=True).generator
        self.inputs = [i['name'] for i in config['input']]
        self.torch = torch

    def execute(self, requests):
        # Dynamic batching hands over several requests: run them as one batch, then split.
        feeds = {name: [self.pb.get_input_tensor_by_name(r, name).as_numpy() for r in requests] for name in self.inputs}
        sizes = [len(x) for x in feeds['noise']]
        kwargs = {name: self.torch.from_numpy(np.concatenate(parts)).to(self.device) for name, parts in feeds.items()}
        try:
            with self.torch.inference_mode():
                images, images_float = self.generator(**kwargs)
        except Exception as e:   # one bad batch fails its requests, not the server
            return [self.pb.InferenceResponse(error=self.pb.TritonError(f'generation failed: {e}')) for _ in requests]
        images, images_float = images.cpu().numpy(), images_float.cpu().numpy()
        responses, start = [], 0
        for n in sizes:
            out = [self.pb.Tensor('images', images[start:start + n]), self.pb.Tensor('images_float', images_float[start:start + n])]
            responses.append(self.pb.InferenceResponse(output_tensors=out))
            start += n
        return responses
