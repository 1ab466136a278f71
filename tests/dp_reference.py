"""dp-accounting's own epsilon of a client's charged releases: the reference the accountant's figures are checked against."""


def releases_epsilon(planned, releases, delta):
    """dp-accounting's epsilon of `releases` rounds of `planned` (a DpRound of Poisson-sampled DP-SGD steps); 0 for none."""
    import dp_accounting as dpa

    if not releases:
        return 0.0
    step = dpa.PoissonSampledDpEvent(planned.sampling_rate, dpa.GaussianDpEvent(planned.noise_multiplier))
    return dpa.rdp.RdpAccountant().compose(dpa.SelfComposedDpEvent(step, planned.steps * releases)).get_epsilon(delta)
