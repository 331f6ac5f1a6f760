"""evalkit inside other tools: training-loop callbacks and evalkit as an lm-evaluation-harness model.

Nothing here is imported by ``import evalkit``; each module imports its
framework (transformers, lightning, lm-eval) only when it is used.

* :mod:`evalkit.integrations.callbacks`: ``EvalkitCallback`` (transformers ``Trainer``)
  and ``EvalkitLightningCallback`` (PyTorch Lightning).
* :mod:`evalkit.integrations.lm_eval_model`: evalkit's adapters as lm-eval's ``--model evalkit``.

(The other direction, lm-eval tasks in evalkit as ``--tasks lm_eval:<name>``, is a task
source: :mod:`evalkit.tasks.lm_eval`.)
"""
