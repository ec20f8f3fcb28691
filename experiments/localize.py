"""The divergence localizer on a PyTorch CNN converted to jnn with one mapping mistake planted.

A torch CNN's per-layer outputs (forward hooks, made channels-last) are the reference; jnn runs the
same architecture with weights from ``jnn.convert.from_torch``. With the right mapping every layer
agrees; with ``flattened_chw`` left out of the first dense layer's mapping (its rows then read the
flattened map in torch's C, H, W order) :func:`jnn.compare.models` names ``dense_0``.

    python experiments/localize.py
"""
from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

import jnn
from common import parse_config


@dataclasses.dataclass
class Config:
    """Localize a planted from_torch mapping mistake in a converted CNN."""
    batch: int = 8
    seed: int = 0


def torch_cnn():
    import torch
    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                               torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                               torch.nn.Flatten(), torch.nn.Linear(16 * 7 * 7, 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, 10))


def jnn_cnn() -> jnn.Layer:
    return jnn.serial(jnn.conv(8, (3, 3)), jnn.relu(), jnn.max_pool((2, 2)), jnn.conv(16, (3, 3)), jnn.relu(),
                      jnn.max_pool((2, 2)), jnn.flatten(), jnn.dense(32), jnn.relu(), jnn.dense(10))


# torch module -> jnn path (torch's Flatten is left out: it flattens C, H, W, jnn's flatten H, W, C)
PATHS = {"0": "conv_0", "1": "relu_0", "2": "max_pool_0", "3": "conv_1", "4": "relu_1", "5": "max_pool_1",
         "7": "dense_0", "8": "relu_2", "9": "dense_1"}


def torch_outputs(net, images: np.ndarray) -> dict:
    """``{jnn path: output}`` of the torch modules in :data:`PATHS`, feature maps channels-last."""
    import torch
    outputs = {}
    for name, module in net.named_children():
        if name in PATHS:
            module.register_forward_hook(lambda m, i, out, name=name: outputs.__setitem__(
                PATHS[name], out.detach().numpy().transpose(0, 2, 3, 1) if out.ndim == 4 else out.detach().numpy()))
    with torch.no_grad():
        outputs[""] = net(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    return outputs


def main(config: Config) -> dict:
    import torch
    torch.manual_seed(config.seed)
    net = torch_cnn().eval()
    images = np.random.default_rng(config.seed).normal(size=(config.batch, 28, 28, 1)).astype(np.float32)
    reference = torch_outputs(net, images)
    model = jnn_cnn()
    right = {"conv_0": "0", "conv_1": "3", "dense_0": {"module": "7", "flattened_chw": (16, 7, 7)}, "dense_1": "9"}
    wrong = {**right, "dense_0": "7"}   # the planted mistake: flattened_chw left out
    results = {}
    for label, mapping in (("right mapping", right), ("flattened_chw left out", wrong)):
        params = jax.tree_util.tree_map(jax.numpy.asarray, jnn.convert.from_torch(net, mapping))
        start = time.perf_counter()
        found = jnn.compare.models((model, params, {}), reference, images)
        seconds = time.perf_counter() - start
        print(f"--- {label}: first layer over tolerance: {found.first_forward} ({seconds:.2f} s)")
        print(found)
        results[label] = {"first_forward": found.first_forward, "seconds": seconds,
                          "errors": {p: r.forward for p, r in found.rows.items() if r.forward is not None}}
    return results


if __name__ == "__main__":
    main(parse_config(Config))
