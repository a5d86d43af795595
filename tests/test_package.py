"""The package itself: what ``import flowopt`` loads and which submodules it reaches."""

import subprocess
import sys
import textwrap

_IMPORT_CHECK = textwrap.dedent("""
    import sys

    import flowopt

    loaded = [m for m in sys.modules if m.startswith(("orbax", "matplotlib", "flowopt.training"))]
    assert not loaded, f"import flowopt loaded {loaded}"
    assert {"training", "analysis"} <= set(dir(flowopt)) and "importlib" not in dir(flowopt)
    assert callable(flowopt.training.train) and callable(flowopt.analysis.gradient_flow)
    assert "orbax.checkpoint" in sys.modules
    try:
        flowopt.trainin
    except AttributeError as error:
        assert "no attribute 'trainin'" in str(error), error
    else:
        raise AssertionError("flowopt.trainin did not raise AttributeError")
""")


def test_flowopt_training_is_an_attribute_imported_on_first_use():
    result = subprocess.run([sys.executable, "-c", _IMPORT_CHECK], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
