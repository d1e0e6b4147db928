"""The Le Petit Prince corpus (OpenNeuro ds003643): languages, run labels, file names, annotation.

Everything here is a fact of the real dataset (see ``docs/datasets.md``). A *root* is a
directory laid out like ds003643::

    root/
      participants.tsv, dataset_description.json
      annotation/EN/lppEN_word_information.csv
      derivatives/sub-EN057/func/sub-EN057_task-lppEN_run-15_space-MNIColin27_desc-preproc_bold.nii.gz
                                        (run labels vary by subject: see runs_by_subject)
      derivatives/mtbench-4mm/          <- written by `mtbench data prepare` (or `simulate`)
        mask.nii.gz, parcels.npy, reliability.npy, prepared.json, [truth.json, ceiling.npy]
        bold/sub-<id>_run-<1..9>.npy     (n_scans_r, n_voxels) float32, mask order
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from mtbench.errors import MtbenchError
from mtbench.paths import cache_dir

PREPARED_DIR = Path("derivatives") / "mtbench-4mm"
TR = 2.0
ROOT_ENV = "MTBENCH_LPP_ROOT"


@dataclass(frozen=True)
class Language:
    """One language of the corpus.

    Attributes
    ----------
    key : str
        Dataset-name suffix (``en``, ``fr``, ``cn``).
    code : str
        Code in file names (``EN``...).
    iso : str
        Language passed to :class:`mtbench.api.Stimulus` (``zh`` for Chinese: no spaces).
    n_scans : tuple of 9 int
        Preprocessed scans per run (sections 1..9).
    """

    key: str
    code: str
    iso: str
    n_scans: tuple[int, ...]

    @property
    def annotation(self) -> Path:
        """Word annotation, relative to the root."""
        return Path("annotation") / self.code / f"lpp{self.code}_word_information.csv"

    @property
    def bold_pattern(self) -> re.Pattern:
        """File name of a preprocessed BOLD run; groups ``subject`` (``EN057``) and ``label`` (``15``)."""
        return re.compile(rf"sub-(?P<subject>{self.code}\d+)_task-lpp{self.code}_run-(?P<label>\d+)"
                          r"_space-MNIColin27_desc-preproc_bold\.nii\.gz")

    def bold(self, subject: str, label: int) -> Path:
        """Relative path of ``subject``'s BOLD with run label ``label`` (not the run number: see :func:`runs_by_subject`)."""
        return (Path("derivatives") / f"sub-{subject}" / "func"
                / f"sub-{subject}_task-lpp{self.code}_run-{label:02d}_space-MNIColin27_desc-preproc_bold.nii.gz")


LANGUAGES = {
    "en": Language("en", "EN", "en", (282, 298, 340, 303, 265, 343, 325, 292, 368)),
    "fr": Language("fr", "FR", "fr", (309, 326, 354, 315, 293, 378, 332, 294, 336)),
    "cn": Language("cn", "CN", "zh", (283, 322, 322, 307, 293, 392, 364, 293, 401)),
}


def runs_by_subject(lang: Language, paths) -> dict[str, list[str]]:
    """Group BOLD paths by subject; runs 1..9 are the subject's run labels in sorted order.

    The labels are not the same for everyone: most English subjects have 9 consecutive
    labels starting at 06-09 (only sub-EN057 has the 15..23 of the dataset's README), most
    Chinese ones 05..13, some have gaps (``sub-EN093``: 06-08, 11-16). Sorted order is the
    order of the book's sections.

    Parameters
    ----------
    lang : Language
    paths : iterable of str or Path
        Any paths; those that are not BOLD runs of ``lang`` are ignored.

    Returns
    -------
    dict
        Subject id -> 9 paths (as given), run 1 first.
    """
    found: dict[str, list[tuple[int, str]]] = {}
    for path in paths:
        match = lang.bold_pattern.fullmatch(Path(path).name)
        if match:
            found.setdefault(match["subject"], []).append((int(match["label"]), path))
    out = {}
    for subject, labelled in sorted(found.items()):
        if len(labelled) != 9:
            raise MtbenchError(f"sub-{subject} has {len(labelled)} BOLD runs, expected 9: fetch again "
                               f"(`mtbench data fetch lpp-{lang.key} --subjects {subject}`) or leave it out")
        out[subject] = [p for _, p in sorted(labelled)]
    return out


