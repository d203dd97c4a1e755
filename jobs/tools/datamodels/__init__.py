"""The MadryLab datamodels reference's module layout over gio-spark (``datamodels.training``).

A project written for the reference changes one import line (``datamodels.`` becomes
``jobs.tools.datamodels.``) and its commands run on gio-spark's store and workers: see
:mod:`jobs.tools.datamodels.training`.
"""
