"""Training: data preparation, the training loop, run folders and checkpoints.

``rwkvkit prepare`` turns text into token files (:mod:`.data`); ``rwkvkit train`` runs the loop
(:mod:`.loop`) and writes a run folder (:mod:`.run`) that ``rwkvkit.load_model`` reads.
"""
