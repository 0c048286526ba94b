"""`dvc plots show` renders offline: the project's HTML template inlines Vega, Vega-Lite and Vega-Embed."""

import json
import re
import subprocess

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


def test_dvc_plots_show_writes_a_page_that_needs_no_network(tmp_path):
    import vl_convert

    from slothline.offline_plots import TEMPLATE, VEGA_LITE, offline_page

    assert (ROOT / TEMPLATE).read_text() == offline_page()  # the committed template is what the command writes
    done = subprocess.run(["dvc", "plots", "show", "-o", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "index.html").read_text()
    assert not re.findall(r"<script[^>]*\bsrc=", page) and "cdn.jsdelivr" not in page
    assert "window.vegaEmbed=" in page  # the inlined library defines what each plot calls
    # the base model's answers hold control characters, which vl-convert's SVG text cannot take (a browser can)
    printable = lambda key, value: re.sub(r"[\x00-\x08\x0b-\x1f]", " ", value) if isinstance(value, str) else value
    specs = [json.loads(spec, object_pairs_hook=lambda pairs: {k: printable(k, v) for k, v in pairs})
             for spec in re.findall(r"var spec = (\{.*?\});\s*vegaEmbed", page, re.S)]
    specs = [spec for spec in specs if spec]  # a causal LM's confusion plot has no data: DVC writes an empty spec
    assert len(specs) >= 2  # the loss curves and the samples table, at least
    for spec in specs:  # each renders with the inlined Vega-Lite version, offline
        assert vl_convert.vegalite_to_svg(spec, vl_version=VEGA_LITE).startswith("<svg")
