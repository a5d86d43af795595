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


_OPTIONAL = ("flax", "orbax", "matplotlib", "tqdm", "yaml", "PIL")

_CORE_CHECK = textwrap.dedent(f"""
    import importlib.abc
    import sys

    class Missing(importlib.abc.MetaPathFinder):  # the optional packages are not installed
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in {_OPTIONAL!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

    sys.meta_path.insert(0, Missing())

    import jax
    import jax.numpy as jnp

    import flowopt
    from flowopt import analysis

    loss = lambda w: jnp.sum(w ** 2)
    params = jnp.ones(3)
    for name, entry in flowopt.registry.OPTIMIZERS.items():
        tx = entry.build()
        params_ = entry.params_layout.wrap(params)
        point = entry.params_layout.gradient_point(params_)
        tx.update(jax.grad(loss)(point), tx.init(params_), params_, value_fn=loss)
    assert analysis.stability_interval("rk4") > 2.78
    for name, extra in (("TrainState", "flax"), ("step_oracle", "flax"), ("training", "training")):
        try:
            getattr(flowopt, name)
        except ModuleNotFoundError as error:
            assert f"pip install 'flowopt[{{extra}}]'" in str(error), error
        else:
            raise AssertionError(f"flowopt.{{name}} did not say which extra it needs")
""")


def test_the_core_needs_only_jax_optax_chex_numpy_and_scipy():
    """Every optimizer and the analysis tools run without flax, orbax, matplotlib, tqdm, pyyaml or pillow;
    the Flax tools and the training stack name the extra to install."""
    result = subprocess.run([sys.executable, "-c", _CORE_CHECK], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
