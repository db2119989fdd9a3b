"""Shared test fixtures: where the parity fixtures live.

The fixtures are found at $EMU3_FIXTURES or at ../shared/fixtures beside the repository. When they are missing the
parity tests skip on a developer machine, but fail under CI=true: parity must never silently not run there.
"""

import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def fixtures_root():
    env = os.environ.get("EMU3_FIXTURES")
    return pathlib.Path(env) if env else REPO_ROOT.parent / "shared" / "fixtures"


def _require(path):
    if not path.is_dir():
        msg = f"Emu3 parity fixtures not found at {path} (set EMU3_FIXTURES)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def fixtures_dir():
    """The configuration folder with tokenizer/, vision_tokenizer/, llm/, inputs/, refs/ (default: public)."""
    return _require(fixtures_root() / os.environ.get("EMU3_FIXTURES_CONFIG", "public"))


@pytest.fixture(scope="session")
def real_offset_dir():
    """The tokenizer with the real special-id offset 151643, and its refs."""
    return _require(fixtures_root() / "tokenizer_real_offset")


@pytest.fixture(scope="session")
def hf_fixtures_dir():
    """The same configuration converted by transformers' converter to its "-hf" layout (public -> public_hf)."""
    return _require(fixtures_root() / (os.environ.get("EMU3_FIXTURES_CONFIG", "public") + "_hf"))
