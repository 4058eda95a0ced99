"""Where training curves go (``--report-to``): one small class per backend, each writing through
the library's own logger, all files under the run directory and nothing sent over a network.

    tensorboard  torch.utils.tensorboard.SummaryWriter  RUN/tensorboard/<stage>/events.out.*
    wandb        wandb.init(mode="offline")             RUN/wandb/offline-run-*  (wandb sync)
    mlflow       MlflowClient, a local file store       RUN/mlruns  (mlflow ui --backend-store-uri)
    none         nothing

``<stage>`` is ``adapt`` (scoring's fine-tune) or ``pretrain``. wandb and mlflow are optional
packages: :func:`check_available` runs with the start-up checks, so a missing one stops the run
before any work with the pip command. Only rank 0 logs; the other ranks get the no-op tracker.
The choice never changes results, so it is not part of any run identity (a resume may change it).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from bioprune.engine.runtime import distributed
from bioprune.engine.runtime.errors import fail
from bioprune.engine.runtime.flags import Flag

BACKENDS = ("none", "tensorboard", "wandb", "mlflow")
PROJECT = "bioprune"          # the wandb project / mlflow experiment every run logs into
# the module each backend imports and the pip package that provides it
_NEEDS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
          "mlflow": ("mlflow", "mlflow")}


def report_to_flag(what: str) -> Flag:
    """--report-to of a stage whose training curves are ``what``."""
    return Flag(
        choices=BACKENDS,
        help=f"where the curves of {what} go (train loss and learning rate per optimizer step, "
             "the per-epoch metrics), written by rank 0 under --out: tensorboard: "
             "OUT/tensorboard/<stage>/ event files; wandb: an offline run in OUT/wandb/ (upload "
             "later with `wandb sync`); mlflow: a local file store OUT/mlruns (`mlflow ui "
             "--backend-store-uri file:OUT/mlruns`); none. wandb and mlflow are optional (pip "
             "install wandb / mlflow). Not part of the run's identity: a resume may change it "
             "(default: tensorboard)")


def check_available(report_to: str) -> None:
    """A UsageError (one line, with the pip package) unless ``report_to`` can be used here.
    Looks the module up without importing it (wandb and mlflow take seconds to import)."""
    if report_to not in BACKENDS:
        fail(f"--report-to {report_to!r}: unknown; choose one of {', '.join(BACKENDS)}")
    if report_to == "none":
        return
    module, package = _NEEDS[report_to]
    if importlib.util.find_spec(module) is None:
        fail(f"--report-to {report_to}: the {module!r} package is not installed; "
             f"pip install {package}, or pass --report-to tensorboard (or none)")


class Tracker:
    """No tracking (``none``, and every rank but 0)."""

    def log(self, metrics: dict, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoard(Tracker):
    def __init__(self, run_dir: Path, stage: str, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard" / stage))

    def log(self, metrics: dict, step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class WandB(Tracker):
    def __init__(self, run_dir: Path, stage: str, config: dict):
        import wandb

        # offline: the run is written to RUN/wandb/ only; `wandb sync` uploads it later
        self.run = wandb.init(mode="offline", dir=str(run_dir), project=PROJECT,
                              name=f"{run_dir.name}/{stage}", group=run_dir.name,
                              job_type=stage, config=config)

    def log(self, metrics: dict, step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


class MLflow(Tracker):
    def __init__(self, run_dir: Path, stage: str, config: dict):
        from mlflow.tracking import MlflowClient

        # a client bound to a file store under the run: no global tracking URI, no server
        self.client = MlflowClient(tracking_uri=(run_dir / "mlruns").absolute().as_uri())
        exp = self.client.get_experiment_by_name(PROJECT)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(PROJECT)
        self.run_id = self.client.create_run(exp_id, run_name=stage).info.run_id
        for key, value in config.items():
            self.client.log_param(self.run_id, key, value)

    def log(self, metrics: dict, step: int) -> None:
        for key, value in metrics.items():
            self.client.log_metric(self.run_id, key, float(value), step=step)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


_CLASSES = {"none": Tracker, "tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}


def open_tracker(report_to: str, run_dir, stage: str, config: dict | None = None) -> Tracker:
    """The tracker of ``report_to`` for ``stage`` of the run in ``run_dir`` (rank 0; a no-op
    elsewhere). ``config`` (the training settings) is recorded where the backend keeps one."""
    if report_to == "none" or not distributed.is_main():
        return Tracker()
    check_available(report_to)
    return _CLASSES[report_to](Path(run_dir).absolute(), stage, dict(config or {}))
