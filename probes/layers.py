"""Which parameters and modules make up each top-level block of a model.

Every per-layer metric is keyed by a block name: the children of the root module, one level deeper for
containers (`layers.3` for an `nn.ModuleList` called `layers`), and the input embedding under the canonical
name `embedding`. Wrappers that only rename parameters (DDP's `module.`, `torch.compile`'s `_orig_mod.`, FSDP's
`_fsdp_wrapped_module.`, activation checkpointing's `_checkpoint_wrapped_module.`) are seen through.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from torch import nn

from stability.metrics import LAYER_EMBEDDING

_CONTAINERS = (nn.ModuleList, nn.Sequential, nn.ModuleDict)
_WRAPPER_PARTS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod")


@dataclass
class Block:
    """One top-level block: the unit of every per-layer metric."""

    name: str
    """Name reported in the `layer` column (`embedding` for the input embedding)."""
    path: str
    """Module path relative to the unwrapped root (`transformer.wte`); "" for parameters held by the root."""
    module: nn.Module | None
    """The block's module; None for parameters that sit directly on the root."""
    params: list[nn.Parameter] = field(default_factory=list)
    selected: bool = True
    """Reported per layer (matches `MonitorConfig.layers`); unselected blocks still count in totals."""


def clean_name(name: str) -> str:
    """`module._orig_mod.layers.0._fsdp_wrapped_module.attn` -> `layers.0.attn`."""
    return ".".join(p for p in name.split(".") if p not in _WRAPPER_PARTS)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside DDP / `torch.compile` / FSDP wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "_fsdp_wrapped_module", None)
        if inner is None and type(model).__name__ in ("DistributedDataParallel", "DataParallel"):
            inner = model.module
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _is_container(module: nn.Module) -> bool:
    return isinstance(module, _CONTAINERS)


def _is_model_in_model(module: nn.Module) -> bool:
    """`LlamaForCausalLM.model`: no weights of its own and a stack of layers inside. Looking into it gives
    `model.layers.3` rather than one block holding nearly every parameter."""
    if next(module.parameters(recurse=False), None) is not None:
        return False
    return any(
        _is_container(c) and len(c) > 1 and all(next(e.children(), None) is not None for e in c.children())
        for c in module.children()
    )


def _block_modules(module: nn.Module, prefix: str, in_container: bool = False) -> list[tuple[str, nn.Module]]:
    out = []
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if name in _WRAPPER_PARTS:
            out += _block_modules(child, prefix, in_container)
        elif _is_container(child):
            out += _block_modules(child, f"{path}.", in_container=True)
        elif not in_container and _is_model_in_model(child):
            out += _block_modules(child, f"{path}.")
        elif any(True for _ in child.parameters()):
            out.append((clean_name(path), child))
    return out


def find_embedding(root: nn.Module, name: str | None) -> tuple[str, nn.Module] | None:
    """The input embedding: the module called `name`, else the first `nn.Embedding` in module order."""
    for path, module in root.named_modules():
        path = clean_name(path)
        if name is not None and path == name:
            return path, module
        if name is None and isinstance(module, nn.Embedding):
            return path, module
    return None


def find_blocks(
    model: nn.Module, embedding: str | None = None, patterns: tuple[str, ...] = ()
) -> tuple[list[Block], Block | None]:
    """Split `model`'s trainable parameters into blocks; returns (blocks, the embedding block or None).

    Every trainable parameter is in exactly one block (tied weights count once, under their first name), so the
    norm over the blocks is the norm over the model. The embedding's parameters leave the block that contains
    it, if any, so that they are not counted twice.
    """
    root = unwrap(model)
    blocks: dict[str, Block] = {}
    emb = find_embedding(root, embedding)
    if embedding is not None and emb is None:
        raise ValueError(f"MonitorConfig.embedding={embedding!r}: no module of that name in {type(root).__name__}")
    emb_params: set[int] = set()
    if emb is not None:
        emb_path, emb_module = emb
        blocks[LAYER_EMBEDDING] = Block(LAYER_EMBEDDING, emb_path, emb_module)
        emb_params = {id(p) for p in emb_module.parameters()}
    for path, module in _block_modules(root, ""):
        if emb is not None and path == emb[0]:
            continue
        blocks.setdefault(path, Block(path, path, module))

    # Assign parameters by longest matching block path; leftovers on the root become their own blocks.
    paths = sorted(((b.path, b) for b in blocks.values() if b.name != LAYER_EMBEDDING), key=lambda t: -len(t[0]))
    for pname, p in root.named_parameters():
        if not p.requires_grad:
            continue
        pname = clean_name(pname)
        if id(p) in emb_params:
            blocks[LAYER_EMBEDDING].params.append(p)
            continue
        owner = next((b for path, b in paths if pname.startswith(path + ".")), None)
        if owner is None:
            owner = blocks.setdefault(pname, Block(pname, "", None))
        owner.params.append(p)
    out = [b for b in blocks.values() if b.params]
    for b in out:
        b.selected = not patterns or any(fnmatch.fnmatchcase(b.name, pat) for pat in patterns)
    emb_block = blocks.get(LAYER_EMBEDDING) if emb is not None else None
    return out, (emb_block if emb_block is not None and emb_block.params else None)


def owning_block(blocks: list[Block], module_path: str) -> Block | None:
    """The block whose module contains the module at `module_path` (clean name)."""
    best = None
    for b in blocks:
        if b.module is None:
            continue
        if module_path == b.path or module_path.startswith(b.path + "."):
            if best is None or len(b.path) > len(best.path):
                best = b
    return best
