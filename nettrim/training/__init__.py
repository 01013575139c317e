"""Training a pruned model, and pruning while training.

* :mod:`.finetune`: masked fine-tuning, the zeros held exactly (``finetune.finetune``, also
  :func:`nettrim.finetune`).
* :mod:`.schedules`: the schedules' arithmetic (:class:`PolynomialDecay`,
  :class:`ConstantSparsity`, Han's threshold and dropout rule, DNS's probability and
  thresholds).
* :mod:`.sparsifier`: the base of the pruners: ``torch.nn.utils.prune`` masks on the layers and
  a ``step()`` the user's loop calls before every batch (:class:`Sparsifier`,
  :class:`SpliceMask`).
* :mod:`.han`, :mod:`.gradual`, :mod:`.dns`: :class:`HanPruner` (Han et al. 2015),
  :class:`GradualPruner` (Zhu & Gupta 2017), :class:`DNSPruner` (Guo et al. 2016).

Iterative Net-Trim calls the model driver, so it sits above it: :class:`nettrim.NetTrimPruner`
(:mod:`nettrim.iterative`); the whole loop is :func:`nettrim.train_prune`.
"""

from .dns import DNSPruner
from . import finetune
from .gradual import GradualPruner
from .han import HanPruner
from .schedules import (ConstantSparsity, PolynomialDecay, adjust_dropout, dns_probability,
                        dns_thresholds, han_threshold)
from .sparsifier import Sparsifier, SpliceMask

__all__ = ["ConstantSparsity", "DNSPruner", "GradualPruner", "HanPruner",
           "PolynomialDecay", "Sparsifier", "SpliceMask", "adjust_dropout", "dns_probability",
           "dns_thresholds", "finetune", "han_threshold"]
