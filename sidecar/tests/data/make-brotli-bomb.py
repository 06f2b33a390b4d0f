#!/usr/bin/env python3
"""Write zeros-10g.br: 10 GiB of zero bytes as one brotli stream, a few KB on the wire.

The test suite reads the file; nothing at test time compresses. Regenerate with
`pip install brotli && python3 make-brotli-bomb.py` (any conforming brotli encoder will do:
the test only needs a valid stream that decodes to far more than maxBodyBytes).
"""
import brotli
import os

TOTAL = 10 << 30
CHUNK = 16 << 20

here = os.path.dirname(os.path.abspath(__file__))
compressor = brotli.Compressor(quality=5, lgwin=24)
with open(os.path.join(here, "zeros-10g.br"), "wb") as out:
    zeros = bytes(CHUNK)
    for _ in range(TOTAL // CHUNK):
        out.write(compressor.process(zeros))
    out.write(compressor.finish())
