"""A new user finds what there is: ``ffaccel devices`` from the driver registry, ``--json`` on stdout
(and only JSON there) for ``info``, ``devices``, ``conformance`` and ``report``, and every CLI error
with its code (issue 23)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import ffaccel
import ffaccel.drivers as drivers
from ffaccel.cli.errors import Exit
from ffaccel.cli.main import main


def _catalog_names(catalog: list[dict]) -> list[str]:
    return [f["name"] for e in catalog for f in e["forms"]]


def test_devices_json_lists_every_registered_driver_and_the_server_forms(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devices", "--json"]) == Exit.OK
    doc = json.loads(capsys.readouterr().out)
    by_driver = {e["driver"]: e for e in doc["devices"]}
    assert set(drivers.driver_targets()) <= set(by_driver)  # every installed driver, from the registry
    names = _catalog_names(doc["devices"])
    for form in ("cpu", "cpu:N", "ref", "torch:cpu", "torch:cuda", "dask://HOST:PORT", "unix:PATH"):
        assert form in names, form
    assert by_driver["torch"]["requires"] == "torch" and "ffaccel[torch]" in by_driver["torch"]["install"]
    assert by_driver["dask"]["requires"] == "distributed"
    assert by_driver["cpu"]["requires"] is None and by_driver["cpu"]["installed"]
    assert by_driver[None]["requires"] == "ffaccel serve"


def test_devices_table_names_the_forms_and_what_they_need(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devices"]) == Exit.OK
    out = capsys.readouterr().out
    for text in ("cpu:N", "torch:cuda", "dask://HOST:PORT", "unix:PATH", "ffaccel serve"):
        assert text in out, text


def test_a_missing_optional_package_is_listed_with_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(drivers, "_available", lambda target: target != drivers._BUILTIN["torch"])
    entry = {e["driver"]: e for e in ffaccel.device_catalog()}["torch"]
    assert not entry["installed"] and entry["install"] == "pip install 'ffaccel[torch]'"
    assert "torch" not in drivers.driver_targets()


@pytest.mark.parametrize("driver,name,hint", [("torch", "torch:cpu", "pip install 'ffaccel[torch]'"),
                                               ("dask", "dask://127.0.0.1:8786", "pip install 'ffaccel[dask]'")])
def test_opening_a_driver_whose_extra_is_missing_says_how_to_install_it(
        driver: str, name: str, hint: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Without the extra, ``ffaccel.open("torch:cpu")`` said only that the name is not one of
    cpu, npu, ref, restricted, although ``ffaccel devices`` knows what it needs."""
    monkeypatch.setattr(drivers, "_available", lambda target: target != drivers._BUILTIN[driver])
    with pytest.raises(ffaccel.FFAccelError) as e:
        ffaccel.open(name)
    assert e.value.param == "name" and hint in str(e.value)
    assert main(["serve", "--driver", name]) == Exit.USAGE
    assert hint in capsys.readouterr().err


def test_a_plug_in_driver_is_listed_with_the_forms_its_class_names(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_npu_plugin.py").write_text(
        "from ffaccel.drivers.ref import RefDriver\n"
        "class Mine(RefDriver):\n"
        "    name = 'mine'\n"
        "    device_forms = (('mine', 'the first card'), ('mine:N', 'card N'))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(drivers, "_installed", lambda: (("mine", "my_npu_plugin:Mine"),))
    entry = {e["driver"]: e for e in ffaccel.device_catalog()}["mine"]
    assert [(f["name"], f["meaning"]) for f in entry["forms"]] == [("mine", "the first card"), ("mine:N", "card N")]
    assert entry["installed"] and entry["requires"] is None
    assert "mine" in ffaccel.devices()


def test_info_json_is_one_object_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "ref", "--json"]) == Exit.OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["device"] == "ref" and doc["driver"]["name"] == "ref" and "f32xf32->f32->f32" in doc["gemm_combos"]


def test_conformance_json_goes_to_stdout_and_the_tables_to_stderr(capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import ffaccel.conformance as conformance

    # The real suite on a few of its units: where --json puts what is the point here; the whole quick
    # level passing on ref, through the CLI too, is test_conformance.py's.
    real = conformance.check_device
    monkeypatch.setattr(conformance, "check_device", lambda *a, **kw: real(*a, only=("COPY",), **kw))
    assert main(["conformance", "ref", "--json"]) == Exit.OK
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["device"] == "ref" and doc["passed"] is True and doc["cases"] == len(doc["results"]) > 0
    assert "PASS" in captured.err


def test_report_json_prints_results_json_as_written(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import ffaccel.report as rep

    results = {"conformance": [{"device": "cpu", "passed": True}], "seconds": 1.0, "figure": 2.5}

    def fake_write(res: dict, out: Path) -> dict[str, Path]:  # the report's own writer is tested with it
        (out / "results.json").write_text(json.dumps(res, indent=1))
        (out / "report.html").write_text("<html></html>")
        return {"json": out / "results.json", "html": out / "report.html"}

    monkeypatch.setattr(rep, "run_report", lambda cfg, log=None: results)
    monkeypatch.setattr(rep, "write_outputs", fake_write)
    import ffaccel.report.terminal as terminal

    monkeypatch.setattr(terminal, "print_summary", lambda res, console: console.print("tables"))
    assert main(["report", "--quick", "--out", str(tmp_path / "r"), "--json"]) == Exit.OK
    captured = capsys.readouterr()
    assert json.loads(captured.out) == results
    assert captured.out.strip() == (tmp_path / "r" / "results.json").read_text().strip()
    assert "tables" in captured.err and "tables" not in captured.out


def test_build_c_into_an_unusable_folder_is_one_line_with_its_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build-c", "--out", "/proc/ffaccel-cannot-be-here"]) == Exit.USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[INVALID_PARAMETER] --out:" in err and "Traceback" not in err


def test_stats_json_of_an_in_process_device(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "ref", "--json"]) == Exit.OK
    doc = json.loads(capsys.readouterr().out)
    assert (doc["gemm_commands"], doc["gemm_flops"], doc["clients"][0]["transport"]) == (0, 0, "inproc")


def test_listing_devices_imports_no_optional_package() -> None:
    import subprocess

    code = ("import sys, ffaccel; ffaccel.device_catalog(); "
            "assert not {'torch', 'distributed'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_import_ffaccel_torch_without_pytorch_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """It failed deep inside the offload package ("No module named 'torch'" from accounting.py)."""
    import importlib
    import importlib.util
    import sys

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    monkeypatch.delitem(sys.modules, "ffaccel.torch", raising=False)
    with pytest.raises(ModuleNotFoundError) as e:
        importlib.import_module("ffaccel.torch")
    assert e.value.name == "torch" and "pip install 'ffaccel[torch]'" in str(e.value)
