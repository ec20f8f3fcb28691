"""experiments/streaming.py on a tiny config: trains from disk at two sizes 5x apart."""
import pytest

from experiments_path import load

pytest.importorskip("grain")
streaming = load("streaming")


def test_streaming_trains_from_disk_with_the_same_peak_memory_at_two_sizes(tmp_path, capsys):
    result = streaming.main(streaming.Config(copies=(1, 5), train_limit=1200, steps=40, batch_size=32,
                                             data=str(tmp_path / "data"), out=str(tmp_path / "runs")))
    small, large = result["rows"]
    assert (small["records"], large["records"]) == (1200, 6000)
    assert large["dataset_mb"] > 4.9 * small["dataset_mb"]
    assert result["peak_rss_ratio"] < 1.2                      # peak memory does not follow the data size
    for row in result["rows"]:
        assert row["test_accuracy"] > 0.6                      # learned from the augmented copies on disk
        assert row["history"]["loss"][-1] < row["history"]["loss"][0]
    assert not list((tmp_path / "data").rglob("*.npy"))         # the datasets are removed afterwards
    assert (tmp_path / "runs" / "streaming" / "result.json").exists()
    assert "peak RSS ratio across sizes" in capsys.readouterr().out
