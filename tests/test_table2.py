"""Paper Table II: parameters and GFLOPs of the teachers and the MedDet student at 512 px.

Built with random weights (nothing downloaded). See docs/table2.md for the measured numbers
and the remaining GFLOPs gap of GFL-R50.
"""

import pytest

from meddet import paper
from meddet.benchmark import TABLE2_PAPER, count_gflops, count_params
from meddet.models import build_detector


def test_benchmark_reexports_the_papers_figures():
    assert TABLE2_PAPER is paper.TABLE2


@pytest.mark.parametrize("name", list(paper.TABLE2))
def test_table2_params_and_gflops(name):
    paper_params, paper_gflops = paper.TABLE2[name]
    model = build_detector(name)
    assert count_params(model) / 1e6 == pytest.approx(paper_params, rel=0.015)
    # Every counted op scales with the feature-map area and 512 / 128 keeps every level's
    # size an exact multiple, so GFLOPs(512) = 16 x GFLOPs(128): same number, 16x cheaper.
    gflops_512 = 16 * count_gflops(model, 128)
    assert gflops_512 == pytest.approx(paper_gflops, rel=0.05)
