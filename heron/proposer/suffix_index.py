"""An online suffix automaton over token ids, with occurrence counts, for the ``suffix``
proposer.

The automaton of a text has one state per class of substrings that end at the same set of
positions (their *endpos*), at most ``2n`` states and ``3n`` transitions for ``n`` tokens.
Reading a string from the root along transitions reaches the state of that string, so the
continuations of a context are the transitions of its state, and how often each was seen is
the endpos size (``count``) of the state it leads to:

    text  a b c a b d a b c          state("a b") has endpos {2, 5, 8}
    "a b" --c--> state("a b c")      count 2   -> p(c | "a b") = 2 / 3
          --d--> state("a b d")      count 1   -> p(d | "a b") = 1 / 3

``extend`` appends one token in amortized O(1) (Blumer et al.'s construction) plus the count
update: the new end position joins the endpos of every state on the new state's suffix-link
path. That path is at most as long as the longest repeated suffix; in a long run of one
token (``a a a ...``) it grows with the run, so only its first ``max_count_chain`` states are
updated. Past that the counts of the shortest, least informative contexts saturate; every
context close to the current match stays exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Counts are updated along at most this many suffix-link states per appended token.
MAX_COUNT_CHAIN = 64


@dataclass(slots=True)
class Match:
    """The longest suffix of a context found in an automaton: its ``state`` and ``length``
    (in tokens)."""

    state: int
    length: int


class SuffixAutomaton:
    """Suffix automaton of a token sequence, extended in place. States are list indices;
    state 0 is the root (the empty string)."""

    def __init__(self, tokens: Iterable[int] = (), max_count_chain: int = MAX_COUNT_CHAIN) -> None:
        self.max_count_chain = max_count_chain
        self.length: list[int] = [0]  # longest string of each state
        self.link: list[int] = [-1]  # suffix link: state of the longest shorter suffix
        self.count: list[int] = [0]  # endpos size: occurrences of the state's strings
        self.next: list[dict[int, int]] = [{}]
        self.last = 0  # the state of the whole text
        self.num_tokens = 0
        for token in tokens:
            self.extend(token)

    @property
    def num_states(self) -> int:
        return len(self.length)

    def extend(self, token: int) -> None:
        """Append ``token`` to the text. Mutates the automaton: adds one state (two when a
        state is split), rewires transitions and suffix links, and increments the counts on
        the new state's suffix-link path."""
        length, link, nxt = self.length, self.link, self.next
        cur = self._new_state(length[self.last] + 1, 1, {})
        p = self.last
        while p != -1 and token not in nxt[p]:
            nxt[p][token] = cur
            p = link[p]
        if p == -1:
            link[cur] = 0
        else:
            q = nxt[p][token]
            if length[p] + 1 == length[q]:
                link[cur] = q
            else:
                # q holds strings of several lengths; split off the short ones, which now
                # also end at the new position.
                clone = self._new_state(length[p] + 1, self.count[q], dict(nxt[q]))
                link[clone] = link[q]
                while p != -1 and nxt[p].get(token) == q:
                    nxt[p][token] = clone
                    p = link[p]
                link[q] = link[cur] = clone
        self.last = cur
        self.num_tokens += 1
        self._count_new_end(link[cur])

    def _new_state(self, length: int, count: int, transitions: dict[int, int]) -> int:
        self.length.append(length)
        self.link.append(-1)
        self.count.append(count)
        self.next.append(transitions)
        return len(self.length) - 1

    def _count_new_end(self, state: int) -> None:
        """The new end position joins the endpos of ``state`` and its suffix-link ancestors
        (not the root), the first ``max_count_chain`` of them."""
        link, count = self.link, self.count
        for _ in range(self.max_count_chain):
            if state <= 0:
                return
            count[state] += 1
            state = link[state]

    def repeated_suffix(self) -> Match:
        """The longest suffix of the text that also occurs earlier in it. Pure, O(1)."""
        state = self.link[self.last]
        return Match(max(state, 0), self.length[state] if state > 0 else 0)

    def longest_suffix(self, context: Sequence[int]) -> Match:
        """The longest suffix of ``context`` that occurs in the text, found by reading
        ``context`` with suffix-link fallback (amortized O(len(context))). Pure."""
        length, link, nxt = self.length, self.link, self.next
        state, matched = 0, 0
        for token in context:
            while state and token not in nxt[state]:
                state = link[state]
                matched = length[state]
            target = nxt[state].get(token)
            if target is None:
                state, matched = 0, 0
            else:
                state, matched = target, matched + 1
        return Match(state, matched)

    def walk(self, state: int, max_tokens: int, min_prob: float) -> tuple[list[int], list[float]]:
        """Follow the most frequent continuation from ``state`` while the product of the
        empirical probabilities (a child's count over all its siblings' counts) stays at
        least ``min_prob``, for at most ``max_tokens`` tokens. Negative tokens (document
        separators) end the walk. Returns the tokens and the cumulative probability after
        each. Pure.

        Reaching the state of the whole text means the text ends with the matched context
        followed by the walked tokens: it repeats with their period, so the walk goes on
        repeating them (``a b a b`` continues ``a b a b ...``, not just ``a b``)."""
        tokens: list[int] = []
        probs: list[float] = []
        prob = 1.0
        count, nxt = self.count, self.next
        while len(tokens) < max_tokens:
            children = nxt[state]
            if not children:
                if state == self.last and tokens:
                    period = len(tokens)
                    while len(tokens) < max_tokens:
                        tokens.append(tokens[len(tokens) - period])
                        probs.append(prob)
                break
            best, best_count, total = -1, 0, 0
            for token, child in children.items():
                c = count[child]
                total += c
                if c > best_count:
                    best, best_count = token, c
            prob *= best_count / total
            if best < 0 or prob < min_prob:
                break
            tokens.append(best)
            probs.append(prob)
            state = children[best]
        return tokens, probs
