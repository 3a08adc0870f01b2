"""A KV cache of fixed slots, each with its own write position: the continuous-batching engine's.

Every layer holds keys and values of shape ``[slots, kv_heads, length, head_dim]``. A slot's tokens
sit compactly in columns ``0 .. position - 1``: a prompt is copied in without its padding, and
each decode step writes one column per slot at that slot's own position. A slot attends to columns
``0 .. position`` only (``attention_bias``), so whatever an earlier request left past that point
never reaches a new one. A step over all slots has shapes that depend only on (slots, length), so
a compiled step replays; ``select`` runs an eager step over the busy slots only, and over the
columns they use: ``update`` then returns every slot's keys and values up to that width as views,
with the busy rows attached, for ``tte_fast.runtime.slot_attention`` (nothing is gathered).

It implements the part of transformers' ``Cache`` interface that a forward with explicit
``position_ids`` and a 4-D attention mask uses: ``update`` per layer.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache

from tte_fast.runtime.slot_attention import ROWS, VISIBLE

# Widths of an eager step's attention are multiples of this (a bounded set of shapes).
WIDTH_STEP = 64
# On CPU a window narrower than the slots is a strided view, which the attention's matmuls copy
# first (about 2.5x the cost of attending over a contiguous column); the whole length, contiguous,
# is cheaper unless the window is under 1 / CPU_WINDOW_SHARE of it. (CUDA's kernel reads in place.)
CPU_WINDOW_SHARE = 3


class SlotCache(Cache):
    def __init__(self, num_layers: int, slots: int, kv_heads: int, head_dim: int, length: int, dtype, device):
        super().__init__(layers=[])
        shape = (slots, kv_heads, length, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.positions = torch.zeros(slots, dtype=torch.long, device=device)  # next column per slot
        self.host_positions = [0] * slots  # the same, on the host (no device read to size a step)
        self._all_rows = torch.arange(slots, device=device)
        self._rows = self._all_rows  # the slots the current step runs (``select``)
        self._selected: torch.Tensor | None = None  # those rows, None when they are all slots
        self._width = length  # the columns the current step attends over
        self._visible: tuple[list[int], list[int]] | None = None  # host (rows, lengths) of a windowed step
        self._mark_static()

    def _mark_static(self) -> None:
        """Tell a compiled step these buffers live at fixed addresses (CUDA graphs then read them in
        place instead of copying the whole cache in at every replay), as transformers' StaticCache does."""
        for tensor in (*self.keys, *self.values, self.positions, self._all_rows):
            torch._dynamo.mark_static_address(tensor)

    @classmethod
    def for_model(cls, hf_model, slots: int, length: int) -> SlotCache:
        text = hf_model.config.get_text_config()
        heads = text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        kv_heads = getattr(text, "num_key_value_heads", None) or heads
        param = next(hf_model.parameters())
        return cls(text.num_hidden_layers, slots, kv_heads, head_dim, length, param.dtype, param.device)

    @property
    def length(self) -> int:
        return self.keys[0].shape[2]

    @property
    def slots(self) -> int:
        return self.keys[0].shape[0]

    def select(self, rows: list[int] | None, windowed: bool = False) -> None:
        """Run the next steps on these slots only (None: all of them, the fixed-shape step);
        ``windowed``: over the columns they use (rounded up to ``WIDTH_STEP``), not the whole length."""
        device = self._all_rows.device
        self._selected = None if rows is None else torch.tensor(rows, device=device)
        self._rows = self._all_rows if rows is None else self._selected
        width, self._visible = self.length, None
        if windowed:
            host_rows = list(range(self.slots)) if rows is None else list(rows)
            used = max(self.host_positions[i] for i in host_rows) + 1
            width = min(self.length, -(-used // WIDTH_STEP) * WIDTH_STEP)
            if not self._all_rows.is_cuda and width * CPU_WINDOW_SHARE > self.length:
                width = self.length
            # Each row sees its columns 0 .. position (the one this step writes), as the bias says.
            self._visible = (host_rows, [self.host_positions[i] + 1 for i in host_rows])
        self._width = width

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        """Write one new column per selected slot (a decode step); return every slot's keys and
        values over the step's columns (views), the selected rows attached as ``ROWS`` and, in a
        windowed step, the host lists of the rows and their visible columns as ``VISIBLE``."""
        n_rows = self._rows.shape[0]
        if key_states.shape[0] != n_rows or key_states.shape[2] != 1:
            raise ValueError(
                f"a slot cache takes one token per selected slot ({n_rows} slots), "
                f"got keys {tuple(key_states.shape)}"
            )
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        positions = self.positions[self._rows]
        keys[self._rows, :, positions] = key_states[:, :, 0]
        values[self._rows, :, positions] = value_states[:, :, 0]
        if self._selected is None and self._visible is None and self._width == self.length:
            return keys, values  # the fixed-shape step (compiled: the buffers themselves)
        keys, values = keys[:, :, : self._width], values[:, :, : self._width]
        if self._selected is not None:
            setattr(keys, ROWS, self._selected)
        if self._visible is not None:
            setattr(keys, VISIBLE, self._visible)
        return keys, values

    def step_columns(self) -> tuple[list[int], list[int]] | None:
        """A windowed step's host lists: each busy row's slot and the columns it sees (the one this
        step writes, at ``length - 1``, included); None in a fixed-shape step."""
        return self._visible

    def advance(self, rows: list[int]) -> None:
        """After a step: the slots ``rows`` each wrote one column."""
        step = torch.zeros(self.slots, dtype=torch.long, device=self.positions.device)
        step[rows] = 1
        self.positions += step
        for i in rows:
            self.host_positions[i] += 1

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # positions are always passed explicitly; each slot has its own length

    def attention_bias(self, dtype) -> torch.Tensor:
        """Additive mask ``[slots, 1, 1, width]`` over the step's columns: 0 on columns ``0 .. position``
        of each slot (its tokens and the one being written), the dtype's minimum elsewhere (finite:
        never a NaN row). Over the whole length with all slots selected, the fixed-shape step's."""
        columns = torch.arange(self._width, device=self.positions.device)
        allowed = columns[None, :] <= self.positions[:, None]
        bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        return bias.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None, None, :]

    def write_prompt(self, slot: int, prefill_cache, row: int, columns: slice | torch.Tensor) -> None:
        """Copy a prompt's columns of ``row`` of a prefill's cache (its real tokens: the tail of a
        left-padded row, its span of a packed row, or the column indices of a shared-prefix
        prefill's) into ``slot`` from column 0; the slot's position follows."""
        n_tokens = columns.stop - columns.start if isinstance(columns, slice) else len(columns)
        if n_tokens > self.length:
            raise ValueError(f"a prompt of {n_tokens} tokens does not fit slots of {self.length} columns")
        for layer, (keys, values) in enumerate(_layer_states(prefill_cache)):
            self.keys[layer][slot, :, :n_tokens] = keys[row, :, columns]
            self.values[layer][slot, :, :n_tokens] = values[row, :, columns]
        self.positions[slot] = n_tokens
        self.host_positions[slot] = n_tokens

    def grow(self, length: int) -> None:
        """Longer slots, keeping what they hold (rare: the engine doubles the length when needed)."""
        if length <= self.length:
            return
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                new = old.new_zeros(*old.shape[:2], length, old.shape[3])
                new[:, :, : old.shape[2]] = old
                store[i] = new
        self._mark_static()


def _layer_states(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer of a transformers DynamicCache."""
    return [(layer.keys, layer.values) for layer in cache.layers]
