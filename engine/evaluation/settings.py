"""What an evaluation does: the settings dataclass and the task catalogue (used by --help)."""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

from bioprune.engine.models.inputs import MODEL_SIZE
from bioprune.engine.runtime.flags import Exclusive, Flag, at_least, setting


@dataclass(frozen=True)
class TaskInfo:
    name: str
    molecule: str
    data: str        # file(s) under the data dir
    split: str
    head: str
    metrics: str


TASKS: dict[str, TaskInfo] = {t.name: t for t in (
    TaskInfo("rna-type", "rna", "rna/nrc_type.csv", "the file's train/test split",
             "mean-pooled embedding -> linear", "acc, macro_f1"),
    TaskInfo("rna-ss", "rna", "rna/bprna_nf15.csv",
             "hashed by sequence (20% test, --split-seed), recorded",
             "frozen tokens -> outer concat -> 2D conv -> per-pair logit",
             "precision, recall, f1, mcc over base pairs (mean over test sequences)"),
    TaskInfo("rna-ss-archiveii", "rna", "rna/archiveII.csv + rna/archiveII_kfold.csv",
             "sincFold's random 5 folds (train on 4, test on 1; mean over folds)",
             "as rna-ss", "precision, recall, f1, mcc"),
    TaskInfo("rna-ss-family", "rna", "rna/archiveII.csv",
             "leave one family out (train on the others; mean over families)",
             "as rna-ss", "precision, recall, f1, mcc"),
    TaskInfo("rna-crispr", "rna", "rna/crispr_ontarget.csv",
             "hashed by sequence (20% test): a guide screened in two cell lines is on one side",
             "mean-pooled embedding -> linear regression", "spearman, pearson"),
    TaskInfo("protein-ss3", "protein", "protein/netsurfp_ss3.csv",
             "FLIP split: fit on train, report test (valid unused)",
             "frozen tokens -> 2-layer per-token MLP", "acc (per residue)"),
    TaskInfo("protein-loc", "protein", "protein/deeploc_binary.csv", "the file's train/test split",
             "mean-pooled embedding -> 2-layer MLP", "acc, macro_f1"),
    TaskInfo("mlm", "any", "--mlm-data (default: the --run's corpus and heldout.npy)",
             "--mlm-indices, --mlm-all, else a hashed held-out sample of --mlm-max sequences",
             "the model's own MLM head",
             "loss (mean per-sample CE), ppl (exp of the token-mean CE), loss@FILE per input "
             "file and loss_macro (their mean); one value per mask seed"),
    TaskInfo("csv:PATH", "model's", "your CSV: id,sequence,label[,split]",
             "split column (train/test) honoured exactly; else hashed by sequence (20% test)",
             "mean-pooled embedding -> linear",
             "classification: acc, macro_f1; regression: spearman, pearson"),
)}

TASK_ALIASES = {
    "rna": ("rna-type", "rna-ss", "rna-crispr", "mlm"),
    "protein": ("protein-ss3", "protein-loc", "mlm"),
}


CONTROLS = ("random-labels",)
ENCODER = "encoder (exactly one of --weights, --run, --init)"
SOURCE = Exclusive("encoder source", required=True)
MODE = Exclusive("probe mode")
CAPS = "size caps (deterministic; for a cheap run)"
PROBES = "probes"
MLM = "mlm"
_one_or_more = at_least(1, "{flag} must be at least 1 (got {value})")


def task_list(text: str) -> list[str]:
    """--tasks T1,T2,...: the names, empty ones dropped."""
    return [x for x in text.split(",") if x.strip()]


def _model_names() -> tuple[str, ...]:
    from bioprune.engine.models.registry import MODEL_NAMES

    return tuple(MODEL_NAMES)


