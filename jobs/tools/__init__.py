"""Tools around the pipeline: the 2-D demo, the spark-submit package, the standalone-cluster
commands and the grad-info-opt compatible class. They import the layers below the stages."""
