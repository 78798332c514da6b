import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from orchestrator.workloads.dist import mean_across_ranks


def test_single_process_needs_no_process_group():
    assert mean_across_ranks({"eval_loss": 2.5, "eval_accuracy": 0.5}, torch.device("cpu")) == {
        "eval_loss": 2.5,
        "eval_accuracy": 0.5,
    }


def _rank_main(rank: int, init_file: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    metrics = {"eval_loss": float(rank + 1), "eval_accuracy": rank * 0.5}
    results[rank] = mean_across_ranks(metrics, torch.device("cpu"))
    dist.destroy_process_group()


def test_every_rank_gets_the_mean(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_rank_main, args=(str(tmp_path / "init"), results), nprocs=2)
    assert dict(results) == {rank: {"eval_loss": 1.5, "eval_accuracy": 0.25} for rank in (0, 1)}
