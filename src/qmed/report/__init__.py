"""Reports: the run report, tables, figure helpers."""
