"""Ray's fake multi-node provider with its nodes marked up to date once they have joined, as a cloud provider's are.

Ray's autoscaler (v1, with `disable_node_updaters`) terminates a worker node it has had no report from for
AUTOSCALER_HEARTBEAT_TIMEOUT_S, and then launches a replacement if the node's resources are still wanted; that is
how a preempted or crashed machine is replaced. It does so only for nodes whose status tag is `up-to-date`. Ray's
fake provider keeps the `uninitialized` tag the node launcher hands it and refuses to change tags, so a fake node
that dies while busy stays on the autoscaler's books forever and is never replaced. Its node constructor returns
only once the raylet has registered with the GCS, so at that point the node is what a cloud reports as running.

Loaded by Ray's monitor as an `external` provider (`module: tests.fake_provider.ReplaceableFakeProvider`).
"""

from __future__ import annotations

from typing import Any

from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider
from ray.autoscaler.tags import STATUS_UP_TO_DATE, TAG_RAY_NODE_STATUS


class ReplaceableFakeProvider(FakeMultiNodeProvider):
    def _create_node_with_resources_and_labels(self, node_config: dict[str, Any], tags: dict[str, str], count: int,
                                               resources: dict[str, Any], labels: dict[str, str]) -> None:
        super()._create_node_with_resources_and_labels(
            node_config, {**tags, TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE}, count, resources, labels)
