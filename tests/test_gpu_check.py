"""bench/gpu_check.py: the GPU check's orchestration (budgets, stops, independent parts, output
files), its figures (FLOP count, fraction of peak, the generated study space), the device bundle
(bench/gpu_bundle.py) and wrapper (bench/gpu_check.sh), and one whole ``--cpu-smoke`` run.

The bench/ scripts are not a package: this module puts bench/ on ``sys.path`` the way
``python bench/gpu_check.py`` does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
sys.path.insert(0, str(BENCH))

import gpu_bundle  # noqa: E402
import gpu_check  # noqa: E402
from gpu import loop, report, study, workload  # noqa: E402

from pptp.config import ModelConfig  # noqa: E402
from search.space import load_space  # noqa: E402


def python_part(tmp_path: Path, body: str) -> list[str]:
    """A stand-in part: a Python script given the result path as its first argument."""
    script = tmp_path / "part.py"
    script.write_text(textwrap.dedent(body))
    return [sys.executable, str(script)]


# ---------------------------------------------------------------------------------------------
# Orchestration


def test_a_part_over_its_budget_is_stopped_with_ctrl_c_and_keeps_its_figures(
    tmp_path: Path,
) -> None:
    cmd = python_part(
        tmp_path,
        """
        import json, sys, time
        path = sys.argv[1]
        json.dump({"first": 1}, open(path, "w"))
        try:
            time.sleep(60)
        except KeyboardInterrupt:
            json.dump({"first": 1, "interrupted": True}, open(path, "w"))
            sys.exit(130)
        """,
    )
    result = tmp_path / "r.json"
    t0 = time.perf_counter()
    part = gpu_check.run_command(
        [*cmd, str(result)], log=tmp_path / "log", result=result, budget_s=3
    )
    assert part.status == "timeout"
    assert part.figures == {"first": 1, "interrupted": True}  # SIGINT came first
    assert "budget of 3s" in part.reason
    assert time.perf_counter() - t0 < 3 + gpu_check.STOP_GRACE_S


def test_a_part_that_ignores_ctrl_c_is_killed_after_the_grace(tmp_path: Path) -> None:
    cmd = python_part(
        tmp_path,
        """
        import json, signal, subprocess, sys, time
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        json.dump({"child": child.pid}, open(sys.argv[1], "w"))
        time.sleep(60)
        """,
    )
    result = tmp_path / "r.json"
    t0 = time.perf_counter()
    part = gpu_check.run_command(
        [*cmd, str(result)], log=tmp_path / "log", result=result, budget_s=3, grace_s=1
    )
    assert part.status == "timeout"
    assert time.perf_counter() - t0 < 10
    child = part.figures["child"]  # the part's own child went with its process group
    deadline = time.time() + 5
    while _alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split(")")[-1].split()[0] != "Z"  # a zombie is gone
    except OSError:
        return False


def test_a_failing_part_does_not_stop_the_others_and_the_budget_is_shared(
    tmp_path: Path,
) -> None:
    scripts = {
        "peak": "import sys; sys.exit('no GPU today')",
        "throughput": "import json, sys; json.dump({'error': 'ValueError: bad'}, "
        "open(sys.argv[1], 'w')); sys.exit(1)",
        "fractional": "import json, sys, time; time.sleep(4); "
        "json.dump({'configs': {}}, open(sys.argv[1], 'w'))",
        "study": "print('never runs')",
    }

    def command(name: str, *, mode: str, result: Path, data_dir: str | None) -> list[str]:
        return [sys.executable, "-c", scripts[name], str(result)]

    seen: list[list[str]] = []
    parts = gpu_check.run_parts(
        list(scripts),
        mode="cpu-smoke",
        out=tmp_path,
        budgets={n: 60 for n in scripts},
        total_s=gpu_check.MIN_PART_S + 3,  # the first three start, then too little is left
        data_dir=None,
        command=command,
        on_part=lambda so_far: seen.append(list(so_far)),
    )
    assert seen == [list(scripts)[: i + 1] for i in range(4)]  # figures written after each
    assert parts["peak"].status == "failed"
    assert "no GPU today" in parts["peak"].reason  # the last line of its log
    assert parts["throughput"].reason == "ValueError: bad"  # the error it recorded
    assert parts["fractional"].status == "ok"
    assert parts["fractional"].figures == {"configs": {}}
    assert parts["study"].status == "not run"
    assert (tmp_path / "part-peak.log").exists()
    assert not list(tmp_path.glob(".part-*.json"))  # result files are read and removed


def test_without_cuda_the_full_check_refuses_and_points_at_the_smoke_mode(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(gpu_check, "_cuda_visible", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert "--cpu-smoke" in capsys.readouterr().err


def test_an_unknown_part_is_an_error_naming_the_known_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--parts", "peak,speed"])
    err = capsys.readouterr().err
    assert "'speed'" in err and "throughput" in err


def test_output_goes_to_out_when_the_device_tool_sets_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OUT", str(tmp_path / "device"))
    assert gpu_check.output_dir(None) == tmp_path / "device"
    assert gpu_check.output_dir(str(tmp_path / "x")) == tmp_path / "x"  # --out wins


# ---------------------------------------------------------------------------------------------
# Figures


def resnet18_training_flop(width: int, size: int = 32, classes: int = 10) -> float:
    """By hand: 2 FLOP per multiply-add of every convolution and the linear layer (CIFAR
    ResNet-18: 3x3 stem, stages of two basic blocks at w, 2w, 4w, 8w channels, 1x1 shortcuts
    where the shape changes); backward = twice forward, except the stem's input gradient."""

    def conv(c_in: int, c_out: int, k: int, hw: int) -> int:
        return 2 * c_in * c_out * k * k * hw * hw

    stem = conv(3, width, 3, size)
    forward = stem + 4 * conv(width, width, 3, size)
    c, hw = width, size
    for _ in range(3):
        c2, hw2 = 2 * c, hw // 2
        forward += conv(c, c2, 3, hw2) + conv(c, c2, 1, hw2) + 3 * conv(c2, c2, 3, hw2)
        c, hw = c2, hw2
    forward += 2 * c * classes
    return 3 * forward - stem


