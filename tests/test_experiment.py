import pytest

from fedless_nb.experiment import ConfigError, ExperimentConfig, load_config


def test_defaults_are_valid_and_round_trip_through_yaml(tmp_path):
    config = ExperimentConfig.from_dict({})
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml())
    assert load_config(path) == config


def test_clients_per_round_defaults_to_five_or_every_client():
    assert ExperimentConfig.from_dict({}).clients_per_round == 5
    assert ExperimentConfig.from_dict({"clients": 4}).clients_per_round == 4
    assert ExperimentConfig.from_dict({"clients": 4, "clients_per_round": 2}).clients_per_round == 2


def test_nested_values_are_read():
    config = ExperimentConfig.from_dict({
        "clients": 8, "clients_per_round": 4, "data": {"partition": "dirichlet", "alpha": 1},
        "train": {"epochs": 2, "learning_rate": 0.05}, "providers": [{"kind": "local", "workers": 3}],
    })
    assert config.data.alpha == 1.0 and isinstance(config.data.alpha, float)
    assert config.train.epochs == 2 and config.providers[0].workers == 3


@pytest.mark.parametrize("data, message", [
    ({"rounds": 0}, "rounds: must be >= 1"),
    ({"clients": 5, "clients_per_round": 6}, r"clients_per_round: must be between 1 and clients \(5\)"),
    ({"clients": 4, "mode": "async", "asynchronous": {"buffer_size": 6}},
     r"asynchronous.buffer_size: must be between 1 and clients \(4\), got 6: each client trains once per global"),
    ({"mode": "async", "asynchronous": {"buffer_size": 0}}, r"asynchronous.buffer_size: must be between 1 and clients"),
    ({"data": {"alpha": 0}}, "data.alpha: must be > 0"),
    ({"data": {"alpha": -1.5}}, "data.alpha: must be > 0"),
    ({"train": {"epoch": 3}}, "train.epoch: unknown key \\(did you mean 'epochs'\\?\\)"),
    ({"colour": "red"}, "colour: unknown key"),
    ({"train": {"lr": 0.1}}, r"train.lr: unknown key \(did you mean 'learning_rate'\?\)"),
    ({"num_rounds": 5}, r"num_rounds: unknown key \(did you mean 'rounds'\?\)"),
    ({"train": {"dp": {"clip_norm": 1.0}}}, r"train.dp.clip_norm: unknown key \(did you mean 'l2_norm_clip'\?\)"),
    ({"central_dp": {"l2_norm_clip": 1.0}}, r"central_dp.l2_norm_clip: unknown key \(did you mean 'clip_norm'\?\)"),
    ({"train": {"batch_size": "32"}}, "train.batch_size: must be int, got str '32'"),
    ({"train": {"epochs": True}}, "train.epochs: must be int, got bool"),
    ({"train": {"learning_rate": -1}}, "train.learning_rate: must be > 0"),
    ({"train": {"optimizer": "lion"}}, "train.optimizer: unknown value 'lion'"),
    ({"data": {"dataset": "imagenet"}}, "data.dataset: unknown value 'imagenet'; choose one of .*digits"),
    ({"data": {"partition": "random"}}, "data.partition: unknown value 'random'"),
    # a name in another case: difflib compares case, and found nothing near 'MNIST' or 'FedAvg'
    ({"data": {"dataset": "MNIST"}}, r"data.dataset: unknown value 'MNIST' \(did you mean 'mnist'\?\)"),
    ({"strategy": {"name": "FedAvg"}}, r"strategy.name: unknown value 'FedAvg' \(did you mean 'fedavg'\?\)"),
    ({"strategy": {"name": "fedsgd"}}, "strategy.name: unknown value 'fedsgd'"),
    ({"providers": [{"kind": "mainframe"}]}, r"providers\[0\].kind: unknown value 'mainframe'"),
    ({"providers": [{"workers": 0}]}, r"providers\[0\].workers: must be >= 1"),
    ({"providers": "local"}, "providers: must be a list"),
    ({"clients": 4, "clients_per_round": 2, "providers": [{"name": "a", "clients": 3}]}, "assign 3 clients in all"),
    ({"train": []}, "train: must be a mapping"),
    # a section given the value of its naming key (a sweep's `strategy: [fedavg, fedprox]`, --set strategy=fedprox)
    ({"strategy": "fedprox"}, r"^strategy: must be a mapping of keys to values, got str \(did you mean strategy.name: "
                              r"'fedprox'\?\)$"),
    ({"data": "mnist"}, r"^data: must be a mapping of keys to values, got str \(did you mean data.dataset: 'mnist'\?\)$"),
    ({"train": 5}, r"^train: must be a mapping of keys to values, got int$"),
    ({"train": {"dp": {"accountant": "pld", "noise_multiplier": 0.001}}},
     r"train.dp.accountant: pld cannot account noise_multiplier 0.001 .*use accountant rdp or raise train.dp.noise_multiplier"),
    ({"central_dp": {"accountant": "pld", "noise_multiplier": 0.05}},
     r"central_dp.accountant: pld cannot account noise_multiplier 0.05 .*raise central_dp.noise_multiplier"),
])
def test_bad_values_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_dict(data)


