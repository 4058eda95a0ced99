"""--report-to backends (engine/training/trackers.py): TensorBoard written and read back, wandb
offline and mlflow on a local file store (through stand-ins: neither is installed here), a
missing backend as one line naming the pip package, and rank 0 alone logging."""
from __future__ import annotations

import importlib.machinery
import sys
import types

import pytest

from bioprune.engine.runtime.errors import UsageError
from bioprune.engine.training import trackers
from pipeline_utils import read_scalars


def _fake_module(name: str, **attrs) -> types.ModuleType:
    """A stand-in module that importlib.util.find_spec accepts (it has a spec)."""
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    for k, v in attrs.items():
        setattr(mod, k, v)
    return mod


def test_tensorboard_writes_event_files_under_the_stage(tmp_path):
    t = trackers.open_tracker("tensorboard", tmp_path, "adapt", {"lr": 1e-5})
    t.log({"train/loss": 2.5, "train/lr": 1e-5}, 1)
    t.log({"train/loss": 2.0, "train/lr": 1e-5}, 2)
    t.close()
    got = read_scalars(tmp_path / "tensorboard" / "adapt")
    assert got["train/loss"] == [(1, 2.5), (2, 2.0)]


def test_none_writes_nothing(tmp_path):
    t = trackers.open_tracker("none", tmp_path, "pretrain")
    t.log({"train/loss": 1.0}, 1)
    t.close()
    assert list(tmp_path.iterdir()) == []


def test_only_rank_zero_logs(tmp_path, monkeypatch):
    monkeypatch.setattr(trackers.distributed, "is_main", lambda: False)
    t = trackers.open_tracker("tensorboard", tmp_path, "pretrain")
    assert type(t) is trackers.Tracker
    t.log({"train/loss": 1.0}, 1)
    t.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("backend", ["wandb", "mlflow"])
def test_a_missing_backend_is_one_line_with_the_pip_package(backend, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec",
                        lambda name, *a: None if name == backend else real(name, *a))
    with pytest.raises(UsageError) as e:
        trackers.check_available(backend)
    msg = str(e.value)
    assert f"pip install {backend}" in msg and "\n" not in msg
    trackers.check_available("tensorboard")   # installed with the project
    trackers.check_available("none")


def test_wandb_runs_offline_inside_the_run_directory(tmp_path, monkeypatch):
    calls = {}

    class Run:
        def log(self, metrics, step):
            calls.setdefault("log", []).append((metrics, step))

        def finish(self):
            calls["finished"] = True

    def init(**kwargs):
        calls["init"] = kwargs
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", _fake_module("wandb", init=init))
    t = trackers.open_tracker("wandb", tmp_path / "run", "adapt", {"lr": 1e-5})
    t.log({"train/loss": 2.0}, 3)
    t.close()
    init_args = calls["init"]
    assert init_args["mode"] == "offline" and init_args["dir"] == str(tmp_path / "run")
    assert init_args["config"] == {"lr": 1e-5} and init_args["job_type"] == "adapt"
    assert calls["log"] == [({"train/loss": 2.0}, 3)] and calls["finished"]


def test_mlflow_uses_a_file_store_inside_the_run_directory(tmp_path, monkeypatch):
    calls = {"metrics": [], "params": {}}

    class Client:
        def __init__(self, tracking_uri):
            calls["uri"] = tracking_uri

        def get_experiment_by_name(self, name):
            return None

        def create_experiment(self, name):
            calls["experiment"] = name
            return "1"

        def create_run(self, experiment_id, run_name):
            calls["run"] = (experiment_id, run_name)
            return types.SimpleNamespace(info=types.SimpleNamespace(run_id="r1"))

        def log_param(self, run_id, key, value):
            calls["params"][key] = value

        def log_metric(self, run_id, key, value, step):
            calls["metrics"].append((key, value, step))

        def set_terminated(self, run_id):
            calls["terminated"] = run_id

    monkeypatch.setitem(sys.modules, "mlflow", _fake_module("mlflow"))
    monkeypatch.setitem(sys.modules, "mlflow.tracking",
                        _fake_module("mlflow.tracking", MlflowClient=Client))
    t = trackers.open_tracker("mlflow", tmp_path / "run", "pretrain", {"epochs": 2})
    t.log({"epoch/heldout_loss": 3.5}, 10)
    t.close()
    assert calls["uri"] == (tmp_path / "run" / "mlruns").as_uri()
    assert calls["uri"].startswith("file:")
    assert calls["run"] == ("1", "pretrain") and calls["params"] == {"epochs": 2}
    assert calls["metrics"] == [("epoch/heldout_loss", 3.5, 10)] and calls["terminated"] == "r1"
