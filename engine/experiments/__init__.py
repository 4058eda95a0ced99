"""The pruning study (the paper's experiment), end to end, from one config file.

Owns: the config format (``config``), the held-out split and training corpora (``split``),
what each coreset holds (``composition``), the plan of steps (held-out split → reference model →
scoring with and without adaptation → MMseqs2 clusters → per-arm selection, pretraining and
evaluation → report), running those steps through the real launchers as subprocesses with an
atomic marker per finished step so reruns skip them (``study``), and the outputs: results.csv,
results.md, one plot per task, manifest.json (``report``). May import every other stage.
"""
