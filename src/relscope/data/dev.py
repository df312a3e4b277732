"""A development run: a TREC folder's first-stage top-k with text and judgments, reranked at each checkpoint or
for each variant of an analysis (e.g. DL19 BM25 top-20)."""

from __future__ import annotations

from dataclasses import dataclass

from relscope.data.dataset import (
    RerankDataset,
    data_path,
    load_rerank_dataset,
    resolve_files,
)
from relscope.errors import ConfigError, DataError
from relscope.measures import DEFAULT_MEASURES, check_measures


@dataclass(frozen=True)
class DevSettings:
    """A development run reranked at every checkpoint (e.g. DL19 BM25 top-20)."""

    data: str  # a TREC folder with queries.tsv, collection.tsv, qrels.txt, run.bm25.txt
    top_k: int = 20
    max_queries: int | None = None  # the first n queries only, for a quicker signal
    measures: tuple[str, ...] = DEFAULT_MEASURES

    def __post_init__(self) -> None:
        """ConfigError, not ValueError: the CLI builds these from flags too, outside from_mapping."""
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k <= 0:
            raise ConfigError(f"dev.top_k (--top-k) must be a positive integer, got {self.top_k!r}")
        if self.max_queries is not None and (isinstance(self.max_queries, bool) or not isinstance(self.max_queries, int)
                                             or self.max_queries <= 0):
            raise ConfigError(f"dev.max_queries (--max-queries) must be a positive integer (or unset for all), got "
                              f"{self.max_queries!r}")
        check_measures(self.measures, "dev.measures")

    def check_paths(self) -> None:
        """The dev folder and its files exist (cheap: nothing is read), or one error naming what is missing."""
        if "qrels" not in resolve_files(data_path(self.data)):
            raise DataError(f"{self.data}: no qrels.txt; a dev run is measured against judgments, so give a folder "
                            "that has them")


def load_dev_run(dev: DevSettings) -> RerankDataset:
    """The dev run's top-k with text and judgments (the first `max_queries` queries when set)."""
    dataset = load_rerank_dataset(resolve_files(data_path(dev.data)), dev.top_k)
    if dataset.qrels is None:
        raise ConfigError(f"{dev.data}: no qrels.txt; a dev run is measured against judgments, so give a "
                          "folder that has them")
    return dataset.first_queries(dev.max_queries)
