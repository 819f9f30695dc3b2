"""Fixtures shared by the test modules, and an opt-in seeded shuffle of the test order.

``--shuffle=SEED`` (an integer, or ``random`` to draw one; it is printed in the header) runs the
collected tests in a random order: CI runs the dask tests once that way (``.ci/run``), which
proves they depend on no order.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest
from server_util import ServerProcess  # tests/ is on pytest's pythonpath (pyproject.toml)

# The cpu driver's kernel table on its defaults in this process and every process it starts: no
# test measures the machine at first use unless it asks to, and a test that reads the table
# reads the same one on every CPU (tests/test_cpu_kernels.py measures on purpose).
os.environ.setdefault("FFACCEL_CPU_TUNED", "0")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--shuffle", metavar="SEED", default=None,
                     help="run the tests in an order shuffled with SEED (an integer, or 'random')")


def pytest_configure(config: pytest.Config) -> None:
    seed = config.getoption("--shuffle")
    if seed == "random":
        seed = random.SystemRandom().randrange(2**32)
    if seed is not None:
        try:
            config._ffaccel_shuffle_seed = int(seed)  # type: ignore[attr-defined]
        except ValueError:
            raise pytest.UsageError(f"--shuffle takes an integer or 'random'; got {seed!r}") from None


def pytest_report_header(config: pytest.Config) -> str | None:
    seed = getattr(config, "_ffaccel_shuffle_seed", None)
    return None if seed is None else f"test order shuffled: --shuffle={seed} repeats it"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    seed = getattr(config, "_ffaccel_shuffle_seed", None)
    if seed is not None:  # also under -q, where the header is not shown
        terminalreporter.write_line(f"test order shuffled with --shuffle={seed}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    seed = getattr(config, "_ffaccel_shuffle_seed", None)
    if seed is not None:
        random.Random(seed).shuffle(items)


# -- the device server --------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_args() -> tuple[str, ...]:
    """``ffaccel serve`` options of the module's ``server``; a module overrides this fixture to change them."""
    return ()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, server_args: tuple[str, ...]) -> Iterator[ServerProcess]:
    """One ``ffaccel serve`` per test module, stopped when the module is done."""
    srv = ServerProcess(tmp_path_factory.mktemp("server"), *server_args)
    yield srv
    srv.stop()



@pytest.fixture(autouse=True)
def _pytorchs_own_kernels_after_each_test() -> Iterator[None]:
    """Each test leaves PyTorch as it found it: an offload session keeps its dispatcher kernels
    registered after it exits (until ``dispatcher.release()``: removing them races with other
    threads' dispatch), and every later test's ``torch.mm`` would go through them (~5 µs each,
    PyTorch's result). Released here, after the test's threads are done; torch is not imported
    for tests that never loaded the offload front-end."""
    yield
    import sys

    dispatcher = sys.modules.get("ffaccel.frontends.torch_offload.dispatcher")
    if dispatcher is not None and dispatcher.registered():
        dispatcher.release()
