"""demo.ipynb runs top to bottom in quick mode and shows its tables and the Pareto frontier.

The notebook is executed once per session, as a copy with ``QUICK = True`` injected after its
``parameters`` cell (papermill's convention) and with a temporary working directory; the copy in
the repository is never written. ``python -m tests._notebook`` refreshes the stored outputs.
"""

import sys
import time

import pytest

from tests import _notebook

pytestmark = pytest.mark.timeout(900)

#: printed by a cell appended to the executed copy: the kernel's interpreter
EXECUTABLE_MARK = "kernel executable: "


def _outputs(cells, output_type=None):
    for cell in cells:
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            if output_type is None or output.output_type in output_type:
                yield output


def _data(cells, mime):
    """Every ``mime`` payload of the display outputs of ``cells``."""
    for output in _outputs(cells, ("display_data", "execute_result")):
        if mime in output.get("data", {}):
            yield output["data"][mime]


def _section(nb, title):
    """The cells from the ``## ...`` heading containing ``title`` to the next ``## `` heading."""
    headings = [
        i for i, cell in enumerate(nb.cells) if cell.cell_type == "markdown" and cell.source.lstrip().startswith("## ")
    ]
    starts = [i for i in headings if title in nb.cells[i].source.splitlines()[0]]
    assert len(starts) == 1, f"expected one section heading containing {title!r}, found {len(starts)}"
    start = starts[0]
    end = next((i for i in headings if i > start), len(nb.cells))
    return nb.cells[start + 1 : end]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    stored = _notebook.NOTEBOOK.read_bytes()
    nb = _notebook.inject_parameters(_notebook.read(), QUICK=True)
    nb.cells.append(_notebook.nbformat.v4.new_code_cell(f"import sys\nprint({EXECUTABLE_MARK!r} + sys.executable)"))
    start = time.perf_counter()
    _notebook.execute(nb, tmp_path_factory.mktemp("notebook"))
    seconds = time.perf_counter() - start
    print(f"demo.ipynb executed in {seconds:.1f} s")
    assert _notebook.NOTEBOOK.read_bytes() == stored, "executing the notebook must not rewrite the repository's copy"
    return nb


def test_parameters_cell_is_the_first_code_cell_and_sets_quick():
    nb = _notebook.read()
    first_code = next(i for i, cell in enumerate(nb.cells) if cell.cell_type == "code")
    assert _notebook.parameters_index(nb) == first_code
    assert "QUICK = True" in nb.cells[first_code].source
    assert not any(_notebook.INJECTED_TAG in _notebook.tags(cell) for cell in nb.cells)
    assert "QUICK = False" in "".join(cell.source for cell in nb.cells if cell.cell_type == "markdown")


def test_injected_parameters_follow_the_parameters_cell():
    nb = _notebook.inject_parameters(_notebook.inject_parameters(_notebook.read(), QUICK=False), QUICK=True)
    injected = [i for i, cell in enumerate(nb.cells) if _notebook.INJECTED_TAG in _notebook.tags(cell)]
    assert injected == [_notebook.parameters_index(nb) + 1]
    assert "QUICK = True" in nb.cells[injected[0]].source


def test_every_cell_runs_without_error_in_this_interpreter(executed):
    errors = [f"{o.ename}: {o.evalue}" for o in _outputs(executed.cells, ("error",))]
    assert errors == []
    assert all(cell.execution_count for cell in executed.cells if cell.cell_type == "code")
    stderr = [o.text for o in _outputs(executed.cells, ("stream",)) if o.name == "stderr"]
    assert stderr == [], "warnings or logs leak into the outputs"
    printed = "".join(o.text for o in _outputs(executed.cells[-1:], ("stream",)))
    assert printed.strip() == EXECUTABLE_MARK + sys.executable


def test_audit_shows_per_group_and_intersectional_tables(executed):
    tables = list(_data(_section(executed, "Audit"), "text/html"))
    per_group = [t for t in tables if "selection_rate" in t and "true_positive_rate" in t]
    assert any("sex=Female" in t and "sex=Male" in t for t in per_group)
    assert any("sex=Female&amp;race=Black" in t for t in per_group), "no sex x race table"
    assert any("flagged" in t and "ece" in t for t in tables), "no multicalibration audit"
    assert any("dp_difference" in t and "eo_difference" in t for t in tables)


def test_lagrangian_section_shows_its_multipliers(executed):
    tables = list(_data(_section(executed, "Lagrangian"), "text/html"))
    assert any("multiplier" in t and "violation_hard" in t and "sex=Female-sex=Male" in t for t in tables)


def test_calibration_section_shows_ece_tables_and_reliability_plots(executed):
    cells = _section(executed, "calibration")
    tables = list(_data(cells, "text/html"))
    assert any("before" in t and "after" in t and "sex=Female" in t for t in tables)
    assert list(_data(cells, "image/png")), "no reliability diagram"  # before and after, side by side


def test_pareto_section_shows_the_frontier_plot_and_the_summary(executed):
    cells = _section(executed, "Pareto")
    assert list(_data(cells, "image/png")), "no inline figure in the Pareto section"
    tables = list(_data(cells, "text/html"))
    assert any("is_pareto" in t for t in tables)
    summary = tables[-1]
    for method in ("ERM", "penalty", "Lagrangian", "adversarial", "reductions"):
        assert method in summary
    for column in ("accuracy", "dp_difference", "eo_difference"):
        assert column in summary


def test_stored_notebook_has_outputs_of_a_clean_quick_run():
    nb = _notebook.read()
    assert not list(_outputs(nb.cells, ("error",)))
    assert all(cell.execution_count for cell in nb.cells if cell.cell_type == "code"), "store the notebook executed"
    assert list(_data(_section(nb, "Pareto"), "image/png")), "the stored notebook lacks the frontier plot"
    assert any("selection_rate" in t for t in _data(_section(nb, "Audit"), "text/html"))
