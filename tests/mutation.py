"""Mutation testing with mutmut, one module at a time against the tests that cover it
(not collected by pytest; not run in CI: a full run takes hours on 2 cores).

Each module runs in a scratch copy of the repository with its own mutmut configuration
(``setup.cfg``: the whole package as ``source_paths`` so that it imports, only the module in
``only_mutate``, its test files as the test selection), so a module's mutants only ever run the
tests mapped to it below; mutmut then runs, per mutant, only the tests that called the mutated
function. Scores go to
stdout as a Markdown table, and each module's surviving mutants as diffs to
tests/mutation-survivors/ (git-ignored); record the scores, and the surviving mutants judged equivalent, in
tests/MUTATION.md.

    python tests/mutation.py                     # every module in MODULES
    python tests/mutation.py jnn/data/idx.py     # one module
    python tests/mutation.py --again jnn/core.py # only the mutants its last run left alive
    python tests/mutation.py --jobs 1 ...        # one mutant at a time (default: one per CPU)
    python tests/mutation.py --only 'jnn.train.step.x_make_train_step__mutmut_*' jnn/train/step.py
                                                 # only the mutants matching a pattern (fnmatch)
    python tests/mutation.py --sample 30 --seed 0 jnn/core.py
                                                 # a uniform random sample of 30 of its mutants

mutmut writes each mutant's result as it finishes, so a run stopped partway (SIGKILL works; a run
started in the background ignores SIGINT) keeps what it checked and this script still writes its
survivors. But a new `mutmut run` resets the results of every mutant it is not told to run.
"""
from __future__ import annotations

import fnmatch
import os
import pathlib
import random
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]

MODULES = {
    "jnn/core.py": ["tests/test_core.py", "tests/test_core_details.py", "tests/test_composition.py",
                    "tests/test_key_plumbing.py", "tests/test_mutation_gaps.py", "tests/test_xor_core.py",
                    "tests/test_probes.py", "tests/test_pytree_inputs.py", "tests/test_testing.py",
                    "tests/test_reliability_params.py", "tests/test_routing.py"],
    "jnn/layers/basic.py": ["tests/test_core.py", "tests/test_basic_layers.py", "tests/test_mutation_gaps.py",
                            "tests/test_options.py"],
    "jnn/layers/dropout.py": ["tests/test_dropout.py", "tests/test_key_plumbing.py"],
    "jnn/layers/activations.py": ["tests/test_activations.py", "tests/test_options.py"],
    "jnn/layers/pooling.py": ["tests/test_pooling.py", "tests/test_properties.py"],
    "jnn/layers/conv.py": ["tests/test_conv.py", "tests/test_conv_cpu.py", "tests/test_conv_details.py",
                           "tests/test_properties.py"],
    "jnn/layers/norm.py": ["tests/test_norm.py", "tests/test_norm_details.py"],
    "jnn/layers/attention.py": ["tests/test_attention.py", "tests/test_mutation_gaps.py", "tests/test_options.py",
                                "tests/test_attention_details.py", "tests/test_cross_attention.py",
                                "tests/test_generate.py", "tests/test_reliability_generation.py",
                                "tests/test_transformer.py", "tests/test_attention_hooks.py"],
    "jnn/layers/cells.py": ["tests/test_recurrent.py", "tests/test_cells_details.py", "tests/test_options.py"],
    "jnn/layers/recurrent.py": ["tests/test_recurrent.py", "tests/test_recurrent_details.py", "tests/test_options.py",
                                "tests/test_composition.py"],
    "jnn/layers/embedding.py": ["tests/test_embedding_text.py", "tests/test_options.py",
                                "tests/test_reliability_params.py", "tests/test_precision.py"],
    "jnn/layers/positional.py": ["tests/test_positional_details.py", "tests/test_attention.py",
                                 "tests/test_attention_details.py", "tests/test_transformer.py",
                                 "tests/test_options.py", "tests/test_precision.py", "tests/test_hub.py"],
    "jnn/layers/remat.py": ["tests/test_repeat.py", "tests/test_train.py"],
    "jnn/layers/repeat.py": ["tests/test_repeat.py", "tests/test_mutation_gaps.py", "tests/test_transformer.py"],
    "jnn/layers/transformer.py": ["tests/test_transformer_details.py", "tests/test_transformer.py",
                                  "tests/test_encoder_decoder.py", "tests/test_generate.py", "tests/test_cross_attention.py",
                                  "tests/test_attention_details.py", "tests/test_options.py", "tests/test_precision.py",
                                  "tests/test_registry.py"],
    "jnn/losses.py": ["tests/test_losses_metrics.py", "tests/test_mutation_gaps.py", "tests/test_properties.py",
                      "tests/test_regularization.py"],
    "jnn/train/step.py": ["tests/test_train.py", "tests/test_step_details.py", "tests/test_key_plumbing.py",
                          "tests/test_mutation_gaps.py", "tests/test_stream.py", "tests/test_population.py"],
    "jnn/train/loop.py": ["tests/test_loop_details.py", "tests/test_train.py", "tests/test_mutation_gaps.py",
                          "tests/test_callbacks.py", "tests/test_reliability_arguments.py", "tests/test_reliability_nonfinite.py",
                          "tests/test_regularization.py", "tests/test_checkpoint.py", "tests/test_stream.py",
                          "tests/test_pytree_training.py", "tests/test_key_plumbing.py", "tests/test_stream_resume.py",
                          "tests/test_resume_reliability.py"],
    "jnn/train/engine.py": ["tests/test_loop_details.py", "tests/test_train.py", "tests/test_stream.py",
                            "tests/test_population.py", "tests/test_callbacks.py", "tests/test_reliability_nonfinite.py",
                            "tests/test_stream_resume.py", "tests/test_checkpoint.py",
                            "tests/test_reliability_population.py"],
    "jnn/_checks.py": ["tests/test_reliability_arguments.py", "tests/test_reliability_params.py",
                       "tests/test_reliability_data.py", "tests/test_reliability_losses.py",
                       "tests/test_reliability_population.py", "tests/test_options.py", "tests/test_data_misuse.py",
                       "tests/test_parallel_misuse.py", "tests/test_io_misuse.py", "tests/test_checks_rules.py",
                       "tests/test_names.py", "tests/test_norm.py", "tests/test_losses_metrics.py", "tests/test_pbt.py",
                       "tests/test_population.py", "tests/test_loop_details.py", "tests/test_conv_details.py",
                       "tests/test_repeat.py", "tests/test_attention_details.py", "tests/test_stream.py",
                       "tests/test_checkpoint.py", "tests/test_resume_reliability.py"],
    "jnn/data/idx.py": ["tests/test_data_integrity.py", "tests/test_data_mnist.py", "tests/test_properties.py"],
}

