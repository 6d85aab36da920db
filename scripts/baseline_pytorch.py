#!/usr/bin/env python3
"""Plain PyTorch eager baseline for the side-by-side speed comparison in docs/RESULTS.md.

ResNet18 with a 3x3 stem on 32x32 CIFAR-10, batch 512, data and augmentation on the GPU, bf16
autocast, channels_last: float, or SLB W1A8 written the straightforward way (softmax over the
logits' last axis times the value list, fake quant on every conv input and raw output with the
fused libtorch op, batch min/max kept as tensors: no host syncs in a step). Prints seconds per
epoch. Usage: baseline_pytorch.py DATA_DIR(cifar10/) {float,w1a8} EPOCHS
"""
import os, sys, time, glob
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image


def load_split(root, split):
    classes = sorted(os.listdir(os.path.join(root, split)))
    files, labels = [], []
    for i, c in enumerate(classes):
        fs = sorted(glob.glob(os.path.join(root, split, c, "*")))
        files += fs
        labels += [i] * len(fs)
    with ProcessPoolExecutor() as ex:
        imgs = list(ex.map(lambda_decode, files, chunksize=512))
    return np.stack(imgs), np.array(labels)


def lambda_decode(f):
    return np.asarray(Image.open(f).convert("RGB"))


class FQ(nn.Module):
    def forward(self, x):
        lo = torch.clamp(x.detach().amin(), max=0.0).float()
        hi = torch.clamp(x.detach().amax(), min=0.0).float()
        scale = torch.clamp((hi - lo) / 255.0, min=1e-8)
        zp = torch.clamp(torch.round(-lo / scale), 0, 255).int()
        return torch.fake_quantize_per_tensor_affine(x.float(), scale, zp, 0, 255).to(x.dtype)


class SlbConv(nn.Module):
    def __init__(self, cin, cout, k, stride, pad, bits=1):
        super().__init__()
        n = 2 ** bits
        self.logits = nn.Parameter(torch.empty(cout, cin, k, k, n))
        nn.init.kaiming_normal_(self.logits, mode="fan_out")
        self.register_buffer("w_list", torch.linspace(-1, 1, n))
        self.stride, self.pad, self.t = stride, pad, 1.0
        self.fq_in, self.fq_out = FQ(), FQ()

    def forward(self, x):
        w = (F.softmax(self.logits * self.t, dim=-1) * self.w_list).sum(-1)
        y = F.conv2d(self.fq_in(x), w.to(x.dtype), None, self.stride, self.pad)
        return self.fq_out(y)


def conv(cin, cout, k, s, p, slb):
    return SlbConv(cin, cout, k, s, p) if slb else nn.Conv2d(cin, cout, k, s, p, bias=False)


class Block(nn.Module):
    def __init__(self, cin, cout, stride, slb):
        super().__init__()
        self.c1, self.b1 = conv(cin, cout, 3, stride, 1, slb), nn.BatchNorm2d(cout)
        self.c2, self.b2 = conv(cout, cout, 3, 1, 1, slb), nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(conv(cin, cout, 1, stride, 0, slb), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        return F.relu(y + (self.down(x) if self.down is not None else x))


class ResNet18(nn.Module):
    def __init__(self, slb):
        super().__init__()
        self.stem = nn.Sequential(conv(3, 64, 3, 1, 1, slb), nn.BatchNorm2d(64), nn.ReLU())
        layers, cin = [], 64
        for cout, s in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers += [Block(cin, cout, s, slb), Block(cout, cout, 1, slb)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, 10)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def main():
    root, mode, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    t0 = time.time()
    xtr, ytr = load_split(root, "train")
    print(f"decoded {len(xtr)} images in {time.time() - t0:.1f}s", flush=True)
    x = torch.from_numpy(xtr).to(dev)  # N,H,W,3 uint8
    y = torch.from_numpy(ytr).to(dev)
    mean = torch.tensor([0.4914, 0.4822, 0.4465], device=dev).view(1, 3, 1, 1)
    std = torch.tensor([0.2023, 0.1994, 0.2010], device=dev).view(1, 3, 1, 1)
    net = ResNet18(mode != "float").to(dev)
    if mode == "float":  # SLB logits are 5-D; their per-step weights are computed in the step
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    bs, n = 512, len(x)
    ar32 = torch.arange(32, device=dev)
    for ep in range(epochs):
        torch.cuda.synchronize()
        t = time.time()
        perm = torch.randperm(n, device=dev)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            xb = x[idx].permute(0, 3, 1, 2).float().div(255)
            xb = F.pad(xb, (4, 4, 4, 4))
            # Random 32x32 crop per image, on the GPU (no host sync): gather rows and columns.
            off = torch.randint(0, 9, (2, len(idx)), device=dev)
            iy, ix = off[0][:, None] + ar32, off[1][:, None] + ar32
            b = torch.arange(len(idx), device=dev)[:, None, None]
            xb = xb[b, :, iy[:, :, None], ix[:, None, :]].permute(0, 3, 1, 2)
            flip = torch.rand(len(idx), device=dev) < 0.5
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
            xb = ((xb - mean) / std).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = F.cross_entropy(net(xb), y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        torch.cuda.synchronize()
        print(f"{mode} epoch {ep + 1}: {time.time() - t:.2f} s", flush=True)


if __name__ == "__main__":
    main()