def language(key: str) -> Language:
    try:
        return LANGUAGES[key]
    except KeyError:
        raise MtbenchError(f"unknown Le Petit Prince language {key!r}: choose en, fr or cn") from None


def default_root(name: str) -> Path:
    """Where ``name`` lives unless told otherwise: ``$MTBENCH_LPP_ROOT`` (lpp-* datasets) or the cache."""
    if name.startswith("lpp-") and not name.endswith("-sim") and os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV])
    return cache_dir("datasets") / ("ds003643" if not name.endswith("-sim") else name)


# --------------------------------------------------------------------------- manifest
@dataclass(frozen=True)
class ManifestFile:
    path: str
    size: int
    md5: str


def read_manifest(path: Path) -> list[ManifestFile]:
    """Rows of a ``path, size, md5`` TSV (e.g. the real ds003643 manifest, or a test one)."""
    with open(path, encoding="utf-8", newline="") as handle:
        return [ManifestFile(row["path"], int(row["size"]), row["md5"]) for row in csv.DictReader(handle, delimiter="\t")]


def subjects_in_manifest(lang: Language, manifest: list[ManifestFile]) -> list[str]:
    """Subject ids (``EN057``...) that have BOLD in the manifest, sorted."""
    return sorted({m["subject"] for m in (lang.bold_pattern.fullmatch(Path(f.path).name) for f in manifest) if m})


# --------------------------------------------------------------------------- annotation
@dataclass
class Annotation:
    """Words of the word-information table, per section.

    Attributes
    ----------
    sections : list of 9 lists of (word, onset, offset)
        Seconds from the start of that section's audio (= first scan of the run).
    n_rows : int
        Rows in the file (the real English table has 15,376).
    dropped : dict of str to int
        Rows left out and why (``empty word``, ``missing onset/offset``).
    """

    sections: list[list[tuple[str, float, float]]]
    n_rows: int
    dropped: dict[str, int]


def _number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def read_annotation(path: Path, n_sections: int = 9) -> Annotation:
    """Read ``lpp{LANG}_word_information.csv``.

    Known quirks are dropped and counted: empty words (in English, the ``n't`` half of 31
    contractions such as ``hasnt`` + ``''`` whose lemma is ``not``: the first half already
    carries the whole word) and rows without a numeric onset/offset/section.

    Parameters
    ----------
    path : Path
    n_sections : int
        Sections expected (9: one per run).
    """
    try:
        handle = open(path, encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise MtbenchError(f"word annotation {path} is missing: run `mtbench data fetch lpp-en --annotations-only` "
                           "(or the matching language)") from None
    with handle:
        reader = csv.DictReader(handle)
        missing = {"word", "onset", "offset", "section"} - set(reader.fieldnames or ())
        if missing:
            raise MtbenchError(f"{path} lacks column(s) {', '.join(sorted(missing))}: not a word_information table; "
                               "fetch it again")
        sections: list[list[tuple[str, float, float]]] = [[] for _ in range(n_sections)]
        dropped = {"empty word": 0, "missing onset/offset/section": 0}
        n_rows = 0
        for row in reader:
            n_rows += 1
            onset, offset, section = _number(row["onset"]), _number(row["offset"]), _number(row["section"])
            if not all(math.isfinite(v) for v in (onset, offset, section)):
                dropped["missing onset/offset/section"] += 1
                continue
            word = (row["word"] or "").strip()
            if not word:
                dropped["empty word"] += 1
                continue
            if not 1 <= int(section) <= n_sections:
                raise MtbenchError(f"{path}: section {row['section']!r} outside 1..{n_sections}; the file is damaged, "
                                   "fetch it again")
            sections[int(section) - 1].append((word, onset, offset))
    empty = [i + 1 for i, s in enumerate(sections) if not s]
    if empty:
        raise MtbenchError(f"{path}: section(s) {empty} have no words; the file is damaged or truncated, fetch it again")
    return Annotation(sections=sections, n_rows=n_rows, dropped={k: v for k, v in dropped.items() if v})
