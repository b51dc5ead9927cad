"""`python -m configs`: prints docs/config.md's key table."""

import configs

print(configs.markdown_table(), end="")
