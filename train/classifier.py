"""A small CIFAR-style classifier whose penultimate features define a Frechet distance ("FD-CIFAR").

Not Inception FID: numbers in this space compare sida models with each other on the same data only.
The network is a compact ResNet (after the DAWNBench "ResNet-9" family); it is saved as TorchScript
with a `features(x)` method, the interface `train.metrics.ClassifierFeatures` reads.
"""

import json
import time
from pathlib import Path

import torch
from torch import nn


def conv_bn(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Residual(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x):
        return x + self.body(x)


class SmallResNet(nn.Module):
    def __init__(self, num_classes=10, width=64, channels=3):
        super().__init__()
        w = width
        self.trunk = nn.Sequential(
            conv_bn(channels, w), conv_bn(w, 2 * w), nn.MaxPool2d(2), Residual(2 * w),
            conv_bn(2 * w, 4 * w), nn.MaxPool2d(2), conv_bn(4 * w, 8 * w), nn.MaxPool2d(2), Residual(8 * w),
            nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.head = nn.Linear(8 * w, num_classes)

    @torch.jit.export
    def features(self, x):
        """x: images in [-1, 1]; returns the penultimate (pooled) features."""
        return self.trunk(x)

    def forward(self, x):
        return self.head(self.features(x)) * 0.125


def augment(x, generator):
    """Random crops (pad 4) and horizontal flips, on the GPU."""
    n = len(x)
    x = torch.nn.functional.pad(x, (4, 4, 4, 4), mode='reflect')
    i, j = torch.randint(0, 9, (2,), generator=generator).tolist()
    x = x[:, :, i:i + 32, j:j + 32] if x.shape[-1] == 40 else x[:, :, 4:-4, 4:-4]
    flip = torch.rand(n, device=x.device) < 0.5
    return torch.where(flip.reshape(-1, 1, 1, 1), x.flip(3), x)


def train_classifier(train_images, train_labels, test_images, test_labels, out_dir, epochs=24, batch=512, lr=0.4,
                     width=64, device='cuda', log=print):
    """Images uint8 [N,C,H,W]. Writes classifier.pt (TorchScript) and classifier.json (accuracy, settings)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    batch = min(batch, len(train_images))     # small data sets still get whole epochs
    num_classes = int(train_labels.max()) + 1
    net = SmallResNet(num_classes, width, train_images.shape[1]).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps = epochs * (len(train_images) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.25)
    x_all = (train_images.to(device).float() / 127.5 - 1)
    y_all = train_labels.to(device)
    started = time.time()
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(x_all), generator=g).to(device)
        for k in range(len(x_all) // batch):
            idx = perm[k * batch:(k + 1) * batch]
            x = augment(x_all[idx], g)
            with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=device != 'cpu'):
                loss = torch.nn.functional.cross_entropy(net(x), y_all[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = evaluate(net, test_images, test_labels, device)
        log(f'epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, test accuracy {acc:.4f}, {time.time() - started:.0f}s')
    net = net.float().eval().cpu()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(net), str(out / 'classifier.pt'))
    info = {'test_accuracy': acc, 'epochs': epochs, 'batch': batch, 'lr': lr, 'width': width, 'train_images': len(train_images),
            'test_images': len(test_images), 'seconds': round(time.time() - started, 1), 'device': str(device),
            'parameters': sum(p.numel() for p in net.parameters()),
            'note': 'features(x) on images in [-1,1]: the FD-CIFAR feature space (not Inception FID)'}
    (out / 'classifier.json').write_text(json.dumps(info, indent=2) + '\n')
    return info


@torch.no_grad()
def evaluate(net, images, labels, device, batch=1000):
    net.eval()
    correct = 0
    for i in range(0, len(images), batch):
        x = images[i:i + batch].to(device).float() / 127.5 - 1
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=device != 'cpu'):
            correct += (net(x).argmax(1).cpu() == labels[i:i + batch]).sum().item()
    return correct / len(images)
