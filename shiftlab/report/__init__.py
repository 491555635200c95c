"""``shiftlab report``: run folders -> Markdown and CSV tables (mean ± std over seeds, the selection rule
named, the gap to the oracle, published numbers beside ours) and PNG plots.

Modules: ``runs`` (find and load run folders), ``references`` (published numbers), ``tables`` (the
tables and the files they go to), ``plots`` (matplotlib figures), ``cli`` (the command's options).
"""
