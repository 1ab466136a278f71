"""An empirical privacy audit: how well can an attacker tell a client's training examples from
held-out ones, given the final model? (membership inference)

Built after tensorflow-privacy's privacy_tests.membership_inference_attack (Shokri et al. 2017;
Yeom et al. 2018), on scikit-learn rather than on that module: tensorflow-privacy 0.9.0's wheel
does not ship privacy_tests, and the release that does requires Keras 3. Two attacks, each
reported as the ROC AUC of telling members from non-members (0.5: no better than a coin):
  loss threshold  the attacker's score is the negative per-example loss (Yeom et al.)
  trained         a logistic regression on (loss, top probability, entropy, correct), trained on
                  half of a balanced member / non-member sample and scored on the other half
Each attack's ROC curve (scikit-learn's roc_curve, as tensorflow-privacy's RocCurve) gives its AUC, the
attacker advantage max |tpr - fpr| (Yeom et al., Def. 4, over all thresholds) and the positive predictive
value max tpr / (tpr + fpr) (Jayaraman et al.; the sample is balanced, so tensorflow-privacy's test/train
ratio is 1, and where tpr and fpr are both 0 it takes 1 / 2), by tensorflow-privacy's definitions; the loss is
its log_loss (the true class's probability floored at 1e-8). One difference on purpose: members are the
positive class here, as in Jayaraman et al.; tensorflow-privacy labels the non-members 1 (its issue #140), which
leaves AUC and advantage as they are but makes its PPV the precision of calling an example a non-member. No empirical epsilon lower bound is reported:
one that holds needs examples included or left out at random (canaries), and these members were not.
An AUC is evidence of leakage (or of its absence against these attacks), never a proof of
privacy: epsilon is the guarantee.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


_LOSS_FLOOR = 1e-8  # tensorflow-privacy's log_loss small_value
_ZERO = 1e-3  # tensorflow-privacy's _ABSOLUTE_TOLERANCE: where tpr and fpr count as both 0 for the PPV


@dataclass(frozen=True)
class AttackFigures:
    """One attack's ROC figures, by tensorflow-privacy's RocCurve definitions."""

    auc: float
    advantage: float
    ppv: float


def attack_figures(is_member: np.ndarray, scores: np.ndarray) -> AttackFigures:
    """AUC, attacker advantage and PPV of scoring membership by `scores` (higher: member) on a balanced sample."""
    from sklearn.metrics import auc, roc_curve

    fpr, tpr, _ = roc_curve(is_member, scores)
    both_zero = np.isclose(tpr, 0.0, atol=_ZERO) & np.isclose(fpr, 0.0, atol=_ZERO)
    ppv = np.where(both_zero, 0.5, np.divide(tpr, tpr + fpr, out=np.zeros_like(tpr), where=tpr + fpr != 0))
    return AttackFigures(float(auc(fpr, tpr)), float(np.max(np.abs(tpr - fpr))), float(np.max(ppv)))


@dataclass(frozen=True)
class MembershipAudit:
    loss_threshold: AttackFigures
    trained_attack: AttackFigures
    members: int
    non_members: int

    @property
    def loss_threshold_auc(self) -> float:
        return self.loss_threshold.auc

    @property
    def trained_attack_auc(self) -> float:
        return self.trained_attack.auc

    @property
    def auc(self) -> float:
        """The stronger attack's AUC (tensorflow-privacy reports the maximum over its attacks)."""
        return max(self.loss_threshold.auc, self.trained_attack.auc)

    @property
    def advantage(self) -> float:
        """The larger attacker advantage of the two attacks."""
        return max(self.loss_threshold.advantage, self.trained_attack.advantage)

    def to_dict(self) -> dict[str, Any]:
        return {**{f"{attack}_{name}": value for attack in ("loss_threshold", "trained_attack")
                   for name, value in asdict(getattr(self, attack)).items()},
                "members": self.members, "non_members": self.non_members, "auc": self.auc, "advantage": self.advantage}


def _attack_features(model: Any, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per example: loss, top probability, entropy and whether the prediction is right."""
    predicted = np.asarray(model.predict(x, batch_size=1024, verbose=0), np.float64)
    loss = -np.log(np.maximum(predicted[np.arange(len(y)), np.asarray(y, np.int64).ravel()], _LOSS_FLOOR))
    probabilities = np.clip(predicted, 1e-12, 1.0)
    entropy = -np.sum(probabilities * np.log(probabilities), axis=1)
    correct = (np.argmax(probabilities, axis=1) == np.asarray(y).ravel()).astype(np.float64)
    return np.column_stack([loss, probabilities.max(axis=1), entropy, correct])


def membership_audit(model: Any, members: tuple[np.ndarray, np.ndarray], non_members: tuple[np.ndarray, np.ndarray],
                     seed: int = 0) -> MembershipAudit:
    """Both attacks against `model` (a Keras classifier with softmax outputs) on a balanced sample:
    as many non-members as members, drawn under `seed`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    count = min(len(members[0]), len(non_members[0]))
    if count < 4:
        raise ValueError(f"a membership audit needs at least 4 members and non-members, got {count}")
    take_in, take_out = rng.choice(len(members[0]), count, replace=False), rng.choice(len(non_members[0]), count, replace=False)
    features = np.vstack([_attack_features(model, members[0][take_in], members[1][take_in]),
                          _attack_features(model, non_members[0][take_out], non_members[1][take_out])])
    labels = np.r_[np.ones(count), np.zeros(count)]
    loss_threshold = attack_figures(labels, -features[:, 0])
    train_x, test_x, train_y, test_y = train_test_split(features, labels, test_size=0.5, stratify=labels, random_state=seed)
    attack = make_pipeline(StandardScaler(), LogisticRegression()).fit(train_x, train_y)
    trained = attack_figures(test_y, attack.predict_proba(test_x)[:, 1])
    return MembershipAudit(loss_threshold, trained, count, count)


def audit_run(result: Any, client_id: str = "client-0000", seed: int = 0) -> MembershipAudit:
    """Audit a finished run's final model against `client_id`'s training data vs the held-out test split."""
    from ..data import load_dataset
    from ..runner import client_partition

    config = result.config
    dataset = load_dataset(config.data.dataset, **config.data.options)
    indices = client_partition(config, dataset, client_id)
    return membership_audit(result.model(), (dataset.x_train[indices], dataset.y_train[indices]),
                            (dataset.x_test, dataset.y_test), seed)
