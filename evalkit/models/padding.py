"""Padding rows of different lengths into one batch: the one helper every backend shares."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def left_pad(prompts: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (0 on padding) and positions (0 upwards; -1 on padding) of prompts aligned right."""
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    positions = torch.full((len(prompts), width), -1, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        positions[row, width - len(prompt) :] = torch.arange(len(prompt))
    return ids.to(device), positions.to(device)
