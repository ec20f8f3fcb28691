"""8-virtual-device scenarios for tests/test_parallel.py, run in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8. Prints one JSON dict of measured values
(the test file asserts them), so the rest of the suite keeps its single device."""
import json
import pathlib
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jnn
from jnn import parallel

out = {}
rng = np.random.default_rng(0)
x = rng.normal(size=(128, 16)).astype(np.float32)
y = rng.integers(0, 8, 128).astype(np.int32)
loss = jnn.losses.softmax_cross_entropy
mesh8, mesh1 = parallel.make_mesh(), parallel.make_mesh(devices=jax.devices()[:1])
out["devices"] = len(jax.devices())


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def max_rel(t1, t2):
    return max(rel(a, b) for a, b in zip(jax.tree_util.tree_leaves(t1), jax.tree_util.tree_leaves(t2)))


# --- data parallel fit: 1 device vs 8 (with a probe recording the batch's sharding inside the scan)
seen = []
probe = jnn.stateless("probe", lambda h: (jax.debug.inspect_array_sharding(h, callback=seen.append), h)[1])
model = jnn.serial(probe, jnn.dense(32), jnn.relu(), jnn.batch_norm(), jnn.dropout(0.1), jnn.dense(8))
kw = dict(key=jax.random.key(0), epochs=2, batch_size=32, val_data=(x[:40], y[:40]), verbose=0)
r0 = jnn.train.fit(model, loss, optax.adam(1e-2), (x, y), **kw)
seen.clear()
r8 = jnn.train.fit(model, loss, optax.adam(1e-2), (x, y), mesh=mesh8, **kw)
out["dp_loss_rel"] = max(rel(a, b) for k in ("loss", "val_loss") for a, b in zip(r8.history[k], r0.history[k]))
out["dp_params_rel"] = max_rel(r8.train_state.params, r0.train_state.params)
out["dp_param_specs"] = sorted({str(a.sharding.spec) for a in jax.tree_util.tree_leaves(r8.train_state.params)})
out["dp_param_devices"] = len(r8.train_state.params["dense_0"]["w"].sharding.device_set)
out["dp_batch_specs"] = sorted({str(s.spec) for s in seen})
gb = parallel.global_batch((x[:32], y[:32]), mesh8)
out["global_batch_shards"] = sorted({tuple(s.data.shape) for s in gb[0].addressable_shards})

# --- FSDP: 1/8 of the param bytes per device, and the same training
fmodel = jnn.serial(jnn.dense(32), jnn.relu(), jnn.dense(8))
fkw = dict(kw, val_data=None)
device0_bytes = lambda tree: sum(s.data.nbytes for a in jax.tree_util.tree_leaves(tree)
                                for s in a.addressable_shards if s.device == jax.devices()[0])
begun = []   # the train state fit starts from, as callbacks see it: laid out by the rules from the start
on_begin = type("OnBegin", (), {"on_train_begin": lambda self, ts: begun.append(device0_bytes(ts.params)),
                                "on_epoch_end": lambda self, *a: None})()
rf = jnn.train.fit(fmodel, loss, optax.adam(1e-2), (x, y), mesh=(mesh8, parallel.fsdp()), callbacks=[on_begin],
                   **fkw)
rr = jnn.train.fit(fmodel, loss, optax.adam(1e-2), (x, y), **fkw)
leaves = jax.tree_util.tree_leaves(rf.train_state.params)
dev0 = jax.devices()[0]
out["fsdp_total_bytes"] = sum(a.nbytes for a in leaves)
out["fsdp_device0_bytes"] = sum(s.data.nbytes for a in leaves for s in a.addressable_shards if s.device == dev0)
mu = rf.train_state.opt_state[0].mu
out["fsdp_opt_device0_bytes"] = sum(s.data.nbytes for a in jax.tree_util.tree_leaves(mu)
                                    for s in a.addressable_shards if s.device == dev0)
out["fsdp_loss_rel"] = max(rel(a, b) for a, b in zip(rf.history["loss"], rr.history["loss"]))
out["fsdp_params_rel"] = max_rel(rf.train_state.params, rr.train_state.params)

# --- inside fit's fused epoch the FSDP params stay split (a regularizer that adds 0 reads their layout)
inside = []
probe_params = lambda params: (jax.debug.inspect_array_sharding(params["dense_0"]["w"], callback=inside.append), 0.0)[1]
jnn.train.fit(fmodel, loss, optax.adam(1e-2), (x, y), mesh=(mesh8, parallel.fsdp()), regularizer=probe_params,
              **dict(fkw, epochs=1))
