"""Small text statistics, used by the gitvm demo as a project to test inside a sandbox."""

import collections
import re

WORD = re.compile(r"[A-Za-z']+")


def words(text):
    """Return the lowercase words of text, in order."""
    return [w.lower() for w in WORD.findall(text)]


def top_words(text, n):
    """Return the n most frequent words as (word, count) pairs, ties broken alphabetically."""
    counts = collections.Counter(words(text))
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n]


def mean_word_length(text):
    """Return the mean word length, or 0.0 for text without words."""
    found = words(text)
    if not found:
        return 0.0
    return sum(len(w) for w in found) / len(found)