def test_pld_accepts_noise_it_can_account_and_no_noise():
    for noise in (0.0, 0.1, 1.0):
        config = ExperimentConfig.from_dict({"train": {"dp": {"accountant": "pld", "noise_multiplier": noise}},
                                             "central_dp": {"accountant": "pld", "noise_multiplier": noise}})
        assert config.train.dp.noise_multiplier == config.central_dp.noise_multiplier == noise


def test_yaml_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("rounds: 3\ntrain:\n  epochs: [1\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML at line"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    for text in ("", "\n  \n", "# rounds: 3\n", "# asynchronous: {buffer_size: 2}\n"):
        (tmp_path / "empty.yaml").write_text(text)
        with pytest.raises(ConfigError, match=r"empty.yaml is empty: write the settings to change in it \(\{\} runs every"):
            load_config(tmp_path / "empty.yaml")
    (tmp_path / "defaults.yaml").write_text("{}\n")
    assert load_config(tmp_path / "defaults.yaml") == ExperimentConfig.from_dict({})
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="config: must be a mapping"):
        load_config(tmp_path / "list.yaml")


@pytest.mark.parametrize("data, message", [
    ({"name": "../other-run"}, "name: must be 1-64 ASCII letters, digits and '._-'"),
    # 'letters' read as any letter: a name in the user's language was refused without a word of why
    ({"name": "Überlauf-ä"}, r"name: must be 1-64 ASCII letters, .*got 'Überlauf-ä' \(did you mean 'Uberlauf-a'\?\)$"),
    ({"name": "-run"}, r"the first a letter or digit .*got '-run' \(did you mean 'run'\?\)$"),
    ({"name": "实验"}, r"got '实验'$"),  # nothing of it is ASCII: no name to offer
    ({"name": "a/b"}, "name: must be 1-64 ASCII letters"),
    ({"name": "run\n"}, "name: must be 1-64 ASCII letters"),
    ({"round_deadline": float("inf")}, "round_deadline: must be a finite number of seconds"),
    ({"round_deadline": float("nan")}, "round_deadline: must be a finite number of seconds"),
    ({"providers": [{"timeout": float("inf")}]}, r"providers\[0\].timeout: must be a finite number"),
    ({"store": {"kind": "s3", "bucket": "bkt", "endpoint_url": "https://user:pw@minio.local"}},
     "store.endpoint_url: holds credentials"),
    ({"providers": [{"kind": "http", "url": "https://fn.example/run?X-Amz-Signature=abc"}]},
     r"providers\[0\].url: holds a function key or signature \(X-Amz-Signature=...\)"),
    ({"providers": [{"kind": "http", "url": "https://me:secret@fn.example/run"}]}, r"providers\[0\].url: holds credentials"),
])
def test_names_deadlines_and_endpoints_that_would_leak_or_break_are_refused(data, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_dict(data)