SURVIVORS = ROOT / "tests" / "mutation-survivors"   # one .diff per module, git-ignored scratch

PRELOAD = ["numpy", "scipy.special", "jax", "jax.numpy", "optax", "chex", "pytest", "jnn"]

COPY = ["jnn", "tests", "experiments", "pyproject.toml", "README.md"]


def _setup_cfg(module: str, tests: list[str]) -> str:
    """mutmut's configuration; its list values are one item per line."""
    def listed(items: list[str]) -> str:
        return "".join(f"\n    {item}" for item in items)
    return ("[mutmut]\n"
            f"source_paths={listed(['jnn'])}\n"      # the whole package is importable from mutants/ ...
            f"only_mutate={listed([module])}\n"      # ... but only this module is mutated
            f"pytest_add_cli_args_test_selection={listed(tests)}\n"
            f"also_copy={listed(['experiments', 'README.md'])}\n"   # tests import experiments, read README
            f"pytest_add_cli_args={listed(['-o', 'addopts=', '-p', 'no:cacheprovider', '-q'])}\n"
            # mutmut forks each mutant's run. XLA's CPU client does not survive a fork: forked
            # from a process that had run tests, or collected test files that make arrays at import,
            # children hung and were scored as timeouts. So the fork server only imports modules
            # (which starts no backend) and each child collects and runs its tests itself.
            "process_isolation=forkserver\n"
            "forkserver_warmup=import\n"
            "preload_modules_file=mutation-preload.txt\n")


# mutmut's own first steps, without its test runs: writes mutants/ and each file's .meta, whose
# "exit_code_by_key" lists the file's mutant names.
GENERATE = """
import glob, json, os
from mutmut.__main__ import copy_src_dir, copy_also_copy_files, setup_source_paths, create_mutants
from mutmut.mutation.trampoline import set_mutant_under_test
set_mutant_under_test("mutant_generation"); os.makedirs("mutants", exist_ok=True)
copy_src_dir(); copy_also_copy_files(); setup_source_paths(); create_mutants(2)
for meta in glob.glob("mutants/**/*.meta", recursive=True):
    print("\\n".join(json.load(open(meta))["exit_code_by_key"]))
"""


