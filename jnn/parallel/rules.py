"""Sharding rules: which parameter is split along which mesh axis, chosen by :mod:`jnn.tree` path
pattern. The first matching :class:`Rule` wins; unmatched leaves are replicated; a required rule
that matches nothing is an error.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, NamedTuple, Sequence

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from jnn import _checks as checks
from jnn import tree as _tree

__all__ = ["Rule", "fsdp", "logical", "tensor_parallel", "param_specs", "TRANSFORMER_AXES", "AXIS_RULES"]

#: Logical axes of attention and transformer-MLP weights (Megatron layout: one all-reduce per block each way).
TRANSFORMER_AXES: tuple[tuple[str | tuple[str, ...], tuple], ...] = (
    (("query/w", "*/query/w", "key/w", "*/key/w", "value/w", "*/value/w"), ("embed", "heads")),
    (("query/b", "*/query/b", "key/b", "*/key/b", "value/b", "*/value/b"), ("heads",)),
    (("out/w", "*/out/w"), ("heads", "embed")),
    (("mlp/dense_0/w", "*/mlp/dense_0/w"), ("embed", "mlp")),
    (("mlp/dense_0/b", "*/mlp/dense_0/b"), ("mlp",)),
    (("mlp/dense_1/w", "*/mlp/dense_1/w"), ("mlp", "embed")),
)

#: Logical axis -> mesh axis (``None``: replicated), as Flax's ``logical_axis_rules``.
AXIS_RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", "data"), ("heads", "model"), ("mlp", "model"), ("embed", None), ("vocab", None))


class Rule(NamedTuple):
    """One sharding rule: ``patterns`` (:func:`jnn.tree.matches`), ``spec`` (mesh axes per dimension,
    or ``(shape, mesh) -> PartitionSpec``), ``required`` (raise if it matches no parameter).

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> params = {"dense_0": {"w": jnp.zeros((4, 2)), "b": jnp.zeros(2)}}
      >>> mesh = jax.sharding.AbstractMesh((1, 2), ("data", "model"))
      >>> rule = jnn.parallel.Rule("dense_0/w", (None, "model"))   # split w's columns along "model"
      >>> specs = jnn.parallel.param_specs(params, mesh, [rule])
      >>> specs["dense_0"]["w"], specs["dense_0"]["b"]
      (P(None, 'model'), P())
    """

    patterns: str | tuple[str, ...]
    spec: Any
    required: bool = True


def _largest_divisible_dim(axis: str, min_size: int) -> Callable:
    def spec(shape, mesh) -> P:
        dims = [d for d in np.argsort(shape, kind="stable")[::-1] if shape[d] % mesh.shape[axis] == 0]
        if not dims or int(np.prod(shape, dtype=np.int64)) < min_size:
            return P()
        return P(*[axis if d == dims[0] else None for d in range(len(shape))])

    spec.axes = (axis,)
    return spec


@checks.declare_as("jnn.parallel.fsdp", axis=checks.satisfies(lambda a: isinstance(a, str), "a mesh axis name"),
                   min_size=checks.integer(0))
def fsdp(patterns: str | Iterable[str] = "*", *, axis: str = "data", min_size: int = 0) -> list[Rule]:
    """ZeRO-3 / FSDP: shards each matching parameter along ``axis`` on its largest dimension divisible
    by the axis size (fewer than ``min_size`` elements, or no such dimension: replicated).

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> params = {"w": jnp.zeros((4, 6)), "b": jnp.zeros(6)}
      >>> mesh = jax.sharding.AbstractMesh((2, 1), ("data", "model"))
      >>> specs = jnn.parallel.param_specs(params, mesh, jnn.parallel.fsdp(min_size=8))
      >>> specs["w"], specs["b"]                   # b is under min_size: replicated
      (P(None, 'data'), P())
    """
    patterns = _tree.check_patterns("jnn.parallel.fsdp", "patterns", patterns)
    return [Rule(patterns, _largest_divisible_dim(axis, min_size))]


def logical(table: Sequence[tuple[Any, tuple]], axis_rules: Sequence[tuple[str, str | None]] = AXIS_RULES,
            *, required: bool = True) -> list[Rule]:
    """Rules from ``(patterns, logical axis names)`` pairs, each name mapped to a mesh axis by
    ``axis_rules`` (as Flax's ``logical_axis_rules``).

    Example:
      >>> import jnn
      >>> jnn.parallel.logical([("dense_0/w", ("embed", "mlp"))])
      [Rule(patterns=('dense_0/w',), spec=(None, 'model'), required=True)]
    """
    mapping = dict(axis_rules)
    rules = []
    for patterns, names in table:
        unknown = [n for n in names if n is not None and n not in mapping]
        checks.require(not unknown, "jnn.parallel.logical", f"logical axes {unknown} of {patterns!r} have no entry in "
                       f"axis_rules {list(mapping)}; add (name, mesh_axis_or_None) pairs")
        patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)
        rules.append(Rule(patterns, tuple(None if n is None else mapping[n] for n in names), required))
    return rules


def tensor_parallel(extra: Sequence[tuple[Any, tuple]] = (),
                    axis_rules: Sequence[tuple[str, str | None]] = AXIS_RULES) -> list[Rule]:
    """Megatron-style tensor parallelism for attention and transformer MLPs (:data:`TRANSFORMER_AXES`)
    plus ``extra`` ``(patterns, logical axes)`` pairs of your own.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> params = {"mlp": {"dense_0": {"w": jnp.zeros((4, 8)), "b": jnp.zeros(8)},
      ...                   "dense_1": {"w": jnp.zeros((8, 4)), "b": jnp.zeros(4)}}}
      >>> mesh = jax.sharding.AbstractMesh((1, 2), ("data", "model"))
      >>> specs = jnn.parallel.param_specs(params, mesh, jnn.parallel.tensor_parallel())["mlp"]
      >>> specs["dense_0"]["w"], specs["dense_1"]["w"], specs["dense_1"]["b"]
      (P(None, 'model'), P('model', None), P())
    """
    return logical(extra, axis_rules) + logical(TRANSFORMER_AXES, axis_rules, required=False)


def _names(entry) -> tuple:
    """The mesh axes of one spec entry (``None``, a name or a tuple of names)."""
    return entry if isinstance(entry, tuple) else () if entry is None else (entry,)


def _spec_axes(spec) -> list[str]:
    return list(getattr(spec, "axes", ())) if callable(spec) else [n for entry in spec for n in _names(entry)]


def _leaf_spec(path: str, shape, mesh, spec) -> P:
    spec = spec(shape, mesh) if callable(spec) else P(*spec)
    checks.require(len(spec) <= len(shape), "jnn.parallel", f"rule {tuple(spec)} has {len(spec)} entries for "
                   f"parameter {path!r} of shape {tuple(shape)}")
    for dim, entry in enumerate(spec):
        names = _names(entry)
        size = int(np.prod([mesh.shape[n] for n in names], dtype=np.int64))
        checks.require(shape[dim] % size == 0, "jnn.parallel", f"parameter {path!r} of shape {tuple(shape)} cannot be "
                       f"split along mesh axes {names} (size {size}) on dimension {dim}: {shape[dim]} is not "
                       f"divisible by {size}")
    return spec


def _check_rules(rules) -> list[Rule]:
    """``rules`` as a list of :class:`Rule`."""
    checks.require(rules is None or isinstance(rules, (list, tuple)) and not isinstance(rules, Rule), "jnn.parallel",
                   f"rules must be a list of Rule (e.g. jnn.parallel.fsdp()), got {type(rules).__name__}", TypeError)
    checked = []
    for r in rules or []:
        checks.require(isinstance(r, Rule) or isinstance(r, (tuple, list)) and len(r) in (2, 3), "jnn.parallel",
                       f"each rule must be a Rule or a (patterns, spec) pair, got {r!r}", TypeError)
        rule = r if isinstance(r, Rule) else Rule(*r)
        _tree.check_patterns("jnn.parallel", "rule", rule.patterns)
        checked.append(rule)
    return checked


def param_specs(params, mesh, rules: Sequence[Rule] | None = None):
    """A tree of ``PartitionSpec`` for ``params`` (arrays or ``ShapeDtypeStruct``) on ``mesh``.

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> jnn.parallel.param_specs({"w": jnp.zeros((4, 2))}, jnn.parallel.make_mesh())   # no rules: replicated
      {'w': P()}
    """
    rules = _check_rules(rules)
    for rule in rules:
        missing = [a for a in _spec_axes(rule.spec) if a not in mesh.shape]
        checks.require(not missing, "jnn.parallel", f"rule {rule.patterns!r} names mesh axes {missing} that the mesh "
                       f"does not have (its axes: {tuple(mesh.axis_names)})")
    used = [False] * len(rules)

    def spec_for(path, leaf):
        p = _tree.path_str(path)
        for i, rule in enumerate(rules):
            if _tree.matches(p, rule.patterns):
                used[i] = True
                return _leaf_spec(p, leaf.shape, mesh, rule.spec)
        return P()

    specs = jax.tree_util.tree_map_with_path(spec_for, params)
    unused = [rule.patterns for rule, u in zip(rules, used) if rule.required and not u]
    if unused:
        paths = [p for p, _ in _tree.leaves_with_paths(params)]
        raise ValueError(f"jnn.parallel: sharding rule patterns {unused} match no parameter; the parameter paths "
                         f"are {paths[:12]}{' ...' if len(paths) > 12 else ''}")
    return specs
