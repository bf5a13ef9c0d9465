"""A worker process's runtime keeps the cyclic collector off the objects made at start-up and
looks at the young generation less often (worker.runtime.tune_garbage_collection)."""

import gc

from worker.runtime import GC_YOUNG_THRESHOLD, tune_garbage_collection


def test_start_up_objects_are_frozen_and_young_collections_are_rarer() -> None:
    before = gc.get_threshold()
    try:
        tune_garbage_collection()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
