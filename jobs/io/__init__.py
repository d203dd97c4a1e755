"""Reading and writing: the Spark session, the sources (read and checked), the Delta tables
(schemas and keyed, one-transaction writes), the sentence encoders and the demo data. Imports
:mod:`jobs.common` and :mod:`jobs.config`."""
