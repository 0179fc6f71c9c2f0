"""`fedxai trainer`'s launcher: the ClientApps it forks run the FAB's code, not the copy
of FedXAI the trainer itself imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, check=True
    )
    return result.stdout.strip()


def test_a_forked_clientapp_imports_the_fabs_copy_of_the_project(tmp_path):
    fab = tmp_path / "fab"
    (fab / "fedxai").mkdir(parents=True)
    (fab / "fedxai" / "__init__.py").write_text('__version__ = "from the FAB"\n')
    printed = run_python(f"""
        import sys
        import services.cli.main, services.trainer.warm_node as warm_node
        import fedxai
        before = fedxai.__version__
        warm_node.forget_project_modules()
        sys.path.insert(0, {str(fab)!r})  # as Flower's loader does with the FAB's folder
        import fedxai
        print(before, "|", fedxai.__version__)
    """)
    assert printed == "0.1.0 | from the FAB"


def test_the_trainer_command_imports_no_generated_protobuf_module():
    """A ClientApp imports fedxai.v1 afresh from the FAB; its descriptors must not be in the
    process already, where other contents (another FedXAI version) could not replace them."""
    printed = run_python("""
        import sys
        import services.cli.main, services.trainer.warm_node
        print(sorted(name for name in sys.modules if name.startswith("fedxai.v1")))
    """)
    assert printed == "[]"
