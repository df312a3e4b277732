"""Slow tier: the real SmolLM2-135M-Instruct on the real TREC DL data (~2 minutes on 2 cores)."""

from __future__ import annotations

import numpy as np
import pytest

from relscope.cli import main
from relscope.evaluation.settings import RerankConfig
from relscope.data import read_groups, read_qrels, read_run, read_texts
from relscope.data.dataset import load_rerank_dataset, resolve_files
from relscope.evaluation.job import run_rerank_job
from relscope.evaluation.rerank import Reranker
from relscope.models.scoring import ScoringOptions

pytestmark = pytest.mark.slow


def test_bm25_run_evaluates_to_the_published_figure(real_data, capsys):
    dl19 = real_data / "trec-dl-2019"
    assert main(["evaluate", "--qrels", str(dl19 / "qrels.txt"), "--run", str(dl19 / "run.bm25.txt")]) == 0
    out = capsys.readouterr().out
    assert "nDCG@10\tall\t0.5058" in out


def test_every_real_file_reads_cleanly(real_data):
    grades = np.bincount([g for q in read_qrels(real_data / "trec-dl-2019/qrels.txt").values() for g in q.values()])
    assert grades.tolist() == [5158, 1601, 1804, 697]
    for year in ("trec-dl-2019", "trec-dl-2021", "trec-dl-2023"):
        assert read_texts(real_data / year / "queries.tsv", "query")
        assert read_texts(real_data / year / "collection.tsv", "passage")
    assert len(read_run(real_data / "trec-dl-2021/run.bm25.txt")) == 53
    groups = read_groups(real_data / "relevance-mi/msmarco.jsonl")
    assert len(groups) == 183 and {n.kind for n in groups[0].negatives} == {"hard", "random"}


def test_golden_prompts_for_smollm2(smollm2):
    from relscope.prompts import PromptBuilder, get_template

    builder = PromptBuilder(smollm2.tokenizer, get_template("yes_no"))
    prompt = builder.build("capital of france", ["Paris is the capital of France."])
    assert list(prompt.input_ids) == [
        1, 9690, 198, 2683, 8048, 1991, 253, 7429, 5360, 253, 3179, 8520, 30, 2, 198, 1, 4093, 198, 22731, 42,
        3575, 282, 275, 8603, 198, 17911, 473, 42, 7042, 314, 260, 3575, 282, 4649, 30, 198, 14748, 260, 7429,
        2988, 260, 8520, 47, 19842, 9805, 355, 787, 30, 2, 198, 1, 520, 9531, 198,
    ]
    assert [(s.group, s.start, s.end) for s in prompt.spans] == [
        ("instruction", 0, 20), ("query", 20, 24), ("instruction", 24, 28), ("document", 28, 35),
        ("instruction", 35, 53), ("last", 53, 54),
    ]
    assert builder.answer_ids == (10407, 4607)  # "yes", "no"
    pair = PromptBuilder(smollm2.tokenizer, get_template("pairwise"))
    prompt = pair.build("capital of france", ["Paris is in France.", "Bananas are yellow."])
    assert [(s.group, s.start, s.end, s.index) for s in prompt.spans] == [
        ("instruction", 0, 22, 0), ("query", 22, 26, 0), ("instruction", 26, 30, 0), ("document", 30, 35, 0),
        ("instruction", 35, 39, 0), ("document", 39, 44, 1), ("instruction", 44, 64, 0), ("last", 64, 65, 0),
    ]
    assert pair.answer_ids == (49, 50)  # "A", "B"


def test_prefix_cache_and_padding_match_single_forwards_on_the_real_model(smollm2, real_data):
    data = load_rerank_dataset(resolve_files(real_data / "trec-dl-2019"), top_k=8)
    qid = next(iter(data.run))
    texts = [data.passages[d.pid] for d in data.run[qid][:8]]
    scores = {}
    for name, options in {"prefix": ScoringOptions(), "plain": ScoringOptions(prefix_cache=False),
                          "single": ScoringOptions(prefix_cache=False, max_batch_size=1)}.items():
        reranker = Reranker.build(smollm2, options=options, progress=False)
        prompts = [reranker.builder.build(data.queries[qid], [t]) for t in texts]
        scores[name] = reranker.scorer.score(prompts, [qid] * len(prompts))
    np.testing.assert_allclose(scores["prefix"], scores["single"], atol=2e-4)
    np.testing.assert_allclose(scores["plain"], scores["single"], atol=2e-4)


