"""The autotuner: per conv layer, search plans, verify and time each, log the results.

    space.py     the candidate plans of a layer
    measure.py   build, verify and time one candidate
    log.py       the JSON-lines tuning log compile() reads
    autotune.py  the driver: sparsejit.autotune(model)

Kept free of imports here: lowering reads the log (tune.log) without loading the tuner.
"""
