"""Training a pruned model: masked fine-tuning (:mod:`.finetune`), its zeros held exactly.

The room for pruning during training (schedules that change the sparsity step by step while
the user's loop trains). :mod:`.finetune` needs only torch and the data helpers, so it sits low
(the baselines' prune-then-retrain uses it); a schedule that calls the model driver
(:func:`nettrim.prune`) takes a floor above it (``tests/test_layout.py``).

The submodules are imported where they are used (this package imports none of them).
"""

__all__ = ["finetune"]
