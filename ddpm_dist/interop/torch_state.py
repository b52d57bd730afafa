"""A PyTorch state-dict file as numpy arrays (diffusers' ``.bin`` weights, pytorch-fid's Inception): PyTorch is
imported only here, only when such a file is read."""

from __future__ import annotations

from pathlib import Path

from ..errors import first_line


def read_torch_state(path: Path) -> dict:
    """``name -> float32 ndarray`` of a PyTorch state-dict file (tensors only, no pickled code is run)."""
    try:
        import torch
    except ImportError:
        raise ValueError(f"PyTorch is needed to read {path} (only to read this file): pip install torch") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file; this is one line for the user
        raise ValueError(f"{path}: not a readable PyTorch weights file ({first_line(err)[:200]})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a PyTorch state dict")
    return {k: v.detach().float().numpy() for k, v in state.items()}
