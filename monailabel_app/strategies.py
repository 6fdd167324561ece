"""The `random` active-learning strategy, safe under load.

MONAI Label's stock Random weighs each unlabelled image by the seconds since it was last served; once every
unlabelled image has been served within the current second (several annotators pressing *Next sample*), all
weights are 0 and `random.choices` raises, so `/activelearning/random` fails. Here each weight is one more than
that, so recently served images stay possible, just much less likely.
"""

from __future__ import annotations

import logging
import random
import time

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

logger = logging.getLogger(__name__)


class RandomStrategy(Strategy):
    def __init__(self, rng: random.Random | None = None):
        super().__init__("Random unlabelled image, favouring those not served recently")
        self.rng = rng or random.Random()

    def __call__(self, request, datastore: Datastore):
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        strategy = request["strategy"]
        now = int(time.time())
        weights = [max(now - datastore.get_image_info(i).get("strategy", {}).get(strategy, {}).get("ts", 0), 0) + 1
                   for i in images]
        index = self.rng.choices(range(len(images)), weights=weights)[0]
        logger.info("random: selected %s (weight %d of %d images)", images[index], weights[index], len(images))
        return {"id": images[index], "weight": weights[index]}
