"""COMET through unbabel-comet: a hub id (e.g. Unbabel/wmt22-comet-da) or a local checkpoint.

The checkpoint is loaded once per process (cache keyed by checkpoint and
device) and scored with comet's own batched ``predict`` on the GPU when one
is present; the system score is the mean of the segment scores.

The signature names the model by content: a local checkpoint is
``local:<class>/<encoder>@<hash of its .ckpt>`` (so a folder called
``wmt22-comet-da`` does not pass for the hub model), a hub id is recorded with
the commit the cache holds. Lightning's banners and comet's own log lines are
kept off the terminal unless ``evalkit --verbose`` (see :mod:`evalkit.quiet`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evalkit.devices import default_device
from evalkit.errors import EvalkitError
from evalkit.metrics.artefacts import comet_identity, hub_identity, hub_revision, is_local
from evalkit.metrics.corpus import MeanMetric, check_lengths, reference_lists
from evalkit.metrics.signature import make_signature, version
from evalkit.quiet import library_output

_MODELS: dict[tuple[str, str], Any] = {}


def resolve_checkpoint(model: str) -> Path:
    """``model.ckpt`` of a local checkpoint folder (comet layout: hparams.yaml + checkpoints/), a .ckpt file, or a hub id."""
    path = Path(model)
    if path.is_file():
        return path
    if path.is_dir():
        found = sorted((path / "checkpoints").glob("*.ckpt"))
        if not found:
            raise EvalkitError(f"comet: {path} has no checkpoints/*.ckpt; give a comet checkpoint folder or a hub id")
        return found[0]
    with library_output():
        from comet import download_model
    try:
        if hub_revision(model) is None:  # a first download shows its progress; a cached one prints nothing
            return Path(download_model(model))
        with library_output():
            return Path(download_model(model))
    except KeyError:
        raise EvalkitError(f"comet: cannot find {model!r} locally or on the hub; give a checkpoint folder or e.g. Unbabel/wmt22-comet-da") from None


def load_comet(model: str, device: str) -> Any:
    key = (model, device)
    if key not in _MODELS:
        checkpoint = resolve_checkpoint(model)
        with library_output():
            from comet import load_from_checkpoint

            comet_model = load_from_checkpoint(str(checkpoint))
        comet_model.eval()
        _MODELS[key] = comet_model
    return _MODELS[key]


class COMET(MeanMetric):
    """Segment COMET scores; the corpus (system) score is their mean, as comet reports it."""

    name = "comet"
    description = "COMET (unbabel-comet), hub id or local checkpoint; needs sources"
    needs_sources = True

    def __init__(self, model: str = "Unbabel/wmt22-comet-da", batch_size: int = 16, device: str | None = None) -> None:
        self.model = model
        self.batch_size = batch_size
        self.device = device

    def _device(self) -> str:
        return self.device or default_device()

    def item_scores(self, predictions, references, sources=None):
        check_lengths(predictions, references, self.name)
        if sources is None or len(sources) != len(predictions):
            raise EvalkitError("comet: needs one source sentence per prediction; pass sources (e.g. --source-field)")
        refs = reference_lists(references, self.name)
        device = self._device()
        model = load_comet(self.model, device)
        data = [{"src": s, "mt": p, "ref": r[0]} for s, p, r in zip(sources, predictions, refs)]
        with library_output():
            output = model.predict(
                data, batch_size=self.batch_size, gpus=1 if device.startswith("cuda") else 0, progress_bar=False
            )
        return [float(x) for x in output.scores]

    def signature(self) -> str:
        model = comet_identity(resolve_checkpoint(self.model)) if is_local(self.model) else hub_identity(self.model)
        return make_signature(self.name, model=model, refs="first", batch=self.batch_size, version=version("unbabel-comet"), torch=version("torch"))
