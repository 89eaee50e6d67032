"""The recurrent pieces of PixelRNN (models/pixelrnn.py): an LSTM cell for several LSTMs side by side, a scan
that runs one step per row or diagonal as a single batched product, and the skew that turns diagonals into
columns for the Diagonal BiLSTM. Channels last throughout."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def lstm_cell(gates: Tensor, cell: Tensor, groups: int = 1) -> tuple[Tensor, Tensor]:
    """One LSTM update for `groups` independent LSTMs side by side, channels last: gates (..., groups * 4n) laid
    out per group as [output, forget, input, candidate], cells (..., groups * n) -> (hidden, cell) alike."""
    gates = gates.unflatten(-1, (groups, 4, -1))
    output, forget, input_ = torch.sigmoid(gates[..., :3, :]).unbind(-2)
    cell = forget * cell.unflatten(-1, (groups, -1)) + input_ * torch.tanh(gates[..., 3, :])
    return (output * torch.tanh(cell)).flatten(-2), cell.flatten(-2)


def state_matrix(conv: nn.Conv1d) -> Tensor:
    """A state-to-state convolution (its groups side by side) as one matrix on `neighbours`:
    (groups * 4n, k * groups * n)."""
    taps = [torch.block_diag(*(w[:, :, t] for w in conv.weight.chunk(conv.groups, dim=0)))
            for t in range(conv.weight.shape[-1])]
    return torch.cat(taps, dim=1)


def neighbours(hidden: Tensor, kernel: int, padding: int) -> Tensor:
    """(B, L, C) -> (B, L, kernel * C): at position l, the states at l - padding + t for t < kernel, side by
    side (zeros beyond the ends), which is what a 1-d convolution with that padding reads."""
    length = hidden.shape[1]
    padded = F.pad(hidden, (0, 0, padding, kernel - 1 - padding))
    return torch.cat([padded[:, t : t + length] for t in range(kernel)], dim=-1)


def lstm_scan(gates: Tensor, state_to_state: nn.Conv1d, valid: Optional[Tensor] = None,
              cells: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Run LSTMs along the steps: input-to-state gates (T, B, L, groups * 4n), T steps of L positions each,
    channels last; at each step the state-to-state convolution (`state_to_state`'s weights, one matrix product)
    of the step before's states (zeros at first) is added. `valid` (T, L): positions outside the image, whose
    states are kept at zero. -> the hidden states (T, B, L, groups * n), and with cells=True the cells too."""
    steps, batch, length, channels = gates.shape
    kernel, padding, groups = state_to_state.kernel_size[0], state_to_state.padding[0], state_to_state.groups
    matrix = state_matrix(state_to_state).t()
    hidden = gates.new_zeros(batch, length, channels // 4)
    cell = torch.zeros_like(hidden)
    states, kept_cells = [], []
    # One unbind, not a slice per step: each slice's gradient would be a zero-filled copy of all the gates.
    for t, step_gates in enumerate(gates.unbind(0)):
        features = neighbours(hidden, kernel, padding).flatten(0, 1)
        step_gates = torch.addmm(step_gates.flatten(0, 1), features, matrix).view(batch, length, channels)
        hidden, cell = lstm_cell(step_gates, cell, groups)
        if valid is not None:
            hidden, cell = hidden * valid[t, :, None], cell * valid[t, :, None]
        states.append(hidden)
        if cells:
            kept_cells.append(cell)
    if cells:
        return torch.stack(states), torch.stack(kept_cells)
    return torch.stack(states)


def skew(x: Tensor) -> Tensor:
    """Channels last, (B, H, W, C) -> (B, H, W + H - 1, C), row r moved r columns to the right: pixel (r, j)
    lands in column r + j, so each diagonal of the image becomes a column (zeros elsewhere). Rows of W + H
    zero-padded pixels read as rows of W + H - 1 do exactly that."""
    b, h, w, c = x.shape
    return F.pad(x, (0, 0, 0, h)).flatten(1, 2)[:, : h * (w + h - 1)].view(b, h, w + h - 1, c)


def unskew(x: Tensor, width: int) -> Tensor:
    """skew's inverse: (B, H, W + H - 1, C) -> (B, H, W, C)."""
    b, h, skewed, c = x.shape
    return F.pad(x.flatten(1, 2), (0, 0, 0, h)).view(b, h, skewed + 1, c)[:, :, :width]


def diagonal_validity(height: int, width: int, device: torch.device) -> Tensor:
    """(W + H - 1, H): does skewed column t, row r hold a pixel of the image?"""
    columns = torch.arange(width + height - 1, device=device).view(-1, 1)
    rows = torch.arange(height, device=device).view(1, -1)
    return ((columns - rows >= 0) & (columns - rows < width)).float()
