"""The quickstart notebook runs from top to bottom on the fixture checkpoints (so it cannot rot)."""

import pytest

from conftest import REPO_ROOT, fixtures_root

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = REPO_ROOT / "paddlemix" / "examples" / "emu3" / "emu3_quickstart.ipynb"


def test_quickstart_notebook_executes(monkeypatch):
    # the notebook reads $EMU3_FIXTURES/public (the small public checkpoints), whatever configuration is under test
    root = fixtures_root()
    if not (root / "public").is_dir():
        pytest.fail(f"the notebook needs the public fixtures at {root / 'public'}")
    monkeypatch.setenv("EMU3_FIXTURES", str(root))
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if o.get("output_type") == "display_data" and "image/png" in o.get("data", {})]
    # autoencode: input + reconstruction; text-to-image: one image per prompt (2)
    assert len(images) == 4
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "PSNR" in text and text.count("Q: ") == 2 and text.count("A: ") == 2
