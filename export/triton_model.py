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
        bundle = load_bundle(bundle_dir, device=self.device, return_float=True)
        self.generator = bundle.generator
        self.classes = len(bundle.config.label_names) if bundle.config.condition['kind'] == 'class' else None
        self.inputs = [i['name'] for i in config['input']]
        self.torch = torch

    def refusal(self, feeds):
        """Why one request's inputs cannot be generated (an out-of-range class), or None."""
        labels = feeds.get('class_labels')
        if self.classes is not None and labels is not None and labels.size and not (0 <= labels.min() and labels.max() < self.classes):
            bad = labels[(labels < 0) | (labels >= self.classes)].flat[0]
            return f'class_labels: {bad} is out of range (this model has classes 0..{self.classes - 1})'
        return None

    def execute(self, requests):
        # Dynamic batching hands over several requests: check each, run the valid ones as one batch, then split.
        feeds = [{name: self.pb.get_input_tensor_by_name(r, name).as_numpy() for name in self.inputs} for r in requests]
        refusals = [self.refusal(f) for f in feeds]
        invalid = getattr(self.pb.TritonError, 'INVALID_ARG', None)    # a 400 over HTTP (older backends: no codes)
        responses = [self.pb.InferenceResponse(error=self.pb.TritonError(why, invalid) if invalid is not None else
                                               self.pb.TritonError(why)) if why else None for why in refusals]
        valid = [i for i, why in enumerate(refusals) if why is None]
        if not valid:
            return responses
        sizes = [len(feeds[i]['noise']) for i in valid]
        kwargs = {name: self.torch.from_numpy(np.concatenate([feeds[i][name] for i in valid])).to(self.device)
                  for name in self.inputs}
        try:
            with self.torch.inference_mode():
                images, images_float = self.generator(**kwargs)
        except Exception as e:   # one bad batch fails its requests, not the server
            for i in valid:
                responses[i] = self.pb.InferenceResponse(error=self.pb.TritonError(f'generation failed: {e}'))
            return responses
        images, images_float = images.cpu().numpy(), images_float.cpu().numpy()
        start = 0
        for i, n in zip(valid, sizes):
            out = [self.pb.Tensor('images', images[start:start + n]), self.pb.Tensor('images_float', images_float[start:start + n])]
            responses[i] = self.pb.InferenceResponse(output_tensors=out)
            start += n
        return responses
