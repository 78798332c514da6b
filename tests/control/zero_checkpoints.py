"""Save real DeepSpeed ZeRO 0-3 checkpoints the way orch's workers do (run as a script, one process).

`python -m tests.control.zero_checkpoints OUT` writes OUT/zero<stage>/step-000001/ (DeepSpeed's files, with
the client state a worker saves) and OUT/zero<stage>/expected.pt: the fp32 state dict the model had.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

STEP_TAG = "step-000001"


def main(out: Path) -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("ORCH_TEST_PORT", "29531"), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    import deepspeed
    import numpy as np
    import torch

    for stage in (0, 1, 2, 3):
        torch.manual_seed(stage)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        config = {"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": stage},
                  "gradient_clipping": 1.0}
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        loss = engine(torch.randn(2, 4)).sum()
        engine.backward(loss)
        engine.step()
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        root = out / f"zero{stage}"
        engine.save_checkpoint(str(root), tag=STEP_TAG, client_state={"step": 1, "rng": rng}, save_latest=False)
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
            expected = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
        torch.save(expected, root / "expected.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
