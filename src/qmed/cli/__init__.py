"""The `qmed` command line: `app` (assembles the typer app), `segment` (the segmentation verbs), `common` (console,
error handling, logging, --set parsing) and one module per verb group."""
