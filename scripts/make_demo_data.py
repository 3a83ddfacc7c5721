"""Write embedft's demo data set: catalogue codes of fasteners and their descriptions (seeded, no third-party data).

    python scripts/make_demo_data.py            # rewrites embedft/resources/demo_product_codes.tsv

Each product (a type, a material, a thread size, a length and a pack size) has a catalogue code
in a house style (``HXB-SS M8x40 P100``) and two descriptions in words. Rows pair a description
with the product's code (label 1) or with a near-miss code, one attribute changed (label 0).
A general model reads ``HXB``, ``SS`` or ``P100`` as noise, so it can match the numbers but not
the type, material or pack; the codes are learnt from the training pairs. No near-miss code is
another product's code, and no text is in two products' rows: each product is one group of
linked texts, so the splits share no text.
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

TYPES = {
    "HXB": ("hex bolt", "hex head bolt", "hexagon bolt"),
    "SHC": ("socket head cap screw", "socket cap screw", "allen head screw"),
    "CSK": ("countersunk screw", "flat head screw", "countersunk machine screw"),
    "PNH": ("pan head screw", "pan head machine screw", "round pan screw"),
    "CRB": ("carriage bolt", "coach bolt", "round head square neck bolt"),
    "FLB": ("flange bolt", "hex flange bolt", "flanged hex bolt"),
    "SET": ("set screw", "grub screw", "headless set screw"),
    "BTN": ("button head screw", "button socket screw", "dome head socket screw"),
}
MATERIALS = {
    "SS": ("stainless steel", "A2 stainless", "stainless"),
    "ZP": ("zinc plated steel", "zinc-plated", "bright zinc steel"),
    "BR": ("brass", "solid brass", "brass alloy"),
    "GV": ("galvanised steel", "hot-dip galvanised", "galvanized steel"),
    "BO": ("black oxide steel", "black steel", "black-oxide finish"),
    "NY": ("nylon", "nylon plastic", "polyamide"),
}
THREADS = ("M3", "M4", "M5", "M6", "M8", "M10", "M12")
LENGTHS = (8, 10, 12, 16, 20, 25, 30, 35, 40, 50, 60, 80)
PACKS = {"P10": ("pack of 10", "10 pieces", "ten per pack"), "P50": ("pack of 50", "50 pieces", "fifty per pack"),
         "P100": ("box of 100", "100 pieces", "a hundred per box")}
TEMPLATES = (
    "{material} {type}, {thread} thread, {length} mm long, {pack}",
    "{type} in {material}, size {thread} x {length}mm ({pack})",
    "{pack}: {thread} {type}, {length} mm, {material}",
    "{material} {thread} x {length} {type} - {pack}",
)


def code(product: tuple[str, str, str, int, str]) -> str:
    kind, material, thread, length, pack = product
    return f"{kind}-{material} {thread}x{length} {pack}"


def describe(product: tuple[str, str, str, int, str], rng: random.Random, template: str) -> str:
    kind, material, thread, length, pack = product
    return template.format(type=rng.choice(TYPES[kind]), material=rng.choice(MATERIALS[material]), thread=thread, length=length, pack=rng.choice(PACKS[pack]))


def near_miss(product: tuple[str, str, str, int, str], rng: random.Random) -> tuple[str, str, str, int, str]:
    """The product with one attribute changed (the type, material or pack more often than a number)."""
    field = rng.choice((0, 0, 1, 1, 2, 3, 4, 4))
    choices = (list(TYPES), list(MATERIALS), list(THREADS), list(LENGTHS), list(PACKS))[field]
    changed = list(product)
    changed[field] = rng.choice([c for c in choices if c != product[field]])
    return tuple(changed)  # type: ignore[return-value]


def make_rows(n_products: int = 250, seed: int = 0) -> list[tuple[str, str, int]]:
    """``(description, code, label)`` rows: per product two descriptions, each with its code (1) and a near-miss code (0)."""
    rng = random.Random(seed)
    products: list[tuple[str, str, str, int, str]] = []
    seen: set[tuple[str, str, str, int, str]] = set()
    while len(products) < n_products:
        product = (rng.choice(list(TYPES)), rng.choice(list(MATERIALS)), rng.choice(THREADS), rng.choice(LENGTHS), rng.choice(list(PACKS)))
        if product not in seen:
            seen.add(product)
            products.append(product)
    codes = {code(p) for p in products}
    used: set[str] = set()
    rows = []
    for product in products:
        templates = rng.sample(TEMPLATES, 2)
        for template in templates:
            text = describe(product, rng, template)
            while text in used:
                text = describe(product, rng, template)
            miss = code(near_miss(product, rng))
            while miss in codes or miss in used:
                miss = code(near_miss(product, rng))
            used.update((text, miss))
            rows += [(text, code(product), 1), (text, miss, 0)]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "embedft" / "resources" / "demo_product_codes.tsv")
    args = parser.parse_args()
    rows = make_rows(args.products, args.seed)
    with args.out.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["text1", "text2", "label"])
        writer.writerows(rows)
    print(f"wrote {len(rows)} pairs of {args.products} products to {args.out}")


if __name__ == "__main__":
    main()