def test_rerank_job_on_five_dl19_queries(smollm2, real_data, tmp_path):
    dl19 = real_data / "trec-dl-2019"
    run = read_run(dl19 / "run.bm25.txt")
    subset = tmp_path / "run5.txt"
    subset.write_text("".join(f"{q} Q0 {d.pid} {i + 1} {d.score} bm25\n"
                              for q in sorted(run)[:5] for i, d in enumerate(run[q])))
    config = RerankConfig(data=str(dl19), run=str(subset), top_k=10)
    metrics = run_rerank_job(config, tmp_path / "out", progress=False)
    assert metrics["queries"] == 5 and metrics["passages_scored"] == 50
    assert 0.0 < metrics["reranked"]["nDCG@10"] <= 1.0
    assert len(read_run(tmp_path / "out" / "run.trec")) == 5


def test_a_short_real_training_run_resumes_and_reranks(smollm2, real_data, tmp_path):
    """SmolLM2 on real DL21 groups: 2 steps, interrupted after 1, resumed; the checkpoint reranks DL19."""
    import json
    import shutil

    from relscope.config import from_mapping
    from relscope.training.config import TrainConfig
    from relscope.training.job import run_train_job

    config = from_mapping(TrainConfig, dict(train=[str(real_data / "trec-dl-2021")], negatives=1, max_length=128,
                                            max_steps=2, batch_size=1, save_steps=1, report_to=[],
                                            lora={"rank": 2, "targets": ["q", "v"], "layers": [0, -1]}))
    run_train_job(config, tmp_path / "full", progress=False)
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoint-2")
    run_train_job(config, tmp_path / "cut", progress=False)
    losses = [[json.loads(line)["loss"] for line in (tmp_path / run / "log.jsonl").read_text().splitlines()
               if '"loss"' in line] for run in ("full", "cut")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6) and len(losses[0]) == 2
    metrics = run_rerank_job(RerankConfig(adapter=str(tmp_path / "cut" / "checkpoint-2"),
                                          data=str(real_data / "trec-dl-2019"), top_k=3), tmp_path / "rr",
                             progress=False)
    assert metrics["queries"] == 43 and 0.0 < metrics["reranked"]["nDCG@10"] <= 1.0


@pytest.mark.parametrize("template", ["yes_no", "pairwise"])
def test_almost_every_msmarco_group_gives_an_aligned_pair(smollm2, real_data, template):
    """SmolLM2's BPE merges a passage's first word with the space before it or not: the pair builder must even out
    the in-context lengths (it skipped 59 of 183 before it did)."""
    from relscope.analysis.patching.pairs import build_pairs, same_layout
    from relscope.data.groups import read_groups
    from relscope.prompts import PromptBuilder, get_template

    builder = PromptBuilder(smollm2.tokenizer, get_template(template), 256)
    pairs, report = build_pairs(read_groups(real_data / "relevance-mi" / "msmarco.jsonl"), builder)
    assert report.pairs >= 175 and report.skipped_misaligned <= 8
    assert all(same_layout(p.clean, p.corrupted) for p in pairs)


def test_attribution_on_the_real_model_keeps_its_forward_and_its_edges_add_up(smollm2, real_data):
    """On SmolLM2 itself (sdpa attention, as loaded): RelP's rules leave the logits bit for bit, one IG step is AtP,
    and with every edge kept the edge graph's run is the model's own."""
    from relscope.analysis.patching.atp import attribution_patching
    from relscope.analysis.patching.edges import EdgeGraph
    from relscope.analysis.patching.engine import PatchingEngine
    from relscope.analysis.patching.ig import integrated_gradients
    from relscope.analysis.patching.pairs import build_pairs
    from relscope.analysis.patching.relp import lrp_rules
    from relscope.analysis.patching.sites import Site
    from relscope.models.heads import build_head
    from relscope.prompts import PromptBuilder, get_template

    builder = PromptBuilder(smollm2.tokenizer, get_template("yes_no"), 256)
    pairs, _ = build_pairs(read_groups(real_data / "relevance-mi" / "msmarco.jsonl"), builder, 1)
    engine = PatchingEngine(smollm2.model, smollm2.spec, build_head("yes_no", smollm2.model, builder))
    pair = pairs[0]
    ids = engine.ids(pair.corrupted)
    plain = engine.logit_diffs(ids)
    with lrp_rules(engine.model, engine.spec):
        assert np.array_equal(engine.logit_diffs(ids), plain)
    sites = [Site("mlp", 0, "document"), Site("attn", 15, "last"), Site("resid_pre", 20, "all")]
    atp, ig = attribution_patching(engine, pair, sites), integrated_gradients(engine, pair, sites, steps=1)
    np.testing.assert_allclose(ig.patched, atp.patched, rtol=1e-4, atol=1e-5)
    graph = EdgeGraph(engine.model, engine.spec)
    kept = graph.writer_values(engine, ids)
    assert graph.run_with_edges(engine, ids, kept, graph.edges[None])[0] == pytest.approx(float(plain[0]), abs=1e-5)


