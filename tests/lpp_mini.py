"""A miniature prepared Le Petit Prince root for any language (tests that need one without real data).

Real file layout, real run labels and scan counts per run (``LANGUAGES``); the annotation has
the real columns but a few invented words per section (no French or Chinese annotation is
available offline), and 24 voxels of random BOLD.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtbench_plugins.datasets.lpp.dataset import write_bold, write_prepared
from mtbench_plugins.datasets.lpp.layout import LANGUAGES, PREPARED_DIR

COLUMNS = "word,lemma,onset,offset,logfreq,pos,section,top_down,bottom_up,left_corner"
WORDS = {"en": ["the", "little", "prince", "asked", "a", "sheep"],
         "fr": ["le", "petit", "prince", "demanda", "l'agneau", "déjà"],
         "cn": ["小", "王子", "问", "一只", "绵羊", "。"]}


def make_mini_root(root: Path, key: str, words_per_run: int = 12, seed: int = 0) -> Path:
    """Write a prepared ``lpp-<key>`` root under ``root`` and return it.

    Returns
    -------
    Path
        Pass it as ``load_lpp(key, root=...)`` / ``--dataset-option root=...``.
    """
    lang = LANGUAGES[key]
    rng = np.random.default_rng(seed)
    lines = [COLUMNS]
    vocabulary = WORDS[key]
    for section, n_scans in enumerate(lang.n_scans, start=1):
        onsets = np.sort(rng.uniform(1.0, n_scans * 2.0 - 10.0, words_per_run))
        for w, onset in enumerate(onsets):
            word = vocabulary[w % len(vocabulary)]
            lines.append(f"{word},{word},{onset:.3f},{onset + 0.3:.3f},3.0,NN,{section},1,1,1")
    annotation = root / lang.annotation
    annotation.parent.mkdir(parents=True, exist_ok=True)
    annotation.write_text("\n".join(lines) + "\n", encoding="utf-8")
    mask = np.zeros((37, 46, 38), dtype=bool)
    mask[10:12, 20:24, 15:18] = True  # 24 voxels
    n_voxels = int(mask.sum())
    parcels = np.where(np.arange(n_voxels) < 12, 45, 0)
    prepared = root / PREPARED_DIR
    subjects = ["average", f"{lang.code}001", f"{lang.code}002"]
    for subject in subjects:
        write_bold(prepared, subject, [rng.standard_normal((n, n_voxels)).astype(np.float32) for n in lang.n_scans])
    reliability = rng.uniform(-0.1, 0.7, (10, n_voxels)).astype(np.float32)
    write_prepared(prepared, mask, np.diag([4.0, 4.0, 4.0, 1.0]), parcels, reliability,
                   {"subjects": subjects, "n_scans": list(lang.n_scans)})
    return root
