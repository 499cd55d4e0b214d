"""TelemetrySynthesizer: group bit sequences by their telemetry and pick one representative each.

Each sequence becomes a feature vector — its own K (byte negentropy) and C (exact LZ76), plus,
given a model, the K, C and S of the model's predictions on it — standardised per feature (so
no feature dominates by scale), then k-means (Lloyd's algorithm from k-means++ seeds, plain
torch, seeded) groups them. The representative of a cluster is its member nearest the centroid:
a small, diverse sample of a corpus (or of generated output) as the telemetry sees it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bitlm.core.errors import BitLMError
from bitlm.model.transformer import evaluating
from bitlm.telemetry.metrics import lz76_complexity, negentropy, prediction_telemetry


@dataclass
class Clusters:
    labels: Tensor  # (N,) cluster of each sequence
    centroids: Tensor  # (k, F) in standardised feature units
    representatives: Tensor  # (k,) index of each cluster's member nearest its centroid
    sequences: Tensor  # (k, L) the representative sequences
    features: Tensor  # (N, F) raw features, columns named by ``feature_names``
    feature_names: list[str]


class TelemetrySynthesizer:
    def __init__(
        self,
        model: torch.nn.Module | None = None,
        reference: Tensor | None = None,
        max_iterations: int = 100,
        seed: int = 0,
    ) -> None:
        """``model`` (optional) adds its predictions' K, C and S (against ``reference``, P(bit=1)
        per frame position; default 0.5 each) to the features."""
        self.model = model
        self.reference = reference if reference is not None else torch.full((9,), 0.5)
        self.max_iterations = max_iterations
        self.seed = seed

    def features(self, bits: Tensor) -> tuple[Tensor, list[str]]:
        """Telemetry features (N, F) of bit sequences (N, 9n) and their names."""
        columns = {"K": negentropy(bits), "C_lz76": lz76_complexity(bits)}
        if self.model is not None:
            with evaluating(self.model), torch.no_grad():
                logits, _ = self.model(bits)
            predicted = prediction_telemetry(logits, self.reference)
            columns |= {"K_pred": predicted["K"], "C_pred": predicted["C"], "S": predicted["S"]}
        return torch.stack([c.float().cpu() for c in columns.values()], dim=1), list(columns)

    def cluster_sequences(self, bits: Tensor, n_clusters: int) -> Clusters:
        """k-means over the telemetry of bit sequences (N, 9n) into ``n_clusters`` groups."""
        if bits.dim() != 2 or bits.size(0) == 0:
            raise BitLMError(f"expected bit sequences (N, 9n), got shape {tuple(bits.shape)}")
        if not 1 <= n_clusters <= bits.size(0):
            raise BitLMError(
                f"n_clusters={n_clusters} must be between 1 and the {bits.size(0)} sequences"
            )
        raw, names = self.features(bits)
        x = (raw - raw.mean(0)) / raw.std(0, unbiased=False).clamp(min=1e-6)
        generator = torch.Generator().manual_seed(self.seed)
        centroids, labels = kmeans(x, n_clusters, self.max_iterations, generator)
        distances = torch.cdist(x, centroids)  # (N, k)
        members = labels[:, None] == torch.arange(n_clusters)
        representatives = distances.masked_fill(~members, float("inf")).argmin(0)
        return Clusters(labels, centroids, representatives, bits[representatives], raw, names)


def kmeans(
    x: Tensor, k: int, max_iterations: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``(centroids (k, F), labels (N,))`` of Lloyd's algorithm on points x (N, F), seeded by
    k-means++ (each next seed drawn with probability ∝ squared distance to the nearest seed);
    stops when no label changes. A cluster left empty takes the point farthest from its own
    centroid."""
    centroids = _kmeans_plus_plus(x, k, generator)
    labels = torch.full((x.size(0),), -1, dtype=torch.long)
    for _ in range(max_iterations):
        distances = torch.cdist(x, centroids)
        new_labels = distances.argmin(1)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
        for j in range(k):
            members = labels == j
            if members.any():
                centroids[j] = x[members].mean(0)
            else:
                farthest = distances.gather(1, labels[:, None]).squeeze(1).argmax()
                centroids[j] = x[farthest]
                labels[farthest] = j
    return centroids, labels


def _kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    first = torch.randint(x.size(0), (1,), generator=generator)
    centroids = [x[first[0]]]
    for _ in range(1, k):
        nearest = torch.cdist(x, torch.stack(centroids)).min(1).values ** 2
        # all points already coinciding with a seed: draw uniformly
        weights = torch.ones_like(nearest) if nearest.sum() <= 0 else nearest
        centroids.append(x[torch.multinomial(weights, 1, generator=generator)[0]])
    return torch.stack(centroids).clone()
