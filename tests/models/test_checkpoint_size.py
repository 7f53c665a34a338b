"""Issue #22's bad input: a checkpoint trained at another input size (its position embeddings do
not fit the named architecture) is refused in one line that names the file, the model and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from csra_posthoc import CSRAError, load_model


@pytest.mark.slow
def test_a_checkpoint_of_another_input_size_names_the_position_embedding_and_the_fix(tmp_path: Path) -> None:
    ckpt = tmp_path / "vit384.pth"
    torch.save(timm.create_model("vit_tiny_patch16_384", num_classes=4).state_dict(), ckpt)
    with pytest.raises(CSRAError) as info:
        load_model("vit_tiny_patch16_224", checkpoint=ckpt)
    msg = str(info.value)
    assert msg.startswith(f"checkpoint {ckpt} does not fit model vit_tiny_patch16_224: size mismatch for pos_embed")
    assert "trained at another input size" in msg and "vit_tiny_patch16_<size>" in msg and "\n" not in msg
    assert info.value.param == "checkpoint"
