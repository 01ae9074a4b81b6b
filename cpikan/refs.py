"""User code by reference: ``MODULE:NAME`` or ``path/to/file.py:NAME``, with literal arguments.

A model the lab brings to ``reconstruct`` (:mod:`cpikan.tiling.factory`) and a PDE it brings
to a PINN study (:func:`cpikan.pde.make_problem`) are both named this way. The callable may
be given literal arguments, so a class that needs them is named as it is built:
``monai.networks.nets:BasicUNet(spatial_dims=2, in_channels=16)``. Only literals (numbers,
strings, tuples, lists, dicts, True/False/None) are read, never evaluated; the reference
string is what a run records, so a replay builds the same thing.

The code is the user's own, named on their own command line, so importing it is no more
than running their script, and it imports as their script would: a file in a package (its
folder holds ``__init__.py``) as part of that package, so its relative imports work; a lone
file with its own folder on the path, so its sibling modules import. Every source file of
theirs that the import brought in is what a run records (:func:`local_files`), by content,
so a replay sees an edit. What a shared store holds never names code to import: models
stored in MLflow are rebuilt only by the project's own builders (:mod:`tracking.models`).
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Any


def is_ref(ref: str) -> bool:
    """Whether ``ref`` names code (``MODULE:NAME``) rather than a run, a file or a keyword."""
    return ":" in ref


#: WHERE:NAME or WHERE:NAME(ARGS); WHERE takes the last ':' that leaves a name (and a call) after it
REF = re.compile(r"(.+):([A-Za-z_][\w.]*)\s*(\(.*\))?\s*", re.DOTALL)


def absolute_ref(ref: str) -> str:
    """``ref`` with a factory file's path made absolute (``unet.py:build`` →
    ``/lab/nets/unet.py:build``), so that a run records what a replay from any folder can
    build; module refs, run IDs and keywords as they are."""
    m = REF.fullmatch(ref)
    if not m or not m.group(1).endswith(".py"):
        return ref
    return str(Path(m.group(1)).resolve()) + ref[m.end(1):]


def split_ref(ref: str, field: str = "model") -> tuple[str, str, tuple, dict]:
    """``'unet.py:UNet(16, out_channels=1)'`` → ('unet.py', 'UNet', (16,), {'out_channels': 1})."""
    m = REF.fullmatch(ref)
    if not m:
        raise ValueError(f"{field}: expected MODULE:CALLABLE or FILE.py:CALLABLE, got {ref!r}")
    where, name, args = m.group(1), m.group(2), m.group(3)
    if args is None:
        return where, name, (), {}
    try:
        call = ast.parse(f"f{args}", mode="eval").body
        assert isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
        values = tuple(ast.literal_eval(a) for a in call.args)
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg is not None}
        if len(kwargs) != len(call.keywords):
            raise ValueError("**")
    except (SyntaxError, ValueError, AssertionError):
        raise ValueError(f"{field}: {ref!r}: arguments must be literals (numbers, strings, tuples, lists, dicts, "
                         "True/False/None), as in UNet(in_channels=16, features=(32, 64))") from None
    return where, name, values, kwargs


def resolve(where: str, name: str, ref: str, field: str, what: str = "the model") -> Any:
    """The callable ``name`` in ``where`` (a module or a .py file); ValueError naming
    ``field``, ``ref`` and the cause otherwise."""
    try:
        if where.endswith(".py"):
            obj: Any = _import_file(Path(where), field)
        else:
            obj = importlib.import_module(where)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, SyntaxError) as exc:
        raise ValueError(f"{field}: {ref!r} cannot be imported ({type(exc).__name__}: {exc})") from None
    if not callable(obj):
        raise ValueError(f"{field}: {ref!r} is a {type(obj).__name__}, not a callable returning {what}")
    return obj


def load(ref: str, field: str, what: str) -> Any:
    """The callable ``ref`` names, imported (not called): its module and every module of the
    user's it imports are loaded, so :func:`local_files` then knows them all."""
    where, name, _, _ = split_ref(ref, field)
    return resolve(where, name, ref, field, what)


