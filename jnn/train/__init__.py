"""Training: a TrainState pytree, pure train/eval steps, ``fit`` and the tools around it."""
from jnn.train import callbacks, pbt
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
from jnn.train.pbt import PBT, PBTResult, fit_pbt
from jnn.train.step import (TrainState, default_metrics, epoch_order, init_train_state, loss_and_grad, make_eval_fn,
                            make_stepwise_epoch, make_train_epoch, make_train_step, penalty, step_key)

__all__ = ["TrainState", "init_train_state", "loss_and_grad", "default_metrics", "make_train_step", "step_key", "make_train_epoch",
           "make_stepwise_epoch", "epoch_order", "make_eval_fn",
           "penalty", "EarlyStopping", "FitResult", "fit", "predict", "split_validation", "Checkpointer",
           "freeze", "trainable_mask", "fit_population", "search", "optuna_search", "PopulationResult", "MemberResult",
           "callbacks", "pbt", "PBT", "PBTResult", "fit_pbt", "Data", "Start", "NonFinite", "NonFiniteError", "NonFiniteReport", "find_nonfinite", "compiler_options"]
__all__ += ["lr_find", "LRFinder", "find_batch_size", "step_bytes", "BatchSizeFound", "cross_validate",
            "CrossValidation", "mean_interval", "paired_test", "Interval"]
