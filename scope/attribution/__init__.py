"""Attribution: from a behaviour (a logit, a logit difference, a feature) to the features behind it.

`attribute` scores every active feature, error term and token of one prompt against one metric;
`attribution_graph` builds the circuit-tracer style graph of direct effects between them.
"""

from scope.attribution.attribute import (
    AblationCheck,
    AttributionResult,
    Intervention,
    Node,
    attribute,
    intervene,
)
from scope.attribution.build import attribution_graph
from scope.attribution.graph import AttributionGraph
from scope.attribution.metric import FeatureMetric
from scope.attribution.replacement import AttributionError

__all__ = ["AblationCheck", "AttributionError", "AttributionGraph", "AttributionResult", "FeatureMetric", "Intervention", "Node",
           "attribute", "intervene",
           "attribution_graph"]
