"""The requests of ``benchmarks.speculative``: distinct content in every request.

Every copy-heavy request carries its own source text (a different code file, a different
document, a different earlier turn), so a proposer that indexes earlier requests (``suffix``)
cannot copy from a previous identical request: whatever it copies comes from the request
itself. The multi-turn conversations are scripted (the assistant's earlier turns are
written here), so every server sees exactly the same messages.
"""

from __future__ import annotations

Messages = list[dict[str, str]]

CODE_FILES = [
    """import json
import os
from dataclasses import dataclass


@dataclass
class Item:
    name: str
    price: float
    quantity: int

    def total(self) -> float:
        return self.price * self.quantity


def load_items(path: str) -> list[Item]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        data = json.load(f)
    items = []
    for row in data:
        items.append(Item(row["name"], float(row["price"]), int(row["quantity"])))
    return items


def save_items(path: str, items: list[Item]) -> None:
    rows = [{"name": i.name, "price": i.price, "quantity": i.quantity} for i in items]
    with open(path, "w") as f:
        json.dump(rows, f, indent=2)


def cart_total(items: list[Item]) -> float:
    total = 0.0
    for item in items:
        total += item.total()
    return total


def cheapest(items: list[Item]) -> Item | None:
    if not items:
        return None
    return min(items, key=lambda i: i.price)
""",
    """import csv
import statistics
from collections import defaultdict


class Station:
    def __init__(self, code, city):
        self.code = code
        self.city = city
        self.readings = []

    def add(self, day, celsius):
        self.readings.append((day, celsius))

    def mean(self):
        if not self.readings:
            return None
        return statistics.mean(c for _, c in self.readings)

    def hottest_day(self):
        if not self.readings:
            return None
        return max(self.readings, key=lambda r: r[1])[0]


def read_stations(path):
    stations = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            code = row["station"]
            if code not in stations:
                stations[code] = Station(code, row["city"])
            stations[code].add(row["day"], float(row["celsius"]))
    return stations


def by_city(stations):
    groups = defaultdict(list)
    for station in stations.values():
        groups[station.city].append(station)
    return dict(groups)


def warmest_city(stations):
    means = {}
    for city, group in by_city(stations).items():
        values = [s.mean() for s in group if s.mean() is not None]
        if values:
            means[city] = sum(values) / len(values)
    return max(means, key=means.get) if means else None
""",
    """import hashlib
import time


class RateLimiter:
    def __init__(self, limit, window_seconds):
        self.limit = limit
        self.window = window_seconds
        self.hits = {}

    def allow(self, key):
        now = time.monotonic()
        recent = [t for t in self.hits.get(key, []) if now - t < self.window]
        if len(recent) >= self.limit:
            self.hits[key] = recent
            return False
        recent.append(now)
        self.hits[key] = recent
        return True

    def reset(self, key):
        self.hits.pop(key, None)


class TokenStore:
    def __init__(self, secret):
        self.secret = secret
        self.tokens = {}

    def issue(self, user_id):
        raw = f"{user_id}:{time.time()}:{self.secret}".encode()
        token = hashlib.sha256(raw).hexdigest()
        self.tokens[token] = user_id
        return token

    def check(self, token):
        return self.tokens.get(token)

    def revoke(self, token):
        return self.tokens.pop(token, None) is not None


def login(store, limiter, user_id, password, passwords):
    if not limiter.allow(user_id):
        raise PermissionError("too many attempts")
    if passwords.get(user_id) != password:
        return None
    limiter.reset(user_id)
    return store.issue(user_id)
""",
    """from collections import deque


class Graph:
    def __init__(self):
        self.edges = {}

    def add_edge(self, a, b, weight=1):
        self.edges.setdefault(a, []).append((b, weight))
        self.edges.setdefault(b, []).append((a, weight))

    def neighbours(self, node):
        return [n for n, _ in self.edges.get(node, [])]

    def bfs(self, start):
        seen = {start}
        order = []
        queue = deque([start])
        while queue:
            node = queue.popleft()
            order.append(node)
            for nxt in self.neighbours(node):
                if nxt not in seen:
                    seen.add(nxt)
                    queue.append(nxt)
        return order

    def shortest_hops(self, start, goal):
        parents = {start: None}
        queue = deque([start])
        while queue:
            node = queue.popleft()
            if node == goal:
                path = []
                while node is not None:
                    path.append(node)
                    node = parents[node]
                return path[::-1]
            for nxt in self.neighbours(node):
                if nxt not in parents:
                    parents[nxt] = node
                    queue.append(nxt)
        return None


def build(pairs):
    graph = Graph()
    for a, b in pairs:
        graph.add_edge(a, b)
    return graph
""",
]