def test_the_flop_count_per_training_image_matches_the_architecture() -> None:
    pool = workload.synthetic_pool(8, device=torch.device("cpu"), n_test=4)
    counted = loop.training_flop_per_image(
        ModelConfig(name="resnet18", width=8, norm="group"), pool, torch.device("cpu")
    )
    assert counted == pytest.approx(resnet18_training_flop(8))
    # the standard width: ~0.56 GMAC forward, ~3.3 GFLOP to train (the figure the old
    # gpu_throughput.py assumed)
    assert resnet18_training_flop(64) == pytest.approx(3.3e9, rel=0.02)


def test_fraction_of_peak_and_trials_per_hour_ratio() -> None:
    part = report.Part
    parts = {
        "peak": part("ok", 1, 30, "", {"peak": {"tflops_median": 100.0}}),
        "throughput": part(
            "timeout",
            170,
            170,
            "stopped",
            {
                "flop_per_image": 3.3e9,
                "configs": {
                    "fp32": {"status": "ok", "steady_img_s": 10_000.0},
                    "compile": {"status": "running"},  # cut off: no row
                },
            },
        ),
        "fractional": part(
            "ok",
            1,
            1,
            "",
            {
                "configs": {
                    "single": {"trials_per_hour": 400.0},
                    "shared": {"trials_per_hour": 1000},
                }
            },
        ),
    }
    summary = report.summarise(parts)
    assert summary["throughput"] == [
        {"config": "fp32", "tflops": pytest.approx(33.0), "fraction_of_peak": pytest.approx(0.33)}
    ]
    assert summary["shared_over_single"] == pytest.approx(2.5)
    text = report.render(parts | {"study": part("not run", 0, 130, "no time", {})}, summary, [])
    assert "33.0%" in text and "2.50x" in text and "not run" in text


def test_the_peak_part_measures_a_correct_product(tmp_path: Path) -> None:
    rec = workload.Recorder(tmp_path / "peak.json")
    loop.peak(workload.SMOKE, rec)
    peak = json.loads((tmp_path / "peak.json").read_text())["peak"]
    assert peak["tflops_median"] > 0
    assert peak["rel_error_vs_fp32"] < 1e-5  # fp32 on the CPU
    assert peak["repeats"] == workload.SMOKE.peak_repeats


def test_a_failing_throughput_config_is_recorded_and_the_others_still_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real_train = loop.train

    def fp32_explodes(model: Any, pool: Any, members: Any, cfg: Any, **kwargs: Any) -> Any:
        if not cfg.bf16:
            raise RuntimeError("fp32 exploded")
        return real_train(model, pool, members, cfg, **kwargs)

    monkeypatch.setattr(loop, "train", fp32_explodes)
    tiny = dataclasses.replace(workload.SMOKE, images=16, batch_size=8, test_images=8)
    with pytest.raises(RuntimeError, match="fp32: RuntimeError: fp32 exploded"):
        loop.throughput(tiny, workload.Recorder(tmp_path / "t.json"))
    configs = json.loads((tmp_path / "t.json").read_text())["configs"]
    assert configs["fp32"] == {"status": "failed", "reason": "RuntimeError: fp32 exploded"}
    for name in ("bf16 + channels_last", loop.BARE_LOOP):
        assert configs[name]["status"] == "ok"
        assert len(configs[name]["epoch_seconds"]) == tiny.epochs
    assert configs["bf16 + channels_last + compile"]["status"] == "skipped"


