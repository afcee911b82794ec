"""An embedded generator of simple children's stories (a stand-in for TinyStories text, no download).

A small grammar: a character with a trait goes to a place, wants something, meets a friend, a problem
happens, it is solved, and the story ends with a feeling or a lesson. Seeded, so `generate_stories(n, seed)`
always returns the same stories; every story is a few short sentences with a small vocabulary, the register
of TinyStories (paper §3: sTinyStories is TinyStories synthesised to speech).
"""
from __future__ import annotations

import random

__all__ = ["generate_stories", "story_items"]

NAMES = ["Lily", "Tom", "Sam", "Mia", "Ben", "Anna", "Max", "Lucy", "Tim", "Sara", "Jack", "Emma", "Leo", "Zoe"]
ANIMALS = ["cat", "dog", "bird", "bunny", "duck", "frog", "bear", "fox", "mouse", "pig", "lion", "fish"]
TRAITS = ["little", "happy", "brave", "shy", "kind", "curious", "sleepy", "funny", "small", "big"]
PLACES = ["the park", "the forest", "the beach", "the garden", "the farm", "the lake", "the zoo", "the hill",
          "the school", "the shop", "the river", "the sky"]
THINGS = ["a red ball", "a shiny rock", "a big apple", "a blue kite", "a toy car", "a yellow flower",
          "a soft hat", "a little boat", "a cookie", "a green leaf", "a box", "a drum"]
PROBLEMS = [
    ("the {thing} fell into the water", "{friend} used a long stick to get it back"),
    ("a strong wind took the {thing} away", "they ran fast and caught it"),
    ("the {thing} got stuck in a tree", "{friend} climbed up and got it down"),
    ("it started to rain", "they hid under a big tree until the sun came out"),
    ("{name} lost the {thing}", "they looked everywhere and found it under a bush"),
    ("the {thing} broke", "mom helped them fix it with some glue"),
    ("{name} was very hungry", "{friend} shared a sandwich"),
    ("it got dark", "they held hands and walked home together"),
]
ENDINGS = [
    "{name} was very happy.",
    "They played together all day.",
    "{name} learned that sharing is good.",
    "From that day on, they were best friends.",
    "{name} smiled and said thank you.",
    "They went home and had a nice nap.",
    "{name} knew that friends help each other.",
    "It was the best day ever.",
]


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def _story(rng: random.Random) -> str:
    name = rng.choice(NAMES)
    animal = rng.choice(ANIMALS)
    friend_name = rng.choice([n for n in NAMES if n != name])
    friend = rng.choice([friend_name, f"a {rng.choice(TRAITS)} {rng.choice([a for a in ANIMALS if a != animal])}"])
    thing = rng.choice(THINGS)
    thing_bare = thing.split(" ", 1)[1]
    place = rng.choice(PLACES)
    problem, solution = rng.choice(PROBLEMS)
    friend_again = "the " + friend[2:] if friend.startswith("a ") else friend  # second mention: "the fox"
    fill = {"name": name, "friend": friend_again, "thing": thing_bare}
    opening = rng.choice([
        f"Once upon a time, there was a {rng.choice(TRAITS)} {animal} named {name}.",
        f"One day, a {rng.choice(TRAITS)} {animal} called {name} woke up early.",
        f"{name} was a {rng.choice(TRAITS)} {animal} who loved to play.",
    ])
    sentences = [
        opening,
        f"{name} went to {place} with {thing}.",
        f"There, {name} met {friend}.",
        rng.choice([f"They wanted to play with the {thing_bare}.", f"{_upper_first(friend_again)} liked the {thing_bare} too."]),
        f"But then {problem.format(**fill)}.",
        f"{_upper_first(solution.format(**fill))}.",
        rng.choice(ENDINGS).format(**fill),
    ]
    return " ".join(sentences)


def generate_stories(n: int, seed: int = 0) -> list[str]:
    """`n` stories, deterministic for a given seed."""
    rng = random.Random(seed)
    return [_story(rng) for _ in range(n)]


def story_items(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(utt_id, text) pairs for `synth.synthesize`: ids story000000, story000001, ..."""
    return [(f"story{i:06d}", text) for i, text in enumerate(generate_stories(n, seed))]