out["fsdp_params_inside_epoch"] = sorted({str(s.spec) for s in inside})
out["fsdp_w_spec"] = str(rf.train_state.params["dense_0"]["w"].sharding.spec)

# --- resuming the FSDP run for one more epoch keeps its layout
resumed = jnn.train.fit(fmodel, loss, optax.adam(1e-2), (x, y), mesh=(mesh8, parallel.fsdp()),
                        train_state=jnn.train.Start(jax.device_get(rf.train_state), epoch=2), callbacks=[on_begin],
                        **dict(fkw, epochs=3))
out["fsdp_begin_device0_bytes"] = begun
out["fsdp_resumed_device0_bytes"] = sum(s.data.nbytes for a in jax.tree_util.tree_leaves(resumed.train_state.params)
                                        for s in a.addressable_shards if s.device == dev0)

# --- make_train_step alone under jit: the new state keeps FSDP's layout (not replicated)
fstep = jax.jit(jnn.train.make_train_step(fmodel, loss, optax.adam(1e-2), mesh=mesh8, rules=parallel.fsdp()))
specs = lambda tree: [str(a.sharding.spec) for a in jax.tree_util.tree_leaves(tree)]
stepped = fstep(rf.train_state, parallel.global_batch((x[:32], y[:32]), mesh8))[0]
out["step_fsdp_specs"] = specs(stepped.params) + specs(stepped.opt_state[0].mu)
out["fit_fsdp_specs"] = specs(rf.train_state.params) + specs(mu)

# --- checkpoint: save the FSDP state from 8 devices, restore onto a 4-device mesh
mesh4 = parallel.make_mesh(devices=jax.devices()[:4])
with tempfile.TemporaryDirectory() as d:
    ckpt = jnn.train.Checkpointer(d)
    ckpt.save(2, rf.train_state)
    template = parallel.place(jax.tree_util.tree_map(jnp.zeros_like, rr.train_state), mesh4, parallel.fsdp())
    restored, _ = ckpt.restore(template)
host = lambda t: [np.asarray(v) for v in jax.tree_util.tree_leaves(jnn.train.checkpoint._saveable(t))]
out["restore4_equal"] = all(np.array_equal(a, b) for a, b in zip(host(restored), host(rf.train_state)))
out["restore4_devices"] = len(restored.params["dense_0"]["w"].sharding.device_set)
out["restore4_shard"] = list(restored.params["dense_0"]["w"].addressable_shards[0].data.shape)

# --- batch norm over the data axis equals NumPy global-batch statistics
bn = jnn.batch_norm(momentum=0.0)
xb = (rng.normal(size=(32, 6)) * np.arange(1, 33)[:, None]).astype(np.float32)  # shards differ a lot
bp, bs = bn.init(jax.random.key(0), xb)
apply = jax.jit(lambda xs: bn.apply(bp, bs, parallel.constrain_batch(xs, mesh8), train=True))
yb, bs_new = apply(jax.device_put(xb, NamedSharding(mesh8, P("data"))))
mean, var = xb.astype(np.float64).mean(0), xb.astype(np.float64).var(0)
out["bn_out_rel"] = rel(yb, (xb - mean) / np.sqrt(var + 1e-5))
out["bn_mean_rel"] = rel(bs_new["mean"], mean)
out["bn_var_rel"] = rel(bs_new["var"], var)
out["bn_per_shard_mean_rel"] = rel(xb[:4].mean(0), mean)  # what per-device statistics would give

# --- tensor parallel: encoder block and a plain dense by logical axes, on a (2, 4) mesh
mesh24 = parallel.make_mesh(data=2, model=4)
tmodel = jnn.serial(jnn.encoder_block(4, 32), jnn.dense(16))
xt = rng.normal(size=(4, 5, 8)).astype(np.float32)
tparams, tstate = tmodel.init(jax.random.key(1), xt)
rules = parallel.tensor_parallel(extra=[("dense_0/w", ("embed", "mlp"))])
specs = parallel.param_specs(tparams, mesh24, rules)
sharded = jax.device_put(tparams, jax.tree_util.tree_map(lambda s: NamedSharding(mesh24, s), specs,
                                                         is_leaf=lambda s: isinstance(s, P)))


