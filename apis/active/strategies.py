"""Point metrics: how informative each candidate pixel of one instance is (docs/design.md, "The method").

A metric turns the instance's prediction set ``probs [K, h, w]`` (K mask probability maps sampled at
the candidate pixels of its GT box, see :class:`apis.structures.PredictionSet`) into a score map
``[h, w]`` where **higher means more informative**. Selection is always the argmax of the score, so the
inverse strategies (least entropy, least error) return negated values.

Metrics live in a registry so that users can add their own::

    @register_metric
    class MyMetric(PointMetric):
        name = "my-metric"

        def score(self, probs, gt=None):
            ...

    metric = get_metric("my-metric")
"""

from __future__ import annotations

import torch
from torch import Tensor

ENTROPY_EPS = 1e-6
"""Probabilities are clamped to ``[eps, 1 - eps]`` before taking logs, so saturated maps stay finite."""


def binary_entropy(p: Tensor) -> Tensor:
    """``H(p) = -p log p - (1 - p) log(1 - p)`` in nats, elementwise; ``p`` clamped to ``[eps, 1-eps]``."""
    p = p.clamp(ENTROPY_EPS, 1.0 - ENTROPY_EPS)
    return -(p * torch.log(p) + (1.0 - p) * torch.log1p(-p))


class PointMetric:
    """One way to score the candidate pixels of an instance.

    Subclasses set ``name`` and implement :meth:`score`.

    * ``needs_gt``: the metric reads the instance's GT mask on the candidate grid (oracle strategies used
      only for analysis); selection refuses to run it without one.
    * ``uses_predictions``: when ``False`` the metric ignores ``probs``, so it is also called for an empty
      prediction set (K == 0); otherwise selection falls back to a uniformly random candidate for K == 0.
    """

    name: str = ""
    needs_gt: bool = False
    uses_predictions: bool = True

    def score(self, probs: Tensor, gt: Tensor | None = None) -> Tensor:
        """Score map ``[h, w]`` for ``probs [K, h, w]`` in [0, 1] and optional ``gt [h, w]`` in {0, 1}.

        Higher = more informative. Must not contain NaN.
        """
        raise NotImplementedError

    def value(self, probs: Tensor, gt: Tensor | None = None) -> Tensor:
        """The quantity reported as a selected point's uncertainty (``[h, w]``); by default the score."""
        return self.score(probs, gt)

    def fallback(self, k: int) -> str | None:
        """Name of the rule the metric switches to for a set of ``k`` members, or ``None``."""
        return None


_REGISTRY: dict[str, type[PointMetric]] = {}


