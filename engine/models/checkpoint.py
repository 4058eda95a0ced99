"""Model weights in and out of a module: loading a plain state dict into a bundle's module, and
the module's state gathered to rank 0 for writing (the exported directory is :mod:`.saved`)."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

def load_weights(module: nn.Module, path: str) -> None:
    """Load a plain state dict (.safetensors, or .pt/.pth of a state dict) into the MLM wrapper.

    Keys may be the wrapper's (``net.*``) or the bare network's; both are accepted. Tensors are
    read one at a time (safetensors lazily, .pt memory-mapped) and copied into the module in
    place, so loading never holds a second copy of the model. Under ZeRO-3 each module's
    parameters are gathered for their copy and only rank 0 reads the file.
    """
    from bioprune.engine.runtime import distributed
    from bioprune.engine.runtime.zero3 import gathered, is_partitioned

    path = str(path)
    with _state_reader(path) as (keys, read):
        prefix = "" if any(k.startswith("net.") for k in keys) else "net."
        keys = {prefix + k: k for k in keys}
        own = module.state_dict(keep_vars=True)
        tied = _tied_aliases(module, set(keys))
        missing = [k for k in own if k not in keys and k not in tied]
        unexpected = [k for k in keys if k not in own]
        if missing or unexpected:
            raise ValueError(
                f"{path}: weights do not fit this architecture; missing {missing[:5]} "
                f"unexpected {unexpected[:5]} — check --model/--model-size")
        reader = distributed.is_main()
        for mod_name, m in module.named_modules():
            local = {**dict(m.named_parameters(recurse=False)),
                     **dict(m.named_buffers(recurse=False))}
            if not local:
                continue
            with gathered(m.parameters(recurse=False), modifier_rank=0), torch.no_grad():
                for name, t in local.items():
                    key = f"{mod_name}.{name}" if mod_name else name
                    if key not in keys or (is_partitioned(t) and not reader):
                        continue   # a tied alias (its owner loads it), or another rank reads
                    t.copy_(read(keys[key]))


@contextlib.contextmanager
def _state_reader(path: str):
    """(the file's keys, read(key) -> tensor) without loading the whole file."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            yield list(f.keys()), f.get_tensor
        return
    state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if isinstance(state, dict) and "module" in state and isinstance(state["module"], dict):
        state = state["module"]
    yield list(state), state.__getitem__


def _tied_aliases(module: nn.Module, present) -> set[str]:
    """State-dict keys that name the same tensor as a key in ``present`` (RNA-FM's LM projection
    and ESM-2's decoder are the token embedding): a file that stores it once is complete.
    Same tensor: the same Parameter object, or (not partitioned) the same storage."""
    from bioprune.engine.runtime.zero3 import is_partitioned

    by_ptr: dict[int, list[str]] = {}
    for k, v in module.state_dict(keep_vars=True).items():
        key = id(v) if is_partitioned(v) else v.data_ptr()
        by_ptr.setdefault(key, []).append(k)
    return {k for keys in by_ptr.values() if len(keys) > 1 and any(x in present for x in keys)
            for k in keys if k not in present}


def state_on_rank0(module: nn.Module) -> dict | None:
    """The module's fp32 state dict on CPU, on rank 0 (None on the others when partitioned).

    Under ZeRO-3 it is gathered one module at a time (``GatheredParameters``) and only rank 0
    keeps a copy: no other rank ever holds the whole model. Collective when partitioned."""
    from bioprune.engine.runtime import distributed
    from bioprune.engine.runtime.zero3 import any_partitioned, gathered

    if not any_partitioned(module):
        return {k: v.detach().float().cpu().contiguous() for k, v in module.state_dict().items()}
    keep = distributed.is_main()
    state: dict = {}
    for mod_name, m in module.named_modules():
        local = {**dict(m.named_parameters(recurse=False)), **dict(m.named_buffers(recurse=False))}
        if not local:
            continue
        with gathered(m.parameters(recurse=False)):
            if keep:
                for name, t in local.items():
                    state[f"{mod_name}.{name}" if mod_name else name] = \
                        t.detach().float().cpu().clone()
    if not keep:
        return None
    order = module.state_dict(keep_vars=True)     # the state dict's own keys and order
    return {k: state[k] for k in order if k in state}
