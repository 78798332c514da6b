import importlib
import subprocess
import sys

from jobs import BUILTIN_WORKLOADS


def test_builtin_workloads_resolve_to_train_functions():
    assert set(BUILTIN_WORKLOADS) == {"gpt", "mlp"}
    for name, workload in BUILTIN_WORKLOADS.items():
        assert workload.name == name
        module, _, func = workload.entrypoint.partition(":")
        assert callable(getattr(importlib.import_module(module), func))
        assert workload.param_count(workload.model_config()) > 0
        workload.data_config()  # defaults are valid


def test_control_plane_imports_stay_torch_free():
    code = "import sys, jobs, jobs.gpt.config, jobs.mlp.config; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
