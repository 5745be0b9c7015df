"""kdrun against the original notebook, timed as whole processes, side by side in one run.

    python benchmarks/run.py            # everything, ~15 minutes on an idle 2-core machine
    python benchmarks/run.py --quick    # fewer repeats, a 5-run sample of the notebook sweep
    python benchmarks/run.py --only a,c # some sections: s (start-up), a, b, m (memory), c, k (checkpoints), t (threads)
    python benchmarks/run.py --only c --device cuda   # (c) on a GPU
    python benchmarks/run.py --only d --device cuda   # (d), the CIFAR benchmark pairs, on a GPU

Sections
  s  start-up: `kdrun --help` wall time, and which heavy modules it imports (-X importtime).
  a  one default run: benchmarks/notebook.py (the notebook as written) against `kdrun train`,
     each a fresh process; kdrun with a fresh run dir and a fresh, empty cache dir per repeat
     (a cold run), plus the same with plots=false, plus a warm-cache run. Repeats interleaved,
     order rotated; medians; ratio = notebook median / kdrun median.
  b  a 5 x 5 alpha x T sweep: 25 notebook processes against one `kdrun train -m` (fresh cache);
     kdrun repeats interleaved between chunks of the 25 notebook runs. Per-job breakdown of the
     kdrun sweep from its run directories (train.log time stamps, status.json mtimes,
     summary.csv train_seconds). Then 5 seeds x 5 T against hydra/launcher=basic, and an
     MNIST-size and a CNN (experiment=digits_methods) sweep stacked against one job after the other.
  m  peak RSS (os.wait4 ru_maxrss) of an MNIST-size `kdrun train` (synthetic 60,000 x 784,
     teacher 2 x 1200, student 2 x 800, batch 512, 1 epoch per phase).
  c  in this process: torch fp32 matmul GFLOP/s (2048^2) at 1 and 2 threads, then MNIST-size
     epochs (50,000 x 784 random, batch 512) through kdrun.train.fit with kdrun.models.MLP:
     teacher 784-1200-1200-10 (plain), student 784-800-800-10 (distilled from precomputed
     teacher logits). FLOPs per epoch count the matrix products only: per training example
     2 * W forward, 2 * W for the weight gradients and 2 * W' for the input gradients, where W
     is the weight count of all layers and W' of all but the first (the data needs no
     gradient); per validation example 2 * W. The matmul rate at the same thread count is
     measured before a model's first epoch and after each epoch; each epoch's ratio = achieved /
     the mean of the two rates around it; a model's ratio is the median over its epochs.
  d  the CIFAR-100 benchmark pairs: images per second of a distilled student's training epoch
     (augmentation, the teacher's forward pass per batch, KD alpha 0.9 T 4, SGD, batch 64) through
     kdrun.train.fit against a plain PyTorch loop of the same models written here, on random
     CIFAR-shaped uint8 data (--images per measurement; each pair: one warm-up batch, then
     kdrun and plain alternating, median of 2), and the epoch time that rate gives for the
     45,000 training images of experiment=cifar100_kd.
  t  trainer.threads=null: epochs through kdrun.train.fit at 1 and 2 threads for models on both
     sides of kdrun's threshold (a training step's multiply-adds), and the count kdrun picks.
  k  checkpoints: an MNIST-size teacher (784-1200-1200-10, 55,000 random rows, batch 128) through
     kdrun.train.fit with a checkpoint after every epoch against none, interleaved; the time of
     one checkpoint write, and what the default (at most one a minute) costs at most.

Every process's wall time, CPU time (user + sys) and peak RSS come from os.wait4. The machine is
shared: the load average is printed at the start and the end; trust same-run ratios only.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "benchmarks" / "notebook.py"
ALPHAS = (0.1, 0.3, 0.5, 0.7, 0.9)
TEMPERATURES = (1, 2, 3, 5, 10)
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    wall: float  # seconds
    cpu: float  # user + sys seconds
    rss_mb: float  # peak resident set, MiB


def kdrun_command() -> list[str]:
    script = Path(sys.executable).parent / "kdrun"
    return [str(script)] if script.exists() else [sys.executable, "-m", "kdrun.cli"]


def base_env(threads: int | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env["PYTHONHASHSEED"] = "0"
    if threads is not None:
        for name in THREAD_VARS:
            env[name] = str(threads)
    return env


def run_proc(cmd: list[str], env: dict | None = None, log: Path | None = None) -> Proc:
    """Run ``cmd`` to completion; its output goes to ``log`` (or nowhere)."""
    out = open(log, "wb") if log else subprocess.DEVNULL
    try:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env or base_env(), stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if log:
            out.close()
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:] if log else ""
        raise RuntimeError(f"exit {proc.returncode}: {' '.join(cmd)}\n{tail}")
    return Proc(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def med(values) -> float:
    return statistics.median(values)


def fmt_runs(procs: list[Proc]) -> str:
    walls = sorted(p.wall for p in procs)
    return f"median {med(walls):6.2f} s  (min {walls[0]:.2f}, max {walls[-1]:.2f}; cpu {med([p.cpu for p in procs]):.2f} s; peak RSS {med([p.rss_mb for p in procs]):.0f} MiB)"


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "MET" if ok else "MISSED"


# --------------------------------------------------------------------------- s: start-up


def section_startup(tmp: Path, repeats: int) -> None:
    print("\n== (s) start-up ==")
    kd = kdrun_command()
    checks = [("kdrun --help", ["--help"])]
    if (ROOT / "kdrun" / "compare.py").exists():
        empty = tmp / "empty_outputs"
        empty.mkdir(exist_ok=True)
        checks.append(("kdrun compare --help", ["compare", "--help"]))
    else:
        print("kdrun/compare.py does not exist yet: `kdrun compare` not checked")
    python = [sys.executable, "-c", "import sys"]
    bare = [run_proc(python).wall for _ in range(repeats)]
    label = 'python -c "import sys"'
    print(f"{label:<28} median {med(bare):.3f} s (interpreter alone)")
    for label, args in checks:
        walls = []
        for _ in range(repeats):
            try:
                walls.append(run_proc(kd + args).wall)
            except RuntimeError as error:  # --help may exit 0 or 2 depending on the command
                walls = []
                print(f"{label}: {str(error).splitlines()[0]}")
                break
        imp = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "kdrun.cli", *args], cwd=ROOT, env=base_env(),
            capture_output=True, text=True,
        )
        top = set()
        for line in imp.stderr.splitlines():
            if line.startswith("import time:") and "|" in line:
                name = line.rsplit("|", 1)[1].strip()
                top.add(name.split(".")[0])
        heavy = [m for m in ("torch", "matplotlib", "pandas", "hydra", "numpy") if m in top]
        timing = f"median {med(walls):.3f} s" if walls else "n/a"
        print(f"{label:<28} {timing}; heavy imports: {', '.join(heavy) or 'none'}"
              f"  [torch: {'IMPORTED (target missed)' if 'torch' in top else 'not imported (target met)'}]")


# --------------------------------------------------------------------------- a: one run


def kdrun_train(tmp: Path, tag: str, cache: Path, *extra: str) -> list[str]:
    return kdrun_command() + ["train", f"hydra.run.dir={tmp / 'runs' / tag}", f"cache.dir={cache}", *extra]


def section_a(tmp: Path, repeats: int) -> None:
    print(f"\n== (a) one default run, whole processes, {repeats} interleaved repeats ==")
    warm_cache = tmp / "cache_warm"
    run_proc(kdrun_train(tmp, "a_warmup", warm_cache))  # fills warm_cache; also warms the disk cache
    variants = {
        "notebook": lambda i: run_proc([sys.executable, str(NOTEBOOK), "0.7", "3.0", str(tmp / f"nb_{i}.png")]),
        "notebook, 1 thread": lambda i: run_proc(
            [sys.executable, str(NOTEBOOK), "0.7", "3.0", str(tmp / f"nb1_{i}.png")], env=base_env(threads=1)),
        "kdrun train (cold)": lambda i: run_proc(kdrun_train(tmp, f"a_cold_{i}", tmp / f"cache_a_{i}")),
        "kdrun train plots=false": lambda i: run_proc(
            kdrun_train(tmp, f"a_noplot_{i}", tmp / f"cache_an_{i}", "plots=false")),
        "kdrun train (warm cache)": lambda i: run_proc(kdrun_train(tmp, f"a_warm_{i}", warm_cache)),
    }
    names = list(variants)
    results: dict[str, list[Proc]] = {n: [] for n in names}
    for i in range(repeats):
        order = names[i % len(names):] + names[: i % len(names)]
        for name in order:
            results[name].append(variants[name](i))
    for name in names:
        print(f"{name:<26} {fmt_runs(results[name])}")
    nb = med([p.wall for p in results["notebook"]])
    for name in names[1:]:
        ratio = nb / med([p.wall for p in results[name]])
        print(f"  notebook / {name:<26} {ratio:5.2f}x")
    ratio = nb / med([p.wall for p in results["kdrun train (cold)"]])
    print(f"target (a): kdrun train (cold, plots on) >= 1.4x faster than the notebook: {ratio:.2f}x  {verdict(ratio, 1.4)}")
    ratio1 = med([p.wall for p in results["notebook, 1 thread"]]) / med([p.wall for p in results["kdrun train (cold)"]])
    print(f"  the same against the notebook at 1 thread (immune to a busy machine): {ratio1:.2f}x  {verdict(ratio1, 1.4)}")
    print("  notebook: torch default threads, DataLoader batch 32, teacher forward per batch, KL checks,\n"
          "            evaluation on the training set, one 5-panel PNG; writes no checkpoints or CSVs.\n"
          "  kdrun:    one process, 1 thread (models < 1M params), teacher's soft targets computed once,\n"
          "            held-out split, 3 checkpoints, metrics/summary CSVs,\n"
          "            status.json, train.log, two PNGs (training curves; teacher soft targets at 6 T) unless plots=false.")


# --------------------------------------------------------------------------- b: sweep


def _log_time(line: str) -> float:
    return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def sweep_breakdown(sweep_dir: Path, log: Path, started_at: float, ended_at: float) -> str:
    """Where a sweep's time went, from its log (Hydra's timestamped lines) and run directories:
    start-up (interpreter, imports, composing the jobs' configs, the data and the teacher), the
    students trained together (kdrun's launcher), the jobs one after the other (each writing its
    run directory: evaluation, checkpoints, CSVs, figures), and the end (comparison, heatmap)."""
    lines = log.read_text(errors="replace").splitlines()
    stamped = [(line, _log_time(line)) for line in lines if line.startswith("[20") and "][HYDRA]" in line]
    together = [t for line, t in stamped if "students together" in line]
    launched = next((t for line, t in stamped if "Launching" in line), None)
    jobs = sorted((d for d in sweep_dir.iterdir() if d.is_dir() and (d / "summary.csv").exists()), key=lambda d: int(d.name.split("_", 1)[0]))
    if not jobs or launched is None:
        return "  (no job directories found)"
    starts = [_log_time((job / "train.log").read_text().splitlines()[0]) for job in jobs]
    last_summary = (jobs[-1] / "summary.csv").stat().st_mtime
    walls = [b - a for a, b in zip(starts, starts[1:] + [last_summary])]
    first = together[0] if together else launched
    out = [f"  start-up: {first - started_at:.2f} s (interpreter, imports, composing {len(jobs)} configs{', data and teacher' if together else ''})"]
    if together:
        out.append(f"  students trained together: {launched - together[0]:.2f} s")
    out += [
        f"  {len(jobs)} jobs: {sum(walls):.2f} s (median {med(walls):.3f} s a job: {'its models handed over, ' if together else 'training, '}"
        "evaluation, checkpoints, CSVs, figures)",
        f"  after the last job's summary: {ended_at - last_summary:.2f} s (its figures, comparison table, heatmap, exit)",
    ]
    return "\n".join(out)


def kdrun_sweep(tmp: Path, name: str, *overrides: str) -> tuple[Proc, Path, Path, float, float]:
    """One ``kdrun train -m`` process with a fresh cache; returns its Proc, sweep dir, log, start and end."""
    sweep_dir, log = tmp / name, tmp / f"{name}.log"
    cmd = kdrun_command() + ["train", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}", f"cache.dir={tmp / f'{name}_cache'}"]
    started = time.time()
    proc = run_proc(cmd, log=log)
    return proc, sweep_dir, log, started, time.time()


def stacked_vs_alone(tmp: Path, name: str, overrides: list[str], kd_repeats: int, what: str) -> None:
    """A sweep stacked (kdrun's default) against the same one job after the other, interleaved."""
    print(f"\n-- (b) {what}: stacked vs one job after the other (hydra.launcher.stack=false), {kd_repeats} repeat(s) --")
    stacked, alone = [], []
    for k in range(kd_repeats):
        stacked.append(kdrun_sweep(tmp, f"{name}_stacked_{k}", *overrides)[0])
        alone.append(kdrun_sweep(tmp, f"{name}_alone_{k}", *overrides, "hydra.launcher.stack=false")[0])
    print(f"kdrun train -m (stacked)     {fmt_runs(stacked)}")
    print(f"hydra.launcher.stack=false   {fmt_runs(alone)}")
    print(f"  one job after the other / stacked: {med([p.wall for p in alone]) / med([p.wall for p in stacked]):.2f}x")


def section_b(tmp: Path, kd_repeats: int, quick: bool) -> None:
    grid = [(a, t) for a in ALPHAS for t in TEMPERATURES]
    sample = grid if not quick else [(ALPHAS[i], TEMPERATURES[i]) for i in range(5)]
    scale = len(grid) / len(sample)
    print(f"\n== (b) 5 x 5 alpha x T sweep: {len(sample)} notebook processes"
          f"{' (a sample, scaled x%g to 25)' % scale if quick else ''} (each at default threads and at 1 thread) vs one `kdrun train -m`, {kd_repeats} repeat(s) ==")
    sweep = [f"loss.alpha={','.join(map(str, ALPHAS))}", f"loss.temperature={','.join(map(str, TEMPERATURES))}"]
    chunks = [sample[k::kd_repeats] for k in range(kd_repeats)]
    kd, alone, nb, nb1 = [], [], [], []  # nb1: the notebook at 1 thread, which a busy machine does not distort
    last = None
    for k in range(kd_repeats):
        result = kdrun_sweep(tmp, f"b_stacked_{k}", *sweep)
        kd.append(result[0])
        last = result[1:]
        alone.append(kdrun_sweep(tmp, f"b_alone_{k}", *sweep, "hydra.launcher.stack=false")[0])
        for alpha, temperature in chunks[k]:
            command = [sys.executable, str(NOTEBOOK), str(alpha), str(temperature), str(tmp / "nb_b.png")]
            nb.append(run_proc(command))
            nb1.append(run_proc(command, env=base_env(threads=1)))
    noplot = kdrun_sweep(tmp, "b_noplot", *sweep, "plots=false")
    nb_total, nb1_total = sum(p.wall for p in nb) * scale, sum(p.wall for p in nb1) * scale
    kd_med = med([p.wall for p in kd])
    scaled = "(scaled) " if quick else ""
    print(f"notebook x25 {scaled}total           {nb_total:7.1f} s  (per run: {fmt_runs(nb)})")
    print(f"notebook x25, 1 thread, {scaled}total {nb1_total:7.1f} s  (per run: {fmt_runs(nb1)})")
    print(f"kdrun train -m (25 jobs)     {fmt_runs(kd)}")
    print(f"  hydra.launcher.stack=false {fmt_runs(alone)}")
    print(f"  plots=false                {fmt_runs([noplot[0]])}")
    ratio, ratio1 = nb_total / kd_med, nb1_total / kd_med
    print(f"  notebook x25 / kdrun sweep                       {ratio:5.2f}x")
    print(f"  notebook x25 / kdrun sweep plots=false           {nb_total / noplot[0].wall:5.2f}x")
    print(f"  notebook x25 at 1 thread / kdrun sweep             {ratio1:5.2f}x")
    print(f"  notebook x25 at 1 thread / kdrun sweep plots=false {nb1_total / noplot[0].wall:5.2f}x")
    print(f"  kdrun one job after the other / stacked           {med([p.wall for p in alone]) / kd_med:5.2f}x")
    print(f"target (b): the sweep >= 25x faster than 25 notebook runs: {ratio:.2f}x  {verdict(ratio, 25)}; "
          f"against the 1-thread notebook {ratio1:.2f}x  {verdict(ratio1, 25)}")
    print("kdrun sweep, where the time goes (last repeat, plots on):")
    print(sweep_breakdown(*last))
    print("kdrun sweep, where the time goes (plots=false):")
    print(sweep_breakdown(*noplot[1:]))

    seeds = ["trainer.seed=0,1,2,3,4", f"loss.temperature={','.join(map(str, TEMPERATURES))}"]
    print(f"\n-- (b) 5 seeds x 5 temperatures: kdrun's launcher (teachers and students stacked) vs hydra/launcher=basic, {kd_repeats} repeat(s) --")
    stacked, basic = [], []
    for k in range(kd_repeats):
        stacked.append(kdrun_sweep(tmp, f"bs_stacked_{k}", *seeds)[0])
        basic.append(kdrun_sweep(tmp, f"bs_basic_{k}", *seeds, "hydra/launcher=basic")[0])
    seed_ratio = med([p.wall for p in basic]) / med([p.wall for p in stacked])
    print(f"kdrun train -m (stacked)     {fmt_runs(stacked)}")
    print(f"hydra/launcher=basic         {fmt_runs(basic)}")
    print(f"target (b): seeds x T >= 3x faster than hydra/launcher=basic: {seed_ratio:.2f}x  {verdict(seed_ratio, 3)}")

    mnist = ["dataset.n_samples=2358", "model.teacher.hidden=[1200,1200]", "model.student.hidden=[800,800]", "trainer.batch_size=128",
             "plots=false", "loss.alpha=0.5,0.9", "loss.temperature=1,2,4,8"]  # fmt: skip
    stacked_vs_alone(tmp, "bm", mnist, kd_repeats, "MNIST-size: students 784-800-800-10 on 1,650 examples (teacher 784-1200-1200-10), "
                     "8 settings, batch 128, 20 epochs, plots off")  # fmt: skip
    digits = ["experiment=digits_methods", "loss.alpha=0.5,0.9", "loss.temperature=2,4", "trainer.seed=0,1,2"]
    stacked_vs_alone(tmp, "bc", digits, kd_repeats, "CNN students with batch norm: experiment=digits_methods (8x8 digits, CNN teacher "
                     "32-64 channels, 30 epochs; students 8-16 channels, 300 epochs on 63 images), 2 alphas x 2 T x 3 seeds, plots on")  # fmt: skip

    parallel = [("joblib", ["hydra/launcher=joblib"], ["hydra/launcher=kd_joblib"]),
                ("submitit", ["hydra/launcher=submitit_local", "hydra.sweeper.max_batch_size=2"], ["hydra/launcher=kd_submitit_local"])]  # fmt: skip
    for plugin, hydra_way, kdrun_way in parallel:
        if importlib.util.find_spec(f"hydra_plugins.hydra_{plugin}_launcher") is None:
            continue
        print(f"\n-- (b) the 5 x 5 sweep through {plugin} on this machine, 1 thread a job: Hydra's launcher (a task per job) vs "
              f"kdrun's (a task per group of jobs that train together), 1 run each --")
        per_job = kdrun_sweep(tmp, f"bp_{plugin}_hydra", *sweep, *hydra_way, "trainer.threads=1")[0]
        per_group = kdrun_sweep(tmp, f"bp_{plugin}_kdrun", *sweep, *kdrun_way, "trainer.threads=1")[0]
        print(f"{' '.join(hydra_way):<55} {fmt_runs([per_job])}")
        print(f"{' '.join(kdrun_way):<55} {fmt_runs([per_group])}")
        print(f"  a task per job / a task per group: {per_job.wall / per_group.wall:.2f}x")


# --------------------------------------------------------------------------- m: memory


MNIST_OVERRIDES = [
    "dataset.n_samples=60000", "dataset.input_dim=784", "model.teacher.hidden=[1200,1200]",
    "model.student.hidden=[800,800]", "trainer.batch_size=512", "trainer.epochs=1",
]


def section_m(tmp: Path) -> None:
    print("\n== (m) peak memory of an MNIST-size `kdrun train` ==")
    print("  " + " ".join(MNIST_OVERRIDES) + " (plots on, fresh cache)")
    proc = run_proc(kdrun_train(tmp, "m", tmp / "cache_m", *MNIST_OVERRIDES), log=tmp / "m.log")
    print(f"peak RSS {proc.rss_mb:.0f} MiB ({proc.rss_mb * 1.048576:.0f} MB); wall {proc.wall:.1f} s, cpu {proc.cpu:.1f} s")
    print(f"target: peak memory < 1.5 GB: {verdict(proc.rss_mb * 1.048576, 1500, higher_is_better=False)}")


# --------------------------------------------------------------------------- c: compute


def section_c(device_name: str, epochs: int) -> None:
    import torch

    from torch import nn

    from kdrun.data import Split
    from kdrun.models import MLP, count_parameters
    from kdrun.losses import KDLoss
    from kdrun.train import Distillation, FitSettings, fit, predict

    device = torch.device(device_name)
    cuda = device.type == "cuda"
    print(f"\n== (c) MNIST-size epochs through kdrun.train.fit on {device_name}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if cuda else ''} ==")
    print(f"torch {torch.__version__}, default threads {torch.get_num_threads()}, os.cpu_count {os.cpu_count()}, "
          f"{platform.processor() or platform.machine()}")

    def matmul_flops(model: nn.Module, n_train: int, n_val: int) -> int:
        weights = [m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear)]
        return (6 * sum(weights) - 2 * weights[0]) * n_train + 2 * sum(weights) * n_val

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def matmul_rate(n: int = 2048) -> float:
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        for _ in range(2):
            a @ b
        sync()
        times = []
        for _ in range(7 if not cuda else 50):
            started = time.perf_counter()
            a @ b
            sync()
            times.append(time.perf_counter() - started)
        return 2 * n**3 / med(times) / 1e9

    generator = torch.Generator().manual_seed(0)
    n_train, n_val, dim, classes = 50_000, 10_000, 784, 10
    train = Split(torch.randn(n_train, dim, generator=generator), torch.randint(0, classes, (n_train,), generator=generator)).to(device)
    val = Split(torch.randn(n_val, dim, generator=generator), torch.randint(0, classes, (n_val,), generator=generator)).to(device)
    thread_counts = [1, 2] if not cuda else [torch.get_num_threads()]
    worst = {}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        teacher = MLP((dim,), classes, [1200, 1200]).to(device)
        student = MLP((dim,), classes, [800, 800]).to(device)
        settings = FitSettings(epochs, 512, "adam", 1e-3, 0.0, 0)
        print(f"threads {threads}:")
        ratios_by_model = []
        for name, model, distils in (("teacher 784-1200-1200-10", teacher, False), ("student 784-800-800-10", student, True)):
            distillation = None
            if distils:
                started = time.perf_counter()
                predict(teacher, train.x)  # timed: what fit computes once for the kd loss
                sync()
                predict_s = time.perf_counter() - started
                p_t = count_parameters(teacher)
                print(f"  teacher logits for 50,000 rows (2*P*N = {2 * p_t * n_train / 1e9:.0f} GFLOP) {predict_s:.2f} s = "
                      f"{2 * p_t * n_train / predict_s / 1e9:.0f} GFLOP/s")
                distillation = Distillation(KDLoss(0.7, 3.0), teacher)
            # The machine's speed drifts within a minute: the matmul rate is measured before the
            # first epoch and after each one (outside the epoch's own timing), and each epoch is
            # compared with the mean of the two rates around it.
            rates = [matmul_rate()]
            rows = fit(model, train, val, settings, name.split()[0], distillation, on_epoch=lambda row: rates.append(matmul_rate()))
            flops = matmul_flops(model, n_train, n_val)
            achieved = [flops / row["seconds"] / 1e9 for row in rows]  # kdrun syncs once per epoch before timing ends
            references = [(rates[i] + rates[i + 1]) / 2 for i in range(len(rows))]
            ratios = [a / r for a, r in zip(achieved, references)]
            ratios_by_model.append(med(ratios))
            print(f"  {name:<25} {count_parameters(model):>9,} params  epoch {med([r['seconds'] for r in rows]):6.2f} s "
                  f"(median of {epochs})  {med(achieved):6.1f} GFLOP/s")
            print(f"    matmul {' / '.join(f'{r:.1f}' for r in rates)} GFLOP/s (before epoch 1, after each); "
                  f"per epoch {', '.join(f'{r:.1%}' for r in ratios)} of the mean around it; median {med(ratios):.1%}")
        worst[threads] = min(ratios_by_model)
    print("  matmul: fp32 2048^2, median of 7. FLOPs per epoch: matrix products only; 50,000 training examples")
    print("  x (2W forward + 2W weight gradients + 2W' input gradients) + 10,000 validation examples x 2W")
    print("  (W: weights of all layers, W': all but the first)")
    for threads in thread_counts:
        print(f"target (c): >= 75% of matmul GFLOP/s at the same thread count, {threads} thread(s), worst model's median: "
              f"{worst[threads]:.1%}  {verdict(worst[threads], 0.75)}")


def section_t(repeats: int) -> None:
    """trainer.threads=null: is kdrun's thread count the faster one? Epochs through kdrun.train.fit
    at 1 and 2 threads, alternating, for models on both sides of kdrun's threshold."""
    import torch

    from kdrun.config import compose
    from kdrun.data import Split
    from kdrun.experiment import choose_threads, prepare
    from kdrun.models import CNN, LeNet5, multiply_adds, resnet8
    from kdrun.train import FitSettings, fit

    default = prepare(compose([]))
    g = torch.Generator().manual_seed(0)

    def images(n: int, shape: tuple, classes: int) -> Split:
        return Split(torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g), torch.randint(0, classes, (n,), generator=g))

    cases = [  # name, model, training rows, batch size, epochs, prepare
        ("default teacher (MLP), 350 rows, 20 epochs", default.teacher, default.data.train, 32, 20, default.data.prepare),
        ("digits CNN teacher 32-64, 1,258 images 8x8, 5 epochs", CNN((1, 8, 8), 10, (32, 64)), images(1258, (1, 8, 8), 10), 32, 5, None),
        ("LeNet-5, 8,000 images 28x28, 1 epoch", LeNet5((1, 28, 28), 10), images(8000, (1, 28, 28), 10), 128, 1, None),
        ("resnet8, 640 images 3x32x32, 1 epoch", resnet8(input_shape=(3, 32, 32), num_classes=100), images(640, (3, 32, 32), 100), 64, 1, None),
    ]  # fmt: skip
    print(f"\n== (t) trainer.threads=null: 1 or 2 threads, epochs through kdrun.train.fit, {repeats} repeat(s) each, alternating ==")
    threads_before = torch.get_num_threads()
    for name, model, train, batch, epochs, scale in cases:
        prepare_rows = scale or (lambda rows: rows.float() / 255)
        step = batch * multiply_adds(model, prepare_rows(train.x[:1]))
        chosen = choose_threads(None, step)
        settings = FitSettings(epochs=epochs, batch_size=batch, optimizer="adam", lr=1e-3, weight_decay=0.0, batch_seed=0)
        seconds: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(repeats):
            for threads in (1, 2):
                torch.set_num_threads(threads)
                started = time.perf_counter()
                fit(model, train, Split(train.x[:0], train.y[:0]), settings, "teacher", prepare=prepare_rows)
                seconds[threads].append(time.perf_counter() - started)
        one, two = med(seconds[1]), med(seconds[2])
        if chosen == 1:  # by design: little work a step, and one thread is steadier on a busy machine
            judged = f"one thread by choice ({one - two:+.2f} s against two)"
        else:
            judged = f"target: within 10% of the faster: {verdict(min(one, two) / two, 0.9)}"
        print(f"{name:<55} {step / 1e6:7.1f}M multiply-adds a step; 1 thread {one:6.2f} s, 2 threads {two:6.2f} s; kdrun picks {chosen}; {judged}")
    torch.set_num_threads(threads_before)


