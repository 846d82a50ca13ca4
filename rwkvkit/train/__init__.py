"""Training: data preparation, the training loop, run folders and checkpoints.

``rwkvkit prepare`` turns text into token files (:mod:`.data`); ``rwkvkit train`` runs the loop
(:mod:`.loop`) on a :class:`~.config.TrainConfig`, building the model from the registry in
:mod:`.arch` (initialised as :mod:`.init` says), stepping the rate by :mod:`.schedule`, logging
:mod:`.validate`'s validation loss and :mod:`.sample`'s text, and writes a run folder (:mod:`.run`;
its layout, which ``rwkvkit.load_model`` reads, is :mod:`rwkvkit.formats.run`).
"""
