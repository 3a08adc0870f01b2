"""Input checks shared by every backend: fail early with a ValueError that names the bad value."""

from __future__ import annotations

import importlib.util
import math
import os

import torch

BACKENDS = ("triton", "torch", "reference")


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_tensor(name: str, t, ndim: int, floating: bool = True) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {_shape(t)}")
    if floating and not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {_shape(t)})")


def check_pool_inputs(hidden, attention_mask) -> None:
    """hidden [B, T, D] float, attention_mask [B, T] of 0/1 with at least one 1 per row."""
    check_tensor("hidden", hidden, 3)
    if not isinstance(attention_mask, torch.Tensor):
        raise ValueError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
    if attention_mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"attention_mask shape {_shape(attention_mask)} does not match hidden's [B, T] = "
            f"[{hidden.shape[0]}, {hidden.shape[1]}]"
        )
    if attention_mask.device != hidden.device:
        raise ValueError(f"attention_mask is on {attention_mask.device} but hidden is on {hidden.device}")
    check_mask_values(attention_mask)


def check_mask_values(attention_mask: torch.Tensor) -> None:
    """0/1 values and a real token in every row. Both checks cost one device sync together; the
    offending value or row is looked up only once something is wrong."""
    if attention_mask.dim() != 2 or attention_mask.numel() == 0:
        shape = _shape(attention_mask)
        raise ValueError(f"attention_mask must be a non-empty [B, T] tensor, got shape {shape}")
    if attention_mask.dtype.is_complex:
        raise ValueError(f"attention_mask must hold 0/1 values, got dtype {attention_mask.dtype}")
    if attention_mask.dtype == torch.bool:
        bad = torch.zeros((), dtype=torch.bool, device=attention_mask.device)
    else:
        bad = (attention_mask != 0) & (attention_mask != 1)
    empty = (attention_mask == 0).all(dim=1)
    any_bad, any_empty = torch.stack([bad.any(), empty.any()]).tolist()
    if any_bad:
        raise ValueError(f"attention_mask must hold only 0 and 1, found {attention_mask[bad][0].item()}")
    if any_empty:
        row = int(empty.nonzero()[0, 0])
        raise ValueError(f"attention_mask row {row} has no real token (all zeros)")


def check_infonce_inputs(q, c, temperature, labels) -> tuple[float, torch.Tensor]:
    """Check q [Nq, D], c [Nc, D], temperature > 0 and labels; return (temperature, int64 labels [Nq])."""
    check_tensor("q", q, 2)
    check_tensor("c", c, 2)
    if q.shape[1] != c.shape[1]:
        raise ValueError(f"q and c must share the feature dimension, got q {_shape(q)} and c {_shape(c)}")
    if q.device != c.device:
        raise ValueError(f"q is on {q.device} but c is on {c.device}")
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1:
            raise ValueError(f"temperature must be a scalar, got shape {_shape(temperature)}")
        temperature = temperature.item()
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"temperature must be a number, got {type(temperature).__name__}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    nq, nc = q.shape[0], c.shape[0]
    if labels is None:
        if nc < nq or nc % nq:
            # A floor would silently pair queries with the wrong candidates.
            raise ValueError(
                f"default labels need Nc to be a multiple of Nq (got Nq={nq}, Nc={nc}): query i's "
                f"positive is candidate i * (Nc // Nq); pass labels explicitly"
            )
        return float(temperature), torch.arange(nq, device=q.device, dtype=torch.int64) * (nc // nq)
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if labels.shape != (nq,):
        raise ValueError(f"labels must have shape [Nq] = [{nq}], got {_shape(labels)}")
    if labels.device != q.device:
        raise ValueError(f"labels are on {labels.device} but q is on {q.device}")
    out_of_range = (labels < 0) | (labels >= nc)
    if bool(out_of_range.any()):
        raise ValueError(f"labels must lie in [0, Nc={nc}), found {int(labels[out_of_range][0])}")
    return float(temperature), labels.to(torch.int64)


def resolve_backend(backend, device: torch.device) -> str:
    """None picks Triton on CUDA (the chunked torch path where Triton is not installed) and the
    chunked torch path elsewhere."""
    if backend is None:
        return "triton" if device.type == "cuda" and importlib.util.find_spec("triton") else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"backend='triton' needs CUDA tensors (got {device}); on CPU set TRITON_INTERPRET=1 "
            "before importing triton, or use backend='torch'"
        )
    return backend
