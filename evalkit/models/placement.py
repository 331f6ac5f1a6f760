"""Where a model's weights go and in what precision: the one table of dtype names and the device rules.

Every loader (the transformers adapter, the native engine, the backend
chooser, the lm-eval model type) takes the same ``dtype`` and ``device``
strings; reading them here once means a name one backend accepts is not an
error in another, and a missing GPU is the same one-line error everywhere.
"""

from __future__ import annotations

import torch

from evalkit.errors import EvalkitError

#: Accepted dtype names -> the torch dtype each means ("auto", the checkpoint's own dtype, is accepted too).
DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float64": torch.float64, "double": torch.float64,
}  # fmt: skip

#: The precisions the native engine runs.
NATIVE_DTYPES = frozenset({torch.float32, torch.bfloat16, torch.float16})


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    """A dtype name (or ``torch.float16``'s string) as a torch dtype; ``"auto"`` and torch dtypes pass through."""
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPE_NAMES:
        raise EvalkitError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_NAMES)} or auto")
    return DTYPE_NAMES[name]


def native_dtype_refusal(dtype: str | torch.dtype | None) -> str | None:
    """Why the native engine cannot run ``dtype`` (None: it can, or none was asked for); an unknown name is an error."""
    if dtype is None or parse_dtype(dtype) in NATIVE_DTYPES:
        return None
    return f"the native engine does not run dtype {str(dtype).removeprefix('torch.')!r} (only float32, bfloat16, float16)"


def load_dtype(dtype: str | torch.dtype | None, device: str | torch.device, accelerated: torch.dtype | str) -> torch.dtype | str:
    """The dtype to load weights in: ``dtype`` parsed, or by default float32 on CPU (bf16 matmuls are slow
    and inexact there) and ``accelerated`` on a GPU (the checkpoint's ``"auto"``, or a fixed dtype)."""
    if dtype is not None:
        return parse_dtype(dtype)
    return torch.float32 if torch.device(device).type == "cpu" else accelerated


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device; asking for CUDA where torch sees none is a one-line error, not a CUDA traceback."""
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise EvalkitError(f"unknown device {str(device)!r}; use cpu, cuda or cuda:N") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EvalkitError(f"device={str(device)!r} requested but CUDA is not available here; use device='cpu'")
    return dev


