"""evalkit metrics inside a training loop: callbacks for the transformers Trainer and PyTorch Lightning.

Both evaluate the live model in place every ``every`` optimizer steps (and at
step 0, so a curve has its starting point) through :func:`evalkit.evaluate`,
which reuses the tasks, their instances and the tokenized texts between calls
and hands the loop back its train mode and RNG states untouched. The metrics
arrive as ``{"wikitext2/word_perplexity": ...}`` (see :func:`evalkit.api.flatten`)
wherever the loop logs::

    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    EvalkitCallback.attach(trainer, tasks="wikitext2,hellaswag", every=500, limit=100)
    trainer.train()

    trainer = lightning.Trainer(callbacks=[EvalkitLightningCallback(tokenizer=tokenizer, tasks="wikitext2", every=500, limit=100)])

Under DDP every rank evaluates its share of the requests (see
:mod:`evalkit.distributed`); the frameworks log from rank 0.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from evalkit.api import evaluate
from evalkit.errors import EvalkitError

_DEFAULT_TASKS = "wikitext2"


class PeriodicEvaluation:
    """What both callbacks share: evaluate at most once per step, when the step is due or when forced.

    ``evaluate_kwargs`` go to :func:`evalkit.evaluate` (``data_dir``,
    ``decoding``, ``batch_size``, ``bootstrap``...); ``bootstrap`` defaults to 0
    here, since a logger takes no confidence intervals. ``history`` keeps every
    ``(step, metrics)`` evaluated so far.
    """

    def __init__(self, tasks: str, every: int | None, limit: int | None, prefix: str, evaluate_kwargs: dict[str, Any]) -> None:
        if every is not None and every < 1:
            raise EvalkitError(f"every={every}: evaluate every N steps with N >= 1, or every=None for evaluation events only")
        self.tasks = tasks
        self.every = every
        self.limit = limit
        self.prefix = prefix
        self.kwargs = {"bootstrap": 0, **evaluate_kwargs}
        self.history: list[tuple[int, dict[str, float]]] = []
        self._last_step: int | None = None

    def __call__(self, model: Any, tokenizer: Any, step: int, *, force: bool = False) -> dict[str, float]:
        if step == self._last_step or (not force and self.every is None):
            return {}
        metrics = evaluate(
            model, tokenizer, tasks=self.tasks, limit=self.limit, flat=True,
            every=None if force else self.every, step=step, **self.kwargs,
        )
        if not metrics:  # not due at this step
            return {}
        self._last_step = step
        metrics = {self.prefix + name: value for name, value in metrics.items()}
        self.history.append((step, metrics))
        return metrics


class EvalkitCallback(TrainerCallback):
    """transformers ``TrainerCallback``: evalkit metrics every ``every`` steps and at each ``Trainer.evaluate``.

    Metrics are logged through ``trainer.log`` (so every reporting integration
    sees them) when the callback knows its trainer: create it with
    :meth:`attach`, or pass ``trainer=``. Without one they go to
    ``state.log_history``. At ``Trainer.evaluate`` they are also added to the
    returned metrics as ``eval_<task>/<metric>``, so ``metric_for_best_model``
    can name one.
    """

    def __init__(
        self,
        tasks: str = _DEFAULT_TASKS,
        *,
        every: int | None = None,
        limit: int | None = None,
        tokenizer: Any = None,
        trainer: Any = None,
        at_evaluate: bool = True,
        prefix: str = "",
        **evaluate_kwargs: Any,
    ) -> None:
        self.periodic = PeriodicEvaluation(tasks, every, limit, prefix, evaluate_kwargs)
        self.tokenizer = tokenizer
        self.trainer = trainer
        self.at_evaluate = at_evaluate

    @classmethod
    def attach(cls, trainer: Any, **kwargs: Any) -> EvalkitCallback:
        """Create the callback for ``trainer``, add it, and return it."""
        callback = cls(trainer=trainer, **kwargs)
        trainer.add_callback(callback)
        return callback

    @property
    def history(self) -> list[tuple[int, dict[str, float]]]:
        return self.periodic.history

    def on_train_begin(self, args, state, control, **kwargs):
        self._log(state, self._evaluate(state, kwargs))

    def on_step_end(self, args, state, control, **kwargs):
        self._log(state, self._evaluate(state, kwargs))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not self.at_evaluate:
            return
        found = {f"eval_{name}": value for name, value in self._evaluate(state, kwargs, force=True).items()}
        if metrics is not None:
            metrics.update(found)
        self._log(state, found)

    def _evaluate(self, state: Any, kwargs: dict[str, Any], force: bool = False) -> dict[str, float]:
        tokenizer = self.tokenizer or kwargs.get("processing_class") or kwargs.get("tokenizer")
        if tokenizer is None:
            raise EvalkitError("EvalkitCallback needs the tokenizer: pass tokenizer=... or give the Trainer processing_class=...")
        return self.periodic(kwargs["model"], tokenizer, state.global_step, force=force)

    def _log(self, state: Any, metrics: dict[str, float]) -> None:
        if not metrics:
            return
        if self.trainer is not None:
            self.trainer.log(dict(metrics))
        else:
            state.log_history.append({**metrics, "step": state.global_step})


def _lightning() -> Any:
    """``lightning.pytorch`` or the older ``pytorch_lightning``, whichever is installed."""
    try:
        import lightning.pytorch as pl
    except ImportError:
        try:
            import pytorch_lightning as pl
        except ImportError:
            raise EvalkitError("EvalkitLightningCallback needs PyTorch Lightning: pip install lightning") from None
    return pl


def _lightning_callback_class(pl: Any) -> type:
    class EvalkitLightningCallback(pl.Callback):
        """PyTorch Lightning callback: evalkit metrics every ``every`` steps, optionally after each validation.

        ``model_attr`` names the attribute of the LightningModule that holds the
        transformers model (default ``model``; None: the LightningModule itself).
        Metrics go to every logger of the trainer; after validation they are
        also ``pl_module.log``-ged, so a ModelCheckpoint can monitor them.
        """

        def __init__(
            self,
            tasks: str = _DEFAULT_TASKS,
            *,
            tokenizer: Any,
            every: int | None = None,
            limit: int | None = None,
            model_attr: str | None = "model",
            at_validation: bool = False,
            prefix: str = "",
            **evaluate_kwargs: Any,
        ) -> None:
            super().__init__()
            self.periodic = PeriodicEvaluation(tasks, every, limit, prefix, evaluate_kwargs)
            self.tokenizer = tokenizer
            self.model_attr = model_attr
            self.at_validation = at_validation

        @property
        def history(self) -> list[tuple[int, dict[str, float]]]:
            return self.periodic.history

        def on_train_start(self, trainer, pl_module):
            self._run(trainer, pl_module)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self._run(trainer, pl_module)

        def on_validation_epoch_end(self, trainer, pl_module):
            if self.at_validation and not trainer.sanity_checking:
                pl_module.log_dict(self._run(trainer, pl_module, force=True))

        def _run(self, trainer, pl_module, force: bool = False) -> dict[str, float]:
            model = getattr(pl_module, self.model_attr) if self.model_attr else pl_module
            metrics = self.periodic(model, self.tokenizer, trainer.global_step, force=force)
            if metrics:
                for logger in trainer.loggers:
                    logger.log_metrics(metrics, step=trainer.global_step)
            return metrics

    return EvalkitLightningCallback


def __getattr__(name: str) -> Any:
    """``EvalkitLightningCallback`` is built on first use, so importing this module never imports Lightning."""
    if name == "EvalkitLightningCallback":
        cls = _lightning_callback_class(_lightning())
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
