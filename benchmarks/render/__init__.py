"""Render functions: each turns loaded results files (or, for reference tables, the code's own
registries) into one Markdown block. benchmarks/report.py maps them to the docs they fill."""