def sample_names(work: pathlib.Path, env: dict, size: int, seed: int) -> list[str]:
    """A uniform random sample of ``size`` of the module's mutant names (all, if fewer)."""
    out = subprocess.run([sys.executable, "-c", GENERATE], cwd=work, env=env, capture_output=True,
                         text=True, check=True).stdout
    names = sorted(name for name in out.split() if "__mutmut_" in name)
    return sorted(random.Random(seed).sample(names, min(size, len(names))))


def run_module(module: str, tests: list[str], only: list[str] | None = None, jobs: int | None = None,
               sample: tuple[int, int] | None = None) -> dict[str, int]:
    """Runs mutmut on ``module`` (only the mutants named in ``only``, or a random ``sample`` =
    (size, seed) of them, if given); returns counts per status and writes the mutants left alive
    (survived, no tests) as diffs to SURVIVORS."""
    with tempfile.TemporaryDirectory(prefix="jnn-mutation-") as scratch:
        work = pathlib.Path(scratch)
        for name in COPY:
            src = ROOT / name
            (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
        (work / "setup.cfg").write_text(_setup_cfg(module, tests))
        (work / "mutation-preload.txt").write_text("\n".join(PRELOAD))
        env = {**os.environ, "PYTHONPATH": str(work),
               "JNN_DATA_DIR": os.environ.get("JNN_DATA_DIR", str(ROOT.parent / "shared" / "data"))}
        jobs_arg = ["--max-children", str(jobs)] if jobs else []   # default: one per CPU
        if sample:
            only = sample_names(work, env, *sample)
        subprocess.run([sys.executable, "-m", "mutmut", "run", *jobs_arg, *(only or [])], cwd=work, env=env,
                       check=False)
        out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=work, env=env,
                             capture_output=True, text=True).stdout
        status = dict(re.findall(r"^\s*(\S+):\s*(killed|survived|timeout|suspicious|no tests|skipped|"
                                 r"not checked)\s*$", out, re.M))
        if only:   # names (--again) or patterns (--only): the rest were not run this time
            picked = {name: value for name, value in status.items()
                      if any(fnmatch.fnmatchcase(name, pattern) for pattern in only)}
            status = {**{name: "not checked" for name in only if not any(c in name for c in "*?[")}, **picked}
        counts: dict[str, int] = {}
        for value in status.values():
            counts[value] = counts.get(value, 0) + 1
        alive = [name for name, value in status.items() if value in ("survived", "no tests")]
        diffs = [subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=work, env=env,
                                capture_output=True, text=True).stdout for name in alive]
        SURVIVORS.mkdir(exist_ok=True)
        (SURVIVORS / (module.replace("/", "_") + ".diff")).write_text("\n".join(diffs))
        return counts


def alive_in(module: str) -> list[str]:
    """The mutants the last run of ``module`` left alive, from its diff file."""
    text = (SURVIVORS / (module.replace("/", "_") + ".diff")).read_text()
    return re.findall(r"^# (\S+): (?:survived|no tests)$", text, re.M)


def main(argv: list[str]) -> int:
    again = "--again" in argv
    jobs, patterns, sample = None, [], None
    if "--sample" in argv:
        at = argv.index("--sample")
        seed = int(argv[argv.index("--seed") + 1]) if "--seed" in argv else 0
        sample, argv = (int(argv[at + 1]), seed), argv[:at] + argv[at + 2:]
        if "--seed" in argv:
            at = argv.index("--seed")
            argv = argv[:at] + argv[at + 2:]
    if "--jobs" in argv:
        at = argv.index("--jobs")
        jobs, argv = int(argv[at + 1]), argv[:at] + argv[at + 2:]
    while "--only" in argv:
        at = argv.index("--only")
        patterns, argv = patterns + [argv[at + 1]], argv[:at] + argv[at + 2:]
    chosen = [a for a in argv if a != "--again"] or list(MODULES)
    print("| module | mutants | killed | survived | other | score |\n|---|---|---|---|---|---|")
    for module in chosen:
        counts = run_module(module, MODULES[module], alive_in(module) if again else (patterns or None), jobs,
                            sample)
        total = sum(counts.values())
        killed = counts.get("killed", 0) + counts.get("timeout", 0)
        score = f"{killed / total:.0%}" if total else "n/a"
        other = total - killed - counts.get("survived", 0)
        print(f"| {module} | {total} | {killed} | {counts.get('survived', 0)} | {other} | {score} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
