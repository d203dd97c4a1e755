"""The stages of the selection pipeline and its companions, one module each: embed, quantize,
select, explode, weigh, train, evaluate, imnn. A stage imports the layers below it
(:mod:`jobs.common`, :mod:`jobs.config`, :mod:`jobs.io`, :mod:`jobs.state`), never another
stage: what one stage needs of another comes through the stage log and the stored tables, or as
an argument from :mod:`jobs.pipeline`."""
