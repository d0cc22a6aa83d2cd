"""benchmarks/train_gpt.py: a CPU smoke run of a tiny model on SDPA (loss finite, JSON
fields), its synthetic corpus (deterministic, learnable), option errors and the loss
comparison; on a GPU, fa_cute against SDPA from the same seed within 1%."""

import importlib.util
import json
import math
import pathlib

import pytest
import torch

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "train_gpt.py"
spec = importlib.util.spec_from_file_location("train_gpt", SCRIPT)
train_gpt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_gpt)

TINY = ["--layers", "1", "--width", "32", "--heads", "2", "--seq", "16", "--vocab", "64",
        "--batch", "2"]


def test_cpu_smoke_run_writes_finite_losses(tmp_path, capsys) -> None:
    path = tmp_path / "gpt.json"
    argv = ["--device", "cpu", "--attn", "sdpa", "--steps", "3", "--warmup-steps", "1",
            "--json", str(path)] + TINY
    assert train_gpt.main(argv) == 0
    result = json.loads(path.read_text())
    (run,) = result["runs"]
    assert run["attn"] == "sdpa" and len(run["losses"]) == 3
    assert all(math.isfinite(x) for x in run["losses"])
    # the first loss is about ln(vocab): an untrained model guesses uniformly
    assert abs(run["losses"][0] - math.log(64)) < 0.5
    assert run["step_ms"] > 0 and run["tokens_per_s"] > 0 and run["timed_steps"] == 2
    assert run["peak_memory_bytes"] is None  # no CUDA memory on the CPU
    assert result["config"]["attn"] == "sdpa" and result["loss_floor"] < math.log(4)
    out = capsys.readouterr().out
    assert "sdpa step 0: loss" in out and "tokens/s" in out


def test_corpus_is_deterministic_and_follows_the_chain() -> None:
    a = train_gpt.markov_batches(2, 3, 50, 40, seed=1)
    assert a.shape == (2, 3, 51) and torch.equal(a, train_gpt.markov_batches(2, 3, 50, 40, 1))
    assert not torch.equal(a, train_gpt.markov_batches(2, 3, 50, 40, seed=2))
    # every token is followed by one of at most SUCCESSORS tokens: the structure to learn
    pairs = torch.stack([a[..., :-1].flatten(), a[..., 1:].flatten()], 1).unique(dim=0)
    assert pairs[:, 0].bincount().max() <= train_gpt.SUCCESSORS


def test_loss_falls_on_the_cpu() -> None:
    argv = ["--device", "cpu", "--attn", "sdpa", "--steps", "40", "--lr", "1e-2"] + TINY
    run = train_gpt.train(train_gpt.parse_args(argv),
                          "sdpa", train_gpt.markov_batches(40, 2, 16, 64, 0))
    # the mean of the last five steps, against single-batch noise
    assert sum(run["losses"][-5:]) / 5 < run["losses"][0] - 0.5


@pytest.mark.parametrize("argv, message", [
    (["--device", "cpu", "--attn", "fa_cute"], "need --device cuda"),
    (["--device", "cpu", "--compare"], "need --device cuda"),
    (["--width", "30", "--heads", "4", "--device", "cpu", "--attn", "sdpa"], "not a multiple"),
    (["--steps", "0", "--device", "cpu", "--attn", "sdpa"], "--steps must be >= 1"),
    (["--attn", "xformers"], "invalid choice"),
])
def test_option_errors(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        train_gpt.parse_args(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_compare_reports_every_tenth_step() -> None:
    a = dict(losses=[2.0] * 25)
    b = dict(losses=[2.0] * 10 + [2.02] + [2.0] * 14)
    c = train_gpt.compare(a, b, 10)
    assert c["steps"] == [0, 10, 20]
    assert c["rel_diff"][0] == 0 and c["max_rel_diff"] == pytest.approx(0.02 / 2.02)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fa_cute_trains_like_sdpa(tmp_path) -> None:
    path = tmp_path / "compare.json"
    argv = ["--compare", "--steps", "30", "--layers", "2", "--width", "256", "--heads", "2",
            "--seq", "256", "--vocab", "1024", "--json", str(path)]
    assert train_gpt.main(argv) == 0
    result = json.loads(path.read_text())
    assert result["compare"]["max_rel_diff"] <= 0.01
    assert all(r["peak_memory_bytes"] > 0 for r in result["runs"])
