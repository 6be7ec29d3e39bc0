"""Tools: one module per command family, each built on the blocks and engine below it.

Tools never import each other: what two tools share lives in a lower layer (.importlinter).
"""
