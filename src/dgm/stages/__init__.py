"""One module per DVC stage (named after it): params → library calls → declared outputs.

The CLI and ``pipelines/*.py`` call these; libraries never import them.
"""
