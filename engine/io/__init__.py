"""Files a run leaves behind: atomic writes (``atomic``), ``manifest.json`` (``manifest``), the
settings a resumed run must match (``run_config``) and the score parts of ``RUN/scores/``
(``scores``). May import ``runtime``."""
