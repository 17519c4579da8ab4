"""``protoseg dictionary``: a pathologist's names + the clusters -> the prototype dictionary."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence

from protoseg.io.errors import DataError
from protoseg.io.prototype_files import (
    IGNORE,
    build_dictionary,
    load_clusters,
    load_names,
    save_dictionary,
)


def main(argv: Sequence[str] | None = None) -> int:
    """``protoseg dictionary --clusters FILE --names FILE --output FILE``."""
    parser = argparse.ArgumentParser(
        prog="protoseg dictionary",
        description="Turn clusters (clusters.npz of a prototype stage) and their names (the "
        "gallery's names.json) into a prototype dictionary that protoseg predict queries "
        "(--model.init_args.dictionary FILE).",
    )
    parser.add_argument("--clusters", required=True, help="clusters.npz of the prototype stage")
    parser.add_argument("--names", required=True, help="names.json (or YAML) of the clusters")
    parser.add_argument("--output", required=True, help="dictionary file to write (.npz)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        clusters = load_clusters(args.clusters)
        names = load_names(args.names, clusters)
    except DataError as error:
        parser.error(str(error))
    try:
        dictionary = build_dictionary(clusters, names)
    except ValueError as error:
        parser.error(f"{args.names}: {error}")
    path = save_dictionary(args.output, dictionary)
    counts = Counter(name for name in names.values() if name != IGNORE)
    listed = ", ".join(f"{name} {count}" for name, count in sorted(counts.items())) or "none"
    print(
        f"protoseg: {len(dictionary.names)} of {len(names)} clusters named ({listed}); "
        f"dictionary -> {path.resolve()}"
    )
    return 0