EDITS = [
    "Rewrite the whole file with the class Item renamed to Product. Output only the code.",
    "Rewrite the whole file with the class Station renamed to Sensor. Output only the code.",
    "Rewrite the whole file with the method allow renamed to permit. Output only the code.",
    "Rewrite the whole file with the class Graph renamed to Network. Output only the code.",
]

DOCUMENTS = [
    """The town council met on Tuesday to discuss the new cycle lanes on Harbour Road. The
mayor said, "We promised safer streets, and this is the first street we will finish." Shop
owners were divided. One baker told the council that "half of my customers arrive by bike
and the other half complain about parking." The engineer presented a plan that keeps one
lane of parking on the north side and moves the bus stop forty metres east. She warned that
"the work will close the road for three weeks in March." A resident asked whether the
trees would be cut; the engineer answered that "every tree stays, and we will plant twelve
more." The council voted six to three to approve the plan and to review it after a year.""",
    """The museum's new exhibition brings together two hundred maps drawn between 1500 and
1800. The curator explained that "a map was an argument about who owned the land, not a
picture of it." Visitors enter through a dark corridor lit only by a projected coastline.
The largest map, nearly four metres wide, was restored over two years; the restorer said
"we removed more glue than ink." Several maps show islands that never existed, and a label
notes that "sailors copied each other's mistakes for a century." The exhibition ends with a
room of modern satellite images. Tickets are free for students, and the museum expects
"more visitors this winter than in any season since we reopened." It runs until June.""",
    """Researchers studying honeybees found that colonies near wildflower meadows produced
thirty percent more honey than colonies near farmland. The lead author said that "variety
of food matters more to a colony than the amount." The team tracked forty hives over three
summers. Bees from farmland hives flew farther each day, and the study notes that "longer
flights cost the colony workers it cannot replace." Farmers in the region have started to
leave strips of wild plants between fields. One farmer said, "I lose a little land and I
gain a lot of bees." The researchers plan to repeat the study in a dry climate, where they
expect that "water, not flowers, will decide how well a colony does." """,
    """A small software company moved to a four-day week last spring and published its
results this month. Output, measured by features shipped, stayed level. The founder wrote
that "we did not work harder on four days; we stopped doing the work nobody needed."
Meetings were cut to twenty-five minutes and no meeting may start before ten. Sick days
fell by a third. Not everyone was happy: a support engineer said that "customers do not
care which day we are off, so someone is always on call." The company hired two people to
cover Fridays. The founder admitted that "it costs us more than we expected," but said the
company will keep the schedule because "people who rest make fewer mistakes." """,
]

QUOTE_ASK = (
    "Summarize the text above in three bullet points. Each bullet must include one exact "
    "quote from the text in quotation marks."
)

