"""FedProx (Li et al. 2020): clients minimise loss + mu/2 ||w - w_global||^2; the server averages as FedAvg.

The proximal term lives in the client's training step (fedless_nb/function/handler.py); this strategy
only sends `proximal_mu` with every task. It accepts stragglers' partial work as it is (the paper's
"variable amounts of work"), unless `partial_work` says otherwise.
"""

from __future__ import annotations

from typing import Any, Sequence

from .fedavg import FedAvg
from .options import require


class FedProx(FedAvg):
    name = "fedprox"

    def __init__(self, proximal_mu: float = 0.01, partial_work: str = "accept") -> None:
        super().__init__(partial_work)
        require(proximal_mu >= 0, "proximal_mu", f"must be >= 0, got {proximal_mu}")
        self.proximal_mu = float(proximal_mu)

    def configure_round(self, round_number: int, client_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {client_id: {"proximal_mu": self.proximal_mu} for client_id in client_ids}
