"""reproduce: grid validation, end-to-end train -> attack -> report on the fake CIFAR-10, resume."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import yaml

from tinyrobust.cli import main
from tinyrobust.errors import ConfigError, TinyRobustError
from tinyrobust.report.grid import load_grid
from tinyrobust.report.render import family_mean

from conftest import shipped_grid_with_tiny_budget

REPO = Path(__file__).resolve().parents[1]


def tiny_grid(**over) -> dict:
    grid = {
        "dataset": "cifar10",
        "surrogates": ["qnn_float", "resnet"],
        "eps": [2, 8],
        "attacks": {"white": ["fgsm", "pgd"], "black": ["square", "transfer"]},
        "onnx_attacks": ["square"],
        "base": {
            "seed": 0,
            "train": {"batch_size": 25, "lr": 0.05, "threads": 1, "augment": False, "warmup_epochs": 0.0},
        },
        "budgets": {
            "quick": {
                "epochs": 2,
                "attack_n": 12,
                "cascade": True,
                "attack_params": {
                    "pgd": {"steps": 3},
                    "square": {"queries": 30},
                    "masking": {"few_steps": 2, "many_steps": 4},
                },
            }
        },
        "models": [
            {
                "key": "qnn_int4_jr",
                "label": "proposed",
                "role": "proposed",
                "config": {
                    "model": {"name": "qnn", "quant": {"weight": "int4", "act": "int4"}},
                    "jr": {"weight": 0.01},
                },
            },
            {"key": "resnet", "label": "reference", "role": "reference", "config": {"model": {"name": "mlc_resnet8"}}},
            {"key": "qnn_float", "label": "float", "role": "float", "config": {"model": {"name": "qnn"}}},
        ],
    }
    grid.update(over)
    return grid


def write_grid(folder: Path, grid: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cifar10.yaml").write_text(yaml.safe_dump(grid, sort_keys=False))
    return folder


SHIPPED_GRIDS = ["cifar10", "svhn", "speech_commands", "speech_commands_logmel", "speech_commands_wav"]


@pytest.mark.parametrize("name", [*SHIPPED_GRIDS, "cifar10_adversarial", "cifar10_jr"])
def test_shipped_grids_validate(name):
    grid = load_grid(REPO / "configs" / "reproduce" / f"{name}.yaml")
    assert sum(m.role == "proposed" for m in grid.models) == 1
    for budget in ("quick", "full"):
        epochs = grid.budgets[budget]["epochs"]
        for m in grid.models:
            want = epochs if isinstance(epochs, int) else epochs.get(m.group, epochs["default"])
            assert grid.run_config(m, budget).train.epochs == want


@pytest.mark.parametrize(
    "change, message",
    [
        ({"attacks": {"white": ["pgdd"], "black": []}}, "unknown attack 'pgdd'"),
        ({"attacks": {"white": ["square"], "black": []}}, "'square' is a black-box attack"),
        ({"eps": [0]}, "eps must be"),
        ({"typo": 1}, "unknown key 'typo'"),
        ({"surrogates": ["nope"]}, "no model with key 'nope'"),
        ({"surrogate": "qnn_float"}, "either surrogate or surrogates"),
        (
            {"budgets": {"quick": {"epochs": 1, "attack_n": {"default": 5, "resnett": 9}}}},
            "'resnett' is not a model key",
        ),
        ({"budgets": {"quick": {"epochs": 1, "attack_n": 0}}}, "attack_n must be an integer >= 1"),
        ({"budgets": {"quick": {"epochs": 0}}}, "epochs must be an integer >= 1"),
        ({"budgets": {"quick": {"attack_n": 3}}}, "epochs must be an integer >= 1"),
        ({"budgets": {"quick": {"epochs": {"resnet": 3}}}}, "epochs: a mapping needs a default"),
        ({"budgets": {"quick": {"epochs": {"default": 2, "resnett": 3}}}}, "epochs: 'resnett' is not a model key"),
        ({"budgets": {"quick": {"epochs": 1, "cascade": "yes"}}}, "cascade must be true or false"),
        ({"onnx_attacks": ["transfer"]}, "transfer is not supported"),
        ({"domain": "audio"}, "domain 'audio'; choose one of: feature, waveform"),
        ({"domain": "waveform"}, "domain waveform needs dataset speech_commands_logmel"),
        (
            {"dataset": "speech_commands_logmel", "domain": "waveform", "surrogates": []},
            "onnx_attacks must be empty with domain waveform",
        ),
        ({"eps_unit": "samples"}, "eps_unit samples needs domain waveform"),
        ({"eps_unit": "db"}, "eps_unit 'db'; choose one of"),
        ({"runs_dir": "/abs/runs"}, "runs_dir must be a folder relative to the output folder"),
        ({"extends": "nosuchgrid"}, "extends 'nosuchgrid', but .*nosuchgrid.yaml does not exist"),
        ({"extends": "cifar10"}, "extends 'cifar10' makes a cycle"),
        ({"report_notes": "one note"}, "report_notes must be a list of sentences"),
        ({"report_notes": ["ok", " "]}, "report_notes must be a list of sentences"),
    ],
)
def test_bad_grids_are_rejected_with_the_key(tmp_path, change, message):
    folder = write_grid(tmp_path / "g", tiny_grid(**change))
    with pytest.raises(ConfigError, match=message):
        load_grid(folder / "cifar10.yaml")


def test_extends_merges_the_parent_grid_and_waveform_eps_are_in_samples(tmp_path):
    folder = write_grid(tmp_path / "g", tiny_grid())
    child = {
        "extends": "cifar10",
        "eps": [2, 8],
        "budgets": {"quick": {"attack_n": 5}},
        "attacks": {"white": ["fgsm"], "black": ["square"]},
    }
    (folder / "child.yaml").write_text(yaml.safe_dump(child))
    g = load_grid(folder / "child.yaml")
    assert [m.key for m in g.models] == ["qnn_int4_jr", "resnet", "qnn_float"]  # from the parent
    assert g.budget("quick")["attack_n"] == 5 and g.budget("quick")["epochs"] == 2  # mappings merge
    assert g.white == ["fgsm"] and g.black == ["square"] and g.surrogates == ["qnn_float", "resnet"]
    assert g.domain == "feature" and g.eps_label(2.0) == "2/255" and g.runs_root(tmp_path) == tmp_path / "runs"

    wav = load_grid(REPO / "configs" / "reproduce" / "speech_commands_wav.yaml")
    assert wav.domain == "waveform" and wav.dataset == "speech_commands_logmel"
    assert wav.eps[0] == pytest.approx(2 / 257) and wav.eps_label(wav.eps[-1]) == "8 samples"
    assert wav.eps_label(wav.eps[0]) == "2 samples" and wav.eps_label(1 / 257) == "1 sample"
    assert [wav.eps_in_unit(e) for e in wav.eps] == [2.0, 4.0, 8.0] and g.eps_in_unit(2.0) == 2.0
    assert "1 sample was dropped" in wav.report_notes[0]
    assert wav.onnx_attacks == [] and len(wav.models) == 8  # the log-mel grid's models
    lm = load_grid(REPO / "configs" / "reproduce" / "speech_commands_logmel.yaml")
    assert [wav.run_config(m, "full") for m in wav.models] == [lm.run_config(m, "full") for m in lm.models]


def test_seeds_expand_a_model_entry_into_variants_sharing_its_n(tmp_path):
    grid = tiny_grid()
    grid["models"][0]["seeds"] = [1, 2]
    grid["budgets"]["quick"]["attack_n"] = {"default": 7, "qnn_int4_jr": 20}
    g = load_grid(write_grid(tmp_path / "g", grid) / "cifar10.yaml")
    assert [m.key for m in g.models] == ["qnn_int4_jr", "qnn_int4_jr_s1", "qnn_int4_jr_s2", "resnet", "qnn_float"]
    s2 = g.model("qnn_int4_jr_s2")
    assert (s2.role, s2.group, s2.seed, s2.label) == ("variant", "qnn_int4_jr", 2, "proposed, seed 2")
    assert g.model("qnn_int4_jr").seed == 0 and g.model("resnet").group == "resnet"
    cfg, base = g.run_config(s2, "quick"), g.run_config(g.model("qnn_int4_jr"), "quick")
    assert cfg.seed == 2 and base.seed == 0 and cfg.jr == base.jr and cfg.model == base.model
    assert g.attack_n("quick", "qnn_int4_jr_s2") == 20 and g.attack_n("quick", "resnet") == 7
    grid["budgets"]["quick"]["epochs"] = {"default": 2, "qnn_int4_jr": 5}  # per model, seeds share it
    g = load_grid(write_grid(tmp_path / "g", grid) / "cifar10.yaml")
    assert [g.run_config(m, "quick").train.epochs for m in g.models] == [5, 5, 5, 2, 2]
    for bad, msg in (([0], "other than the entry's own seed"), ([1, 1], "distinct"), (["a"], "integers")):
        grid["models"][0]["seeds"] = bad
        with pytest.raises(ConfigError, match=msg):
            load_grid(write_grid(tmp_path / "g", grid) / "cifar10.yaml")


def test_skip_attacks_of_a_budget(tmp_path):
    grid = tiny_grid()
    grid["budgets"]["quick"]["skip_attacks"] = ["square"]
    g = load_grid(write_grid(tmp_path / "ok", grid) / "cifar10.yaml")
    assert g.attacks_for("quick") == (["fgsm", "pgd"], ["transfer"])
    grid["budgets"]["quick"]["skip_attacks"] = ["squares"]
    with pytest.raises(ConfigError, match="skip_attacks: unknown attack 'squares'"):
        load_grid(write_grid(tmp_path / "bad", grid) / "cifar10.yaml")


def test_bad_model_config_in_grid_names_the_model(tmp_path):
    grid = tiny_grid()
    grid["models"][1]["config"]["model"]["quant"] = {"weight": "int9"}
    folder = write_grid(tmp_path / "g", grid)
    with pytest.raises(ConfigError, match="model resnet: model.quant.weight: 'int9'"):
        load_grid(folder / "cifar10.yaml")


@pytest.mark.slow  # trains and attacks real (tiny) models: 20-50 s on 2 cores
def test_reproduce_end_to_end_then_resume(fake_cifar, tmp_path, capsys, monkeypatch):
    folder = write_grid(tmp_path / "grids", tiny_grid())
    out = tmp_path / "out"
    args = [
        "reproduce",
        "--dataset",
        "cifar10",
        "--budget",
        "quick",
        "--out",
        str(out),
        "--grid-dir",
        str(folder),
        "--quiet",
    ]
    assert main(args) == 0
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out

    for key in ("qnn_int4_jr", "resnet", "qnn_float"):
        assert (out / "runs" / key / "model.safetensors").is_file()
        res = json.loads((out / "attacks" / key / "robustness.json").read_text())
        assert res["n"] == 12 and set(res["eps"]) == {2.0, 8.0}
        assert "masking_checks" in res
    # one transfer per surrogate, never from a model onto itself, and transfers last in the cascade
    faced = {
        k: list(json.loads((out / "attacks" / k / "robustness.json").read_text())["attacks"])
        for k in ("qnn_int4_jr", "resnet", "qnn_float")
    }
    assert faced["qnn_int4_jr"][-2:] == ["transfer@qnn_float", "transfer@resnet"]
    assert "transfer@qnn_float" not in faced["qnn_float"] and "transfer@resnet" in faced["qnn_float"]
    assert "transfer@resnet" not in faced["resnet"] and "transfer@qnn_float" in faced["resnet"]
    # every model saw the same images
    hashes = {
        json.loads((out / "attacks" / k / "robustness.json").read_text())["meta"]["subset"]["indices_sha1"]
        for k in ("qnn_int4_jr", "resnet", "qnn_float")
    }
    assert len(hashes) == 1
    # the proposed model's exported file was verified and attacked
    assert (out / "runs" / "qnn_int4_jr" / "model.onnx.verify.json").is_file()
    onnx = json.loads((out / "attacks" / "qnn_int4_jr" / "robustness_onnx.json").read_text())
    assert set(onnx["attacks"]) == {"square"} and "exported file" in onnx["meta"]["target"]

    # the exported file gives no gradients: white-box attacks on it are refused with one line
    run = out / "runs" / "qnn_int4_jr"
    capsys.readouterr()
    assert main(["attack", "--run", str(run), "--onnx", str(run / "model.onnx"), "--attacks", "pgd", "--n", "5"]) == 2
    assert "white-box attacks pgd cannot run on it" in capsys.readouterr().err

    md = (out / "report.md").read_text()
    for section in (
        "## Headline",
        "**fgsm, pgd, square**",
        "Left out of the common set",
        "## Models",
        "## Gradient-masking checks",
        "## Memory footprint",
        "## Does robustness carry over",
        "### pgd",
        "### transfer@resnet",
        "+8.3",
        "mlc_dscnn",
        "Newcombe",
    ):
        assert section in md, section
    page = (out / "report.html").read_text()
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page
    assert (out / "accuracy_vs_eps.png").is_file() and (out / "pareto_eps2.png").is_file()
    assert "## Robustness vs memory: Pareto front" in md
    report = json.loads((out / "report.json").read_text())
    assert report["comparison"]["common"] == ["fgsm", "pgd", "square"]
    assert {d["other"] for d in report["comparison"]["deltas"]} == {"resnet", "qnn_float"}
    assert report["tables"]["paper"]["rows"][0][-1] == "+8.3"

    # resume: nothing is trained or attacked again, and the report is the same
    import tinyrobust.attacks.runner as runner
    import tinyrobust.train.loop as loop

    def forbidden(*a, **k):
        raise AssertionError("finished work was redone")

    monkeypatch.setattr(runner, "_generate", forbidden)
    monkeypatch.setattr(loop, "_train_run", forbidden)
    before = {k: v for k, v in json.loads((out / "report.json").read_text())["tables"].items() if k != "footprint"}
    assert main(args) == 0
    after = {k: v for k, v in json.loads((out / "report.json").read_text())["tables"].items() if k != "footprint"}
    assert before == after

    # a fresh clone of committed results has robustness.json but no resume parts (not committed): the
    # results that match their call are kept, nothing is attacked, masking-probed or exported again
    import functools
    import shutil

    import tinyrobust.attacks.evaluate as evaluate

    for parts in out.glob("attacks/*/robustness_parts*"):
        shutil.rmtree(parts)
    monkeypatch.setattr(evaluate, "attack_run", functools.wraps(evaluate.attack_run)(forbidden))
    capsys.readouterr()
    assert main(args) == 0
    assert "robustness.json is up to date" in capsys.readouterr().err
    again = {k: v for k, v in json.loads((out / "report.json").read_text())["tables"].items() if k != "footprint"}
    assert again == before

    # ... and a result is kept only for the very call that made it
    from tinyrobust.attacks.evaluate import result_is_current

    path = out / "attacks" / "resnet" / "robustness.json"
    got = json.loads(path.read_text())
    call = dict(
        run_dir=out / "runs" / "resnet",
        attacks=got["attack_order"],
        eps=got["eps"],
        n=got["n"],
        seed=0,
        cascade=bool(got["cascade"]),
        surrogate_runs={"qnn_float": out / "runs" / "qnn_float"},
        params={"pgd": {"steps": got["attacks"]["pgd"]["params"]["steps"]}},
    )
    assert result_is_current(path, **call)
    for change in (
        {"n": got["n"] + 1},
        {"seed": 1},
        {"eps": got["eps"][:1]},
        {"attacks": got["attack_order"][::-1]},
        {"params": {"pgd": {"steps": 999}}},
        {"params": {"masking": {"many_steps": 999}}},
        {"cascade": not got["cascade"]},
        {"surrogate_runs": {"qnn_float": out / "runs" / "qnn_int4_jr"}},
        {"run_dir": out / "runs" / "qnn_float"},
    ):
        assert not result_is_current(path, **{**call, **change}), change

    # the grid changed after training: the old runs are not reused under the new settings
    grid = tiny_grid()
    grid["budgets"]["quick"]["epochs"] = 3
    write_grid(folder, grid)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "was trained with another config than the grid's model 'qnn_int4_jr'" in err
    assert "train.epochs: 2 -> 3" in err and "remove that folder to train it again" in err


@pytest.mark.slow  # trains and attacks real (tiny) models: 20-50 s on 2 cores
def test_reproduce_resumes_a_killed_attack_stage(fake_cifar, tmp_path, monkeypatch):
    """A kill during attacks keeps the finished attacks: only the rest is computed again."""
    folder = write_grid(
        tmp_path / "grids",
        tiny_grid(
            models=tiny_grid()["models"][:2],
            surrogates=[],
            attacks={"white": ["fgsm", "pgd"], "black": ["square"]},
            onnx_attacks=[],
        ),
    )
    out = tmp_path / "out"
    args = [
        "reproduce",
        "--dataset",
        "cifar10",
        "--budget",
        "quick",
        "--out",
        str(out),
        "--grid-dir",
        str(folder),
        "--quiet",
    ]
    assert main(args[:] + ["--stages", "train"]) == 0

    import tinyrobust.attacks.runner as runner

    real = runner._generate
    calls = []

    def dies_on_square(spec, *a, **k):
        if spec.name == "square":
            raise KeyboardInterrupt  # stands in for a kill in the middle of the attack stage
        calls.append(spec.name)
        return real(spec, *a, **k)

    monkeypatch.setattr(runner, "_generate", dies_on_square)
    assert main(args + ["--stages", "attack"]) == 130
    assert calls == ["fgsm", "fgsm", "pgd", "pgd"]  # both eps of fgsm and pgd of the first model finished
    parts = out / "attacks" / "qnn_int4_jr" / "robustness_parts"
    assert (parts / "fgsm.json").is_file() and (parts / "pgd.json").is_file()

    calls.clear()
    monkeypatch.setattr(runner, "_generate", lambda spec, *a, **k: (calls.append(spec.name), real(spec, *a, **k))[1])
    assert main(args) == 0
    # the first model redoes only square (and the masking probes, which come after it); the second runs all
    first = calls[: calls.index("square") + 2]
    assert "fgsm" not in first[:2] and calls.count("fgsm") == 2
    assert (out / "report.md").is_file()


def test_reproduce_jobs_starts_one_thread_workers_and_names_a_failed_one(tmp_path, capsys, monkeypatch):
    """``--jobs 2``: two worker processes of one thread each run train+attack on the same model list
    (tagged job 1 / job 2); a worker that fails fails the call with one line naming it; --jobs 0 is refused."""
    import tinyrobust.reproduce.pipeline as pipeline

    folder = write_grid(tmp_path / "grids", tiny_grid())
    started = []

    class FakeWorker:
        def __init__(self, cmd, env):
            started.append((cmd, env))
            self.code = 0 if len(started) == 1 else 3

        def wait(self):
            return self.code

        def poll(self):
            return self.code

    monkeypatch.setattr(pipeline, "_start_worker", FakeWorker)
    out = tmp_path / "o"
    base = ["reproduce", "--dataset", "cifar10", "--out", str(out), "--grid-dir", str(folder), "--quiet"]
    code = main(base + ["--jobs", "2", "--stages", "train,attack,report", "--models", "resnet,qnn_float"])
    err = capsys.readouterr().err
    assert code == 2 and "error: reproduce worker job 2 failed" in err.strip().splitlines()[-1]
    assert len(started) == 2
    for j, (cmd, env) in enumerate(started, 1):
        assert cmd[1:4] == ["-m", "tinyrobust", "reproduce"]
        assert cmd[cmd.index("--stages") + 1] == "train,attack"  # the report is written once, by the caller
        assert cmd[cmd.index("--models") + 1] == "resnet,qnn_float"
        assert Path(cmd[cmd.index("--runs-dir") + 1]) == out / "runs"
        assert env["TINYROBUST_THREADS"] == env["OMP_NUM_THREADS"] == "1" and env["TINYROBUST_REPRODUCE_JOB"] == str(j)
    assert not (out / "report.md").exists()
    assert main(base + ["--jobs", "0"]) == 2
    assert "--jobs must be a whole number >= 1, got 0" in capsys.readouterr().err


class FakeRay:
    """Enough of Ray for ``run_jobs_on_ray``: tasks run at once, in this process, through ``job``."""

    def __init__(self, codes):
        self.codes, self.inits, self.tasks, self.shut = list(codes), [], [], False

    def init(self, **kw):
        self.inits.append(kw)

    def remote(self, **opts):
        fake = self

        class Task:
            @staticmethod
            def remote(*args):
                fake.tasks.append((opts, args))
                return len(fake.tasks) - 1

        return lambda fn: Task

    def get(self, ref):
        code = self.codes[ref]
        if isinstance(code, Exception):
            raise code
        return code

    def cancel(self, ref, force=False):
        pass

    def shutdown(self):
        self.shut = True


def test_reproduce_jobs_on_a_ray_cluster(tmp_path, capsys, monkeypatch):
    """``--jobs 2 --address ...``: the workers are Ray tasks of one CPU each running the same worker
    command with absolute paths (a Ray worker may start elsewhere) and the caller's TINYROBUST_* settings;
    a task that dies fails the call naming it; an unreachable address, or no Ray, is one line."""
    import tinyrobust.reproduce.pipeline as pipeline

    folder = write_grid(tmp_path / "grids", tiny_grid())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TINYROBUST_DATA", "/data/here")
    fake = FakeRay([0, RuntimeError("node lost")])
    monkeypatch.setitem(sys.modules, "ray", fake)
    base = ["reproduce", "--dataset", "cifar10", "--out", "o", "--grid-dir", str(folder), "--quiet", "--jobs", "2"]
    assert main(base + ["--address", "local", "--stages", "train"]) == 2
    err = capsys.readouterr().err
    assert "node lost" in err and "error: reproduce worker job 2 failed" in err.strip().splitlines()[-1]
    assert fake.inits[0]["num_cpus"] == 2 and fake.shut
    assert [t[0] for t in fake.tasks] == [{"num_cpus": 1, "max_retries": 0}] * 2
    for j, (_, (args, job, cwd, env)) in enumerate(fake.tasks, 1):
        assert job == j and cwd == str(tmp_path) and env == {"TINYROBUST_DATA": "/data/here"}
        assert args[:3] == ["-m", "tinyrobust", "reproduce"] and args[args.index("--stages") + 1] == "train"
        assert args[args.index("--out") + 1] == str(tmp_path / "o")
        assert Path(args[args.index("--runs-dir") + 1]) == tmp_path / "o" / "runs"
    # what a task runs: the worker in its own process, one thread, tagged with its job number
    seen = {}
    monkeypatch.setattr(
        "subprocess.call", lambda cmd, env, cwd: seen.update(cmd=cmd, env=env, cwd=cwd) or 0, raising=True
    )
    assert pipeline.job_on_ray(["-m", "tinyrobust"], 2, str(tmp_path), {"TINYROBUST_DATA": "/d"}) == 0
    assert seen["cmd"] == [sys.executable, "-m", "tinyrobust"] and seen["cwd"] == str(tmp_path)
    assert seen["env"]["TINYROBUST_THREADS"] == "1" and seen["env"]["TINYROBUST_REPRODUCE_JOB"] == "2"
    assert seen["env"]["TINYROBUST_DATA"] == "/d"
    # bad addresses and no Ray: one line each, before any worker starts
    fake.tasks.clear()
    assert main(base + ["--address", "nowhere"]) == 2
    assert "--address nowhere: expected host:port" in capsys.readouterr().err
    assert main(base + ["--address", "127.0.0.1:1"]) == 2
    assert "--address 127.0.0.1:1: cannot reach the Ray cluster" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(base + ["--address", "local"]) == 2
    assert "Ray is not installed: pip install 'tinyrobust[sweep]'" in capsys.readouterr().err
    assert fake.tasks == []


@pytest.mark.slow  # starts a local Ray and trains two tiny models in two Ray tasks (skipped without Ray, as in CI)
def test_reproduce_jobs_on_a_real_local_ray(fake_cifar, tmp_path, capfd):
    """``--address local``: two real Ray tasks share the grid's train stage; every model trained once."""
    pytest.importorskip("ray")
    folder = write_grid(tmp_path / "grids", tiny_grid(onnx_attacks=[]))
    out = tmp_path / "out"
    args = ["reproduce", "--dataset", "cifar10", "--out", str(out), "--grid-dir", str(folder), "--quiet"]
    call = ["--jobs", "2", "--address", "local", "--stages", "train", "--models", "qnn_float,resnet"]
    assert main(args + call) == 0, capfd.readouterr().err
    for key in ("resnet", "qnn_float"):
        epochs = [json.loads(line)["epoch"] for line in (out / "runs" / key / "metrics.jsonl").read_text().splitlines()]
        assert sorted(set(epochs)) == sorted(epochs) and (out / "runs" / key / "summary.json").is_file()
    meta = json.loads((out / "reproduce.json").read_text())
    assert any(k.startswith("train(jobs=2) on Ray@") for k in meta["stage_seconds"])


