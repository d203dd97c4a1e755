"""jobs.common.exchange: the all-gather of a barrier job's tasks, on a real local Spark."""


def _task(rows):
    from pyspark import BarrierTaskContext

    from jobs.common.exchange import Exchange
    ctx = BarrierTaskContext.get()
    me = ctx.partitionId()
    seen = []
    with Exchange(ctx) as ex:
        for size in (0, 1, 3_000_000, 17):
            got = ex.gather(bytes([me + 1]) * size * (me + 1))
            seen.append([(len(g), g[:1]) for g in got])
        seen.append(ex.gathers)
    yield me, seen


def test_every_task_gets_every_payload_in_partition_order(spark):
    got = dict(spark.sparkContext.parallelize(range(2), 2).barrier().mapPartitions(_task)
               .collect())
    assert got[0] == got[1]
    sizes = [[length for length, _ in step] for step in got[0][:4]]
    assert sizes == [[0, 0], [1, 2], [3_000_000, 6_000_000], [17, 34]]
    assert got[0][2] == [(3_000_000, b"\x01"), (6_000_000, b"\x02")]
    assert got[0][4] == 4
