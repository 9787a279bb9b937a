"""The `qmed` command: verbs follow the user's steps (inspect -> train -> predict -> evaluate).

Each verb group lives in its own module; this one only assembles them into one typer app."""

from __future__ import annotations

import typer

from qmed.cli import segment
from qmed.cli.bench import benchmark_app
from qmed.cli.classify import classify_app
from qmed.cli.ladder import ablate, curve
from qmed.cli.pretrain import pretrain_app
from qmed.cli.synthesize import synthesize_cmd

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="qmed: segmentation and classification of medical images from few annotations.",
)

app.command("inspect")(segment.inspect)
app.command("evaluate")(segment.evaluate)
app.command("train")(segment.train)
app.command("predict")(segment.predict)
app.command("export")(segment.export)
app.command("report")(segment.report)
app.command("demo")(segment.demo)
app.command("convert")(segment.convert)
app.add_typer(classify_app, name="classify")
app.add_typer(benchmark_app, name="benchmark")
app.command("ablate")(ablate)
app.command("curve")(curve)
app.add_typer(pretrain_app, name="pretrain")
app.command("synthesize")(synthesize_cmd)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
