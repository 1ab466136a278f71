"""Words a line shares between the terminal and the notebook."""


def counted(number: int, noun: str) -> str:
    """`1 round`, `2 rounds`: a run of one round (a quick try) read '1 rounds'."""
    return f"{number} {noun_for(number, noun)}"


def noun_for(number: int, noun: str) -> str:
    """`setting` for one, `settings` for more: the noun alone, where the names after it count themselves."""
    return noun if number == 1 else f"{noun}s"
