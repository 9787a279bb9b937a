"""The `qmed` command line: `app` (the typer app and the segmentation verbs), `common` (console,
error handling, logging, --set parsing) and one module per verb group."""
