"""Files of the prototype stage: clusters, a pathologist's names, and the prototype dictionary.

- ``clusters.npz``: the k-means centroids of the patch embeddings, their sizes, and (JSON) the
  embedder settings, the dataset's classes and each cluster's exemplar patches.
- names (``names.json``, or YAML): ``{"names": {"<cluster>": "<class>" | "ignore", ...}}``,
  what the gallery saves; clusters left out are ``ignore``.
- ``dictionary.npz``: the named prototypes (the centroids given a class, with its index) and
  the settings the query needs: embedder, classes, source clusters.

Every file is written atomically; every read error names the file.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from protoseg.io.class_maps import TissueClasses
from protoseg.io.errors import DataError
from protoseg.io.images import write_bytes_atomic

#: The name of clusters whose pixels are left unsure.
IGNORE = "ignore"


@dataclass(frozen=True)
class EmbedderSettings:
    """How the embeddings of a cluster or dictionary file were made: the embedder's class and
    arguments (e.g. :class:`~protoseg.modules.prototypes.DenseEmbedder`'s encoder, stride and
    window), so that the query rebuilds the very same embedder
    (:func:`~protoseg.modules.prototypes.build_embedder`)."""

    class_path: str
    init_args: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def classes_to_dict(classes: TissueClasses) -> dict[str, Any]:
    """The fields of a :class:`TissueClasses`, as JSON."""
    return {
        "names": list(classes.names),
        "codes": list(classes.codes),
        "background_code": classes.background_code,
        "palette": [list(c) for c in classes.palette],
    }


def classes_from_dict(data: dict[str, Any]) -> TissueClasses:
    return TissueClasses(
        tuple(data["names"]),
        tuple(data["codes"]),
        data["background_code"],
        tuple(tuple(c) for c in data["palette"]),
    )


@dataclass
class Clusters:
    """k-means prototypes of patch embeddings.

    Attributes:
        centroids: (K, D) float32 unit vectors.
        sizes: (K,) int64 patches per cluster.
        embedder: the settings the embeddings were made with.
        classes: the dataset's classes (what a cluster may be named).
        exemplars: per cluster, its exemplar patches nearest the centroid, each a dict with
            ``path`` (image or slide), ``x``, ``y`` (patch centre, px of the file's level 0)
            and ``size`` (patch side, level-0 px).
    """

    centroids: np.ndarray
    sizes: np.ndarray
    embedder: EmbedderSettings
    classes: TissueClasses
    exemplars: list[list[dict[str, Any]]] = field(default_factory=list)

    @property
    def names_allowed(self) -> tuple[str, ...]:
        """The names a cluster may get: the classes, ``background`` if any, ``ignore``."""
        return (*self.classes.output_names, IGNORE)


def _save_npz(path: str | Path, meta: dict[str, Any], **arrays: np.ndarray) -> Path:
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array(json.dumps(meta)), **arrays)
    write_bytes_atomic(path, buffer.getvalue())
    return Path(path)


def _load_npz(path: str | Path, kind: str, keys: tuple[str, ...]) -> tuple[dict, dict]:
    """The JSON ``meta`` and the 2-D/1-D ``keys`` arrays of a file of ``kind``.

    Raises:
        DataError: naming ``path``: missing, not an ``.npz`` (or truncated), no ``meta``, or
            meta of another kind or without the embedder and classes.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {kind} file does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            arrays = {key: data[key] for key in keys}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: not a {kind} file ({type(error).__name__}: {error})") from error
    if not isinstance(meta, dict) or meta.get("kind") != kind:
        held = meta.get("kind") if isinstance(meta, dict) else type(meta).__name__
        raise DataError(f"{path}: not a {kind} file (it holds {held!r})")
    try:
        EmbedderSettings(**meta["embedder"])
        classes_from_dict(meta["classes"])
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(
            f"{path}: {kind} file without valid embedder and classes "
            f"({type(error).__name__}: {error})"
        ) from error
    first = arrays[keys[0]]
    if first.ndim != 2 or any(
        arrays[k].ndim != 1 or len(arrays[k]) != len(first) for k in keys[1:]
    ):
        shapes = ", ".join(f"{k} {arrays[k].shape}" for k in keys)
        raise DataError(f"{path}: {kind} file's arrays do not match ({shapes})")
    return meta, arrays


def save_clusters(path: str | Path, clusters: Clusters) -> Path:
    """Writes ``clusters.npz`` atomically."""
    meta = {
        "kind": "clusters",
        "embedder": clusters.embedder.as_dict(),
        "classes": classes_to_dict(clusters.classes),
        "exemplars": clusters.exemplars,
    }
    return _save_npz(path, meta, centroids=clusters.centroids, sizes=clusters.sizes)


def load_clusters(path: str | Path) -> Clusters:
    meta, arrays = _load_npz(path, "clusters", ("centroids", "sizes"))
    return Clusters(
        arrays["centroids"].astype(np.float32),
        arrays["sizes"].astype(np.int64),
        EmbedderSettings(**meta["embedder"]),
        classes_from_dict(meta["classes"]),
        meta.get("exemplars", []),
    )


def load_names(path: str | Path, clusters: Clusters) -> dict[int, str]:
    """Reads a naming file: every cluster's name, ``ignore`` where none was given.

    Raises:
        DataError: unreadable file, no ``names`` mapping, a cluster that does not exist, or a
            name that is not a class, ``background`` (where the dataset has one) or
            ``ignore``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: names file does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise DataError(f"{path}: cannot read names ({type(error).__name__}: {error})") from error
    names = data.get("names") if isinstance(data, dict) else None
    if not isinstance(names, dict):
        raise DataError(f"{path}: expected a mapping 'names: {{cluster: class}}'")
    count = len(clusters.centroids)
    named = dict.fromkeys(range(count), IGNORE)
    for key, value in names.items():
        try:
            cluster = int(key)
        except (TypeError, ValueError):
            cluster = -1
        if not 0 <= cluster < count:
            raise DataError(f"{path}: cluster {key!r} does not exist (0 to {count - 1})")
        name = IGNORE if value in (None, "") else str(value).strip()
        if name not in clusters.names_allowed:
            allowed = ", ".join(clusters.names_allowed)
            raise DataError(f"{path}: cluster {cluster}: unknown name {name!r} ({allowed})")
        named[cluster] = name
    return named


def write_names(path: str | Path, names: dict[int, str], **extra: Any) -> Path:
    """Writes a naming file (JSON) atomically; ``extra`` keys go beside ``names``."""
    payload = {**extra, "names": {str(k): v for k, v in sorted(names.items())}}
    write_bytes_atomic(path, (json.dumps(payload, indent=2) + "\n").encode())
    return Path(path)


@dataclass
class PrototypeDictionary:
    """Named prototypes and what querying them needs.

    Attributes:
        prototypes: (M, D) float32 unit vectors.
        classes_of: (M,) int64 class index of each prototype.
        names: (M,) the name of each.
        embedder: the embedding settings of the prototypes.
        classes: the dataset's classes.
        clusters: (M,) the cluster each prototype was.
    """

    prototypes: np.ndarray
    classes_of: np.ndarray
    names: list[str]
    embedder: EmbedderSettings
    classes: TissueClasses
    clusters: list[int] = field(default_factory=list)


def build_dictionary(clusters: Clusters, names: dict[int, str]) -> PrototypeDictionary:
    """The named centroids (a class or ``background``) with their class indices; clusters
    named ``ignore`` are left out, as Proto2Seg drops the clusters it cannot name: a pixel
    goes to the most similar named prototype, or stays unsure below the query's threshold.

    Raises:
        ValueError: no cluster is named.
    """
    index_of = {name: i for i, name in enumerate(clusters.classes.output_names)}
    kept = [k for k in sorted(names) if names[k] in index_of]
    if not kept:
        raise ValueError("no cluster is named with a class: the dictionary would be empty")
    return PrototypeDictionary(
        clusters.centroids[kept],
        np.asarray([index_of[names[k]] for k in kept], np.int64),
        [names[k] for k in kept],
        clusters.embedder,
        clusters.classes,
        kept,
    )


def save_dictionary(path: str | Path, dictionary: PrototypeDictionary) -> Path:
    meta = {
        "kind": "prototype dictionary",
        "embedder": dictionary.embedder.as_dict(),
        "classes": classes_to_dict(dictionary.classes),
        "names": dictionary.names,
        "clusters": dictionary.clusters,
    }
    return _save_npz(path, meta, prototypes=dictionary.prototypes, classes_of=dictionary.classes_of)


def load_dictionary(path: str | Path) -> PrototypeDictionary:
    meta, arrays = _load_npz(path, "prototype dictionary", ("prototypes", "classes_of"))
    return PrototypeDictionary(
        arrays["prototypes"].astype(np.float32),
        arrays["classes_of"].astype(np.int64),
        list(meta["names"]),
        EmbedderSettings(**meta["embedder"]),
        classes_from_dict(meta["classes"]),
        list(meta.get("clusters", [])),
    )
