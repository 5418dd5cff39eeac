"""Everything that trains on the shards, in layers that import one way only (README "Layout"):

    data  <-  models | objectives  <-  train | infer  <-  eval  <-  apps  <-  cli

``pipeline`` imports ``preprocessing`` (the on-disk contract and the torch-free data commands),
never the reverse.
"""
