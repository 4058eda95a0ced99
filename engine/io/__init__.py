"""Files a run leaves behind: atomic writes (``atomic``), ``manifest.json`` (``manifest``), the
settings a resumed run must match (``run_config``) and the inputs' fingerprints in a run's
identity (``run_identity``), the score parts of ``RUN/scores/`` (``scores``), Spearman(score,
length) of a scores directory and its warning (``length_bias``) and streamed safetensors reads
(``safetensors_stream``). May import ``runtime``."""
