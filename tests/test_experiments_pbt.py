"""experiments/pbt.py at a tiny config: PBT learns, its lineage follows the exploit rule."""
import numpy as np

from experiments_path import load

pbt_experiment = load("pbt")


def test_pbt_experiment_smoke_learns_and_lineage_follows_truncation(tmp_path):
    config = pbt_experiment.Config(members=4, epochs=3, interval=1, seeds=(0,), hidden=32, train_limit=1500,
                                   out=str(tmp_path))
    result = pbt_experiment.main(config)
    run = result["runs"][0]
    assert run["pbt"]["test_accuracy"] > 0.7 and run["random"]["test_accuracy"] > 0.3  # chance is 0.1
    pbt = result["_results"][0]
    for s, epoch in enumerate(pbt.lineage_epochs):  # one member per step (25% of 4) copies the best
        scores = pbt.history["val_accuracy"][epoch - 1]
        copied = np.flatnonzero(pbt.lineage[s] != np.arange(4))
        assert list(copied) == [int(np.argmin(scores))] and pbt.lineage[s, copied[0]] == int(np.argmax(scores))
    assert (tmp_path / "pbt" / "result.json").exists()
