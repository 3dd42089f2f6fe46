"""Loading a project: its config (keel.toml) and its declarations (one catalog)."""

from __future__ import annotations

import importlib
import shutil
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from keel.project.catalog import Catalog, collecting
from keel.project.config import Config, load_config
from keel.errors import KeelError, Problem, ProjectError
from keel.project.exposures import add_exposures


@dataclass(frozen=True)
class Project:
    config: Config
    catalog: Catalog


def load_project(root: Path | str = ".", profile: str | None = None, env: Mapping[str, str] | None = None,
                 check: bool = True) -> Project:
    """Read keel.toml, import the declarations module and build the catalog.

    Raises ProjectError (one Problem per mistake) if the module fails to import or, with
    `check`, if the catalog is inconsistent.
    """
    config = load_config(root, profile, env)
    catalog = import_declarations(config.root, config.module)
    add_exposures(catalog)
    if check:
        problems = catalog.problems()
        if problems:
            raise ProjectError(problems)
    return Project(config, catalog)


def import_declarations(root: Path, module: str) -> Catalog:
    top = module.split(".")[0]
    for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
        del sys.modules[name]  # a fresh import each load, so a changed project is seen
    sys.path.insert(0, str(root))
    try:
        with collecting() as catalog:
            importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == module or module.startswith(exc.name + ".")):
            raise ProjectError([Problem(f"cannot import the declarations module {module!r} from {root}",
                                        file=str(root / "keel.toml"),
                                        hint="fix `module` in [project] of keel.toml")]) from None
        raise ProjectError([_problem_from(exc, root)]) from None
    except Exception as exc:  # any mistake in user code at import: report it at its line
        raise ProjectError([_problem_from(exc, root)]) from None
    finally:
        sys.path.remove(str(root))
    return catalog


def _problem_from(exc: BaseException, root: Path) -> Problem:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if str(root) in f.filename]
    if isinstance(exc, SyntaxError) and exc.filename:
        return Problem(f"syntax error: {exc.msg}", file=exc.filename, line=exc.lineno or 0)
    file, line = (frames[-1].filename, frames[-1].lineno or 0) if frames else ("?", 0)
    return Problem(f"{type(exc).__name__}: {exc}", file=file, line=line)


def copy_example(target: Path, example: str = "shop") -> Path:
    """Copy a project example shipped with keel into `target` (created; may exist) and return it."""
    source = resources.files("keel") / "examples" / example
    if not source.is_dir():
        raise KeelError(f"no example {example!r}; examples: shop")
    shutil.copytree(str(source), target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", ".keel"))
    return target
