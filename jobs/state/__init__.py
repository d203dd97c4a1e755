"""What a run knows of earlier runs: fingerprints and plans (:mod:`jobs.state.reuse`), the stage
log (:mod:`jobs.state.stagelog`), stored outputs other stages read (:mod:`jobs.state.stored`) and
the checked inputs of a command (:mod:`jobs.state.inputs`). Imports the layers below it."""
