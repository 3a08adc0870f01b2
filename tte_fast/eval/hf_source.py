"""Task tables through the Hugging Face ``datasets`` library (the optional extra ``tte_fast[datasets]``),
for a task that names ``hf_dataset`` (a dataset id, or a local folder laid out as one) and a split.

Nothing here downloads on its own account: ``datasets`` reads its local cache, and with
``HF_HUB_OFFLINE=1`` (or ``HF_DATASETS_OFFLINE=1``) it reads only that. Records are taken as stored,
so image columns stay ``{"bytes", "path"}`` cells (nothing is decoded twice) and the readers see the
same records from the library as from the files.
"""

from __future__ import annotations

from tte_fast.eval.records import EvalDataError

DEFAULT_SPLIT = "test"  # MMEB_Test_Instruct's and ViDoRe's; VisRAG's sets name theirs train


def _library():
    try:
        import datasets
    except ImportError:
        raise ImportError(
            "reading a task from hf_dataset needs the datasets package: pip install 'tte_fast[datasets]' "
            "(or point data_path at the downloaded files)"
        ) from None
    return datasets


def load_rows(dataset: str, subset: str | None, split: str) -> tuple[list[dict], str]:
    """(the records of ``dataset``'s ``subset`` and ``split``, a label naming them in errors)."""
    datasets = _library()
    label = f"{dataset}[{subset + ', ' if subset else ''}{split}]"
    try:
        table = datasets.load_dataset(dataset, subset, split=split)
    except (FileNotFoundError, ValueError, ConnectionError) as err:
        raise EvalDataError(f"{label}: cannot load ({type(err).__name__}: {err})") from None
    return table.to_list(), label  # the stored cells: an image stays {"bytes", "path"}, undecoded
