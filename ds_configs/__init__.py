"""DeepSpeed JSON configs shipped with bioprune (installed as ``bioprune.ds_configs``): ZeRO stages
0-3 for CUDA (bf16) and for the CPU (fp32, torch AdamW, gloo). Found through
``importlib.resources``, so they work from any install, editable or not."""