# (first question, scripted answer, follow-up that asks for the answer again, changed)
CONVERSATIONS = [
    (
        "Write a Python function that checks whether a string is a palindrome, with a "
        "docstring and two examples.",
        '''Here is a function that ignores case and anything that is not a letter or digit:

```python
def is_palindrome(text: str) -> bool:
    """Return True when text reads the same forwards and backwards.

    Only letters and digits count, and case is ignored.

    >>> is_palindrome("A man, a plan, a canal: Panama")
    True
    >>> is_palindrome("heron")
    False
    """
    cleaned = [c.lower() for c in text if c.isalnum()]
    return cleaned == cleaned[::-1]
```

It builds a list of the characters that count, lower-cased, and compares it with its
reverse. The two examples in the docstring run as doctests.''',
        "Repeat the function exactly, but rename it to check_palindrome and its argument "
        "to s. Output only the code.",
    ),
    (
        "Give me a checklist for moving to a new flat.",
        """Here is a checklist, in the order you will need it:

1. Give notice to your current landlord and note the date in writing.
2. Book a removal van or ask two friends with a car, at least two weeks ahead.
3. Collect boxes, tape and a marker; label every box with its room.
4. Tell the bank, your employer and your doctor your new address.
5. Read the electricity, gas and water meters on the last day and take photos.
6. Clean the old flat and take photos of every room for the deposit.
7. Hand back all the keys and ask for a signed receipt.
8. At the new flat, read the meters again on the first day.
9. Test the smoke alarm and find the main water tap.
10. Unpack the kitchen and the bed first; everything else can wait.""",
        "Repeat the checklist word for word, but put step 9 first. Output only the list.",
    ),
    (
        "Write a SQL schema for a small library: books, members and loans.",
        """Here is a schema with the three tables and their keys:

```sql
CREATE TABLE books (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    author TEXT NOT NULL,
    isbn TEXT UNIQUE,
    published_year INTEGER
);

CREATE TABLE members (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT UNIQUE NOT NULL,
    joined_on DATE NOT NULL
);

CREATE TABLE loans (
    id INTEGER PRIMARY KEY,
    book_id INTEGER NOT NULL REFERENCES books(id),
    member_id INTEGER NOT NULL REFERENCES members(id),
    loaned_on DATE NOT NULL,
    returned_on DATE
);
```

A loan without a returned_on date is a book still out.""",
        "Repeat the schema exactly, but rename the table members to readers everywhere. "
        "Output only the SQL.",
    ),
    (
        "Write a short bash script that backs up a folder into a dated tar archive.",
        """Here is a script that takes the folder and the destination as arguments:

```bash
#!/usr/bin/env bash
set -euo pipefail

source_dir="${1:?usage: backup.sh SOURCE DEST}"
dest_dir="${2:?usage: backup.sh SOURCE DEST}"
stamp="$(date +%Y-%m-%d_%H-%M)"
name="$(basename "$source_dir")"
archive="$dest_dir/${name}_${stamp}.tar.gz"

mkdir -p "$dest_dir"
tar -czf "$archive" -C "$(dirname "$source_dir")" "$name"
echo "wrote $archive ($(du -h "$archive" | cut -f1))"

# keep the ten newest archives of this folder
ls -1t "$dest_dir/${name}"_*.tar.gz | tail -n +11 | xargs -r rm --
```

It stops at the first error, names each archive after the folder and the time, and deletes
all but the ten newest.""",
        "Repeat the script exactly, but keep the five newest archives instead of ten. "
        "Output only the script.",
    ),
]

CHAT_QUESTIONS = [
    "Explain the difference between TCP and UDP in 3 sentences.",
    "Why is the sky blue? Answer briefly.",
    "Give three tips for sleeping better.",
    "What makes a good first job interview answer?",
    "Describe how a bicycle gear system works.",
    "What are the pros and cons of working from home?",
    "Suggest a name for a coffee shop and explain it.",
    "How do vaccines train the immune system?",
    "Write a haiku about autumn rain.",
    "What should I pack for a weekend hiking trip?",
    "Explain what inflation is to a teenager.",
    "Why do cats purr?",
    "Compare reading on paper and on a screen.",
    "How can a small team run better meetings?",
    "What is the difference between weather and climate?",
    "Give a short history of the bicycle.",
]


def copy_edit() -> list[Messages]:
    """One request per code file: rewrite it with one rename (the output copies the file)."""
    return [
        [{"role": "user", "content": f"Here is a Python file:\n\n```python\n{code}```\n\n{ask}"}]
        for code, ask in zip(CODE_FILES, EDITS, strict=True)
    ]


def quote_summary() -> list[Messages]:
    """One request per document: a summary whose bullets quote the document."""
    return [[{"role": "user", "content": f"{doc}\n\n{QUOTE_ASK}"}] for doc in DOCUMENTS]


def multi_turn() -> list[Messages]:
    """One request per conversation: its third turn asks for the (scripted) second again."""
    return [
        [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": follow_up},
        ]
        for question, answer, follow_up in CONVERSATIONS
    ]


def warm_up() -> list[Messages]:
    """A first request for a fresh server, unlike every workload's (so that a proposer
    that learns across requests has nothing from it to copy)."""
    return [[{"role": "user", "content": "Name three colours."}]]


def open_chat(n: int = 4) -> list[Messages]:
    """Open questions (little to copy); ``n`` distinct ones."""
    return [[{"role": "user", "content": q}] for q in CHAT_QUESTIONS[:n]]