@pytest.mark.slow  # trains and attacks three tiny models in two worker processes: ~40-60 s on 2 cores
def test_reproduce_jobs_two_workers_share_the_grid(fake_cifar, tmp_path, capfd):
    """Two real workers: every model trained once and attacked once, between them, then one report."""
    folder = write_grid(tmp_path / "grids", tiny_grid(onnx_attacks=[]))
    out = tmp_path / "out"
    args = ["reproduce", "--dataset", "cifar10", "--out", str(out), "--grid-dir", str(folder), "--quiet"]
    assert main(args + ["--jobs", "2"]) == 0
    err = capfd.readouterr().err
    assert "[reproduce job 1 " in err and "[reproduce job 2 " in err
    for key in ("qnn_int4_jr", "resnet", "qnn_float"):
        epochs = [json.loads(line)["epoch"] for line in (out / "runs" / key / "metrics.jsonl").read_text().splitlines()]
        assert sorted(set(epochs)) == sorted(epochs)  # no epoch trained twice by two workers
        assert json.loads((out / "attacks" / key / "robustness.json").read_text())["n"] == 12
    assert (out / "report.md").is_file()
    meta = json.loads((out / "reproduce.json").read_text())
    assert any(k.startswith("train+attack(jobs=2)@") for k in meta["stage_seconds"])
    before = dict(meta["stage_seconds"])
    assert main(args + ["--stages", "report"]) == 0  # a report-only call records no stage seconds
    assert json.loads((out / "reproduce.json").read_text())["stage_seconds"] == before


