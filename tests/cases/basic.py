"""Registry cases: dense, shape plumbing, activations and the combinators."""
from registry import Case

import jnn

CASES = [
    Case("dense", lambda: jnn.dense(3), (4, 5)),
    Case("dense_no_bias", lambda: jnn.dense(2, use_bias=False, w_init="he_uniform"), (3, 4)),
    Case("dense_3d_input", lambda: jnn.dense(3), (2, 3, 4)),
    Case("flatten", lambda: jnn.flatten(), (2, 3, 4)),
    Case("reshape", lambda: jnn.reshape((2, -1)), (3, 8)),
    Case("identity", lambda: jnn.identity(), (2, 3)),
    Case("step", lambda: jnn.step(), (3, 4)),
    Case("sigmoid", lambda: jnn.sigmoid(), (3, 4)),
    Case("tanh", lambda: jnn.tanh(), (3, 4)),
    Case("relu", lambda: jnn.relu(), (3, 4)),
    Case("leaky_relu", lambda: jnn.leaky_relu(0.1), (3, 4)),
    Case("elu", lambda: jnn.elu(), (3, 4)),
    Case("gelu", lambda: jnn.gelu(), (3, 4)),
    Case("gelu_tanh", lambda: jnn.gelu(approximate=True), (3, 4)),
    Case("softplus", lambda: jnn.softplus(), (3, 4)),
    Case("silu", lambda: jnn.silu(), (3, 4)),
    Case("softmax", lambda: jnn.softmax(), (3, 4)),
    Case("log_softmax", lambda: jnn.log_softmax(), (3, 4)),
    Case("serial_mlp", lambda: jnn.serial(jnn.dense(4), jnn.tanh(), jnn.dense(2)), (3, 5)),
    Case("fan_out_concat", lambda: jnn.fan_out(jnn.dense(2), jnn.dense(3), merge="concat"), (3, 4)),
    Case("residual", lambda: jnn.residual(jnn.dense(4), jnn.sigmoid()), (3, 4)),
    Case("named_serial", lambda: jnn.serial(jnn.named("hidden", jnn.dense(3)), jnn.dense(1)), (2, 3)),
]
