"""Converters that guessed (issue 40, category 4): every module type jnn.convert.from_torch meets is
converted correctly (outputs equal torch's) or refused by name, and every mapping option is
honoured or refused by name. Tested against real torch modules."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn

torch = pytest.importorskip("torch")
tnn = torch.nn
from_torch = jnn.convert.from_torch


def _exactly(message):
    return "^" + re.escape(message) + "$"


def _x(*shape):
    return np.random.default_rng(0).normal(size=shape).astype(np.float32)


def _like(model, x):
    return jax.eval_shape(model.init, jax.random.key(0), x)[0]


def _randomize(module):
    torch.manual_seed(0)
    with torch.no_grad():   # distinct values everywhere, so that a mapping mistake shows
        for p in module.parameters():
            p.uniform_(-0.8, 0.8)
    return module


def _torch_out(module, x):
    out = module(torch.from_numpy(x))
    return (out[0] if isinstance(out, tuple) else out).detach().numpy()


# ---- converted, outputs equal torch's ----

def _stacked_lstm():
    net = _randomize(tnn.LSTM(3, 5, num_layers=2, batch_first=True))
    model = jnn.serial(jnn.recurrent(jnn.lstm_cell(5)), jnn.recurrent(jnn.lstm_cell(5)))
    return net, model, {"lstm_0": {"module": "rnn", "layer": 0}, "lstm_1": {"module": "rnn", "layer": 1}}, _x(2, 7, 3)


def _stacked_gru():
    net = _randomize(tnn.GRU(3, 4, num_layers=2, batch_first=True))
    model = jnn.serial(jnn.recurrent(jnn.gru_cell(4)), jnn.recurrent(jnn.gru_cell(4)))
    return net, model, {"gru_0": {"module": "rnn", "layer": 0}, "gru_1": {"module": "rnn", "layer": 1}}, _x(2, 6, 3)


def _rnn():
    net = _randomize(tnn.RNN(3, 4, batch_first=True))
    return net, jnn.serial(jnn.recurrent(jnn.rnn_cell(4))), {"rnn_0": "rnn"}, _x(2, 6, 3)


def _bidirectional_lstm():
    net = _randomize(tnn.LSTM(3, 4, batch_first=True, bidirectional=True))
    model = jnn.serial(jnn.bidirectional(jnn.lstm_cell(4)))
    return net, model, {"bidirectional_0/forward": {"module": "rnn", "reverse": False},
                        "bidirectional_0/backward": {"module": "rnn", "reverse": True}}, _x(2, 6, 3)


def _embedding():
    net = _randomize(tnn.Embedding(6, 6))   # square: a transposed table would load without a shape error
    return net, jnn.serial(jnn.embedding(6, 6)), {"embedding_0": {"module": "emb", "type": "embedding"}}, \
        np.array([[0, 5, 2, 2]])


def _layer_norm():
    net = _randomize(tnn.LayerNorm(5))
    return net, jnn.serial(jnn.layer_norm()), {"layer_norm_0": "ln"}, _x(3, 5)


def _bias_free_linear():
    net = _randomize(tnn.Linear(4, 4, bias=False))
    return net, jnn.serial(jnn.dense(4, use_bias=False)), {"dense_0": {"module": "fc", "type": "linear"}}, _x(3, 4)


@pytest.mark.parametrize("build", [_stacked_lstm, _stacked_gru, _rnn, _bidirectional_lstm, _embedding, _layer_norm,
                                   _bias_free_linear])
@pytest.mark.parametrize("source", ["state_dict", "module"])
def test_converted_modules_give_torch_outputs(build, source):
    net, model, mapping, x = build()
    spec = next(iter(mapping.values()))
    holder = _holder(**{spec if isinstance(spec, str) else spec["module"]: net})
    if source == "module":   # the module's class says its type: no "type" option needed
        mapping = {k: {o: v for o, v in (s if isinstance(s, dict) else {"module": s}).items() if o != "type"}
                   for k, s in mapping.items()}
    params = from_torch(holder if source == "module" else holder.state_dict(), mapping, like=_like(model, x))
    ours, _ = model.apply(params, {}, jnp.asarray(x))
    np.testing.assert_allclose(ours, _torch_out(net, x), atol=1e-5, rtol=1e-5)


def test_a_bias_free_weight_takes_its_type_from_like():
    emb, fc = _randomize(tnn.Embedding(6, 3)), _randomize(tnn.Linear(3, 3, bias=False))
    sd = {**{f"emb.{k}": v for k, v in emb.state_dict().items()}, **{f"fc.{k}": v for k, v in fc.state_dict().items()}}
    model = jnn.serial(jnn.embedding(6, 3), jnn.dense(3, use_bias=False))
    like = _like(model, np.zeros((1, 2), np.int32))
    params = from_torch(sd, {"embedding_0": "emb", "dense_0": "fc"}, like=like)
    np.testing.assert_array_equal(params["embedding_0"]["embedding"], emb.weight.detach().numpy())
    np.testing.assert_array_equal(params["dense_0"]["w"], fc.weight.detach().numpy().T)


def test_batch_norm_converts_through_torch_batch_norm():
    bn = _randomize(tnn.BatchNorm1d(4))
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    bn.eval()
    x = _x(5, 4)
    params, state = jnn.convert.torch_batch_norm(bn.state_dict())
    ours, _ = jnn.batch_norm(epsilon=bn.eps).apply(params, state, jnp.asarray(x), train=False)
    np.testing.assert_allclose(ours, bn(torch.from_numpy(x)).detach().numpy(), atol=1e-5, rtol=1e-5)


# ---- refused by name ----

def _sd(**modules):
    return {f"{name}.{k}": v for name, m in modules.items() for k, v in m.state_dict().items()}


def _holder(**modules):
    holder = tnn.Module()
    for name, m in modules.items():
        holder.add_module(name, m)
    return holder


W = "jnn.convert.from_torch: "
OPTIONS = "flattened_chw, layer, module, reverse, type"


@pytest.mark.parametrize("source,mapping,message", [
    (lambda: _sd(fc=tnn.Linear(3, 2)), {"dense_0": {"module": "fc", "layer": 1}},
     "'dense_0' maps 'fc', an nn.Linear, which takes no option 'layer' (its options: flattened_chw)"),
    (lambda: _sd(conv=tnn.Conv2d(3, 2, 3)), {"conv_0": {"module": "conv", "flattened_chw": (3, 1, 1)}},
     "'conv_0' maps 'conv', a convolution, which takes no option 'flattened_chw'"),
    (lambda: _sd(rnn=tnn.LSTM(3, 4)), {"lstm_0": {"module": "rnn", "flattened_chw": (1, 1, 3)}},
     "'lstm_0' maps 'rnn', an nn.LSTM, which takes no option 'flattened_chw' (its options: layer, reverse)"),
    (lambda: _sd(rnn=tnn.LSTM(3, 4)), {"lstm_0": {"module": "rnn", "layr": 1}},
     f"'lstm_0' maps 'rnn', an nn.LSTM, and 'layr' is not an option (the options: {OPTIONS})"),
    (lambda: _sd(emb=tnn.Embedding(5, 3)), {"embedding_0": {"module": "emb", "type": "embedding", "layer": 0}},
     "'embedding_0' maps 'emb', an nn.Embedding, which takes no option 'layer'"),
    (lambda: _sd(rnn=tnn.LSTM(3, 4, num_layers=2)), {"lstm_0": "rnn"},
     "'rnn' is an nn.LSTM of 2 layers; say which one 'lstm_0' takes: {'module': 'rnn', 'layer': 0} (0 to 1)"),
    (lambda: _sd(rnn=tnn.GRU(3, 4, num_layers=2)), {"gru_0": {"module": "rnn", "layer": 2}},
     "'gru_0': layer must be one of 'rnn''s layers [0, 1], got 2"),
    (lambda: _sd(rnn=tnn.LSTM(3, 4)), {"lstm_0": {"module": "rnn", "layer": True}},
     "'lstm_0': layer must be one of 'rnn''s layers [0], got True"),
    (lambda: _sd(rnn=tnn.LSTM(3, 4, bidirectional=True)), {"lstm_0": "rnn"},
     "'rnn' is a bidirectional nn.LSTM; say which direction 'lstm_0' takes: {'module': 'rnn', 'reverse': False} "
     "(forward) or True (backward)"),
    (lambda: _sd(rnn=tnn.LSTM(3, 4)), {"lstm_0": {"module": "rnn", "reverse": True}},
     "'lstm_0': reverse must be True or False; 'rnn' is not bidirectional, so it has no reverse direction"),
    (lambda: _sd(rnn=tnn.LSTM(3, 4, bidirectional=True)), {"lstm_0": {"module": "rnn", "reverse": "yes"}},
     "'lstm_0': reverse must be True or False, got 'yes'"),
    (lambda: _sd(rnn=tnn.LSTM(3, 4, proj_size=2)), {"lstm_0": "rnn"},
     "'rnn' is an LSTM with proj_size > 0, which jnn's lstm_cell does not have"),
    (lambda: _sd(bn=tnn.BatchNorm2d(3)), {"batch_norm_0": "bn"},
     "'bn' is a batch norm, whose running statistics are state, not params: convert it with "
     "jnn.convert.torch_batch_norm(state_dict, 'bn.') -> (params, state)"),
    (lambda: _holder(bn=tnn.BatchNorm2d(3)), {"batch_norm_0": "bn"},
     "'bn' is a batch norm, whose running statistics are state, not params: convert it with "
     "jnn.convert.torch_batch_norm(state_dict, 'bn.') -> (params, state)"),
    (lambda: _sd(attn=tnn.MultiheadAttention(4, 2)), {"attention_0": "attn"},
     "'attn' is an nn.MultiheadAttention, which from_torch does not convert (its fused q/k/v projection has no jnn "
     "counterpart to map onto)"),
    (lambda: _sd(features=tnn.Sequential(tnn.Linear(2, 2), tnn.ReLU(), tnn.Linear(2, 2))), {"dense_0": "features"},
     "'features' has no weight of its own; it holds modules (features.0.bias, features.0.weight, features.2.bias, "
     "features.2.weight ...): map each of them"),
    (lambda: _sd(fc=tnn.Linear(3, 2, bias=False)), {"dense_0": "fc"},
     "'fc' has a 2-D weight and no bias, which fits more than one module type (an nn.Linear(bias=False) or an "
     "nn.Embedding); say which: {'module': 'fc', 'type': 'linear' or 'embedding'}, pass like=, or pass the torch "
     "module itself instead of its state_dict"),
    (lambda: _sd(act=tnn.PReLU(3)), {"prelu_0": "act"},
     "'act' has a 1-D weight and no bias, which fits more than one module type (a norm without bias, or a PReLU); "
     "say which: {'module': 'act', 'type': 'norm'}, pass like=, or pass the torch module itself instead of its "
     "state_dict"),
    (lambda: _holder(act=tnn.PReLU(3)), {"prelu_0": "act"},
     "'act' is an nn.PReLU, which from_torch does not convert (it converts Conv1d, Conv2d, Conv3d, Embedding, GRU, "
     "GroupNorm, LSTM, LayerNorm, LazyConv1d, LazyConv2d, LazyConv3d, LazyLinear, Linear, RMSNorm, RNN)"),
    (lambda: _holder(up=tnn.ConvTranspose2d(3, 3, 2)), {"conv_transpose_0": "up"},
     "'up' is an nn.ConvTranspose2d, which from_torch does not convert (it converts Conv1d, Conv2d, Conv3d, "
     "Embedding, GRU, GroupNorm, LSTM, LayerNorm, LazyConv1d, LazyConv2d, LazyConv3d, LazyLinear, Linear, RMSNorm, "
     "RNN)"),
    (lambda: _sd(fc=tnn.Linear(3, 2)), {"dense_0": {"module": "fc", "type": "embedding"}},
     "'fc' is an nn.Linear, not type='embedding'"),
    (lambda: _sd(fc=tnn.Linear(3, 2)), {"dense_0": {"module": "fc", "type": "dense"}},
     "'fc': type must be one of ['conv', 'embedding', 'gru', 'linear', 'lstm', 'norm', 'rnn'], got 'dense'"),
    (lambda: _sd(act=tnn.PReLU(3)), {"dense_0": {"module": "act", "type": "linear"}},
     "'act' has a 1-D weight, which is not an nn.Linear's"),
    (lambda: _sd(ln=tnn.LayerNorm((2, 3))), {"layer_norm_0": "ln"},
     "'ln' normalizes over 2 axes (weight shape (2, 3)); jnn's norms take the last axis only"),
    (lambda: _holder(ln=tnn.LayerNorm(3, elementwise_affine=False)), {"layer_norm_0": "ln"},
     "no torch module 'ln' in the state_dict; its keys: []"),
])
def test_unconverted_types_and_unsupported_options_are_refused_by_name(source, mapping, message):
    error = KeyError if message.startswith("no torch module") else ValueError
    with pytest.raises(error, match=_exactly(W + message) if error is ValueError else re.escape(W + message)):
        from_torch(source(), mapping)
