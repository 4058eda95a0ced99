"""bioprune.launch: the entry points (`deepspeed launch/<name>.py`, or the bioprune-* commands)."""