@pytest.mark.parametrize("sizes", [workload.GPU, workload.SMOKE], ids=lambda s: s.mode)
def test_the_generated_study_space_is_valid(sizes: workload.Sizes, tmp_path: Path) -> None:
    data = study.study_data(sizes, data_dir=str(tmp_path))  # no CIFAR-10 there: digits
    space = study.study_space(sizes, data, bank_dir=tmp_path / "bank")
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    loaded = load_space(path)
    assert loaded.study.n_trials == sizes.study_trials
    assert loaded.study.resources.gpus == sizes.study_gpus
    cfg = loaded.trial_config({})
    assert (cfg.data.name, cfg.data.image_size) == ("digits", sizes.study_image_size)
    assert (cfg.model.name, cfg.attack.n_references) == ("resnet18", sizes.study_references)


# ---------------------------------------------------------------------------------------------
# The device bundle and wrapper


def test_the_bundle_carries_the_orchestrators_and_leaves_torch_to_the_image() -> None:
    carried = gpu_bundle.to_carry(gpu_bundle.runtime_closure())
    for name in ("ray", "optuna", "mlflow", "opacus", "pydantic", "pydantic-core"):
        assert name in carried
    for name in ("torch", "torchvision", "numpy", "scikit-learn", "nvidia-cublas"):
        assert name not in carried
    assert "pptp-search" not in carried


def test_unpacking_a_wheel_keeps_executables_and_merges_its_data_folders(tmp_path: Path) -> None:
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("demo/__init__.py", "X = 1\n")
        exe = zipfile.ZipInfo("demo/bin/server")
        exe.external_attr = 0o755 << 16
        z.writestr(exe, "#!/bin/sh\n")
        z.writestr("demo-1.0.data/purelib/demo_extra.py", "Y = 2\n")
    site = tmp_path / "site"
    gpu_bundle.unpack([wheel], site)
    assert (site / "demo_extra.py").read_text() == "Y = 2\n"
    assert os.access(site / "demo" / "bin" / "server", os.X_OK)
    assert not list(site.glob("*.data"))


def test_the_wrapper_unpacks_the_bundle_and_runs_the_check(tmp_path: Path) -> None:
    site_src = tmp_path / "src"
    site_src.mkdir()
    (site_src / "gpu_check_marker.py").write_text("")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    (site_src / "gpu_site.txt").write_text(f"python {version}\n")
    archive = tmp_path / "bundle" / "gpu_site.tar.xz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:xz") as t:
        t.add(site_src, arcname=".")
    (archive.parent / "gpu_site.txt").write_text(f"python {version}\n")
    env = dict(
        os.environ,
        PYTHON=sys.executable,
        GPU_CHECK_ARCHIVE=str(archive),
        GPU_CHECK_SITE=str(tmp_path / "site"),
    )
    cmd = ["bash", str(BENCH / "gpu_check.sh"), "--cpu-smoke", "--parts", "peak"]
    done = subprocess.run(
        [*cmd, "--out", str(tmp_path / "out")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "gpu_check_marker.py").exists()
    assert "unpacked" in done.stdout and "packages: torch" in done.stdout
    figures = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert figures["parts"]["peak"]["status"] == "ok"
    # a bundle for another Python stops at once, saying how to rebuild it
    (archive.parent / "gpu_site.txt").write_text("python 2.7\n")
    env["GPU_CHECK_SITE"] = str(tmp_path / "site2")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert "--python-version" in done.stderr


# ---------------------------------------------------------------------------------------------
# The whole check, on the CPU


@pytest.mark.slow
def test_cpu_smoke_runs_every_part(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(BENCH / "gpu_check.py"), "--cpu-smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    figures = json.loads((out / "gpu_check.json").read_text())
    parts = figures["parts"]
    assert done.returncode == 0, {n: (p["status"], p["reason"]) for n, p in parts.items()}
    assert list(parts) == ["peak", "throughput", "fractional", "study"]
    configs = parts["throughput"]["figures"]["configs"]
    assert configs["fp32"]["steady_img_s"] > 0
    assert configs["bf16 + channels_last"]["bf16_active"] is False  # CPU: autocast is off
    compiled = configs["bf16 + channels_last + compile"]
    assert compiled["status"] == "skipped" and "CUDA only" in compiled["reason"]
    fractional = parts["fractional"]["figures"]["configs"]
    assert [c["trials_ok"] for c in fractional.values()] == [
        workload.SMOKE.single_trials,
        workload.SMOKE.shared_trials,
    ]
    assert all(c["trials_per_hour"] > 0 for c in fractional.values())
    assert parts["study"]["figures"]["exit_code"] == 0
    assert parts["study"]["figures"]["pareto_size"] >= 1
    assert figures["summary"]["shared_over_single"] > 0
    text = (out / "gpu_check.txt").read_text()
    for heading in ("peak:", "throughput:", "fractional:", "study:"):
        assert heading in text
    assert text.strip() in done.stdout  # the tables are printed last, for the device tool
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        ["gpu_check.json", "gpu_check.txt"] + [f"part-{n}.log" for n in parts]
    )  # 6 files: the device tool returns at most 8