def section_k(tmp: Path, epochs: int) -> None:
    """What resumable checkpoints cost: an MNIST-size teacher through fit, a checkpoint after
    every epoch against none, in one process, interleaved."""
    import torch

    from kdrun.checkpoints import AUTO_SECONDS, Checkpoint
    from kdrun.data import Split
    from kdrun.models import MLP
    from kdrun.train import FitSettings, fit

    print("\n== (k) checkpoints: MNIST-size teacher 784-1200-1200-10, 55,000 rows, batch 128, adam, 2 threads ==")
    torch.set_num_threads(2)
    generator = torch.Generator().manual_seed(0)
    train = Split(torch.randn(55_000, 784, generator=generator), torch.randint(0, 10, (55_000,), generator=generator))
    val = Split(torch.randn(5_000, 784, generator=generator), torch.randint(0, 10, (5_000,), generator=generator))
    settings = FitSettings(epochs, 128, "adam", 1e-3, 0.0, 0)
    timings: dict[str, list[float]] = {"none": [], "every epoch": []}
    for repeat in range(2):
        for label, every in (("none", 0), ("every epoch", 1)):
            torch.manual_seed(0)
            checkpoint = Checkpoint(tmp / f"k-{label.replace(' ', '-')}-{repeat}.pt", every, "the teacher")
            started = time.perf_counter()
            fit(MLP((784,), 10, [1200, 1200]), train, val, settings, "teacher", checkpoint=checkpoint)
            timings[label].append((time.perf_counter() - started) / epochs)
    saves = []
    model = MLP((784,), 10, [1200, 1200])
    state = {"model": model.state_dict(), "optimizer": {"a": [torch.zeros_like(p) for p in model.parameters()],
                                                        "b": [torch.zeros_like(p) for p in model.parameters()]}}  # fmt: skip
    for _ in range(5):
        started = time.perf_counter()
        Checkpoint(tmp / "k-save.pt", 1, "the teacher").save(state)
        saves.append(time.perf_counter() - started)
    epoch, with_saves, save = med(timings["none"]), med(timings["every epoch"]), med(saves)
    size = (tmp / "k-save.pt").stat().st_size / 2**20
    print(f"  epoch without checkpoints {epoch:.2f} s, with one per epoch {with_saves:.2f} s (x{with_saves / epoch:.3f}); "
          f"one checkpoint ({size:.0f} MiB: weights and Adam's moments, fsync'd) {save:.3f} s")
    print(f"  the default (at most one a minute) costs at most {save / AUTO_SECONDS:.2%} of training time; target < 2%  "
          f"{verdict(save / AUTO_SECONDS, 0.02, higher_is_better=False)}")


