"""The docs' commands, run: every ``sh`` block of README.md and docs/*.md (see
test_doc_commands.py)."""
