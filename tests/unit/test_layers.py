"""The layering contract of pyproject.toml ([tool.importlinter]): it holds on relscope's imports, and it would break on
each of the edges a review once found (upward, circular, or only inside a function)."""

from __future__ import annotations

from pathlib import Path

import grimp
import pytest
from importlinter import api
from importlinter.contracts.acyclic_siblings import AcyclicSiblingsContract
from importlinter.contracts.layers import LayersContract

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
CONTRACT_TYPES = {"layers": LayersContract, "acyclic_siblings": AcyclicSiblingsContract}


@pytest.fixture(scope="module")
def configuration() -> dict:
    return api.read_configuration(str(PYPROJECT))


def _graph() -> grimp.ImportGraph:
    return grimp.build_graph("relscope", cache_dir=None)  # every import statement, inside functions too


def _broken(configuration: dict, graph: grimp.ImportGraph) -> list[str]:
    """The names of the contracts `graph` breaks."""
    broken = []
    for options in configuration["contracts_options"]:
        kind = CONTRACT_TYPES[options["type"]]
        contract = kind(name=options["name"], session_options=configuration["session_options"],
                        contract_options=options)
        if not contract.check(graph, verbose=False).kept:
            broken.append(options["name"])
    return broken


def test_relscope_keeps_its_layers_and_has_no_cycles(configuration):
    assert [o["type"] for o in configuration["contracts_options"]] == ["layers", "acyclic_siblings"]
    assert _broken(configuration, _graph()) == []


def test_imports_inside_functions_are_part_of_the_graph():
    # the CLI imports the rerank job only inside its handler (so that --help needs no torch): the graph still has it
    source = Path(__file__).resolve().parents[2] / "src/relscope/cli/runs.py"
    assert "\nfrom relscope.evaluation.job" not in source.read_text()
    assert _graph().direct_import_exists(importer="relscope.cli.runs", imported="relscope.evaluation.job")


# Each edge the re-layering removed (issue 17), and the kinds of edge the contract exists to stop.
FORBIDDEN = [
    ("relscope.evaluation.job", "relscope.training.checkpoint"),  # evaluation reads checkpoints through models/
    ("relscope.analysis.anatomy", "relscope.study.report"),  # analysis upward into the study's report
    ("relscope.reports.tables", "relscope.analysis.compare"),  # leaf helpers upward into analysis
    ("relscope.models.scoring", "relscope.training.objectives"),  # models upward into training
    ("relscope.data.dev", "relscope.models.lora"),  # data upward into models
    ("relscope.measures", "relscope.config"),  # config <-> measures was a cycle
    ("relscope.analysis.patching.sites", "relscope.analysis.patching.engine"),  # engine -> sites -> engine
    ("relscope.analysis.patching.scores", "relscope.analysis.patching.engine"),  # engine <-> scores was a cycle
    ("relscope.analysis.probe", "relscope.cli"),  # nothing imports the CLI
]


@pytest.mark.parametrize("importer, imported", FORBIDDEN, ids=[f"{a}->{b}" for a, b in FORBIDDEN])
def test_the_contract_breaks_on_an_upward_or_circular_import(configuration, importer, imported):
    graph = _graph()
    graph.add_import(importer=importer, imported=imported, line_number=1, line_contents=f"import {imported}")
    assert _broken(configuration, graph), f"{importer} -> {imported} should break a contract"


def test_a_downward_import_keeps_the_contract(configuration):  # the control: the test above is not vacuous
    graph = _graph()
    graph.add_import(importer="relscope.analysis.probe", imported="relscope.data.trec", line_number=1,
                     line_contents="import relscope.data.trec")
    assert _broken(configuration, graph) == []
