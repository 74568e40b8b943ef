import os

import pytest
import torch

from ohem.config import load_config

os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would flood the test output

TINY = [
    "data.num_train=8",
    "data.num_test=4",
    "data.image_size=128",
    "model.min_size=128",
    "model.max_size=128",
    "model.rpn_pre_nms_top_n_train=300",
    "model.rpn_post_nms_top_n_train=100",
    "model.rpn_pre_nms_top_n_test=200",
    "model.rpn_post_nms_top_n_test=50",
    "sampler.batch_size_per_image=16",
    "solver.iterations=4",
    "solver.warmup_iterations=2",
    "solver.steps=[3]",
    "train.eval_every=0",
    "train.checkpoint_every=2",
    "train.vis_images=2",
    "train.device=cpu",
]


@pytest.fixture
def tiny_overrides():
    return list(TINY)


@pytest.fixture
def tiny_cfg():
    return load_config(None, TINY)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def builtin_methods() -> list[str]:
    """The built-in samplers' names (the registry may also hold a test module's own, registered at import)."""
    from ohem.mining.sampler import BUILTIN_PACKAGE, SAMPLERS, load_builtin_samplers

    load_builtin_samplers()
    return sorted(name for name, cls in SAMPLERS.items() if cls.__module__.startswith(BUILTIN_PACKAGE + "."))


@pytest.fixture(autouse=True)
def _samplers(request):
    # Each test sees the built-in samplers and those its own module registers, not another test module's;
    # what it registers itself (or a module it imports does) is gone after it.
    from ohem.mining.sampler import BUILTIN_PACKAGE, SAMPLERS, load_builtin_samplers

    load_builtin_samplers()
    saved = dict(SAMPLERS)
    for name, cls in saved.items():
        if not cls.__module__.startswith(BUILTIN_PACKAGE + ".") and cls.__module__ != request.module.__name__:
            del SAMPLERS[name]
    yield
    SAMPLERS.clear()
    SAMPLERS.update(saved)


@pytest.fixture(autouse=True)
def _threads():
    # A run with train.num_threads sets torch's thread count for the process; later tests (e.g. one
    # comparing a subprocess's run with an in-process one) must see the count they started with.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