def test_query_and_key_patches_on_the_real_model(smollm2, real_data):
    """On SmolLM2 itself (sdpa attention, grouped-query keys): the fast path equals the batched one and the naive
    one on query and key sites, and the patches move the judgment."""
    from relscope.analysis.patching.engine import PatchingEngine
    from relscope.analysis.patching.fast import FastPatcher
    from relscope.analysis.patching.pairs import build_pairs
    from relscope.analysis.patching.sites import Site
    from relscope.models.heads import build_head
    from relscope.prompts import PromptBuilder, get_template

    builder = PromptBuilder(smollm2.tokenizer, get_template("yes_no"), 256)
    pairs, _ = build_pairs(read_groups(real_data / "relevance-mi" / "msmarco.jsonl"), builder, 1)
    engine = PatchingEngine(smollm2.model, smollm2.spec, build_head("yes_no", smollm2.model, builder))
    assert engine.n_kv_heads < engine.n_heads
    sites = [Site("q", 20, "last", 3), Site("q", 5, "all", 0), Site("k", 10, "all", 1), Site("k", 25, "all", 2)]
    fast, batched = FastPatcher(engine).sweep(pairs[0], sites), engine.sweep(pairs[0], sites)
    np.testing.assert_allclose(fast.patched, batched.patched, atol=1e-4)
    np.testing.assert_allclose([engine.naive(pairs[0], s) for s in sites[2:]], batched.patched[2:], atol=1e-4)
    assert np.abs(batched.patched - batched.corrupted).max() > 1e-3


def test_atp_nearest_on_the_real_model(smollm2, real_data):
    """On SmolLM2 itself: a residual patch of the document is the clean run with the rest of the stream corrupted,
    and atp-nearest's estimates of the document's residual patches (every layer) miss the exact IEs by less than
    AtP's, which linearise over the whole document."""
    import torch

    from relscope.analysis.patching.atp import attribution_patching
    from relscope.analysis.patching.engine import PatchingEngine
    from relscope.analysis.patching.fast import FastPatcher, first_difference
    from relscope.analysis.patching.hooks import Edit
    from relscope.analysis.patching.nearest import nearest_end_patching
    from relscope.analysis.patching.pairs import build_pairs
    from relscope.analysis.patching.sites import Site
    from relscope.models.heads import build_head
    from relscope.prompts import PromptBuilder, get_template

    builder = PromptBuilder(smollm2.tokenizer, get_template("yes_no"), 256)
    pairs, _ = build_pairs(read_groups(real_data / "relevance-mi" / "msmarco.jsonl"), builder, 1)
    engine = PatchingEngine(smollm2.model, smollm2.spec, build_head("yes_no", smollm2.model, builder))
    pair = pairs[0]
    sites = [Site(c, layer, "document") for c in ("resid_pre", "resid_post") for layer in range(30)]
    exact = FastPatcher(engine).sweep(pair, sites)
    document = set(pair.corrupted.positions("document"))
    rest = torch.tensor([p for p in range(first_difference(pair), len(pair.corrupted)) if p not in document])
    key = sites[5].key
    corrupted = engine.activations(pair.corrupted, [key])[key]
    edit = {key: [Edit(0, rest, corrupted[rest])]}
    assert engine.logit_diffs(engine.ids(pair.clean), edit)[0] == pytest.approx(exact.patched[5], abs=1e-4)
    atp, nearest = attribution_patching(engine, pair, sites), nearest_end_patching(engine, pair, sites)
    miss = {name: np.abs(r.indirect_effects() - exact.indirect_effects()).mean() for name, r in
            (("atp", atp), ("atp-nearest", nearest))}
    assert miss["atp-nearest"] < miss["atp"], miss
