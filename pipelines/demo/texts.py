"""Texts about digits: number words, numerals and short sentences ("seven", "the number after six", "7 is prime")."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.demo.glyphs import WORDS

_PRIMES = {2, 3, 5, 7}
_THINGS = ("apples", "birds", "cats", "books", "stars", "boats", "chairs", "coins", "trees", "cups")


def digit_sentences(digit: int) -> list[str]:
    """Every sentence the generator knows for ``digit``, distinct, in a fixed order (more than 130 per digit).

    Each names the digit as a word, as a numeral, or through a neighbour or a sum, so a text model can learn the class
    from the words; sentences of every digit share the same templates, so the template itself says nothing.
    """
    word, num = WORDS[digit], str(digit)
    parity = "even" if digit % 2 == 0 else "odd"
    prime = "prime" if digit in _PRIMES else "not prime"
    names = (word, num, word.capitalize())
    out: list[str] = [word, num, f"{word.capitalize()}.", f"{num}!"]
    for name in names:
        out += [f"the number {name}", f"the digit {name}", f"number {name}", f"{name} is {parity}",
                f"{name} is {prime}", f"write down {name}", f"say {name}", f"a handwritten {name}",
                f"page {name}", f"it was {name} o'clock", f"we need {name} more", f"{name} is my lucky number"]
        out += [f"{name} {thing}" for thing in _THINGS]
        out += [f"there are {name} {thing} on the table" for thing in _THINGS]
        out += [f"I counted {name} {thing}" for thing in _THINGS]
    if digit > 0:
        out += [f"the number after {WORDS[digit - 1]}", f"one more than {WORDS[digit - 1]}", f"{digit - 1} plus one"]
    if digit < 9:
        out += [f"the number before {WORDS[digit + 1]}", f"one less than {WORDS[digit + 1]}", f"{digit + 1} minus one"]
    for a in range(digit + 1):
        out += [f"{WORDS[a]} plus {WORDS[digit - a]}", f"{a} + {digit - a} = {num}"]
    return list(dict.fromkeys(out))


def write_text(path: Path, digit: int, rng: np.random.Generator, *, exclude: set[str]) -> Path:
    """Write one sentence about ``digit`` not in ``exclude`` (which it then joins) to ``path`` (UTF-8, one line)."""
    pool = [s for s in digit_sentences(digit) if s not in exclude]
    sentence = pool[rng.integers(len(pool))]
    exclude.add(sentence)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(sentence + "\n", encoding="utf-8")
    return path
