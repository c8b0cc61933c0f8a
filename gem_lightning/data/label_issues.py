"""Which photos are likely mislabelled, and which classes overlap: confident learning (cleanlab) on out-of-fold
predictions over each photo's backbone features.

A logistic regression on the features is fitted once per fold without that fold, so every photo is predicted by
a classifier that never saw its label; cleanlab then flags the photos whose given class is improbable under the
class-pair noise rates it estimates (ranked most suspicious first), and the class pairs whose photos it finds
mixed. It lists; it never changes the folder or its labels.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence

import numpy as np
from cleanlab.count import estimate_cv_predicted_probabilities
from cleanlab.dataset import find_overlapping_classes
from cleanlab.filter import find_label_issues
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer

OVERLAPPING_PAIRS = 10  # class pairs listed, most mixed first


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """(N, K) probabilities, row i from a logistic regression fitted without photo i's fold."""
    # Unit-length features: the cosine geometry the novelty check uses too, and a quick, stable fit.
    classifier = make_pipeline(Normalizer(), LogisticRegression(C=10.0, max_iter=300))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 300 iterations are plenty for a ranking
        return estimate_cv_predicted_probabilities(features, labels, clf=classifier, cv_n_folds=folds, seed=seed)


def audit_labels(
    features: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    photos: Sequence[tuple[str, str]],
    folds: int = 5,
    seed: int = 0,
    filter_by: str = "prune_by_noise_rate",
) -> dict:
    """The data report's ``label_issues`` section for photos ``photos[i]`` = (path, split) labelled ``labels[i]``.

    ``issues``: suspicious photos, most first, each with its given class, the class the out-of-fold classifier
    suggests and both probabilities; ``overlapping_classes``: the most mixed class pairs. ``skipped`` (a reason)
    instead when the folder cannot be cross-validated (one class, or a class of a single photo).
    """
    counts = Counter(labels.tolist())
    folds = min(folds, min(counts.values(), default=0))
    if len(counts) < 2 or folds < 2:
        return {"skipped": "needs two classes of at least two photos each to cross-validate"}
    probabilities = out_of_fold_probabilities(features, labels, folds, seed)
    # One process: cleanlab would otherwise fork a pool, and a child forked beside a running thread (a sweep
    # worker's heartbeat, a loader) can wait forever on a lock that thread held; the work is milliseconds anyway.
    ranked = find_label_issues(
        labels, probabilities, filter_by=filter_by, return_indices_ranked_by="self_confidence", n_jobs=1
    )
    issues = []
    for index in ranked:
        suggested = int(probabilities[index].argmax())
        path, split = photos[index]
        issues.append(
            {
                "path": path,
                "split": split,
                "given": class_names[labels[index]],
                "suggested": class_names[suggested],
                "p_given": round(float(probabilities[index, labels[index]]), 4),
                "p_suggested": round(float(probabilities[index, suggested]), 4),
            }
        )
    overlapping = find_overlapping_classes(labels, probabilities, class_names=list(class_names))
    pairs = [
        {
            "classes": [row["Class Name A"], row["Class Name B"]],
            "photos": int(row["Num Overlapping Examples"]),
            "joint_probability": round(float(row["Joint Probability"]), 5),
        }
        for _, row in overlapping.head(OVERLAPPING_PAIRS).iterrows()
        if int(row["Num Overlapping Examples"]) > 0
    ]
    return {
        "method": f"cleanlab find_label_issues(filter_by={filter_by}) on {folds}-fold out-of-fold probabilities",
        "folds": folds,
        "out_of_fold_accuracy": round(float((probabilities.argmax(1) == labels).mean()), 4),
        "photos": len(labels),
        "issues": issues,
        "overlapping_classes": pairs,
    }
