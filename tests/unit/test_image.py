"""The ensemble image's names (no Docker): the base image's tag is keyed on
its package list, so a base made without the hands-on tools is rebuilt."""
from __future__ import annotations

import re
from pathlib import Path

from testbed.emulate import image

REPO = Path(__file__).resolve().parents[2]


def test_the_base_image_carries_the_hands_on_tools():
    assert {"python3", "iputils-ping", "iproute2", "tcpdump"} <= set(image.BASE_PACKAGES)


def test_the_base_tag_changes_with_the_package_list_and_not_with_its_order():
    assert re.fullmatch(r"ttnet-base:bookworm-[0-9a-f]{8}", image.BASE_TAG)
    assert image.BASE_TAG != "ttnet-base:bookworm"          # the old tag, without the tools
    assert image.base_tag(("python3",)) != image.BASE_TAG
    assert image.base_tag(tuple(reversed(image.BASE_PACKAGES))) == image.BASE_TAG
    assert image.base_tag(image.BASE_PACKAGES, "trixie") != image.BASE_TAG


def test_the_ensemble_image_hash_follows_the_base(monkeypatch):
    before = image.content_hash(REPO)
    monkeypatch.setattr(image, "BASE_TAG", image.base_tag(("python3",)))
    assert image.content_hash(REPO) != before