def _package_root(path: Path) -> tuple[Path, str]:
    """(the folder a file imports from, its module name): above the outermost folder with an
    ``__init__.py``, as ``pkg.sub.file``; a lone file: its own folder, and its stem."""
    root, parts = path.parent, [path.stem]
    while (root / "__init__.py").is_file():
        parts.insert(0, root.name)
        root = root.parent
    return root, ".".join(parts)


def _import_file(where: Path, field: str) -> Any:
    """The module in the file ``where``, imported as its own script would import it."""
    path = where.resolve()
    if not path.is_file():
        raise ValueError(f"{field}: {where}: no such file")
    root, name = _package_root(path)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # as Python does for a script: its siblings and its package import
    if "." in name:  # part of a package: its relative imports need the package
        module = importlib.import_module(name)
        found = Path(getattr(module, "__file__", "") or "").resolve()
        if found != path:
            raise ValueError(f"{field}: {where} is module {name} of its package, but that name imports {found} "
                             "(another package of the same name comes first on the path): rename one")
        return module
    spec = importlib.util.spec_from_file_location(f"_user_code_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling-free introspection look it up
    spec.loader.exec_module(module)
    return module


def source_file(ref: str) -> Path | None:
    """The file that defines the factory (for provenance), when there is one."""
    where = split_ref(ref)[0]
    if where.endswith(".py"):
        return Path(where).resolve()
    spec = importlib.util.find_spec(where)
    return Path(spec.origin) if spec is not None and spec.origin and spec.origin.endswith(".py") else None


@functools.cache
def _not_users() -> tuple[Path, ...]:
    """Folders whose modules are not the user's: the interpreter's and this project's packages."""
    project = Path(__file__).resolve().parents[1]
    return (*{Path(p).resolve() for p in (sys.prefix, sys.base_prefix)},
            *(project / d for d in ("cpikan", "studies", "tracking", "reports", "lab")))


def _installed(path: Path) -> bool:
    """Whether ``path`` is an installed package's or this project's own (recorded otherwise)."""
    return bool({"site-packages", "dist-packages"} & set(path.parts)) or any(map(path.is_relative_to, _not_users()))


def local_files(ref: str) -> dict[str, Path]:
    """The user's source files behind ``ref`` once it is built: the factory's file and every
    loaded module under the folder it imports from (its package root, or a lone file's
    folder), by path relative to that folder, so a change to a helper module is seen too.
    An installed package's factory (``monai…``) gives its defining file only."""
    source = source_file(ref)
    if source is None:
        return {}
    where = split_ref(ref)[0]
    if where.endswith(".py"):
        root = _package_root(source)[0]
    else:
        top = importlib.util.find_spec(where.split(".")[0])
        origin = Path(top.origin).resolve() if top is not None and top.origin else source
        root = origin.parent.parent if origin.name == "__init__.py" else origin.parent
    if _installed(source):
        return {source.name: source}
    files = {source.relative_to(root).as_posix(): source}
    for module in list(sys.modules.values()):
        f = getattr(module, "__file__", None)
        # absolute only: torch.ops and torch.classes say '_ops.py', '_classes.py', which would
        # resolve into the working directory (the user's model folder, often)
        if f and f.endswith(".py") and os.path.isabs(f):
            path = Path(f).resolve()
            if path.is_relative_to(root) and not _installed(path) and path.is_file():
                files.setdefault(path.relative_to(root).as_posix(), path)
    return dict(sorted(files.items()))


def check_exists(ref: str, field: str) -> None:
    """A reference's file or top-level module is there (nothing is imported: a config names
    the code before anything runs it); ValueError naming ``field`` otherwise."""
    where = split_ref(ref, field)[0]
    if where.endswith(".py"):
        if not Path(where).is_file():
            raise ValueError(f"{field}: {where}: no such file (in {ref!r})")
    elif importlib.util.find_spec(where.split(".")[0]) is None:
        raise ValueError(f"{field}: no module named {where.split('.')[0]!r} (in {ref!r})")
