"""Write a small synthetic sentiment data set in the GLUE SST-2 layout.

    python examples/make_sst2_sample.py            # -> examples/data/sst2_sample/{train,dev}.tsv

Each file starts with the header ``sentence<TAB>label``; label 1 is positive, 0 negative.  A
review is built from clauses: one or two opinion clauses ("the acting was superb", "the plot
was not dull at all", ...) wrapped in neutral filler ("i saw it on a rainy sunday with my
sister").  The label is the polarity of the deciding clause, where a negation flips the
opinion word and after "but" / "although" the contrasting clause decides, so a bag of words is
not enough.  Lengths run from 3 to 60 tokens.  The same seed always gives the same files.
"""
from __future__ import annotations

import argparse
import os
import random

POSITIVE = ("good great superb wonderful brilliant moving delightful charming clever "
            "gripping beautiful funny touching excellent fresh memorable stunning").split()
NEGATIVE = ("bad awful dull boring terrible weak clumsy tedious bland messy painful "
            "forgettable lifeless silly flat predictable").split()
NEGATORS = ["not", "never", "hardly", "not at all", "far from"]
INTENSIFIERS = ["", "", "", "very ", "really ", "truly ", "quite ", "rather "]
SUBJECTS = ["the movie", "the film", "the acting", "the plot", "the script", "the score",
            "the ending", "the cast", "the direction", "the dialogue", "this picture",
            "the story", "the cinematography", "the lead performance", "the pacing"]
VERBS = ["was", "is", "felt", "seemed", "turned out"]
FILLERS = ["i saw it on a rainy sunday with my sister", "the theater was half empty",
           "it runs for about two hours", "my friend picked the seats",
           "there is a long scene in a train station", "the popcorn was cold",
           "it is based on a novel from the seventies", "the trailer gave away a lot",
           "we went to the late show", "it was shot in three different countries",
           "the director also wrote the music", "there are a lot of characters"]
CONTRASTS = ["but", "although", "even though", "yet"]


def opinion(rng: random.Random):
    """(clause, polarity): polarity is 1 for a positive opinion."""
    positive = rng.random() < 0.5
    word = rng.choice(POSITIVE if positive else NEGATIVE)
    subject, verb = rng.choice(SUBJECTS), rng.choice(VERBS)
    if rng.random() < 0.25:
        neg = rng.choice(NEGATORS)
        if neg == "not at all":
            return f"{subject} {verb} not {word} at all", int(not positive)
        return f"{subject} {verb} {neg} {word}", int(not positive)
    return f"{subject} {verb} {rng.choice(INTENSIFIERS)}{word}", int(positive)


def review(rng: random.Random):
    """(sentence, label) with 3..60 tokens."""
    first, label = opinion(rng)
    parts = [first]
    if rng.random() < 0.2:
        second, second_label = opinion(rng)
        link = rng.choice(CONTRASTS)
        if link == "but" or link == "yet":  # "A but B": B decides
            parts, label = [first, link, second], second_label
        else:  # "A although B": A decides
            parts = [first, link, second]
    fillers = rng.sample(FILLERS, k=rng.choice([0, 0, 1, 1, 2, 3, 4, 5]))
    for f in fillers:
        pos = rng.choice(["start", "end"])
        parts = [f, "and"] + parts if pos == "start" else parts + [";", f]
    words = " ".join(parts).split()
    if rng.random() < 0.1:  # very short review: "not boring", "superb"
        words = opinion_short(rng)
        label = words.pop()
    return " ".join(words[:60]), label


def opinion_short(rng: random.Random):
    positive = rng.random() < 0.5
    word = rng.choice(POSITIVE if positive else NEGATIVE)
    if rng.random() < 0.5:
        return ["simply", word, "!", int(positive)]
    return ["not", word, "at", "all", int(not positive)]


def write(path: str, rows) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("sentence\tlabel\n")
        for sentence, label in rows:
            f.write(f"{sentence}\t{label}\n")


def main(argv=None) -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default=os.path.join(here, "data", "sst2_sample"))
    p.add_argument("--train-size", type=int, default=1600)
    p.add_argument("--dev-size", type=int, default=400)
    p.add_argument("--seed", type=int, default=2024)
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    seen, rows = set(), []
    while len(rows) < args.train_size + args.dev_size:
        sentence, label = review(rng)
        if sentence not in seen:  # no sentence appears in both train and dev
            seen.add(sentence)
            rows.append((sentence, label))
    write(os.path.join(args.out_dir, "train.tsv"), rows[:args.train_size])
    write(os.path.join(args.out_dir, "dev.tsv"), rows[args.train_size:])
    print(f"wrote {args.train_size} train and {args.dev_size} dev rows to {args.out_dir}")


if __name__ == "__main__":
    main()
