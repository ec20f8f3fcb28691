"""Mutation testing with mutmut, one module at a time against the tests that cover it
(not collected by pytest; not run in CI: a full run takes hours on 2 cores).

Each module runs in a scratch copy of the repository with its own mutmut configuration
(``setup.cfg``: the module as ``source_paths``, its test files as the test selection, pytest in
one process), so a module's mutants only ever run the tests mapped to it below. Scores go to
stdout as a Markdown table; record them, and the surviving mutants judged equivalent, in
tests/MUTATION.md.

    python tests/mutation.py                     # every module in MODULES
    python tests/mutation.py jnn/data/idx.py     # one module
"""
from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]

MODULES = {
    "jnn/core.py": ["tests/test_core.py", "tests/test_key_plumbing.py", "tests/test_mutation_gaps.py",
                    "tests/test_xor_core.py"],
    "jnn/layers/basic.py": ["tests/test_core.py", "tests/test_mutation_gaps.py", "tests/test_options.py"],
    "jnn/layers/dropout.py": ["tests/test_dropout.py", "tests/test_key_plumbing.py"],
    "jnn/layers/activations.py": ["tests/test_activations.py", "tests/test_options.py"],
    "jnn/layers/pooling.py": ["tests/test_pooling.py", "tests/test_properties.py"],
    "jnn/layers/conv.py": ["tests/test_conv.py", "tests/test_properties.py"],
    "jnn/layers/norm.py": ["tests/test_norm.py"],
    "jnn/layers/attention.py": ["tests/test_attention.py", "tests/test_mutation_gaps.py", "tests/test_options.py"],
    "jnn/losses.py": ["tests/test_losses_metrics.py", "tests/test_mutation_gaps.py", "tests/test_properties.py",
                      "tests/test_regularization.py"],
    "jnn/train/step.py": ["tests/test_train.py", "tests/test_key_plumbing.py", "tests/test_mutation_gaps.py"],
    "jnn/train/loop.py": ["tests/test_train.py", "tests/test_mutation_gaps.py", "tests/test_callbacks.py"],
    "jnn/data/idx.py": ["tests/test_data_integrity.py", "tests/test_data_mnist.py", "tests/test_properties.py"],
}

COPY = ["jnn", "tests", "experiments", "pyproject.toml", "README.md"]


def run_module(module: str, tests: list[str]) -> dict[str, int]:
    with tempfile.TemporaryDirectory(prefix="jnn-mutation-") as scratch:
        work = pathlib.Path(scratch)
        for name in COPY:
            src = ROOT / name
            (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
        (work / "setup.cfg").write_text(
            "[mutmut]\n"
            f"source_paths={module}\n"
            f"pytest_add_cli_args_test_selection={','.join(tests)}\n"
            "pytest_add_cli_args=-o,addopts=,-p,no:cacheprovider,-q,-x\n")
        env = {**os.environ, "PYTHONPATH": str(work),
               "JNN_DATA_DIR": os.environ.get("JNN_DATA_DIR", str(ROOT.parent / "shared" / "data"))}
        subprocess.run([sys.executable, "-m", "mutmut", "run"], cwd=work, env=env, check=False)
        out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=work, env=env,
                             capture_output=True, text=True).stdout
        counts: dict[str, int] = {}
        for status in re.findall(r":\s*(killed|survived|timeout|suspicious|no tests|skipped)\s*$", out, re.M):
            counts[status] = counts.get(status, 0) + 1
        survivors = [line.split(":")[0].strip() for line in out.splitlines() if line.rstrip().endswith("survived")]
        (ROOT / "tests" / "mutation-survivors").mkdir(exist_ok=True)
        (ROOT / "tests" / "mutation-survivors" / (module.replace("/", "_") + ".txt")).write_text("\n".join(survivors))
        return counts


def main(argv: list[str]) -> int:
    chosen = argv or list(MODULES)
    print("| module | mutants | killed | survived | other | score |\n|---|---|---|---|---|---|")
    for module in chosen:
        counts = run_module(module, MODULES[module])
        total = sum(counts.values())
        killed = counts.get("killed", 0) + counts.get("timeout", 0)
        score = f"{killed / total:.0%}" if total else "n/a"
        other = total - killed - counts.get("survived", 0)
        print(f"| {module} | {total} | {killed} | {counts.get('survived', 0)} | {other} | {score} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
