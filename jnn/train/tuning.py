"""Hyperparameter search as populations: configs grouped by their shape-changing fields, each
group trained at once with :func:`jnn.train.fit_population`."""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jnn import _checks as checks
from jnn.train import guard
from jnn.train.engine import hold_out
from jnn.train.population import MakeModel, MakeOptimizer, MemberResult, as_keys, fit_population
from jnn.train.step import LossFn

__all__ = ["search", "optuna_search"]


class _Fields(dict):  # the hyperparameters make_model gets: a field no config has lists those it has
    def __missing__(self, name):
        raise KeyError(f"search: hp[{name!r}] was read; the configs have {sorted(self)} (optuna_search: add it)")


def _traced(error: Exception, hp) -> Exception:   # error, or, about a tracer, one naming the traced fields
    traced = sorted(k for k, v in hp.items() if isinstance(v, jax.core.Tracer))
    make = (TypeError, ValueError)[isinstance(error, ValueError)]
    return error if not traced or "Tracer" not in str(error) else make(
        f"search: {error}; the fields {traced} are traced arrays, so a field that sets a shape or a Python value "
        f"(a layer size, batch_size) must be listed in static=[...]")


class _WithStatic(NamedTuple):  # fn with the static fields added to hp; hashable, for the cache
    fn: Callable
    fixed: tuple

    def __call__(self, hp):
        try:
            return self.fn(_Fields({**dict(self.fixed), **hp}))
        except (TypeError, ValueError) as e:   # a tracer where a Python value is needed
            raise _traced(e, hp)


def _number(value) -> bool:
    """A scalar number (NaN included: a member that diverges is a fault populations survive)."""
    if isinstance(value, (str, bytes)):
        return False
    try:
        array = np.asarray(value)
    except Exception:  # noqa: BLE001 - anything NumPy cannot read is not a number
        return False
    return array.shape == () and (array.dtype == bool or np.issubdtype(array.dtype, np.number))


def _group_key(config: Mapping[str, Any], static: Sequence[str]) -> tuple:
    return tuple(checks.hashable("search", f"static field {name!r}", config[name]) for name in static)


def _check_configs(configs, static, fit_kwargs) -> list[str]:
    """The ``static`` field names; the other fields must hold numbers (they become traced arrays)."""
    static, fields = [static] if isinstance(static, str) else list(static), set(configs[0])
    checks.among("search", "static fields", static, fields, "config fields")
    for i, config in enumerate(configs):
        for name, value in config.items():
            if name not in static and not _number(value):
                raise ValueError(f"search: config {i}'s {name!r} must be a number (or list {name!r} in static for "
                                 f"shape-changing or non-numeric values), got {value!r}")
    if "batch_size" in fields and ("batch_size" not in static or "batch_size" in fit_kwargs):
        raise ValueError("search: batch_size changes array shapes, so it must be listed in static" if "batch_size"
                         not in static else "search: batch_size is a config field; do not also pass batch_size=")
    for config in configs if "batch_size" in fields else ():
        checks.positive_int("search", "batch_size", config["batch_size"])
    return static


@checks.declare(configs=checks.records)
def search(make_model: MakeModel, loss: LossFn, make_optimizer: MakeOptimizer, train_data, *,
           configs: Sequence[Mapping[str, Any]], static: Sequence[str] = (), key: jax.Array,
           val_split: float = 0.0, **fit_kwargs) -> list[MemberResult]:
    """One :class:`MemberResult` per config (dicts of one set of fields), in order; configs sharing
    the ``static`` (shape-changing) fields, passed as Python values, train as one population, the
    others' fields traced. Config ``i`` trains with ``split(key, len(configs))[i]`` (or ``key[i]``);
    other keyword arguments go to :func:`fit_population`.

    Example:
      >>> import jax, optax, jnn
      >>> make_model = lambda hp: jnn.serial(jnn.dense(hp["width"]), jnn.tanh(), jnn.dense(1))
      >>> configs = [{"width": 4, "lr": 0.1}, {"width": 8, "lr": 0.1}, {"width": 4, "lr": 0.01}]
      >>> results = jnn.train.search(make_model, jnn.losses.mse, lambda hp: optax.adam(hp["lr"]), jnn.data.xor(),
      ...                            configs=configs, static=["width"], key=jax.random.key(0), epochs=2,
      ...                            batch_size=4, metrics={})
      >>> [r.hparams["width"] for r in results], [len(r.history["loss"]) for r in results]
      ([4, 8, 4], [2, 2, 2])
    """
    static = _check_configs(configs, static, fit_kwargs)
    keys = as_keys("search", key, len(configs))
    train_data, fit_kwargs["val_data"] = hold_out("search", train_data, fit_kwargs.get("val_data"), val_split,
                                                  jax.random.split(keys[0])[1])
    groups: dict[tuple, list[int]] = {}
    for i, config in enumerate(configs):
        groups.setdefault(_group_key(config, static), []).append(i)
    dynamic = [f for f in configs[0] if f not in static]
    results: list[MemberResult | None] = [None] * len(configs)
    for values, members in groups.items():
        fixed = tuple(zip(static, values))
        kwargs = {**fit_kwargs, **({"batch_size": dict(fixed)["batch_size"]} if "batch_size" in static else {})}
        hparams = {f: jnp.asarray([configs[i][f] for i in members]) for f in dynamic}
        group = fit_population(_WithStatic(make_model, fixed), loss, _WithStatic(make_optimizer, fixed),
                               train_data, hparams=hparams, key=keys[jnp.asarray(members)], **kwargs)
        for j, i in enumerate(members):
            results[i] = group.member(j)._replace(hparams=configs[i])
    return results


