"""The README's Python example runs as written."""

import re
from pathlib import Path


def test_readme_python_examples_run(capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip().endswith("True")


def test_readme_documents_every_subcommand_and_option():
    """Each subcommand has a README section with an example, and every option of `gmdm COMMAND --help`
    is named in that section."""
    from gmdm_cli.cli import cli

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    sections = dict(re.findall(r"### `gmdm ([a-z-]+)`.*?\n(.*?)(?=\n### |\n## )", readme, flags=re.S))
    missing = []
    for name, command in cli.commands.items():
        assert name in sections, f"README has no section for gmdm {name}"
        assert f"gmdm {name} " in sections[name] or f"gmdm {name}\n" in sections[name], f"no example of gmdm {name}"
        for parameter in command.params:
            names = [option for option in parameter.opts if option.startswith("--")]
            if names and not any(option in sections[name] for option in names) and names != ["--help"]:
                missing.append(f"gmdm {name} {names[0]}")
    assert not missing, "README does not mention: " + ", ".join(missing)
