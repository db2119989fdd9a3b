"""Imports between the Emu3 model file and its generation loop run one way, as transformers' ``GenerationMixin``:
modeling_emu3 -> generation_emu3 -> kv_cache. A cycle (at module level or through a call-time import inside a
function) fails here."""

import ast
import os
import subprocess
import sys
import textwrap

import paddlemix.models.emu3 as emu3_pkg

PACKAGE = "paddlemix.models.emu3"
EMU3_DIR = os.path.dirname(emu3_pkg.__file__)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(EMU3_DIR)))


def imports_of(module):
    """[(imported module, lineno, at module level)] of ``paddlemix/models/emu3/<module>.py``, relative imports
    resolved; ``from X import name`` lists both X and X.name (name may be a submodule)."""
    with open(os.path.join(EMU3_DIR, module + ".py")) as f:
        tree = ast.parse(f.read())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = PACKAGE.rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [(name, node.lineno, id(node) in top) for name in names]
    return found


def test_ast_resolves_relative_imports():
    # the helper itself: it must see the model file's real module-level import of the loop, or the tests below
    # could pass on a parser that finds nothing
    found = imports_of("modeling_emu3")
    assert any(name == f"{PACKAGE}.generation_emu3.Emu3GenerationMixin" and top for name, _, top in found)
    assert any(name == f"{PACKAGE}.kv_cache" and top for name, _, top in found)


def test_generation_never_imports_the_model_file():
    bad = [(name, line) for name, line, _ in imports_of("generation_emu3")
           if name.startswith(f"{PACKAGE}.modeling_emu3")]
    assert not bad, f"generation_emu3 imports modeling_emu3 (cycle): {bad}"


def test_model_file_has_no_call_time_import_of_generation():
    bad = [(name, line) for name, line, top in imports_of("modeling_emu3")
           if name.startswith(f"{PACKAGE}.generation_emu3") and not top]
    assert not bad, f"modeling_emu3 imports generation_emu3 inside a function: {bad}"


def test_kv_cache_imports_neither():
    bad = [(name, line) for name, line, _ in imports_of("kv_cache")
           if name.startswith((f"{PACKAGE}.modeling_emu3", f"{PACKAGE}.generation_emu3"))]
    assert not bad, f"kv_cache imports the model or the loop: {bad}"


def test_generation_imports_alone_without_the_model_file():
    # a fresh interpreter imports generation_emu3 by itself: the package object is registered without running its
    # __init__ (which imports every model), so whatever loads here is what generation_emu3 pulls in
    code = textwrap.dedent(f"""
        import importlib, sys, types
        import paddlemix.models
        pkg = types.ModuleType("{PACKAGE}")
        pkg.__path__ = [{EMU3_DIR!r}]
        sys.modules["{PACKAGE}"] = pkg
        gen = importlib.import_module("{PACKAGE}.generation_emu3")
        assert callable(gen.Emu3GenerationMixin.generate)
        print(sorted(m for m in sys.modules if m.startswith("{PACKAGE}.")))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = out.stdout.strip().splitlines()[-1]
    assert f"'{PACKAGE}.generation_emu3'" in loaded and f"'{PACKAGE}.kv_cache'" in loaded, loaded
    assert f"'{PACKAGE}.modeling_emu3'" not in loaded, loaded


def test_names_stay_importable_from_the_model_file():
    from paddlemix.models.emu3 import kv_cache
    from paddlemix.models.emu3.generation_emu3 import Emu3GenerationMixin
    from paddlemix.models.emu3.modeling_emu3 import Emu3ForCausalLM, Emu3KVCache, additive_mask, to_float32

    assert (Emu3KVCache, additive_mask, to_float32) == (kv_cache.Emu3KVCache, kv_cache.additive_mask,
                                                        kv_cache.to_float32)
    assert Emu3ForCausalLM.generate is Emu3GenerationMixin.generate