# Every flag of evaluate.py is declared here, once (runtime.flags). An evaluation has no run
# identity (identity=None); the field order is the order of eval.json's "settings".
@dataclass(kw_only=True)    # required flags among the defaulted ones, in eval.json's order
class EvalSettings:
    model: str = setting(identity=None, flag=Flag(
        choices=_model_names(), required=True, group=ENCODER,
        help="rnafm (RNA tasks) or esmc (protein tasks)"))
    model_size: str = setting("tiny", identity=None,
                              flag=dataclasses.replace(MODEL_SIZE, group=ENCODER))
    tasks: list[str] = setting(identity=None, flag=Flag(
        type=task_list, unparse=",".join, required=True, metavar="T1,T2,...", group="tasks",
        help="comma-separated tasks (see the list above), e.g. rna-type,rna-ss,csv:my.csv"))
    out: str = setting(identity=None, flag=Flag(
        required=True, metavar="DIR", help="output directory"))
    # a state-dict file
    weights: str | None = setting(None, identity=None, flag=Flag(
        metavar="FILE", group=ENCODER, exclusive=SOURCE,
        help="a state dict (.safetensors/.pt) or the released RNA-FM_pretrained.pth"))
    # a pretraining / scoring run dir, or a dir with weights (model.safetensors)
    run: str | None = setting(None, identity=None, flag=Flag(
        metavar="DIR", group=ENCODER, exclusive=SOURCE,
        help="a pretraining output (uses DIR/final; mlm defaults to its corpus and heldout.npy), "
             "a scoring run (DIR/adapted) or a directory holding model.safetensors + "
             "config.json"))
    init: str | None = setting(None, identity=None, flag=Flag(
        choices=("random",), group=ENCODER, exclusive=SOURCE,
        help="a freshly initialised encoder (seeded by --seed): the floor row"))
    # encoder init (random) and the first probe seed
    seed: int = setting(0, identity=None, flag=Flag(
        type=int, group="tasks",
        help="first probe seed (probe seeds are SEED..SEED+N-1) and the --init random seed"))
    probe_seeds: int = setting(3, identity=None, check=_one_or_more, flag=Flag(
        type=int, group="tasks", help="probe seeds per task (mean ± std)"))
    # hashed splits and subsamples (fixed across encoders)
    split_seed: int = setting(0, identity=None, flag=Flag(
        type=int, group="tasks",
        help="seed of the hashed splits and --max-train/--max-test subsamples; keep it fixed "
             "across encoders so they see the same rows"))
    # False: fine-tune encoder + head (sequence-level tasks)
    frozen: bool = setting(True, identity=None, flag=(
        Flag(names=("--frozen",), action="store_true", group="tasks", exclusive=MODE,
             help="probes on fixed embeddings, computed once (the default; ~100x cheaper)"),
        Flag(names=("--finetune",), action="store_false", group="tasks", exclusive=MODE,
             help="fine-tune the encoder with the head on sequence-level tasks (rna-type, "
                  "rna-crispr, protein-loc, csv); per-residue/pair tasks stay frozen")))
    control: str | None = setting(None, identity=None, flag=Flag(
        choices=CONTROLS, group="tasks",
        help="random-labels: labels drawn at random, for train and test rows alike, from the "
             "training label distribution (must score at chance); rna-ss* and mlm are skipped"))
    # also evaluate a random-initialised encoder
    floor: bool = setting(False, identity=None, flag=Flag(
        action="store_true", group=ENCODER,
        help="also evaluate a random-initialised encoder of the same size and add it as the "
             "floor column/section of eval.json and eval.md"))
    max_train: int | None = setting(None, identity=None, check=_one_or_more, flag=Flag(
        type=int, group=CAPS, help="training rows per task/fold"))
    max_test: int | None = setting(None, identity=None, check=_one_or_more, flag=Flag(
        type=int, group=CAPS, help="test rows per task/fold"))
    max_length: int | None = setting(None, identity=None, check=_one_or_more, flag=Flag(
        type=int, group=CAPS,
        help="residues per sequence (default: the model's, 1022 rnafm / 2046 esmc)"))
    ss_max_length: int = setting(200, identity=None, flag=Flag(
        type=int, group=CAPS,
        help="rna-ss*: sequences longer than this are dropped (pair maps are L x L)"))
    # rna-ss* caps (default: --max-train/--max-test)
    ss_max_train: int | None = setting(None, identity=None, check=_one_or_more, flag=Flag(
        type=int, group=CAPS,
        help="rna-ss*: training sequences per fold (default: --max-train); the pair head costs "
             "~50 ms per sequence and epoch on a CPU"))
    ss_max_test: int | None = setting(None, identity=None, check=_one_or_more, flag=Flag(
        type=int, group=CAPS, help="rna-ss*: test sequences per fold (default: --max-test)"))
    embed_batch_size: int = setting(32, identity=None, check=_one_or_more, flag=Flag(
        type=int, group=PROBES, help="sequences per forward pass of the encoder"))
    probe_epochs: int = setting(30, identity=None, flag=Flag(
        type=int, group=PROBES, help="epochs of sequence-level probes"))
    probe_lr: float = setting(1e-3, identity=None, flag=Flag(
        type=float, group=PROBES, help="AdamW lr of the probes"))
    probe_batch_size: int = setting(64, identity=None, flag=Flag(
        type=int, group=PROBES, help="sequences per probe step"))
    probe_weight_decay: float = setting(0.01, identity=None, flag=Flag(
        type=float, group=PROBES, help="AdamW weight decay"))
    probe_hidden: int = setting(128, identity=None, flag=Flag(
        type=int, group=PROBES, help="hidden width of the MLP heads"))
    token_epochs: int = setting(10, identity=None, flag=Flag(
        type=int, group=PROBES, help="epochs of per-residue probes"))
    token_batch_size: int = setting(1024, identity=None, flag=Flag(
        type=int, group=PROBES, help="residues per per-residue step"))
    ss_epochs: int = setting(10, identity=None, flag=Flag(
        type=int, group=PROBES, help="epochs of the base-pair head"))
    ss_lr: float = setting(1e-2, identity=None, flag=Flag(
        type=float, group=PROBES, help="lr of the base-pair head"))
    ss_channels: int = setting(8, identity=None, flag=Flag(
        type=int, group=PROBES, help="channels of the base-pair head"))
    ss_batch_size: int = setting(4, identity=None, flag=Flag(
        type=int, group=PROBES,
        help="sequences (of similar length) per step of the base-pair head"))
    finetune_epochs: int = setting(3, identity=None, flag=Flag(
        type=int, group=PROBES, help="epochs with --finetune"))
    finetune_lr: float = setting(1e-4, identity=None, flag=Flag(
        type=float, group=PROBES, help="lr with --finetune (paper: 1e-4)"))
    csv_kind: str = setting("auto", identity=None, flag=Flag(
        choices=("auto", "classification", "regression"), group=PROBES,
        help="task type of csv:PATH tasks"))
    mlm_data: list[str] = setting(default_factory=list, identity=None, flag=Flag(
        nargs="+", metavar="PATH", group=MLM,
        help="the corpus (FASTA/CSV/TSV/Parquet; as for pretrain.py --data)"))
    mlm_indices: str | None = setting(None, identity=None, flag=Flag(
        metavar="NPY", group=MLM,
        help="held-out corpus indices (e.g. a pretraining run's heldout.npy); default: --run's "
             "heldout.npy, else a hashed sample of --mlm-max sequences"))
    # None: 500 for the hashed sample, no cap with mlm_all
    mlm_max: int | None = setting(None, identity=None, check=_one_or_more, flag=Flag(
        type=int, group=MLM,
        help="held-out sequences evaluated at most, a hashed sample beyond it (default 500; no "
             "cap with --mlm-all)"))
    mlm_all: bool = setting(False, identity=None, flag=Flag(
        action="store_true", group=MLM,
        help="--mlm-data is a held-out set: evaluate every record of it (default: a hashed "
             "tenth of it, the pretraining held-out rule). With --mlm-mask-seed, what a study "
             "needs so every model sees the same sequences and masks"))
    mlm_mask_seed: int | None = setting(None, identity=None, flag=Flag(
        type=int, metavar="N", group=MLM,
        help="masks (and crops) of mlm come from seeds N, N+1, ... (one per probe seed); "
             "default: --seed. Fix it to compare models trained with other seeds"))
    mlm_column: str = setting("sequence", identity=None, flag=Flag(
        group=MLM, help="sequence column of table inputs"))
    mlm_cache: str | None = setting(None, identity=None, flag=Flag(
        metavar="DIR", group=MLM, help="memory-mapped corpus cache (default OUT/mlm_corpus)"))
    progress: bool = setting(True, identity=None, flag=Flag(
        names=("--no-progress",), action="store_false", help="no progress bars"))
    # torch CPU threads for the encoder (None: torch's default)
    threads: int | None = setting(None, identity=None, check=_one_or_more, flag=Flag(
        type=int,
        help="torch CPU threads for the encoder (default: torch's); on a busy shared CPU, 1 is "
             "often several times faster. Probe heads always use 1 on a CPU"))
    # the command line, for eval.json (set by the launcher)
    argv: list[str] = setting(default_factory=list, identity=None)

    def to_dict(self) -> dict:
        return asdict(self)
