"""bioprune.engine: data, models, MLM, per-sample gradients, Fisher, scoring, selection, training."""
