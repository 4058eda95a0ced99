"""What an evaluation does: the settings dataclass and the task catalogue (used by --help)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


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


@dataclass
class EvalSettings:
    model: str
    model_size: str
    tasks: list[str]
    out: str
    weights: str | None = None        # a state-dict file
    run: str | None = None            # a pretraining / scoring run dir, or a dir with weights
                                      # (model.safetensors)
    init: str | None = None           # "random"
    seed: int = 0                     # encoder init (random) and the first probe seed
    probe_seeds: int = 3
    split_seed: int = 0               # hashed splits and subsamples (fixed across encoders)
    frozen: bool = True               # False: fine-tune encoder + head (sequence-level tasks)
    control: str | None = None        # "random-labels"
    floor: bool = False               # also evaluate a random-initialised encoder
    max_train: int | None = None
    max_test: int | None = None
    max_length: int | None = None
    ss_max_length: int = 200
    ss_max_train: int | None = None   # rna-ss* caps (default: --max-train/--max-test)
    ss_max_test: int | None = None
    embed_batch_size: int = 32
    probe_epochs: int = 30
    probe_lr: float = 1e-3
    probe_batch_size: int = 64
    probe_weight_decay: float = 0.01
    probe_hidden: int = 128
    token_epochs: int = 10
    token_batch_size: int = 1024
    ss_epochs: int = 10
    ss_lr: float = 1e-2
    ss_channels: int = 8
    ss_batch_size: int = 4
    finetune_epochs: int = 3
    finetune_lr: float = 1e-4
    csv_kind: str = "auto"            # auto | classification | regression
    mlm_data: list[str] = field(default_factory=list)
    mlm_indices: str | None = None
    mlm_max: int | None = None      # None: 500 for the hashed sample, no cap with mlm_all
    mlm_all: bool = False
    mlm_mask_seed: int | None = None
    mlm_column: str = "sequence"
    mlm_cache: str | None = None
    progress: bool = True
    threads: int | None = None        # torch CPU threads for the encoder (None: torch's default)
    argv: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)
