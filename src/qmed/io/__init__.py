"""Files: reading images and masks into arrays, atomic writes, staging and the --force check, the nnU-Net folder format."""
