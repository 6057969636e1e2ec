"""The daemon's status page: the lag and apply-rate ring it keeps in memory (history)
and the cached measurement it serves at GET / (live). The page itself is rendered by
syncd.report.html, from the same facts as `syncd report`."""
