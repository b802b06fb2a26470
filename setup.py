"""Ships three one-line ``.pth`` start-up hooks into site-packages, so that the released ``lm_eval`` (0.4.13, no
plugin discovery), VLMEvalKit's runner and lmms-eval (tasks) find our models, tasks and data sets without being patched.
Everything else is in pyproject.toml. The hooks' sources live in model_adapters/*_registration.py."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HERE = Path(__file__).resolve().parent
HOOK_MODULES = ("lm_eval_registration", "vlmeval_registration", "lmms_eval_registration")


def _adapters_package():
    """``model_adapters/`` imported from its folder under a private name (its hook modules are stdlib-only)."""
    name = "_tp_model_adapters"
    if name not in sys.modules:
        folder = HERE / "model_adapters"
        spec = importlib.util.spec_from_file_location(name, folder / "__init__.py", submodule_search_locations=[str(folder)])
        package = importlib.util.module_from_spec(spec)
        sys.modules[name] = package
        spec.loader.exec_module(package)
    return name


def _write_pth_files(target: Path) -> list[str]:
    written = []
    package = _adapters_package()
    for name in HOOK_MODULES:
        module = importlib.import_module(f"{package}.{name}")
        path = target / module.PTH_NAME
        path.write_text(module.pth_line(), encoding="utf-8")
        written.append(str(path))
    return written


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        self._pth = _write_pth_files(Path(self.build_lib))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), *getattr(self, "_pth", [])]


class EditableWheelWithPth(editable_wheel):
    """Editable installs (pip install -e) get the same hooks beside the editable finder."""

    def _select_strategy(self, name, tag, build_lib):
        strategy = super()._select_strategy(name, tag, build_lib)
        original = strategy.__call__

        def call(wheel, files, mapping, _original=original):
            _original(wheel, files, mapping)
            for path in _write_pth_files(Path(self.dist_dir)):
                wheel.writestr(Path(path).name, Path(path).read_bytes())
                Path(path).unlink()

        class _Strategy:
            def __enter__(self_inner):
                strategy.__enter__()
                return self_inner

            def __exit__(self_inner, *exc):
                return strategy.__exit__(*exc)

            def __call__(self_inner, wheel, files, mapping):
                call(wheel, files, mapping)

        return _Strategy()


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
