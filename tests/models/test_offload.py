"""--offload-frozen: a frozen model's parameters leave memory and come back bit for bit."""

from pathlib import Path

import pytest
import torch

from rlhfkit.models.loading import load_causal_lm
from rlhfkit.models.offload import Offloaded


def frozen(path: Path) -> torch.nn.Module:
    model = load_causal_lm(str(path))
    model.eval().requires_grad_(False)
    return model


def test_release_frees_every_parameter_and_the_next_forward_brings_them_back(tiny_lm, tmp_path):
    model = frozen(tiny_lm)
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    before = model(ids).logits
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    part = Offloaded(model, tmp_path / "ref.pt")
    part.release()
    assert part.released and (tmp_path / "ref.pt").exists()
    assert all(p.numel() == 0 for p in model.parameters())
    assert torch.equal(model(ids).logits, before)  # the forward's hook mapped them back
    assert not part.released
    for name, p in model.named_parameters():
        assert torch.equal(p, weights[name]), name
    part.release()  # again: the file written the first time is reused
    part.release()  # releasing twice is a no-op
    part.restore()
    assert torch.equal(model(ids).logits, before)


def test_tied_weights_stay_tied_and_close_removes_the_file(tiny_lm, tmp_path):
    model = frozen(tiny_lm)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    part = Offloaded(model, tmp_path / "ref.pt")
    part.release()
    part.restore()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert (model.get_output_embeddings().weight.data_ptr()
            == model.get_input_embeddings().weight.data_ptr())
    part.release()
    part.close()  # back in memory (copied out of the file), the file and the hook gone
    assert not (tmp_path / "ref.pt").exists()
    assert all(p.numel() > 0 for p in model.parameters())
    model(torch.tensor([[1, 2, 3]]))


def test_a_trained_module_is_refused(tiny_lm, tmp_path):
    with pytest.raises(ValueError, match="only a frozen module"):
        Offloaded(load_causal_lm(str(tiny_lm)), tmp_path / "x.pt")


def test_discard_frees_for_good_and_leaves_no_file_or_empty_folder(tiny_lm, tmp_path):
    model = frozen(tiny_lm)
    part = Offloaded(model, tmp_path / "offload" / "ref.pt")
    part.release()
    part.restore()
    part.discard()
    assert all(p.numel() == 0 for p in model.parameters())
    assert not (tmp_path / "offload").exists()
