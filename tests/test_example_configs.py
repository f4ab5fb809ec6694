"""Every shipped experiment config parses (a broken example is a user's first error)."""

import pytest

from cactus_keras.experiments import example_config, load_config
from cactus_keras.experiments.examples import example_names


@pytest.mark.parametrize("name", example_names())
def test_shipped_config_parses(name):
    config = load_config(example_config(name))
    assert config.methods, f"{name} has no [methods.*] table"
    assert config.seeds >= 1


def test_recommended_set_is_shared_by_the_main_job_and_the_comparison():
    # The README's main job claims to train the recommended configuration of
    # fashion_mnist_cpu.toml: the two must not drift apart.
    comparison = load_config(example_config("fashion_mnist_cpu")).methods["cactus"].spec()
    quickstart = load_config(example_config("quickstart")).methods["cactus"].spec()
    keys = ("compression", "member_weight", "member_weight_ramp", "member_batch_fraction")
    assert ({k: comparison["training"][k] for k in keys}
            == {k: quickstart["training"][k] for k in keys})
