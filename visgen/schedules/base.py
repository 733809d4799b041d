"""The schedule interface: how a token grid becomes a sequence of units, and what the model reads before each.

A schedule fixes, for one generator, the order of tokens (``to_sequence`` / ``from_sequence``), the unit sizes,
the position ids for RoPE, the attention mask, and ``next_input(units_so_far)``: the model's input for the next
unit given the units generated so far. Training builds its inputs with ``teacher_inputs``, which by definition
equals calling ``next_input`` unit by unit (families may vectorise it, or carry a running state through
``step_input``; tests hold them equal), so training and sampling cannot drift apart.
"""

from __future__ import annotations

import torch


class Schedule:
    """Base class. Subclasses set ``unit_sizes`` and ``positions`` and implement the sequence maps."""

    unit_sizes: list[int]
    positions: torch.Tensor  # (L, axes) integer coordinates for RoPE
    input_kind: str = "tokens"  # "tokens": next_input gives indices; "features": (B, n, input_dim) vectors
    input_dim: int = 0
    # True where next_input is the last unit as drawn (raster): with units of one size, every unit after the first
    # runs the same computation at another position, so a sampler can capture one unit and replay it
    input_is_previous_unit: bool = False

    @property
    def seq_len(self) -> int:
        return sum(self.unit_sizes)

    @property
    def num_units(self) -> int:
        return len(self.unit_sizes)

    @property
    def unit_offsets(self) -> list[int]:
        out, o = [], 0
        for n in self.unit_sizes:
            out.append(o)
            o += n
        return out

    @property
    def unit_ids(self) -> torch.Tensor:
        """(L,) the unit index of each sequence position."""
        return torch.repeat_interleave(torch.arange(self.num_units), torch.tensor(self.unit_sizes))

    @property
    def is_causal(self) -> bool:
        """True when every unit is one token, so the block-causal mask is the plain causal one."""
        return all(n == 1 for n in self.unit_sizes)

    def attn_mask(self) -> torch.Tensor:
        """(L, L) bool, True where position i may attend to j: ``unit_id[j] <= unit_id[i]``."""
        u = self.unit_ids
        return u[None, :] <= u[:, None]

    def to_sequence(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token grid -> (B, L, ...) in generation order."""
        raise NotImplementedError

    def from_sequence(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L, ...) in generation order -> token grid."""
        raise NotImplementedError

    def split_units(self, seq: torch.Tensor) -> list[torch.Tensor]:
        return list(seq.split(self.unit_sizes, dim=1))

    def next_input(self, units_so_far: list[torch.Tensor]) -> torch.Tensor:
        """What the model reads at the positions of unit ``len(units_so_far)`` (>= 1; unit 0 reads the class)."""
        raise NotImplementedError

    def step_input(self, state, units_so_far: list[torch.Tensor]):
        """``(next_input(units_so_far), state)``, carrying a running state from the previous call (None at the
        first) so a family can update instead of recomputing from every earlier unit (VAR's running f_hat). The
        sampler and ``teacher_inputs`` step through this; it must equal ``next_input`` (tests hold them equal)."""
        return self.next_input(units_so_far), state

    def teacher_inputs(self, seq: torch.Tensor) -> torch.Tensor:
        """Inputs at the positions of units 1..K-1 for a known sequence (teacher forcing)."""
        units, state, out = self.split_units(seq), None, []
        for k in range(1, self.num_units):
            x, state = self.step_input(state, units[:k])
            out.append(x)
        return torch.cat(out, dim=1)
