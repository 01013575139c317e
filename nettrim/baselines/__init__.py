"""Comparison pruning methods, with the calling convention of :func:`nettrim.prune_layer`.

Every *layer* method has the signature::

    method(W, X, *, sparsity, bias=None, relu=True, Y=None, <method options>) -> LayerPruneResult

with ``W`` of shape (M, N) (a conv weight flattened to ``(out, in * kh * kw)``), ``X`` of shape
(P, N) the layer input (unfolded patches for a conv layer; ignored by the data-free methods),
``bias`` of shape (M,) kept unchanged, and ``Y`` of shape (P, M) the target used for the reported
``relative_error`` (default: the unpruned layer's own output ``act(X W^T + b)``). The returned
report has the keys of :func:`nettrim.prune_layer`'s (``nonzeros``, ``total``, ``sparsity``,
``relative_error``, ``seconds``, ``solver`` = the method's name, ``status`` = ``"OPTIMAL"``, ...).

=====================  =============================================  ====================
name                   criterion (what is zeroed)                     grouping of the count
=====================  =============================================  ====================
``random``             uniformly random weights                       per layer
``magnitude``          smallest ``|W_ij|`` (Han et al. 2015)          per layer, or N:M
``global_magnitude``   smallest ``|W_ij|`` over all layers            whole model
``obd``                smallest ``w^2 H_jj / 2``, H the (ReLU-gated)  per layer
                       Gauss-Newton diagonal (LeCun et al. 1990)
``lobs``               smallest ``w^2 / [H^-1]_jj``, H = X^T X / P,   per layer
                       then the exact OBS update of the kept weights
                       (Dong et al. 2017)
``sparsegpt``          OBS column sweep with the Cholesky factor of   per block of columns,
                       ``H^-1`` and lazy batch updates (Frantar &     or n of every m
                       Alistarh 2023); unstructured or N:M            (``nm=(n, m)``)
``wanda``              smallest ``|W_ij| ||X_j||_2`` (Sun et al.      per output row,
                       2023)                                          or N:M
``alps``               ADMM on ``min ||X (W - W0)^T||^2`` s.t. at     per layer,
                       most k weights (top-k projection, rho          or N:M
                       schedule), then a CG refit on the support
                       (Meng et al. 2024)
=====================  =============================================  ====================

The number of zeros asked for is ``round(sparsity * count)`` in each group; weights that are
already zero count towards it (every criterion ranks them first) and stay zero, so a group with
more zeros than asked ends sparser than asked.

Model level: :func:`prune_baseline` captures the layers' inputs with :func:`nettrim.capture`,
runs a layer method on each layer (``sequential=True``: each layer sees the inputs produced by
the already-pruned layers before it, as SparseGPT does) and writes the weights back.
:func:`prune_structured` removes whole neurons / channels ranked by ``l1`` norm, ``apoz``
(average percentage of zeros, Hu et al. 2016), first-order ``taylor`` (Molchanov et al. 2017),
the ``oracle`` (the loss change measured with the unit removed), ``infogain`` (mutual
information between the unit's activation and the label) or ``mean_activation``, through
:func:`nettrim.model.surgery.remove_units`. :func:`hptd` is Han et al.'s
prune-then-retrain: magnitude pruning (global or per layer) followed by masked fine-tuning
(:func:`nettrim.finetune`).

One module per family, and the drivers:

* :mod:`.magnitude_family`: ``random_prune``, ``magnitude``, ``wanda``, ``global_magnitude``;
* :mod:`.obs_family`: ``obd``, ``lobs``, ``sparsegpt`` (second order);
* :mod:`.alps`: ``alps`` (l0-constrained reconstruction by ADMM, Meng et al. 2024);
* :mod:`.units`: the structured criteria ``l1``, ``apoz``, ``taylor``, ``oracle``,
  ``infogain``, ``mean_activation`` (``prune_structured``);
* :mod:`.driver`: ``prune_baseline`` (and the global rules, :data:`GLOBAL_SCORES`);
* :mod:`.retrain`: ``hptd``;
* :mod:`.masks`: the argument checks and mask selection the layer methods share.

A new family is one more module here, added to :data:`BASELINES`.
"""

from .alps import alps
from .driver import BASELINES, GLOBAL_SCORES, METHODS, prune_baseline
from .magnitude_family import global_magnitude, magnitude, random_prune, wanda
from .obs_family import DEFAULT_BLOCKSIZE, DEFAULT_DAMP, lobs, obd, sparsegpt
from .retrain import hptd
from .units import STRUCTURED_CRITERIA, information_gain, prune_structured, unit_scores

__all__ = [
    "BASELINES", "METHODS", "STRUCTURED_CRITERIA", "GLOBAL_SCORES", "DEFAULT_DAMP",
    "DEFAULT_BLOCKSIZE",
    "random_prune", "magnitude", "obd", "lobs", "sparsegpt", "wanda",
    "global_magnitude", "alps", "prune_baseline", "prune_structured", "unit_scores", "hptd",
    "information_gain",
]
