"""Build the `demo-interrupt` data: answers that the user corrects while they stream.

Every example is a request with a programmatic answer, and (in 92% of them) a correction the
user types while that answer is being written ("Actually, make it for two people."). The
continuation must honour the correction, and whether it does is checked by a program
(``multistream.evaluation.interrupt``), so the held-out score needs no judge.

Families (each with its own correction kinds and several phrasings of every kind):

* ``people``: quantities for N people from a fixed per-person table (pancakes for 4 ->
  "actually, for two people": every amount rescaled);
* ``count``: counting from a to b -> count down, only the even/odd ones, stop at c, go up to d,
  start from s;
* ``card``: a greeting card -> another recipient ("make it to Maria"), another occasion;
* ``translate``: a phrase in one language -> another language;
* ``list``: the first k days/months/planets/... -> as a numbered list, in reverse order, in
  capital letters, only the first k';
* ``booking``: a table booking -> another party size, day, time or restaurant;
* ``shopping``: a shopping list -> add an item, drop one, replace one.

Layout of one multi-stream grid (schema ``user,assistant``; one token per row; a generated
cell at row r is predicted at row r-1, which sees the other streams' rows < r-1):

    rows 0..E-1   user: the request, word by word as a live engine feeds it, then its end token
    row  E+1..    assistant: the answer to the request as asked
    row  c..e     user: the correction (+ end token), arriving after j answer tokens (j varied)
    rows ..c+1    assistant: still the old answer (it cannot have read the correction yet)
    rows c+2..e+1 assistant: silent while the correction streams in (it stops to listen)
    row  e+2..    assistant: a short acknowledgement and the whole answer again, corrected, then
                  its end token

8% of the grids have no correction (the answer runs to its end): the model must not invent one.

The sequential twin sees the same examples as a chat (``meta["turns"]``, read by
``multistream.training.data.sequential_example``): user request, assistant's WHOLE first answer
(sequentially it cannot be interrupted), user correction, assistant continuation (the same
acknowledgement and corrected answer).

Held-out set (``src/multistream/evaluation/data/interrupt_heldout.jsonl``): parameters (the
family's key: dish and sizes, numbers, names, language pairs, lists, slots, items) never used in
training, and about a third with correction phrasings (openers and clause templates) that no
training example uses.

    python scripts/build_demo_interrupt.py --out runs/data/demo-interrupt     # seconds
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

BASE = "smollm2-135m"
HELDOUT_FILE = Path(__file__).resolve().parents[1] / "src/multistream/evaluation/data/interrupt_heldout.jsonl"

WORDS = {
    1: "one",
    2: "two",
    3: "three",
    4: "four",
    5: "five",
    6: "six",
    7: "seven",
    8: "eight",
    9: "nine",
    10: "ten",
    11: "eleven",
    12: "twelve",
}

# Openers of a correction. The last ones are never used in training (held-out phrasings).
OPENERS_TRAIN = [
    "Actually,",
    "Oh, actually,",
    "Wait,",
    "Sorry,",
    "Hmm, no,",
    "Change of plan:",
    "On second thought,",
    "Scratch that,",
    "Hold on,",
    "No wait,",
    "Correction:",
    "Oh, one thing:",
    "Sorry, my mistake:",
    "Ah,",
    "",
]
OPENERS_HELDOUT = ["Oops,", "Hang on,", "Let me change that:", "Um, actually,"]
ACKS = ["Sure,", "Got it,", "Okay,", "No problem,", "Of course,", "Alright,"]

# One clause template list per (family, kind); the LAST template of each list with at least three
# is held out of training. {x}: the new value; other fields named per family.
Clauses = dict[str, list[str]]


def _cap_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def _correction(
    rng: random.Random, clauses: list[str], fields: dict[str, Any], split: str
) -> tuple[str, bool]:
    """(correction text, uses an unseen phrasing)."""
    train_clauses = clauses[:-1] if len(clauses) >= 3 else clauses
    unseen = split == "heldout" and rng.random() < 0.35
    if unseen:
        if len(clauses) >= 3 and rng.random() < 0.6:
            clause = clauses[-1]
            opener = rng.choice(OPENERS_TRAIN + OPENERS_HELDOUT)
        else:
            clause = rng.choice(train_clauses)
            opener = rng.choice(OPENERS_HELDOUT)
    else:
        clause = rng.choice(train_clauses)
        opener = rng.choice(OPENERS_TRAIN)
    text = clause.format(**fields)
    text = f"{opener} {text}" if opener else _cap_first(text)
    if not text.endswith((".", "!", "?")):
        text += "."
    return text, unseen


def _num(rng: random.Random, n: int) -> str:
    """A count as the user types it: digits or a word."""
    return WORDS[n] if n in WORDS and rng.random() < 0.5 else str(n)


def _alts_num(n: int) -> list[str]:
    return [str(n)] + ([WORDS[n]] if n in WORDS else [])


# -- families -------------------------------------------------------------------------------------
# Each returns a dict: request, answer, key (the held-out key), and, when corrected: kind,
# correction, pivot (acknowledgement + corrected answer), check (see evaluation/interrupt.py).

DISHES: dict[str, list[tuple[int, str, str]]] = {
    # per person: (amount, unit, ingredient); unit "" = a count
    "pancakes": [(1, "", "eggs"), (100, " g", "flour"), (200, " ml", "milk")],
    "an omelette": [(2, "", "eggs"), (1, "", "tomatoes"), (100, " g", "cheese")],
    "spaghetti bolognese": [(100, " g", "spaghetti"), (100, " g", "minced beef"), (1, "", "tomatoes")],
    "fruit salad": [(1, "", "apples"), (1, "", "bananas"), (100, " g", "grapes")],
    "a smoothie": [(1, "", "bananas"), (200, " ml", "milk"), (100, " g", "strawberries")],
    "rice and beans": [(100, " g", "rice"), (100, " g", "beans"), (1, "", "onions")],
    "tomato soup": [(2, "", "tomatoes"), (1, "", "onions"), (200, " ml", "stock")],
    "a potato gratin": [(2, "", "potatoes"), (100, " ml", "cream"), (100, " g", "cheese")],
    "porridge": [(100, " g", "oats"), (200, " ml", "milk"), (1, "", "bananas")],
    "a salad": [(1, "", "tomatoes"), (1, "", "cucumbers"), (100, " g", "feta")],
    "guacamole": [(1, "", "avocados"), (1, "", "limes"), (1, "", "tomatoes")],
    "hot chocolate": [(200, " ml", "milk"), (2, "", "spoons of cocoa"), (1, "", "spoons of sugar")],
    "scrambled eggs": [(2, "", "eggs"), (100, " ml", "milk"), (1, "", "slices of toast")],
    "a curry": [(100, " g", "rice"), (200, " g", "chicken"), (100, " ml", "coconut milk")],
}
PEOPLE_REQ = [
    "What do I need to make {dish} for {n} people?",
    "I want to cook {dish} for {n} people. What do I need?",
    "Give me the ingredients for {dish} for {n} people.",
    "How much do I need for {dish} for {n} people?",
]
PEOPLE_CLAUSES = [
    "make it for {x} people.",
    "it's for {x} people.",
    "for {x} people, please.",
    "we are {x} people now.",
    "there will be {x} of us.",
    "change it to {x} people.",
]


def _ingredients(dish: str, n: int) -> str:
    parts = [f"{a * n}{unit} {ing}" for a, unit, ing in DISHES[dish]]
    return f"{parts[0]}, {parts[1]} and {parts[2]}"


def fam_people(rng: random.Random, split: str, corrected: bool) -> dict[str, Any]:
    dish = rng.choice(list(DISHES))
    n, m = rng.sample(range(2, 11), 2)
    req = rng.choice(PEOPLE_REQ).format(dish=dish, n=_num(rng, n))
    ans = f"For {n} people you need {_ingredients(dish, n)}."
    out = {"request": req, "answer": ans, "key": f"people|{dish}|{m}"}
    if corrected:
        text, unseen = _correction(rng, PEOPLE_CLAUSES, {"x": _num(rng, m)}, split)
        pivot = f"{rng.choice(ACKS)} for {m} people you need {_ingredients(dish, m)}."
        must = [[f"{a * m}{unit} {ing}"] for a, unit, ing in DISHES[dish]]
        out.update(
            kind="people",
            correction=text,
            pivot=pivot,
            unseen=unseen,
            check={"type": "contains", "must": must, "must_not": []},
        )
    return out


COUNT_REQ = [
    "Count from {a} to {b}.",
    "Please count from {a} to {b}.",
    "Can you count from {a} to {b}?",
    "List the numbers from {a} to {b}.",
]
COUNT_CLAUSES: dict[str, list[str]] = {
    "down": [
        "count down instead.",
        "count backwards.",
        "do it in reverse, counting down.",
        "go from {b} down to {a} instead.",
        "count down from {b}.",
    ],
    "even": [
        "only the even ones.",
        "just the even numbers.",
        "only give me the even numbers.",
        "skip the odd ones.",
    ],
    "odd": [
        "only the odd ones.",
        "just the odd numbers.",
        "only give me the odd numbers.",
        "skip the even ones.",
    ],
    "stop": ["stop at {x}.", "only up to {x}.", "just go to {x}.", "end at {x} instead."],
    "more": ["go up to {x}.", "keep going until {x}.", "count all the way to {x}.", "continue to {x}."],
    "start": ["start from {x}.", "begin at {x} instead.", "start at {x}.", "from {x} onwards."],
}
COUNT_ACK = {
    "down": "counting down:",
    "even": "only the even ones:",
    "odd": "only the odd ones:",
    "stop": "here it is:",
    "more": "here it is:",
    "start": "here it is:",
}


def _seq(nums: list[int]) -> str:
    return ", ".join(map(str, nums)) + "."


def fam_count(rng: random.Random, split: str, corrected: bool) -> dict[str, Any]:
    kind = rng.choice(list(COUNT_CLAUSES))
    a = rng.randint(1, 30)
    b = a + rng.randint(5, 11)
    req = rng.choice(COUNT_REQ).format(a=a, b=b)
    ans = _seq(list(range(a, b + 1)))
    x = None
    if kind == "down":
        new = list(range(b, a - 1, -1))
    elif kind == "even":
        new = [v for v in range(a, b + 1) if v % 2 == 0]
    elif kind == "odd":
        new = [v for v in range(a, b + 1) if v % 2 == 1]
    elif kind == "stop":
        x = rng.randint(a + 2, b - 1)
        new = list(range(a, x + 1))
    elif kind == "more":
        x = b + rng.randint(2, 5)
        new = list(range(a, x + 1))
    else:
        x = rng.randint(a + 1, b - 2)
        new = list(range(x, b + 1))
    out = {"request": req, "answer": ans, "key": f"count|{a}|{b}|{kind}|{x}"}
    if corrected:
        text, unseen = _correction(rng, COUNT_CLAUSES[kind], {"a": a, "b": b, "x": x}, split)
        pivot = f"{rng.choice(ACKS)} {COUNT_ACK[kind]} {_seq(new)}"
        out.update(
            kind=f"count-{kind}",
            correction=text,
            pivot=pivot,
            unseen=unseen,
            check={"type": "sequence", "numbers": new},
        )
    return out


NAMES = [
    "Maria",
    "Tom",
    "Anna",
    "James",
    "Sofia",
    "Lucas",
    "Emma",
    "Noah",
    "Olivia",
    "Liam",
    "Mia",
    "Ethan",
    "Chloe",
    "Daniel",
    "Grace",
    "Oscar",
    "Lily",
    "Jack",
    "Zoe",
    "Leo",
    "Hannah",
    "Max",
    "Ruby",
    "Sam",
    "Nina",
    "Paul",
    "Clara",
    "Ben",
    "Julia",
    "Adam",
    "Eva",
    "Felix",
    "Laura",
    "Omar",
    "Rosa",
    "Ivan",
]
OCCASIONS = {
    "birthday": "Happy birthday",
    "wedding": "Congratulations on your wedding",
    "graduation": "Congratulations on your graduation",
    "new job": "Congratulations on your new job",
    "retirement": "Happy retirement",
    "anniversary": "Happy anniversary",
    "new home": "Congratulations on your new home",
    "recovery": "Get well soon",
}
WISHES = [
    "I hope your day is wonderful.",
    "Wishing you all the best.",
    "I am so happy for you.",
    "Have a great time.",
    "Thinking of you today.",
]
CARD_REQ = [
    "Write a short card to {name} for their {occ}.",
    "Write a {occ} card for {name}.",
    "Can you write a short {occ} message to {name}?",
    "Write a note to {name} for their {occ}.",
]
CARD_CLAUSES = {
    "name": [
        "make it to {x}.",
        "it's for {x}.",
        "address it to {x} instead.",
        "change the name to {x}.",
        "write it to {x}, please.",
        "it should go to {x}.",
    ],
    "occasion": [
        "it's for their {x}.",
        "make it a {x} card.",
        "change it to a {x} card.",
        "the occasion is their {x}.",
        "it's actually for the {x}.",
    ],
}


def _card(name: str, occ: str, wish: str) -> str:
    return f"Dear {name}, {OCCASIONS[occ].lower()}! {wish}"


def fam_card(rng: random.Random, split: str, corrected: bool) -> dict[str, Any]:
    kind = rng.choice(list(CARD_CLAUSES))
    name, name2 = rng.sample(NAMES, 2)
    occ, occ2 = rng.sample(list(OCCASIONS), 2)
    wish = rng.choice(WISHES)
    req = rng.choice(CARD_REQ).format(name=name, occ=occ)
    ans = _card(name, occ, wish)
    ack = rng.choice(ACKS)
    if kind == "name":
        key = f"card|name|{name2}"
        x, pivot = name2, f"{ack} here it is: {_card(name2, occ, wish)}"
        check = {"type": "contains", "must": [[f"Dear {name2}"]], "must_not": [name]}
    else:
        key = f"card|occ|{occ}|{occ2}"
        x, pivot = occ2, f"{ack} here it is: {_card(name, occ2, wish)}"
        check = {
            "type": "contains",
            "must": [[OCCASIONS[occ2].lower()], [name]],
            "must_not": [OCCASIONS[occ].lower()],
        }
    out = {"request": req, "answer": ans, "key": key}
    if corrected:
        text, unseen = _correction(rng, CARD_CLAUSES[kind], {"x": x}, split)
        out.update(kind=f"card-{kind}", correction=text, pivot=pivot, unseen=unseen, check=check)
    return out


TRANSLATIONS = {
    "good morning": {
        "French": "bonjour",
        "Spanish": "buenos días",
        "German": "guten Morgen",
        "Italian": "buongiorno",
        "Portuguese": "bom dia",
    },
    "thank you": {
        "French": "merci",
        "Spanish": "gracias",
        "German": "danke",
        "Italian": "grazie",
        "Portuguese": "obrigado",
    },
    "good night": {
        "French": "bonne nuit",
        "Spanish": "buenas noches",
        "German": "gute Nacht",
        "Italian": "buona notte",
        "Portuguese": "boa noite",
    },
    "goodbye": {
        "French": "au revoir",
        "Spanish": "adiós",
        "German": "auf Wiedersehen",
        "Italian": "arrivederci",
        "Portuguese": "adeus",
    },
    "please": {
        "French": "s'il vous plaît",
        "Spanish": "por favor",
        "German": "bitte",
        "Italian": "per favore",
        "Portuguese": "por favor",
    },
    "yes": {"French": "oui", "Spanish": "sí", "German": "ja", "Italian": "sì", "Portuguese": "sim"},
    "cat": {"French": "chat", "Spanish": "gato", "German": "Katze", "Italian": "gatto", "Portuguese": "gato"},
    "water": {
        "French": "eau",
        "Spanish": "agua",
        "German": "Wasser",
        "Italian": "acqua",
        "Portuguese": "água",
    },
    "friend": {
        "French": "ami",
        "Spanish": "amigo",
        "German": "Freund",
        "Italian": "amico",
        "Portuguese": "amigo",
    },
    "house": {
        "French": "maison",
        "Spanish": "casa",
        "German": "Haus",
        "Italian": "casa",
        "Portuguese": "casa",
    },
    "book": {
        "French": "livre",
        "Spanish": "libro",
        "German": "Buch",
        "Italian": "libro",
        "Portuguese": "livro",
    },
    "dog": {"French": "chien", "Spanish": "perro", "German": "Hund", "Italian": "cane", "Portuguese": "cão"},
}
TR_REQ = [
    'How do you say "{p}" in {lang}?',
    'Translate "{p}" into {lang}.',
    'What is "{p}" in {lang}?',
    'Say "{p}" in {lang}.',
]
TR_CLAUSES = [
    "in {x}.",
    "I meant {x}.",
    "make it {x}.",
    "in {x}, please.",
    "I need it in {x}.",
    "translate it into {x} instead.",
]


def fam_translate(rng: random.Random, split: str, corrected: bool) -> dict[str, Any]:
    p = rng.choice(list(TRANSLATIONS))
    lang, lang2 = rng.sample(list(TRANSLATIONS[p]), 2)
    req = rng.choice(TR_REQ).format(p=p, lang=lang)
    ans = f'In {lang}, "{p}" is "{TRANSLATIONS[p][lang]}".'
    out = {"request": req, "answer": ans, "key": f"tr|{p}|{lang}|{lang2}"}
    if corrected:
        text, unseen = _correction(rng, TR_CLAUSES, {"x": lang2}, split)
        t2 = TRANSLATIONS[p][lang2]
        pivot = f'{rng.choice(ACKS)} in {lang2}, "{p}" is "{t2}".'
        must_not = [TRANSLATIONS[p][lang]] if TRANSLATIONS[p][lang].lower() != t2.lower() else []
        out.update(
            kind="translate",
            correction=text,
            pivot=pivot,
            unseen=unseen,
            check={"type": "contains", "must": [[t2], [lang2]], "must_not": [*must_not, lang]},
        )
    return out


LISTS = {
    "days of the week": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    "months of the year": ["January", "February", "March", "April", "May", "June", "July", "August"],
    "planets from the sun": ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus"],
    "colours of the rainbow": ["red", "orange", "yellow", "green", "blue", "indigo", "violet"],
    "letters of the Greek alphabet": ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta"],
}
LIST_REQ = [
    "List the first {k} {what}.",
    "Name the first {k} {what}.",
    "What are the first {k} {what}?",
    "Tell me the first {k} {what}.",
]
LIST_CLAUSES = {
    "numbered": [
        "as a numbered list.",
        "number them.",
        "put them in a numbered list.",
        "can you number them?",
        "one per line, numbered.",
    ],
    "reverse": [
        "in reverse order.",
        "list them backwards.",
        "reverse the order.",
        "start from the last one.",
    ],
    "upper": ["in capital letters.", "all in capitals.", "write them in upper case.", "in caps, please."],
    "count": ["only the first {x}.", "just {x} of them.", "make it {x}.", "I only need {x}."],
}


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def fam_list(rng: random.Random, split: str, corrected: bool) -> dict[str, Any]:
    what = rng.choice(list(LISTS))
    kind = rng.choice(list(LIST_CLAUSES))
    k = rng.randint(3, 6)
    items = LISTS[what][:k]
    req = rng.choice(LIST_REQ).format(k=_num(rng, k), what=what)
    ans = f"The first {k} {what} are {_and(items)}."
    ack = rng.choice(ACKS)
    x = None
    if kind == "numbered":
        pivot = f"{ack} here they are:\n" + "\n".join(f"{i + 1}. {t}" for i, t in enumerate(items))
        check = {"type": "numbered", "items": items}
    elif kind == "reverse":
        pivot = f"{ack} in reverse order: {_and(items[::-1])}."
        check = {"type": "order", "items": items[::-1], "universe": LISTS[what]}
    elif kind == "upper":
        pivot = f"{ack} in capitals: {_and([t.upper() for t in items]).replace(' and ', ' AND ')}."
        check = {"type": "contains", "must": [[t.upper()] for t in items], "must_not": [], "case": True}
    else:
        kk = rng.randint(1, k - 1) if rng.random() < 0.5 else rng.randint(k + 1, len(LISTS[what]))
        x = _num(rng, kk)
        new = LISTS[what][:kk]
        pivot = f"{ack} the first {kk} {what} are {_and(new)}."
        check = {"type": "order", "items": new, "universe": LISTS[what]}
    out = {"request": req, "answer": ans, "key": f"list|{what}|{k}|{kind}|{x}"}
    if corrected:
        text, unseen = _correction(rng, LIST_CLAUSES[kind], {"x": x}, split)
        out.update(kind=f"list-{kind}", correction=text, pivot=pivot, unseen=unseen, check=check)
    return out


RESTAURANTS = [
    "Luigi's",
    "the Golden Dragon",
    "Cafe Rosa",
    "the Blue Fish",
    "Spice House",
    "the Old Mill",
    "Sakura",
    "La Casa",
    "the Green Table",
    "Bistro Nord",
    "the Red Lion",
    "Olive Tree",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
TIMES = ["6 pm", "6:30 pm", "7 pm", "7:30 pm", "8 pm", "8:30 pm", "9 pm", "noon", "1 pm", "12:30 pm"]
BOOK_REQ = [
    "Book a table for {n} at {r} on {d} at {t}.",
    "Please book {r} for {n} people on {d} at {t}.",
    "Can you reserve a table at {r} for {n} on {d} at {t}?",
    "I need a table for {n} at {r}, {d} at {t}.",
]
BOOK_CLAUSES = {
    "people": [
        "make it for {x} people.",
        "we are {x} now.",
        "for {x} people, please.",
        "there will be {x} of us.",
        "change it to {x} people.",
    ],
    "day": ["make it {x}.", "on {x} instead.", "change the day to {x}.", "can we do {x}?", "move it to {x}."],
    "time": [
        "make it {x}.",
        "at {x} instead.",
        "change the time to {x}.",
        "can we do {x}?",
        "move it to {x}.",
    ],
    "place": ["at {x} instead.", "book {x} instead.", "make it {x}.", "let's go to {x}.", "switch to {x}."],
}


def _booking(n: int, r: str, d: str, t: str) -> str:
    return f"booked a table for {n} at {r} on {d} at {t}."


def fam_booking(rng: random.Random, split: str, corrected: bool) -> dict[str, Any]:
    kind = rng.choice(list(BOOK_CLAUSES))
    n, n2 = rng.sample(range(2, 11), 2)
    r, r2 = rng.sample(RESTAURANTS, 2)
    d, d2 = rng.sample(DAYS, 2)
    t, t2 = rng.sample(TIMES, 2)
    req = rng.choice(BOOK_REQ).format(n=_num(rng, n), r=r, d=d, t=t)
    ans = f"Done, I have {_booking(n, r, d, t)} Enjoy your meal!"
    slots = {"people": (n2, r, d, t), "day": (n, r, d2, t), "time": (n, r, d, t2), "place": (n, r2, d, t)}[
        kind
    ]
    x = {"people": _num(rng, n2), "day": d2, "time": t2, "place": r2}[kind]
    must = {
        "people": [[f"for {n2}"]],
        "day": [[f"on {d2}"]],
        "time": [[f"at {t2}"]],
        "place": [[f"at {r2}"]],
    }[kind]
    old = {"people": f"for {n}", "day": f"on {d}", "time": f"at {t}", "place": f"at {r}"}[kind]
    out = {"request": req, "answer": ans, "key": f"book|{kind}|{x}|{slots}"}
    if corrected:
        text, unseen = _correction(rng, BOOK_CLAUSES[kind], {"x": x}, split)
        pivot = f"{rng.choice(ACKS)} I have {_booking(*slots)} Enjoy your meal!"
        out.update(
            kind=f"booking-{kind}",
            correction=text,
            pivot=pivot,
            unseen=unseen,
            check={"type": "contains", "must": must, "must_not": [old]},
        )
    return out


GROCERIES = [
    "milk",
    "bread",
    "eggs",
    "butter",
    "cheese",
    "apples",
    "rice",
    "pasta",
    "coffee",
    "tea",
    "sugar",
    "onions",
    "carrots",
    "yogurt",
    "honey",
    "lemons",
    "potatoes",
    "chicken",
    "fish",
    "salt",
    "jam",
    "oranges",
    "beans",
    "flour",
    "cereal",
    "soap",
    "tomatoes",
    "garlic",
    "juice",
    "bananas",
]
SHOP_REQ = [
    "Make a shopping list with {l}.",
    "Write me a shopping list: {l}.",
    "I need to buy {l}. Make a list.",
    "Put {l} on a shopping list.",
]
SHOP_CLAUSES = {
    "add": ["also add {x}.", "and {x} too.", "add {x} as well.", "I also need {x}.", "put {x} on it too."],
    "drop": ["drop the {y}.", "remove the {y}.", "no {y}.", "I don't need {y}.", "take {y} off the list."],
    "swap": [
        "replace the {y} with {x}.",
        "{x} instead of {y}.",
        "swap the {y} for {x}.",
        "change {y} to {x}.",
        "not {y}, {x}.",
    ],
}


def fam_shopping(rng: random.Random, split: str, corrected: bool) -> dict[str, Any]:
    kind = rng.choice(list(SHOP_CLAUSES))
    items = rng.sample(GROCERIES, rng.randint(3, 5) + 1)
    x, items = items[-1], items[:-1]
    y = rng.choice(items)
    req = rng.choice(SHOP_REQ).format(l=_and(items))
    ans = "Shopping list: " + ", ".join(items) + "."
    new = {
        "add": [*items, x],
        "drop": [i for i in items if i != y],
        "swap": [x if i == y else i for i in items],
    }[kind]
    out = {"request": req, "answer": ans, "key": f"shop|{kind}|{x if kind != 'drop' else y}|{sorted(items)}"}
    if corrected:
        text, unseen = _correction(rng, SHOP_CLAUSES[kind], {"x": x, "y": y}, split)
        pivot = f"{rng.choice(ACKS)} updated list: " + ", ".join(new) + "."
        must_not = [y] if kind != "add" else []
        out.update(
            kind=f"shopping-{kind}",
            correction=text,
            pivot=pivot,
            unseen=unseen,
            check={"type": "contains", "must": [[i] for i in new], "must_not": must_not, "words": True},
        )
    return out


FAMILIES: dict[str, Callable[[random.Random, str, bool], dict[str, Any]]] = {
    "people": fam_people,
    "count": fam_count,
    "card": fam_card,
    "translate": fam_translate,
    "list": fam_list,
    "booking": fam_booking,
    "shopping": fam_shopping,
}


# -- layout ---------------------------------------------------------------------------------------


def _answer_ids(tok: Any, text: str) -> list[int]:
    return tok.encode(" " + text, add_special_tokens=False)


def make_grid(item: dict[str, Any], tok: Any, schema: Any, j: int | None) -> Any:
    """The multi-stream grid of one example (layout in the module docstring)."""
    import torch

    from multistream.data.tokenize import tokenize_live_text
    from multistream.grid import StreamGrid

    sil, eos = schema.silence_id, tok.eos_token_id
    req = [*tokenize_live_text(item["request"], tok, schema.silence_text, sil), eos]
    ans = _answer_ids(tok, item["answer"])
    start = len(req) + 1
    cells: list[tuple[int, int, list[int]]] = [(0, 0, req)]
    meta: dict[str, Any] = {"answer_row": start, "input_end_row": len(req)}
    if j is None:
        cells.append((1, start, [*ans, eos]))
        turns = [
            {"role": "user", "content": item["request"]},
            {"role": "assistant", "content": item["answer"]},
        ]
    else:
        c = start + j - 2  # the old answer runs to row c+1, the last row that cannot see row c
        corr = [*tokenize_live_text(item["correction"], tok, schema.silence_text, sil), eos]
        e = c + len(corr) - 1
        pivot = [*_answer_ids(tok, item["pivot"]), eos]
        cells += [(1, start, ans[:j]), (0, c, corr), (1, e + 2, pivot)]
        meta.update(correction_row=c, pivot_row=e + 2, answer_tokens_before=j)
        turns = [
            {"role": "user", "content": item["request"]},
            {"role": "assistant", "content": item["answer"]},
            {"role": "user", "content": item["correction"]},
            {"role": "assistant", "content": item["pivot"]},
        ]
    rows = max(r + len(ids) for _, r, ids in cells)
    ids = torch.full((rows, 2), sil, dtype=torch.long)
    for col, r, toks in cells:
        assert sil not in toks[: len(toks)], f"silence token inside {item}"
        ids[r : r + len(toks), col] = torch.tensor(toks)
    meta.update(turns=turns)
    return StreamGrid(ids, schema, meta)


def build(out: Path, n_train: int, n_heldout: int, seed: int) -> None:
    from multistream.data.io import write_grids
    from multistream.models import load_tokenizer
    from multistream.schema import StreamSchema

    tok = load_tokenizer(BASE)
    schema = StreamSchema.parse("user,assistant").with_tokenizer(tok)
    names = list(FAMILIES)

    # Held-out first: its keys are then excluded from training.
    rng = random.Random(seed + 1)
    heldout, keys = [], set()
    per_family = Counter()
    while len(heldout) < n_heldout:
        fam = names[len(heldout) % len(names)]
        item = FAMILIES[fam](rng, "heldout", True)
        if item["key"] in keys:
            continue
        keys.add(item["key"])
        n_ans = len(_answer_ids(tok, item["answer"]))
        item.update(
            id=f"interrupt-{len(heldout)}", family=fam, after_tokens=rng.randint(2, max(2, n_ans - 3))
        )
        per_family[fam] += 1
        heldout.append(item)

    rng = random.Random(seed)
    grids, seen = [], Counter()
    skipped = 0
    while len(grids) < n_train:
        fam = rng.choice(names)
        corrected = rng.random() >= 0.08
        item = FAMILIES[fam](rng, "train", corrected)
        if corrected and item["key"] in keys:
            skipped += 1
            continue
        n_ans = len(_answer_ids(tok, item["answer"]))
        j = rng.randint(2, max(2, n_ans - 2)) if corrected else None
        grid = make_grid(item, tok, schema, j)
        grid.meta.update(
            source=f"interrupt-{fam}",
            id=f"train-{len(grids)}",
            family=fam,
            kind=item.get("kind", "none"),
            check=item.get("check"),
        )
        seen[item.get("kind", "none")] += 1
        grids.append(grid)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "train.jsonl"
    write_grids(path, grids, tok)
    HELDOUT_FILE.parent.mkdir(parents=True, exist_ok=True)
    fields = [
        "id",
        "family",
        "kind",
        "request",
        "answer",
        "correction",
        "pivot",
        "after_tokens",
        "unseen",
        "check",
    ]
    tmp = HELDOUT_FILE.with_suffix(".tmp")
    tmp.write_text(
        "".join(json.dumps({f: h[f] for f in fields}, ensure_ascii=False) + "\n" for h in heldout),
        encoding="utf-8",
    )
    tmp.replace(HELDOUT_FILE)
    rows = sorted(g.num_rows for g in grids)
    print(
        f"{len(grids)} grids -> {path}; rows median {rows[len(rows) // 2]}, max {rows[-1]}, "
        f"total {sum(rows)}; skipped {skipped} held-out keys"
    )
    print("kinds:", dict(sorted(seen.items())))
    print(
        f"{len(heldout)} held-out -> {HELDOUT_FILE} ({sum(h['unseen'] for h in heldout)} unseen phrasings); "
        f"per family {dict(per_family)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/data/demo-interrupt"))
    parser.add_argument("--n-train", type=int, default=3000)
    parser.add_argument("--n-heldout", type=int, default=140)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    build(args.out, args.n_train, args.n_heldout, args.seed)


if __name__ == "__main__":
    main()
