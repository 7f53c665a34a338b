"""The hub check decides once and leaves nothing process-wide changed (library users share the process)."""

from __future__ import annotations

import os
import socket

import csra_posthoc.models.hub as hub


def test_unreachable_hub_switches_offline_only_inside_the_block(monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_endpoint", lambda: "http://127.0.0.1:9")  # nothing listens: refused at once
    monkeypatch.setattr(hub, "_unreachable", {})
    before = constants.HF_HUB_OFFLINE
    assert hub.offline_reason() == "127.0.0.1 cannot be reached"
    assert (
        "HF_HUB_OFFLINE" not in os.environ and constants.HF_HUB_OFFLINE == before and socket.getdefaulttimeout() is None
    )
    monkeypatch.setattr(hub, "hub_answers", lambda *a, **k: 1 / 0)  # decided: not asked again
    assert hub.offline_reason() == "127.0.0.1 cannot be reached"
    with hub.offline_if_unreachable():
        assert os.environ["HF_HUB_OFFLINE"] == "1" and constants.HF_HUB_OFFLINE is True
    assert "HF_HUB_OFFLINE" not in os.environ and constants.HF_HUB_OFFLINE == before