def test_reproduce_bad_input(tmp_path, capsys):
    assert main(["reproduce", "--dataset", "cifar10", "--budget", "huge", "--out", str(tmp_path / "o")]) == 2
    assert "unknown budget 'huge'" in capsys.readouterr().err
    assert main(["reproduce", "--dataset", "cifar10", "--grid-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no reproduce grid named 'cifar10'" in capsys.readouterr().err
    assert main(["reproduce", "--budget", "quick", "--out", str(tmp_path / "o")]) == 2  # neither
    assert "--dataset (its own grid) or --grid NAME" in capsys.readouterr().err
    assert main(["reproduce", "--dataset", "cifar10", "--grid", "cifar10", "--out", str(tmp_path / "o")]) == 2
    assert "one of the two" in capsys.readouterr().err
    assert main(["reproduce", "--grid", "nope", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no reproduce grid named 'nope'" in err and "cifar10_adversarial" in err


def test_adversarial_grid_builds_every_model_with_its_training_attack():
    """The adversarial-training grid (issue 13) loads, names CIFAR-10, and every model's config trains
    adversarially with a validation split; the JR variants add JR."""
    from tinyrobust.reproduce.pipeline import grid_path

    grid = load_grid(grid_path("cifar10_adversarial"))
    assert grid.dataset == "cifar10" and {"quick", "full"} <= set(grid.budgets)
    for m in grid.models:
        cfg = grid.run_config(m, "full")
        assert cfg.train.adversarial.method != "none" and cfg.data.val_size > 0, m.key
        assert (cfg.jr.weight > 0 or any(cfg.jr.layers.values())) == m.key.endswith("_jr"), m.key


def test_reproduce_models_option_picks_and_orders(tmp_path, capsys, monkeypatch):
    """``--models b,a`` trains only those grid models, in that order (two processes can share the grid
    between them); an unknown key is one error line listing the grid's keys."""
    import tinyrobust.train as train

    folder = write_grid(tmp_path / "grids", tiny_grid())
    trained = []
    monkeypatch.setattr(train, "train_run", lambda cfg, run_dir, **k: trained.append((cfg.name, run_dir.name)) or {})
    base = [
        "reproduce",
        "--dataset",
        "cifar10",
        "--out",
        str(tmp_path / "o"),
        "--grid-dir",
        str(folder),
        "--stages",
        "train",
        "--quiet",
    ]
    assert main(base + ["--models", "qnn_float,resnet"]) == 0
    assert trained == [("qnn_float", "qnn_float"), ("resnet", "resnet")]
    capsys.readouterr()
    code = main(base + ["--models", "resnet,resnet9"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "no model with key 'resnet9'; keys: qnn_int4_jr, resnet, qnn_float" in err


def test_reproduce_json_keeps_the_seconds_another_process_recorded_meanwhile(tmp_path, monkeypatch):
    """Two processes sharing a grid (``--models``) each record their stage seconds when they end, hours
    after they began: the record is re-read when written, so neither drops the other's entry."""
    import tinyrobust.train as train

    folder = write_grid(tmp_path / "grids", tiny_grid())
    out = tmp_path / "o"
    meta_path = out / "reproduce.json"

    def other_process_finishes(cfg, run_dir, **k):
        # while this call trains, another process sharing the grid ends and writes its record
        meta_path.write_text(json.dumps({"command": "other", "stage_seconds": {"train@other": 7.0}}))
        return {}

    monkeypatch.setattr(train, "train_run", other_process_finishes)
    args = ["reproduce", "--dataset", "cifar10", "--out", str(out), "--grid-dir", str(folder), "--quiet"]
    args += ["--stages", "train", "--models", "resnet"]
    monkeypatch.setattr(sys, "argv", ["tinyrobust", *args])  # the command is recorded from sys.argv
    assert main(args) == 0
    meta = json.loads(meta_path.read_text())
    assert meta["stage_seconds"]["train@other"] == 7.0
    assert [k for k in meta["stage_seconds"] if k != "train@other"][0].startswith("train@")
    assert meta["command"].endswith("--models resnet") and meta["dataset"] == "cifar10"


def test_reproduce_missing_dataset_names_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TINYROBUST_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("TINYROBUST_CACHE", str(tmp_path / "cache"))
    import tinyrobust.data.archive as archive

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(archive.urllib.request, "urlopen", offline)
    folder = write_grid(tmp_path / "g", tiny_grid())
    assert (
        main(["reproduce", "--dataset", "cifar10", "--out", str(tmp_path / "o"), "--grid-dir", str(folder), "--quiet"])
        == 2
    )
    err = capsys.readouterr().err
    assert "cifar" in err.lower() and "TINYROBUST_DATA" in err


def test_family_mean_over_the_attacks_that_ran():
    res = {"attacks": {"pgd": {"results": {"2": {"robust_accuracy": 0.5}, "8": {"robust_accuracy": 0.1}}}}}
    assert family_mean(res, ["pgd", "fgsm"], [2, 8]) == pytest.approx(0.3)
    assert family_mean(None, ["pgd"], [2]) is None


def test_grid_per_model_attack_n_and_cascade_order(tmp_path):
    grid = tiny_grid()
    grid["budgets"]["quick"]["attack_n"] = {"default": 7, "qnn_int4_jr": 20}
    g = load_grid(write_grid(tmp_path / "g", grid) / "cifar10.yaml")
    assert g.attack_n("quick", "qnn_int4_jr") == 20 and g.attack_n("quick", "resnet") == 7 and g.cascade("quick")
    assert g.model_attacks("quick", "qnn_int4_jr") == ["fgsm", "pgd", "square", "transfer@qnn_float", "transfer@resnet"]
    assert g.model_attacks("quick", "resnet") == ["fgsm", "pgd", "square", "transfer@qnn_float"]
    assert g.model_attacks("quick", "qnn_int4_jr", ready=["resnet"]) == ["fgsm", "pgd", "square", "transfer@resnet"]


def test_attack_stage_passes_surrogates_cascade_and_per_model_n(tmp_path, monkeypatch):
    """reproduce hands attack_run one transfer@<key> per other surrogate, the cascade flag, the model's own n
    and the transfer settings for every transfer entry; a model waits until its surrogates are trained."""
    import tinyrobust.attacks.evaluate as evaluate
    from tinyrobust.reproduce.pipeline import attack_stage

    grid = tiny_grid()
    grid["budgets"]["quick"]["attack_n"] = {"default": 7, "qnn_int4_jr": 20}
    grid["budgets"]["quick"]["attack_params"]["transfer"] = {"steps": 3}
    grid["onnx_attacks"] = []
    g = load_grid(write_grid(tmp_path / "g", grid) / "cifar10.yaml")
    out = tmp_path / "out"
    for key in ("qnn_int4_jr", "qnn_float"):  # resnet (a surrogate) not trained yet
        (out / "runs" / key).mkdir(parents=True)
        (out / "runs" / key / "model.safetensors").write_bytes(b"w")
    calls = []

    def fake_attack_run(
        run_dir,
        attacks,
        eps,
        n=1000,
        seed=0,
        data_dir=None,
        out=None,
        surrogate_run=None,
        params=None,
        *,
        progress=True,
        surrogate_runs=None,
        cascade=False,
        **kw,
    ):
        calls.append(
            (
                Path(run_dir).name,
                list(attacks),
                n,
                {k: Path(v).name for k, v in surrogate_runs.items()},
                cascade,
                params,
            )
        )
        return {}

    monkeypatch.setattr(evaluate, "attack_run", fake_attack_run)
    attack_stage(g, "quick", out, None, 0, progress=False)
    assert calls == []  # both trained models wait for the resnet surrogate
    (out / "runs" / "resnet").mkdir(parents=True)
    (out / "runs" / "resnet" / "model.safetensors").write_bytes(b"r")
    attack_stage(g, "quick", out, None, 0, progress=False)
    first = calls[0]
    assert first[:5] == (
        "qnn_int4_jr",
        ["fgsm", "pgd", "square", "transfer@qnn_float", "transfer@resnet"],
        20,
        {"qnn_float": "qnn_float", "resnet": "resnet"},
        True,
    )
    assert first[5]["transfer@qnn_float"] == {"steps": 3} and "transfer" not in first[5]
    assert [c[0] for c in calls] == ["qnn_int4_jr", "resnet", "qnn_float"]
    assert calls[2][1][-1] == "transfer@resnet" and calls[2][2] == 7 and calls[2][3] == {"resnet": "resnet"}


def test_attack_stage_skips_a_model_another_worker_holds_and_logs_only_that(tmp_path, monkeypatch, capsys):
    """With --jobs, a model whose attack lock another process holds is logged as skipped, never as started."""
    import tinyrobust.attacks.evaluate as evaluate
    from tinyrobust.reproduce.pipeline import attack_stage
    from tinyrobust.rundir import run_lock

    grid = tiny_grid()
    grid["onnx_attacks"] = []
    g = load_grid(write_grid(tmp_path / "g", grid) / "cifar10.yaml")
    out = tmp_path / "out"
    for key in ("qnn_int4_jr", "qnn_float", "resnet"):
        (out / "runs" / key).mkdir(parents=True)
        (out / "runs" / key / "model.safetensors").write_bytes(b"w")
    calls = []

    def fake_attack_run(run_dir, attacks, eps, *, surrogate_runs=None, cascade=False, **kw):
        calls.append(Path(run_dir).name)
        return {}

    monkeypatch.setattr(evaluate, "attack_run", fake_attack_run)
    capsys.readouterr()
    with run_lock(out / "attacks" / "resnet"):  # another worker attacks resnet
        attack_stage(g, "quick", out, None, 0, progress=False)
    err = capsys.readouterr().err
    assert calls == ["qnn_int4_jr", "qnn_float"]
    lines = [line.split("] ", 1)[-1] for line in err.splitlines()]
    resnet_lines = [line for line in lines if line.startswith("attack") and " resnet" in line]
    assert len(resnet_lines) == 1 and "skipped" in resnet_lines[0] and "another tinyrobust process" in resnet_lines[0]
    assert "qnn_int4_jr: fgsm" in err


def test_attack_stage_in_a_worker_takes_one_eps_of_one_model_at_a_time(tmp_path, monkeypatch, capsys):
    """In a --jobs worker the units are (model, eps): each eps of each model is one parts-only call under
    its own lock (a unit another worker holds is left to it), then each model's robustness.json is written
    by a call with every eps, which waits until the other worker's unit of that model is done."""
    import threading

    import tinyrobust.attacks.evaluate as evaluate
    from tinyrobust.attacks.runner import eps_key
    from tinyrobust.reproduce.pipeline import JOB_ENV, attack_stage
    from tinyrobust.rundir import LOCK_FILE, run_lock

    grid = tiny_grid()
    grid["onnx_attacks"] = []
    g = load_grid(write_grid(tmp_path / "g", grid) / "cifar10.yaml")
    assert len(g.eps) == 2
    out = tmp_path / "out"
    for key in ("qnn_int4_jr", "qnn_float", "resnet"):
        (out / "runs" / key).mkdir(parents=True)
        (out / "runs" / key / "model.safetensors").write_bytes(b"w")
    calls, released = [], threading.Event()

    def fake_attack_run(run_dir, attacks, eps, *, surrogate_runs=None, cascade=False, parts_only=False, **kw):
        calls.append((Path(run_dir).name, list(eps), parts_only, released.is_set()))
        return {}

    monkeypatch.setattr(evaluate, "attack_run", fake_attack_run)
    monkeypatch.setenv(JOB_ENV, "2")
    e0, e1 = g.eps
    unit = f"{LOCK_FILE}-eps{eps_key(e1)}"
    held = threading.Event()

    def other_worker():  # holds resnet's second eps for a moment
        with run_lock(out / "attacks" / "resnet", name=unit):
            held.set()
            time.sleep(0.5)
            released.set()

    t = threading.Thread(target=other_worker)
    t.start()
    held.wait()
    attack_stage(g, "quick", out, None, 0, progress=False)
    t.join()
    units = [c[:3] for c in calls if c[2]]
    assert units == [
        ("qnn_int4_jr", [e0], True),
        ("qnn_int4_jr", [e1], True),
        ("resnet", [e0], True),  # resnet at e1: the other worker's unit
        ("qnn_float", [e0], True),
        ("qnn_float", [e1], True),
    ]
    whole = [c for c in calls if not c[2]]
    assert [c[:2] for c in whole] == [(k, [e0, e1]) for k in ("qnn_int4_jr", "resnet", "qnn_float")]
    assert whole[1][3]  # resnet's file was written only after the other worker's unit was done


def _shipped_grid_with_tiny_budget(dataset: str, folder: Path, attack_n: int = 8) -> Path:
    """The shipped grid of ``dataset`` (same models, attacks and roles) with a seconds-scale budget."""
    grid = shipped_grid_with_tiny_budget(dataset, attack_n)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{dataset}.yaml").write_text(yaml.safe_dump(grid, sort_keys=False))
    return folder


@pytest.mark.slow  # trains and attacks real (tiny) models: 20-50 s on 2 cores
def test_reproduce_speech_commands_runs_every_attack_in_the_feature_domain(tmp_path, monkeypatch, capsys):
    from conftest import make_speech_folder

    speech = make_speech_folder(tmp_path / "data")
    monkeypatch.setenv("TINYROBUST_DATA", str(speech["root"].parent))
    monkeypatch.setenv("TINYROBUST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TINYROBUST_THREADS", "1")
    folder = _shipped_grid_with_tiny_budget("speech_commands", tmp_path / "grids")
    out = tmp_path / "out"
    assert (
        main(
            [
                "reproduce",
                "--dataset",
                "speech_commands",
                "--budget",
                "tiny",
                "--out",
                str(out),
                "--grid-dir",
                str(folder),
                "--quiet",
            ]
        )
        == 0
    )
    grid = load_grid(folder / "speech_commands.yaml")
    proposed = next(m.key for m in grid.models if m.role == "proposed")
    res = json.loads((out / "attacks" / proposed / "robustness.json").read_text())
    assert list(res["attacks"]) == grid.model_attacks("tiny", proposed)  # every attack ran on audio
    assert res["meta"]["data_kind"] == "audio" and "feature domain" in res["meta"]["threat_model"]
    md = (out / "report.md").read_text()
    assert "speech_commands" in md and "+79.5" in md and "mlc_dscnn" in md and "feature domain" in md


@pytest.mark.slow  # trains and attacks real (tiny) models: 20-50 s on 2 cores
def test_reproduce_svhn_end_to_end(tmp_path, monkeypatch):
    import numpy as np
    import scipy.io

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("test", 30)):
        y = np.arange(n) % 10 + 1  # labels 1..10, 10 means digit 0
        x = np.zeros((32, 32, 3, n), np.uint8)
        for i, label in enumerate(y):  # a learnable pattern per class
            x[:, :, label % 3, i] = 40 + 20 * label
            x[..., i] += rng.integers(0, 20, (32, 32, 3), dtype=np.uint8)
        scipy.io.savemat(data / f"{split}_32x32.mat", {"X": x, "y": y.reshape(-1, 1)})
    monkeypatch.setenv("TINYROBUST_DATA", str(data))
    monkeypatch.setenv("TINYROBUST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TINYROBUST_THREADS", "1")
    grid = yaml.safe_load((REPO / "configs" / "reproduce" / "svhn.yaml").read_text())
    grid["models"] = [m for m in grid["models"] if m["role"] in ("proposed", "reference", "float")]
    grid["attacks"] = {"white": ["fgsm", "pgd"], "black": ["square", "transfer"]}
    grid["onnx_attacks"] = []
    grid["base"]["train"] = {**grid["base"].get("train", {}), "threads": 1, "batch_size": 10}
    grid["budgets"] = {
        "tiny": {
            "epochs": 1,
            "attack_n": 10,
            "attack_params": {
                "pgd": {"steps": 2},
                "square": {"queries": 10},
                "masking": {"few_steps": 2, "many_steps": 3},
            },
        }
    }
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "svhn.yaml").write_text(yaml.safe_dump(grid, sort_keys=False))
    out = tmp_path / "out"
    assert (
        main(
            [
                "reproduce",
                "--dataset",
                "svhn",
                "--budget",
                "tiny",
                "--out",
                str(out),
                "--grid-dir",
                str(tmp_path / "g"),
                "--quiet",
            ]
        )
        == 0
    )
    md = (out / "report.md").read_text()
    assert "svhn" in md and "+6.5" in md and "svhn/train_32x32.mat" not in md  # the source named is the test file
    assert "test_32x32.mat" in md or "train_32x32.mat" in md


@pytest.mark.slow  # trains and attacks real (tiny) models: 20-50 s on 2 cores
def test_attack_into_an_unwritable_folder_fails_before_attacking(fake_cifar, tmp_path, capsys, monkeypatch):
    folder = write_grid(tmp_path / "grids", tiny_grid(models=tiny_grid()["models"][:2], surrogates=[], onnx_attacks=[]))
    out = tmp_path / "out"
    assert (
        main(
            [
                "reproduce",
                "--dataset",
                "cifar10",
                "--budget",
                "quick",
                "--out",
                str(out),
                "--grid-dir",
                str(folder),
                "--quiet",
                "--stages",
                "train",
            ]
        )
        == 0
    )
    import tinyrobust.attacks.runner as runner

    monkeypatch.setattr(runner, "_generate", lambda *a, **k: (_ for _ in ()).throw(AssertionError("attacked")))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert (
        main(
            [
                "attack",
                "--run",
                str(out / "runs" / "resnet"),
                "--attacks",
                "pgd",
                "--n",
                "4",
                "--out",
                str(blocker / "sub"),
            ]
        )
        == 2
    )
    assert "is not writable" in capsys.readouterr().err


def test_attack_stage_refuses_an_attack_run_without_the_new_arguments(tmp_path, monkeypatch):
    """Until the attack side takes surrogate_runs/cascade, a grid that needs them fails in one clear line."""
    import tinyrobust.attacks.evaluate as evaluate
    from tinyrobust.reproduce.pipeline import attack_stage

    g = load_grid(write_grid(tmp_path / "g", tiny_grid(onnx_attacks=[])) / "cifar10.yaml")
    out = tmp_path / "out"
    for key in ("qnn_int4_jr", "resnet", "qnn_float"):
        (out / "runs" / key).mkdir(parents=True)
        (out / "runs" / key / "model.safetensors").write_bytes(b"w")

    def old_attack_run(run_dir, attacks, eps, n=1000, seed=0, data_dir=None, out=None, surrogate_run=None, params=None):
        raise AssertionError("called")

    monkeypatch.setattr(evaluate, "attack_run", old_attack_run)
    with pytest.raises(TinyRobustError, match="takes no surrogate_runs/cascade"):
        attack_stage(g, "quick", out, None, 0, progress=False)


def test_recorded_paths_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    from tinyrobust.reproduce.pipeline import portable

    monkeypatch.chdir(tmp_path)
    assert portable(tmp_path / "results" / "cifar10") == "results/cifar10"
    assert portable("results/x") == "results/x" and portable("--quiet") == "--quiet"
    assert portable("/elsewhere/out") == "/elsewhere/out"  # outside the working directory: kept as given


def test_attack_stage_offers_the_owning_grids_result_of_a_shared_run(tmp_path, monkeypatch):
    """A grid that trains into another grid's runs folder (``runs_dir``) hands attack_run that grid's
    result of the same model as a prior (attack_run takes only the units it provably shares); a model
    the owner has not attacked, and the owner grid itself, get none."""
    import tinyrobust.attacks.evaluate as evaluate
    from tinyrobust.reproduce.pipeline import attack_stage

    grid = tiny_grid()
    grid["onnx_attacks"] = []
    g = load_grid(write_grid(tmp_path / "g", grid) / "cifar10.yaml")
    owner = tmp_path / "owner"
    for key in ("qnn_int4_jr", "qnn_float", "resnet"):
        (owner / "runs" / key).mkdir(parents=True)
        (owner / "runs" / key / "model.safetensors").write_bytes(key.encode())
    (owner / "attacks" / "qnn_float").mkdir(parents=True)
    (owner / "attacks" / "qnn_float" / "robustness.json").write_text("{}")
    calls = {}

    def fake_attack_run(run_dir, attacks, eps, *, surrogate_runs=None, cascade=False, prior_path=None, **kw):
        calls[Path(run_dir).name] = prior_path
        return {}

    monkeypatch.setattr(evaluate, "attack_run", fake_attack_run)
    g.runs_dir = "../owner/runs"
    (tmp_path / "sharer").mkdir()
    attack_stage(g, "quick", tmp_path / "sharer", None, 0, progress=False)
    assert calls == {
        "qnn_int4_jr": None,
        "resnet": None,
        "qnn_float": owner / "attacks/qnn_float/robustness.json",
    }
    calls.clear()
    g.runs_dir = "runs"
    attack_stage(g, "quick", owner, None, 0, progress=False)  # the owner itself: its own file is no prior
    assert calls == {"qnn_int4_jr": None, "resnet": None, "qnn_float": None}
