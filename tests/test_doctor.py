"""jnn.doctor: compile records, the changed argument of a planted retrace, the compile guard, unrolled blocks."""
import jax
import jax.numpy as jnp
import optax
import pytest

import jnn
from jnn.doctor import TooManyCompiles


def test_a_planted_retrace_names_the_argument_path_and_how_it_changed():
    def step(params, batch, scale, mode="a"):
        return jnp.sum(params["w"] * batch["x"]) * scale

    f = jnn.doctor.jit(step, static_argnames="mode")
    params, batch = {"w": jnp.ones(3)}, {"x": jnp.ones((4, 3)), "y": jnp.ones(4)}
    f(params, batch, jnp.float32(2.0))
    f(params, batch, jnp.float32(3.0))                                   # same signature: no compile
    f(params, {**batch, "x": jnp.ones((5, 3))}, jnp.float32(2.0))        # shape
    f(params, {**batch, "y": jnp.ones(4, jnp.int32)}, jnp.float32(2.0))  # dtype
    f(params, batch, 2.0)                                                # a Python float: weakly typed
    f(params, batch, jnp.float32(2.0), mode="b")                         # a static value
    report = f.report
    assert [c.changes for c in report] == [
        (), ("batch['x']: shape (4, 3) -> (5, 3)",), ("batch['y']: dtype float32 -> int32",),
        ("scale: weak type False -> True",), ("mode: static value 'a' -> 'b'",)]
    assert all(c.hlo_lines > 0 and c.compile_s > 0 and c.trace_s > 0 for c in report)
    assert "batch['x']: shape (4, 3) -> (5, 3)" in str(report)


def test_the_guard_fires_as_a_context_manager_and_as_a_decorator():
    with pytest.raises(TooManyCompiles, match=r"scaled compiled 2 times \(limit 1\); this time because x: shape"):
        with jnn.doctor.watch(max_compiles=1):
            def scaled(x):
                return x * 2

            scaled = jax.jit(scaled)   # jax.jit is the doctor's here
            scaled(jnp.ones(2))
            scaled(jnp.ones(3))
    assert not hasattr(jax.jit, "report")   # jax.jit is restored

    @jnn.doctor.jit(max_compiles=2)
    def double(x):
        return 2 * x

    double(jnp.ones(1)), double(jnp.ones(2))
    with pytest.raises(TooManyCompiles, match="double compiled 3 times"):
        double(jnp.ones(3))


def test_watching_fit_records_its_compiled_functions_once_each():
    x, y = jnn.data.xor()
    with jnn.doctor.watch(max_compiles=1) as report:
        jnn.train.fit(jnn.serial(jnn.dense(4), jnn.tanh(), jnn.dense(1)), jnn.losses.mse, optax.sgd(0.1), (x, y),
                      val_data=(x, y), key=jax.random.key(0), epochs=3, batch_size=2, metrics={}, verbose=0, fused=True)
    names = [c.name for c in report]
    assert len(names) >= 2 and len(set(names)) == len(names)   # the epoch and the evaluation, each once
    assert all(c.hlo_lines > 0 for c in report)


def test_unrolled_identical_blocks_are_found_and_both_forms_compiled():
    block = jnn.residual(jnn.serial(jnn.dense(8), jnn.relu()))
    model = jnn.serial(jnn.dense(8), jnn.serial(*[block] * 4), jnn.dense(2), jnn.dense(2))
    found = jnn.doctor.unrolled(model, jnp.zeros((2, 5)))
    assert [(u.path, u.first, u.last, u.n) for u in found] == [("serial_0", "residual_0", "residual_3", 4)]
    assert found[0].serial_s > 0 and found[0].repeat_s > 0
    assert "serial_0/residual_0..residual_3: 4 identical blocks; jnn.repeat(block, 4) compiles in " in str(found[0])
    # dense_1 (8 -> 2) and dense_2 (2 -> 2) differ in param shapes: not a run
    assert jnn.doctor.unrolled(jnn.serial(jnn.dense(4), jnn.dense(4)), jnp.zeros((2, 3)), measure=False) == []