def register_metric(cls: type[PointMetric]) -> type[PointMetric]:
    """Class decorator adding a :class:`PointMetric` subclass to the registry under ``cls.name``.

    A name taken by another class raises ``ValueError``.
    """
    if not (isinstance(cls, type) and issubclass(cls, PointMetric)):
        raise TypeError(f"register_metric expects a PointMetric subclass, got {cls!r}")
    if not isinstance(cls.name, str) or not cls.name:
        raise ValueError(f"metric class {cls.__qualname__} needs a non-empty string `name`")
    registered = _REGISTRY.get(cls.name)
    # A class redefined under the same module and qualified name (a re-run notebook cell) replaces itself.
    redefined = registered is not None and (registered.__module__, registered.__qualname__) == (
        cls.__module__, cls.__qualname__)
    if registered is not None and not redefined:
        raise ValueError(f"metric name {cls.name!r} is already registered by {registered.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def available_metrics() -> list[str]:
    """Registered metric names, sorted."""
    return sorted(_REGISTRY)


def get_metric(name: str) -> PointMetric:
    """A new instance of the metric registered as ``name``; unknown names raise ``ValueError``."""
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ValueError(f"unknown point metric {name!r}; available: {', '.join(available_metrics())}")
    return cls()


def _mean_probability(probs: Tensor) -> Tensor:
    """``p̄ = mean_k p^k``: ``[K, h, w]`` -> ``[h, w]``."""
    return probs.mean(dim=0)


def _require_gt(metric: PointMetric, probs: Tensor, gt: Tensor | None) -> Tensor:
    if gt is None:
        raise ValueError(f"metric {metric.name!r} needs the GT mask on the candidate grid (gt=None)")
    if tuple(gt.shape) != tuple(probs.shape[1:]):
        raise ValueError(f"metric {metric.name!r}: gt shape {tuple(gt.shape)} "
                         f"!= grid {tuple(probs.shape[1:])}")
    return gt.to(probs.dtype)


@register_metric
class RandomMetric(PointMetric):
    """Random baseline: a constant score, so selection's random tie-break is uniform over the candidates."""

    name = "random"
    uses_predictions = False

    def score(self, probs: Tensor, gt: Tensor | None = None) -> Tensor:
        return torch.zeros(probs.shape[1:], dtype=probs.dtype, device=probs.device)


@register_metric
class EntropyMetric(PointMetric):
    """Entropy of the averaged prediction: ``H(p̄)`` with ``p̄ = mean_k p^k`` (nats)."""

    name = "entropy"

    def score(self, probs: Tensor, gt: Tensor | None = None) -> Tensor:
        return binary_entropy(_mean_probability(probs))


@register_metric
class LeastEntropyMetric(PointMetric):
    """Inverse of entropy: score ``-H(p̄)``, i.e. picks the most confident pixel; reports ``H(p̄)``."""

    name = "least-entropy"

    def value(self, probs: Tensor, gt: Tensor | None = None) -> Tensor:
        return binary_entropy(_mean_probability(probs))

    def score(self, probs: Tensor, gt: Tensor | None = None) -> Tensor:
        return -self.value(probs, gt)


@register_metric
class VarianceMetric(PointMetric):
    """Disagreement: population variance over the set, ``mean_k (p^k - p̄)^2``.

    With a single member (K == 1) the variance is identically 0, so it uses ``H(p̄)`` instead.
    """

    name = "variance"

    def score(self, probs: Tensor, gt: Tensor | None = None) -> Tensor:
        if probs.shape[0] == 1:
            return binary_entropy(probs[0])
        return torch.var(probs, dim=0, correction=0)

    def fallback(self, k: int) -> str | None:
        return "single-prediction-entropy" if k == 1 else None


@register_metric
class BaldMetric(PointMetric):
    """BALD, the mutual information between the prediction and the set's members:
    ``H(p̄) - mean_k H(p^k)`` (nats), high where members are each confident but disagree.

    Meant for the "models" and "scales" sets, whose members are different models or views of one instance.
    With a single member (K == 1) it is identically 0, so it uses ``H(p̄)`` instead.
    """

    name = "bald"

    def score(self, probs: Tensor, gt: Tensor | None = None) -> Tensor:
        if probs.shape[0] == 1:
            return binary_entropy(probs[0])
        # Clamped entropies can make the difference a rounding error below 0; information is never negative.
        return (binary_entropy(_mean_probability(probs)) - binary_entropy(probs).mean(dim=0)).clamp_min(0.0)

    def fallback(self, k: int) -> str | None:
        return "single-prediction-entropy" if k == 1 else None


@register_metric
class MaxErrorMetric(PointMetric):
    """Oracle analysis strategy: error of the averaged prediction, ``|p̄ - gt|``; needs the GT mask."""

    name = "max-error"
    needs_gt = True

    def score(self, probs: Tensor, gt: Tensor | None = None) -> Tensor:
        return (_mean_probability(probs) - _require_gt(self, probs, gt)).abs()


@register_metric
class LeastErrorMetric(PointMetric):
    """Inverse oracle strategy: score ``-|p̄ - gt|`` (the best-predicted pixel); reports ``|p̄ - gt|``."""

    name = "least-error"
    needs_gt = True

    def value(self, probs: Tensor, gt: Tensor | None = None) -> Tensor:
        return (_mean_probability(probs) - _require_gt(self, probs, gt)).abs()

    def score(self, probs: Tensor, gt: Tensor | None = None) -> Tensor:
        return -self.value(probs, gt)
