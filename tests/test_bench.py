"""The benchmarks run end to end (tiny models on the CPU; the figures come from the GPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_bench(tmp_path, script: str, *args: str, name: str, folder: Path | None = None) -> dict:
    """``script`` run from ``tmp_path`` with ``args`` and ``--name name``: it must succeed; its result's metrics (read
    from ``folder``, by default ``tmp_path / "results"``)."""
    repo = Path.cwd()
    out = subprocess.run(
        [sys.executable, str(repo / script), *args, "--name", name],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(repo)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(((folder or tmp_path / "results") / f"{name}.json").read_text())["metrics"]


@pytest.mark.parametrize("script", ["bench/token_ar.py", "bench/var.py"])
def test_bench_runs_and_writes_its_result(script, tmp_path):
    modes = ["--modes", "default", "eager"] if "token" in script else ["--train-modes", "eager", "--sample-modes", "eager",
                                                             "--families", "var", "nfig"]  # fmt: skip
    m = run_bench(tmp_path, script, "--tiny", "--sample-batches", "2", "--train-batches", "4", *modes, name="b")
    assert m["train_eager_b4_tokens_per_s"] > 0 and any(k.startswith("sample_") and v > 0 for k, v in m.items())
    if "token" in script:  # the defaults as a user's 10k-image job runs them: compile="auto" stays off on a CPU
        assert m["sample_default_b2_with_decode_images_per_s"] > 0 and m["sample_default_b2_with_decode_compiled"] == 0
    if "var" in script:  # NFIG beside VAR in the same run
        assert m["nfig_train_eager_b4_tokens_per_s"] > 0 and m["nfig_tokens_per_image"] < m["tokens_per_image"]


@pytest.mark.parametrize(
    "script,probe", [("bench/token_ar.py", ["default", "2"]), ("bench/var.py", ["var", "default", "2"])]
)
def test_bench_probe_times_a_first_batch_and_its_parts(script, probe, tmp_path):
    """``--cold`` runs this probe in a fresh process per compiled mode and batch size: the first batch, split into
    drawing the tokens and (VAR) decoding them, and Dynamo's share."""
    repo = Path.cwd()
    out = subprocess.run(
        [sys.executable, str(repo / script), "--tiny", "--probe", *probe],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(repo)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["first_batch_s"] > 0 and r["tokens_s"] > 0
    assert ("decode_s" in r) == ("var" in script)
    assert r["tokens_s"] + r.get("decode_s", 0) == pytest.approx(r["first_batch_s"], rel=1e-6)
    assert r["graphs"] == 0 and r["compile_s"] == 0  # the CPU's default (compile="auto") runs eagerly


def test_profile_prints_the_split_and_the_top_operators(tmp_path):
    repo = Path.cwd()
    out = subprocess.run(
        [sys.executable, str(repo / "bench/profile_sampling.py"), "--family", "var", "--tiny", "--batch", "2", "--rows", "5"],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(repo)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "tokens_seconds_per_batch" in out.stdout and "decode_seconds_per_batch" in out.stdout
    assert "Name" in out.stdout and "aten::" in out.stdout and "kernels_per_token" in out.stdout


def test_decode_bench_measures_each_layout(tmp_path):
    modes = ("nchw", "nhwc_heuristic", "nhwc", "nhwc_native_gn")
    m = run_bench(tmp_path, "bench/decode.py", "--tiny", "--batch", "2", "--modes", *modes, "--repeats", "1", name="d")
    assert all(m[f"{mode}_images_per_s"] > 0 and m[f"{mode}_first_batch_s"] > 0 for mode in modes)


def test_bench_results_go_where_visgen_results_says(tmp_path, monkeypatch):
    """The GPU scripts' dry runs set ``VISGEN_RESULTS`` (from their ``RESULTS``): a bench's result goes there, not
    over the project's ``results/``."""
    monkeypatch.setenv("VISGEN_RESULTS", str(tmp_path / "dry"))
    run_bench(tmp_path, "bench/decode.py", "--tiny", "--batch", "2", "--modes", "nchw", "--repeats", "1", name="d",
              folder=tmp_path / "dry")  # fmt: skip
    assert not (tmp_path / "results").exists()


def test_attention_bench_times_each_variant(tmp_path):
    m = run_bench(
        tmp_path, "bench/attention.py", "--tiny", "--batches", "2", "--kv-lens", "40", "--iters", "1", name="a"
    )
    assert m["b2_kv40_matmul_us"] > 0 and m["b2_kv40_sdpa_flash_exact_us"] > 0


def test_diffusion_ar_and_trainer_benches_run(tmp_path):
    repo = Path.cwd()
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    for script, args in (("bench/diffusion_ar.py", ["--sample-batches", "2", "--train-batches", "2", "--head-steps", "0", "2",
                                                    "--name", "d"]),
                         ("bench/trainer.py", ["--train-batches", "4", "--sizes", "cifar", "--modes", "eager",
                                               "--seconds", "0.5", "--profile", "prof", "--name", "t"]),
                         ("bench/parallel.py", ["--sample-batches", "2", "--kinds", "token", "--name", "p"]),
                         ("bench/jacobi_passes.py", ["--checkpoint", str(repo / "visgen/assets/cifar10-token-ar"),
                                                     "--gammas", "2", "--num-images", "4", "--batch-size", "4",
                                                     "--name", "j"])):  # fmt: skip
        out = subprocess.run([sys.executable, str(repo / script), "--tiny", *args], cwd=tmp_path, capture_output=True,
                             text=True, env=env)  # fmt: skip
        assert out.returncode == 0, out.stderr
    d = json.loads((tmp_path / "results" / "d.json").read_text())["metrics"]
    assert d["sample_unit1_b2_images_per_s"] > 0 and d["sample_unit4_b2_images_per_s"] > 0
    assert d["sample_hs2_unit1_b2_images_per_s"] > 0
    assert d["train_b2_tokens_per_s"] > 0
    t = json.loads((tmp_path / "results" / "t.json").read_text())["metrics"]
    assert 0 < t["trainer_over_bare_cifar_b4"] and t["trainer_best_mode_cifar_b4"] == "eager"
    assert t["trainer_eager_cifar_b4_steps"] >= 1 and t["trainer_eager_cifar_b4_kernels_per_step"] > 0
    assert "Name" in (tmp_path / "prof" / "profile-trainer.txt").read_text()
    j = json.loads((tmp_path / "results" / "j.json").read_text())["metrics"]
    assert 1 <= j["tokens_per_pass_g2_above"] <= 3 and 1 <= j["tokens_per_pass_g2_uniform"] <= 3
    p = json.loads((tmp_path / "results" / "p.json").read_text())["metrics"]
    assert p["par4_token_steps"] == 19 and p["par8_token_steps"] == 15 and p["speedup_par_token_b2"] > 0
    out = subprocess.run([sys.executable, str(repo / "bench/cpu_threads.py"), "--busy", "0", "--num-images", "2",
                          "--name", "c"], cwd=tmp_path, capture_output=True, text=True, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    c = json.loads((tmp_path / "results" / "c.json").read_text())["metrics"]
    assert c["busy0_threads1_s"] > 0


def test_memorisation_bench_times_both_searches(tmp_path):
    m = run_bench(tmp_path, "bench/memorisation.py", "--samples", "20", "--reference", "300", name="m")
    assert m["pixel_20x300_s"] > 0 and m["feature_20x300_s"] > 0


def test_speculative_bench_measures_each_method(tmp_path):
    m = run_bench(tmp_path, "bench/speculative.py", "--tiny", "--sample-batches", "2", "--images", "2", "--gamma", "2",
                  "--cspd-gamma", "2", "--round-images", "2", name="s")  # fmt: skip
    for method in ("draft", "feature", "jacobi", "cspd", "cspd_final", "cspd_reference"):
        assert m[f"speedup_{method}_b2"] > 0 and 0 <= m[f"acceptance_{method}"] <= 1
        assert m[f"rounds_per_batch_{method}_b2"] >= m[f"rounds_per_row_{method}_b2"] > 0
        assert m[f"round_cost_plain_steps_{method}_b2"] > 0


def test_pixel_bench_measures_both_units(tmp_path):
    m = run_bench(tmp_path, "bench/pixel.py", "--tiny", "--sample-batches", "2", "--train-batches", "2", "--train-steps",
                  "1", "--train-modes", "eager", name="p")  # fmt: skip
    for unit in ("subpixel", "pixel"):
        assert m[f"sample_{unit}_b2_images_per_s"] > 0 and m[f"train_{unit}_b2_subpixels_per_s"] > 0


def test_video_bench_measures_the_cache_against_recomputing(tmp_path):
    m = run_bench(tmp_path, "bench/video.py", "--tiny", "--sample-batches", "2", "--train-batches", "2", "--train-steps",
                  "1", "--repeats", "1", "--profile", str(tmp_path / "prof"), name="v")  # fmt: skip
    for mode in ("cached", "eager", "recompute"):
        assert m[f"sample_{mode}_b2_clips_per_s"] > 0
    assert m["sample_window_b2_frames8_clips_per_s"] > 0  # twice the tiny model's 4 frames, the window sliding
    assert m["cache_speedup_b2"] > 0 and m["train_b2_tokens_per_s"] > 0
    # --profile: where a training step's time goes (the table), and its launches per step among the figures
    assert m["train_b2_kernels_per_step"] > 0 and m["train_b2_wall_ms_per_step"] > 0
    assert "aten::" in (tmp_path / "prof" / "profile-train_b2.txt").read_text()


def test_multigpu_bench_scales_one_to_two_processes(tmp_path):
    """On the CPU through gloo: both launches run the trainer and the efficiency is their ratio."""
    m = run_bench(tmp_path, "bench/multigpu.py", "--tiny", "--cpu", "--train-batches", "4", "--steps", "2", name="m")
    one, two = m["train_1proc_b4_tokens_per_s"], m["train_2proc_b4_tokens_per_s"]
    assert one > 0 and two > 0 and m["ddp_scaling_efficiency"] == pytest.approx(two / (2 * one))
    assert "`Accelerate` version" in m["accelerate_env"]


def test_profile_counts_what_a_batch_launches(tmp_path, monkeypatch):
    """bench/speculative.py's ``--profile-batches``: per AR position, the outermost ops a batch runs (kernels on a
    GPU) and their time; speculative Jacobi rounds write their own table after the plain sampler's."""
    monkeypatch.syspath_prepend(str(Path.cwd() / "bench"))
    import torch
    from common import profile_sampling

    from visgen.generator import Generator, GeneratorConfig
    from visgen.sampling import SamplingConfig

    torch.manual_seed(0)
    gen = Generator(
        GeneratorConfig(tokenizer="asset:cifar10-vq", image_size=32, num_classes=10, backbone="tiny")
    ).eval()
    table = tmp_path / "profile.txt"
    plain = profile_sampling(gen, SamplingConfig(batch_size=2), table=str(table), title="plain")
    jacobi = profile_sampling(gen, SamplingConfig(batch_size=2, speculative="jacobi", gamma=2), table=str(table),
                              title="jacobi")  # fmt: skip
    assert plain["kernels"] > 1 and plain["device_ms"] > 0 and jacobi["kernels"] > 0
    text = table.read_text()
    assert text.index("== plain") < text.index("== jacobi") and "aten::" in text
