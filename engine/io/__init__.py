"""Files a run leaves behind: atomic writes (``atomic``), ``manifest.json`` (``manifest``), the
settings a resumed run must match (``run_config``) and the inputs' fingerprints in a run's
identity (``run_identity``), the score parts of ``RUN/scores/`` (``scores``), Spearman(score,
length) of a scores directory and its warning (``length_bias``), streamed safetensors reads
(``safetensors_stream``) and the phase runner every pipeline runs its steps with (``phases``:
skip-if-done, timing, memory peaks, the manifest, failing together). May import ``runtime``."""
