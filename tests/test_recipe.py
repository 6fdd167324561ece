"""`make default-model`'s recipe: every step is a valid trainer command, steps run in order, an interrupted
recipe resumes where it stopped, and it never silently starts from a published model.

The trainer itself is covered by test_training*.py; here a recording runner stands in for it (each step is hours
of CPU training), so what is tested is the recipe's own logic.
"""

from __future__ import annotations

import json

import pytest

from medplib.training import default_model, recipe


def test_every_step_is_a_valid_trainer_command():
    parser = default_model.build_parser()
    for step in recipe.STEPS:
        args = parser.parse_args(recipe.step_argv(step, "studies", "out", "atlas"))
        default_model.train_config(args)  # raises on inconsistent options (e.g. the neck without LiteMedSAM)
        assert args.name == step.name and args.model_dir == "out"
        assert (args.extra_studies == ["atlas"]) == step.needs_atlas
    names = [s.name for s in recipe.STEPS]
    assert len(set(names)) == len(names)


@pytest.fixture
def atlas(tmp_path):
    folder = tmp_path / "atlas"
    folder.mkdir()
    (folder / "datastore_v2.json").write_text("{}")
    return str(folder)


class Stopped(Exception):
    pass


def test_steps_run_in_order_and_resume_after_an_interruption(tmp_path, atlas):
    calls: list[str] = []
    stop_at = [recipe.STEPS[3].name]  # stopped once, there

    def runner(argv):
        name = argv[argv.index("--name") + 1]
        calls.append(name)
        if name in stop_at:
            stop_at.clear()
            raise Stopped  # the user stops the long run
        return {"best_val_score": 0.5}

    out = str(tmp_path / "models")
    with pytest.raises(Stopped):
        recipe.run_recipe("studies", out, atlas, runner=runner)
    assert calls == [s.name for s in recipe.STEPS[:4]]
    done = json.loads((tmp_path / "models" / recipe.DONE_FILE).read_text())
    assert list(done) == [s.name for s in recipe.STEPS[:3]]

    calls.clear()
    ran = recipe.run_recipe("studies", out, atlas, runner=runner)
    assert ran == calls == [s.name for s in recipe.STEPS[3:]]  # the interrupted step again (it resumes itself)
    assert recipe.run_recipe("studies", out, atlas, runner=runner) == []
    assert recipe.run_recipe("studies", out, atlas, only=["lite"], runner=runner) == ["lite"]


def test_refuses_to_start_from_an_already_published_model(tmp_path, atlas):
    (tmp_path / "small").mkdir()
    with pytest.raises(FileExistsError, match="empty --model-dir"):
        recipe.run_recipe("studies", str(tmp_path), atlas, runner=lambda argv: {})


def test_missing_atlas_data_is_named(tmp_path):
    done = {s.name: {} for s in recipe.STEPS if not s.needs_atlas}
    (tmp_path / recipe.DONE_FILE).write_text(json.dumps(done))
    with pytest.raises(FileNotFoundError, match="make atlas-data"):
        recipe.run_recipe("studies", str(tmp_path), str(tmp_path / "nowhere"), runner=lambda argv: {})


def test_install_needs_every_step(tmp_path):
    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "delta.safetensors").write_bytes(b"x")
    target = tmp_path / "embedded"
    target.mkdir()
    with pytest.raises(RuntimeError, match="not done"):
        recipe.install(tmp_path, target)
    (tmp_path / recipe.DONE_FILE).write_text(json.dumps({s.name: {} for s in recipe.STEPS}))
    recipe.install(tmp_path, target)
    assert (target / "delta.safetensors").read_bytes() == b"x"
