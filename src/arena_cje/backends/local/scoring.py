"""Teacher forcing on token ids: ``log_softmax(z / T)`` of each response token, in one pass.

The prompt prefix and the response are given as separate id rows and *concatenated* (never
tokenised together, so no token can straddle the boundary). Rows are left-padded with an attention
mask and explicit position ids ``cumsum(mask) - 1``, so padding changes nothing.
"""

from __future__ import annotations

from typing import Any

import torch


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded ids, attention mask and position ids ``cumsum(mask) - 1`` (0 on padding)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


@torch.inference_mode()
def score_ids(
    model: Any, prompt_rows: list[list[int]], response_rows: list[list[int]], temperature: float, pad_id: int
) -> list[list[float]]:
    """Per-token ``log_softmax(z / T)`` of each response row given its prompt row (one batch).

    ``response_rows`` hold exactly the tokens to score (end-of-turn appended by the caller).
    Rows are left-padded, so every row ends in the last column and the response logits are
    the last ``max_len + 1`` columns (``logits_to_keep`` saves computing the rest).

    Raises:
        ValueError: ``temperature <= 0`` (argmax decoding has no log-probabilities).
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0 to have log-probabilities")
    rows = [p + r for p, r in zip(prompt_rows, response_rows, strict=True)]
    ids, mask, positions = left_pad(rows, pad_id)
    longest = max(len(r) for r in response_rows)
    logits = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=longest + 1, use_cache=False
    ).logits
    targets = ids[:, -longest:]
    out = []
    for i, r in enumerate(response_rows):
        # Column j of logits[:, :-1] predicts token column (width - longest + j); only this
        # row's last len(r) columns are its response. float64 as in sampling (one row at a
        # time keeps the float64 copy small).
        z = logits[i, longest - len(r) : longest].double() / temperature
        logp = torch.log_softmax(z, dim=-1).gather(1, targets[i, longest - len(r) :, None])[:, 0]
        out.append(logp.tolist())
    return out