# --------------------------------------------------------------------------- d: CIFAR pairs


def _plain_kd_epoch(student, teacher, x, y, mean, std, batch_size: int, seed: int) -> None:
    """The plain PyTorch loop (d) compares kdrun with: the benchmark recipe's distillation step,
    with the same crop-and-flip augmentation written with advanced indexing."""
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(seed)
    student.train()
    teacher.eval()
    pixels = torch.arange(32, device=x.device)
    for index in torch.randperm(len(x), generator=generator).to(x.device).split(batch_size):
        images = F.pad(x[index], (4, 4, 4, 4))
        b = len(index)
        dy, dx = (torch.randint(0, 9, (b,), generator=generator).to(x.device) for _ in range(2))
        flip = torch.randint(0, 2, (b,), generator=generator).bool().to(x.device)
        rows = dy[:, None] + pixels
        cols = dx[:, None] + torch.where(flip[:, None], 31 - pixels, pixels)
        images = images[torch.arange(b, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        inputs = (images.permute(0, 3, 1, 2).float() / 255 - mean) / std
        logits = student(inputs)
        with torch.no_grad():
            soft = F.softmax(teacher(inputs) / 4, dim=1)
        kd = F.kl_div(F.log_softmax(logits / 4, dim=1), soft, reduction="batchmean") * 16
        loss = 0.1 * F.cross_entropy(logits, y[index]) + 0.9 * kd
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def section_d(device_name: str, images: int, pairs: str) -> None:
    import copy

    import torch

    from kdrun.data import Split
    from kdrun.data.augment import random_crop_flip
    from kdrun.data.splits import Inputs
    from kdrun.losses import KDLoss
    from kdrun.models import count_parameters, create
    from kdrun.train import Distillation, FitSettings, fit

    device = torch.device(device_name)
    cuda = device.type == "cuda"
    chosen = [p for p in (pairs.split(",") if pairs else CIFAR_PAIRS)]
    print(f"\n== (d) CIFAR-100 benchmark pairs on {device_name}{' (' + torch.cuda.get_device_name(device) + ')' if cuda else ''}: "
          f"a distilled student's epoch, {images:,} random 3x32x32 uint8 images, batch 64, images/s ==")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8, generator=generator).to(device)
    y = torch.randint(0, 100, (images,), generator=generator).to(device)
    val = Split(x[:0], y[:0])  # no validation pass: the plain loop has none
    mean = torch.tensor([0.507, 0.487, 0.441], device=device).view(3, 1, 1)
    std = torch.tensor([0.267, 0.256, 0.276], device=device).view(3, 1, 1)
    prepare = Inputs(mean, std)
    settings = FitSettings(1, 64, "sgd", 0.05, 5e-4, 0, momentum=0.9)
    worst = None
    for pair in chosen:
        teacher_name, student_name = pair.split(">")
        torch.manual_seed(0)
        teacher = create(teacher_name).to(device).eval()
        initial = create(student_name).to(device)
        warm = x[:64]
        _plain_kd_epoch(copy.deepcopy(initial), teacher, warm, y[:64], mean, std, 64, 0)  # kernels, allocator
        fit(copy.deepcopy(initial), Split(warm, y[:64]), val, settings, "s", Distillation(KDLoss(0.9, 4.0), teacher), prepare=prepare, augment=random_crop_flip)
        times: dict[str, list[float]] = {"kdrun": [], "plain": []}
        for order in (("kdrun", "plain"), ("plain", "kdrun")):
            for label in order:
                student = copy.deepcopy(initial)
                sync()
                started = time.perf_counter()
                if label == "plain":
                    _plain_kd_epoch(student, teacher, x, y, mean, std, 64, 1)
                else:
                    fit(student, Split(x, y), val, settings, "s", Distillation(KDLoss(0.9, 4.0), teacher), prepare=prepare, augment=random_crop_flip)
                sync()
                times[label].append(time.perf_counter() - started)
        kd_rate, plain_rate = images / med(times["kdrun"]), images / med(times["plain"])
        ratio = kd_rate / plain_rate
        worst = ratio if worst is None else min(worst, ratio)
        print(f"  {teacher_name:>10} ({count_parameters(teacher) / 1e6:5.2f} M) -> {student_name:<11} ({count_parameters(initial) / 1e6:4.2f} M): "
              f"kdrun {kd_rate:8.1f} img/s, plain {plain_rate:8.1f} img/s, x{ratio:.2f}; "
              f"a 45,000-image epoch {45_000 / kd_rate:7.0f} s")
    if worst is not None:
        print(f"target (d): kdrun >= 1.0x the plain loop on every pair; worst x{worst:.2f}  {verdict(worst, 1.0)}")


CIFAR_PAIRS = (
    "resnet32x4>resnet8x4", "wrn_40_2>wrn_16_2", "wrn_40_2>wrn_40_1", "resnet56>resnet20", "resnet110>resnet20",
    "resnet110>resnet32", "vgg13>vgg8", "vgg13>mobilenetv2", "resnet50>mobilenetv2", "resnet50>vgg8",
    "resnet32x4>shufflev1", "resnet32x4>shufflev2", "wrn_40_2>shufflev1",
)  # fmt: skip


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats; a 5-run sample of the notebook sweep")
    parser.add_argument("--only", default="s,a,b,m,c,k,t", help="comma-separated sections among s,a,b,m,c,k,t,d ((d) only when named)")
    parser.add_argument("--images", type=int, default=None, help="images per measurement in (d) (default 640 on the CPU, 12,800 on CUDA)")
    parser.add_argument("--pairs", default="", help="(d): teacher>student pairs, comma-separated (default: the 13 benchmark pairs)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats in (a) (default 5, quick 3)")
    parser.add_argument("--device", default="cpu", help="device for (c) and (d) (cpu or cuda)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    sections = set(args.only.split(","))
    repeats = args.repeats or (3 if args.quick else 5)

    tmp = Path(tempfile.mkdtemp(prefix="kdrun-bench-"))
    started = time.perf_counter()
    print(f"kdrun benchmarks {'--quick ' if args.quick else ''}{datetime.now():%Y-%m-%d %H:%M}; "
          f"{os.cpu_count()} cores; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; python {platform.python_version()}")
    try:
        if "s" in sections:
            section_startup(tmp, repeats)
        if "a" in sections:
            section_a(tmp, repeats)
        if "b" in sections:
            section_b(tmp, 2 if args.quick else 3, args.quick)
        if "m" in sections:
            section_m(tmp)
        if "c" in sections:
            section_c(args.device, 1 if args.quick else 3)
        if "k" in sections:
            section_k(tmp, 2 if args.quick else 3)
        if "t" in sections:
            section_t(2 if args.quick else 3)
        if "d" in sections:
            section_d(args.device, args.images or (12_800 if args.device.startswith("cuda") else 640), args.pairs)
    finally:
        print(f"\ntotal {time.perf_counter() - started:.0f} s; load average at the end "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
