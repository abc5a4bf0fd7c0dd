"""DMSL modes are registered specs: a new mode built from the existing parts is one register_mode call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import make_tuple_folder

from histomag.errors import ConfigError
from histomag.dmsl.network import MultiMagNet
from histomag.dmsl.similarity import DMSLLoss
from histomag.dmsl.modes import MODE_SPECS, ModeSpec, get_mode, mode_names, register_mode

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def toy_mode():
    """A SIM mode with one head on concatenated features: a combination no built-in mode has."""
    spec = register_mode(ModeSpec("toy-concat-sim", "ToySim", "toy with SIM", uses_sim=True, head="concat"))
    yield spec
    MODE_SPECS.unregister(spec.name)


def test_builtin_modes_are_registered_with_their_parts() -> None:
    assert mode_names() == ["sim", "mm", "single", "mscn"]
    assert get_mode("sim").uses_sim and not get_mode("mm").uses_sim
    assert get_mode("single").single and get_mode("mscn").head == "concat"
    assert get_mode("mscn").tuple_mode == "context" and get_mode("sim").tuple_mode == "same-fov"
    with pytest.raises(ConfigError, match="unknown mode 'dmsl'; valid names: mm, mscn, sim, single"):
        get_mode("dmsl")
    with pytest.raises(ConfigError, match="registered twice"):
        register_mode(ModeSpec("sim", "again", "again"))
    with pytest.raises(ConfigError, match="one per-branch head and no SIM"):
        ModeSpec("bad", "Bad", "bad", single=True, uses_sim=True)


def test_a_registered_toy_mode_builds_trains_and_is_named_in_tables(toy_mode: ModeSpec, tmp_path: Path) -> None:
    from histomag.dmsl.cv import cross_validate
    from histomag.dmsl.config import DMSLConfig

    net = MultiMagNet("tiny", 2, (40, 20), mode=toy_mode.name)
    assert len(net.heads) == 1 and net.heads[0].in_features == 2 * net.branches[0].num_features
    assert DMSLLoss.for_mode(toy_mode.name).use_sim
    with pytest.raises(ConfigError, match="learned"):  # one concatenated head: nothing to fuse
        MultiMagNet("tiny", 2, (40, 20), mode=toy_mode.name, fusion="learned")
    x = [torch.rand(2, 3, 64, 64), torch.rand(2, 3, 32, 32)]
    assert torch.allclose(net(x)["probs"].sum(1), torch.ones(2))

    data = make_tuple_folder(tmp_path / "data", patients=4, per_class=3)
    config = DMSLConfig(mode=toy_mode.name, backbone="tiny", batch_size=8, epochs=1, folds=2, num_workers=0)
    result = cross_validate(data, tmp_path / "run", config, progress=False)
    assert "| ToySim (tiny) | 40x+20x | toy-concat-sim | patch |" in result.table
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["mode"] == toy_mode.name
