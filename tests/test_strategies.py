"""`random` next-sample strategy under load: many annotators pressing Next within one second all get an image
(MONAI Label's stock Random fails once every unlabelled image was served in the current second)."""

from __future__ import annotations

import collections

from .app_client import monailabel_client


def test_rapid_next_sample_never_fails_and_spreads(sample_datastore):
    with monailabel_client(sample_datastore, {"model": "tiny"}) as (c, instance):
        unlabelled = set(instance().datastore().get_unlabeled_images())
        got = []
        for i in range(40):
            r = c.post("/activelearning/random", json={"client_id": f"annotator-{i % 8}"})
            assert r.status_code == 200, r.text
            got.append(r.json()["id"])
    assert set(got) <= unlabelled and len(set(got)) == len(unlabelled)  # every image is served, none labelled
    assert max(collections.Counter(got).values()) < 40
