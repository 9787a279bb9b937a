"""Files: reading images and masks into arrays, atomic writes, staging and the --force check, checkpoint files, figures as PNG."""
