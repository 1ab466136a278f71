"""Attack simulation: seeded malicious clients whose bad results are signed as a compromised function signs them."""

import pytest

from fedless_nb.providers import LocalProvider
from fedless_nb.providers.attacks import Attack, MaliciousProvider, malicious_clients
from fedless_nb.records.history import History
from fedless_nb.runner import client_ids, run_experiment
from fedless_nb.store import LocalStore, decode_arrays


def test_the_malicious_clients_are_an_exact_seeded_fraction():
    ids = client_ids(10)
    chosen = malicious_clients(ids, 0.2, seed=3)
    assert len(chosen) == 2 and chosen == malicious_clients(ids, 0.2, seed=3) and chosen <= set(ids)
    assert malicious_clients(ids, 0.0, seed=3) == set() and len(malicious_clients(ids, 1.0, seed=3)) == 10


@pytest.mark.parametrize("settings, message", [
    ({"kind": "backdoor"}, "kind: unknown attack 'backdoor'"),
    ({"kind": "sign_flip", "fraction": 1.5}, "fraction: must be between 0 and 1"),
    ({"kind": "sign_flip", "boost": 0}, "boost must be > 0"),
])
def test_attack_settings_are_checked(settings, message):
    with pytest.raises(ValueError, match=message):
        Attack(**settings)


@pytest.mark.parametrize("attack, outcome, cause", [
    (Attack("model_replacement", fraction=0.2, boost=1e5), "failed", "rejected"),  # signed, caught by the screening
    (Attack("inflated_counts", fraction=0.2, boost=100), "failed", "rejected"),   # signed, caught by the count check
    (Attack("label_flipping", fraction=0.2), "succeeded", None),                  # signed and plausible: accepted
])
def test_malicious_results_are_signed_so_only_the_controllers_checks_stop_them(tiny_config, attack, outcome, cause):
    config = tiny_config(clients=5, clients_per_round=5, rounds=1, retries=0)
    provider = MaliciousProvider(LocalProvider("local", workers=2), attack, client_ids(5))
    result = run_experiment(config, providers={"local": provider})
    (bad,) = provider.malicious
    invocations = {i["client_id"]: i for i in History(config.history).invocations(result.run_id)}
    assert (invocations[bad]["outcome"], invocations[bad]["cause"]) == (outcome, cause), invocations[bad]["error"]
    assert all(i["outcome"] == "succeeded" for c, i in invocations.items() if c != bad)
    assert provider.attacked[bad] == 1 and result.status == "finished"
    if attack.kind == "label_flipping":
        store = LocalStore(config.store.path)
        (key,) = [p.relative_to(store.root).as_posix() for p in store.root.glob("data/*-flipped/*.arrays")]
        assert key.endswith(f"/{bad}.arrays"), "the copy is the attacker's own data by its key"
        _, flipped = decode_arrays(store.get(key))
        _, honest = decode_arrays(store.get(key.replace("-flipped/", "/")))
        assert (flipped == 9 - honest).all()
