"""Keyword sets as word-indexed phrases, matched per word of a text.

A phrase is matched on whole words, case-insensitively; a space also matches "-" or "_", and a
trailing ``*`` makes its last word a stem. Phrases are indexed by their first word (or first two
words, when a first word such as "in" opens many), so matching costs a dictionary look-up per word
rather than one regex alternation per set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["WORD_RE", "Category", "Follow", "PhraseIndex", "Spec", "index_phrases"]

#: Words for keyword matching: "trade-off", "trade_off" and "trade off" are all the words trade, off.
WORD_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
#: Distinct words whose phrases are remembered per index.
WORD_CACHE_SIZE = 50_000

#: Keyword sets to index: name, phrases, weight and the label used in reasons.
Spec = list[tuple[str, list[str], float, str]]


@dataclass(frozen=True, slots=True)
class Category:
    """A keyword set: its name, its weight and how reasons describe it."""

    name: str
    weight: float
    label: str


#: One phrase whose first word is known: the words after it, whether its last word is a stem,
#: and the index of its category.
Follow = tuple[tuple[str, ...], bool, int]


@dataclass(frozen=True, slots=True)
class PhraseIndex:
    """The keyword sets of one settings object as word-indexed phrases (matched per word, not by
    one regex alternation per set, which costs tens of microseconds on every ask)."""

    categories: tuple[Category, ...]
    #: Exact first word -> one-word phrases and phrases whose second word is a stem (``trade off*``).
    exact: dict[str, tuple[Follow, ...]]
    #: Exact first two words -> the longer phrases that start with them ("in", "what" open many).
    pairs: dict[tuple[str, str], tuple[Follow, ...]]
    #: The first words of ``pairs``.
    pair_words: frozenset[str]
    #: Stemmed first words (``architect*``), checked once per distinct word, then cached.
    stems: tuple[tuple[str, Follow], ...]
    #: The pasted-input cue and pointer sets alone, for finding where pasted material starts.
    intro: PhraseIndex | None = None
    words: dict[str, tuple[Follow, ...]] = field(default_factory=dict)

    def phrases_at(self, word: str) -> tuple[Follow, ...]:
        """The phrases that may start at ``word`` (its exact and stem entries), remembered."""
        known = self.words.get(word)
        if known is None:
            known = self.exact.get(word, ()) + tuple(f for stem, f in self.stems if word.startswith(stem))
            if len(self.words) >= WORD_CACHE_SIZE:
                self.words.clear()
            self.words[word] = known
        return known

    def match(self, text: str) -> list[list[str]]:
        """For each category, the distinct phrases found in ``text`` (lowercase), in order."""
        return self.match_words(WORD_RE.findall(text))

    def match_words(self, words: list[str]) -> list[list[str]]:
        """:meth:`match` on the words of a text."""
        hits: list[list[str]] = [[] for _ in self.categories]
        count = len(words)
        for i, word in enumerate(words):
            follows = self.phrases_at(word)
            if word in self.pair_words and i + 1 < count:
                pair = self.pairs.get((word, words[i + 1]))
                if pair is not None:
                    follows = follows + pair
            for rest, stem, cat in follows:
                n = len(rest)
                if n:
                    if i + n >= count:
                        continue
                    last = words[i + n]
                    if not (last.startswith(rest[-1]) if stem else last == rest[-1]):
                        continue
                    if n > 1 and tuple(words[i + 1 : i + n]) != rest[:-1]:
                        continue
                    found = " ".join(words[i : i + n + 1])
                else:
                    found = word
                if found not in hits[cat]:
                    hits[cat].append(found)
        return hits


def index_phrases(spec: Spec) -> PhraseIndex:
    """The phrases of ``spec``'s keyword sets, indexed by their first words."""
    exact: dict[str, list[Follow]] = {}
    pairs: dict[tuple[str, str], list[Follow]] = {}
    stems: list[tuple[str, Follow]] = []
    for index, (_, phrases, _, _) in enumerate(spec):
        for phrase in phrases:
            words = WORD_RE.findall(phrase.lower())
            if not words:
                continue
            stem = phrase.rstrip().endswith("*")
            follow: Follow = (tuple(words[1:]), stem and len(words) > 1, index)
            if stem and len(words) == 1:
                stems.append((words[0], follow))
            elif len(words) == 1 or (stem and len(words) == 2):
                exact.setdefault(words[0], []).append(follow)
            else:
                pairs.setdefault((words[0], words[1]), []).append(follow)
    return PhraseIndex(
        categories=tuple(Category(name, weight, label) for name, _, weight, label in spec),
        exact={word: tuple(follows) for word, follows in exact.items()},
        pairs={pair: tuple(follows) for pair, follows in pairs.items()},
        pair_words=frozenset(first for first, _ in pairs),
        stems=tuple(stems),
    )
