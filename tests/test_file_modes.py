"""Files the run saves through other libraries get the mode the umask asks for (0644 under 022):
safetensors writes every file 0600, through a private temporary file."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from cogvx_ext.base.io import files_under, give_umask_modes
from cogvx_ext.script.seams.checkpoints import _save_state_with_umask_modes


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def modes(folder) -> dict[str, str]:
    return {
        os.path.relpath(path, folder): oct(stat.S_IMODE(os.stat(path).st_mode))
        for path in files_under(folder)
    }


def test_a_checkpoint_that_accelerate_saves_with_safetensors_is_readable_by_teammates(tmp_path, umask_022):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    accelerator = Accelerator(cpu=True)
    try:
        model = accelerator.prepare(torch.nn.Linear(4, 4))
        optimizer = accelerator.prepare(torch.optim.SGD(model.parameters(), lr=0.1))
        assert optimizer is not None
        accelerator.save_state(str(tmp_path / "stock"))  # the model's weights, as accelerate saves them
        stock = modes(tmp_path / "stock")
        assert stock["model.safetensors"] == "0o600"  # what this test is about: safetensors' private file
        accelerator.save_state = _save_state_with_umask_modes(accelerator.save_state)
        accelerator.save_state(str(tmp_path / "ours"))
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    ours = modes(tmp_path / "ours")
    assert set(ours) == set(stock) and "optimizer.bin" in ours
    assert ours == {name: "0o644" for name in ours}


def test_only_the_files_a_save_wrote_change(tmp_path, umask_022):
    kept = tmp_path / "notes.txt"
    kept.write_text("mine")
    kept.chmod(0o600)  # the user's own choice, before the save: left alone
    before = files_under(tmp_path)
    from safetensors.torch import save_file

    (tmp_path / "sub").mkdir()
    save_file({"w": torch.zeros(2)}, str(tmp_path / "sub" / "w.safetensors"))
    assert give_umask_modes(tmp_path, before) == [str(tmp_path / "sub" / "w.safetensors")]
    assert modes(tmp_path) == {"notes.txt": "0o600", os.path.join("sub", "w.safetensors"): "0o644"}
