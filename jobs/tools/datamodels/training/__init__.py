"""The reference's ``datamodels.training`` modules, on gio-spark.

- :mod:`.initialize_store` (``--logging.logdir``, ``--logging.spec``): creates gio-spark's store
  (a Delta table under ``<logdir>/gio-spark``) from the spec and writes the reference's files
  into ``logdir`` (``<key>.npy`` of ``[num_models, *shape]`` and ``_completed.npy``, zeros);
- :mod:`.worker` (``--worker.index``, ``--worker.main_import``, ``--worker.logdir``,
  ``--worker.do_if_complete``, ``--worker.job_timeout``): runs ``main(index=, logdir=)`` for
  that index as gio-spark's ``datamodels work`` does (a Spark task, the result checked against
  the spec and committed to the store, a completed index skipped), with every other word of
  the command line (``--trainer.multiple=2``) as ``datamodels.argv``, the command line the
  script's own fastargs or argparse parser reads; then writes the store's files into ``logdir``
  again, so tools that read them (``utils.load_memmap``) see the result;
- :mod:`.spec` and :mod:`.utils`: the spec's names and checks, ``memmap_path``,
  ``load_memmap`` and ``make_config`` (fastargs, imported only there).

What differs: the store of record is the Delta table, and the ``.npy`` files are written from
it after each command (not written in place by the worker); a failed ``main`` exits 1 with the
error recorded in the store, where the reference's worker raises.
"""