def f(p, xs):
    y = tmodel.apply(p, tstate, xs)[0]
    return jnp.sum(y ** 2), y


grad_fn = jax.jit(jax.value_and_grad(f, has_aux=True))
(val_tp, out_tp), g_tp = grad_fn(sharded, jax.device_put(xt, NamedSharding(mesh24, P("data"))))
(val_ref, out_ref), g_ref = grad_fn(tparams, xt)   # the same function, unsharded on one device
out["tp_out_rel"] = rel(out_tp, out_ref)
out["tp_value_rel"] = rel(val_tp, val_ref)
flat = lambda t: np.concatenate([np.ravel(v) for v in jax.tree_util.tree_leaves(t)])
out["tp_grad_rel"] = rel(flat(g_tp), flat(g_ref))  # over all gradients (attention's key bias gets ~0)
qw = sharded["encoder_block_0"]["attention"]["query"]["w"]
out["tp_query_spec"] = str(qw.sharding.spec)
out["tp_query_shard"] = list(qw.addressable_shards[0].data.shape)
out["tp_out_spec"] = str(sharded["encoder_block_0"]["attention"]["out"]["w"].sharding.spec)
out["tp_dense_spec"] = str(sharded["dense_0"]["w"].sharding.spec)
out["tp_grad_query_spec"] = str(g_tp["encoder_block_0"]["attention"]["query"]["w"].sharding.spec)

# --- plan: MNIST MLP on 1 device (hand-checked in the test) and on 8 with FSDP; transformer
B = 128
mlp = jnn.serial(jnn.flatten(), jnn.dense(128), jnn.relu(), jnn.dense(10))
mb = (jax.ShapeDtypeStruct((B, 28, 28, 1), jnp.float32), jax.ShapeDtypeStruct((B,), jnp.int32))
p1 = parallel.plan(mlp, mb, optax.sgd(0.1), mesh1, loss=loss, verbose=False)
p8 = parallel.plan(mlp, mb, optax.adam(0.1), mesh8, loss=loss, rules=parallel.fsdp(), verbose=False)
out["plan1"] = p1._asdict() | {"params": None}
out["plan8"] = p8._asdict() | {"params": None}
lm = jnn.serial(jnn.encoder_block(4, 64), jnn.dense(8))
tb = (jax.ShapeDtypeStruct((16, 12, 32), jnp.float32), jax.ShapeDtypeStruct((16, 12, 8), jnp.float32))
pt = parallel.plan(lm, tb, optax.adam(1e-3), mesh8, rules=parallel.fsdp(), verbose=False)
out["plan_tf"] = pt._asdict() | {"params": None}
out["plan_tf_unsharded_param_bytes"] = 4 * pt.param_count

# --- errors
def error(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the test matches type and message
        return f"{type(e).__name__}: {e}"
    return None


fit = lambda **k: jnn.train.fit(fmodel, loss, optax.sgd(0.1), (x, y), key=jax.random.key(0), epochs=1,
                                verbose=0, **k)
out["err_batch"] = error(lambda: fit(batch_size=12, mesh=mesh8))
out["err_axis"] = error(lambda: fit(batch_size=32, mesh=(mesh8, [("w", ("tensor", None))])))
out["err_pattern"] = error(lambda: fit(batch_size=32, mesh=(mesh8, parallel.fsdp("encoder/*"))))
explicit = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
out["err_explicit"] = error(lambda: fit(batch_size=32, mesh=explicit))
out["err_step_batch"] = error(lambda: fstep(rf.train_state, (x[:12], y[:12])))
out["err_epoch_batch"] = error(lambda: jnn.train.make_train_epoch(fstep, 128, 12, mesh=mesh8))
out["err_global_batch"] = error(lambda: parallel.global_batch((x[:12], y[:12]), mesh8))

# --- experiments/data_parallel.py smoke run: 8 devices, FSDP, 1 epoch on 2,000 MNIST images
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "experiments"))
import data_parallel  # noqa: E402

run = data_parallel.main(data_parallel.Config(devices=8, fsdp=True, epochs=2, train_limit=2000, out="",
                                              progress=False))
out["exp_accuracy"] = run["test_accuracy"]
out["exp_param_bytes_per_device"] = run["param_bytes_per_device"]
out["exp_w_spec"] = str(run["train_state"].params["dense_0"]["w"].sharding.spec)
print("\n" + json.dumps(out))
