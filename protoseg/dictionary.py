"""``protoseg dictionary``: a pathologist's names + the clusters -> the prototype dictionary."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence

from protoseg.io.errors import DataError
from protoseg.io.outputs import check_output_file
from protoseg.io.prototype_files import (
    IGNORE,
    build_dictionary,
    load_clusters,
    load_names,
    save_dictionary,
)
from protoseg.usage import ToolParser


def main(argv: Sequence[str] | None = None) -> int:
    """``protoseg dictionary --clusters FILE --names FILE --output FILE``.

    Raises:
        DataError: naming the file: unreadable clusters or names, names of no class, or an
            output that is a folder or one of the inputs.
    """
    parser = ToolParser(
        prog="protoseg dictionary",
        description="Turn clusters (clusters.npz of a prototype stage) and their names (the "
        "gallery's names.json) into a prototype dictionary that protoseg predict queries "
        "(--model.init_args.dictionary FILE).",
    )
    parser.add_argument("--clusters", required=True, help="clusters.npz of the prototype stage")
    parser.add_argument("--names", required=True, help="names.json (or YAML) of the clusters")
    parser.add_argument("--output", required=True, help="dictionary file to write (.npz)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    check_output_file(args.output, [args.clusters, args.names], "--output")
    clusters = load_clusters(args.clusters)
    names = load_names(args.names, clusters)
    try:
        dictionary = build_dictionary(clusters, names)
    except ValueError as error:
        raise DataError(f"{args.names}: {error}") from error
    path = save_dictionary(args.output, dictionary)
    counts = Counter(name for name in names.values() if name != IGNORE)
    listed = ", ".join(f"{name} {count}" for name, count in sorted(counts.items())) or "none"
    print(
        f"protoseg: {len(dictionary.names)} of {len(names)} clusters named ({listed}); "
        f"dictionary -> {path.resolve()}"
    )
    return 0
