"""Datamodels on Spark: the store and its actions (:mod:`jobs.datamodels.actions`: init, work,
regress, select, export, example), the task that runs a user's training function
(:mod:`jobs.datamodels.worker`) and the digits example (:mod:`jobs.datamodels.example`). On the
level of :mod:`jobs.stages`: imports the layers below, no stage."""
