"""Training: a TrainState pytree, pure train/eval steps, and ``fit``.

Example:
  >>> import jax, optax, jnn
  >>> x, y = jnn.data.xor()
  >>> model = jnn.serial(jnn.dense(4), jnn.tanh(), jnn.dense(1))
  >>> result = jnn.train.fit(model, jnn.losses.binary_cross_entropy_with_logits, optax.adam(0.1), (x, y),
  ...                        key=jax.random.key(0), epochs=100, batch_size=4, metrics={}, verbose=False,
  ...                        progress=False)
  >>> len(result.history["loss"])
  100
"""
from jnn.train import callbacks
from jnn.train.checkpoint import Checkpointer
from jnn.train.compiler import compiler_options
from jnn.train.freeze import freeze, trainable_mask
from jnn.train.population import MemberResult, PopulationResult, fit_population
from jnn.train.callbacks import EarlyStopping
from jnn.train.engine import Data, NonFinite, Start
from jnn.train.loop import FitResult, fit, predict, split_validation
from jnn.train.tuning import optuna_search, search
from jnn.train.finders import BatchSizeFound, LRFinder, find_batch_size, lr_find, step_bytes
from jnn.train.crossval import CrossValidation, Interval, cross_validate, mean_interval, paired_test
from jnn.train.guard import NonFiniteError
from jnn.train.nonfinite import NonFiniteReport, find_nonfinite
from jnn.train.step import (TrainState, epoch_order, init_train_state, make_eval_fn, make_stepwise_epoch,
                            make_train_epoch, make_train_step, penalty, step_key)

__all__ = ["TrainState", "init_train_state", "make_train_step", "step_key", "make_train_epoch",
           "make_stepwise_epoch", "epoch_order", "make_eval_fn",
           "penalty", "EarlyStopping", "FitResult", "fit", "predict", "split_validation", "Checkpointer",
           "freeze", "trainable_mask", "fit_population", "search", "optuna_search", "PopulationResult", "MemberResult",
           "callbacks", "Data", "Start", "NonFinite", "NonFiniteError", "NonFiniteReport", "find_nonfinite", "compiler_options"]
__all__ += ["lr_find", "LRFinder", "find_batch_size", "step_bytes", "BatchSizeFound", "cross_validate", "CrossValidation", "mean_interval", "paired_test", "Interval"]
