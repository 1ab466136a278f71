"""Words a line shares between the terminal and the notebook."""


def counted(number: int, noun: str) -> str:
    """`1 round`, `2 rounds`: a run of one round (a quick try) read '1 rounds'."""
    return f"{number} {noun_for(number, noun)}"


def noun_for(number: int, noun: str) -> str:
    """`setting` for one, `settings` for more: the noun alone, where the names after it count themselves."""
    return noun if number == 1 else f"{noun}s"


def run_start_words(clients: int, rounds: int, resumed_from: int = 0) -> str:
    """What follows 'Run ID' on a run's first line: a resumed run says it resumes, and from which round (it read as a
    new run's line, ', resumed after round 2' at its end in a terminal and not at all in a notebook)."""
    if not resumed_from:
        return f": {counted(clients, 'client')}, {counted(rounds, 'round')}"
    return (f" resumes from round {resumed_from + 1} of {rounds}: {counted(clients, 'client')}, "
            f"{counted(resumed_from, 'round')} done before")
