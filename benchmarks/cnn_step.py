"""The MNIST CNN's train step (batch 128, grad + Adam): jnn against hand-written raw JAX.

The network is experiments/mnist_cnn.py's default without dropout and augmentation: two blocks
of conv3x3-relu-maxpool2 (32, then 64 channels), flatten, dense 128, relu, dense 10. Every
version is jitted per step and runs on the same batches, interleaved, medians after warm-up:
  jnn                  : jax.jit(make_train_step(...), compiler_options=jnn.train.compiler_options()),
                         as fit compiles it
  jnn, XLA's defaults  : the same step under plain jax.jit (on CPU: YNNPACK convolutions)
  raw                  : hand-written raw JAX under plain jax.jit
  raw, jnn's options   : the same with jnn.train.compiler_options()
The gap between the two raw rows is the compiler options; between "raw, jnn's options" and
"jnn", jnn's layers (on CPU, the one-channel first convolution as a fused shifted sum).
Then the two convolutions alone (forward; the first also with its bias and relu), each under
plain jax.jit and with jnn's compiler options, and the first as jnn's layer computes it.

    python benchmarks/cnn_step.py [--steps 20 --repeats 9]
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

import jnn
from common import block, machine, time_interleaved

DN = ("NHWC", "HWIO", "NHWC")


def jnn_model(features=(32, 64)):
    layers = []
    for f in features:
        layers += [jnn.conv(f, (3, 3)), jnn.relu(), jnn.max_pool((2, 2))]
    return jnn.serial(*layers, jnn.flatten(), jnn.dense(128), jnn.relu(), jnn.dense(10))


def raw_init(key, features=(32, 64)):
    keys = iter(jax.random.split(key, 8))
    convs, c_in = [], 1
    for f in features:
        convs.append({"w": jax.random.normal(next(keys), (3, 3, c_in, f)) / jnp.sqrt(9 * c_in), "b": jnp.zeros(f)})
        c_in = f
    flat = 7 * 7 * features[-1]
    dense = [{"w": jax.random.normal(next(keys), (flat, 128)) / jnp.sqrt(flat), "b": jnp.zeros(128)},
             {"w": jax.random.normal(next(keys), (128, 10)) / jnp.sqrt(128), "b": jnp.zeros(10)}]
    return {"convs": convs, "dense": dense}


def raw_loss(params, x, y):
    h = x
    for layer in params["convs"]:
        h = jax.lax.conv_general_dilated(h, layer["w"], (1, 1), "SAME", dimension_numbers=DN) + layer["b"]
        h = jax.lax.reduce_window(jax.nn.relu(h), -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    h = h.reshape(h.shape[0], -1)
    h = jax.nn.relu(h @ params["dense"][0]["w"] + params["dense"][0]["b"])
    logits = h @ params["dense"][1]["w"] + params["dense"][1]["b"]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    print(machine())
    key = jax.random.key(0)
    n, bs = args.steps, args.batch_size
    xb = jax.random.uniform(key, (n, bs, 28, 28, 1))
    yb = jax.random.randint(key, (n, bs), 0, 10)
    opt = optax.adam(1e-3)

    model = jnn_model()
    options = jnn.train.compiler_options()
    train_step = jnn.train.make_train_step(model, jnn.losses.softmax_cross_entropy, opt, metrics={})
    jnn_step, jnn_default = jax.jit(train_step, compiler_options=options), jax.jit(train_step)
    ts = jnn.train.init_train_state(model, opt, key, jax.ShapeDtypeStruct((bs, 28, 28, 1), jnp.float32))

    def raw_step(carry, x, y):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(raw_loss)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    raw_params = raw_init(key)
    raw_state = (raw_params, opt.init(raw_params))
    steps = {"jnn": (lambda c, x, y: jnn_step(c, (x, y)), ts),
             "jnn, XLA's defaults": (lambda c, x, y: jnn_default(c, (x, y)), ts),
             "raw": (jax.jit(raw_step), raw_state),
             "raw, jnn's options": (jax.jit(raw_step, compiler_options=options), raw_state)}
    state = {name: carry for name, (_, carry) in steps.items()}

    def runner(name, step):
        def run():
            c = state[name]
            for i in range(n):
                c, _ = step(c, xb[i], yb[i])
            state[name] = block(c)
        return run

    times = time_interleaved({name: runner(name, step) for name, (step, _) in steps.items()}, repeats=args.repeats)
    print(f"batch {bs}: ms per train step (median of {args.repeats} runs of {n} steps); compiler options {options}")
    for name, seconds in times.items():
        print(f"  {name:20s} {seconds / n * 1e3:8.2f}   ratio to raw {seconds / times['raw']:.3f}")
    print(f"  compile cache size of the jnn step: {jnn_step._cache_size()}")
    conv_pieces(args.repeats)



def conv_pieces(repeats: int):
    """ms per call of the CNN's two convolutions under each way of compiling them."""
    import sys
    conv_module = sys.modules["jnn.layers.conv"]
    key = jax.random.key(0)
    x1, w1 = jax.random.normal(key, (128, 28, 28, 1)), jax.random.normal(key, (3, 3, 1, 32))
    x2, w2 = jax.random.normal(key, (128, 14, 14, 32)), jax.random.normal(key, (3, 3, 32, 64))
    b1 = jnp.ones(32)
    xla = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)
    shifted = lambda x, w: conv_module._shifted_sum(x, w, ((1, 1), (1, 1)))
    options = jnn.train.compiler_options()
    pieces = {
        "conv1 fwd, XLA's defaults": (jax.jit(xla), (x1, w1)),
        "conv1 fwd, jnn's options": (jax.jit(xla, compiler_options=options), (x1, w1)),
        "conv1 fwd, shifted sum": (jax.jit(shifted, compiler_options=options), (x1, w1)),
        "conv1+bias+relu, XLA's defaults": (jax.jit(lambda x, w, b: jax.nn.relu(xla(x, w) + b)), (x1, w1, b1)),
        "conv1+bias+relu, shifted sum": (jax.jit(lambda x, w, b: jax.nn.relu(shifted(x, w) + b),
                                                 compiler_options=options), (x1, w1, b1)),
        "conv2 fwd, XLA's defaults": (jax.jit(xla), (x2, w2)),
        "conv2 fwd, jnn's options": (jax.jit(xla, compiler_options=options), (x2, w2)),
    }
    times = time_interleaved({name: (lambda f=f, a=a: block(f(*a))) for name, (f, a) in pieces.items()},
                             repeats=repeats)
    print("the convolutions alone, batch 128: ms per call")
    for name, seconds in times.items():
        print(f"  {name:32s} {seconds * 1e3:7.2f}")


if __name__ == "__main__":
    main()
