"""One exported artifact (CPU and CUDA lowered into the same ``.jnnx`` file) run on every platform
this machine has: the outputs on each device against the jnn model's own on the CPU.

    python benchmarks/export_devices.py            # on a GPU machine: cpu and cuda rows

Prints one row per platform: max |difference| to the model's CPU output for batch sizes 1, 7
and 128. Without a GPU only the cpu row appears (the CUDA lowering is still in the file).
"""
import pathlib
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

import jnn


def main():
    model = jnn.serial(jnn.conv(8, (3, 3)), jnn.relu(), jnn.max_pool((2, 2)), jnn.flatten(), jnn.dense(10))
    x = jax.random.normal(jax.random.key(1), (128, 28, 28, 1))
    params, state = model.init(jax.random.key(0), x[:1])
    cpu = jax.devices("cpu")[0]
    with jax.default_device(cpu):
        reference = np.asarray(jax.jit(lambda x: model.apply(params, state, x)[0])(x))
    path = pathlib.Path(tempfile.mkdtemp()) / "cnn.jnnx"
    jnn.export.export_model(path, model, params, state, x[:1], platforms=("cpu", "cuda"))
    header, fns = jnn.export.load(path)
    print(f"artifact platforms: {header['sections']['predict']['platforms']}")
    platforms = sorted({d.platform for d in jax.devices()} | {"cpu"})
    for platform in platforms:
        device = jax.devices(platform)[0]
        errors = []
        for b in (1, 7, 128):
            out = fns["predict"](jax.device_put(x[:b], device))
            errors.append(float(np.max(np.abs(np.asarray(out) - reference[:b]))))
        print(f"{platform:5s} {device.device_kind:24s} max |diff| for batch 1/7/128: "
              + " ".join(f"{e:.2e}" for e in errors))


if __name__ == "__main__":
    main()