def _optuna(kind: str):
    """Whether a value is an ``optuna`` object of ``kind`` (needs optuna: ImportError names the extra)."""
    def test(value):
        try:
            import optuna
        except ImportError:
            raise ImportError("optuna_search needs optuna: pip install 'jnn[search]' (or pip install optuna)") from None
        return isinstance(value, optuna.study.Study if kind == "study" else optuna.distributions.BaseDistribution)
    return test


@checks.declare(trials=checks.positive_int, population_size=checks.positive_int,
                study=checks.kind(_optuna("study"), "an optuna.Study (optuna.create_study(...))"),
                space=checks.all_of(checks.satisfies(lambda s: isinstance(s, Mapping) and s, "a non-empty dict "
                                                     "{name: optuna.distributions.*}"),
                                    checks.each(checks.satisfies(_optuna("distribution"), "an optuna distribution (e.g. "
                                                "optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True))"))))
def optuna_search(make_model: MakeModel, loss: LossFn, make_optimizer: MakeOptimizer, train_data, *,
                  study, space: Mapping[str, Any], trials: int, population_size: int, key: jax.Array,
                  static: Sequence[str] = (), monitor: str = "val_accuracy", prune: bool = True,
                  **fit_kwargs) -> list[tuple[Any, MemberResult]]:
    """``[(trial, result)]``: an Optuna ``study`` asks ``population_size`` trials at a time over
    ``space`` (``{name: optuna.distributions.*}``), trained at once by :func:`search` (other arguments
    as there), each told its best ``monitor`` (``prune``: per epoch). Needs ``jnn[search]``.

    Example:
      >>> import jax, optax, optuna, jnn
      >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
      >>> x, y = jnn.data.xor()
      >>> study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=0))
      >>> results = jnn.train.optuna_search(
      ...     lambda hp: jnn.serial(jnn.dense(4), jnn.tanh(), jnn.dense(1)), jnn.losses.mse,
      ...     lambda hp: optax.sgd(hp["lr"]), (x, y), study=study,
      ...     space={"lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)}, trials=4,
      ...     population_size=2, key=jax.random.key(0), monitor="val_loss", val_data=(x, y),
      ...     epochs=2, batch_size=4, metrics={})
      >>> len(results), len(study.trials)
      (4, 4)
    """
    import optuna
    static_fields = [static] if isinstance(static, str) else list(static)
    checks.among("optuna_search", "static fields", static_fields, list(space), "in space, whose fields are")
    checks.require(len(study.directions) == 1, "optuna_search", f"study must have one objective (the monitored "
                   f"metric), got {len(study.directions)} directions")
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    keys = as_keys("optuna_search", key, trials)
    train_data, fit_kwargs["val_data"] = hold_out("optuna_search", train_data, fit_kwargs.get("val_data"),
                                                  fit_kwargs.pop("val_split", 0.0), jax.random.split(keys[0])[1])
    _check_monitor(monitor, loss, fit_kwargs)
    done: list[tuple[Any, MemberResult]] = []
    while len(done) < trials:
        asked = [study.ask(dict(space)) for _ in range(min(population_size, trials - len(done)))]
        configs = [dict(t.params) for t in asked]
        groups: dict[tuple, list[int]] = {}
        for i, config in enumerate(configs):
            groups.setdefault(_group_key(config, static_fields), []).append(i)
        results: list[MemberResult | None] = [None] * len(asked)
        pruned = np.zeros(len(asked), bool)
        for members in groups.values():
            def report(epoch, history, members=members):
                checks.logged_metric("optuna_search", "monitor", monitor, history)
                values = history[monitor][epoch - 1]
                stop = np.zeros(len(members), bool)
                for j, i in enumerate(members):
                    if np.isfinite(values[j]):
                        asked[i].report(float(values[j]), epoch)
                        stop[j] = pruned[i] = asked[i].should_prune()
                return stop
            group = search(make_model, loss, make_optimizer, train_data, configs=[configs[i] for i in members],
                           static=static, key=keys[jnp.asarray([len(done) + i for i in members])],
                           prune=report if prune else None, **fit_kwargs)
            for i, result in zip(members, group):
                results[i] = result
        for i, (trial, result) in enumerate(zip(asked, results)):
            checks.logged_metric("optuna_search", "monitor", monitor, result.history)
            if pruned[i]:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            elif not np.isfinite(result.history[monitor]).any():  # diverged from the first epoch
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                values = result.history[monitor]
                study.tell(trial, float(np.nanmax(values) if maximize else np.nanmin(values)))
            done.append((trial, result))
    return done


def _check_monitor(monitor, loss, fit_kwargs) -> None:
    """``monitor`` must be a metric the populations will log (as :func:`fit_population` names them)."""
    metrics = guard.default_metrics(loss) if fit_kwargs.get("metrics") is None else dict(fit_kwargs["metrics"])
    names = ["loss", *metrics, "lr"]
    has_val = fit_kwargs.get("val_data") is not None
    names += [f"val_{k}" for k in ["loss", *metrics]] if has_val else []
    hint = " (val_* metrics need val_data or val_split)" if str(monitor).startswith("val_") and not has_val else ""
    checks.logged_metric("optuna_search", "monitor", monitor, names, hint)
