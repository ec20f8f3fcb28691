"""The residual block (fan_out of conv-bn-relu-conv-bn and a skip) and the small ResNet."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn


def test_residual_block_is_relu_of_main_plus_identity():
    block = jnn.residual_block(3)
    x = jax.random.normal(jax.random.key(1), (2, 5, 5, 3))
    params, state = block.init(jax.random.key(0), x)
    main = jnn.serial(jnn.conv(3, (3, 3), use_bias=False), jnn.batch_norm(), jnn.relu(),
                      jnn.conv(3, (3, 3), use_bias=False), jnn.batch_norm())
    inner, inner_state = params["sum"]["main"], state["sum"]["main"]
    expected = jax.nn.relu(main.apply(inner, inner_state, x)[0] + x)
    np.testing.assert_allclose(block.apply(params, state, x)[0], expected, rtol=1e-5, atol=1e-6)


def test_residual_block_without_projection_reports_shape_mismatch_at_init():
    with pytest.raises(ValueError, match=r"fan_out: merge='add' needs branch outputs of one shape"):
        jnn.residual_block(8).init(jax.random.key(0), jnp.zeros((1, 6, 6, 4)))


@pytest.mark.xla_optimized   # 8 epochs of convolutions: run time, not compile time, dominates
def test_small_resnet_trains_on_digits():
    x, y = jnn.data.load_digits()
    model = jnn.resnet(10, stage_features=(8, 16))
    result = jnn.train.fit(model, jnn.losses.softmax_cross_entropy, optax.adam(3e-3), (x, y),
                           key=jax.random.key(0), epochs=8, batch_size=32, val_split=0.2,
                           progress=False, verbose=False)
    assert result.history["loss"][-1] < 0.1 * result.history["loss"][0]
    # evaluation uses batch norm's running statistics (momentum 0.99), which lag training a little
    assert max(result.history["val_accuracy"][-3:]) > 0.9
